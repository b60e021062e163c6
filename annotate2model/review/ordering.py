"""Which unlabeled image to label next: an order by how much a label would teach the model.

Pure: probabilities and features in, an order (indices) out; no store, no HTTP, no torch.

Two parts:

- uncertainty of the run's prediction, by default 1 - margin (top-1 minus top-2 probability),
  the same score as `a2m flag`'s uncertain flags. Margin rather than entropy: entropy counts the
  probability spread over classes the image is plainly not, so with many classes it prefers
  images that are vaguely anything over images torn between two labels, and the label that
  settles a confusion between two classes is the one that moves the decision boundary. With two
  classes both give the same order. Entropy (normalised by log k) is kept as a choice.
- diversity, so that the top of the list is not many near-copies of one scene: the list is built
  block by block. For each block of `block` images, the `pool` x `block` most uncertain images
  not yet placed are clustered (scikit-learn's k-means, `block` clusters, each image weighted by
  its uncertainty) on their features, centred and scaled to unit length; from each cluster its
  least sure image is taken, and the block is listed least sure first (so the least sure image
  of all always comes first). Cluster-then-pick after weighted k-means batch selection (Zhdanov
  2019, "Diverse mini-batch active learning", which takes the image nearest each centre): the
  uncertain images are where labels help, and the clusters keep one look-alike group from
  taking the whole block. Beyond `diverse` images the rest follows uncertainty alone.

  Nearest-centre against least-sure-of-cluster (bench/active.py, 5 seeds, labels to stay within
  a point of the probe on every label / to first come within it, medians): scenes_1200 90 / 90
  against 135 / 90, hymenoptera_data 204 / 108 against 192 / 72 (random order: 315 / 135 and
  228 / 96). The least sure of each cluster is kept: better on the harder set, and the order
  keeps uncertainty's first place.

bench/active.py measures what each part is worth (labels needed to come within one point of a
probe trained on every label).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from annotate2model.errors import InputError

Uncertainty = Literal["margin", "entropy"]
UNCERTAINTIES: tuple[str, ...] = ("margin", "entropy")
# Images per diversity block: about what one person labels before a model is retrained.
BLOCK = 20
# Candidates clustered per block: the `POOL` x block most uncertain images left. On scenes_1200
# (bench/active.py, nearest-centre picks) 5 and 10 needed 135 labels (median of 5 seeds) to stay
# within a point of the probe on all 900, 30 (there: every unlabeled image) 90; random order 315.
POOL = 30
# Images ordered with the diversity step; the rest by uncertainty alone (a list that long is not
# worked through before the next training re-orders it).
DIVERSE = 1000


def uncertainty(probs: ArrayLike, method: Uncertainty = "margin") -> NDArray[np.float64]:
    """Per row of (images, classes) probabilities, in [0, 1], higher meaning less sure:
    1 - (top-1 - top-2) for "margin", the entropy over log(classes) for "entropy". A row that is
    not finite (an image that could not be read) gets -1: it goes last."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise InputError("give one row of class probabilities per image.")
    n, k = p.shape
    out = np.full(n, -1.0)
    good = np.isfinite(p).all(axis=1)
    if k == 0 or not good.any():
        return out
    q = p[good]
    if method == "margin":
        top = -np.sort(-q, axis=1)
        second = top[:, 1] if k > 1 else 0.0
        score = 1.0 - (top[:, 0] - second)
    elif method == "entropy":
        from scipy.stats import entropy

        score = entropy(np.clip(q, 0.0, None), axis=1) / np.log(k) if k > 1 else np.zeros(len(q))
    else:
        raise InputError(f"unknown uncertainty {method!r}; choose from {', '.join(UNCERTAINTIES)}.")
    out[good] = np.clip(score, 0.0, 1.0)
    return out


def by_uncertainty(scores: NDArray[np.float64]) -> NDArray[np.int64]:
    """Indices, most uncertain first; ties by index (a stable order)."""
    return np.argsort(-scores, kind="stable").astype(np.int64)


def label_next_order(
    probs: ArrayLike,
    features: ArrayLike | None = None,
    *,
    method: Uncertainty = "margin",
    block: int = BLOCK,
    pool: int = POOL,
    diverse: int = DIVERSE,
    seed: int = 0,
) -> NDArray[np.int64]:
    """Every image's index, the one to label first first (see the module docstring).

    `features` (images, dim): without them, or with `block` < 2, the order is uncertainty
    alone. Deterministic for a given `seed`."""
    scores = uncertainty(probs, method)
    order = by_uncertainty(scores)
    if features is None or block < 2 or len(order) <= 1:
        return order
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(scores):
        raise InputError("give one feature vector per image.")
    readable = np.isfinite(x).all(axis=1) & (scores >= 0)
    z = _unit_rows(x, readable)
    left = [int(i) for i in order if readable[i]]
    unreadable = [int(i) for i in order if not readable[i]]
    chosen: list[int] = []
    limit = min(diverse, len(left))
    while len(chosen) < limit and len(left) > block:
        size = min(block, limit - len(chosen))
        picked = _diverse_block(z, scores, left[: max(size, pool * size)], size, seed)
        taken = set(picked)
        chosen += sorted(picked, key=lambda i: (-scores[i], i))
        left = [i for i in left if i not in taken]
    return np.asarray(chosen + left + unreadable, dtype=np.int64)


def _unit_rows(x: NDArray[np.float64], rows: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Features centred (on the readable rows) and scaled to unit length: k-means on them
    clusters by direction (cosine), as the probe's features are compared."""
    from sklearn.preprocessing import normalize

    z = np.zeros_like(x)
    if rows.any():
        centred = x[rows] - x[rows].mean(axis=0)
        z[rows] = normalize(centred)
    return z


def _diverse_block(
    z: NDArray[np.float64],
    scores: NDArray[np.float64],
    candidates: list[int],
    size: int,
    seed: int,
) -> list[int]:
    """`size` of the candidates: weighted k-means in `size` clusters, the least sure member of
    each (a cluster left empty: the most uncertain candidate not taken)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    if len(candidates) <= size:
        return list(candidates)
    idx = np.asarray(candidates, dtype=np.int64)
    points = z[idx]
    weight = np.clip(scores[idx], 1e-6, None)
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct points than clusters
        model: Any = KMeans(n_clusters=size, n_init=1, random_state=seed)
        model.fit(points, sample_weight=weight)
    picked: list[int] = []
    taken: set[int] = set()
    for c in range(size):
        members = np.flatnonzero(model.labels_ == c)
        if len(members) == 0:
            continue
        best = int(idx[members[int(np.argmax(scores[idx[members]]))]])
        if best not in taken:
            picked.append(best)
            taken.add(best)
    for i in candidates:  # clusters that came out empty: the most uncertain left
        if len(picked) >= size:
            break
        if i not in taken:
            picked.append(i)
            taken.add(i)
    return picked
