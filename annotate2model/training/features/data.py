"""Images decoded to torch model input (the version's rows themselves: version.py).

Images are read from the blob store and decoded with `imaging.decode_rgb` (JPEG draft mode for
speed; see `images`, which needs no torch). An image that cannot be decoded is skipped, and the
caller names it through Progress.note.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from annotate2model.errors import InvalidImage
from annotate2model.training.features.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    decode_for,
    load_image,
)


class ImageInput(torch.nn.Module):
    """uint8 NHWC images to the normalised float NCHW batch (channels_last memory) a torchvision
    network takes: the one normalisation, used by extraction, fine-tuning, the exported ONNX
    trunk and the exported classifier alike."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, prep: Preprocessing) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(prep.std).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # NHWC storage viewed as NCHW is exactly the channels_last layout: no copy needed.
        x = images.permute(0, 3, 1, 2).float()
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def to_input(
    arrays: NDArray[Any] | torch.Tensor, prep: Preprocessing, device: torch.device
) -> torch.Tensor:
    """uint8 NHWC images to a normalised float NCHW batch in channels_last memory on `device`."""
    batch = torch.as_tensor(arrays)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    normalise: torch.nn.Module = ImageInput(prep).to(batch.device)
    out: torch.Tensor = normalise(batch)
    return out


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

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        """Image `index` as drawn in `epoch`, for key (epoch, index)."""
        epoch, index = key
        seed = (self.seed * 1_000_003 + epoch * 100_003 + index) if self.augment else None
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
    "ImageInput",
    "Preprocessing",
    "collate",
    "decode_for",
    "load_image",
    "to_input",
]
