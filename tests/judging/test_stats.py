"""Bootstrap intervals, McNemar's exact test and the curve's subsets, checked by hand."""

from __future__ import annotations

import math

import pytest

from annotate2model.judging.curve import judge_curve, nested_subsets, parse_fractions
from annotate2model.judging.records import CurveSummary
from annotate2model.judging.stats import (
    bootstrap_interval,
    macro_f1,
    mcnemar_p,
    pair_sentence,
    per_class_accuracy,
)
from annotate2model.store.records import VersionItemRecord


def test_mcnemar_exact_matches_the_binomial_by_hand() -> None:
    # 5 fixed, 1 broken: n = 6 discordant pairs; P(X <= 1) = (C(6,0) + C(6,1)) / 2^6 = 7/64.
    assert mcnemar_p(5, 1) == pytest.approx(2 * 7 / 64)
    assert mcnemar_p(1, 5) == mcnemar_p(5, 1)
    # 10 fixed, 0 broken: 2 / 2^10.
    assert mcnemar_p(10, 0) == pytest.approx(2 / 1024)
    # Balanced discordance is no evidence at all; no discordance either.
    assert mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(0, 0) == 1.0
    # 12 fixed, 3 broken: sum_{i<=3} C(15, i) = 1 + 15 + 105 + 455 = 576; p = 2 * 576 / 32768.
    assert mcnemar_p(12, 3) == pytest.approx(2 * 576 / 32768)


def test_bootstrap_interval_by_hand() -> None:
    # Three of four right: a resampled accuracy is k/4 with k ~ Binomial(4, 3/4), so
    # P(0) = 0.4%, P(<=1) = 5.1%: the 2.5% quantile is 0.25; P(<=3) = 68%: the 97.5% one is 1.
    interval = bootstrap_interval([True, True, True, False], resamples=20_000)
    assert (interval.low, interval.high) == (0.25, 1.0)
    assert interval.level == 0.95
    everything = bootstrap_interval([True] * 50)
    assert (everything.low, everything.high) == (1.0, 1.0)
    # Seeded: the same answers give the same interval.
    answers = [i % 3 != 0 for i in range(90)]
    assert bootstrap_interval(answers) == bootstrap_interval(answers)
    wide, narrow = bootstrap_interval(answers[:30]), bootstrap_interval(answers * 10)
    assert wide.high - wide.low > narrow.high - narrow.low
    assert narrow.low < 60 / 90 < narrow.high
    assert math.isnan(bootstrap_interval([]).low)


def test_pair_sentence_in_words() -> None:
    better = pair_sentence("run 3 (v3)", "run 4 (v4)", 12, 3, 40, mcnemar_p(12, 3))
    assert better.startswith("run 4 (v4) is better than run 3 (v3) on 40 common test images")
    assert "12 images fixed, 3 broken, p = 0.04" in better
    worse = pair_sentence("run 3 (v3)", "run 4 (v4)", 0, 9, 40, mcnemar_p(0, 9))
    assert worse.startswith("run 3 (v3) is better than run 4 (v4)")
    none = pair_sentence("run 3 (v3)", "run 4 (v4)", 2, 1, 40, mcnemar_p(2, 1))
    assert none.startswith("no evidence of a difference between run 3 (v3) and run 4 (v4) on 40")


def test_macro_f1_and_per_class_accuracy_by_hand() -> None:
    truth = ["a", "a", "a", "b"]
    predicted = ["a", "a", "b", "b"]
    # a: tp 2, fp 0, fn 1 -> 4/5; b: tp 1, fp 1, fn 0 -> 2/3.
    assert macro_f1(truth, predicted) == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert per_class_accuracy(truth, predicted) == {"a": pytest.approx(2 / 3), "b": 1.0}


def _items(counts: dict[str, int]) -> list[VersionItemRecord]:
    return [
        VersionItemRecord(f"{label}{i:04d}".ljust(64, "0"), label, "train")
        for label, n in counts.items()
        for i in range(n)
    ]


def test_curve_subsets_are_nested_stratified_and_stable() -> None:
    items = _items({"cat": 40, "dog": 20, "owl": 3})
    fractions = [0.1, 0.25, 0.5, 1.0]
    subsets = nested_subsets(items, fractions, repeat=0)
    assert subsets == nested_subsets(list(reversed(items)), fractions, repeat=0)
    previous: set[str] = set()
    for fraction in fractions:
        chosen = subsets[fraction]
        shas = {i.image_sha256 for i in chosen}
        assert previous <= shas  # nested
        previous = shas
        per_class = {c: sum(1 for i in chosen if i.label == c) for c in ("cat", "dog", "owl")}
        expected = {
            c: max(1, round(fraction * n)) for c, n in {"cat": 40, "dog": 20, "owl": 3}.items()
        }
        assert per_class == expected  # stratified, every class kept
    assert subsets[1.0] == sorted(items, key=lambda i: i.image_sha256)
    other = nested_subsets(items, fractions, repeat=1)
    assert other[0.25] != subsets[0.25]  # another repeat, another subset
    assert len(other[0.25]) == len(subsets[0.25])


def test_curve_verdict() -> None:
    def point(n: int, mean: float) -> CurveSummary:
        return CurveSummary(fraction=0, train_images=n, mean=mean, std=0.01, low=mean, high=mean)

    rising, more = judge_curve([point(100, 0.70), point(200, 0.80)])
    assert rising.startswith("The curve is still rising")
    # 10 points per doubling: one more point takes 2^(1/10) x 200 - 200 = 14 images.
    assert more == 14
    flat, more = judge_curve([point(100, 0.800), point(200, 0.802)])
    assert flat.startswith("The curve has flattened")
    assert more is not None and more > 200
    stuck, more = judge_curve([point(100, 0.8), point(200, 0.79)])
    assert "may not help" in stuck and more is None


def test_fractions_are_checked() -> None:
    assert parse_fractions("1.0, 0.5,0.25") == [0.25, 0.5, 1.0]
    from annotate2model.errors import InputError

    for bad in ("0", "1.5", "a,b", ""):
        with pytest.raises(InputError):
            parse_fractions(bad)
