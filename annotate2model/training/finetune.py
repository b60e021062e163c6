"""Fine-tuning: the backbone's last blocks train with a new head on decoded (augmented) images.
Computes and returns; never writes the ledger."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from annotate2model.store.records import VersionItemRecord
from annotate2model.training.backbones import (
    build_classifier,
    freeze_batchnorm_of_frozen,
    load_state_dict,
    set_trainable,
    trunk_state_from,
)
from annotate2model.training.config import SPLITS
from annotate2model.training.data import ImageDataset, check_trainable, collate, to_input
from annotate2model.training.jobs import TrainJob, TrainResult, kept_items
from annotate2model.training.trainer import fit, make_loss, predict


def train_finetune(job: TrainJob) -> TrainResult:
    config, data, device = job.config, job.data, job.device
    state = load_state_dict(config.backbone, job.source)
    origin = str(job.source.path) if job.source.path else f"the {job.source.kind} weights"
    model = build_classifier(config.backbone, len(data.labels), None, config.seed)
    if state is not None:
        model.trunk.load_state_dict(
            trunk_state_from(config.backbone, state, origin, model.trunk), strict=True
        )
    set_trainable(model, config.backbone, config.mode, config.unfreeze)
    model = model.to(device)
    if device.type != "mps":
        model = model.to(memory_format=torch.channels_last)
    skipped: dict[str, str] = {}
    reported: set[str] = set()
    loss_fn = make_loss(config, data.targets("train"), len(data.labels), device)
    steps = (len(data.splits["train"]) + config.batch_size - 1) // config.batch_size

    def batches(
        split: str, augment: bool, shuffle: bool, epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        items = [i for i in data.splits[split] if i.image_sha256 not in skipped]
        yield from _image_batches(
            job,
            items,
            config.batch_size if split == "train" else job.eval_batch,
            augment,
            shuffle,
            epoch,
            skipped,
        )
        job.report_skipped(skipped, reported)

    started = time.perf_counter()
    history = fit(
        model,
        lambda epoch: batches("train", config.augment_enabled, True, epoch),
        lambda: batches("val", False, False, 0),
        steps,
        config,
        loss_fn,
        device,
        job.bf16,
        job.progress,
        job.on_epoch,
        prepare=freeze_batchnorm_of_frozen,
    )
    seconds = time.perf_counter() - started
    seen = sum(int(row.get("train_images", 0)) for row in history)
    probs: dict[str, NDArray[Any]] = {}
    job.progress.begin("Predicting", total=None)
    for split in SPLITS:
        logits = predict(model, batches(split, False, False, 0), device, job.bf16)
        probs[split] = torch.softmax(logits, dim=1).numpy() if logits.numel() else np.empty((0, 0))
    job.progress.end()
    kept = kept_items(data, skipped)
    check_trainable(data.with_splits(kept))
    model = model.to("cpu")
    return TrainResult(
        probs=probs,
        kept=kept,
        history=history,
        trunk=model.trunk.state_dict(),
        head=dict(model.head.state_dict()),
        images_per_second=seen / seconds if seconds > 0 else None,
        skipped=skipped,
    )


def _image_batches(
    job: TrainJob,
    items: Sequence[VersionItemRecord],
    batch_size: int,
    augment: bool,
    shuffle: bool,
    epoch: int,
    skipped: dict[str, str],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Decoded batches on the device; images that cannot be decoded are added to `skipped`."""
    config = job.config
    index = {label: i for i, label in enumerate(job.data.labels)}
    dataset = ImageDataset(
        [job.blob(i) for i in items],
        [index[i.label] for i in items],
        job.prep,
        augment,
        config.rotation,
        config.seed,
    )
    dataset.epoch = epoch
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=job.workers,
        collate_fn=collate,
        pin_memory=job.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed + epoch),
    )
    for images, y, bad in loader:
        for position, reason in bad:
            skipped.setdefault(items[position].image_sha256, reason)
        if images.shape[0]:
            yield to_input(images, job.prep, job.device), y
