"""The probe: a frozen trunk's features (from the embedding cache, computing only what is missing)
and a linear head trained on them. Computes and returns; never writes the ledger."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from annotate2model.store.records import VersionItemRecord
from annotate2model.training.artifacts import read_tensors
from annotate2model.training.backbones import (
    HEADS,
    WeightsSource,
    build_trunk,
    load_state_dict,
    trunk_state_from,
)
from annotate2model.training.config import SPLITS, RunConfig
from annotate2model.training.data import check_trainable
from annotate2model.training.embeddings import (
    EmbeddingCache,
    ExtractJob,
    extract,
    model_description,
    model_key,
)
from annotate2model.training.jobs import TrainJob, TrainResult, kept_items
from annotate2model.training.prefetch import EarlyDecode
from annotate2model.training.trainer import FeatureBatches, fit, make_loss


def train_probe(job: TrainJob, early: EarlyDecode | None = None) -> TrainResult:
    """Features for every image of the version (cached ones read, new ones computed), then the
    head; `early` holds images decoded while torch was being imported."""
    config, data, prep = job.config, job.data, job.prep
    cache = job.context.embedding_cache()
    key = model_key(config.backbone, job.source.identity, prep, job.bf16)
    description = model_description(config.backbone, job.source.identity, prep, job.bf16)
    trunk_file = cache.trunk_path(job.source.identity, config.backbone)
    script_file = cache.script_path(config.backbone, job.source.identity, prep.crop)
    onnx_file = cache.onnx_path(config.backbone, job.source.identity, prep.crop)

    # ONNX Runtime (where installed), else TorchScript: fp32 on the CPU only.
    on_cpu = job.device.type == "cpu"
    onnx_ok = on_cpu and not job.bf16

    def trunk() -> nn.Module:
        # On the CPU, a warm workspace loads its frozen ONNX or TorchScript copy: no
        # torchvision, no weights file to read, and faster forward passes.
        if on_cpu:
            cached: nn.Module | None = cache.load_onnx(onnx_file) if onnx_ok else None
            if cached is None:
                cached = cache.load_script(script_file)
            if cached is not None:
                if not trunk_file.is_file():
                    _trunk_state(
                        config, job.source, build_trunk(config.backbone), trunk_file, cache
                    )
                return cached
        model = build_trunk(config.backbone)
        state = _trunk_state(config, job.source, model, trunk_file, cache)
        model.load_state_dict(state, strict=True)
        if not on_cpu:
            return model
        fast: nn.Module | None = cache.save_onnx(onnx_file, model, prep.crop) if onnx_ok else None
        if fast is None:
            fast = cache.save_script(script_file, model, prep.crop)
        return fast if fast is not None else model

    jobs = [
        ExtractJob(item.image_sha256, job.blob(item), view)
        for split in SPLITS
        for item in data.splits[split]
        for view in range(config.views if split == "train" else 1)
    ]
    try:
        features, stats = extract(
            cache,
            key,
            description,
            jobs,
            trunk,
            prep,
            job.device,
            job.bf16,
            batch_size=job.eval_batch,
            workers=job.workers,
            seed=config.seed,
            rotation=config.rotation,
            progress=job.progress,
            early=early,
            max_pixels=job.context.max_pixels,
        )
        if not trunk_file.is_file():
            # Everything was cached but the trunk file went missing: rebuild it once.
            trunk()
    finally:
        cache.close()
    skipped = dict(stats.skipped)
    job.report_skipped(skipped)
    kept = kept_items(data, skipped)
    check_trainable(data.with_splits(kept))

    head = fit_probe_head(job, features, kept)
    return TrainResult(
        probs=head.probs,
        kept=kept,
        history=head.history,
        trunk=trunk_file,
        head={"weight": head.weight, "bias": head.bias},
        images_per_second=stats.images_per_second or None,
        skipped=skipped,
        extraction=stats,
        embedding_key=key,
    )


@dataclass
class ProbeHead:
    """A linear head trained on a frozen trunk's features (weight and bias on raw features),
    the statistics it standardised them with, its history and its probabilities per split."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    history: list[dict[str, Any]]
    probs: dict[str, NDArray[np.float32]]


def fit_probe_head(
    job: TrainJob,
    features: dict[tuple[str, int], NDArray[Any]],
    kept: dict[str, list[VersionItemRecord]],
) -> ProbeHead:
    """The probe's head on (image sha256, view) features of the `kept` images."""
    config, data = job.config, job.data

    def matrix(split: str, views: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        index = {label: i for i, label in enumerate(data.labels)}
        for item in kept[split]:
            for view in range(views):
                vec = features.get((item.image_sha256, view))
                if vec is not None:
                    xs.append(vec)
                    ys.append(index[item.label])
        if not xs:
            return torch.empty(0, HEADS[config.backbone][1]), torch.empty(0, dtype=torch.long)
        return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.long)

    x_train, y_train = matrix("train", config.views)
    x_val, y_val = matrix("val", 1)
    # Standardise the features for the optimiser; folded back into the head afterwards so the
    # saved head works on raw trunk features.
    mean = x_train.mean(0)
    std = x_train.std(0).clamp_min(1e-3)
    torch.manual_seed(config.seed)
    head = nn.Linear(x_train.shape[1], len(data.labels))
    cpu = torch.device("cpu")
    train_batches = FeatureBatches(
        (x_train - mean) / std, y_train, config.batch_size, shuffle=True, seed=config.seed
    )
    val_batches = FeatureBatches((x_val - mean) / std, y_val, 4096, shuffle=False)
    loss_fn = make_loss(config, y_train.tolist(), len(data.labels), cpu)
    with single_thread():
        history = fit(
            head,
            lambda _epoch: train_batches,
            lambda: val_batches,
            len(train_batches),
            config,
            loss_fn,
            cpu,
            False,
            job.progress,
            job.on_epoch,
            per_epoch_bars=False,
            plain_optimizer=True,
        )
    with torch.no_grad():
        weight = head.weight / std
        bias = head.bias - (head.weight * (mean / std)).sum(1)
    probs: dict[str, NDArray[np.float32]] = {}
    for split in SPLITS:
        x, _ = matrix(split, 1)
        with torch.no_grad():
            probs[split] = torch.softmax(x @ weight.T + bias, dim=1).numpy()
    return ProbeHead(
        weight.detach().clone(), bias.detach().clone(), mean, std, history, dict(probs)
    )


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run tiny ops (a linear head on a few hundred rows) on one thread.

    Splitting 32x512 matmuls across threads costs more in synchronisation than it saves, and on a
    busy machine a descheduled worker thread stalls every step (measured: 0.01 s on one thread
    against 0.1-1.3 s on two for the same 80 steps).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _trunk_state(
    config: RunConfig,
    source: WeightsSource,
    model: nn.Module,
    trunk_file: Path,
    cache: EmbeddingCache,
) -> dict[str, torch.Tensor]:
    """The trunk's weights (from the weights source), saved once into the cache as safetensors
    and read from there after (no download, no check again: offline works once cached)."""
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
        cache.save_trunk(trunk_file, trunk_state)
    return trunk_state
