"""review.ordering on small synthetic features: the least sure come first, the diversity step
spreads the top of the list over the scenes instead of many near-copies of one, and while the
probe is unsure of itself the list starts with the most typical image of each cluster."""

from __future__ import annotations

import numpy as np
import pytest

from annotate2model.errors import InputError
from annotate2model.review.ordering import TRUST, confidence, label_next_order, uncertainty


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
    """Images far apart, a probe trusted (trust 0): the least sure image of all comes first, and
    each block is listed least sure first."""
    rng = np.random.default_rng(0)
    features = rng.normal(0, 10, size=(12, 8))
    probs = _probs(list(np.linspace(0.5, 0.99, 12)))
    order = label_next_order(probs, features, block=4, trust=0.0).tolist()
    assert order[0] == 0
    assert sorted(order[:4]) == order[:4]


def test_diversity_spreads_the_top_over_the_scenes() -> None:
    """Ten near-copies of one scene are the least sure; four other scenes are a little surer.
    Uncertainty alone puts ten copies on top; with the probe trusted (trust 0), the order takes
    one copy per block and fills the block with the other scenes, most uncertain first."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 5, size=(5, 16))
    scene = np.array([0] * 10 + [1, 2, 3, 4] * 5)
    features = centres[scene] + rng.normal(0, 0.05, size=(len(scene), 16))
    top = np.where(scene == 0, 0.52, 0.6) + rng.uniform(0, 0.02, len(scene))
    probs = _probs(list(top))
    alone = label_next_order(probs)
    assert set(scene[alone[:10]].tolist()) == {0}
    order = label_next_order(probs, features, block=5, seed=0, trust=0.0)
    assert sorted(order.tolist()) == list(range(len(scene)))
    first = scene[order[:5]]
    assert sorted(first.tolist()) == [0, 1, 2, 3, 4]
    assert first[0] == 0  # the block is listed most uncertain first
    assert sorted(scene[order[5:10]].tolist()) == [0, 1, 2, 3, 4]
    # Deterministic.
    again = label_next_order(probs, features, block=5, seed=0, trust=0.0)
    assert again.tolist() == order.tolist()


def test_features_must_match_the_rows() -> None:
    with pytest.raises(InputError):
        label_next_order(_probs([0.6, 0.7]), np.zeros((3, 4)), block=2)


def test_confidence_is_the_mean_top_probability_above_chance() -> None:
    assert confidence(_probs([1.0, 1.0])) == pytest.approx(1.0)
    assert confidence(_probs([0.5, 0.5])) == pytest.approx(0.0)
    assert confidence(_probs([0.75, 0.95])) == pytest.approx(0.7)
    three = np.array([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [np.nan, 0.5, 0.5]])
    assert confidence(three) == pytest.approx(0.5)  # the unreadable row is left out
    assert confidence(np.full((2, 2), np.nan)) == 0.0


def _clusters() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four scenes of 12, 9, 7 and 5 images, far apart: in each a tight core of four near-copies
    and the rest scattered around it. Returns features, each image's scene, and whether it is
    in a core."""
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 10, size=(4, 16))
    sizes = [12, 9, 7, 5]
    scene = np.repeat(np.arange(4), sizes)
    core = np.concatenate([np.arange(n) < 4 for n in sizes])
    noise = np.where(core, 0.01, 1.5)[:, None] * rng.normal(size=(len(scene), 16))
    return centres[scene] + noise, scene, core


def test_an_unsure_probe_starts_with_the_most_typical_image_of_each_cluster() -> None:
    """The scattered images are the least sure, so uncertainty would take them first. A probe
    that is unsure of itself (confidence below TRUST) is not trusted: the first block is one
    image of each scene, from its core, the largest scene first; deterministic for a seed."""
    features, scene, core = _clusters()
    top = np.where(core, 0.8, 0.55) + np.linspace(0, 0.01, len(scene))
    probs = _probs(list(top))
    assert confidence(probs) < TRUST
    alone = label_next_order(probs)
    assert not core[alone[:4]].any()
    order = label_next_order(probs, features, block=4, seed=0)
    assert sorted(order.tolist()) == list(range(len(scene)))
    assert scene[order[:4]].tolist() == [0, 1, 2, 3]
    assert core[order[:4]].all()
    # Later blocks spread over the scenes too.
    assert sorted(scene[order[4:8]].tolist()) == [0, 1, 2, 3]
    assert label_next_order(probs, features, block=4, seed=0).tolist() == order.tolist()
    # Trusted (the same images, a probe sure of all but the scattered ones), the order goes back
    # to uncertainty with diversity: the least sure first, one per scene.
    sure = _probs(list(np.where(core, 0.999, 0.8) + np.linspace(0, 0.001, len(scene))))
    assert confidence(sure) >= TRUST
    trusted = label_next_order(sure, features, block=4, seed=0)
    assert trusted[0] == label_next_order(sure)[0]
    assert not core[trusted[:4]].any()
    assert sorted(scene[trusted[:4]].tolist()) == [0, 1, 2, 3]
