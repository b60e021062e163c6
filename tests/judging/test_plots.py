"""The PNG plots: valid files of the promised pixel size, whatever the data, drawn offline, and
matplotlib loaded only when a plot is drawn."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from annotate2model.judging import plots
from annotate2model.judging.records import (
    CommonTestSet,
    CompareRow,
    Comparison,
    CurvePoint,
    CurveSummary,
    ImageChange,
    Interval,
    LearningCurve,
    PairTest,
)

SIZE = (plots.WIDTH, plots.HEIGHT)


def _row(run: int, version: int, train: int, accuracy: float, seconds: float) -> CompareRow:
    return CompareRow(
        run=run,
        version=version,
        counts={"train": train, "val": train // 4, "test": 40},
        balance={"<b>x</b>": train // 2, "$5 bill": train - train // 2},
        backbone="resnet18",
        mode="probe",
        weights="scenes.pth",
        val_accuracy=accuracy - 0.02,
        accuracy=accuracy,
        interval=Interval(accuracy - 0.1, min(1.0, accuracy + 0.08)),
        macro_f1=accuracy - 0.01,
        per_class={"<b>x</b>": accuracy, "$5 bill": accuracy},
        wall_seconds=seconds,
        images_per_second=train / seconds,
        device="cpu",
    )


def sample_comparison(shas: list[str] | None = None) -> Comparison:
    """Two runs judged on 40 common images, one pair with a fixed and a broken image; labels and
    names that are markup (user input, to be escaped)."""
    shas = shas or [f"{i:064x}" for i in range(40)]
    labels = ["<b>x</b>" if i % 2 else "$5 bill" for i in range(len(shas))]
    names = [f"photos/<i>{i}</i>.jpg" for i in range(len(shas))]
    fixed = ImageChange(shas[0], names[0], labels[0], before="<b>x</b>", after=labels[0])
    broken = ImageChange(shas[1], names[1], labels[1], before=labels[1], after="$5 bill")
    return Comparison(
        test_set=CommonTestSet(
            description=f"the {len(shas)} test images both versions share",
            version=2,
            pinned=False,
            images=shas,
            labels=labels,
            names=names,
        ),
        rows=[_row(3, 1, 87, 0.775, 12.5), _row(4, 2, 197, 0.815, 21.0)],
        pairs=[
            PairTest(
                before=3,
                after=4,
                fixed=1,
                broken=1,
                p_value=1.0,
                n=len(shas),
                sentence=f"no evidence of a difference on {len(shas)} images "
                "(1 fixed, 1 broken, p = 1.00)",
                per_class_delta={"<b>x</b>": 0.05, "$5 bill": -0.05},
                changes=[fixed, broken],
            )
        ],
        warnings=["<script>alert('warned')</script> the runs use different weights"],
        predicted={3: labels, 4: labels},
        confidence={3: [0.9] * len(shas), 4: [0.8] * len(shas)},
    )


def three_runs(comparison: Comparison) -> Comparison:
    """`comparison` with a third run (version 3, more images, longer): enough points to plot."""
    return replace(comparison, rows=[*comparison.rows, _row(5, 3, 300, 0.83, 30.0)])


def sample_curve() -> LearningCurve:
    points = [
        CurvePoint(fraction=f, repeat=r, train_images=int(200 * f), accuracy=a + 0.01 * r,
                   macro_f1=None)
        for f, a in ((0.25, 0.6), (0.5, 0.72), (1.0, 0.78))
        for r in range(3)
    ]  # fmt: skip
    summary = [
        CurveSummary(fraction=f, train_images=int(200 * f), mean=a + 0.01, std=0.008,
                     low=a, high=a + 0.02)
        for f, a in ((0.25, 0.6), (0.5, 0.72), (1.0, 0.78))
    ]  # fmt: skip
    return LearningCurve(
        id=1,
        version=2,
        test_description="version 2's test split (40 images)",
        test_n=40,
        config={"backbone": "resnet18"},
        points=points,
        summary=summary,
        verdict="The curve is flattening: about 400 more labeled images per point of accuracy.",
        images_per_point=400,
        seconds=3.2,
    )


def assert_png(path: Path) -> Image.Image:
    """A complete, valid PNG of the promised size with something drawn on it."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()  # checksums of every chunk: a truncated file fails here
    img = Image.open(path)
    img.load()
    assert img.format == "PNG"
    assert img.size == SIZE
    colors = img.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 20, "the plot is (nearly) blank"
    return img


HISTORY = [
    {"epoch": 1, "train_loss": 0.9, "train_accuracy": 0.5, "val_loss": 0.8, "val_accuracy": 0.55},
    {"epoch": 2, "train_loss": 0.6, "train_accuracy": 0.7, "val_loss": 0.7, "val_accuracy": 0.65},
    {"epoch": 3, "train_loss": 0.4, "train_accuracy": 0.85, "val_loss": 0.7, "val_accuracy": 0.7},
]


