"""Label policies: which label a task gets from its annotations. Pure: no I/O, no SDK.

- latest: the most recently updated answer.
- majority: the most frequent label; a tie goes to the most recently updated of the tied labels.
- ground-truth: the most recently updated answer flagged ground truth, else the latest.

Every policy first drops cancelled (skipped) answers and answers without exactly one choice. "Most
recently updated" orders by the answer's update time, then by its id (a later id wins a tie).
Label Studio flags every annotation imported inline (POST .../import with "annotations") as
ground truth unless the import says `"ground_truth": false`, so under ground-truth such an import
beats later answers from annotators; `a2m collect` imports folder labels with the flag off.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Policy = Literal["latest", "majority", "ground-truth"]
POLICIES: tuple[Policy, ...] = ("latest", "majority", "ground-truth")


@dataclass(frozen=True)
class Answer:
    """One annotation as a policy sees it."""

    annotation_id: int
    # The chosen label; None when the answer chose nothing (or several, see `problem`).
    label: str | None
    # When it was last updated, as an ISO 8601 string from one server (they sort as text).
    updated_at: str
    was_cancelled: bool = False
    ground_truth: bool = False
    # Why the answer cannot be read as one label (several choices), if that is the case.
    problem: str | None = None


@dataclass(frozen=True)
class Resolution:
    """A task's label, or the reason it has none (None and None: simply not labeled yet)."""

    label: str | None = None
    problem: str | None = None


def latest(usable: Sequence[Answer]) -> str:
    """The label of the most recently updated answer (`usable` is not empty)."""
    return _latest_first(usable)[0].label or ""


def majority(usable: Sequence[Answer]) -> str:
    """The most frequent label; a tie goes to the most recently updated of the tied labels."""
    counts = Counter(a.label for a in usable)
    top = max(counts.values())
    tied = {label for label, n in counts.items() if n == top}
    return next(a.label for a in _latest_first(usable) if a.label in tied) or ""


def ground_truth(usable: Sequence[Answer]) -> str:
    """The latest answer flagged ground truth; without any, the latest answer."""
    ordered = _latest_first(usable)
    truth = [a for a in ordered if a.ground_truth]
    return (truth or ordered)[0].label or ""


PICKERS: dict[str, Callable[[Sequence[Answer]], str]] = {
    "latest": latest,
    "majority": majority,
    "ground-truth": ground_truth,
}


def resolve_label(
    answers: Iterable[Answer], policy: Policy, labels: Collection[str], control: str = "label"
) -> Resolution:
    """The task's label under `policy`, checked against the config's `labels`.

    No answers: not labeled. Only cancelled answers: a problem ("skipped"). Answers that chose
    several labels and nothing usable besides: a problem. A label the config does not list: a
    problem naming the `control`.
    """
    if policy not in PICKERS:
        raise ValueError(f"unknown label policy {policy!r}")
    items = list(answers)
    if not items:
        return Resolution()
    usable = [a for a in items if not a.was_cancelled and a.label is not None]
    if not usable:
        if all(a.was_cancelled for a in items):
            return Resolution(problem="skipped: every annotation was cancelled")
        unreadable = [a for a in items if not a.was_cancelled and a.problem]
        if unreadable:
            first = min(unreadable, key=lambda a: a.annotation_id)
            return Resolution(
                problem=f"ambiguous: annotation {first.annotation_id} has {first.problem}"
            )
        return Resolution()
    label = PICKERS[policy](usable)
    if label not in labels:
        return Resolution(problem=f"label outside config: {label!r} is not a choice of {control!r}")
    return Resolution(label=label)


def _latest_first(answers: Iterable[Answer]) -> list[Answer]:
    return sorted(answers, key=lambda a: (a.updated_at, a.annotation_id), reverse=True)
