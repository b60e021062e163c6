"""PNG plots of runs, comparisons and learning curves (matplotlib, headless).

Each function draws one figure of a fixed size (WIDTH x HEIGHT pixels, whatever the data) into one
PNG file and returns its path. matplotlib is imported when the first plot is drawn, never with this
module: `a2m --help` and `a2m sync` do not pay for it. Figures are made through
`matplotlib.figure.Figure`, not pyplot: no global state, no GUI backend, nothing left open.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotate2model.fsutil import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from annotate2model.judging.records import CompareRow, Comparison, LearningCurve

WIDTH = 800
HEIGHT = 500
DPI = 100

TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#ff7f0e"

# Fewer points than this say more as a table than as a plot: the reports draw none (see the
# *_points functions, which count what a plot would hold).
MIN_POINTS = 3


def _figure(columns: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, columns, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Figure, path: Path) -> Path:
    """Written whole or not at all; no bbox_inches="tight" (it would change the pixel size)."""
    # Software metadata names the matplotlib version; left out, the same data gives the same file.
    atomic_write(
        path,
        lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}),
        mode=0o644,
    )
    return path


def _integer_ticks() -> MaxNLocator:
    """Ticks on whole numbers only (epochs, image counts)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the epochs that have `key` (a run without val images has no val_loss)."""
    xs: list[float] = []
    ys: list[float] = []
    for i, row in enumerate(history):
        value = row.get(key)
        if isinstance(value, int | float):
            xs.append(float(row.get("epoch", i + 1)))
            ys.append(float(value))
    return xs, ys


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def history_points(history: Sequence[dict[str, Any]]) -> int:
    """How many epochs (a probe: fits) the history plot would show."""
    return max((len(_series(history, f"{s}_{m}")[0]) for s in ("train", "val")
                for m in ("loss", "accuracy")), default=0)  # fmt: skip


def _fit_accuracy_axis(ax: Axes) -> None:
    """The accuracy axis fitted to what is drawn (points and their intervals, which autoscaling
    takes in), with a little room, and never past what accuracy can be."""
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, -0.02), min(high, 1.02))


def history_plot(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Loss (left) and accuracy (right) per epoch, train and val."""
    fig, (loss_ax, acc_ax) = _figure(2)
    for ax, metric, title in ((loss_ax, "loss", "Loss"), (acc_ax, "accuracy", "Accuracy")):
        drawn = False
        for split, color in (("train", TRAIN_COLOR), ("val", VAL_COLOR)):
            xs, ys = _series(history, f"{split}_{metric}")
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, color=color, label=split)
                drawn = True
        ax.set_title(title)
        # A probe's rows are its head's fits, one per C; fine-tuning's are epochs.
        ax.set_xlabel("fit (one per C)" if any("C" in row for row in history) else "epoch")
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend()
        else:
            _no_data(ax, "no epochs recorded")
    _fit_accuracy_axis(acc_ax)
    return _save(fig, path)


