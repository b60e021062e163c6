"""Bad input and faults: each gets one clear message, and the ledger stays honest."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from annotate2model.errors import InputError, TrainingError
from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.store.imports import import_folder
from annotate2model.training.config import RunConfig
from annotate2model.training.features import backbones
from annotate2model.training.fit import trainer
from annotate2model.training.runs import runner
from tests.training.conftest import make_split_folder, small_config

pytestmark = pytest.mark.training


def _import(store: Store, tmp_path: Path, train: dict[str, int], val: dict[str, int]) -> None:
    import_folder(store, make_split_folder(tmp_path / "bad", train, val))


def test_one_class(store: Store, tmp_path: Path, weights: Path) -> None:
    _import(store, tmp_path, {"ants": 4}, {"ants": 2})
    with pytest.raises(TrainingError, match="needs at least two"):
        runner.train(store, small_config(weights))


def test_empty_val_split(store: Store, tmp_path: Path, weights: Path) -> None:
    _import(store, tmp_path, {"ants": 4, "bees": 4}, {})
    with pytest.raises(TrainingError, match="val split of version 1 is empty"):
        runner.train(store, small_config(weights))


def test_class_without_training_images(store: Store, tmp_path: Path, weights: Path) -> None:
    _import(store, tmp_path, {"ants": 4, "bees": 4}, {"ants": 2, "bees": 2, "wasps": 2})
    with pytest.raises(TrainingError, match="'wasps' of version 1 has no training images"):
        runner.train(store, small_config(weights))


def test_no_run_row_for_bad_input(store: Store, tmp_path: Path, weights: Path) -> None:
    _import(store, tmp_path, {"ants": 4}, {"ants": 2})
    with pytest.raises(TrainingError):
        runner.train(store, small_config(weights))
    with store.read() as session:
        assert store_runs.list_runs(session) == []


def test_unknown_backbone() -> None:
    with pytest.raises(InputError, match=r"unknown backbone .resnet7.*resnet18"):
        RunConfig(backbone="resnet7")


def test_weights_that_do_not_fit(store: Store, version1: Path, weights: Path) -> None:
    with pytest.raises(TrainingError, match="do not fit resnet50") as info:
        runner.train(store, small_config(weights, backbone="resnet50"))
    # Refused before a run was recorded, naming the backbone the file was made for.
    assert "They fit resnet18" in str(info.value)
    assert info.value.hint is not None and "--backbone resnet18" in info.value.hint
    with store.read() as session:
        assert store_runs.list_runs(session) == []


def test_weights_with_wrong_shapes(store: Store, version1: Path, tmp_path: Path) -> None:
    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "bent.pth"
    torch.save(state, path)
    with pytest.raises(TrainingError, match=r"shape mismatch layer1\.0\.conv1\.weight"):
        runner.train(store, small_config(path))


def test_other_backbone_loads_a_saved_state_dict(
    store: Store, version1: Path, tmp_path: Path
) -> None:
    torch.manual_seed(1)
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_large(num_classes=5).state_dict(), path)
    run = runner.train(store, small_config(path, backbone="mobilenet_v3_large", epochs=1)).run
    assert run.status == "succeeded"


def test_no_download_names_both_ways_out(
    store: Store, version1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "empty-hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def offline(*_a: object, **_k: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    config = RunConfig(weights="imagenet", image_size=32, epochs=1)
    with pytest.raises(TrainingError) as info:
        runner.train(store, config)
    message, hint = str(info.value), info.value.hint or ""
    # The message says what is wrong in words any caller can show; the hint names the flag.
    assert "--" not in message and "local state_dict file" in message
    assert "--weights PATH" in hint
    assert str(hub / "checkpoints" / "resnet18-f37072fd.pth") in message


def test_out_of_memory_advises_a_smaller_batch(
    store: Store, version1: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def oom(*_a: object, **_k: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "train_one_epoch", oom)
    with pytest.raises(TrainingError, match="smaller batch size") as info:
        runner.train(store, small_config(weights, batch_size=64, mode="finetune"))
    assert info.value.hint is not None and "--batch-size 32" in info.value.hint
    with store.read() as session:
        (run,) = store_runs.list_runs(session)
    assert run.status == "failed" and "batch size 64" in (run.error or "")


def test_unfreeze_more_blocks_than_exist(store: Store, version1: Path, weights: Path) -> None:
    with pytest.raises(InputError, match="resnet18 has 5 blocks"):
        runner.train(store, small_config(weights, mode="finetune", unfreeze="9"))


def test_blocks_exist_for_every_backbone() -> None:
    for name in ("mobilenet_v2", "efficientnet_b0", "vgg16"):
        trunk = backbones.build_trunk(name).eval()
        assert len(backbones.blocks(name, trunk)) >= 3
        with torch.inference_mode():
            out = trunk(torch.zeros(1, 3, 32, 32))
        assert out.shape == (1, backbones.HEADS[name][1])
