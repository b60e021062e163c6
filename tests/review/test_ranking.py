"""review.ranking on generated cases: the flipped labels are found, the worst come first."""

from __future__ import annotations

import numpy as np
import pytest

from annotate2model.errors import InputError
from annotate2model.review.ranking import (
    Scored,
    label_issues,
    misclassified,
    out_of_fold_probs,
    ranked,
    uncertain,
)

LABELS = ["ant", "bee", "wasp"]


def _clusters(seed: int, per_class: int = 60, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(len(LABELS), dim))
    y = np.repeat(np.arange(len(LABELS)), per_class)
    x = centres[y] + rng.normal(0, 1, size=(len(y), dim))
    return x.astype(np.float32), y


def test_label_issues_find_every_flipped_label() -> None:
    x, y = _clusters(0)
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(y), 12, replace=False)
    noisy = y.copy()
    for i in flipped:
        noisy[i] = (y[i] + 1 + rng.integers(0, 2)) % len(LABELS)
    shas = [f"{i:064x}" for i in range(len(y))]
    probs = out_of_fold_probs(x, noisy, len(LABELS), folds=5, seed=0)
    assert probs.shape == (len(y), len(LABELS))
    assert np.allclose(probs.sum(axis=1), 1.0)
    doubts = label_issues(shas, [LABELS[i] for i in noisy], probs, LABELS)
    found = {int(d.image_sha256, 16) for d in doubts}
    # Every flag is a flipped label; cleanlab's count of likely errors is conservative by one or
    # two on a set this small, so at least 11 of the 12 flips come back.
    assert found <= set(flipped.tolist())
    assert len(found) >= 11
    for d in doubts:
        i = int(d.image_sha256, 16)
        assert d.reason == "label-issue"
        assert d.current_label == LABELS[noisy[i]]
        assert d.suggested_label == LABELS[y[i]]  # the true class comes back as the suggestion
        assert 0.5 < d.score <= 1.0
    assert [d.score for d in doubts] == sorted((d.score for d in doubts), reverse=True)
    # Only eligible images (say, the training split) may be flagged.
    some = {d.image_sha256 for d in doubts[:5]}
    given = [LABELS[i] for i in noisy]
    only = label_issues(shas, given, probs, LABELS, eligible=some)
    assert {d.image_sha256 for d in only} == some


def test_a_clear_flip_is_ranked_first() -> None:
    # One wasp, deep in its own cluster, labeled ant; three bees moved halfway to the wasps and
    # labeled wasp, doubtful but not clearly wrong.
    x, y = _clusters(7)
    noisy = y.copy()
    wasps = np.flatnonzero(y == 2)
    clear = int(wasps[np.argmin(np.linalg.norm(x[wasps] - x[wasps].mean(0), axis=1))])
    noisy[clear] = 0
    for i in np.flatnonzero(y == 1)[:3]:
        x[i] = (x[i] + x[wasps].mean(0)) / 2
        noisy[i] = 2
    shas = [f"{i:064x}" for i in range(len(y))]
    probs = out_of_fold_probs(x, noisy, len(LABELS))
    doubts = label_issues(shas, [LABELS[i] for i in noisy], probs, LABELS)
    assert doubts[0].image_sha256 == shas[clear]
    assert (doubts[0].current_label, doubts[0].suggested_label) == ("ant", "wasp")
    doubt = 1 - probs[np.arange(len(noisy)), noisy]
    assert np.argsort(-doubt)[0] == clear and np.sort(doubt)[-2] < doubt[clear]


def test_the_same_seed_gives_the_same_ranking() -> None:
    x, y = _clusters(8)
    noisy = y.copy()
    noisy[::15] = (noisy[::15] + 1) % len(LABELS)
    shas = [f"{i:064x}" for i in range(len(y))]
    given = [LABELS[i] for i in noisy]
    runs = [out_of_fold_probs(x, noisy, len(LABELS), seed=4) for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])
    assert label_issues(shas, given, runs[0], LABELS) == label_issues(shas, given, runs[1], LABELS)


def test_clean_labels_give_no_issue() -> None:
    x, y = _clusters(2)
    shas = [f"{i:064x}" for i in range(len(y))]
    probs = out_of_fold_probs(x, y, len(LABELS))
    assert label_issues(shas, [LABELS[i] for i in y], probs, LABELS) == []