def confusion_plot(labels: Sequence[str], matrix: Sequence[Sequence[int]], path: Path) -> Path:
    """Counts per (true, predicted) label, rows true; each cell shaded by its row's share."""
    fig, (ax,) = _figure()
    n = len(labels)
    if n == 0 or not matrix:
        _no_data(ax, "no images judged")
        ax.set_axis_off()
        return _save(fig, path)
    totals = [max(1, sum(row)) for row in matrix]
    shares = [[v / t for v in row] for row, t in zip(matrix, totals, strict=True)]
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    font = 10 if n <= 10 else max(4, int(100 / n))
    if n <= 30:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                dark = shares[i][j] > 0.6
                ax.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=font,
                    color="white" if dark else "black",
                )
    ax.set_xticks(range(n), [_short(label) for label in labels], rotation=45 if n > 4 else 0)
    ax.set_yticks(range(n), [_short(label) for label in labels])
    ax.tick_params(labelsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    return _save(fig, path)


def _short(text: str, limit: int = 18) -> str:
    return _plain(text if len(text) <= limit else text[: limit - 1] + "…")


def _plain(text: str) -> str:
    """Text from data shown as typed: matplotlib reads $...$ as math (a label "$5 bill")."""
    return text.replace("$", r"\$")


def _run_label(run: int, version: int) -> str:
    return f"run {run} (v{version})"


def _points(comparison: Comparison, axis: str) -> list[tuple[float, CompareRow]]:
    points = []
    for row in comparison.rows:
        x = row.counts.get("train") if axis == "images" else row.wall_seconds
        if x is not None:
            points.append((float(x), row))
    points.sort(key=lambda p: p[0])
    return points


def comparison_points(comparison: Comparison, axis: str) -> int:
    """How many places the accuracy plot against `axis` ("images" or "time") would mark: runs
    trained on as many images fall on one another."""
    return len({x for x, _ in _points(comparison, axis)})


def _accuracy_against(comparison: Comparison, axis: str, path: Path) -> Path:
    fig, (ax,) = _figure()
    points = _points(comparison, axis)
    if not points:
        _no_data(ax, "no run has this figure")
    else:
        xs = [x for x, _ in points]
        ys = [r.accuracy for _, r in points]
        below = [max(0.0, r.accuracy - r.interval.low) for _, r in points]
        above = [max(0.0, r.interval.high - r.accuracy) for _, r in points]
        # Versions grow in images, so a line reads as a trend; in time, runs are just points.
        fmt = "o-" if axis == "images" else "o"
        ax.errorbar(xs, ys, yerr=[below, above], fmt=fmt, capsize=5, color=TRAIN_COLOR)
        # Room for the run names written beside the points.
        ax.margins(x=0.12, y=0.08)
        for k, (x, r) in enumerate(points):
            # Names alternate above and below their point, so close neighbours do not overprint.
            ax.annotate(
                _run_label(r.run, r.version),
                (x, r.accuracy),
                textcoords="offset points",
                xytext=(6, 6 if k % 2 == 0 else -14),
                fontsize=9,
                annotation_clip=False,
            )
        level = round(points[0][1].interval.level * 100)
        ax.set_ylabel(f"accuracy ({level}% interval)")
        _fit_accuracy_axis(ax)
    ax.set_xlabel("training images" if axis == "images" else "training wall time (s)")
    if axis == "images":
        ax.xaxis.set_major_locator(_integer_ticks())
    test = comparison.test_set
    ax.set_title(f"Accuracy on the common test set ({len(test.images)} images)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def accuracy_vs_images_plot(comparison: Comparison, path: Path) -> Path:
    """Accuracy on the common test images, with its interval, against training images."""
    return _accuracy_against(comparison, "images", path)


def accuracy_vs_time_plot(comparison: Comparison, path: Path) -> Path:
    """Accuracy on the common test images, with its interval, against training wall time."""
    return _accuracy_against(comparison, "time", path)


def curve_points(curve: LearningCurve) -> int:
    """How many training-subset sizes the learning-curve plot would show."""
    return len({s.train_images for s in curve.summary})


def learning_curve_plot(curve: LearningCurve, path: Path) -> Path:
    """Mean accuracy per training-subset size with its spread, and every repeat as a dot."""
    fig, (ax,) = _figure()
    summary = sorted(curve.summary, key=lambda s: s.train_images)
    if not summary:
        _no_data(ax, "no points")
    else:
        xs = [s.train_images for s in summary]
        ax.fill_between(
            xs,
            [s.low for s in summary],
            [s.high for s in summary],
            color=TRAIN_COLOR,
            alpha=0.2,
            label="spread (low to high)",
        )
        ax.plot(xs, [s.mean for s in summary], "o-", color=TRAIN_COLOR, label="mean")
        if curve.points:
            ax.scatter(
                [p.train_images for p in curve.points],
                [p.accuracy for p in curve.points],
                s=12,
                color=VAL_COLOR,
                alpha=0.7,
                label="each repeat",
                zorder=3,
            )
        # Wherever it hides the fewest points: a fixed corner can cover the curve's last one.
        ax.legend(loc="best")
    ax.set_xlabel("training images")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel("accuracy")
    # Wrapped: a long test description would run past the figure's edges.
    title = f"Learning curve of version {curve.version} on {curve.test_description}"
    ax.set_title(_plain(textwrap.fill(title, 70)))
    if summary:
        _fit_accuracy_axis(ax)
    ax.grid(alpha=0.3)
    return _save(fig, path)
