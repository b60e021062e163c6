"""Fine-tuning benchmark: plain PyTorch against the a2m probe and a2m fine-tuning, from a folder.

    .venv/bin/python bench/finetune.py [--quick] [--seeds 0 1 2] [--skip-baseline]

On hymenoptera_data (train/val as given) and a 600-image subset of scenes_1200 (100 photos per
class, seeded, split 60/20/20 into train/val/test folders), with the shared scenes weights:
- baseline (bench/baseline_train.py): frozen ResNet-18 run on every image every epoch, 10 epochs
  (its recipe fixes its own seed: repeats measure its wall time);
- probe: `a2m init` + `a2m import-folder` + `a2m train --seed S`;
- finetune 1 / 2: the same with `--mode finetune --unfreeze 1` (layer4) or `--unfreeze 2`
  (layer3 and layer4), everything else at its default;
each a2m row in a fresh workspace (cold: no cached features), every step a whole process.
Medians over the seeds (wall time over every run). Targets (issue 10): fine-tuning never more
than 1 point below the probe on validation and test accuracy, and at least 3x faster than the
baseline in wall time. --quick: one seed, hymenoptera only, for development.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _shared import HYMENOPTERA, SCENES_1200, SCENES_WEIGHTS, require
from train import A2M, PY, ROOT, a2m_env, timed

SPEED_TARGET = 3.0
# Fine-tuning may be at most this far below the probe (accuracy, 1 point).
ACCURACY_SLACK = 0.01
METHODS = {
    "probe": [],
    "finetune 1": ["--mode", "finetune", "--unfreeze", "1"],
    "finetune 2": ["--mode", "finetune", "--unfreeze", "2"],
}


def scenes_subset(source: Path, target: Path, per_class: int = 100) -> Path:
    """`per_class` photos of each class (seeded sample), symlinked into train/val/test 60/20/20."""
    rng = random.Random(0)
    for label_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(p for p in label_dir.iterdir() if p.is_file())
        chosen = rng.sample(files, per_class)
        cut = [0, per_class * 6 // 10, per_class * 8 // 10, per_class]
        for split, lo, hi in zip(("train", "val", "test"), cut, cut[1:], strict=False):
            out = target / split / label_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for f in chosen[lo:hi]:
                (out / f.name).symlink_to(f)
    return target


def baseline(data: Path, weights: Path) -> dict[str, Any]:
    cmd = [PY, str(ROOT / "bench" / "baseline_train.py"), str(data), str(weights)]
    seconds, out, _ = timed(cmd, dict(os.environ))
    result = json.loads(out.strip().splitlines()[-1])
    return {"seconds": seconds, "val_accuracy": result["val_accuracy"], "test_accuracy": None}


def a2m_run(base: Path, data: Path, weights: Path, seed: int, extra: list[str]) -> dict[str, Any]:
    """init + import-folder + train in a fresh workspace, each a timed process."""
    home = Path(tempfile.mkdtemp(dir=base))
    env = a2m_env(home)
    init_s, _, _ = timed([*A2M, "init", str(home)], env)
    import_s, _, _ = timed([*A2M, "import-folder", str(data)], env)
    cmd = [*A2M, "train", "--weights", str(weights), "--seed", str(seed), "--json", *extra]
    train_s, out, _ = timed(cmd, env)
    run = json.loads(out)
    history = run.get("history") or []
    kept = next((row["epoch"] for row in history if row.get("kept")), None)
    return {
        "seconds": init_s + import_s + train_s,
        "train_seconds": train_s,
        "val_accuracy": run["metrics"]["val_accuracy"],
        "test_accuracy": run["metrics"].get("test_accuracy"),
        "kept_epoch": kept,
        "epochs_run": sum(1 for row in history if row.get("epoch")),
        "load": os.getloadavg()[0],
    }


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=SCENES_WEIGHTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baseline-repeats", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--quick", action="store_true", help="one seed, hymenoptera only")
    parser.add_argument("--only", choices=["hymenoptera", "scenes600"], default=None)
    args = parser.parse_args()
    require(args.weights, "the benchmark's weights")
    seeds = args.seeds[:1] if args.quick else args.seeds
    names = ["hymenoptera"] if args.quick else ["hymenoptera", "scenes600"]
    if args.only:
        names = [args.only]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="a2m-bench-finetune-") as tmp:
        base = Path(tmp)
        for name in names:
            if name == "hymenoptera":
                data = require(HYMENOPTERA, "hymenoptera_data")
            else:
                source = require(SCENES_1200, "scenes_1200")
                data = scenes_subset(source, base / "scenes600")
            rows: dict[str, list[dict[str, Any]]] = {}
            repeats = 1 if args.quick else args.baseline_repeats
            if not args.skip_baseline:
                for i in range(repeats):
                    print(f"{name}: baseline {i + 1}/{repeats}...", file=sys.stderr, flush=True)
                    rows.setdefault("baseline", []).append(baseline(data, args.weights))
            for seed in seeds:
                for method, extra in METHODS.items():
                    print(f"{name}: a2m {method}, seed {seed}...", file=sys.stderr, flush=True)
                    row = a2m_run(base, data, args.weights, seed, extra)
                    rows.setdefault(method, []).append(row)
            results[name] = rows
    report(results, seeds)


def report(results: dict[str, dict[str, list[dict[str, Any]]]], seeds: list[int]) -> None:
    print(
        f"\n{os.cpu_count()} cores; medians over seeds {', '.join(map(str, seeds))} (a2m) and "
        "over the baseline's repeats; wall s: whole processes from the folder "
        "(init + import-folder + train; the baseline's one process)"
    )
    header = (
        f"{'data':12} {'method':11} {'val acc':>7} {'test acc':>8} {'wall s':>7} "
        f"{'speed-up':>8}  {'kept epoch (per seed)':22} all wall s"
    )
    print(header)
    verdicts: list[str] = []
    for name, rows in results.items():
        base_s = median(rows.get("baseline", []), "seconds")
        probe_val = median(rows["probe"], "val_accuracy")
        probe_test = median(rows["probe"], "test_accuracy")
        for method, runs in rows.items():
            val = median(runs, "val_accuracy")
            test = median(runs, "test_accuracy")
            seconds = median(runs, "seconds")
            assert seconds is not None
            speed = f"{base_s / seconds:.1f}x" if base_s and method != "baseline" else "-"
            kept = (
                ",".join(str(r.get("kept_epoch", "-")) for r in runs)
                if method != "baseline"
                else "-"
            )
            all_s = ", ".join(f"{float(r['seconds']):.1f}" for r in runs)
            print(
                f"{name:12} {method:11} {_f(val):>7} {_f(test):>8} {seconds:7.1f} {speed:>8}  "
                f"{kept:22} {all_s}"
            )
            if not method.startswith("finetune"):
                continue
            checks = []
            for split, mine, probe in (("val", val, probe_val), ("test", test, probe_test)):
                if mine is None or probe is None:
                    continue
                delta = 100 * (mine - probe)
                ok = mine >= probe - ACCURACY_SLACK - 1e-9
                where = "beats" if delta > 0 else ("ties" if delta == 0 else "below")
                checks.append(
                    f"{split} {delta:+.1f} points vs the probe ({where}; target >= -1: "
                    f"{'met' if ok else 'NOT met'})"
                )
            if base_s:
                ratio = base_s / seconds
                met = "met" if ratio >= SPEED_TARGET else "NOT met"
                checks.append(f"{ratio:.1f}x the baseline's speed (target >= 3x: {met})")
            verdicts.append(f"{name} {method}: " + "; ".join(checks))
    print("\n".join(verdicts))
    print(
        "kept epoch 0: no fine-tuned epoch beat the probe on validation, so the run kept the "
        "probe's solution"
    )
    print("\n" + json.dumps(results))


def _f(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


if __name__ == "__main__":
    main()
