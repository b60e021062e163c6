"""The fine-tuning recipe: probe first, frozen blocks run once, blocks slower than the head,
frozen batch-norm statistics, the best validation epoch kept (the probe's solution when no epoch
beats it), and what the run records."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from annotate2model.errors import InputError
from annotate2model.store import Store
from annotate2model.store.imports import import_folder
from annotate2model.training.config import HEADS, MODE_DEFAULTS, UNSET, RunConfig
from annotate2model.training.features.backbones import (
    blocks,
    build_trunk,
    freeze_batchnorm,
    split_trunk,
)
from annotate2model.training.features.device import bf16_fast
from annotate2model.training.features.tensors import read_tensors
from annotate2model.training.fit import trainer
from annotate2model.training.fit.finetune import StandardisedHead
from annotate2model.training.fit.head import C_GRID
from annotate2model.training.runs import artifacts, runner
from annotate2model.training.runs.predictor import Predictor
from tests.conftest import image_bytes
from tests.training.conftest import small_config

pytestmark = pytest.mark.training


def colour_folder(root: Path, per_class: int, val: int) -> Path:
    """Reddish and bluish photos in train/ and val/: any working feature extractor tells them
    apart."""
    for split, count, offset in (("train", per_class, 0), ("val", val, 10_000)):
        for label, colour in (("red", "#c83c28"), ("blue", "#2846c8")):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                seed = offset + i + (0 if label == "red" else 50_000)
                data = image_bytes(seed, size=(48, 40), color=colour)
                (folder / f"{label}_{i}.png").write_bytes(data)
    return root


def run_dir(store: Store, run_id: int) -> Path:
    run = runner._get_run(store, run_id)
    return store.settings.workspace.root / str(run.artifact_dir)


def test_finetune_defaults_are_recorded_and_the_probe_keeps_its_own() -> None:
    # A probe's head is fitted by L-BFGS: its optimiser fields stay unset, and say so.
    probe = RunConfig()
    assert (probe.optimizer, probe.schedule, probe.lr, probe.epochs) == ("", "", 0.0, 0)
    assert probe.augment is False and probe.views == 1 and probe.optimiser_fields_set() == []
    assert RunConfig(lr=0.1, epochs=3).optimiser_fields_set() == ["epochs", "lr"]
    tuned = RunConfig(mode="finetune")
    for name, value in MODE_DEFAULTS["finetune"].items():
        assert getattr(tuned, name) == value
    assert tuned.views == 1 and tuned.head_init == "probe"
    # Nothing is left to "null" in the saved form: it says what ran.
    saved = dataclasses.asdict(tuned)
    assert saved["augment"] is True
    assert all(saved[name] is not None and saved[name] != UNSET[name] for name in UNSET)
    # A value given by the user wins over the mode's default; no augmentation means one view.
    assert RunConfig(mode="finetune", lr=0.01, optimizer="sgd").lr == 0.01
    with pytest.raises(InputError, match="augmented views"):
        RunConfig(mode="finetune", augment=False, views=2)
    # The probe stage of a fine-tuning run is a probe: no optimiser fields of its own.
    stage = RunConfig(mode="finetune", seed=3, label_smoothing=0.1, views=3).probe_stage()
    assert stage.mode == "probe" and stage.optimiser_fields_set() == []
    assert stage.seed == 3 and stage.label_smoothing == 0.1 and stage.views == 1


def test_parameter_groups_and_their_learning_rates() -> None:
    config = RunConfig(mode="finetune", lr=1e-3, block_lr_scale=0.1, epochs=4, warmup_epochs=1)
    block, head = nn.Linear(3, 3), nn.Linear(3, 2)
    opt = trainer.make_optimizer(
        [(list(block.parameters()), config.block_lr_scale), (list(head.parameters()), 1.0)],
        config,
    )
    assert isinstance(opt, torch.optim.AdamW)
    assert [group["lr"] for group in opt.param_groups] == pytest.approx([1e-4, 1e-3])
    # A warm-up epoch rises linearly to the peak, then cosine decay to zero; the blocks' group
    # follows at its share.
    steps = 10
    schedule = trainer.make_schedule(opt, config, steps)
    lrs, blocks = [], []
    for _ in range(4 * steps):
        lrs.append(max(schedule.get_last_lr()))
        blocks.append(min(schedule.get_last_lr()))
        opt.step()
        schedule.step()
    assert lrs[:steps] == sorted(lrs[:steps]) and lrs[0] < 0.2e-3
    assert max(lrs) == pytest.approx(1e-3, rel=0.01)
    assert blocks == pytest.approx([lr * 0.1 for lr in lrs])
    assert lrs[steps:] == sorted(lrs[steps:], reverse=True) and lrs[-1] < 1e-5


@pytest.mark.parametrize(
    "backbone", ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"]
)
def test_frozen_prefix_then_the_rest_is_the_trunk(backbone: str) -> None:
    torch.manual_seed(0)
    trunk = build_trunk(backbone).eval()
    x = torch.randn(2, 3, 64, 64)
    n = len(blocks(backbone, trunk))
    with torch.no_grad():
        expected = trunk(x)
        for unfreeze in ("0", "1", "2", "all"):
            prefix, rest = split_trunk(backbone, trunk, unfreeze)
            assert torch.allclose(rest(prefix(x)), expected, atol=1e-5), unfreeze
            trained = blocks(backbone, trunk)[n - (n if unfreeze == "all" else int(unfreeze)) :]
            # No block that trains runs in the prefix.
            inside = {id(m) for m in prefix.modules()}
            assert not any(id(m) in inside for block in trained for m in block.modules())
    assert rest(prefix(x)).shape[1] == HEADS[backbone][1]


def test_standardised_head_is_the_probe_head_and_folds_back() -> None:
    torch.manual_seed(0)
    raw = {"weight": torch.randn(3, 8), "bias": torch.randn(3)}
    mean, std = torch.randn(8), torch.rand(8) + 0.5
    head = StandardisedHead.from_raw(raw, mean, std)
    x = torch.randn(5, 8)
    assert torch.allclose(head(x), x @ raw["weight"].T + raw["bias"], atol=1e-5)
    folded = head.folded()
    assert torch.allclose(folded["weight"], raw["weight"], atol=1e-6)
    assert torch.allclose(folded["bias"], raw["bias"], atol=1e-5)


def test_frozen_layers_and_batchnorm_statistics_stay(
    store: Store, tmp_path: Path, weights: Path
) -> None:
    import_folder(store, colour_folder(tmp_path / "photos", 12, 4))
    config = small_config(
        weights, mode="finetune", unfreeze="1", epochs=2, head_init="random", workers=0
    )
    run = runner.train(store, config).run
    trained = read_tensors(run_dir(store, run.id) / "trunk.safetensors")
    original = torch.load(weights, weights_only=True)
    for name, value in trained.items():
        statistic = "running_" in name or "num_batches_tracked" in name
        if name.startswith("layer4.") and not statistic:
            continue
        # Frozen blocks' weights, and every running statistic (layer4's too), as loaded.
        assert torch.equal(value, original[name]), name
    assert not torch.equal(trained["layer4.1.conv2.weight"], original["layer4.1.conv2.weight"])
    assert run.config["augment"] is True and run.config["views"] == 1


def test_batchnorm_in_eval_mode_keeps_statistics() -> None:
    bn = nn.BatchNorm2d(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), bn)
    model.train()
    freeze_batchnorm(model)
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 8, 8) + 5)
    assert torch.equal(bn.running_mean, before) and model[0].training


def test_head_starts_from_the_probe_and_the_probe_is_kept_when_nothing_beats_it(
    store: Store, tmp_path: Path, weights: Path
) -> None:
    folder = colour_folder(tmp_path / "photos", 12, 4)
    import_folder(store, folder)
    probe = runner.train(store, small_config(weights)).run
    assert probe.metrics["val_accuracy"] == 1.0
    # A learning rate that wrecks the blocks: no fine-tuned epoch beats the probe.
    config = small_config(
        weights, mode="finetune", epochs=2, lr=5.0, block_lr_scale=1.0, early_stopping=0
    )
    run = runner.train(store, config).run
    start = run.history[0]
    assert start["epoch"] == 0 and start["stage"] == "probe" and start["probe_C"] in C_GRID
    # The start is the probe's own solution: the probe run's validation figures.
    assert start["val_accuracy"] == pytest.approx(probe.metrics["val_accuracy"])
    assert start["kept"] is True and not any(row.get("kept") for row in run.history[1:])
    assert run.metrics["val_accuracy"] == pytest.approx(probe.metrics["val_accuracy"])
    ours = read_tensors(run_dir(store, run.id) / "head.safetensors")
    theirs = read_tensors(run_dir(store, probe.id) / "head.safetensors")
    assert all(torch.allclose(ours[k], theirs[k]) for k in ("weight", "bias"))
    # The kept run still loads and predicts as it was judged.
    predictor = Predictor.load(run_dir(store, run.id), "cpu")
    images = [next((folder / "val" / label).iterdir()) for label in ("red", "blue")]
    result = predictor.predict(images)
    assert result.ok.all() and result.probs.shape == (2, 2)


def test_finetuning_beats_a_wrong_frozen_feature_extractor(
    store: Store, tmp_path: Path, weights: Path
) -> None:
    """layer4's convolutions zeroed: the probe's features carry nothing (chance), while
    fine-tuning layer4 on layer3's outputs (through its shortcut convolution) learns the colours.
    The head starts at random: the probe's head on constant features is no start."""
    state = torch.load(weights, weights_only=True)
    for name in state:
        if name.startswith("layer4.") and name.endswith(".weight") and state[name].dim() == 4:
            state[name] = torch.zeros_like(state[name])
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    folder = colour_folder(tmp_path / "photos", 16, 8)
    import_folder(store, folder)
    probe = runner.train(store, small_config(broken, image_size=64)).run
    assert probe.metrics["val_accuracy"] <= 0.6
    config = small_config(
        broken,
        mode="finetune",
        image_size=64,
        epochs=6,
        batch_size=8,
        lr=1e-2,
        block_lr_scale=1.0,
        head_init="random",
    )
    run = runner.train(store, config).run
    assert run.metrics["val_accuracy"] >= 0.9
    kept = [row["epoch"] for row in run.history if row.get("kept")]
    assert kept and kept[0] > 0
    # The fine-tuned network predicts from its files as the run judged it.
    predictor = Predictor.load(run_dir(store, run.id), "cpu")
    reds = sorted((folder / "val" / "red").iterdir())
    result = predictor.predict(reds)
    assert [predictor.labels[i] for i in result.probs.argmax(1)].count("red") >= 7


