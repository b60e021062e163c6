"""What a run trains on: a version's rows checked for trainability, images decoded to model input.

Images are read from the blob store and decoded with `imaging.decode_rgb` (JPEG draft mode for
speed; see `images`, which needs no torch). An image that cannot be decoded is skipped, and the
caller names it through Progress.note.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from annotate2model.errors import InvalidImage, TrainingError
from annotate2model.store import Store
from annotate2model.store import versions as store_versions
from annotate2model.store.records import VersionItemRecord, VersionRecord
from annotate2model.training.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    decode_for,
    load_image,
)


@dataclass(frozen=True)
class VersionData:
    """A version's rows grouped by split, with the label map (sorted labels)."""

    version: VersionRecord
    labels: list[str]
    splits: dict[str, list[VersionItemRecord]]

    def targets(self, split: str) -> list[int]:
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[item.label] for item in self.splits[split]]

    def with_splits(self, splits: dict[str, list[VersionItemRecord]]) -> VersionData:
        """The same version and label map over other rows (the images left after skipping)."""
        return VersionData(version=self.version, labels=self.labels, splits=splits)


def load_version_data(store: Store, ref: int | str | None) -> VersionData:
    with store.read() as session:
        version = store_versions.get_version(session, ref)
        items = store_versions.version_items(session, version.number)
    splits: dict[str, list[VersionItemRecord]] = {"train": [], "val": [], "test": []}
    for item in items:
        splits.setdefault(item.split, []).append(item)
    labels = sorted({item.label for item in items})
    return VersionData(version=version, labels=labels, splits=splits)


def check_trainable(data: VersionData) -> None:
    """One clear message for each version that cannot train a classifier."""
    v = data.version.number
    if len(data.labels) < 2:
        found = f"only {data.labels[0]!r}" if data.labels else "none"
        raise TrainingError(
            f"version {v} has {len(data.labels)} class ({found}); a classifier needs at least two."
        )
    for split in ("train", "val"):
        if not data.splits[split]:
            raise TrainingError(
                f"the {split} split of version {v} is empty; add images or change the split "
                "fractions in a2m.toml."
            )
    counts = Counter(item.label for item in data.splits["train"])
    empty = [label for label in data.labels if counts[label] == 0]
    if empty:
        raise TrainingError(
            f"class {', '.join(repr(e) for e in empty)} of version {v} has no training images; "
            "add some or remove the class."
        )


def to_input(
    arrays: NDArray[Any] | torch.Tensor, prep: Preprocessing, device: torch.device
) -> torch.Tensor:
    """uint8 NHWC images to a normalised float NCHW batch in channels_last memory on `device`."""
    batch = torch.as_tensor(arrays)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    # NHWC storage viewed as NCHW is exactly the channels_last layout: no copy needed.
    x = batch.permute(0, 3, 1, 2).float()
    mean = torch.tensor(prep.mean, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(prep.std, device=x.device).view(1, 3, 1, 1) * 255
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


Sample = tuple[NDArray[Any] | str, int, int]


class ImageDataset(torch.utils.data.Dataset[Sample]):
    """Images of one split for fine-tuning; a sample that cannot be decoded comes back as the
    reason (text) in place of its pixels."""

    def __init__(
        self,
        paths: list[Path],
        targets: list[int],
        prep: Preprocessing,
        augment: bool,
        rotation: float,
        seed: int,
    ) -> None:
        self.paths = paths
        self.targets = targets
        self.prep = prep
        self.augment = augment
        self.rotation = rotation
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        seed = (self.seed * 1_000_003 + self.epoch * 100_003 + index) if self.augment else None
        try:
            return (
                load_image(self.paths[index], self.prep, seed, self.rotation),
                self.targets[index],
                index,
            )
        except InvalidImage as exc:
            return str(exc), self.targets[index], index


def collate(
    samples: list[Sample],
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """Stack decodable samples; (index, reason) of the undecodable ones travel along."""
    good = [s for s in samples if not isinstance(s[0], str)]
    bad = [(s[2], s[0]) for s in samples if isinstance(s[0], str)]
    if not good:
        return torch.empty(0, 1, 1, 3, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad
    images = torch.from_numpy(np.stack([s[0] for s in good if not isinstance(s[0], str)]))
    targets = torch.tensor([s[1] for s in good], dtype=torch.long)
    return images, targets, bad


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageDataset",
    "Preprocessing",
    "VersionData",
    "check_trainable",
    "collate",
    "decode_for",
    "load_image",
    "load_version_data",
    "to_input",
]
