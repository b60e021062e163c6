"""What a fault sweep found in the model server, fixed (issue 26):

- `/predict` reads a task's image only from the connected Label Studio's media paths, `data:` URLs
  and the hosts named in `[serve] image_hosts`: a listener on loopback that it is sent receives
  nothing, an API path never reaches Label Studio (the request would carry the workspace's token);
- the work of one `/predict` is bounded (one try per image, a few failures, a deadline, a number
  of tasks), a failing task gets an empty result, and `/health` answers meanwhile;
- an image is refused (413) before it is decoded when it would decode to more pixels than the
  server allows, alone or with the rest of its request; a large JPEG is decoded reduced;
- beyond loopback the server needs a token or `--no-auth`, and the token need not be in `ps`.

A real `a2m serve` process talks to a recording HTTP server standing in for Label Studio.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import ipaddress
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.backend import TaskImages
from annotate2model.labelstudio.config import build_label_config
from annotate2model.serve.app import (
    MAX_FAILED_READS,
    READS_PER_REQUEST,
    ServeSettings,
    create_app,
)
from tests.conftest import image_bytes
from tests.serve.conftest import LABELS, Served, Trained, a2m, serving

pytestmark = [pytest.mark.training, pytest.mark.slow]

LS_TOKEN = "fake-ls-legacy-token-0123"
LABEL_CONFIG = build_label_config(LABELS)
GOOD = image_bytes(11, (60, 40))


def gray_png(width: int, height: int) -> bytes:
    """A real, decodable all-black greyscale PNG of width x height, a few hundred KB at most
    (13,000 x 13,000: about 165 KB, 169 M pixels to decode)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte, then the row
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


# -- a recording HTTP server --------------------------------------------------------------------


@dataclass
class Listener:
    """A real HTTP server: every request it receives is recorded as (path, headers)."""

    url: str
    port: int
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]


Answer = Callable[[str], tuple[int, bytes, float]]