@pytest.mark.skipif(
    not bf16_fast(torch.device("cpu")),
    reason="this CPU has no native bf16 (AVX512-BF16 or AMX): emulated bf16 is slower than "
    "fp32, so precision auto keeps fp32 here",
)
def test_bf16_on_a_cpu_that_has_it(store: Store, version1: Path, weights: Path) -> None:
    run = runner.train(store, small_config(weights, mode="finetune", epochs=1)).run
    assert run.config["effective_precision"] == "bf16"
    assert artifacts.read_card(run_dir(store, run.id))["precision"] == "bf16"


def test_fp32_where_the_cpu_lacks_native_bf16(store: Store, version1: Path, weights: Path) -> None:
    if bf16_fast(torch.device("cpu")):
        pytest.skip("this CPU has native bf16; test_bf16_on_a_cpu_that_has_it covers it")
    run = runner.train(store, small_config(weights, mode="finetune", epochs=1)).run
    assert run.config["effective_precision"] == "fp32"


def test_an_epoch_replaces_the_kept_weights_only_when_it_is_better_on_both_counts() -> None:
    probe = {"val_accuracy": 0.84, "val_loss": 0.56}

    def row(accuracy: float, loss: float) -> dict[str, float]:
        return {"val_accuracy": accuracy, "val_loss": loss}

    assert trainer.beats(row(0.86, 0.55), probe)
    assert trainer.beats(row(0.84, 0.50), probe)
    # More accurate on a few images but less sure of them: the probe stays.
    assert not trainer.beats(row(0.86, 0.57), probe)
    assert not trainer.beats(row(0.83, 0.40), probe)
    assert not trainer.beats(row(0.84, 0.56), probe)