def test_a_class_too_small_for_k_folds_still_works_and_one_class_is_refused() -> None:
    x, y = _clusters(3, per_class=10)
    y[:8] = 0
    y[8:10] = 1  # class 1 keeps 2 images: the folds shrink to 2
    probs = out_of_fold_probs(x, y, len(LABELS), folds=5)
    assert probs.shape == (len(y), len(LABELS)) and np.isfinite(probs).all()
    with pytest.raises(InputError, match="two classes"):
        out_of_fold_probs(x, np.zeros(len(y), dtype=np.int64), len(LABELS))


def test_misclassified_keeps_wrong_predictions_worst_first() -> None:
    rows = [
        Scored("a" * 64, "ant", [0.9, 0.05, 0.05]),  # right
        Scored("b" * 64, "ant", [0.4, 0.6, 0.0]),  # wrong, mildly
        Scored("c" * 64, "bee", [0.02, 0.03, 0.95]),  # wrong, confidently
        Scored("d" * 64, "moth", [0.1, 0.1, 0.8]),  # a label the run never learned: no judgement
    ]
    doubts = misclassified(rows, LABELS)
    assert [(d.image_sha256[0], d.suggested_label) for d in doubts] == [("c", "wasp"), ("b", "bee")]
    assert doubts[0].score == pytest.approx(0.97)
    assert doubts[1].current_label == "ant" and doubts[1].score == pytest.approx(0.6)


def test_uncertain_puts_the_closest_call_first() -> None:
    rows = [
        Scored("a" * 64, None, [0.98, 0.01, 0.01]),
        Scored("b" * 64, None, [0.34, 0.33, 0.33]),
        Scored("c" * 64, None, [0.6, 0.4, 0.0]),
        Scored("d" * 64, None, [float("nan")] * 3),  # unreadable image: left out
    ]
    doubts = uncertain(rows, LABELS)
    assert [d.image_sha256[0] for d in doubts] == ["b", "c", "a"]
    assert doubts[0].suggested_label == "ant" and doubts[0].current_label is None
    assert all(0.0 <= d.score <= 1.0 for d in doubts)


def test_ranked_cuts_by_score_and_count() -> None:
    rows = [Scored(f"{i:064x}", None, [0.5 + i / 20, 0.5 - i / 20]) for i in range(10)]
    doubts = uncertain(rows, ["x", "y"])
    assert len(ranked(doubts, max_count=3)) == 3
    assert all(d.score >= 0.5 for d in ranked(doubts, min_score=0.5))
    assert ranked(doubts, max_count=3) == doubts[:3]


def test_neighbours_whose_own_labels_are_doubtful_hardly_vote() -> None:
    # Five ants labeled bee: each is among the others' neighbours. Plain votes would give each
    # of them 4 bee votes in 30 (0.13); weighted by how well each voter's label fits its own
    # neighbourhood, the flipped voters count for little and "bee" stays improbable.
    x, y = _clusters(5)
    noisy = y.copy()
    ants = np.flatnonzero(y == 0)[:5]
    noisy[ants] = 1
    probs = out_of_fold_probs(x, noisy, len(LABELS), method="knn")
    assert (probs[ants, 1] < 0.05).all() and (probs[ants, 0] > 0.9).all()
    # An image's own label never votes for itself (leave-one-out): a lone flip gets the
    # smoothing share only.
    lone = y.copy()
    lone[0] = 1
    probs = out_of_fold_probs(x, lone, len(LABELS), method="knn")
    assert probs[0, 1] < 0.01


def test_the_default_is_the_geometric_mean_of_neighbours_and_lda() -> None:
    x, y = _clusters(6)
    noisy = y.copy()
    noisy[:4] = 2
    knn = out_of_fold_probs(x, noisy, len(LABELS), method="knn")
    lda = out_of_fold_probs(x, noisy, len(LABELS), method="lda")
    both = out_of_fold_probs(x, noisy, len(LABELS))
    mean = np.sqrt(np.clip(knn, 1e-12, None) * np.clip(lda, 1e-12, None))
    assert np.allclose(both, mean / mean.sum(axis=1, keepdims=True))
    assert not np.allclose(knn, lda, atol=0.01)


def test_no_label_votes_for_itself_even_with_few_images_and_many_features() -> None:
    # Random features, random labels: an honest out-of-fold guess is a coin toss. (A metric
    # fitted on the labels, such as a within-class whitening, guessed 99% of these right.)
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(5):
        x = np.abs(rng.normal(size=(40, 512)))
        y = np.array([0, 1] * 20)
        rng.shuffle(y)
        hits.append((out_of_fold_probs(x, y, 2, method="knn").argmax(1) == y).mean())
    assert float(np.mean(hits)) < 0.7
