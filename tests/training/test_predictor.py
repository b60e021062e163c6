"""The Predictor: a run folder loaded once, predicting from paths, bytes, Pillow images or arrays,
with no store open; ensembles are Predictors of Predictors."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotate2model.progress import NullProgress
from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.training import EnsemblePredictor, Predictor
from annotate2model.training.features.embeddings import EmbeddingCache
from annotate2model.training.features.images import load_image
from annotate2model.training.runs import runner
from tests.training.conftest import small_config

pytestmark = pytest.mark.training


def _val_images(store: Store, run_id: int) -> tuple[list[str], np.ndarray]:
    with store.read() as session:
        preds = store_runs.read_predictions(session, run_id, split="val")
    return [p.image_sha256 for p in preds], np.array([p.probs for p in preds])


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_predictor_needs_only_the_run_folder_and_reproduces_the_ledger(
    store: Store, version1: Path, weights: Path, tmp_path: Path, mode: str
) -> None:
    run = runner.train(
        store, small_config(weights, mode=mode, epochs=2, workers=0, precision="fp32")
    ).run
    shas, stored = _val_images(store, run.id)
    # The folder alone, copied away from the workspace, with the store closed.
    folder = tmp_path / "elsewhere"
    shutil.copytree(store.settings.workspace.root / str(run.artifact_dir), folder)
    blobs = [store.blobs.path(s).read_bytes() for s in shas]
    store.close()

    predictor = Predictor.load(folder, device="cpu")
    assert isinstance(predictor, Predictor)
    assert predictor.labels == ["ants", "bees"] and predictor.run_id == run.id
    as_bytes = predictor.predict(blobs)
    assert np.allclose(as_bytes.probs, stored, atol=1e-4)
    # Files, decoded Pillow images and uint8 RGB arrays give the same answers.
    paths = []
    for i, data in enumerate(blobs):
        paths.append(tmp_path / f"img{i}.png")
        paths[-1].write_bytes(data)
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
    arrays = [np.asarray(img) for img in pil]
    for inputs in (paths, [str(p) for p in paths], pil, arrays):
        assert np.allclose(predictor.predict(inputs).probs, as_bytes.probs, atol=1e-5)
    # Images a server has already decoded and cropped give the same answers too.
    crops = np.stack([load_image(b, predictor.prep) for b in blobs])
    assert np.allclose(predictor.forward(crops), as_bytes.probs, atol=1e-4)
    best = as_bytes.top(0, k=1)
    assert best[0][0] in predictor.labels and 0.5 <= best[0][1] <= 1


def test_unreadable_inputs_get_a_reason_and_the_rest_is_predicted(
    store: Store, version1: Path, weights: Path
) -> None:
    run = runner.train(store, small_config(weights, epochs=1)).run
    predictor = Predictor.load(store.settings.workspace.root / str(run.artifact_dir), "cpu")
    good = next((version1 / "val" / "ants").iterdir())
    html = b"<html><body>not an image</body></html>"
    odd = np.zeros((4, 4), dtype=np.uint8)
    result = predictor.predict([good, html, good.read_bytes(), odd])
    assert set(result.errors) == {1, 3}
    assert "array" in result.errors[3]
    assert result.ok.tolist() == [True, False, True, False]
    assert np.isnan(result.probs[1]).all() and result.top(1) == []
    assert np.allclose(result.probs[0], result.probs[2])
    assert np.allclose(result.probs[[0, 2]].sum(1), 1, atol=1e-5)


def test_batches_larger_than_one_forward_pass(store: Store, version1: Path, weights: Path) -> None:
    run = runner.train(store, small_config(weights, epochs=1)).run
    predictor = Predictor.load(store.settings.workspace.root / str(run.artifact_dir), "cpu")
    assert isinstance(predictor, Predictor)
    files = sorted((version1 / "train").rglob("*.png"))
    many = files * 3  # 72 images, more than two CPU batches of 32
    assert len(many) > 2 * predictor.batch_size
    result = predictor.predict(many)
    assert result.probs.shape == (len(many), 2) and not result.errors
    one_by_one = np.concatenate([predictor.predict([f]).probs for f in files])
    assert np.allclose(result.probs[: len(files)], one_by_one, atol=1e-5)


def test_probe_features_come_from_the_cache_when_keys_are_given(
    store: Store, version1: Path, weights: Path
) -> None:
    run = runner.train(store, small_config(weights, epochs=1, precision="fp32")).run
    shas, stored = _val_images(store, run.id)
    cache = EmbeddingCache(store.settings.workspace.cache_dir / "embeddings")
    try:
        predictor = Predictor.load(
            store.settings.workspace.root / str(run.artifact_dir), "cpu", cache=cache
        )
        assert isinstance(predictor, Predictor)
        # The features are cached (training stored them): the trunk is never even built.
        result = predictor.predict(
            [store.blobs.path(s) for s in shas], keys=shas, progress=NullProgress()
        )
        assert predictor._model is None
    finally:
        cache.close()
    assert np.allclose(result.probs, stored, atol=1e-4)


def test_an_ensemble_is_a_predictor_of_predictors(
    store: Store, version1: Path, weights: Path
) -> None:
    a = runner.train(store, small_config(weights, epochs=1)).run
    b = runner.train(store, small_config(weights, epochs=1, optimizer="adamw", lr=1e-3)).run
    root = store.settings.workspace.root
    pa = Predictor.load(root / str(a.artifact_dir), "cpu")
    pb = Predictor.load(root / str(b.artifact_dir), "cpu")
    files = sorted((version1 / "val").rglob("*.png"))
    both = EnsemblePredictor([pa, pb]).predict(files)
    expected = (pa.predict(files).probs + pb.predict(files).probs) / 2
    assert np.allclose(both.probs, expected, atol=1e-6)
    # A recorded ensemble run loads back as the same thing from its own folder.
    ens = runner.ensemble(store, [a.id, b.id])
    loaded = Predictor.load(root / str(ens.artifact_dir), "cpu")
    assert isinstance(loaded, EnsemblePredictor) and loaded.run_id == ens.id
    assert np.allclose(loaded.predict(files).probs, expected, atol=1e-6)
