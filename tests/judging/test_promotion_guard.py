"""The promotion guard of `a2m serve --auto-train` (autotrain.judge_promotion) on comparisons
built from answers, with the statistics `a2m compare` uses: no evidence of a difference is served;
more broken than fixed with McNemar's p < 0.05 is not; an accuracy below the served run's Wilson
interval is not, even where McNemar's test alone cannot tell; which run of the pair is the new one
does not depend on the order the comparison lists them in. The whole loop against a real Label
Studio is tests/serve/test_auto_train.py."""

from __future__ import annotations

from annotate2model.autotrain import judge_promotion
from annotate2model.judging import stats
from annotate2model.judging.records import CommonTestSet, CompareRow, Comparison, PairTest


def _row(run: int, correct: list[bool]) -> CompareRow:
    return CompareRow(
        run=run,
        version=run,
        counts={},
        balance={},
        backbone="resnet18",
        mode="probe",
        weights="imagenet",
        val_accuracy=None,
        accuracy=sum(correct) / len(correct),
        interval=stats.accuracy_interval(correct),
        macro_f1=None,
        per_class={},
        wall_seconds=None,
        images_per_second=None,
        device=None,
    )


def _comparison(served: list[bool], new: list[bool], new_first: bool = False) -> Comparison:
    fixed = sum(1 for a, b in zip(served, new, strict=True) if b and not a)
    broken = sum(1 for a, b in zip(served, new, strict=True) if a and not b)
    n = len(served)
    rows = [_row(1, served), _row(2, new)]
    pair = PairTest(
        before=1,
        after=2,
        fixed=fixed,
        broken=broken,
        p_value=stats.mcnemar_p(fixed, broken),
        n=n,
        sentence="",
        per_class_delta={},
    )
    if new_first:
        rows.reverse()
        pair = PairTest(2, 1, broken, fixed, pair.p_value, n, "", {})
    test_set = CommonTestSet(
        description=f"{n} images",
        version=2,
        pinned=False,
        images=[str(i) for i in range(n)],
        labels=["a"] * n,
        names=[str(i) for i in range(n)],
    )
    return Comparison(test_set, rows, [pair], [], {}, {})


def test_no_evidence_of_a_difference_is_served() -> None:
    served = [True] * 40 + [False] * 10
    new = [True] * 39 + [False] * 10 + [True]  # one broken, one fixed
    verdict = judge_promotion(_comparison(served, new), served=1, new=2)
    assert verdict.promoted, verdict.reason
    assert verdict.reason.startswith("not worse than run 1 on 50 images")
    assert verdict.details["fixed"] == 1 and verdict.details["broken"] == 1


def test_worse_by_mcnemar_is_kept_back_whichever_order() -> None:
    served = [True] * 50
    new = [True] * 38 + [False] * 12  # 12 broken, none fixed: p = 0.0005
    for new_first in (False, True):
        verdict = judge_promotion(_comparison(served, new, new_first), served=1, new=2)
        assert not verdict.promoted
        assert verdict.reason.startswith("worse than run 1")
        assert verdict.details["broken"] == 12 and verdict.details["fixed"] == 0
        assert verdict.details["p_value"] < 0.05


def test_below_the_served_interval_is_kept_back_where_mcnemar_cannot_tell() -> None:
    served = [True] * 60
    new = [True] * 55 + [False] * 5  # 5 broken: p = 0.0625, yet 0.917 < Wilson's low end 0.940
    comparison = _comparison(served, new)
    assert comparison.pairs[0].p_value > 0.05
    verdict = judge_promotion(comparison, served=1, new=2)
    assert not verdict.promoted
    assert "below run 1's 95% interval" in verdict.reason
