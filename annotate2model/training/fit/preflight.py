"""Checks made before a run is recorded in the ledger.

A configuration that cannot work is refused here with one clear message, so that it leaves no
failed run behind: weights that are no torch.save file or do not fit the backbone, more blocks to
unfreeze than the backbone has, ImageNet weights neither cached nor downloadable (they are
downloaded here, before the run, when they can be). A version whose validation or test split is
too small to judge a model on is only warned about.
"""

from __future__ import annotations

import urllib.error
from collections import Counter
from pathlib import Path

from annotate2model.errors import TrainingError
from annotate2model.progress import Progress
from annotate2model.training.config import RunConfig
from annotate2model.training.features.embeddings import trunk_path
from annotate2model.training.features.weights import (
    WeightsSource,
    WeightsStatus,
    imagenet_weights_status,
)
from annotate2model.training.fit.version import VersionData

# Below these, a split's accuracy is too noisy to compare runs on (one image of 20 is 5 points).
SMALL_SPLIT = 20
SMALL_CLASS = 3


def check_run(
    config: RunConfig, source: WeightsSource, cache_dir: Path, progress: Progress
) -> None:
    """Refuse a configuration that cannot train (see the module docstring); cheap when the
    weights were checked before (a probe whose trunk is in the embedding cache at `cache_dir`
    reads nothing: it needs neither the weights file nor the network)."""
    from annotate2model.training.features.backbones import (
        blocks,
        check_unfreeze,
        meta_trunk,
        read_state_dict,
        trunk_state_from,
    )

    finetune = config.mode == "finetune"
    trunk = meta_trunk(config.backbone) if finetune else None
    if trunk is not None:
        check_unfreeze(config.backbone, len(blocks(config.backbone, trunk)), config.unfreeze)
    if source.kind == "none":
        return
    if not finetune and trunk_path(cache_dir, source.identity, config.backbone).is_file():
        return
    if source.kind == "path":
        assert source.path is not None
        path, origin = source.path, str(source.path)
        state = read_state_dict(path, device="meta")
    else:
        path = fetch_imagenet_weights(config.backbone, progress)
        origin = f"the ImageNet weights file {path}"
        try:
            state = read_state_dict(path, device="meta")
        except TrainingError as exc:
            # A download cut short, or another file under that name.
            raise TrainingError(
                exc.message, hint=f"delete {path} to download it again, or pass --weights PATH."
            ) from None
    trunk_state_from(config.backbone, state, origin, trunk or meta_trunk(config.backbone))


def fetch_imagenet_weights(backbone: str, progress: Progress) -> Path:
    """The torch hub cache's file of `backbone`'s ImageNet weights, downloaded if need be."""
    status = imagenet_weights_status(backbone)
    if status.state == "cached":
        return status.checkpoint
    if status.state == "offline":
        raise _offline(backbone, status, status.detail)
    import torch.hub

    progress.begin(f"Downloading the ImageNet weights of {backbone}")
    try:
        status.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(status.url, str(status.checkpoint), progress=False)
    except (urllib.error.URLError, OSError) as exc:
        raise _offline(
            backbone, status, f"the download into {status.checkpoint} failed: {exc}"
        ) from None
    finally:
        progress.end()
    return status.checkpoint


def _offline(backbone: str, status: WeightsStatus, why: str) -> TrainingError:
    name = status.checkpoint.name
    return TrainingError(
        f"the ImageNet weights of {backbone} cannot be had: {why}. Without network, use a local "
        f"state_dict file or random weights, or put {name} there.",
        hint=f"pass --weights PATH (a state_dict file) or --weights none (random weights, which "
        f"learn far less from few images), or copy {name} to {status.checkpoint}.",
    )


def small_split_warnings(data: VersionData) -> list[str]:
    """One warning per validation or test split too small to judge a model on: fewer than
    SMALL_SPLIT images, or a class with fewer than SMALL_CLASS."""
    out = []
    v = data.version.number
    for split in ("val", "test"):
        items = data.splits.get(split, [])
        if not items:
            continue
        counts = Counter(item.label for item in items)
        few = [label for label in data.labels if counts[label] < SMALL_CLASS]
        if len(items) >= SMALL_SPLIT and not few:
            continue
        per_class = ", ".join(f"{label} {counts[label]}" for label in data.labels)
        problem = (
            f"one image moves its accuracy by {100 / len(items):.0f} points"
            if len(items) < SMALL_SPLIT
            else f"{' and '.join(repr(label) for label in few)} "
            f"{'has' if len(few) == 1 else 'have'} fewer than {SMALL_CLASS}"
        )
        out.append(
            f"the {split} split of version {v} has {len(items)} images ({per_class}): "
            f"{problem}, so its accuracy is noisy. Label more images, or give {split} a larger "
            "share in [split] of a2m.toml."
        )
    return out
