"""What a trainer is given (`TrainJob`) and what it hands back (`TrainResult`).

Both trainers (probe, fine-tune) take one TrainJob and return one TrainResult; they never touch
the store. The orchestration in `runner` judges the result, saves the artifacts and closes the
ledger row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from numpy.typing import NDArray

from annotate2model.progress import Progress
from annotate2model.store.records import VersionItemRecord
from annotate2model.training.config import SPLITS, RunConfig, resolve_workers
from annotate2model.training.context import RunContext
from annotate2model.training.features.embeddings import ExtractionStats
from annotate2model.training.features.images import Preprocessing
from annotate2model.training.features.tensors import Tensors
from annotate2model.training.features.weights import WeightsSource
from annotate2model.training.fit.version import VersionData

if TYPE_CHECKING:
    import torch

History = list[dict[str, Any]]


@dataclass(frozen=True)
class TrainJob:
    """One configuration on one version, with everything around it already decided."""

    config: RunConfig
    data: VersionData
    context: RunContext
    source: WeightsSource
    prep: Preprocessing
    # The device the run computes on, as torch names it: cpu, cuda, cuda:N or mps.
    device: str
    bf16: bool
    progress: Progress
    # Called with the history so far after every epoch (the orchestration records it).
    on_epoch: Callable[[History], None]

    @property
    def workers(self) -> int:
        return resolve_workers(self.config.workers)

    @property
    def device_type(self) -> str:
        return self.device.partition(":")[0]

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    @property
    def eval_batch(self) -> int:
        return self.config.eval_batch_for(self.device_type)

    def blob(self, item: VersionItemRecord) -> Path:
        return self.context.blob_path(item.image_sha256)

    def report_skipped(self, skipped: dict[str, str], already: set[str] | None = None) -> None:
        report_skipped(self.context, self.progress, skipped, already)


@dataclass
class TrainResult:
    """What a trainer computed: per-split probabilities of the images it could use, the
    per-epoch history, the weights, and how fast it went."""

    # Rows in the order of `kept[split]`.
    probs: dict[str, NDArray[Any]]
    kept: dict[str, list[VersionItemRecord]]
    history: History
    # The trunk's weights, or the cached safetensors file holding them (frozen trunks).
    trunk: Tensors | Path
    head: Tensors
    # Training images (or feature rows) per second of the loop that dominated the run.
    images_per_second: float | None
    # Images that could not be decoded, with the reason.
    skipped: dict[str, str] = field(default_factory=dict)
    extraction: ExtractionStats | None = None
    # The embedding-cache key of a frozen trunk's features (probes), else None.
    embedding_key: str | None = None


def kept_items(data: VersionData, skipped: dict[str, str]) -> dict[str, list[VersionItemRecord]]:
    return {
        split: [i for i in data.splits.get(split, []) if i.image_sha256 not in skipped]
        for split in SPLITS
    }


def report_skipped(
    context: RunContext,
    progress: Progress,
    skipped: dict[str, str],
    already: set[str] | None = None,
) -> None:
    """One warning per image that could not be used (and is not in `already`, which it joins),
    naming it as the user knows it."""
    new = sorted(sha for sha in skipped if already is None or sha not in already)
    if not new:
        return
    names = context.image_names(new)
    for sha in new:
        progress.note(f"{names.get(sha, sha[:12])} skipped: {skipped[sha]}")
    if already is not None:
        already.update(new)
