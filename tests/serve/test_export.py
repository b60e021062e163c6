"""`a2m export`: ONNX and TorchScript files that give the Predictor's probabilities, checked on
export; the ONNX file runs under onnxruntime alone; ensembles export as one network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.training import EnsemblePredictor, Predictor
from annotate2model.training.features.images import Preprocessing
from annotate2model.training.runs import runner
from annotate2model.training.runs.export import (
    read_torchscript_card,
    run_onnx,
    run_torchscript,
    sample_batch,
)
from annotate2model.workspace import Workspace
from tests.serve.conftest import LABELS, Trained, a2m

pytestmark = [pytest.mark.training, pytest.mark.slow]


def _images(trained: Trained) -> list[Path]:
    return (
        sorted((trained.images / "ants").iterdir())[:3]
        + sorted((trained.images / "bees").iterdir())[:3]
    )


def test_onnx_file_under_onnxruntime_gives_the_predictors_probabilities(trained: Trained) -> None:
    # The session fixture exported run 1 through `a2m export 1 --format onnx`.
    path = trained.run_dir(1) / "model.onnx"
    images = _images(trained)
    prep = Preprocessing(37, 32)
    got = run_onnx(path, sample_batch(prep, images))
    expected = Predictor.load(trained.run_dir(1), "cpu").predict(images).probs
    assert np.allclose(got, expected, atol=1e-4)
    import onnx

    card = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["a2m_card"])
    assert card["labels"] == LABELS and card["run"] == 1 and card["version"] == 1


def test_export_prints_the_parity_and_writes_torchscript(trained: Trained, tmp_path: Path) -> None:
    out = tmp_path / "run2.pt"
    proc = a2m(trained.root, "export", "2", "--format", "torchscript", "--output", str(out))
    assert "max abs difference" in proc.stdout and str(out) in proc.stdout.replace("\n", "")
    images = _images(trained)
    got = run_torchscript(out, sample_batch(Preprocessing(37, 32), images))
    expected = Predictor.load(trained.run_dir(2), "cpu").predict(images).probs
    assert np.allclose(got, expected, atol=1e-5)
    assert read_torchscript_card(out)["run"] == 2
    as_json = json.loads(
        a2m(
            trained.root, "export", "2", "--format", "onnx", "--json", "--output", str(tmp_path)
        ).stdout
    )
    assert as_json["path"] == str(tmp_path / "model.onnx")
    assert 0 <= as_json["max_abs_diff"] < 1e-4 and as_json["samples"] == 4


def test_ensemble_exports_as_one_network(trained: Trained, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(trained.root, root)
    store = Store.open(load_settings(Workspace(root), env={}))
    try:
        run = runner.ensemble(store, ["1", "2"])
    finally:
        store.close()
    proc = a2m(root, "export", str(run.id), "--format", "onnx", "--json")
    path = Path(json.loads(proc.stdout)["path"])
    images = _images(trained)
    members = [Predictor.load(root / ".a2m" / "runs" / str(i), "cpu") for i in (1, 2)]
    expected = EnsemblePredictor(members).predict(images).probs
    assert np.allclose(
        run_onnx(path, sample_batch(Preprocessing(37, 32), images)), expected, atol=1e-4
    )


def test_export_refuses_an_unknown_format_and_a_missing_run(trained: Trained) -> None:
    bad = a2m(trained.root, "export", "1", "--format", "tflite", check=False)
    assert bad.returncode == 2 and "onnx or torchscript" in bad.stderr
    missing = a2m(trained.root, "export", "99", check=False)
    assert missing.returncode == 1 and "99" in missing.stderr
    assert "Traceback" not in missing.stderr
