"""Wilson and bootstrap intervals, McNemar's exact test and the curve's subsets and verdict,
checked by hand."""

from __future__ import annotations

import math

import pytest

from annotate2model.judging.curve import (
    gain_interval,
    judge_curve,
    nested_subsets,
    parse_fractions,
)
from annotate2model.judging.records import CurveSummary, Interval
from annotate2model.judging.stats import (
    accuracy_interval,
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
    # A bootstrap collapses on a perfect score: why accuracies take Wilson's interval instead.
    everything = bootstrap_interval([True] * 50)
    assert (everything.low, everything.high) == (1.0, 1.0)
    # Seeded: the same answers give the same interval.
    answers = [i % 3 != 0 for i in range(90)]
    assert bootstrap_interval(answers) == bootstrap_interval(answers)
    wide, narrow = bootstrap_interval(answers[:30]), bootstrap_interval(answers * 10)
    assert wide.high - wide.low > narrow.high - narrow.low
    assert narrow.low < 60 / 90 < narrow.high
    assert math.isnan(bootstrap_interval([]).low)


def _wilson(hits: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's score interval, written out (Wilson 1927)."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_accuracy_interval_is_wilsons_and_never_a_point() -> None:
    perfect = accuracy_interval([True] * 10)
    assert (perfect.low, perfect.high) != (1.0, 1.0)
    # 10 of 10: [10 / (10 + z^2), 1] = [0.7225, 1.0]; a true accuracy of 0.8 or 0.95 is inside.
    assert perfect.low == pytest.approx(10 / (10 + 1.959963984540054**2))
    assert perfect.low == pytest.approx(0.7225, abs=1e-4)
    assert perfect.high == pytest.approx(1.0)
    assert perfect.low < 0.8 < 0.95 < perfect.high and perfect.level == 0.95
    nothing = accuracy_interval([False] * 10)
    assert nothing.low == pytest.approx(0.0) and nothing.high == pytest.approx(1 - perfect.low)
    for hits, n in ((3, 4), (17, 27), (120, 150)):
        got = accuracy_interval([i < hits for i in range(n)])
        assert (got.low, got.high) == pytest.approx(_wilson(hits, n))
        assert got.low < hits / n < got.high
    assert accuracy_interval([True] * 30, level=0.99).low < accuracy_interval([True] * 30).low
    assert math.isnan(accuracy_interval([]).low)


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


def _point(n: int, mean: float, std: float = 0.0) -> CurveSummary:
    return CurveSummary(fraction=0, train_images=n, mean=mean, std=std, low=mean, high=mean)


def test_curve_rises_only_beyond_its_spread() -> None:
    sure = Interval(0.05, 0.15)
    rising, more = judge_curve([_point(100, 0.70, 0.01), _point(200, 0.80, 0.02)], sure)
    assert rising.startswith("The curve is still rising")
    # 10 points per doubling: one more point takes 2^(1/10) x 200 - 200 = 14 images.
    assert more == 14 and "roughly 14 more labeled images" in rising
    # The same means, but the repeats spread more than the gain: no rise, no figure.
    for spread in (0.11, 0.15):
        words, more = judge_curve([_point(100, 0.70, spread), _point(200, 0.80, 0.01)], sure)
        assert words.startswith("Cannot tell yet") and more is None
        assert "more labeled images" not in words
    # Repeats agree, but the gain's interval over the judged images reaches zero: the same.
    words, more = judge_curve(
        [_point(100, 0.70, 0.01), _point(200, 0.80, 0.01)], Interval(-0.02, 0.2)
    )
    assert words.startswith("Cannot tell yet") and more is None
    assert "interval -2.0 to +20.0" in words
    # The case: a gain smaller than one test image of 27, one repeat.
    words, more = judge_curve([_point(61, 0.741), _point(122, 0.760)], Interval(-0.074, 0.111))
    assert words.startswith("Cannot tell yet") and more is None
    # No spread measured at all (one repeat, no bootstrap): nothing to judge the gain against.
    words, more = judge_curve([_point(100, 0.70), _point(200, 0.80)])
    assert words.startswith("Cannot tell yet") and more is None


def test_curve_flattens_and_tops_out_only_on_evidence() -> None:
    # A sure gain under one point per doubling: flattening, with a (large) figure.
    slow, more = judge_curve([_point(100, 0.800), _point(200, 0.806)], Interval(0.002, 0.009))
    assert slow.startswith("The curve is flattening") and more is not None and more > 200
    # Even the top of the gain's interval is under a point per doubling: flattened, no figure.
    flat, more = judge_curve(
        [_point(100, 0.800, 0.001), _point(200, 0.802, 0.001)], Interval(-0.004, 0.006)
    )
    assert flat.startswith("The curve has flattened") and more is None
    # A drop inside a wide interval says nothing either way.
    unsure, more = judge_curve([_point(100, 0.8), _point(200, 0.79)], Interval(-0.08, 0.06))
    assert unsure.startswith("Cannot tell yet") and more is None
    top, more = judge_curve([_point(100, 0.98), _point(200, 0.995)], Interval(-0.01, 0.04))
    assert "already 99.5%" in top and more is None
    one, more = judge_curve([_point(100, 0.8)])
    assert "one point only" in one and more is None


def test_gain_interval_pairs_the_images() -> None:
    # Two repeats per point on 4 images; the gain per image is the mean of the repeats' change.
    before = [[True, False, False, True], [True, False, True, True]]
    after = [[True, True, False, True], [True, True, True, True]]
    gain = gain_interval(before, after)
    # Per image, the share of repeats right goes [1, 0, 1/2, 1] -> [1, 1, 1/2, 1]: only the
    # second image gains (by 1). A resample holds it k ~ Binomial(4, 1/4) times, gain k/4;
    # P(k = 0) = 32%, P(k <= 2) = 94.9% and P(k <= 3) = 99.6%: the interval is [0, 0.75].
    assert (gain.low, gain.high) == (0.0, 0.75)
    same = gain_interval(before, before)
    assert (same.low, same.high) == (0.0, 0.0)


def test_fractions_are_checked() -> None:
    assert parse_fractions("1.0, 0.5,0.25") == [0.25, 0.5, 1.0]
    from annotate2model.errors import InputError

    for bad in ("0", "1.5", "a,b", ""):
        with pytest.raises(InputError):
            parse_fractions(bad)
