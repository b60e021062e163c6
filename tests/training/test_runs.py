"""Training runs on real images and a real store: probe, cache, fine-tuning, ledger, artifacts."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from annotate2model.progress import NullProgress
from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.store.imports import import_folder
from annotate2model.training.config import OPTIMIZERS, SCHEDULES, RunConfig
from annotate2model.training.features.data import Preprocessing, load_image, to_input
from annotate2model.training.features.device import use_bf16
from annotate2model.training.features.tensors import read_tensors
from annotate2model.training.fit import head, trainer
from annotate2model.training.fit.head import C_GRID
from annotate2model.training.runs import artifacts, runner
from tests.training.conftest import make_split_folder, small_config

pytestmark = [pytest.mark.training, pytest.mark.both_dialects]
CPU = torch.device("cpu")


class RecordingProgress(NullProgress):
    """Keeps the notes it was given."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


def test_probe_default_records_everything(store: Store, version1: Path, weights: Path) -> None:
    outcome = runner.train(store, small_config(weights))
    run = outcome.run
    assert run.status == "succeeded" and run.kind == "train" and run.version == 1
    assert run.config["mode"] == "probe" and run.config["backbone"] == "resnet18"
    assert run.config["weights_identity"].startswith("sha256:")
    # What "auto" became on this machine is kept with the run.
    assert run.config["precision"] == "auto"
    assert run.config["effective_precision"] == ("bf16" if use_bf16(CPU, "auto") else "fp32")
    assert run.config["effective_workers"] >= 1
    assert run.wall_seconds is not None and run.images_per_second and run.device
    # One row per C of the head's grid; the one with the lowest val loss is kept.
    assert [row["C"] for row in run.history] == list(C_GRID)
    assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "C", "seconds"} <= set(
        run.history[0]
    )
    assert sum(1 for row in run.history if row.get("kept")) == 1
    val = run.metrics["splits"]["val"]
    assert val["n"] == 8 and 0 <= val["accuracy"] <= 1
    assert {"macro", "weighted", "per_class", "confusion", "top_k"} <= set(val)
    assert outcome.extraction is not None and outcome.extraction.computed == 32
    run_dir = store.settings.workspace.root / str(run.artifact_dir)
    names = {p.name for p in run_dir.iterdir()}
    assert names == {"trunk.safetensors", "head.safetensors", "model.json", "history.csv"}
    card = json.loads((run_dir / "model.json").read_text())
    assert card["labels"] == ["ants", "bees"] and card["architecture"] == "resnet18"
    assert card["version"] == 1 and card["config"]["mode"] == "probe"
    assert (run_dir / "history.csv").read_text().count("\n") == len(C_GRID) + 1
    with store.read() as session:
        preds = store_runs.read_predictions(session, run.id)
    assert {p.split for p in preds} == {"train", "val"} and len(preds) == 32
    assert all(abs(sum(p.probs) - 1) < 1e-3 for p in preds)


def test_grown_version_extracts_only_new_images(
    store: Store, version1: Path, weights: Path, tmp_path: Path
) -> None:
    first = runner.train(store, small_config(weights))
    assert first.extraction is not None and first.extraction.computed == 32
    make_split_folder(version1, {"ants": 18, "bees": 15}, {}, seed=0)
    import_folder(store, version1)
    second = runner.train(store, small_config(weights, class_weights=True))
    assert second.run.version == 2
    assert second.extraction is not None
    assert second.extraction.cached == 32 and second.extraction.computed == 9
    again = runner.train(store, small_config(weights))
    assert again.extraction is not None and again.extraction.computed == 0


def test_finetune_last_block_only(store: Store, version1: Path, weights: Path) -> None:
    # A new head (no probe stage): the fine-tuned epochs are kept, not the probe's solution.
    config = small_config(
        weights, mode="finetune", unfreeze="1", epochs=2, workers=0, head_init="random"
    )
    run = runner.train(store, config).run
    assert run.status == "succeeded" and len(run.history) == 2
    run_dir = store.settings.workspace.root / str(run.artifact_dir)
    trained = read_tensors(run_dir / "trunk.safetensors")
    original = torch.load(weights, weights_only=True)
    assert torch.equal(trained["layer1.0.conv1.weight"], original["layer1.0.conv1.weight"])
    assert not torch.equal(trained["layer4.1.conv2.weight"], original["layer4.1.conv2.weight"])
    # Judged again from its artifacts (the full network, not the embedding cache).
    result = runner.evaluate_run(store, run.id, split="val")
    assert result.metrics.n == 8 and result.metrics.accuracy is not None
    assert abs(result.metrics.accuracy - run.metrics["val_accuracy"]) <= 1 / 8
    (top,) = runner.predict_files(store, run.id, [next((version1 / "val" / "bees").iterdir())])
    assert {t["label"] for t in top["top"]} == {"ants", "bees"}


