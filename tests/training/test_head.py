"""The probe's head: scikit-learn's logistic regression, its C chosen on validation, folded onto
raw features, deterministic, and as good as a plain L-BFGS fit on the same features."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from annotate2model.progress import NullProgress
from annotate2model.training.fit.head import ABSENT_BIAS, C_GRID, fit_head, probabilities


def blobs(
    classes: int = 3, dim: int = 16, spread: float = 1.0, seed: int = 0
) -> tuple[Any, Any, Any, Any]:
    """Train and val rows of `classes` Gaussian blobs in `dim` dimensions (raw scale ~100)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))

    def draw(rows: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        y = rng.integers(0, classes, rows)
        x = 100 + 10 * (centres[y] + rng.normal(0, spread, (rows, dim)))
        return x.astype(np.float32), y.astype(np.int64)

    return (*draw(120), *draw(60))


class Recording(NullProgress):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def begin(self, description: str, total: float | None = None) -> None:
        self.events.append(("begin", total))

    def advance(self, amount: float = 1.0, status: str | None = None) -> None:
        self.events.append(("advance", status))

    def end(self) -> None:
        self.events.append(("end", None))


def test_a_head_learns_separable_classes_and_reports_each_c() -> None:
    xt, yt, xv, yv = blobs(spread=0.3)
    progress, seen = Recording(), []
    fit = fit_head(xt, yt, xv, yv, 3, progress=progress, on_epoch=lambda h: seen.append(len(h)))
    assert np.mean(np.argmax(probabilities(xv, fit.weight, fit.bias), axis=1) == yv) == 1.0
    assert [row["C"] for row in fit.history] == list(C_GRID)
    assert [row["epoch"] for row in fit.history] == list(range(1, len(C_GRID) + 1))
    kept = [row for row in fit.history if row.get("kept")]
    assert len(kept) == 1 and kept[0]["C"] == fit.C
    # The kept fit has the lowest validation loss of the grid.
    assert kept[0]["val_loss"] == min(row["val_loss"] for row in fit.history)
    assert all(
        {"train_loss", "train_accuracy", "val_accuracy", "seconds"} <= set(r) for r in fit.history
    )
    assert seen == [*range(1, len(C_GRID) + 1), len(C_GRID)]
    assert progress.events[0] == ("begin", len(C_GRID)) and progress.events[-1] == ("end", None)


def test_the_folded_head_is_the_fit_on_standardised_features() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xt, yt, xv, yv = blobs(spread=2.0, seed=3)
    fit = fit_head(xt, yt, xv, yv, 3)
    scaler = StandardScaler().fit(xt)
    reference = LogisticRegression(C=fit.C, max_iter=1000).fit(scaler.transform(xt), yt)
    expected = reference.predict_proba(scaler.transform(xv))
    # The grid's fits start from the previous C's solution: the same optimum within L-BFGS's
    # tolerance.
    assert np.allclose(probabilities(xv, fit.weight, fit.bias), expected, atol=1e-3)
    assert np.allclose(fit.mean, scaler.mean_) and np.allclose(fit.std, scaler.scale_)


def test_two_classes_give_a_two_column_softmax() -> None:
    xt, yt, xv, yv = blobs(classes=2, spread=2.0, seed=1)
    fit = fit_head(xt, yt, xv, yv, 2)
    assert fit.weight.shape == (2, 16) and fit.bias.shape == (2,)
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xt)
    reference = LogisticRegression(C=fit.C, max_iter=1000).fit(scaler.transform(xt), yt)
    assert np.allclose(
        probabilities(xv, fit.weight, fit.bias),
        reference.predict_proba(scaler.transform(xv)),
        atol=1e-3,
    )


def test_a_class_without_training_rows_gets_no_probability() -> None:
    xt, yt, xv, yv = blobs(classes=2, seed=2)
    fit = fit_head(xt, yt, xv, yv, 3)
    assert float(fit.bias[2]) == ABSENT_BIAS and not fit.weight[2].any()
    assert probabilities(xv, fit.weight, fit.bias)[:, 2].max() < 1e-6


def test_class_weights_favour_the_rare_class() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (300, 4)).astype(np.float32)
    y = (x[:, 0] + rng.normal(0, 1.5, 300) > 1.6).astype(np.int64)  # about 15% ones
    plain = fit_head(x[:200], y[:200], x[200:], y[200:], 2)
    weighted = fit_head(x[:200], y[:200], x[200:], y[200:], 2, class_weights=True)
    share = [
        np.mean(np.argmax(probabilities(x[200:], f.weight, f.bias), axis=1) == 1)
        for f in (plain, weighted)
    ]
    assert share[1] > share[0]


def test_without_validation_rows_the_middle_c_is_used() -> None:
    xt, yt, _, _ = blobs()
    fit = fit_head(xt, yt, np.empty((0, 16)), np.empty(0), 3)
    assert C_GRID[len(C_GRID) // 2] == fit.C
    assert len(fit.history) == 1 and "val_loss" not in fit.history[0]


def test_the_fit_is_deterministic() -> None:
    xt, yt, xv, yv = blobs(spread=3.0, seed=5)
    a, b = fit_head(xt, yt, xv, yv, 3), fit_head(xt, yt, xv, yv, 3)
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)


def test_probabilities_are_a_stable_softmax() -> None:
    weight = np.array([[1.0, 0.0], [0.0, 1.0]])
    bias = np.zeros(2)
    probs = probabilities(np.array([[1e4, 0.0], [0.0, 0.0]]), weight, bias)
    assert np.allclose(probs, [[1.0, 0.0], [0.5, 0.5]]) and np.isfinite(probs).all()
    assert probabilities(np.empty((0, 2)), weight, bias).shape == (0, 2)
