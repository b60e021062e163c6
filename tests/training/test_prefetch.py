"""Decoding new images, and computing their features with the trunk's ONNX copy, before torch is
imported: torch-free, only new images, same features, and a wrong guess costs nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annotate2model.progress import RecordingProgress
from annotate2model.store import Store
from annotate2model.store.imports import import_folder
from annotate2model.store.versions import version_items
from annotate2model.training import artifacts, runner
from annotate2model.training.data import Preprocessing
from annotate2model.training.prefetch import EarlyDecode, OnnxGuess, start_early_decode
from tests.training.conftest import make_split_folder, small_config

pytestmark = pytest.mark.training


def test_prefetch_does_not_import_torch() -> None:
    code = "import sys, annotate2model.training.prefetch; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_early_decode_takes_only_new_images_and_gives_the_same_features(
    store: Store, version1: Path, weights: Path
) -> None:
    config = small_config(weights)
    early = start_early_decode(store, config, None)
    assert early is not None and len(early) == 32  # empty cache: every image is new
    first = runner.train(store, config, early=early)
    assert first.extraction is not None and first.extraction.computed == 32
    # No ONNX copy of the trunk before this first run: decodes only.
    assert first.extraction.early == 0
    assert len(early) == 0  # every decode was taken over by the extraction
    assert start_early_decode(store, config, None) is None  # all cached now
    assert start_early_decode(store, small_config(weights, mode="finetune"), None) is None

    make_split_folder(version1, {"ants": 14, "bees": 12}, {}, seed=0)
    import_folder(store, version1)
    early = start_early_decode(store, config, None)
    assert early is not None and len(early) == 2
    second = runner.train(store, config, early=early)
    assert second.extraction is not None and second.extraction.computed == 2
    # The first run left the ONNX copy: the new images' features came from the early thread.
    assert second.extraction.early == 2

    # The same vectors as decoding in the extraction itself (a fresh cache, no early decode).
    cache = runner.embedding_cache(store)
    run_dir = store.settings.workspace.root / str(second.run.artifact_dir)
    key = artifacts.read_card(run_dir)["embedding_key"]
    with store.read() as session:
        shas = [i.image_sha256 for i in version_items(session, 2)]
    with_early = cache.get(key, shas)
    cache.close()
    for path in (store.settings.workspace.cache_dir / "embeddings").glob("embeddings.sqlite*"):
        path.unlink()
    third = runner.train(store, config)
    assert third.extraction is not None and third.extraction.computed == 34
    cache = runner.embedding_cache(store)
    plain = cache.get(key, shas)
    cache.close()
    assert set(plain) == set(with_early) and len(plain) == 34
    for sha, vec in plain.items():
        np.testing.assert_array_equal(vec, with_early[sha])


def test_early_decode_of_a_corrupt_image_is_skipped(
    store: Store, version1: Path, weights: Path
) -> None:
    with store.read() as session:
        victim = version_items(session, 1, "train")[0].image_sha256
    path = store.blobs.path(victim)
    path.chmod(0o644)
    path.write_bytes(b"\x89PNG\r\n\x1a\n not an image any more")
    config = small_config(weights)
    early = start_early_decode(store, config, None)
    assert early is not None
    progress = RecordingProgress()
    run = runner.train(store, config, progress=progress, early=early).run
    assert run.status == "succeeded"
    assert any("skipped" in note and "corrupt" in note for note in progress.notes)


def test_early_decode_for_a_missing_version_leaves_the_error_to_the_run(
    store: Store, version1: Path, weights: Path
) -> None:
    assert start_early_decode(store, small_config(weights), 99) is None


def test_early_features_under_another_model_key_are_not_taken(
    store: Store, version1: Path, weights: Path
) -> None:
    """The guess names other weights, or decodes at another size, than the run: the run
    computes its own features."""
    config = small_config(weights)
    runner.train(store, config)  # leaves the ONNX copy of `weights`' trunk
    prep = Preprocessing(config.resize_size, config.image_size)
    cache_dir = store.settings.workspace.cache_dir / "embeddings"
    wrong = (
        (OnnxGuess(cache_dir, "resnet18", "none", 0), prep),  # no ONNX copy of these weights
        (OnnxGuess(cache_dir, "resnet18", str(weights), 0), Preprocessing(prep.resize, 48)),
    )
    for grown, (guess, early_prep) in enumerate(wrong, start=1):
        make_split_folder(version1, {"ants": 13 + grown, "bees": 11 + grown}, {}, seed=0)
        import_folder(store, version1)
        found = start_early_decode(store, config, None)
        assert found is not None and len(found) == 2
        images = [(sha, store.blobs.path(sha)) for sha in list(found._futures)]
        found.close()
        made = EarlyDecode(images, early_prep, onnx=guess)
        run = runner.train(store, config, early=made)
        assert run.extraction is not None
        assert run.extraction.computed == 2 and run.extraction.early == 0


def test_closing_stops_the_early_extraction(store: Store, version1: Path, weights: Path) -> None:
    config = small_config(weights)
    runner.train(store, config)
    prep = Preprocessing(config.resize_size, config.image_size)
    with store.read() as session:
        sha = version_items(session, 1, "train")[0].image_sha256
    many = [(f"{i:064x}", store.blobs.path(sha)) for i in range(400)]
    cache_dir = store.settings.workspace.cache_dir / "embeddings"
    early = EarlyDecode(many, prep, onnx=OnnxGuess(cache_dir, "resnet18", str(weights), 0))
    early.close()
    assert early._thread is not None and not early._thread.is_alive()
    assert early.features("any", prep) == {}
