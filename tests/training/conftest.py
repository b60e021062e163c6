"""Fixtures for training tests: small real image versions and the shared scenes weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotate2model.store import Store
from annotate2model.store.imports import import_folder
from annotate2model.training.config import RunConfig
from tests.conftest import make_image_folder


@pytest.fixture
def weights(scenes_weights: Path) -> Path:
    """The shared scenes weights (fails under CI, skips elsewhere, when they are missing)."""
    return scenes_weights


def make_split_folder(
    root: Path, train: dict[str, int], val: dict[str, int], seed: int = 0
) -> Path:
    make_image_folder(root / "train", train, seed=seed)
    if val:
        make_image_folder(root / "val", val, seed=seed + 50)
    return root


@pytest.fixture
def version1(store: Store, tmp_path: Path) -> Path:
    """Version 1: two classes, 12 training and 4 validation images each."""
    folder = make_split_folder(tmp_path / "data", {"ants": 12, "bees": 12}, {"ants": 4, "bees": 4})
    import_folder(store, folder)
    return folder


def small_config(weights: Path, **changes: object) -> RunConfig:
    """A quick run: 32 px inputs, a few epochs when fine-tuning."""
    values: dict[str, object] = {"weights": str(weights), "image_size": 32}
    if changes.get("mode") == "finetune":
        values["epochs"] = 3
    values.update(changes)
    return RunConfig(**values)  # type: ignore[arg-type]
