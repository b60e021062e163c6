"""What compare and curve hand to the CLI, the plots and the report: plain, typed, JSON-able."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Interval:
    """A confidence interval (95% unless `level` says otherwise): Wilson's for an accuracy, a
    bootstrap's for a learning curve's gain."""

    low: float
    high: float
    level: float = 0.95


@dataclass(frozen=True)
class CompareRow:
    """One run in a comparison: its version's make-up, its configuration, and its scores on the
    judged images (the comparison's set, not its own version's test split)."""

    run: int
    version: int
    # Images per split of the run's version: {"train": 245, "val": 153, "test": 0}.
    counts: dict[str, int]
    # Training images per class of the run's version.
    balance: dict[str, int]
    backbone: str
    mode: str
    weights: str
    # The run's own validation accuracy (its version's val split), from the ledger.
    val_accuracy: float | None
    # On the judged images; the interval is Wilson's.
    accuracy: float
    interval: Interval
    macro_f1: float | None
    # Accuracy (recall) per true class on the common test images.
    per_class: dict[str, float]
    wall_seconds: float | None
    images_per_second: float | None
    device: str | None
    kind: str = "train"


@dataclass(frozen=True)
class ImageChange:
    """An image whose prediction went from wrong to right (fixed) or right to wrong (broken)."""

    image_sha256: str
    name: str
    label: str
    before: str
    after: str


@dataclass(frozen=True)
class PairTest:
    """Two runs on the same images: McNemar's exact test on the images where they disagree."""

    before: int
    after: int
    fixed: int
    broken: int
    p_value: float
    n: int
    # "run 4 (v4) is better than run 3 (v3): 12 images fixed, 3 broken, p = 0.02", or
    # "no evidence of a difference on 40 images (2 fixed, 1 broken, p = 1.00)".
    sentence: str
    # Per-class accuracy change (after - before), classes of the common test images.
    per_class_delta: dict[str, float]
    changes: list[ImageChange] = field(default_factory=list)


@dataclass(frozen=True)
class CommonTestSet:
    """The images every compared run is judged on."""

    # "the images neither run trained on or chose its epoch on (27 images, ...)", or with
    # `shared`, "the test images all 3 versions share (...)", or "version 4's test split (...)".
    description: str
    # The version whose labels are the truth (the newest compared, or the pinned one).
    version: int
    pinned: bool
    images: list[str]
    labels: list[str]
    names: list[str]
    # "test", or "val" where the compared versions have no test split.
    split: str = "test"
    # How the set was chosen: "unseen" (no compared run trained or chose its epoch on an image;
    # the default), "shared" (the test images all compared versions share) or "pinned".
    kind: str = "unseen"


@dataclass(frozen=True)
class Comparison:
    test_set: CommonTestSet
    rows: list[CompareRow]
    pairs: list[PairTest]
    # What differs between the compared runs (test sets, weights, preprocessing, backbones), and
    # small test sets: said out loud.
    warnings: list[str]
    # Run id -> predicted label for each common test image, in test_set.images order.
    predicted: dict[int, list[str]]
    # Run id -> probability of the predicted label, same order.
    confidence: dict[int, list[float]]

    @property
    def name(self) -> str:
        """The folder name of its page and plots: "compare-runs-3-5"."""
        return "compare-runs-" + "-".join(str(r.run) for r in self.rows)


@dataclass(frozen=True)
class CurvePoint:
    fraction: float
    repeat: int
    train_images: int
    accuracy: float
    macro_f1: float | None


@dataclass(frozen=True)
class CurveSummary:
    fraction: float
    train_images: int
    mean: float
    std: float
    low: float
    high: float


@dataclass(frozen=True)
class LearningCurve:
    id: int | None
    version: int
    # Where the accuracies were measured: "version 5's test split (120 images)".
    test_description: str
    test_n: int
    config: dict[str, Any]
    points: list[CurvePoint]
    summary: list[CurveSummary]
    # One line: rising, flattened or "cannot tell yet", from the last step's gain against its
    # spread; only a rise beyond the spread comes with an images-per-point figure.
    verdict: str
    # Estimated extra labeled images for one more point of accuracy (None: no evidence to say).
    images_per_point: int | None
    seconds: float