def test_decoding_workers_start_once_and_draw_each_epochs_views(
    store: Store, version1: Path, weights: Path
) -> None:
    # One DataLoader per split for the whole training: its worker processes serve every pass,
    # and each pass's epoch still picks its own augmentations.
    import psutil

    from annotate2model.progress import NullProgress
    from annotate2model.training.context import RunContext
    from annotate2model.training.fit.finetune import _ImagePasses
    from annotate2model.training.fit.version import load_version_data

    config = small_config(weights, mode="finetune", unfreeze="all", workers=1)
    data = load_version_data(store, 1)
    job, _ = runner._job(
        RunContext.from_store(store), config, data, "cpu", NullProgress(), check=False
    )
    items = data.splits["train"][:8]
    before = {p.pid for p in psutil.Process().children()}  # e.g. a Label Studio server
    passes = _ImagePasses(job, "train", 4, augment=True)

    def one_pass(epoch: int) -> tuple[torch.Tensor, set[int]]:
        images = torch.cat([x for x, _ in passes.run(items, epoch, {})])
        return images, {p.pid for p in psutil.Process().children()} - before

    first, workers = one_pass(0)
    again, workers_again = one_pass(0)
    other, workers_then = one_pass(1)
    assert len(first) == len(items)
    assert torch.equal(first, again)  # an epoch's views are the same wherever they are drawn
    assert not torch.equal(first, other)  # another epoch draws other views
    assert len(workers) == 1 and workers == workers_again == workers_then
    plain = _ImagePasses(job, "train", 4, augment=False)
    assert torch.equal(
        torch.cat([x for x, _ in plain.run(items, 0, {})]),
        torch.cat([x for x, _ in plain.run(items, 5, {})]),
    )
