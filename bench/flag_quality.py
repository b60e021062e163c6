"""Benchmark flag-back: do the flags find the wrong labels, and does one round fix them?

    .venv/bin/python bench/flag_quality.py [--quick] [--seeds 3] [--no-hymenoptera]
    .venv/bin/python bench/flag_quality.py --ranking [--workspaces DIR] [--dataset NAME]
        [--seeds 10] [--first-seed 20] [--no-speed]

Quality, per seed (medians over seeds at the end): ../shared/datasets/scenes_1200 goes into a
local Label Studio with 10% of its labels flipped to another class (seeded), as annotated tasks.
Then, each step a whole `a2m` process: `connect`, `sync`, `train` (a probe on the shared ResNet-18
scenes weights), `flag RUN --reasons misclassified,label-issue --requeue`. Measured:
- precision and recall of the label-issue flags against the flipped training images, and of all
  flags against every flipped image;
- the baseline in the same run: cleanlab's default filter on 5-fold logistic-regression
  (scikit-learn defaults) probabilities from the same embeddings, training images eligible;
- an oracle answers every flagged task with its true label (submitting the requeued draft);
- round 2, one `a2m loop` (sync, train version 2, compare, flag run 2): run 2's flags on tasks
  the oracle confirmed in round 1 (target 0: verdicts are remembered), those kept back, its other
  flags and their precision; the oracle answers them too and `a2m sync` makes version 3: the share
  of correct labels before, after one round and after two (target >= 99.5%), and test accuracy
  (against the true labels, on the common test images) of runs 1 and 2.
The same on ../shared/datasets/hymenoptera_data (one seed unless --seeds says more).

Speed: out-of-fold probabilities and ranking for 10,000 embeddings (the cached scenes embeddings
resampled with noise) against the scikit-learn-default baseline; pushing 1,000 flags to Label
Studio (median of 3, each a new run's flags) against one request at a time. Quick mode: 300
scene images, one seed, 2,000 embeddings, 200 flags, no hymenoptera.

Ranking mode (--ranking, no Label Studio): the label-issue ranking measured against what the
features allow (issue 23). Both data sets' embeddings come from one `a2m train` each (a2m's own
embedding cache, kept in --workspaces DIR when given and reused from there), so features are
extracted once. Per data set and seed (10 seeds from --first-seed, 20 by default: flips that no
ranking was tuned on), with 10% of the labels flipped, over the training images:
- ceiling: precision at recall 0.9 of a2m's out-of-fold recipe fitted on the TRUE labels, ranked
  by 1 - p(given label) against the flipped ones: a reference for what the features allow, not
  a bound (fitted on the flipped labels, a recipe can pass it);
- a2m: precision at recall 0.9 of the order a reviewer meets, a2m's label-issue flags by score
  and then (where the flags stop short of the recall) the other training images by score; "a2m
  rank", the out-of-fold ranking alone; P and R, the flags' precision and recall;
- default: the same for cleanlab's default filter (`find_label_issues` defaults) on the
  logistic-regression probabilities below;
- logreg: the same figures for 5-fold multinomial logistic regression (scikit-learn,
  `cross_val_predict`), the candidate a2m's ranking is compared with.
Then medians and min-max over seeds, a2m's targets on the medians (>= 0.95 of the ceiling, >= 0.05
above the default), logreg against a2m per seed, and the 10,000-embedding timing.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _shared import HYMENOPTERA, SCENES_1200, SCENES_WEIGHTS, require, run_as_installed

PY = sys.executable
A2M = [PY, "-m", "annotate2model"]
TOKEN = "a2mbench0legacy0token0123456789abcdef013"
FLIP = 0.10
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}

# Targets (issue 9).
TARGET_RECALL = 0.9
TARGET_PRECISION = 0.7
TARGET_CORRECT_TWO = 0.995
TARGET_CORRECT_AFTER = 0.99
TARGET_OOF_S = 5.0
TARGET_PUSH_S = 20.0


def child_env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "LABEL_STUDIO_", "CI"))
    }


def a2m(ws: Path, *args: str) -> str:
    proc = subprocess.run(
        [*A2M, *args], cwd=ws, env=child_env(), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"a2m {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def a2m_json(ws: Path, *args: str) -> Any:
    return json.loads(a2m(ws, *args, "--json"))


@dataclass(frozen=True)
class Photo:
    sha256: str
    label: str
    data: bytes
    mime: str


def read_dataset(root: Path, limit_per_class: int | None = None) -> list[Photo]:
    """Class folders (optionally under train/ val/): one Photo per distinct image."""
    photos: dict[str, Photo] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        label = path.parent.name
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        mime = (
            "image/jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else f"image/{path.suffix[1:]}"
        )
        photos.setdefault(sha, Photo(sha, label, data, mime))
    out = sorted(photos.values(), key=lambda p: p.sha256)
    if limit_per_class:
        # A seeded sample, not the lowest hashes: splits come from the hash.
        rng = random.Random(0)
        chosen = []
        for label in sorted({p.label for p in out}):
            members = [p for p in out if p.label == label]
            chosen += rng.sample(members, min(limit_per_class, len(members)))
        out = sorted(chosen, key=lambda p: p.sha256)
    return out


def flip_labels(photos: Sequence[Photo], seed: int) -> dict[str, str]:
    """sha -> the label Label Studio gets: 10% (seeded) flipped to another class."""
    rng = random.Random(seed)
    labels = sorted({p.label for p in photos})
    flipped = set(rng.sample(range(len(photos)), round(FLIP * len(photos))))
    return {
        p.sha256: rng.choice([x for x in labels if x != p.label]) if i in flipped else p.label
        for i, p in enumerate(photos)
    }


def choice(label: str) -> dict[str, Any]:
    return {
        "result": [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [label]},
            }
        ],
        "ground_truth": False,
    }


@dataclass
class RoundFigures:
    seed: int
    images: int
    flipped: int
    flags: int
    li_precision: float
    li_recall: float
    all_precision: float
    all_recall: float
    base_precision: float
    base_recall: float
    correct_before: float
    correct_after: float
    acc_before: float
    acc_after: float
    test_n: int
    # The second round (`a2m loop` after the oracle's answers): run 2's flags on tasks a person
    # confirmed in round 1 (target 0), those kept back, its other flags and their precision,
    # and the share of correct labels once the oracle answered them too.
    reflagged_confirmed: int = 0
    kept_back: int = 0
    second_flags: int = 0
    second_precision: float = 0.0
    correct_after_two: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)


def pr(found: set[str], truth: set[str]) -> tuple[float, float]:
    hit = len(found & truth)
    return (hit / len(found) if found else 0.0, hit / len(truth) if truth else 1.0)


def one_round(
    name: str,
    photos: list[Photo],
    seed: int,
    url: str,
    tmp: Path,
    cache: Path,
    weights: Path,
) -> RoundFigures:
    """Import with flipped labels, sync, train, flag, answer as an oracle; `a2m loop`, answer its
    flags as the oracle, sync."""
    from annotate2model.labelstudio.client import LabelStudioClient
    from annotate2model.labelstudio.config import build_label_config
    from annotate2model.settings import Secret
    from annotate2model.workspace import init_workspace

    truth = {p.sha256: p.label for p in photos}
    given = flip_labels(photos, seed)
    labels = sorted(set(truth.values()))
    secs: dict[str, float] = {}
    with LabelStudioClient(url, Secret(TOKEN)) as client:
        project = client.create_project(f"{name} seed {seed}", build_label_config(labels)).id
        tasks = [
            {
                "data": {
                    "image": f"data:{p.mime};base64," + base64.b64encode(p.data).decode(),
                    "sha": p.sha256,
                },
                "annotations": [choice(given[p.sha256])],
            }
            for p in photos
        ]
        client.import_tasks(project, tasks)
    ws, _ = init_workspace(tmp / f"{name}-{seed}")
    # One embedding cache for every round: the images (so their features) are the same.
    import shutil

    shutil.rmtree(ws.cache_dir, ignore_errors=True)
    ws.cache_dir.symlink_to(cache, target_is_directory=True)
    root = ws.root
    a2m(root, "connect", url, "--token", TOKEN, "--project", str(project))
    t = time.perf_counter()
    a2m(root, "sync")
    secs["sync"] = time.perf_counter() - t
    t = time.perf_counter()
    run1 = a2m_json(root, "train", "--weights", str(weights))["id"]
    secs["train"] = time.perf_counter() - t
    t = time.perf_counter()
    flagged = a2m_json(
        root, "flag", str(run1), "--reasons", "misclassified,label-issue", "--requeue"
    )
    secs["flag"] = time.perf_counter() - t
    flags = a2m_json(root, "flags", str(run1))["flags"]

    from annotate2model.settings import load_settings
    from annotate2model.store import Store
    from annotate2model.store.runs import read_predictions
    from annotate2model.store.versions import list_versions, version_items

    store = Store.open(load_settings(ws, env={}))
    with store.read() as session:
        v1 = {i.image_sha256: i for i in version_items(session, 1)}
    wrong = {sha for sha, item in v1.items() if item.label != truth[sha]}
    train = {sha for sha, item in v1.items() if item.split == "train"}
    li = {f["image_sha256"] for f in flags if f["reason"] == "label-issue"}
    every = {f["image_sha256"] for f in flags}
    li_p, li_r = pr(li, wrong & train)
    all_p, all_r = pr(every, wrong)
    base_p, base_r = baseline(ws, run1, v1, wrong & train)

    # The oracle: every flagged task answered with its true label (the draft submitted).
    t = time.perf_counter()
    oracle(url, truth, flags)
    secs["oracle"] = time.perf_counter() - t
    # Round 2: one `a2m loop` (sync, train the new version, compare, flag run 2).
    t = time.perf_counter()
    looped = a2m_json(root, "loop", "--reasons", "misclassified,label-issue", "--requeue")
    secs["loop"] = time.perf_counter() - t
    run2 = looped["run"]["id"]
    second = a2m_json(root, "flags", str(run2))["flags"]
    confirmed = {
        f["task"]
        for f in a2m_json(root, "flags", str(run1))["flags"]
        if f["outcome"] == "confirmed"
    }
    sent = [f for f in second if f["outcome"] == "pending"]
    reflagged = [f for f in sent if f["task"] in confirmed]
    new_flags = [f for f in sent if f["task"] not in confirmed]
    right = sum(1 for f in new_flags if f["current_label"] != truth[f["image_sha256"]])
    oracle(url, truth, sent)
    a2m(root, "sync")
    with store.read() as session:
        v2 = {i.image_sha256: i for i in version_items(session, 2)}
        latest = max(v.number for v in list_versions(session))
        v3 = {i.image_sha256: i for i in version_items(session, latest)}
        before = {p.image_sha256: p.predicted for p in read_predictions(session, run1, 1, "test")}
        after = {p.image_sha256: p.predicted for p in read_predictions(session, run2, 2, "test")}
    store.close()
    common = sorted(set(before) & set(after))
    return RoundFigures(
        seed=seed,
        images=len(v1),
        flipped=len(wrong),
        flags=int(flagged["flagged"]),
        li_precision=li_p,
        li_recall=li_r,
        all_precision=all_p,
        all_recall=all_r,
        base_precision=base_p,
        base_recall=base_r,
        correct_before=1 - len(wrong) / len(v1),
        correct_after=sum(1 for sha, i in v2.items() if i.label == truth[sha]) / len(photos),
        acc_before=sum(before[s] == truth[s] for s in common) / max(1, len(common)),
        acc_after=sum(after[s] == truth[s] for s in common) / max(1, len(common)),
        test_n=len(common),
        reflagged_confirmed=len(reflagged),
        kept_back=int(looped["flags"]["kept_back"]),
        second_flags=len(new_flags),
        second_precision=right / len(new_flags) if new_flags else 0.0,
        correct_after_two=sum(1 for sha, i in v3.items() if i.label == truth[sha]) / len(photos),
        seconds=secs,
    )


def oracle(url: str, truth: dict[str, str], flags: Sequence[dict[str, Any]]) -> None:
    """Every flagged task answered with its true label (the requeued draft submitted)."""
    from annotate2model.errors import LabelStudioError
    from annotate2model.labelstudio.client import LabelStudioClient
    from annotate2model.settings import Secret

    with LabelStudioClient(url, Secret(TOKEN)) as client:

        def answer(flag: dict[str, Any]) -> None:
            # A busy server can time out on a write it then applies (the client does not send
            # it again): read the task back and answer again only if the answer is not there.
            true = truth[flag["image_sha256"]]
            path = f"/api/tasks/{flag['task']}"
            task = client.json("GET", path, "read a task")
            before = {a.get("id") for a in task.get("annotations", [])}
            for attempt in range(3):
                body = choice(true)
                if task.get("drafts"):
                    body["draft_id"] = task["drafts"][0]["id"]
                try:
                    client.json("POST", f"{path}/annotations", "answer", json=body)
                    return
                except LabelStudioError:
                    if attempt == 2:
                        raise
                task = client.json("GET", path, "read a task")
                if any(
                    r.get("value", {}).get("choices") == [true]
                    for a in task.get("annotations", [])
                    if a.get("id") not in before
                    for r in a.get("result", [])
                ):
                    return

        # One answer at a time: a person's pace, and no "database is locked" on the server.
        for flag in flags:
            answer(flag)


def baseline(ws: Any, run_id: int, items: dict[str, Any], truth: set[str]) -> tuple[float, float]:
    """cleanlab's default filter on 5-fold scikit-learn-default logistic regression
    probabilities of the run's cached embeddings; training images eligible."""
    import numpy as np
    from cleanlab.filter import find_label_issues

    from annotate2model.training.features.embeddings import EmbeddingCache

    card = json.loads((ws.runs_dir / str(run_id) / "model.json").read_text())
    cache = EmbeddingCache(ws.cache_dir / "embeddings")
    shas = sorted(items)
    vectors = cache.get(card["embedding_key"], shas, 0)
    cache.close()
    shas = [s for s in shas if s in vectors]
    labels = sorted({items[s].label for s in shas})
    x = np.stack([vectors[s] for s in shas])
    y = np.array([labels.index(items[s].label) for s in shas])
    probs = logreg_probs(x, y, len(labels))
    issues = find_label_issues(y, probs, n_jobs=1)
    found = {s for s, bad in zip(shas, issues, strict=True) if bad and items[s].split == "train"}
    return pr(found, truth)


