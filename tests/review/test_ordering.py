"""review.ordering on small synthetic features: the least sure come first, and the diversity
step spreads the top of the list over the scenes instead of many near-copies of one."""

from __future__ import annotations

import numpy as np
import pytest

from annotate2model.errors import InputError
from annotate2model.review.ordering import label_next_order, uncertainty


def _probs(p_top: list[float]) -> np.ndarray:
    """Two-class rows with the given top probabilities."""
    top = np.asarray(p_top)
    return np.stack([top, 1 - top], axis=1)


def test_margin_and_entropy_rank_the_least_sure_first() -> None:
    probs = np.array(
        [
            [0.98, 0.01, 0.01],  # sure
            [0.50, 0.49, 0.01],  # torn between two
            [0.40, 0.30, 0.30],  # vaguely anything
            [0.70, 0.20, 0.10],
        ]
    )
    margin = uncertainty(probs)
    assert margin.tolist() == pytest.approx([0.03, 0.99, 0.9, 0.5])
    assert label_next_order(probs).tolist() == [1, 2, 3, 0]
    # Entropy puts a fairly sure image (0.7 of one class, the rest spread) before the one torn
    # between two classes: the reason margin is the default.
    assert label_next_order(probs, method="entropy").tolist() == [2, 3, 1, 0]
    # A row that could not be read goes last.
    probs[1] = np.nan
    assert label_next_order(probs).tolist() == [2, 3, 0, 1]
    with pytest.raises(InputError):
        uncertainty(probs, "variance")  # type: ignore[arg-type]


def test_uncertainty_ranks_first_with_features_too() -> None:
    """Images far apart: the least sure image of all comes first, and each block is listed least
    sure first."""
    rng = np.random.default_rng(0)
    features = rng.normal(0, 10, size=(12, 8))
    probs = _probs(list(np.linspace(0.5, 0.99, 12)))
    order = label_next_order(probs, features, block=4).tolist()
    assert order[0] == 0
    assert sorted(order[:4]) == order[:4]


def test_diversity_spreads_the_top_over_the_scenes() -> None:
    """Ten near-copies of one scene are the least sure; four other scenes are a little surer.
    Uncertainty alone puts ten copies on top; the default order takes one copy per block and
    fills the block with the other scenes, most uncertain first."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 5, size=(5, 16))
    scene = np.array([0] * 10 + [1, 2, 3, 4] * 5)
    features = centres[scene] + rng.normal(0, 0.05, size=(len(scene), 16))
    top = np.where(scene == 0, 0.52, 0.6) + rng.uniform(0, 0.02, len(scene))
    probs = _probs(list(top))
    alone = label_next_order(probs)
    assert set(scene[alone[:10]].tolist()) == {0}
    order = label_next_order(probs, features, block=5, seed=0)
    assert sorted(order.tolist()) == list(range(len(scene)))
    first = scene[order[:5]]
    assert sorted(first.tolist()) == [0, 1, 2, 3, 4]
    assert first[0] == 0  # the block is listed most uncertain first
    assert sorted(scene[order[5:10]].tolist()) == [0, 1, 2, 3, 4]
    # Deterministic.
    assert label_next_order(probs, features, block=5, seed=0).tolist() == order.tolist()


def test_features_must_match_the_rows() -> None:
    with pytest.raises(InputError):
        label_next_order(_probs([0.6, 0.7]), np.zeros((3, 4)), block=2)