def test_history_plot(tmp_path: Path) -> None:
    path = plots.history_plot(HISTORY, tmp_path / "deep" / "history.png")
    assert path == tmp_path / "deep" / "history.png"
    assert_png(path)
    # No validation split (its keys missing or None) and no epochs at all still give a plot.
    no_val = [{**row, "val_loss": None, "val_accuracy": None} for row in HISTORY]
    assert_png(plots.history_plot(no_val, tmp_path / "no_val.png"))
    assert_png(plots.history_plot([], tmp_path / "empty.png"))
    # No temporary file is left beside the plots.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "empty.png", "no_val.png"]


def test_the_same_data_give_the_same_file(tmp_path: Path) -> None:
    first = plots.history_plot(HISTORY, tmp_path / "a.png").read_bytes()
    second = plots.history_plot(HISTORY, tmp_path / "b.png").read_bytes()
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()


@pytest.mark.parametrize("classes", [2, 3, 40])
def test_confusion_plot(tmp_path: Path, classes: int) -> None:
    # Labels as users type them: markup, a dollar sign (matplotlib's math delimiter), long names.
    labels = ["<b>x</b>", "$5 bill", *[f"a rather long class name {i}" for i in range(classes - 2)]]
    matrix = [[(i * 7 + j * 3) % 11 for j in range(classes)] for i in range(classes)]
    assert_png(plots.confusion_plot(labels, matrix, tmp_path / "confusion.png"))


def test_confusion_plot_without_images(tmp_path: Path) -> None:
    assert_png(plots.confusion_plot([], [], tmp_path / "confusion.png"))


def test_accuracy_plots(tmp_path: Path) -> None:
    comparison = sample_comparison()
    assert_png(plots.accuracy_vs_images_plot(comparison, tmp_path / "images.png"))
    assert_png(plots.accuracy_vs_time_plot(comparison, tmp_path / "time.png"))
    # A run without a recorded wall time is left out of the time plot, not an error.
    untimed = replace(_row(5, 3, 300, 0.8, 1.0), wall_seconds=None)
    no_time = replace(comparison, rows=[comparison.rows[0], untimed])
    assert_png(plots.accuracy_vs_time_plot(no_time, tmp_path / "no_time.png"))


def test_learning_curve_plot(tmp_path: Path) -> None:
    assert_png(plots.learning_curve_plot(sample_curve(), tmp_path / "curve.png"))


def _drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plots save from now on (their axes to inspect), the files still written."""
    figures: list[Any] = []
    save = plots._save

    def keep(fig: Any, path: Path) -> Path:
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_accuracy_axes_fit_the_points_and_their_intervals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accuracies near 0.77 get an axis around them (not 0 to 1), wide enough for every interval;
    a time axis spans the times drawn."""
    figures = _drawn(monkeypatch)
    comparison = three_runs(sample_comparison())
    rows = [replace(r, accuracy=a, interval=Interval(a - 0.03, a + 0.02))
            for r, a in zip(comparison.rows, (0.765, 0.772, 0.78), strict=True)]  # fmt: skip
    comparison = replace(comparison, rows=rows)
    plots.accuracy_vs_images_plot(comparison, tmp_path / "images.png")
    plots.accuracy_vs_time_plot(comparison, tmp_path / "time.png")
    for fig, xs in zip(figures, ([87, 197, 300], [12.5, 21.0, 30.0]), strict=True):
        (ax,) = fig.axes
        low, high = ax.get_ylim()
        assert low <= min(r.interval.low for r in rows) and high >= max(
            r.interval.high for r in rows
        )
        assert high - low < 0.2, (low, high)
        left, right = ax.get_xlim()
        assert left < min(xs) and right > max(xs) and right - left < 2 * (max(xs) - min(xs))
    # The learning curve and the history's accuracy: fitted too, never past 0 or 1.
    plots.learning_curve_plot(sample_curve(), tmp_path / "curve.png")
    low, high = figures[-1].axes[0].get_ylim()
    assert 0.5 < low < 0.6 and 0.8 < high <= 1.02
    plots.history_plot(HISTORY, tmp_path / "history.png")
    low, high = figures[-1].axes[1].get_ylim()
    assert 0.4 < low < 0.5 and 0.85 < high <= 1.02


def test_what_each_plot_would_hold() -> None:
    """The reports draw no plot of fewer than MIN_POINTS points: these count them."""
    assert plots.MIN_POINTS == 3
    comparison = sample_comparison()
    assert plots.comparison_points(comparison, "images") == 2
    assert plots.comparison_points(three_runs(comparison), "time") == 3
    # Two runs on as many images are one place on the images axis.
    same = replace(comparison, rows=[*comparison.rows, _row(5, 3, 197, 0.83, 30.0)])
    assert plots.comparison_points(same, "images") == 2
    assert plots.comparison_points(same, "time") == 3
    untimed = replace(comparison.rows[0], wall_seconds=None)
    assert plots.comparison_points(replace(comparison, rows=[untimed]), "time") == 0
    assert plots.curve_points(sample_curve()) == 3
    assert plots.history_points(HISTORY) == 3
    assert plots.history_points(HISTORY[:2]) == 2
    assert plots.history_points([]) == 0
