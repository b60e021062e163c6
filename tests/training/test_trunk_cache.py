"""The trunk's ONNX graph (torch.onnx.export of the torchvision trunk behind its normalisation):
the features of torchvision's network within float rounding, for every backbone it is made for,
exported again when damaged, and a failed export that says so and extracts with torch."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.store.imports import import_folder
from annotate2model.training.context import RunContext
from annotate2model.training.features import embeddings, onnx_trunk
from annotate2model.training.features.backbones import (
    build_trunk,
    load_state_dict,
    trunk_state_from,
)
from annotate2model.training.features.data import Preprocessing
from annotate2model.training.features.embeddings import (
    EmbeddingCache,
    ExtractJob,
    extract_features,
    torch_network,
)
from annotate2model.training.features.weights import resolve_weights
from annotate2model.training.runs import runner
from tests.training.conftest import make_split_folder, small_config

pytestmark = pytest.mark.training

CPU = torch.device("cpu")


def _torchvision_trunk(weights: Path) -> torch.nn.Module:
    source = resolve_weights("resnet18", str(weights), 0)
    state = load_state_dict("resnet18", source)
    assert state is not None
    trunk = build_trunk("resnet18")
    trunk.load_state_dict(trunk_state_from("resnet18", state, str(weights), trunk))
    return trunk.eval()


def _close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-4) -> bool:
    """Equal but for float rounding: within `rtol` of the larger output's scale."""
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max()))


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _onnx_files(cache: EmbeddingCache) -> list[Path]:
    return sorted((cache.root / "trunks").glob("*.onnx"))


def test_onnx_gives_the_torchvision_features(tmp_path: Path, weights: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    model = _torchvision_trunk(weights)
    prep = Preprocessing(73, 64)
    path = cache.onnx_path("resnet18", "id", 64)
    assert cache.save_onnx(path, model, prep) is not None
    session = cache.load_onnx(path)
    assert session is not None
    eager = torch_network(model, prep, CPU, False)
    for n in (1, 5):  # any batch size
        images = _images(n, 64, seed=n)
        assert _close(onnx_trunk.run(session, images), eager(images))
    assert path != cache.onnx_path("resnet18", "other", 64)
    assert path != cache.onnx_path("resnet18", "id", 224)
    assert path != cache.onnx_path("resnet50", "id", 64)
    cache.close()


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-digest", "empty"])
def test_damaged_onnx_trunk_is_exported_again(
    store: Store, version1: Path, weights: Path, damage: str
) -> None:
    first = runner.train(store, small_config(weights, precision="fp32"))
    cache = RunContext.from_store(store).embedding_cache()
    (graph,) = _onnx_files(cache)
    digest = graph.with_name(graph.name + ".sha256")
    good = graph.read_bytes()
    if damage == "truncate":
        graph.write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        graph.write_bytes(good[:-100] + bytes([good[-100] ^ 1]) + good[-99:])
    elif damage == "no-digest":
        digest.unlink()
    else:
        graph.write_bytes(b"")
    assert cache.load_onnx(graph) is None
    # New images need the trunk: the damaged copy is ignored and a good one written again.
    make_split_folder(version1, {"ants": 14, "bees": 12}, {}, seed=0)
    import_folder(store, version1)
    second = runner.train(store, small_config(weights, precision="fp32"))
    assert second.extraction is not None and second.extraction.computed == 2
    assert cache.load_onnx(graph) is not None
    assert second.run.metrics["splits"]["val"]["accuracy"] == pytest.approx(
        first.run.metrics["splits"]["val"]["accuracy"], abs=0.15
    )
    cache.close()


def test_a_runs_features_equal_torchvisions(
    store: Store, version1: Path, weights: Path, tmp_path: Path
) -> None:
    """A CPU fp32 run extracts through the ONNX graph; a fresh torchvision build gives the same
    vectors within 1e-4 of their scale."""
    outcome = runner.train(store, small_config(weights, precision="fp32"))
    cache = RunContext.from_store(store).embedding_cache()
    assert _onnx_files(cache)
    assert outcome.run.status == "succeeded"
    paths = sorted(version1.rglob("*.png"))[:6]
    jobs = [ExtractJob(f"{i:064x}", p, 0) for i, p in enumerate(paths)]
    prep = Preprocessing(36, 32)
    session = cache.load_onnx(_onnx_files(cache)[0])
    assert session is not None
    torch_cache = EmbeddingCache(tmp_path / "torch")
    expected, _ = extract_features(
        torch_cache,
        "k",
        "d",
        jobs,
        lambda: torch_network(_torchvision_trunk(weights), prep, CPU, False),
        prep,
    )
    torch_cache.close()
    from annotate2model.training.features.images import load_image

    images = np.stack([load_image(p, prep) for p in paths])
    got = onnx_trunk.run(session, images)
    for i, job in enumerate(jobs):
        assert _close(got[i], expected[(job.sha256, 0)])
    cache.close()


def test_a_failed_export_is_logged_and_torch_extracts(
    store: Store,
    version1: Path,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with caplog.at_level(logging.WARNING, logger="annotate2model.training.features.onnx_trunk"):
        outcome = runner.train(store, small_config(weights, precision="fp32"))
    assert outcome.run.status == "succeeded"
    assert outcome.extraction is not None and outcome.extraction.computed > 0
    assert "exporter broke" in caplog.text and "extracting with torch" in caplog.text
    cache = RunContext.from_store(store).embedding_cache()
    assert _onnx_files(cache) == []
    cache.close()


def test_the_predictor_extracts_through_the_runs_onnx_trunk(
    store: Store, version1: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluating a probe on the CPU in fp32 runs the ONNX graph its training exported (one
    engine picks for both), and gives the probabilities the run recorded."""
    outcome = runner.train(store, small_config(weights, precision="fp32"))
    with store.read() as session:
        recorded = {
            p.image_sha256: p.probs
            for p in store_runs.read_predictions(session, outcome.run.id)
            if p.split == "val"
        }
    cache = RunContext.from_store(store).embedding_cache()
    assert len(_onnx_files(cache)) == 1
    cache.close()

    def no_torch(*_args: object) -> None:
        raise AssertionError("the trunk ran in torch")

    monkeypatch.setattr(embeddings, "torch_network", no_torch)
    # The run's features are cached: drop them, so that the evaluation computes them again.
    db = store.settings.workspace.cache_dir / "embeddings" / "embeddings.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM vectors")
    evaluation = runner.evaluate_run(store, outcome.run.id, split="val")
    with store.read() as session:
        again = {
            p.image_sha256: p.probs
            for p in store_runs.read_predictions(session, outcome.run.id)
            if p.split == "val"
        }
    assert set(again) == set(recorded) and evaluation.metrics.n == len(recorded)
    for sha, probs in recorded.items():
        assert np.allclose(again[sha], probs, atol=1e-5)


# vgg16's trunk holds its two 4096-wide Linears (120 M parameters): its export works the same
# way, but costs a minute and half a gigabyte here.
@pytest.mark.parametrize(
    "backbone", ["resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]
)
def test_other_backbones_export_to_the_same_features(tmp_path: Path, backbone: str) -> None:
    torch.manual_seed(0)
    model = build_trunk(backbone).eval()
    prep = Preprocessing(73, 64)
    cache = EmbeddingCache(tmp_path / "cache")
    path = cache.onnx_path(backbone, "none-seed0", 64)
    session = cache.save_onnx(path, model, prep)
    assert session is not None
    images = _images(3, 64)
    assert _close(onnx_trunk.run(session, images), torch_network(model, prep, CPU, False)(images))
    cache.close()
