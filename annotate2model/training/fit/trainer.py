"""The training loop in parts: optimiser and schedule, `train_one_epoch`, `evaluate`, `fit`.

Fine-tuning trains through it, on a frozen prefix's outputs or on decoded images: it only sees
iterables of (input, target) batches. A probe's head (and fine-tuning's probe stage) is fitted by
scikit-learn instead (head.py).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from annotate2model.progress import NullProgress, Progress
from annotate2model.training import distributed
from annotate2model.training.config import RunConfig
from annotate2model.training.features.device import autocast

log = logging.getLogger(__name__)


def class_weights(targets: NDArray[np.intp], n_classes: int) -> NDArray[np.float64]:
    """scikit-learn's "balanced" weights, n / (classes * count), as the probe's head uses them;
    0 for a class with no training rows."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(targets)
    weights = np.zeros(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=targets)
    return weights


def beats(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Whether an epoch is better than the best so far on validation: no less accurate, no
    higher loss, and better in one of them. A higher accuracy bought with a higher loss is not
    taken: on a small validation set it is as often luck as a better model, and the weights it
    would replace (first of all the probe's) are kept instead."""
    if best is None:
        return True
    acc, best_acc = row["val_accuracy"], best["val_accuracy"]
    loss, best_loss = row["val_loss"], best["val_loss"]
    if acc < best_acc or loss > best_loss:
        return False
    return bool(acc > best_acc or loss < best_loss - 1e-6)


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


# Parameters with the share of the schedule's learning rate they train at.
ParamGroups = list[tuple[list[nn.Parameter], float]]


def as_groups(params: Iterable[nn.Parameter] | ParamGroups) -> ParamGroups:
    """Trainable parameters as groups (one group at the full rate for a plain iterable)."""
    items = list(params)
    if items and isinstance(items[0], tuple):
        groups: ParamGroups = [([p for p in ps if p.requires_grad], scale) for ps, scale in items]
    else:
        groups = [([p for p in items if isinstance(p, nn.Parameter) and p.requires_grad], 1.0)]
    return [(ps, scale) for ps, scale in groups if ps]


def make_optimizer(
    params: Iterable[nn.Parameter] | ParamGroups, config: RunConfig
) -> torch.optim.Optimizer:
    """torch.optim's SGD (with momentum) or AdamW; each parameter group at its own share of the
    learning rate (fine-tuning: blocks slower than the head)."""
    groups = [{"params": ps, "lr": config.lr * scale} for ps, scale in as_groups(params)]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


# The fewest optimiser steps torch's OneCycleLR can divide into its rise and fall.
ONECYCLE_STEPS = 4


def make_schedule(
    optimizer: torch.optim.Optimizer, config: RunConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's schedulers for the whole run, stepped once per optimiser step: a linear warm-up
    over `warmup_epochs`, then `schedule` over the remaining steps, every group scaled alike.

    cyclic: triangular2 (half-cycles of two epochs between lr * 1e-4 and lr, the amplitude
    halving every cycle); cosine: down to 0; onecycle: its own cosine warm-up from lr / 25 (over
    the warm-up epochs, else 30% of the run) and down to lr / 25e4; constant.
    """
    from torch.optim import lr_scheduler

    total = max(1, steps_per_epoch * config.epochs)
    warm = max(0, min(round(config.warmup_epochs * steps_per_epoch), total - 1))
    peaks = [float(group["lr"]) for group in optimizer.param_groups]
    if config.schedule == "onecycle" and total >= ONECYCLE_STEPS:
        # torch's two phases need a step or more each: the rise is kept within them.
        rise = min(max(warm / total if warm else 0.3, 2 / total), (total - 2) / total)
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=peaks,
            total_steps=total,
            pct_start=rise,
            div_factor=25,
            final_div_factor=1e4,
            cycle_momentum=False,
        )
    if config.schedule == "onecycle":
        log.info("a run of %d steps is too short for onecycle: cosine decay instead", total)
    main: lr_scheduler.LRScheduler
    if config.schedule == "cyclic":
        main = lr_scheduler.CyclicLR(
            optimizer,
            base_lr=[peak * 1e-4 for peak in peaks],
            max_lr=peaks,
            step_size_up=max(1, 2 * steps_per_epoch),
            mode="triangular2",
            cycle_momentum=False,
        )
    elif config.schedule in ("cosine", "onecycle"):
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warm))
    else:
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if not warm:
        return main
    warmup = lr_scheduler.LinearLR(
        optimizer, start_factor=1 / (warm + 1), end_factor=1.0, total_iters=warm
    )
    return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[warm])


def make_loss(
    config: RunConfig, train_targets: list[int], n_classes: int, device: torch.device
) -> nn.CrossEntropyLoss:
    weight = None
    if config.class_weights:
        w = class_weights(np.asarray(train_targets, dtype=np.intp), n_classes)
        weight = torch.tensor(w, dtype=torch.float32, device=device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    device: torch.device,
    bf16: bool,
    progress: Progress,
    prepare: Callable[[nn.Module], None] | None = None,
) -> dict[str, float]:
    """One pass over `batches`; the schedule advances after every optimiser step."""
    model.train()
    if prepare is not None:
        prepare(model)
    total_loss = 0.0
    correct = 0
    seen = 0
    for x, y in batches:
        if x.shape[0] == 0:
            continue
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        optimizer.step()
        schedule.step()
        n = y.shape[0]
        total_loss += float(loss.detach()) * n
        correct += int((logits.argmax(1) == y).sum())
        seen += n
        progress.advance(1, status=f"loss {total_loss / seen:.3f} acc {correct / seen:.3f}")
    # Under several processes, the whole epoch's figures (each rank saw its share).
    loss_sum, hits, count = distributed.sums(total_loss, correct, seen)
    return {
        "train_loss": loss_sum / max(count, 1),
        "train_accuracy": hits / max(count, 1),
        "train_images": int(count),
    }


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Logits (N, classes) to probabilities, in fp32: the one torch softmax of every prediction
    (a fine-tuned run's recorded ones, the Predictor's and the exported graphs'). A probe on
    cached features, which needs no torch, uses scipy's in fit/head.py."""
    return torch.softmax(logits.float(), dim=1)


@torch.inference_mode()
def predict(model: nn.Module, batches: Batches, device: torch.device, bf16: bool) -> torch.Tensor:
    """Logits (float32, on the CPU) for every row of `batches`, in order."""
    model.eval()
    outputs = []
    for x, _ in batches:
        if x.shape[0] == 0:
            continue
        with autocast(device, bf16):
            outputs.append(model(x.to(device, non_blocking=True)).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


@torch.inference_mode()
def evaluate(
    model: nn.Module, batches: Batches, loss_fn: nn.Module, device: torch.device, bf16: bool
) -> dict[str, float]:
    model.eval()
    total_loss = 0.0
    correct = 0
    seen = 0
    for x, y in batches:
        if x.shape[0] == 0:
            continue
        y = y.to(device)
        with autocast(device, bf16):
            logits = model(x.to(device, non_blocking=True)).float()
        total_loss += float(loss_fn(logits, y)) * y.shape[0]
        correct += int((logits.argmax(1) == y).sum())
        seen += y.shape[0]
    loss_sum, hits, count = distributed.sums(total_loss, correct, seen)
    return {"loss": loss_sum / max(count, 1), "accuracy": hits / max(count, 1), "n": int(count)}


def fit(
    model: nn.Module,
    train_batches: Callable[[int], Batches],
    val_batches: Callable[[], Batches],
    steps_per_epoch: int,
    config: RunConfig,
    loss_fn: nn.Module,
    device: torch.device,
    bf16: bool,
    progress: Progress | None = None,
    on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
    prepare: Callable[[nn.Module], None] | None = None,
    params: ParamGroups | None = None,
    start: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Train for `config.epochs` (or until early stopping); the best val-loss weights are kept.

    `params`: parameter groups with their share of the learning rate (default: every trainable
    parameter at the full rate). `start`: the validation loss and accuracy of the weights as
    given (a probe's solution); then they are a candidate too, as epoch 0, and the kept weights
    are those of the epoch that `beats` all others, the starting weights when no epoch beats
    them; the kept row says `"kept": true`.

    Returns the per-epoch history; `on_epoch` sees it after every epoch (to record it).
    """
    progress = progress or NullProgress()
    optimizer = make_optimizer(params if params is not None else model.parameters(), config)
    schedule = make_schedule(optimizer, config, steps_per_epoch)

    eval_loss = nn.CrossEntropyLoss()
    history: list[dict[str, Any]] = []
    best_loss = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_row: dict[str, Any] | None = None
    keep_best = bool(config.early_stopping) or start is not None
    if start is not None:
        best_row = {
            "epoch": 0,
            "stage": "start",
            "val_loss": start["val_loss"],
            "val_accuracy": start["val_accuracy"],
        }
        history.append(best_row)
        best_loss = start["val_loss"]
        best_state = copy.deepcopy(model.state_dict())
    stale = 0
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        # The full rate (the head's, when groups train slower) at the epoch's first step.
        lr = max(schedule.get_last_lr())
        progress.begin(f"Epoch {epoch}/{config.epochs}", total=steps_per_epoch)
        row: dict[str, Any] = {"epoch": epoch, "lr": lr}
        row.update(
            train_one_epoch(
                model,
                train_batches(epoch),
                optimizer,
                schedule,
                loss_fn,
                device,
                bf16,
                progress,
                prepare,
            )
        )
        val = evaluate(model, val_batches(), eval_loss, device, bf16)
        row["val_loss"] = val["loss"]
        row["val_accuracy"] = val["accuracy"]
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        status = (
            f"loss {row['train_loss']:.3f} acc {row['train_accuracy']:.3f} "
            f"val_loss {row['val_loss']:.3f} val_acc {row['val_accuracy']:.3f}"
        )
        progress.advance(0, status=status)
        progress.end()
        if on_epoch is not None:
            on_epoch(history)
        better = beats(row, best_row) if start is not None else val["loss"] < best_loss - 1e-6
        if better and keep_best:
            best_row = row
            best_state = copy.deepcopy(model.state_dict())
        if val["loss"] < best_loss - 1e-6:
            best_loss = val["loss"]
            stale = 0
        else:
            stale += 1
            if config.early_stopping and stale >= config.early_stopping:
                row["stopped_early"] = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
        if best_row is not None:
            best_row["kept"] = True
            if on_epoch is not None:
                on_epoch(history)
    return history
