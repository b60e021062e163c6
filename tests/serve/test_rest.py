"""The REST API of a real `a2m serve` process: predictions equal to the Predictor's, runs chosen by
id, the limits (413, 415, decompression bombs), the token, no traceback in any answer, and the
ONNX Runtime server without torch."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from annotate2model.training import Predictor
from tests.conftest import image_bytes
from tests.serve.conftest import LABELS, TOKEN, Served, Trained

pytestmark = [pytest.mark.training, pytest.mark.slow]


def _probs(trained: Trained, run: int, images: list[bytes]) -> np.ndarray:
    predictor = Predictor.load(trained.run_dir(run), device="cpu")
    return predictor.predict(images).probs


def _as_row(top: list[dict[str, object]]) -> list[float]:
    by_label = {str(t["label"]): float(t["probability"]) for t in top}  # type: ignore[arg-type]
    return [by_label[label] for label in LABELS]


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny PNG whose header claims width x height RGB pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text


def test_predict_gives_the_predictors_probabilities_for_the_run_asked(
    trained: Trained, torch_server: Served
) -> None:
    images = [image_bytes(101, (80, 60)), image_bytes(102, (50, 90), fmt="JPEG")]
    with torch_server.client() as http:
        files = [("file", ("a.png", images[0], "image/png")), ("file", ("b.jpg", images[1]))]
        response = http.post("/v1/predict", files=files)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["run"] == 1 and body["model_version"] == "a2m-run-1"
        assert [p["file"] for p in body["predictions"]] == ["a.png", "b.jpg"]
        got = np.array([_as_row(p["top"]) for p in body["predictions"]])
        assert np.allclose(got, _probs(trained, 1, images), atol=1e-4)
        # top_k=1: the likelier label only; run 2 chosen by id gives run 2's probabilities.
        one = http.post("/v1/predict?run=2&top_k=1", files=files[:1]).json()
        assert one["run"] == 2 and len(one["predictions"][0]["top"]) == 1
        best = one["predictions"][0]["top"][0]
        run2 = _probs(trained, 2, images[:1])[0]
        assert best["label"] == LABELS[int(np.argmax(run2))]
        assert best["probability"] == pytest.approx(float(run2.max()), abs=1e-4)
        # A raw image body works too.
        raw = http.post("/v1/predict", content=images[0], headers={"Content-Type": "image/png"})
        assert np.allclose(_as_row(raw.json()["predictions"][0]["top"]), got[0], atol=1e-6)
        missing = http.post("/v1/predict?run=9", files=files[:1])
        assert missing.status_code == 404 and "served: 1, 2" in missing.json()["detail"]


def test_model_description_names_run_labels_version_and_metrics(
    trained: Trained, torch_server: Served
) -> None:
    card = json.loads((trained.run_dir(2) / "model.json").read_text())
    with torch_server.client() as http:
        model = http.get("/v1/model", params={"run": 2}).json()
        listing = http.get("/v1/models").json()
    assert model["run"] == 2 and model["labels"] == LABELS
    assert model["dataset_version"] == 1 and model["metrics"] == card["metrics"]
    assert model["engine"] == "torch" and model["limits"]["max_files"] == 4
    assert listing["default"] == 1 and [m["run"] for m in listing["models"]] == [1, 2]


def test_concurrent_requests_are_answered_each_with_its_own_result(
    trained: Trained, torch_server: Served
) -> None:
    images = [image_bytes(200 + i, (64, 64)) for i in range(12)]
    expected = _probs(trained, 1, images)

    def one(i: int) -> list[float]:
        with torch_server.client() as http:
            response = http.post("/v1/predict", files=[("file", (f"{i}.png", images[i]))])
            assert response.status_code == 200, response.text
            return _as_row(response.json()["predictions"][0]["top"])

    with ThreadPoolExecutor(max_workers=12) as pool:
        got = np.array(list(pool.map(one, range(12))))
    assert np.allclose(got, expected, atol=1e-4)


def test_limits_answer_413_and_415_with_the_reason(torch_server: Served) -> None:
    good = image_bytes(1)
    with torch_server.client() as http:
        # Over the 1 MiB body cap (random bytes do not compress).
        big = np.random.default_rng(0).integers(0, 256, 1_300_000, dtype=np.uint8).tobytes()
        too_big = http.post("/v1/predict", files=[("file", ("big.png", big))])
        assert too_big.status_code == 413 and "1 MiB" in too_big.json()["detail"]
        many = http.post("/v1/predict", files=[("file", (f"{i}.png", good)) for i in range(5)])
        assert many.status_code == 413 and "at most 4 images" in many.json()["detail"]
        bomb = http.post("/v1/predict", files=[("file", ("bomb.png", png_bomb()))])
        assert bomb.status_code == 413
        assert "decompression-bomb" in bomb.json()["detail"]
        assert "3,600,000,000 pixels" in bomb.json()["detail"]
        text = http.post("/v1/predict", files=[("file", ("notes.txt", b"just some words"))])
        assert text.status_code == 415
        assert text.json()["detail"] == "notes.txt: not an image Pillow can read"
        html = http.post("/v1/predict", files=[("file", ("x.png", b"<html><body>login</body>"))])
        assert html.status_code == 415 and "HTML page" in html.json()["detail"]
        as_json = http.post("/v1/predict", json={"image": "a.png"})
        assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["detail"]
        empty = http.post("/v1/predict", files=[("other", ("a.png", good))])
        assert empty.status_code == 422 and "named file" in empty.json()["detail"]
        bad_run = http.get("/v1/model", params={"run": "abc"})
        assert bad_run.status_code == 400
        for response in (too_big, many, bomb, text, html, as_json, empty, bad_run):
            _no_traceback(response.text)
        # The server still answers after all that.
        assert http.post("/v1/predict", files=[("file", ("ok.png", good))]).status_code == 200


def test_token_as_bearer_or_basic_password_and_open_health(torch_server: Served) -> None:
    files = [("file", ("a.png", image_bytes(3)))]
    with torch_server.client(token=None) as http:
        assert http.get("/health").json()["status"] == "UP"
        assert http.get("/").status_code == 200
        refused = http.post("/v1/predict", files=files)
        assert refused.status_code == 401 and "token" in refused.json()["detail"]
        assert http.get("/v1/models").status_code == 401
        assert http.post("/predict", json={"tasks": []}).status_code == 401
        wrong = http.post("/v1/predict", files=files, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert http.post("/v1/predict", files=files, auth=("anyone", TOKEN)).status_code == 200
        assert http.post("/v1/predict", files=files, auth=("anyone", "nope")).status_code == 401
    with torch_server.client() as http:
        assert http.post("/v1/predict", files=files).status_code == 200


def test_onnx_server_answers_like_torch_without_torch(
    trained: Trained, torch_server: Served, onnx_server: Served
) -> None:
    images = [image_bytes(300 + i, (70, 50)) for i in range(3)]
    files = [("file", (f"{i}.png", data)) for i, data in enumerate(images)]
    with onnx_server.client(token=None) as http:
        body = http.post("/v1/predict", files=files).json()
        model = http.get("/v1/model").json()
    assert model["engine"] == "onnxruntime" and model["labels"] == LABELS
    assert model["run"] == 1 and model["dataset_version"] == 1
    got = np.array([_as_row(p["top"]) for p in body["predictions"]])
    assert np.allclose(got, _probs(trained, 1, images), atol=1e-4)
    # The ONNX server process never mapped torch's library; the torch one did.
    maps = Path(f"/proc/{onnx_server.pid}/maps")
    if maps.exists():
        assert "libtorch" not in maps.read_text()
        assert "libtorch" in Path(f"/proc/{torch_server.pid}/maps").read_text()


def test_onnx_request_path_imports_no_torch(trained: Trained) -> None:
    code = f"""