@contextlib.contextmanager
def listening(answer: Answer, host: str = "127.0.0.1") -> Iterator[Listener]:
    """A threaded HTTP server on `host` (a free port) answering `answer(path)`: status, body and
    seconds to wait first."""
    record: list[tuple[str, dict[str, str]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            record.append((self.path, dict(self.headers.items())))
            status, body, delay = answer(self.path)
            time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    port = httpd.server_address[1]
    try:
        yield Listener(url=f"http://127.0.0.1:{port}", port=port, seen=record)
    finally:
        httpd.shutdown()
        httpd.server_close()


def fake_label_studio(path: str) -> tuple[int, bytes, float]:
    if path.startswith("/data/upload/1/good"):
        return 200, GOOD, 0.0
    if path.startswith("/data/upload/1/bad"):
        return 500, b"Server Error", 0.3  # a slow 500, as for an upload gone from its disk
    return 200, b'{"token": "the workspace token"}', 0.0


def image_host(path: str) -> tuple[int, bytes, float]:
    return 200, GOOD, 0.0


def public_ipv4() -> str | None:
    """An address of this machine that is neither loopback nor link-local, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # no packet is sent for a UDP connect
            found = str(probe.getsockname()[0])
        except OSError:
            return None
    address = ipaddress.ip_address(found)
    return None if address.is_loopback or address.is_link_local else found


@dataclass(frozen=True)
class Setup:
    server: Served
    label_studio: Listener
    outsider: Listener
    public: Listener | None
    public_ip: str | None


@pytest.fixture(scope="module")
def setup(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """`a2m serve 1` (no token, default limits) connected to a fake Label Studio, with a loopback
    host and (where this machine has one) a public address named in A2M_SERVE_IMAGE_HOSTS."""
    log = tmp_path_factory.mktemp("logs") / "hardened.log"
    ip = public_ipv4()
    with contextlib.ExitStack() as stack:
        ls = stack.enter_context(listening(fake_label_studio))
        outsider = stack.enter_context(listening(image_host))
        public = stack.enter_context(listening(image_host, "0.0.0.0")) if ip else None
        hosts = [f"127.0.0.1:{outsider.port}", "localhost"]
        if public is not None:
            hosts.append(f"{ip}:{public.port}")
        env = {
            "LABEL_STUDIO_URL": ls.url,
            "LABEL_STUDIO_API_KEY": LS_TOKEN,
            "A2M_SERVE_IMAGE_HOSTS": ", ".join(hosts),
        }
        served = stack.enter_context(serving(trained.root, "1", log=log, env=env))
        yield Setup(served, ls, outsider, public, ip)


def predict(served: Served, urls: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    tasks = [{"id": i + 1, "data": {"image": url}} for i, url in enumerate(urls)]
    with served.client(token=None) as http:
        response = http.post(
            "/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG}, timeout=timeout
        )
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert len(results) == len(urls)
    return results


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM line")


# -- what /predict reads ------------------------------------------------------------------------


def test_predict_reads_label_studio_media_and_nothing_else(setup: Setup) -> None:
    ls, outsider = setup.label_studio, setup.outsider
    ls.seen.clear()
    outsider.seen.clear()
    refused = [
        # Label Studio's API, relative or on its own origin: it would answer with the token.
        "/api/current-user/token",
        "/api/projects",
        f"{ls.url}/api/current-user/token",
        "/data/upload/../../api/projects",
        "/data/upload/1/%2e%2e/%2e%2e/api/projects",
        "/data/local-files/?d=../../etc/passwd",
        "/data/local-files/?d=/etc/passwd",
        f"//127.0.0.1:{outsider.port}/x.png",
        # A loopback host is refused even when named in image_hosts; others are not named.
        f"{outsider.url}/cat.png",
        f"http://localhost:{outsider.port}/cat.png",
        f"http://[::1]:{outsider.port}/cat.png",
        f"http://0.0.0.0:{outsider.port}/cat.png",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "ftp://example.com/x.png",
    ]
    good = ["/data/upload/1/good.png", f"{ls.url}/data/upload/1/good-again.png"]
    results = predict(setup.server, [*refused, *good])
    assert all(r["result"] == [] for r in results[: len(refused)])
    assert all(r["result"] and r["model_version"] == "a2m-run-1" for r in results[len(refused) :])
    # Label Studio was asked for its two media files, with the token, and for nothing else.
    assert sorted(ls.paths()) == ["/data/upload/1/good-again.png", "/data/upload/1/good.png"]
    assert all(h.get("Authorization") == f"Token {LS_TOKEN}" for _, h in ls.seen)
    assert outsider.seen == []
    log = setup.server.log.read_text()
    assert "is not one of Label Studio's media paths" in log
    assert "a loopback or link-local address" in log
    assert "is not Label Studio nor a host named in [serve] image_hosts" in log
    assert "Traceback" not in log


def test_the_reader_refuses_before_sending_anything() -> None:
    """The reader alone (no server): whatever the URL, nothing that is not Label Studio's media
    or a named host that is not loopback or link-local reaches the network."""
    from annotate2model.labelstudio.backend import ImageRefused
    from annotate2model.labelstudio.client import LabelStudioClient
    from annotate2model.settings import Secret

    with listening(fake_label_studio) as ls, listening(image_host) as named:
        hosts = ["169.254.169.254", f"127.0.0.1:{named.port}", "localhost", "[::1]"]
        client = LabelStudioClient(ls.url, Secret(LS_TOKEN), attempts=1)
        reader = TaskImages(client, None, hosts)
        try:
            for url in [
                "http://[::1",
                "/data/upload/1/a\x00b.png",
                "/data/upload/1/a\\..\\..\\api",
                "/data/upload/1/good.png#/../../api/projects",
                "/data/local-files/?d=a.png&next=/api/projects",
                "/data/local-files/?d=a.png&d=b.png",
                " /api/projects",
                f"HTTP://127.0.0.1:{ls.port}/api/projects",
                f"http://127.0.0.1:{ls.port}/data/../api/projects",
                "http://169.254.169.254/latest/meta-data/",
                f"http://127.0.0.1:{named.port}/cat.png",
                f"http://localhost:{named.port}/cat.png",
                f"http://user:pw@127.0.0.1:{named.port}/cat.png",
            ]:
                with pytest.raises(ImageRefused):
                    reader.read(url)
            assert reader.read(f"HTTP://127.0.0.1:{ls.port}/data/upload/1/good.png") == GOOD
        finally:
            reader.close()
    assert ls.paths() == ["/data/upload/1/good.png"]
    assert named.seen == []


def test_a_host_named_in_the_setting_is_read_without_the_token(setup: Setup) -> None:
    if setup.public is None or setup.public_ip is None:
        pytest.skip("this machine has no address beyond loopback")
    public = setup.public
    public.seen.clear()
    named = f"http://{setup.public_ip}:{public.port}/cat.png"
    other_port = f"http://{setup.public_ip}:{setup.outsider.port}/cat.png"
    results = predict(setup.server, [named, other_port])
    assert results[0]["result"] and results[1]["result"] == []
    assert public.paths() == ["/cat.png"]
    assert "Authorization" not in public.seen[0][1]
    assert public.seen[0][1]["Host"] == f"{setup.public_ip}:{public.port}"


def test_many_bad_tasks_cost_a_few_requests_and_health_keeps_answering(setup: Setup) -> None:
    ls = setup.label_studio
    ls.seen.clear()
    health: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=setup.server.url, timeout=30) as http:
            while not done.is_set():
                started = time.perf_counter()
                assert http.get("/health").status_code == 200
                health.append(time.perf_counter() - started)
                time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        started = time.perf_counter()
        # Before: each was tried 6 times with back-off (480 requests), /health hung 27.5 s.
        results = predict(setup.server, [f"/data/upload/1/bad-{i}.png" for i in range(80)])
        took = time.perf_counter() - started
    finally:
        done.set()
        poller.join()
    assert all(r["result"] == [] for r in results)
    assert len(ls.seen) <= MAX_FAILED_READS + READS_PER_REQUEST
    assert took < 10
    assert health and max(health) < 1.0
    assert "reads of this request failed already" in setup.server.log.read_text()


# -- pixels ---------------------------------------------------------------------------------


def test_a_huge_png_is_refused_before_it_is_decoded(setup: Setup) -> None:
    huge = gray_png(13_000, 13_000)
    assert len(huge) < 300_000
    big_jpeg = io.BytesIO()
    from PIL import Image

    # 36 M pixels in its header, decoded at 1/8 of each side: 750 x 750.
    Image.new("RGB", (6000, 6000), (120, 30, 200)).save(big_jpeg, "JPEG", quality=50)
    with setup.server.client(token=None) as http:
        warm = http.post("/v1/predict", files=[("file", ("ok.png", GOOD))])
        assert warm.status_code == 200
        before = vm_hwm_kb(setup.server.pid)
        started = time.perf_counter()
        # Before: ~820 MB and 4.4 s for one; 16 in one request peaked at 2.46 GB.
        many = http.post("/v1/predict", files=[("file", (f"{i}.png", huge)) for i in range(16)])
        took = time.perf_counter() - started
        assert many.status_code == 413
        detail = many.json()["detail"]
        assert "13,000 x 13,000 = 169,000,000 pixels" in detail and "25,000,000" in detail
        jpeg = http.post("/v1/predict", files=[("file", ("big.jpg", big_jpeg.getvalue()))])
        assert jpeg.status_code == 200, jpeg.text
        after = vm_hwm_kb(setup.server.pid)
        # The ML backend: the same image as a data: URL gets an empty result.
        as_task = "data:image/png;base64," + base64.b64encode(huge).decode()
        results = predict(setup.server, [as_task, "/data/upload/1/good.png"])
    assert took < 2.0
    assert (after - before) < 150 * 1024, f"peak memory grew by {(after - before) // 1024} MB"
    assert results[0]["result"] == [] and results[1]["result"]


def test_a_request_over_its_pixel_budget_answers_413(trained: Trained) -> None:
    from annotate2model.serve.models import TorchModel

    model = TorchModel.load(trained.run_dir(1), "cpu")
    settings = ServeSettings(max_pixels=100 * 100, max_request_pixels=2 * 100 * 100)
    square = image_bytes(5, (100, 100))
    with TestClient(create_app([model], settings, TaskImages(None, None))) as client:
        two = client.post("/v1/predict", files=[("file", (f"{i}.png", square)) for i in range(2)])
        assert two.status_code == 200
        three = client.post("/v1/predict", files=[("file", (f"{i}.png", square)) for i in range(3)])
        assert three.status_code == 413
        assert "more than 20,000 pixels in all" in three.json()["detail"]
        wide = client.post("/v1/predict", files=[("file", ("w.png", image_bytes(5, (101, 100))))])
        assert wide.status_code == 413 and "10,100 pixels" in wide.json()["detail"]
        # In /predict the task past the budget gets an empty result; the others are predicted.
        url = "data:image/png;base64," + base64.b64encode(square).decode()
        tasks = [{"id": i, "data": {"image": url}} for i in range(3)]
        body = client.post("/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG}).json()
        assert sum(1 for r in body["results"] if r["result"]) == 2


class _SlowReader:
    """A task image source that takes `seconds` per read (or fails), counting its calls."""

    def __init__(self, seconds: float, fail: bool = False) -> None:
        self.seconds = seconds
        self.fail = fail
        self.calls = 0
        self._lock = threading.Lock()

    def read(self, url: str) -> bytes:
        with self._lock:
            self.calls += 1
        time.sleep(self.seconds)
        if self.fail:
            raise LabelStudioError("Label Studio did not answer")
        return GOOD


def test_predict_work_is_bounded_by_tasks_time_and_failures(trained: Trained) -> None:
    from annotate2model.serve.models import TorchModel

    model = TorchModel.load(trained.run_dir(1), "cpu")

    def body(n: int) -> dict[str, Any]:
        tasks = [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(n)]
        return {"tasks": tasks, "label_config": LABEL_CONFIG}

    settings = ServeSettings(max_tasks=20, task_seconds=1.0)
    slow = _SlowReader(0.4)
    with TestClient(create_app([model], settings, slow)) as client:
        too_many = client.post("/predict", json=body(21))
        assert too_many.status_code == 413 and "at most 20 tasks" in too_many.json()["detail"]
        assert slow.calls == 0
        started = time.perf_counter()
        results = client.post("/predict", json=body(20)).json()["results"]
        took = time.perf_counter() - started
    # Four at a time, 0.4 s each, within 1 s: the first reads are predicted, the rest are empty.
    predicted = sum(1 for r in results if r["result"])
    assert 4 <= predicted < 20 and took < 2.5
    failing = _SlowReader(0.01, fail=True)
    with TestClient(create_app([model], settings, failing)) as client:
        results = client.post("/predict", json=body(20)).json()["results"]
    assert all(r["result"] == [] for r in results)
    assert failing.calls <= MAX_FAILED_READS + READS_PER_REQUEST


# -- who may call it ----------------------------------------------------------------------------


def test_beyond_loopback_the_server_wants_a_token_or_no_auth(
    trained: Trained, tmp_path: Path
) -> None:
    started = time.perf_counter()
    refused = a2m(trained.root, "serve", "1", "--host", "0.0.0.0", check=False)
    assert refused.returncode == 1
    assert "refusing to listen on 0.0.0.0 without a token" in refused.stderr
    assert "A2M_SERVE_TOKEN" in refused.stderr and "--no-auth" in refused.stderr
    assert time.perf_counter() - started < 30  # refused before any model is loaded
    both = a2m(trained.root, "serve", "1", "--host", "::", "--no-auth", "--token", "t", check=False)
    assert both.returncode == 1 and "exclude each other" in both.stderr
    assert "shows in the process list" in both.stderr

    with serving(
        trained.root, "1", "--host", "0.0.0.0", "--no-auth", log=tmp_path / "open.log"
    ) as served:
        assert httpx.get(f"{served.url}/health").status_code == 200
        log = served.log.read_text()
    assert "warning (--no-auth)" in log and "anyone who can reach it can run the model" in log
    assert "with this workspace's Label Studio token" in log


def test_a_token_read_from_stdin_is_not_in_the_process_list(
    trained: Trained, tmp_path: Path
) -> None:
    secret = "stdin-token-9876543210"
    with serving(
        trained.root,
        "1",
        "--host",
        "0.0.0.0",
        "--token",
        "-",
        log=tmp_path / "stdin.log",
        stdin=secret + "\n",
    ) as served:
        cmdline = Path(f"/proc/{served.pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline
        files = [("file", ("a.png", GOOD))]
        assert httpx.post(f"{served.url}/v1/predict", files=files).status_code == 401
        with served.client(token=secret) as http:
            assert http.post("/v1/predict", files=files).status_code == 200
        log = served.log.read_text()
    assert "warning" not in log and "shows in the process list" not in log


def test_the_cli_defaults_are_the_servers() -> None:
    """`a2m serve` imports the server lazily, so its defaults are written twice: they agree."""
    import typer.main

    from annotate2model.cli.app import app
    from annotate2model.serve.app import DEFAULT_MAX_TASKS, DEFAULT_SERVE_MAX_PIXELS

    root: Any = typer.main.get_command(app)
    defaults = {p.name: p.default for p in root.commands["serve"].params}
    assert defaults["max_pixels"] == DEFAULT_SERVE_MAX_PIXELS
    assert defaults["max_tasks"] == DEFAULT_MAX_TASKS
    assert defaults["host"] == "127.0.0.1" and defaults["no_auth"] is False