# -- speed ----------------------------------------------------------------------------------------


def oof_speed(vectors: Any, labels: Any, n: int, repeats: int) -> tuple[list[float], float]:
    """Seconds for out-of-fold probabilities + ranking of n embeddings, and the baseline's."""
    import numpy as np
    from cleanlab.filter import find_label_issues

    from annotate2model.review.ranking import label_issues, out_of_fold_probs

    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(labels), n)
    x = vectors[pick] + rng.normal(0, 0.1, (n, vectors.shape[1])).astype(np.float32) * vectors.std()
    y = labels[pick].copy()
    flip = rng.random(n) < FLIP
    k = int(labels.max()) + 1
    y[flip] = (y[flip] + rng.integers(1, k, flip.sum())) % k
    names = [str(i) for i in range(k)]
    shas = [f"{i:064x}" for i in range(n)]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        probs = out_of_fold_probs(x, y, k)
        label_issues(shas, [names[i] for i in y], probs, names)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    find_label_issues(y, logreg_probs(x, y, k), n_jobs=1)
    return times, time.perf_counter() - t


def push_speed(url: str, n: int, repeats: int) -> tuple[list[float], float, int]:
    """Seconds to push n flags (median of repeats, each a new run's), and one-at-a-time pushing
    of a fifth of them (predictions one POST each, fields one PATCH each), scaled to n."""
    from annotate2model.labelstudio.client import LabelStudioClient
    from annotate2model.labelstudio.config import build_label_config
    from annotate2model.labelstudio.flags import PushItem, push_flags, review_field
    from annotate2model.settings import Secret

    with LabelStudioClient(url, Secret(TOKEN)) as client:
        project = client.create_project("push speed", build_label_config(["a", "b"])).id
        ids = client.import_tasks(
            project,
            [
                {
                    "data": {"image": f"https://example.invalid/{i}.png"},
                    "annotations": [choice("a")],
                }
                for i in range(n)
            ],
        )
        times = []
        for r in range(repeats):
            items = [PushItem(i, t, "label-issue", 0.9, "b") for i, t in enumerate(ids)]
            t0 = time.perf_counter()
            push_flags(client, project, 900 + r, items)
            times.append(time.perf_counter() - t0)
        part = ids[: max(1, n // 5)]
        t0 = time.perf_counter()
        for task_id in part:
            task = client.json("GET", f"/api/tasks/{task_id}", "read")
            client.json(
                "POST",
                "/api/predictions",
                "predict",
                json={"task": task_id, "model_version": "one-by-one", "score": 0.9, **choice("b")},
            )
            data = {**task["data"], review_field(999): "one by one"}
            client.json("PATCH", f"/api/tasks/{task_id}", "patch", json={"data": data})
        one_by_one = (time.perf_counter() - t0) * n / len(part)
    return times, one_by_one, len(part)


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast run for development")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 3; quick 1)")
    parser.add_argument("--no-hymenoptera", action="store_true", help="scenes only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--ranking", action="store_true", help="the label-issue ranking on cached embeddings"
    )
    parser.add_argument("--workspaces", type=Path, default=None, help="ranking: keep/reuse here")
    parser.add_argument(
        "--dataset", choices=sorted(DATASETS), action="append", help="ranking: only these"
    )
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED, help="ranking: flips from")
    parser.add_argument("--no-speed", action="store_true", help="ranking: skip the 10,000 timing")
    args = parser.parse_args()
    run_as_installed()
    if args.ranking:
        ranking_mode(
            args.workspaces,
            args.dataset or list(DATASETS),
            args.seeds or 10,
            args.first_seed,
            not args.no_speed,
        )
        return
    seeds = args.seeds or (1 if args.quick else 3)
    weights = require(SCENES_WEIGHTS, "the ResNet-18 scenes weights")
    scenes = read_dataset(
        require(SCENES_1200, "scenes_1200"), limit_per_class=50 if args.quick else None
    )

    from annotate2model.labelstudio.server import LocalServer, free_port

    tmp = Path(tempfile.mkdtemp(prefix="a2m-bench-flags-"))
    cache = tmp / "cache"
    cache.mkdir()
    server = LocalServer(tmp / "labelstudio")
    t = time.perf_counter()
    started = server.start(
        username="admin@a2m.local", password="bench-password-1", token=TOKEN, port=free_port()
    )
    print(f"Label Studio up in {time.perf_counter() - t:.0f} s at {started.url}", flush=True)
    try:
        rounds = []
        for seed in range(seeds):
            r = one_round("scenes", scenes, seed, started.url, tmp, cache, weights)
            print_round("scenes", r)
            rounds.append(r)
        hymen: list[RoundFigures] = []
        if not args.quick and not args.no_hymenoptera:
            ants = read_dataset(require(HYMENOPTERA, "hymenoptera_data"))
            for seed in range(args.seeds or 1):
                r = one_round("hymenoptera", ants, seed, started.url, tmp, cache, weights)
                print_round("hymenoptera", r)
                hymen.append(r)
        vectors, labels = cached_scenes(tmp, cache)
        n_emb = 2_000 if args.quick else 10_000
        oof_times, oof_base = oof_speed(vectors, labels, n_emb, 3)
        n_push = 200 if args.quick else 1_000
        push_times, push_base, push_part = push_speed(started.url, n_push, 3)
    finally:
        server.stop()
    report("scenes_1200" + (" (quick: 300 images)" if args.quick else ""), rounds)
    if hymen:
        report("hymenoptera_data", hymen)
    print()
    print(f"Speed (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores):")
    med = statistics.median(oof_times)
    print(
        f"  out-of-fold + ranking, {n_emb} embeddings: median {med:.2f} s "
        f"({', '.join(f'{x:.2f}' for x in oof_times)}), target <= {TARGET_OOF_S:.0f} s for "
        f"10,000 {_verdict(med <= TARGET_OOF_S)}; baseline (scikit-learn defaults, same folds "
        f"count): {oof_base:.2f} s"
    )
    med = statistics.median(push_times)
    print(
        f"  pushing {n_push} flags: median {med:.2f} s ({', '.join(f'{x:.2f}' for x in push_times)}"
        f"), target <= {TARGET_PUSH_S:.0f} s for 1,000 {_verdict(med <= TARGET_PUSH_S)}; one "
        f"request at a time: {push_base:.1f} s (measured on {push_part}, scaled)"
    )
    if args.keep:
        print(f"kept {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


# -- ranking: the label-issue ranking against what the features allow ----------------------------

# The flips of the ranking mode: seeds that no ranking was tuned on (the kNN + LDA mean was
# chosen on 3-12, the full run uses 0-2).
FIRST_SEED = 20
RECALL = 0.9
# Targets (issue 23), on the medians over seeds.
TARGET_OF_CEILING = 0.95
TARGET_OVER_DEFAULT = 0.05
DATASETS = {"scenes_1200": SCENES_1200, "hymenoptera_data": HYMENOPTERA}


@dataclass(frozen=True)
class RankingFigures:
    """One recipe on one seed's flips; every figure over the training images."""

    # Precision at recall 0.9 of the recipe fitted on the true labels, ranked by 1 - p(given).
    ceiling: float
    # Precision at recall 0.9 of the out-of-fold ranking by 1 - p(given).
    ranking: float
    # Precision at recall 0.9 of what a reviewer sees: the flags in score order, then the rest.
    shipped: float
    # The flags themselves (a2m's cleanlab filter), against the flipped training labels.
    precision: float
    recall: float


def ranking_mode(
    workspaces: Path | None, datasets: list[str], n_seeds: int, first_seed: int, speed: bool
) -> None:
    """The tables of the docstring's ranking mode, for `datasets`, seeds first_seed.."""
    import shutil

    weights = require(SCENES_WEIGHTS, "the ResNet-18 scenes weights")
    root = workspaces or Path(tempfile.mkdtemp(prefix="a2m-bench-ranking-"))
    seeds = list(range(first_seed, first_seed + n_seeds))
    scenes: tuple[Any, list[Photo]] | None = None
    for name in datasets:
        photos = read_dataset(require(DATASETS[name], name))
        x, kept = workspace_embeddings(root / name, DATASETS[name], photos, weights)
        if name == "scenes_1200":
            scenes = (x, kept)
        per_seed = [ranking_seed(x, kept, seed) for seed in seeds]
        print_ranking(name, len(kept), seeds, per_seed)
    if speed:
        if scenes is None:
            photos = read_dataset(require(SCENES_1200, "scenes_1200"))
            scenes = workspace_embeddings(root / "scenes_1200", SCENES_1200, photos, weights)
        import numpy as np

        x, kept = scenes
        names = sorted({p.label for p in kept})
        y = np.array([names.index(p.label) for p in kept])
        times, base = oof_speed(x, y, 10_000, 3)
        med = statistics.median(times)
        print(
            f"\nSpeed (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): a2m's "
            f"out-of-fold probabilities + label issues of 10,000 embeddings ({x.shape[1]} "
            f"features, scenes resampled with noise): median {med:.2f} s "
            f"({', '.join(f'{t:.2f}' for t in times)}), target <= {TARGET_OOF_S:.0f} s "
            f"{_verdict(med <= TARGET_OOF_S)}; 5-fold logistic regression + cleanlab's default "
            f"filter: {base:.2f} s"
        )
    if workspaces is None:
        shutil.rmtree(root, ignore_errors=True)


def a2m_probs(x: Any, y: Any, n_classes: int) -> Any:
    """The out-of-fold probabilities as `a2m flag` computes them (its default folds and seed)."""
    from annotate2model.review.ranking import out_of_fold_probs

    return out_of_fold_probs(x, y, n_classes)


def logreg_probs(x: Any, y: Any, n_classes: int) -> Any:
    """5-fold (stratified, shuffled, seed 0) multinomial logistic regression, scikit-learn's
    defaults (L-BFGS, C=1) but for the iterations; every class present in y."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return cross_val_predict(
            LogisticRegression(max_iter=1000),
            x,
            y,
            cv=StratifiedKFold(5, shuffle=True, random_state=0),
            method="predict_proba",
        )


RECIPES = {"a2m": a2m_probs, "logreg": logreg_probs}


def ranking_seed(x: Any, photos: list[Photo], seed: int) -> dict[str, RankingFigures]:
    """Each recipe's figures on one seed's flips, and cleanlab's default filter ("default") on
    the logistic-regression probabilities (its ranking and ceiling are logreg's)."""
    import warnings

    import numpy as np
    from cleanlab.filter import find_label_issues

    from annotate2model.review.ranking import label_issues
    from annotate2model.settings import SplitFractions
    from annotate2model.store.versions import split_for

    names = sorted({p.label for p in photos})
    given = flip_labels(photos, seed)
    y = np.array([names.index(given[p.sha256]) for p in photos])
    true = np.array([names.index(p.label) for p in photos])
    wrong = y != true
    train = np.array([split_for(p.sha256, SplitFractions()) == "train" for p in photos])
    shas = [p.sha256 for p in photos]

    def at_recall(order: Any) -> float:
        """Precision where `order` (indices of training images) first finds RECALL of the
        flipped ones."""
        hits = np.cumsum(wrong[order])
        at = int(np.argmax(hits >= RECALL * wrong[train].sum()))
        return float(hits[at] / (at + 1))

    def by_doubt(probs: Any, first: Any) -> Any:
        """Training images, `first` (a mask) before the rest, each by 1 - p(given), stably."""
        idx = np.flatnonzero(train)
        return idx[np.lexsort((-(1 - probs[idx, y[idx]]), ~first[idx]))]

    def figures(probs: Any, ceiling: float, flagged: Any) -> RankingFigures:
        hit = int((flagged & wrong).sum())
        return RankingFigures(
            ceiling=ceiling,
            ranking=at_recall(by_doubt(probs, np.zeros(len(y), dtype=bool))),
            shipped=at_recall(by_doubt(probs, flagged)),
            precision=hit / max(1, int(flagged.sum())),
            recall=hit / int((wrong & train).sum()),
        )

    out: dict[str, RankingFigures] = {}
    for recipe, fit in RECIPES.items():
        probs = fit(x, y, len(names))
        fitted_on_truth = fit(x, true, len(names))
        ceiling = at_recall(by_doubt(fitted_on_truth, np.zeros(len(y), dtype=bool)))
        eligible = {s for s, t in zip(shas, train, strict=True) if t}
        found = {
            d.image_sha256
            for d in label_issues(
                shas, list(map(names.__getitem__, y)), probs, names, eligible=eligible
            )
        }
        flagged = np.array([s in found for s in shas])
        out[recipe] = figures(probs, ceiling, flagged)
        if recipe == "logreg":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                default = find_label_issues(y, probs, n_jobs=1) & train
            out["default"] = figures(probs, ceiling, default)
    return out


def print_ranking(
    name: str, images: int, seeds: list[int], per_seed: list[dict[str, RankingFigures]]
) -> None:
    """Per seed, then median [min-max] over seeds, then the targets on the medians."""
    import numpy as np

    columns = [
        ("ceiling", "a2m", "ceiling"),
        ("a2m", "a2m", "shipped"),
        ("a2m rank", "a2m", "ranking"),
        ("a2m P", "a2m", "precision"),
        ("a2m R", "a2m", "recall"),
        ("default", "default", "shipped"),
        ("default P", "default", "precision"),
        ("default R", "default", "recall"),
        ("logreg ceiling", "logreg", "ceiling"),
        ("logreg", "logreg", "shipped"),
        ("logreg rank", "logreg", "ranking"),
        ("logreg P", "logreg", "precision"),
        ("logreg R", "logreg", "recall"),
    ]
    table = np.array(
        [[getattr(s[recipe], field) for _, recipe, field in columns] for s in per_seed]
    )
    print(
        f"\n{name}: {images} images, 10% of labels flipped (seeds {seeds[0]}-{seeds[-1]}); "
        f"precision at recall {RECALL} over the training images"
    )
    print("  " + " ".join(f"{c[0]:>14s}" for c in [("seed",), *columns]))
    for seed, row in zip(seeds, table, strict=True):
        print("  " + f"{seed:>14d} " + " ".join(f"{v:14.3f}" for v in row))
    med, low, high = np.median(table, 0), table.min(0), table.max(0)
    print("  " + f"{'median':>14s} " + " ".join(f"{v:14.3f}" for v in med))
    print(
        "  "
        + f"{'min-max':>14s} "
        + " ".join(f"{f'{a:.2f}-{b:.2f}':>14s}" for a, b in zip(low, high, strict=True))
    )

    def col(recipe: str, field: str) -> Any:
        return np.array([getattr(s[recipe], field) for s in per_seed])

    a2m, ceiling, default = col("a2m", "shipped"), col("a2m", "ceiling"), col("default", "shipped")
    of_ceiling = float(np.median(a2m) / np.median(ceiling))
    over = float(np.median(a2m) - np.median(default))
    print(
        f"  a2m / ceiling {of_ceiling:.3f} (target >= {TARGET_OF_CEILING} "
        f"{_verdict(of_ceiling >= TARGET_OF_CEILING)}); a2m - cleanlab default {over:+.3f} "
        f"(target >= +{TARGET_OVER_DEFAULT} {_verdict(over >= TARGET_OVER_DEFAULT)})"
    )
    diff = col("logreg", "shipped") - a2m
    q1, q3 = np.percentile(diff, [25, 75])
    verdict = "wins" if q1 > 0 else "loses" if q3 < 0 else "ties"
    print(
        f"  logreg - a2m, per seed: median {np.median(diff):+.3f}, interquartile "
        f"{q1:+.3f}..{q3:+.3f}, min-max {diff.min():+.3f}..{diff.max():+.3f}: logreg {verdict}"
    )


def workspace_embeddings(
    ws: Path, folder: Path, photos: list[Photo], weights: Path
) -> tuple[Any, list[Photo]]:
    """The photos' embeddings from a probe run in `ws` (made by whole a2m processes if absent).

    The workspace's own labels do not matter (hymenoptera's train/ val/ folders become classes
    under --splits hash): only the features are read, by image hash."""
    import numpy as np

    from annotate2model.training.features.embeddings import EmbeddingCache

    card_path = ws / ".a2m" / "runs" / "1" / "model.json"
    if not card_path.is_file():
        ws.mkdir(parents=True, exist_ok=True)
        a2m(ws, "init")
        a2m(ws, "import-folder", str(folder), "--splits", "hash")
        a2m(ws, "train", "--weights", str(weights))
    card = json.loads(card_path.read_text())
    cache = EmbeddingCache(ws / ".a2m" / "cache" / "embeddings")
    found = cache.get(card["embedding_key"], [p.sha256 for p in photos], 0)
    cache.close()
    kept = [p for p in photos if p.sha256 in found]
    return np.stack([found[p.sha256] for p in kept]), kept


def cached_scenes(tmp: Path, cache: Path) -> tuple[Any, Any]:
    """The scenes embeddings of the first round's run, with their true labels."""
    import numpy as np

    from annotate2model.training.features.embeddings import EmbeddingCache

    ws = tmp / "scenes-0"
    card = json.loads((ws / ".a2m" / "runs" / "1" / "model.json").read_text())
    photos = read_dataset(SCENES_1200)
    names = sorted({p.label for p in photos})
    store = EmbeddingCache(cache / "embeddings")
    found = store.get(card["embedding_key"], [p.sha256 for p in photos], 0)
    store.close()
    kept = [p for p in photos if p.sha256 in found]
    return (
        np.stack([found[p.sha256] for p in kept]),
        np.array([names.index(p.label) for p in kept]),
    )


def print_round(name: str, r: RoundFigures) -> None:
    print(
        f"{name} seed {r.seed}: {r.images} images, {r.flipped} flipped, {r.flags} flags; "
        f"label-issue P {r.li_precision:.2f} R {r.li_recall:.2f} (baseline P "
        f"{r.base_precision:.2f} R {r.base_recall:.2f}); all flags P {r.all_precision:.2f} R "
        f"{r.all_recall:.2f}; correct labels {r.correct_before:.3f} -> {r.correct_after:.3f}; "
        f"test accuracy {r.acc_before:.3f} -> {r.acc_after:.3f} (n={r.test_n}); round 2: "
        f"{r.reflagged_confirmed} confirmed re-flagged, {r.kept_back} kept back, "
        f"{r.second_flags} new flags at precision {r.second_precision:.2f}, correct labels "
        f"{r.correct_after_two:.4f}; " + ", ".join(f"{k} {v:.1f} s" for k, v in r.seconds.items()),
        flush=True,
    )


def report(name: str, rounds: list[RoundFigures]) -> None:
    def med(key: str) -> float:
        return float(statistics.median(getattr(r, key) for r in rounds))

    print()
    print(f"{name}, medians of {len(rounds)} seed(s):")
    ok = med("li_recall") >= TARGET_RECALL and med("li_precision") >= TARGET_PRECISION
    print(
        f"  label-issue flags: precision {med('li_precision'):.2f}, recall {med('li_recall'):.2f}"
        f" (target recall >= {TARGET_RECALL} at precision >= {TARGET_PRECISION} {_verdict(ok)})"
    )
    print(
        f"  baseline (cleanlab default filter, 5-fold logistic regression): precision "
        f"{med('base_precision'):.2f}, recall {med('base_recall'):.2f}"
    )
    print(
        f"  all flags (misclassified + label-issue) against every flip: precision "
        f"{med('all_precision'):.2f}, recall {med('all_recall'):.2f}"
    )
    print(
        f"  correct labels: {med('correct_before'):.3f} before, {med('correct_after'):.3f} after "
        f"one round (target >= {TARGET_CORRECT_AFTER} "
        f"{_verdict(med('correct_after') >= TARGET_CORRECT_AFTER)})"
    )
    print(
        f"  test accuracy (true labels, common test images): {med('acc_before'):.3f} before, "
        f"{med('acc_after'):.3f} after"
    )
    worst = max(r.reflagged_confirmed for r in rounds)
    print(
        f"  round 2 (`a2m loop` after the oracle): confirmed tasks flagged again: at most "
        f"{worst} (target 0 {_verdict(worst == 0)}); kept back {med('kept_back'):.0f}; new flags "
        f"{med('second_flags'):.0f} at precision {med('second_precision'):.2f}; correct labels "
        f"after two rounds {med('correct_after_two'):.4f} (target >= {TARGET_CORRECT_TWO} "
        f"{_verdict(med('correct_after_two') >= TARGET_CORRECT_TWO)})"
    )


def _verdict(ok: bool) -> str:
    return "[met]" if ok else "[NOT met]"


if __name__ == "__main__":
    main()