import sys
from pathlib import Path
import numpy as np
from fastapi.testclient import TestClient
from annotate2model.serve.app import create_app
from annotate2model.serve.models import OnnxModel
model = OnnxModel.load(Path({str(trained.run_dir(1) / "model.onnx")!r}), "cpu")
with TestClient(create_app([model])) as client:
    data = open({str(next((trained.images / "ants").iterdir()))!r}, "rb").read()
    r = client.post("/v1/predict", files=[("file", ("a.png", data))])
    assert r.status_code == 200, r.text
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_serving_beyond_loopback_without_a_token_says_what_anyone_can_do() -> None:
    from annotate2model.serve.app import exposure
    from annotate2model.settings import Secret

    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert exposure(host, None) is None, host
    assert exposure("0.0.0.0", Secret("t")) is None
    for host in ("0.0.0.0", "::", "192.0.2.7", "example.com"):
        said = exposure(host, None)
        assert said is not None and "without a token" in said and "/predict" in said


def test_serving_onnx_without_an_export_says_how_to_make_one(trained: Trained) -> None:
    from tests.serve.conftest import a2m

    proc = a2m(trained.root, "serve", "2", "--onnx", check=False)
    assert proc.returncode == 1
    assert "no ONNX export" in proc.stderr and "a2m export 2 --format onnx" in proc.stderr
