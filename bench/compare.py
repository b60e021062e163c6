"""Judging speed: `a2m compare`, `a2m curve` and `a2m report` as whole processes (issue 8).

On hymenoptera_data (../shared) with cached embeddings: version 1 is every other image of each
class (train and val folders pooled), version 2 all of them, both with hash splits (so that the
versions have test images in common); one probe run each with the shared ResNet-18 weights.
Then each command runs several times and the median wall time is printed next to its target,
beside the way a user answers the same question without it:
  - compare: one `a2m evaluate` process per run on the newer version's test split (the judging a
    user did by hand, without the table, the intervals or the paired test);
  - curve: one `a2m train` process on the cached version, times the number of points (a curve by
    hand is one training per subset, each a new process and a new version);
  - report: one `a2m evaluate` process (the text report a user had).

    .venv/bin/python bench/compare.py [--repeats 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _shared import HYMENOPTERA, SCENES_WEIGHTS, require

A2M = [sys.executable, "-m", "annotate2model"]
TARGETS = {"compare": 3.0, "curve": 10.0, "report": 5.0}
CURVE_POINTS = 4 * 3


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, stdout) of one whole process; a failure stops the benchmark."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def class_folders(data: Path, target: Path, every: int) -> Path:
    """target/<class>/ holding every `every`-th image of each class, train and val alike
    (symlinks), so that import-folder --splits hash splits them by hash as it does any folder."""
    for split in ("train", "val"):
        for label_dir in sorted((data / split).iterdir()):
            if not label_dir.is_dir():
                continue
            files = sorted(p for p in label_dir.iterdir() if p.is_file())[::every]
            out = target / label_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                (out / f"{split}-{f.name}").symlink_to(f)
    return target


def median_of(repeats: int, cmd: list[str], env: dict[str, str]) -> tuple[float, list[float]]:
    times = [timed(cmd, env)[0] for _ in range(repeats)]
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="Runs per command (median).")
    parser.add_argument("--keep", type=Path, help="Build the workspace here and keep it.")
    args = parser.parse_args()
    data = require(HYMENOPTERA, "the hymenoptera data set")
    weights = require(SCENES_WEIGHTS, "the ResNet-18 scenes weights")
    base = args.keep or Path(tempfile.mkdtemp(prefix="a2m-bench-compare-"))
    base.mkdir(parents=True, exist_ok=True)
    home = base / "ws"
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    env.update({"A2M_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "120"})
    try:
        print(f"Setting up in {base}: two versions of hymenoptera, one probe run each.")
        half = class_folders(data, base / "half", every=2)
        whole = class_folders(data, base / "whole", every=1)
        timed([*A2M, "init", str(home)], env)
        for folder in (half, whole):
            timed([*A2M, "import-folder", str(folder), "--splits", "hash"], env)
        runs = []
        for version in (1, 2):
            cmd = [*A2M, "train", "--version", str(version), "--weights", str(weights), "--json"]
            runs.append(json.loads(timed(cmd, env)[1])["id"])
        # Every command once before timing: the embedding cache and the frozen trunk are warm,
        # as they are for a user after training.
        timed([*A2M, "compare", "--no-plots"], env)
        rows: list[tuple[str, float, list[float], float, str]] = []

        compare_s, compare_all = median_of(args.repeats, [*A2M, "compare"], env)
        evaluate_cmd = [*A2M, "evaluate", str(runs[0]), "--version", "2", "--split", "test"]
        evaluate_s, _ = median_of(args.repeats, evaluate_cmd, env)
        by_hand = (
            evaluate_s
            + median_of(args.repeats, [*A2M, "evaluate", str(runs[1]), "--split", "test"], env)[0]
        )
        rows.append(("compare (2 versions)", compare_s, compare_all, by_hand, "2x a2m evaluate"))

        curve_repeats = max(1, min(args.repeats, 3))
        curve_s, curve_all = median_of(curve_repeats, [*A2M, "curve", "2"], env)
        train_cmd = [*A2M, "train", "--version", "2", "--weights", str(weights)]
        one_train, _ = median_of(curve_repeats, train_cmd, env)
        rows.append(
            (
                "curve (4 fractions x 3)",
                curve_s,
                curve_all,
                one_train * CURVE_POINTS,
                f"{CURVE_POINTS}x a2m train (cached, {one_train:.1f} s each)",
            )
        )

        report_s, report_all = median_of(args.repeats, [*A2M, "report", str(runs[1])], env)
        rows.append(("report (1 run)", report_s, report_all, evaluate_s, "1x a2m evaluate"))

        print()
        print(f"{'command':<26}{'median':>9}{'target':>9}{'':>6}{'by hand':>10}  (how)")
        for name, median, every, baseline, how in rows:
            key = name.split()[0]
            target = TARGETS[key]
            verdict = "met" if median <= target else "MISSED"
            print(
                f"{name:<26}{median:>8.2f}s{target:>8.1f}s {verdict:<6}{baseline:>9.2f}s  ({how})"
            )
            print(f"{'':<26}runs: {', '.join(f'{t:.2f}' for t in every)}")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