def test_finetune_all_with_augmentation(store: Store, version1: Path, weights: Path) -> None:
    config = small_config(
        weights,
        mode="finetune",
        unfreeze="all",
        epochs=1,
        workers=0,
        batch_size=8,
        head_init="random",
    )
    assert config.augment_enabled
    run = runner.train(store, config).run
    assert run.status == "succeeded"
    run_dir = store.settings.workspace.root / str(run.artifact_dir)
    trained = read_tensors(run_dir / "trunk.safetensors")
    original = torch.load(weights, weights_only=True)
    assert not torch.equal(trained["conv1.weight"], original["conv1.weight"])


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_optimisers_and_schedules(
    store: Store, version1: Path, weights: Path, optimizer: str, schedule: str
) -> None:
    # A frozen backbone and a head trained by the torch loop (the notebooks' recipe).
    config = small_config(
        weights,
        mode="finetune",
        unfreeze="0",
        head_init="random",
        epochs=2,
        optimizer=optimizer,
        schedule=schedule,
        lr=1e-3,
        label_smoothing=0.1,
        class_weights=True,
        weight_decay=1e-4,
    )
    run = runner.train(store, config).run
    assert run.status == "succeeded"
    lrs = [row["lr"] for row in run.history]
    assert all(lr > 0 for lr in lrs)
    # The same optimiser also builds through torch.optim (the fine-tuning path).
    model = torch.nn.Linear(4, 2)
    opt = trainer.make_optimizer(model.parameters(), config)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()


def _rates(schedule_name: str, epochs: int = 8, steps: int = 5, warmup: float = 0) -> list[float]:
    config = RunConfig(
        mode="finetune", schedule=schedule_name, epochs=epochs, lr=0.01, warmup_epochs=warmup
    )
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    schedule = trainer.make_schedule(opt, config, steps)
    rates = []
    for _ in range(epochs * steps):
        rates.append(schedule.get_last_lr()[0])
        opt.step()
        schedule.step()
    return rates


def test_each_schedule_has_its_shape() -> None:
    cyclic = _rates("cyclic")
    # triangular2: from lr * 1e-4 up to lr in two epochs and back, the next peak at half.
    assert cyclic[0] == pytest.approx(1e-6) and max(cyclic[:20]) == pytest.approx(0.01)
    assert max(cyclic[20:]) == pytest.approx(0.005, rel=1e-3)
    cosine = _rates("cosine")
    assert cosine[0] == 0.01 and cosine == sorted(cosine, reverse=True) and cosine[-1] < 1e-4
    onecycle = _rates("onecycle")
    top = onecycle.index(max(onecycle))
    # Its rise ends at step pct_start * total - 1 (torch's OneCycleLR): 0.3 * 40 - 1.
    assert onecycle[0] == pytest.approx(0.01 / 25) and top == 11 and onecycle[-1] < 1e-5
    assert _rates("constant") == [0.01] * 40
    # A warm-up epoch rises linearly to the peak, then the schedule runs over the rest.
    warmed = _rates("cosine", warmup=1)
    assert warmed[:5] == pytest.approx([0.01 * (i + 1) / 6 for i in range(5)])
    assert warmed[5] == pytest.approx(0.01) and warmed[5:] == sorted(warmed[5:], reverse=True)
    # onecycle's own rise takes the warm-up epochs instead: 2 of 8, 10 of 40 steps.
    warm_cycle = _rates("onecycle", warmup=2)
    assert warm_cycle.index(max(warm_cycle)) == 9
    # A run too short for onecycle's two phases decays as cosine does.
    assert _rates("onecycle", epochs=3, steps=1) == _rates("cosine", epochs=3, steps=1)


def test_ensemble_is_recorded_as_a_run(store: Store, version1: Path, weights: Path) -> None:
    a = runner.train(store, small_config(weights)).run
    b = runner.train(store, small_config(weights, views=2)).run
    ens = runner.ensemble(store, [a.id, b.id])
    assert ens.kind == "ensemble" and ens.status == "succeeded"
    assert ens.config["members"] == [a.id, b.id]
    with store.read() as session:
        pa = {p.image_sha256: p.probs for p in store_runs.read_predictions(session, a.id)}
        pb = {p.image_sha256: p.probs for p in store_runs.read_predictions(session, b.id)}
        pe = store_runs.read_predictions(session, ens.id)
    for p in pe:
        expected = (np.array(pa[p.image_sha256]) + np.array(pb[p.image_sha256])) / 2
        assert np.allclose(p.probs, expected, atol=1e-4)
    result = runner.evaluate_run(store, ens.id, split="val")
    assert result.metrics.accuracy == ens.metrics["val_accuracy"]


