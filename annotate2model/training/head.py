"""A linear probe's head trained in numpy: no torch to import for a few hundred feature rows.

The same recipe as the torch loop in `trainer.fit` (one progress bar
for the whole run, no starting solution): features standardised with the training split's mean
and unbiased standard deviation, an `nn.Linear`-style uniform initialisation, seeded mini-batches,
`nn.CrossEntropyLoss` (class weights, label smoothing) with its gradient worked out by hand, the
SGD (momentum, L2) and AdamW updates of torch.optim, the learning-rate schedule of `lr_at`, early
stopping and keep-best. The maths runs in float64 (statistics, parameters, optimiser state,
logits, gradients); the standardised features are kept in float32 (one copy of the input's size,
as the torch path made) and each batch is taken to float64 when it is used.

Importing this module does not import torch (tests/training/test_head.py checks it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from annotate2model.progress import NullProgress, Progress
from annotate2model.training.config import RunConfig

F64 = NDArray[np.float64]

# Feature rows are worked on in chunks of about this many values (256 KiB of float64): small
# temporaries stay in cache and out of fresh memory maps (measured: about twice as fast as whole
# matrices of a few hundred rows), and a large split never gets a float64 copy.
CHUNK_VALUES = 1 << 15
# The smallest standard deviation a feature is divided by.
MIN_STD = 1e-3


@dataclass
class HeadFit:
    """A trained linear head. `weight` (classes, dim) and `bias` (classes,) work on RAW features:
    the standardisation used while training (`mean`, `std`, per feature) is folded into them."""

    weight: NDArray[np.float32]
    bias: NDArray[np.float32]
    mean: NDArray[np.float32]
    std: NDArray[np.float32]
    history: list[dict[str, Any]]


def fit_head(
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_val: ArrayLike,
    y_val: ArrayLike,
    n_classes: int,
    config: RunConfig,
    progress: Progress | None = None,
    on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
) -> HeadFit:
    """Train a linear head on (rows, dim) features and integer targets for `config.epochs` (or
    until early stopping; then the epoch with the best validation loss is kept).

    `x_train` must have at least one row (`check_trainable` refuses versions without); the
    validation split may be empty (its loss and accuracy are then 0.0). `on_epoch` sees the
    history after every epoch, and once more when a kept epoch is marked `"kept": True`.
    """
    progress = progress or NullProgress()
    xt = np.asarray(x_train)
    yt = np.asarray(y_train, dtype=np.intp).reshape(-1)
    xv = np.asarray(x_val)
    yv = np.asarray(y_val, dtype=np.intp).reshape(-1)
    n, dim = xt.shape
    if xv.shape[0] == 0:
        xv = np.empty((0, dim), dtype=xt.dtype)

    mean, std = standardisation(xt)
    # Standardised once, in float32 (the size of the input; batches are taken to float64).
    xt_std = standardised(xt, mean, std)
    xv_std = standardised(xv, mean, std)
    init = np.random.default_rng(config.seed)
    bound = 1 / math.sqrt(dim)  # nn.Linear: kaiming_uniform(a=sqrt(5)) and its bias rule
    # Weight and bias are views of one vector, and so are their gradients: one optimiser update
    # for both (the same element-wise rules), half the numpy calls per step.
    size = n_classes * dim
    params = np.empty(size + n_classes)
    weight, bias = params[:size].reshape(n_classes, dim), params[size:]
    weight[:] = init.uniform(-bound, bound, (n_classes, dim))
    bias[:] = init.uniform(-bound, bound, n_classes)
    grads = np.empty_like(params)
    grad_weight, grad_bias = grads[:size].reshape(n_classes, dim), grads[size:]
    shuffle = np.random.default_rng([config.seed, 1])
    batch = config.batch_size
    steps_per_epoch = math.ceil(n / batch)
    optimizer = HeadOptimizer(config, [params])
    class_weight = class_weights(yt, n_classes) if config.class_weights else None

    history: list[dict[str, Any]] = []
    step = 0
    best_loss = math.inf
    best_state: F64 | None = None
    best_row: dict[str, Any] | None = None
    keep_best = bool(config.early_stopping)
    stale = 0
    progress.begin("Training the head", total=config.epochs)
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch, "lr": lr_at(step, config, steps_per_epoch)}
        order = shuffle.permutation(n)
        total_loss = 0.0
        correct = 0
        for xb, yb in batches(xt_std, yt, order, batch):
            logits = xb @ weight.T
            logits += bias
            loss, grad = cross_entropy(logits, yb, class_weight, config.label_smoothing)
            np.matmul(grad.T, xb, out=grad_weight)
            np.sum(grad, axis=0, out=grad_bias)
            optimizer.step([grads], lr_at(step, config, steps_per_epoch))
            step += 1
            total_loss += loss * len(yb)
            correct += int(np.count_nonzero(logits.argmax(1) == yb))
        row["train_loss"] = total_loss / max(n, 1)
        row["train_accuracy"] = correct / max(n, 1)
        row["train_images"] = n
        row["val_loss"], row["val_accuracy"] = evaluate(xv_std, yv, weight, bias)
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        progress.advance(
            1,
            status=(
                f"loss {row['train_loss']:.3f} acc {row['train_accuracy']:.3f} "
                f"val_loss {row['val_loss']:.3f} val_acc {row['val_accuracy']:.3f}"
            ),
        )
        if on_epoch is not None:
            on_epoch(history)
        better = row["val_loss"] < best_loss - 1e-6
        if better and keep_best:
            best_row = row
            best_state = params.copy()
        if better:
            best_loss = row["val_loss"]
            stale = 0
        else:
            stale += 1
            if config.early_stopping and stale >= config.early_stopping:
                row["stopped_early"] = True
                break
    progress.end()
    if best_state is not None:
        params[:] = best_state
        if best_row is not None:
            best_row["kept"] = True
            if on_epoch is not None:
                on_epoch(history)
    raw_weight, raw_bias = fold(weight, bias, mean, std)
    return HeadFit(
        weight=raw_weight.astype(np.float32),
        bias=raw_bias.astype(np.float32),
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        history=history,
    )


def batches(
    x: NDArray[np.float32], y: NDArray[np.intp], order: NDArray[np.intp], batch: int
) -> Iterator[tuple[F64, NDArray[np.intp]]]:
    """Mini-batches of `batch` rows in `order`, in float64; rows are gathered a chunk of whole
    batches at a time (one copy for a small split, bounded memory for a large one)."""
    chunk = batch * max(1, chunk_rows(x) // batch)
    for first in range(0, len(order), chunk):
        idx = order[first : first + chunk]
        xs, ys = x[idx].astype(np.float64), y[idx]
        for start in range(0, len(idx), batch):
            yield xs[start : start + batch], ys[start : start + batch]


def chunk_rows(x: NDArray[Any]) -> int:
    """Rows of `x` per chunk (CHUNK_VALUES values, at least one row)."""
    return max(1, CHUNK_VALUES // max(1, int(np.prod(x.shape[1:]))))


def probabilities(x: ArrayLike, weight: ArrayLike, bias: ArrayLike) -> NDArray[np.float32]:
    """softmax(x @ weight.T + bias) of (rows, dim) features: (rows, classes), rows summing to 1
    (computed in float64, a chunk of rows at a time, shifted by each row's largest logit)."""
    xs = np.asarray(x)
    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    out = np.empty((xs.shape[0], w.shape[0]), dtype=np.float32)
    chunk = chunk_rows(xs)
    for start in range(0, xs.shape[0], chunk):
        logits = xs[start : start + chunk].astype(np.float64) @ w.T + b
        out[start : start + chunk] = np.exp(log_softmax(logits))
    return out


def fold(weight: F64, bias: F64, mean: F64, std: F64) -> tuple[F64, F64]:
    """A head on standardised features, (x - mean) / std, as one on raw features x."""
    return weight / std, bias - (weight * (mean / std)).sum(1)


def standardisation(x: NDArray[Any]) -> tuple[F64, F64]:
    """Per-feature mean and unbiased standard deviation (as torch.std), the latter no smaller
    than MIN_STD; in float64, a chunk of rows at a time (no float64 copy of the whole matrix).
    A single row has no spread: its deviation is MIN_STD (torch would give NaN)."""
    n = x.shape[0]
    mean = x.sum(0, dtype=np.float64) / max(n, 1)
    squares = np.zeros(x.shape[1], dtype=np.float64)
    chunk = chunk_rows(x)
    for start in range(0, n, chunk):
        d = x[start : start + chunk].astype(np.float64) - mean
        squares += np.einsum("ij,ij->j", d, d)
    std = np.sqrt(squares / (n - 1)) if n > 1 else np.zeros_like(squares)
    return mean, np.maximum(std, MIN_STD)


def standardised(x: NDArray[Any], mean: F64, std: F64) -> NDArray[np.float32]:
    """(x - mean) / std as float32, worked out a chunk of rows at a time in float64."""
    out = np.empty(x.shape, dtype=np.float32)
    chunk = chunk_rows(x)
    for start in range(0, x.shape[0], chunk):
        out[start : start + chunk] = (x[start : start + chunk].astype(np.float64) - mean) / std
    return out


def class_weights(targets: NDArray[np.intp], n_classes: int) -> F64:
    """Inverse class frequency, n / (classes * count), 0 for a class with no training rows (the
    probe's head here, fine-tuning's loss in `trainer.make_loss`)."""
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
    weights: F64 = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return weights


def log_softmax(logits: F64) -> F64:
    shifted = logits - logits.max(1, keepdims=True)
    logp: F64 = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return logp


def cross_entropy(
    logits: F64, targets: NDArray[np.intp], weight: F64 | None = None, smoothing: float = 0.0
) -> tuple[float, F64]:
    """torch's `nn.CrossEntropyLoss(weight, label_smoothing)` with mean reduction, and its
    gradient with respect to the logits.

    torch mixes two terms, both divided by the summed weight of the rows' TARGET classes:
    (1 - s) * sum_i w[y_i] * -log p[i, y_i] and (s / C) * sum_i sum_c w[c] * -log p[i, c]. The
    smoothing term weighs every class by its own weight, not by the row's target weight. So the
    loss is sum_i sum_c t[i, c] * -log p[i, c] / sum_i w[y_i], with t[i, c] = (1 - s) * w[y_i] *
    [c == y_i] + (s / C) * w[c], and the gradient (p * t.sum(1) - t) / sum_i w[y_i].
    """
    rows, classes = logits.shape
    at = np.arange(rows)
    shifted = logits - logits.max(1, keepdims=True)
    grad = np.exp(shifted)
    sums = grad.sum(1, keepdims=True)
    grad /= sums  # the probabilities, turned into the gradient below
    lse = np.log(sums[:, 0])  # -log p[i, c] = lse[i] - shifted[i, c]
    picked = lse - shifted[at, targets]
    if weight is None and not smoothing:  # the probe's default: one-hot targets
        grad[at, targets] -= 1.0
        grad /= rows
        return float(picked.sum()) / rows, grad
    w = np.ones(rows) if weight is None else weight[targets]
    on_target = (1 - smoothing) * w
    norm = float(w.sum())
    total = float(on_target @ picked)
    if smoothing:
        # Every class's share of the smoothing, weighted by its own class weight.
        spread = (smoothing / classes) * (np.ones(classes) if weight is None else weight)
        share = float(spread.sum())
        total += share * float(lse.sum()) - float((shifted @ spread).sum())
        grad *= (on_target + share)[:, None]
        grad -= spread
    elif weight is not None:
        grad *= on_target[:, None]
    grad[at, targets] -= on_target
    grad /= norm
    return total / norm, grad


def evaluate(
    x: NDArray[np.float32], y: NDArray[np.intp], weight: F64, bias: F64
) -> tuple[float, float]:
    """Plain cross entropy (no class weights, no smoothing) and accuracy of the head on
    standardised features; (0.0, 0.0) for no rows."""
    total = 0.0
    correct = 0
    chunk = chunk_rows(x)
    for start in range(0, x.shape[0], chunk):
        xs = x[start : start + chunk].astype(np.float64)
        ys = y[start : start + chunk]
        logits = xs @ weight.T + bias
        total += float(-log_softmax(logits)[np.arange(len(ys)), ys].sum())
        correct += int(np.count_nonzero(logits.argmax(1) == ys))
    seen = max(x.shape[0], 1)
    return total / seen, correct / seen


class HeadOptimizer:
    """torch.optim's SGD (momentum without dampening, L2 weight decay added to the gradient) or
    AdamW (betas 0.9 and 0.999, eps 1e-8, decoupled weight decay), as `torch.optim`,
    updating float64 arrays in place at the rate given to each step."""

    def __init__(self, config: RunConfig, params: list[F64]) -> None:
        self.config = config
        self.params = params
        self.state: list[dict[str, F64]] = [{} for _ in params]
        self.steps = 0

    def step(self, grads: list[F64], lr: float) -> None:
        c = self.config
        self.steps += 1
        for p, g, state in zip(self.params, grads, self.state, strict=True):
            if c.optimizer == "adamw":
                # As torch.optim.AdamW (single-tensor): decay, lerp, addcmul, addcdiv.
                beta1, beta2, eps = 0.9, 0.999, 1e-8
                if c.weight_decay:
                    p *= 1 - lr * c.weight_decay
                m = state.setdefault("m", np.zeros_like(p))
                v = state.setdefault("v", np.zeros_like(p))
                m += (1 - beta1) * (g - m)
                v *= beta2
                v += (1 - beta2) * (g * g)
                denom = np.sqrt(v)
                denom /= math.sqrt(1 - beta2**self.steps)
                denom += eps
                p -= (lr / (1 - beta1**self.steps)) * m / denom
            else:
                if c.weight_decay:
                    g = g + c.weight_decay * p
                if c.momentum:
                    buf = state.get("momentum")
                    if buf is None:
                        buf = state["momentum"] = g.copy()
                    else:
                        buf *= c.momentum
                        buf += g
                    g = buf
                p -= lr * g


def lr_at(step: int, config: RunConfig, steps_per_epoch: int) -> float:
    """The learning rate of optimiser step `step` (0-based): a linear warm-up over
    `warmup_epochs`, then the run's schedule over the remaining steps."""
    warm = min(round(config.warmup_epochs * steps_per_epoch), steps_per_epoch * config.epochs - 1)
    if warm > 0:
        if step < warm:
            return config.lr * (step + 1) / (warm + 1)
        step -= warm
    total = max(1, steps_per_epoch * config.epochs - max(0, warm))
    peak = config.lr
    if config.schedule == "cyclic":
        # triangular2 (as torch's CyclicLR): half-cycles of two epochs between lr * 1e-4 and lr,
        # the amplitude halving every cycle.
        base = peak * 1e-4
        half = max(1, 2 * steps_per_epoch)
        cycle = math.floor(1 + step / (2 * half))
        x = abs(step / half - 2 * cycle + 1)
        return float(base + (peak - base) * max(0.0, 1 - x) / (2.0 ** (cycle - 1)))
    if config.schedule == "cosine":
        return peak * (1 + math.cos(math.pi * min(step, total) / total)) / 2
    if config.schedule == "onecycle":
        # As torch's OneCycleLR with cosine annealing: 30% warm-up from lr/25, down to lr/25e4.
        initial, final = peak / 25, peak / 25e4
        warm = max(1, round(0.3 * total))
        if step < warm:
            return initial + (peak - initial) * (1 - math.cos(math.pi * step / warm)) / 2
        t = min(1.0, (step - warm) / max(1, total - warm))
        return final + (peak - final) * (1 + math.cos(math.pi * t)) / 2
    return peak


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
