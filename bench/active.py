"""Benchmark the "label next" order: how many labels does each order need?

    .venv/bin/python bench/active.py [--seeds 5] [--workspaces DIR] [--datasets scenes_1200,...]
                                     [--start 0.05] [--batch 0.05] [--within 0.01]

Per data set (../shared/datasets/scenes_1200 and hymenoptera_data), features come once from
a2m's own embedding cache: one `a2m train` (a probe on ../shared/weights/resnet18-scenes.pth)
per data set in a workspace under --workspaces DIR, made by whole a2m processes when absent and
reused from there (bench/flag_quality.py's `workspace_embeddings`). Then, in this process with
the package's own functions and no Label Studio:

- a fixed held-out split that no order ever labels: hymenoptera's own val/ folder (153 photos);
  a stratified quarter of scenes_1200 (300, scikit-learn's split with random_state 0);
- the rest is the pool. Per seed, a seeded random --start share of it (5%) is labeled; then
  batches of --batch (5% of the pool) are labeled in the order under test, and after each batch
  the probe is trained on the labels so far (the package's `fit_head`, the probe `a2m train`
  fits, with no validation rows: the middle of its C grid) and judged on the held-out split;
- the orders: (a) random (a seeded shuffle), (b) uncertainty alone (1 - margin of the current
  probe), (c) the default: `label_next_order` on the probe's cached features, its block the
  batch size (the images labeled between two trainings): the most typical image of each k-means
  cluster while the probe's confidence is below the order's trust level, else uncertainty with
  the diversity step (review/ordering.py's docstring);
- the reference: the probe trained on every label of the pool. An order's figure is the labels
  it needs to come within --within (1 point) of the reference's accuracy, measured two ways:
  "stays", the labels from which its probe stays within at every later batch (the robust one:
  a small held-out split lets a probe cross the line once by luck), and "first", the labels when
  it first crosses.

Reported per data set: each order's labels needed over the seeds (median, min-max, and as a
share of the pool), the default's median over random's median against the target (issue 24: at
most 0.60 on both sets), and the same ratio per seed.

The default seeds (0-4, --first-seed 0) are the reported ones; the order's settings were tuned
on others (--first-seed 100: hymenoptera_data seeds 100-119, scenes_1200 100-104), never on
these. Last run (review/ordering.py's typical start, TRUST 0.75): "stays" scenes_1200 0.43,
hymenoptera_data 0.74 (168 labels against random's 228; 0.84 before the typical start);
"first" 0.67 and 0.62. The target is met on scenes_1200 only.

How much of that is the order and how much its own k-means seed: `--order-seed-shifts
0,1000,2000` runs the default order again with only that seed moved. On the reported seeds,
hymenoptera_data's "stays" ratio is then 0.74, 0.68 and 0.95 (0.74 pooled); scenes_1200's 0.43,
0.29, 0.57. On hymenoptera's 153 held-out photos one point is 1.5 photos (the target is 106
right where the probe on every label gets 107), so a ratio of 0.60 there cannot be told from the
seed's own swing; a rule tuned to reach it on five seeds would be tuned to noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _shared import HYMENOPTERA, SCENES_1200, SCENES_WEIGHTS, require, run_as_installed
from flag_quality import read_dataset, workspace_embeddings

DATASETS = {"scenes_1200": SCENES_1200, "hymenoptera_data": HYMENOPTERA}
ORDERS = ("random", "uncertainty", "default")
TARGET_RATIO = 0.60


@dataclass
class Dataset:
    name: str
    x: Any  # (images, dim) cached features
    y: Any  # (images,) class indices
    pool: Any  # indices that may be labeled
    test: Any  # the fixed held-out indices
    classes: int


@dataclass
class Curve:
    """One order on one seed: labels so far -> held-out accuracy, and the labels it needed."""

    points: list[tuple[int, float]]

    def first(self, target: float) -> int | None:
        """Labels when the probe first comes within the target."""
        return next((n for n, acc in self.points if acc >= target), None)

    def stays(self, target: float) -> int | None:
        """Labels from which the probe stays within the target at every later batch."""
        for k, (n, _acc) in enumerate(self.points):
            if all(acc >= target for _n, acc in self.points[k:]):
                return n
        return None


def load(name: str, root: Path, weights: Path) -> Dataset:
    import numpy as np
    from sklearn.model_selection import train_test_split

    folder = require(DATASETS[name], name)
    photos = read_dataset(folder)
    x, kept = workspace_embeddings(root / name, folder, photos, weights)
    names = sorted({p.label for p in kept})
    y = np.array([names.index(p.label) for p in kept], dtype=np.int64)
    everyone = np.arange(len(kept))
    if name == "hymenoptera_data":
        held = {p.sha256 for p in read_dataset(folder / "val")}
        test = np.array([i for i, p in enumerate(kept) if p.sha256 in held], dtype=np.int64)
        pool = np.array([i for i, p in enumerate(kept) if p.sha256 not in held], dtype=np.int64)
    else:
        pool, test = train_test_split(everyone, test_size=0.25, stratify=y, random_state=0)
    return Dataset(name, x, y, np.sort(pool), np.sort(test), len(names))


def accuracy(data: Dataset, labeled: Any) -> tuple[float, Any]:
    """The probe fitted on the labeled indices: its held-out accuracy, and the head."""
    import numpy as np

    from annotate2model.training.fit.head import fit_head, probabilities

    empty = np.empty((0, data.x.shape[1]), dtype=np.float32)
    fit = fit_head(data.x[labeled], data.y[labeled], empty, np.empty(0), data.classes)
    probs = probabilities(data.x[data.test], fit.weight, fit.bias)
    return float(np.mean(np.argmax(probs, axis=1) == data.y[data.test])), fit


def run_order(
    data: Dataset, order: str, seed: int, start: int, batch: int, shift: int = 0
) -> Curve:
    """One seed's learning curve under `order`; `shift` moves only the default order's own
    k-means seed (the start and the labels are the seed's)."""
    import numpy as np

    from annotate2model.review.ordering import label_next_order
    from annotate2model.training.fit.head import probabilities

    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(data.pool)
    labeled = list(shuffled[:start])
    while len({int(data.y[i]) for i in labeled}) < 2:  # a probe needs two classes
        labeled.append(int(shuffled[len(labeled)]))
    rest = [int(i) for i in shuffled if int(i) not in set(labeled)]
    points: list[tuple[int, float]] = []
    while True:
        acc, fit = accuracy(data, np.asarray(labeled))
        points.append((len(labeled), acc))
        if not rest:
            return Curve(points)
        if order == "random":
            chosen = rest[:batch]
        else:
            unl = np.asarray(rest)
            probs = probabilities(data.x[unl], fit.weight, fit.bias)
            feats = data.x[unl] if order == "default" else None
            ranked = label_next_order(probs, feats, block=batch, seed=seed + shift)
            chosen = [int(unl[i]) for i in ranked[:batch]]
        taken = set(chosen)
        labeled += chosen
        rest = [i for i in rest if i not in taken]


def spread(values: list[int | None], total: int) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "never"
    never = len(values) - len(got)
    med = statistics.median(got)
    text = f"{med:6.0f} ({med / total:5.1%})  min-max {min(got)}-{max(got)}"
    return text + (f"  ({never} seed(s) never)" if never else "")


MEASURES = {
    "stays": "labels from which the probe stays within {w} point(s) at every later batch",
    "first": "labels when the probe first comes within {w} point(s)",
}


def bench(
    data: Dataset,
    seeds: list[int],
    start_share: float,
    batch_share: float,
    within: float,
    shifts: list[int],
) -> dict[str, float]:
    """The tables of the module docstring for one data set; default/random ratio per measure."""
    pool = len(data.pool)
    start = max(2, round(start_share * pool))
    batch = max(1, round(batch_share * pool))
    full, _ = accuracy(data, data.pool)
    target = full - within
    print(
        f"\n{data.name}: {len(data.y)} images, {data.classes} classes; pool {pool}, held out "
        f"{len(data.test)}; start {start}, batches of {batch}; probe on every label "
        f"{full:.3f}, target accuracy {target:.3f}"
    )
    started = time.perf_counter()
    curves = {o: [run_order(data, o, seed, start, batch) for seed in seeds] for o in ORDERS}
    shifted = {
        shift: [run_order(data, "default", seed, start, batch, shift) for seed in seeds]
        for shift in shifts
        if shift
    }
    ratios = {}
    for measure, title in MEASURES.items():
        needed = {o: [getattr(c, measure)(target) for c in curves[o]] for o in ORDERS}
        print(f"  {title.format(w=f'{within * 100:g}')}, seeds {seeds[0]}-{seeds[-1]}:")
        for order in ORDERS:
            shown = " ".join(str(v) if v is not None else "never" for v in needed[order])
            print(f"    {order:12s} {spread(needed[order], pool)}   [{shown}]")
        ratio = _ratio(needed["default"], needed["random"], pool)
        unc = _ratio(needed["uncertainty"], needed["random"], pool)
        verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
        print(
            f"    default / random (medians) {ratio:.2f}, target <= {TARGET_RATIO:.2f}: "
            f"{verdict}; uncertainty alone / random {unc:.2f}"
        )
        per_seed = [
            f"{d / r:.2f}"
            for d, r in zip(
                _filled(needed["default"], pool), _filled(needed["random"], pool), strict=True
            )
        ]
        print(f"    default / random per seed: {' '.join(per_seed)}")
        if shifted:
            pooled = list(needed["default"])
            line = []
            for shift, runs in shifted.items():
                got = [getattr(c, measure)(target) for c in runs]
                pooled += got
                line.append(f"+{shift} {_ratio(got, needed['random'], pool):.2f}")
            print(
                f"    default / random with the order's k-means seed moved: {' '.join(line)}; "
                f"all {len(shifts)} pooled {_ratio(pooled, needed['random'], pool):.2f}"
            )
        ratios[measure] = ratio
    final = {o: statistics.median(c.points[-1][1] for c in curves[o]) for o in ORDERS}
    print(f"  ({time.perf_counter() - started:.1f} s; last points {final})")
    return ratios


def _filled(values: list[int | None], pool: int) -> list[int]:
    """Labels needed, a seed that never got there counted as the whole pool."""
    return [pool if v is None else v for v in values]


def _ratio(a: list[int | None], b: list[int | None], pool: int) -> float:
    return float(statistics.median(_filled(a, pool)) / statistics.median(_filled(b, pool)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--workspaces", type=Path, help="keep (and reuse) the feature workspaces")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--start", type=float, default=0.05)
    parser.add_argument("--batch", type=float, default=0.05)
    parser.add_argument("--within", type=float, default=0.01)
    parser.add_argument(
        "--order-seed-shifts",
        default="0",
        help="comma-separated offsets added to the default order's own k-means seed, e.g. "
        "0,1000,2000: the default order is run once per offset, to show how much its figure "
        "moves with that seed alone",
    )
    args = parser.parse_args()
    run_as_installed()
    weights = require(SCENES_WEIGHTS, "the ResNet-18 scenes weights")
    root = args.workspaces or Path(tempfile.mkdtemp(prefix="a2m-bench-active-"))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    shifts = [int(v) for v in args.order_seed_shifts.split(",") if v.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        sys.exit(f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    ratios = {
        name: bench(load(name, root, weights), seeds, args.start, args.batch, args.within, shifts)
        for name in names
    }
    for measure in MEASURES:
        met = all(r[measure] <= TARGET_RATIO for r in ratios.values())
        print(
            f"\nTarget ({measure}: default order at most {TARGET_RATIO:.0%} of random's labels "
            "on every set): "
            + ("met" if met else "NOT met")
            + " ("
            + ", ".join(f"{n} {r[measure]:.2f}" for n, r in ratios.items())
            + ")"
        )


if __name__ == "__main__":
    main()
