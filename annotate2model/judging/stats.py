"""Is a difference real? Accuracy intervals, bootstraps and McNemar's exact test, in words.

An accuracy's interval is scipy's Wilson score interval: unlike a bootstrap over the images, it
never collapses to a point (a perfect score on 10 images is not "[1.0, 1.0]"). No torch here, so
`a2m compare` stays light; scipy and scikit-learn are imported when first used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from annotate2model.judging.records import Interval

# Below this many common test images, intervals are wide and the table says so.
SMALL_TEST_SET = 30


def accuracy_interval(correct: Sequence[bool] | NDArray[Any], level: float = 0.95) -> Interval:
    """Wilson score interval of the accuracy (the share of `correct`) over the judged images.

    Every accuracy interval the tool prints comes from here: 10 right out of 10 gives about
    [0.72, 1.0], not the point a bootstrap would give.
    """
    from scipy.stats import binomtest

    n = len(correct)
    if n == 0:
        return Interval(math.nan, math.nan, level)
    hits = int(np.count_nonzero(np.asarray(correct, dtype=bool)))
    ci = binomtest(hits, n).proportion_ci(confidence_level=level, method="wilson")
    return Interval(float(ci.low), float(ci.high), level)


def bootstrap_interval(
    values: Sequence[float] | NDArray[Any],
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of the mean of `values` (one per judged image) over the
    images, by scipy's `bootstrap`: e.g. per-image differences in accuracy between two points of
    a learning curve.

    Seeded: the same images and values always give the same interval.
    """
    from scipy.stats import bootstrap

    hits = np.asarray(values, dtype=np.float64)
    if hits.shape[0] == 0:
        return Interval(math.nan, math.nan, level)
    ci = bootstrap(
        (hits,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        # At most about 2 million resampled values at once: 2000 x 10,000 images is 160 MB.
        batch=max(1, 2_000_000 // hits.shape[0]),
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return Interval(float(ci.low), float(ci.high), level)


def mcnemar_p(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: scipy's binomial test of the discordant pairs against 1/2.

    `fixed`: images the first run got wrong and the second right; `broken`: the reverse.
    """
    from scipy.stats import binomtest

    if fixed + broken == 0:
        return 1.0
    return float(binomtest(min(fixed, broken), fixed + broken).pvalue)


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def pair_sentence(
    before: str,
    after: str,
    fixed: int,
    broken: int,
    n: int,
    p_value: float,
    alpha: float = 0.05,
    images: str = "common test images",
) -> str:
    """The paired test in words, e.g. "run 4 (v4) is better than run 3 (v3): 12 images fixed,
    3 broken, p = 0.02" or "no evidence of a difference between ... on 40 images ..."."""
    counts = f"{fixed} image{'s' if fixed != 1 else ''} fixed, {broken} broken, {_p_text(p_value)}"
    if p_value < alpha and fixed != broken:
        better, worse = (after, before) if fixed > broken else (before, after)
        return f"{better} is better than {worse} on {n} {images}: {counts}"
    return f"no evidence of a difference between {before} and {after} on {n} {images} ({counts})"


def macro_f1(truth: Sequence[str], predicted: Sequence[str]) -> float | None:
    """Macro-averaged F1 over the classes present in `truth` (a class never predicted counts 0)."""
    from sklearn.metrics import f1_score

    classes = sorted(set(truth))
    if not classes:
        return None
    return float(f1_score(truth, predicted, labels=classes, average="macro", zero_division=0))


def per_class_accuracy(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """Recall of each true class: the share of its images predicted as it."""
    from sklearn.metrics import recall_score

    classes = sorted(set(truth))
    recall = recall_score(truth, predicted, labels=classes, average=None, zero_division=0)
    return {c: float(r) for c, r in zip(classes, recall, strict=True)}