def test_evaluate_old_run_on_new_version(store: Store, version1: Path, weights: Path) -> None:
    run = runner.train(store, small_config(weights)).run
    make_split_folder(version1, {"ants": 14, "bees": 14}, {"ants": 7, "bees": 6})
    import_folder(store, version1)
    result = runner.evaluate_run(store, run.id, version_ref=2, split="val")
    assert result.version == 2 and result.metrics.n == 13
    with store.read() as session:
        assert len(store_runs.read_predictions(session, run.id, version=2, split="val")) == 13
        assert len(store_runs.read_predictions(session, run.id, version=1)) == 32


def test_artifacts_reload_without_pickle_and_reproduce(
    store: Store, version1: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = runner.train(store, small_config(weights, precision="fp32")).run
    run_dir = store.settings.workspace.root / str(run.artifact_dir)

    def no_unpickling(*_a: object, **_k: object) -> None:
        raise AssertionError("a model must load without unpickling")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    model, card = artifacts.load_classifier(run_dir)
    prep = Preprocessing(card["preprocessing"]["resize"], card["preprocessing"]["crop"])
    with store.read() as session:
        preds = store_runs.read_predictions(session, run.id, split="val")
    images = np.stack([load_image(store.blobs.path(p.image_sha256), prep) for p in preds])
    with torch.inference_mode():
        probs = torch.softmax(model(to_input(images, prep, torch.device("cpu"))), 1).numpy()
    assert np.allclose(probs, np.array([p.probs for p in preds]), atol=1e-4)


def test_interrupt_leaves_interrupted_run(
    store: Store, version1: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = head._loss_and_accuracy

    def interrupt_second_fit(*args: object, **kwargs: object) -> dict[str, float]:
        calls["n"] += 1  # each fit of the grid is judged on train, then on val
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(head, "_loss_and_accuracy", interrupt_second_fit)
    with pytest.raises(KeyboardInterrupt):
        runner.train(store, small_config(weights))
    with store.read() as session:
        (run,) = store_runs.list_runs(session)
    assert run.status == "interrupted" and "Ctrl-C" in (run.error or "")
    assert len(run.history) == 1 and run.ended_at is not None
    run_dir = store.settings.workspace.runs_dir / str(run.id)
    assert not run_dir.exists() or not list(run_dir.iterdir())


def test_crash_leaves_failed_run_with_reason(
    store: Store, version1: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("metrics exploded")

    monkeypatch.setattr(runner, "classification_metrics", boom)
    with pytest.raises(RuntimeError):
        runner.train(store, small_config(weights))
    with store.read() as session:
        (run,) = store_runs.list_runs(session)
    assert run.status == "failed" and "metrics exploded" in (run.error or "")


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_corrupt_image_is_skipped_with_a_warning_naming_its_file(
    store: Store, version1: Path, weights: Path, mode: str
) -> None:
    from annotate2model.store.models import Image
    from annotate2model.store.versions import version_items

    with store.read() as session:
        victim = version_items(session, 1, "train")[0].image_sha256
        origin = session.get(Image, victim).origin  # type: ignore[union-attr]
    assert origin and Path(origin).is_file()
    path = store.blobs.path(victim)
    path.chmod(0o644)
    path.write_bytes(b"\x89PNG\r\n\x1a\n not an image any more")
    progress = RecordingProgress()
    config = small_config(weights, mode=mode, epochs=1, workers=0)
    run = runner.train(store, config, progress=progress).run
    assert run.status == "succeeded"
    (note,) = [n for n in progress.notes if "skipped" in n]
    # Named as the user knows it (the file it was imported from), with the reason.
    assert origin in note and victim[:12] not in note and "corrupt" in note
    with store.read() as session:
        shas = {p.image_sha256 for p in store_runs.read_predictions(session, run.id)}
    assert victim not in shas and len(shas) == 31


def test_probe_with_cached_augmented_views(store: Store, version1: Path, weights: Path) -> None:
    outcome = runner.train(store, small_config(weights, views=3))
    assert outcome.run.status == "succeeded"
    # Three views of each of the 24 training images, one of each of the 8 validation images.
    assert outcome.extraction is not None and outcome.extraction.computed == 3 * 24 + 8
    again = runner.train(store, small_config(weights, views=2, class_weights=True))
    assert again.extraction is not None and again.extraction.computed == 0


def test_early_stopping_keeps_the_best_epoch(store: Store, version1: Path, weights: Path) -> None:
    config = small_config(
        weights,
        mode="finetune",
        unfreeze="0",
        head_init="random",
        epochs=30,
        early_stopping=2,
        schedule="constant",
        lr=0.5,
    )
    run = runner.train(store, config).run
    assert run.status == "succeeded"
    assert len(run.history) < 30 and run.history[-1].get("stopped_early")
