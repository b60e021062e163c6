"""The batcher: requests queued together run as one forward pass, each gets its own rows back,
large requests are sliced, a failing pass fails its requests only; the CUDA path (gpu); and the
decoding threads beside torch's passes."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

from annotate2model.serve.batching import Batcher
from annotate2model.serve.models import OnnxModel, ServedModel, TorchModel
from annotate2model.training import Predictor
from annotate2model.training.features.images import Preprocessing
from annotate2model.training.runs.export import sample_batch
from tests.conftest import image_bytes
from tests.serve.conftest import Trained

pytestmark = [pytest.mark.training, pytest.mark.slow]


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_requests_waiting_together_run_as_one_pass(trained: Trained) -> None:
    model = TorchModel.load(trained.run_dir(1), "cpu")
    requests = [_images(n, seed) for seed, n in enumerate([1, 3, 2, 1])]
    batcher = Batcher(model, max_batch=8)
    # Queued before the thread starts: the first pass takes all of them (7 images).
    futures = [batcher.submit(images) for images in requests]
    batcher.start()
    try:
        got = [f.result(timeout=60) for f in futures]
    finally:
        batcher.stop()
    assert (batcher.stats.batches, batcher.stats.images, batcher.stats.largest) == (1, 7, 7)
    for images, probs in zip(requests, got, strict=True):
        assert probs.shape == (len(images), 2)
        assert np.allclose(probs, model.forward(images), atol=1e-4)


def test_full_batches_are_split_between_whole_requests_and_large_ones_sliced(
    trained: Trained,
) -> None:
    model = TorchModel.load(trained.run_dir(1), "cpu")
    batcher = Batcher(model, max_batch=4)
    sizes = [3, 3, 9]
    requests = [_images(n, 10 + n) for n in sizes]
    futures = [batcher.submit(images) for images in requests]
    batcher.start()
    try:
        got = [f.result(timeout=60) for f in futures]
    finally:
        batcher.stop()
    # 3 | 3 | 9 sliced 4+4+1: five passes, none over four images.
    assert batcher.stats.batches == 5 and batcher.stats.largest == 4
    for images, probs in zip(requests, got, strict=True):
        assert np.allclose(probs, model.forward(images), atol=1e-4)


def test_a_failing_pass_fails_its_requests_and_the_batcher_goes_on(trained: Trained) -> None:
    model = TorchModel.load(trained.run_dir(1), "cpu")
    batcher = Batcher(model, max_batch=8)
    batcher.start()
    try:
        wrong = batcher.submit(np.zeros((1, 32, 32, 4), dtype=np.uint8))  # four channels
        with pytest.raises(RuntimeError):
            wrong.result(timeout=60)
        fine = batcher.submit(_images(2, 3)).result(timeout=60)
        assert fine.shape == (2, 2)
    finally:
        batcher.stop()


def test_torch_and_onnx_models_agree_with_the_predictor(trained: Trained) -> None:
    images = sorted((trained.images / "ants").iterdir())[:4]
    batch = sample_batch(Preprocessing(37, 32), images)
    expected = Predictor.load(trained.run_dir(1), "cpu").predict(images).probs
    models: list[ServedModel] = [
        TorchModel.load(trained.run_dir(1), "cpu"),
        OnnxModel.load(trained.run_dir(1) / "model.onnx", "cpu"),
    ]
    # The eager server is the Predictor itself, on the images the server decoded.
    assert isinstance(models[0], TorchModel) and isinstance(models[0].predictor, Predictor)
    for model in models:
        assert np.allclose(model.forward(batch), expected, atol=1e-4), model.engine
        assert model.labels == ["ants", "bees"] and model.run_id == 1
        assert model.describe()["dataset_version"] == 1


@pytest.mark.gpu
def test_torch_model_on_cuda_agrees_with_the_cpu(trained: Trained) -> None:
    images = _images(5, 99)
    on_gpu = TorchModel.load(trained.run_dir(1), "cuda")
    assert on_gpu.device.startswith("cuda")
    cpu = TorchModel.load(trained.run_dir(1), "cpu")
    assert np.allclose(on_gpu.forward(images), cpu.forward(images), atol=1e-3)
    batcher = Batcher(on_gpu, max_batch=4)
    batcher.start()
    try:
        assert np.allclose(
            batcher.submit(images).result(timeout=60), cpu.forward(images), atol=1e-3
        )
    finally:
        batcher.stop()


def test_torch_servers_decode_on_lower_priority_threads(trained: Trained) -> None:
    """Beside torch's passes, images are decoded on threads of a lower priority (Linux) that
    end with the server; an ONNX Runtime server keeps Starlette's own threads."""
    from fastapi.testclient import TestClient

    from annotate2model.serve.app import DECODE_NICE, create_app

    files = [("file", ("a.png", image_bytes(5, (90, 70))))]
    app = create_app([TorchModel.load(trained.run_dir(1), "cpu")])
    with TestClient(app) as client:
        assert client.post("/v1/predict", files=files).status_code == 200
        decoders = [t for t in threading.enumerate() if t.name.startswith("a2m-decode")]
        assert decoders
        if sys.platform == "linux":
            assert {os.getpriority(os.PRIO_PROCESS, t.native_id) for t in decoders} == {DECODE_NICE}
            assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == 0
    assert not any(t.is_alive() for t in decoders)
    onnx = create_app([OnnxModel.load(trained.run_dir(1) / "model.onnx", "cpu")])
    with TestClient(onnx) as client:
        assert client.post("/v1/predict", files=files).status_code == 200
        assert not [t for t in threading.enumerate() if t.name.startswith("a2m-decode")]
