"""A linear probe's head: multinomial logistic regression fitted by scikit-learn.

The standard linear-probe recipe: features standardised on the training rows, an L-BFGS fit of
an L2-regularised logistic regression for each C of a small grid, and the C whose fit has the
lowest validation log loss kept. Deterministic (no seed, no learning rate, no epochs), and it
needs no torch when the features are cached.

The kept head is stored as one Linear on RAW features (`weight` (classes, dim), `bias`): the
standardisation is folded into it, so a run's artifact and the Predictor do not change.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from annotate2model.progress import NullProgress, Progress

# Inverse regularisation strengths tried, in half-decade steps, weakest regularisation last. On
# the shared ResNet-18 features (hymenoptera 245 training photos, scenes_1200 988) the best val
# loss is at 0.01, inside the grid, and every C lands within a few points of the best accuracy.
C_GRID: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
# Iterations L-BFGS may take per fit (a few hundred rows converge in well under a hundred).
MAX_ITER = 1000
# The bias a class gets when it has no training rows: its probability is effectively zero.
ABSENT_BIAS = -30.0


@dataclass
class HeadFit:
    """A trained linear head. `weight` (classes, dim) and `bias` (classes,) work on RAW features;
    `mean` and `std` are the standardisation used while fitting (folded into them), `C` the
    regularisation kept."""

    weight: NDArray[np.float32]
    bias: NDArray[np.float32]
    mean: NDArray[np.float32]
    std: NDArray[np.float32]
    history: list[dict[str, Any]]
    C: float


def fit_head(
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_val: ArrayLike,
    y_val: ArrayLike,
    n_classes: int,
    class_weights: bool = False,
    progress: Progress | None = None,
    on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
) -> HeadFit:
    """Fit the head on (rows, dim) features and integer targets in [0, n_classes).

    One fit per C of `C_GRID`; each is a row of the history (`"epoch"` is the fit's number), and
    the fit with the lowest validation log loss is kept (`"kept": True`). Without validation rows
    the middle of the grid is used. `class_weights`: weight rows by inverse class frequency.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    progress = progress or NullProgress()
    xt = np.asarray(x_train, dtype=np.float32)
    yt = np.asarray(y_train, dtype=np.int64).reshape(-1)
    xv = np.asarray(x_val, dtype=np.float32)
    yv = np.asarray(y_val, dtype=np.int64).reshape(-1)
    if xv.shape[0] == 0:
        xv = np.empty((0, xt.shape[1]), dtype=np.float32)
    scaler = StandardScaler().fit(xt)
    mean = scaler.mean_.astype(np.float32)
    std = scaler.scale_.astype(np.float32)
    xt_std = scaler.transform(xt)
    xv_std = scaler.transform(xv) if len(xv) else xv
    grid = C_GRID if len(yv) else (C_GRID[len(C_GRID) // 2],)

    history: list[dict[str, Any]] = []
    fits: list[tuple[NDArray[np.float64], NDArray[np.float64]]] = []
    # Along the grid each fit starts from the last one's solution (warm_start): the next C's
    # optimum is near, and L-BFGS needs fewer steps to it.
    model = LogisticRegression(
        max_iter=MAX_ITER, class_weight="balanced" if class_weights else None, warm_start=True
    )
    progress.begin("Fitting the head", total=len(grid))
    for number, c in enumerate(grid, start=1):
        started = time.perf_counter()
        model.set_params(C=c)
        # One BLAS thread: these products are small, and with more threads on a busy machine
        # (measured on 2 cores under load: 2-5 s per fit against 0.1 s) they only wait.
        with threadpool_limits(limits=1), warnings.catch_warnings():
            # A fit that stops at MAX_ITER is still a usable head; its row says how far it went.
            warnings.filterwarnings("ignore", message=".*(converge|ITERATIONS).*")
            model.fit(xt_std, yt)
        weight, bias = _full_head(model, n_classes)
        fits.append((weight, bias))
        row: dict[str, Any] = {"epoch": number, "C": c, "iterations": int(np.max(model.n_iter_))}
        row.update(_loss_and_accuracy("train", xt_std, yt, weight, bias))
        if len(yv):
            row.update(_loss_and_accuracy("val", xv_std, yv, weight, bias))
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        progress.advance(1, status=f"C={c:g} val_loss {row.get('val_loss', float('nan')):.3f}")
        if on_epoch is not None:
            on_epoch(history)
    progress.end()
    best = min(range(len(grid)), key=lambda i: (history[i].get("val_loss", 0.0), -grid[i]))
    history[best]["kept"] = True
    if on_epoch is not None:
        on_epoch(history)
    weight, bias = fits[best]
    # Fold the standardisation in: w·((x - mean) / std) + b = (w / std)·x + (b - w·(mean / std)).
    raw_weight = weight / std.astype(np.float64)
    raw_bias = bias - raw_weight @ mean.astype(np.float64)
    return HeadFit(
        weight=raw_weight.astype(np.float32),
        bias=raw_bias.astype(np.float32),
        mean=mean,
        std=std,
        history=history,
        C=grid[best],
    )


def _full_head(model: Any, n_classes: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """A fitted LogisticRegression as (classes, dim) weight and (classes,) bias of a softmax
    over all `n_classes`: a binary fit's one row becomes two opposite halves (the same
    probabilities), and a class without training rows gets ABSENT_BIAS."""
    coef = np.asarray(model.coef_, dtype=np.float64)
    intercept = np.asarray(model.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((n_classes, coef.shape[1]))
    bias = np.full(n_classes, ABSENT_BIAS)
    classes = np.asarray(model.classes_, dtype=np.int64)
    weight[classes] = coef
    bias[classes] = intercept
    return weight, bias


def _loss_and_accuracy(
    split: str,
    x: NDArray[Any],
    y: NDArray[np.int64],
    weight: NDArray[np.float64],
    bias: NDArray[np.float64],
) -> dict[str, float]:
    from sklearn.metrics import log_loss

    probs = probabilities(x, weight, bias)
    return {
        f"{split}_loss": float(log_loss(y, probs, labels=range(weight.shape[0]))),
        f"{split}_accuracy": float(np.mean(np.argmax(probs, axis=1) == y)),
    }


def probabilities(
    x: ArrayLike, weight: NDArray[np.floating[Any]], bias: NDArray[np.floating[Any]]
) -> NDArray[np.float32]:
    """Softmax of a linear head on (rows, dim) features; (0, classes) for no rows."""
    from scipy.special import softmax

    rows = np.asarray(x, dtype=np.float64)
    if rows.shape[0] == 0:
        return np.empty((0, weight.shape[0]), dtype=np.float32)
    logits = rows @ np.asarray(weight, dtype=np.float64).T + np.asarray(bias, dtype=np.float64)
    return np.asarray(softmax(logits, axis=1), dtype=np.float32)
