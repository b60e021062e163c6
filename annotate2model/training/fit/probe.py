"""The probe: a frozen trunk's features (from the embedding cache, computing only what is missing)
and a linear head fitted on them (head.py, scikit-learn). Computes and returns; never writes the
ledger. torch builds the trunk only when some feature is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from annotate2model.store.records import VersionItemRecord
from annotate2model.training.config import HEADS, SPLITS, RunConfig
from annotate2model.training.features.embeddings import (
    ExtractJob,
    Network,
    extract_features,
    model_description,
    model_key,
    torch_network,
    trunk_path,
)
from annotate2model.training.features.weights import WeightsSource
from annotate2model.training.fit.head import HeadFit, fit_head, probabilities
from annotate2model.training.fit.jobs import TrainJob, TrainResult, kept_items
from annotate2model.training.fit.version import check_trainable

if TYPE_CHECKING:
    import torch
    from torch import nn


def train_probe(job: TrainJob) -> TrainResult:
    """Features for every image of the version (cached ones read, new ones computed), then the
    head."""
    config, data, prep = job.config, job.data, job.prep
    key = model_key(config.backbone, job.source.identity, prep, job.bf16)
    description = model_description(config.backbone, job.source.identity, prep, job.bf16)
    trunk_file = trunk_path(job.context.cache_dir, job.source.identity, config.backbone)

    def trunk() -> nn.Module:
        from annotate2model.training.features.backbones import build_trunk

        model = build_trunk(config.backbone)
        model.load_state_dict(_trunk_state(config, job.source, trunk_file, model))
        return model

    def network() -> Network:
        return torch_network(trunk(), prep, job.torch_device, job.bf16)

    jobs = [
        ExtractJob(item.image_sha256, job.blob(item), view)
        for split in SPLITS
        for item in data.splits[split]
        for view in range(config.views if split == "train" else 1)
    ]
    with job.context.embedding_cache() as cache:
        features, stats = extract_features(
            cache,
            key,
            description,
            jobs,
            network,
            prep,
            batch_size=job.eval_batch,
            workers=job.workers,
            seed=config.seed,
            rotation=config.rotation,
            progress=job.progress,
            max_pixels=job.context.max_pixels,
        )
    if not trunk_file.is_file():
        # Everything was cached but the trunk file went missing: rebuild it once.
        _trunk_state(config, job.source, trunk_file)
    skipped = dict(stats.skipped)
    job.report_skipped(skipped)
    kept = kept_items(data, skipped)
    check_trainable(data.with_splits(kept))

    head, probs = fit_probe_head(job, features, kept)
    return TrainResult(
        probs=probs,
        kept=kept,
        history=head.history,
        trunk=trunk_file,
        head={"weight": head.weight, "bias": head.bias},
        images_per_second=stats.images_per_second or None,
        skipped=skipped,
        extraction=stats,
        embedding_key=key,
    )


def fit_probe_head(
    job: TrainJob,
    features: dict[tuple[str, int], NDArray[Any]],
    kept: dict[str, list[VersionItemRecord]],
) -> tuple[HeadFit, dict[str, NDArray[np.float32]]]:
    """The probe's head on (image sha256, view) features of the `kept` images, and its
    probabilities per split."""
    config, data = job.config, job.data
    index = {label: i for i, label in enumerate(data.labels)}
    dim = HEADS[config.backbone][1]

    def matrix(split: str, views: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        xs, ys = [], []
        for item in kept[split]:
            for view in range(views):
                vec = features.get((item.image_sha256, view))
                if vec is not None:
                    xs.append(vec)
                    ys.append(index[item.label])
        if not xs:
            return np.empty((0, dim), dtype=np.float32), np.empty(0, dtype=np.int64)
        return np.stack(xs).astype(np.float32, copy=False), np.asarray(ys, dtype=np.int64)

    x_train, y_train = matrix("train", config.views)
    x_val, y_val = matrix("val", 1)
    fit = fit_head(
        x_train,
        y_train,
        x_val,
        y_val,
        len(data.labels),
        class_weights=config.class_weights,
        progress=job.progress,
        on_epoch=job.on_epoch,
    )
    probs = {split: probabilities(matrix(split, 1)[0], fit.weight, fit.bias) for split in SPLITS}
    return fit, probs


def _trunk_state(
    config: RunConfig,
    source: WeightsSource,
    trunk_file: Path,
    model: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """The trunk's weights (from the weights source), saved once into the cache as safetensors
    and read from there after (no download, no check again: offline works once cached)."""
    import torch

    from annotate2model.training.features.backbones import (
        build_trunk,
        load_state_dict,
        trunk_state_from,
    )
    from annotate2model.training.features.tensors import read_tensors, write_tensors

    if trunk_file.is_file():
        return read_tensors(trunk_file)
    state = load_state_dict(config.backbone, source)
    if state is None:
        torch.manual_seed(config.seed)
        trunk_state = build_trunk(config.backbone).state_dict()
    else:
        origin = str(source.path) if source.path else f"the {source.kind} weights"
        trunk_state = trunk_state_from(config.backbone, state, origin, model)
    if not trunk_file.is_file():
        write_tensors(trunk_file, trunk_state, mode=None)
    return trunk_state
