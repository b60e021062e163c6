"""Training benchmark: from a folder of images to a trained model, whole `a2m` processes.

    .venv/bin/python bench/train.py [--repeats 3] [--photos 2000] [--sections hymenoptera,photos]
                                    [--baseline-repeats 1] [--skip-baseline] [--skip-before]

Every step is timed as whole processes, so wall times include Python, the imports (torch,
scikit-learn) and the store's start-up, as a user waits for them. Medians over
--repeats, every repeat in brackets, the sides of each ratio measured in the same run and
interleaved repeat by repeat so that they see the same machine load.

hymenoptera (the shared photos, weights/resnet18-scenes.pth):
- cold: `a2m init` + `a2m import-folder DATA` + `a2m train --weights W` in a fresh workspace
  (default precision: auto), and the same with `--precision fp32`;
- grown: a workspace that trained on half the training photos, then `a2m import-folder DATA` +
  `a2m train` (each repeat from a copy of the half-trained workspace);
- cached: `a2m train --seed i` again in the cold workspace, every feature cached;
- baseline (bench/baseline_train.py): plain PyTorch, frozen ResNet-18 run on every image every
  epoch, 10 epochs; targets: cold at least 10x faster, grown at least 25x;
- before: the same cold, grown and cached steps with the code before issue 21 (commit BEFORE, a
  git worktree at /tmp/a2m-before, run as `python -m annotate2model` with PYTHONPATH on it), and
  its val accuracy for seeds 0.. (its probe's head depended on the seed).

photos (--photos N generated photo-sized JPEGs, bench/photos.py):
- cold and cached `a2m train` with `--precision fp32` and the default precision (auto: bf16
  autocast on a CPU with native bf16); torch extracts either way (one engine);
- the engines in one process (OMP_WAIT_POLICY=PASSIVE as `a2m train` sets it): extraction
  (`extract_features`, decode included, a2m's own decode workers and batch size, a fresh cache)
  against the bare forward pass of the same network (pre-decoded uint8 batches), for torch in
  fp32 and in bf16, interleaved round by round; then
  the probe's `fit_head` on the cached features.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _shared import HYMENOPTERA, SCENES_WEIGHTS, require, run_as_installed
from photos import photo_set

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
# What a user types: the installed console script (python -m where there is none).
_SCRIPT = Path(PY).parent / "a2m"
A2M = [str(_SCRIPT)] if _SCRIPT.is_file() else [PY, "-m", "annotate2model"]
# The code before issue 21 (the torch-free probe path, the numpy head).
BEFORE = "51c6a5c"
BEFORE_TREE = Path(tempfile.gettempdir()) / "a2m-before"
TARGETS = {"cold": 10.0, "grown": 25.0}
# Pre-decoded images the bare forward pass runs on (cycled), and how many passes over them.
BARE_IMAGES = 320
BARE_PASSES = 1
FIT_REPEATS = 5


@dataclass(frozen=True)
class Cli:
    """One version of the code: how to start its `a2m`, and where its processes run."""

    name: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    # The working folder: the old code is found through PYTHONPATH, and a working folder that
    # holds this checkout's annotate2model would win over it.
    cwd: Path | None = None


AFTER = Cli("after", tuple(A2M))


@dataclass
class Step:
    """One timed step: the wall seconds of its whole processes, each process's share, and the
    `a2m train --json` output of its training run."""

    seconds: float
    parts: dict[str, float]
    run: dict[str, Any] = field(default_factory=dict)
    engine: str = ""
    load: float = 0.0

    @property
    def val_accuracy(self) -> float:
        return float(self.run.get("metrics", {}).get("val_accuracy", float("nan")))

    @property
    def extraction(self) -> dict[str, Any]:
        timing = self.run.get("metrics", {}).get("timing") or {}
        found: dict[str, Any] = timing.get("extraction") or {}
        return found

    def breakdown(self) -> dict[str, float]:
        """Where the `a2m train` process spent its wall time."""
        timing = self.run["metrics"].get("timing") or {}
        in_run = float(timing.get("seconds") or 0.0)
        extraction = float(self.extraction.get("seconds") or 0.0)
        head = sum(float(row.get("seconds") or 0.0) for row in self.run.get("history") or [])
        return {
            "outside the run (start-up, imports, exit)": self.parts["train"] - in_run,
            "extraction": extraction,
            "head": head,
            "rest of the run": in_run - extraction - head,
        }


def timed(
    cmd: Sequence[str], env: dict[str, str], cwd: Path | None = None
) -> tuple[float, str, str]:
    """(wall seconds, stdout, stderr) of one whole process; a failure stops the benchmark."""
    started = time.perf_counter()
    proc = subprocess.run(list(cmd), env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout, proc.stderr


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}


def a2m_env(home: Path, cli: Cli | None = None) -> dict[str, str]:
    """The environment of an `a2m` process on the workspace `home` (bench/finetune.py too)."""
    extra = dict(cli.env) if cli else {}
    return {**clean_env(), **extra, "A2M_HOME": str(home), "NO_COLOR": "1"}


def run_a2m(cli: Cli, home: Path, *args: str) -> tuple[float, str, str]:
    return timed([*cli.command, *args], a2m_env(home, cli), cli.cwd)


def train(cli: Cli, home: Path, weights: Path, *extra: str) -> tuple[float, dict[str, Any], str]:
    seconds, out, err = run_a2m(cli, home, "train", "--weights", str(weights), "--json", *extra)
    run: dict[str, Any] = json.loads(out)
    return seconds, run, err


def cold(cli: Cli, home: Path, data: Path, weights: Path, *extra: str) -> Step:
    """init + import-folder + train in a fresh workspace, each process timed."""
    init_s, _, _ = run_a2m(cli, home, "init", str(home))
    import_s, _, _ = run_a2m(cli, home, "import-folder", str(data))
    train_s, run, err = train(cli, home, weights, *extra)
    parts = {"init": init_s, "import-folder": import_s, "train": train_s}
    return Step(sum(parts.values()), parts, run, engine(cli, run, err), os.getloadavg()[0])


def grown(cli: Cli, template: Path, home: Path, data: Path, weights: Path) -> Step:
    """A copy of the half-trained workspace, then import-folder (the rest) + train."""
    shutil.copytree(template, home, symlinks=True)
    import_s, _, _ = run_a2m(cli, home, "import-folder", str(data))
    train_s, run, err = train(cli, home, weights)
    parts = {"import-folder": import_s, "train": train_s}
    return Step(sum(parts.values()), parts, run, engine(cli, run, err), os.getloadavg()[0])


def cached(cli: Cli, home: Path, weights: Path, seed: int, *extra: str) -> Step:
    """train again where every feature is cached (another seed)."""
    train_s, run, err = train(cli, home, weights, "--seed", str(seed), *extra)
    engine_name = engine(cli, run, err)
    return Step(train_s, {"train": train_s}, run, engine_name, os.getloadavg()[0])


def engine(cli: Cli, run: dict[str, Any], stderr: str) -> str:
    """Which network extracted the features: torch, in the run's precision."""
    return f"torch {run['config'].get('effective_precision', '?')}"


def half_folder(data: Path, target: Path) -> Path:
    """The same val images and every other training image (symlinks)."""
    for split in ("train", "val"):
        for label_dir in sorted((data / split).iterdir()):
            if not label_dir.is_dir():
                continue
            files = sorted(p for p in label_dir.iterdir() if p.is_file())
            if split == "train":
                files = files[::2]
            out = target / split / label_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                (out / f.name).symlink_to(f)
    return target


def before_cli() -> Cli:
    """The old code from a git worktree of BEFORE (made when missing), checked to be the one
    that imports."""
    if not (BEFORE_TREE / "annotate2model").is_dir():
        print(f"git worktree add {BEFORE_TREE} {BEFORE}...", file=sys.stderr, flush=True)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(BEFORE_TREE), BEFORE],
            check=True,
            capture_output=True,
        )
    import compileall

    # Bytecode kept as an installed copy's is (run_as_installed does the same for this one).
    compileall.compile_dir(BEFORE_TREE / "annotate2model", quiet=1)
    cwd = Path(tempfile.gettempdir())
    cli = Cli(
        f"before ({BEFORE})",
        (PY, "-m", "annotate2model"),
        (("PYTHONPATH", str(BEFORE_TREE)),),
        cwd,
    )
    code = "import annotate2model; print(annotate2model.__file__)"
    env = {**clean_env(), **dict(cli.env)}
    _, out, _ = timed([PY, "-c", code], env, cwd)
    if not Path(out.strip()).is_relative_to(BEFORE_TREE):
        sys.exit(f"the old code does not import from {BEFORE_TREE}: {out.strip()}")
    print(f"before: annotate2model imports from {out.strip()}", file=sys.stderr, flush=True)
    return cli


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def series(steps: Sequence[Step]) -> str:
    """'median [every repeat]' of the steps' wall seconds."""
    values = [s.seconds for s in steps]
    return f"{median(values):.2f} [" + " ".join(f"{v:.2f}" for v in values) + "]"


def numbers(values: Sequence[float], digits: int = 1) -> str:
    return f"{median(values):.{digits}f} [" + " ".join(f"{v:.{digits}f}" for v in values) + "]"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# Hymenoptera: after against the baseline and against before.


@dataclass
class SideResult:
    cold: list[Step] = field(default_factory=list)
    cold_fp32: list[Step] = field(default_factory=list)
    half: list[Step] = field(default_factory=list)
    grown: list[Step] = field(default_factory=list)
    cached: list[Step] = field(default_factory=list)


def hymenoptera(args: argparse.Namespace, base: Path) -> None:
    data, weights = args.data, args.weights
    sides = [AFTER] if args.skip_before else [AFTER, before_cli()]
    results = {cli.name: SideResult() for cli in sides}
    baseline: list[tuple[float, dict[str, Any]]] = []
    if not args.skip_baseline:
        for i in range(args.baseline_repeats):
            progress(f"baseline {i + 1}/{args.baseline_repeats}...")
            cmd = [PY, str(ROOT / "bench" / "baseline_train.py"), str(data), str(weights)]
            seconds, out, _ = timed(cmd, clean_env())
            baseline.append((seconds, json.loads(out.strip().splitlines()[-1])))

    for i in range(args.repeats):
        # Interleaved, the order turned every repeat: both sides see the same load.
        for cli in sides if i % 2 == 0 else sides[::-1]:
            progress(f"{cli.name} cold {i + 1}/{args.repeats}...")
            r = results[cli.name]
            r.cold.append(cold(cli, base / f"{cli.name}-cold-{i}", data, weights))
            if cli is AFTER:
                home = base / f"after-fp32-{i}"
                r.cold_fp32.append(cold(cli, home, data, weights, "--precision", "fp32"))
    half = half_folder(data, base / "half-data")
    for cli in sides:
        progress(f"{cli.name} half...")
        results[cli.name].half.append(cold(cli, base / f"{cli.name}-half", half, weights))
    for i in range(args.repeats):
        for cli in sides if i % 2 == 0 else sides[::-1]:
            progress(f"{cli.name} grown {i + 1}/{args.repeats}...")
            home = base / f"{cli.name}-grown-{i}"
            step = grown(cli, base / f"{cli.name}-half", home, data, weights)
            results[cli.name].grown.append(step)
    for i in range(args.repeats):
        for cli in sides if i % 2 == 0 else sides[::-1]:
            progress(f"{cli.name} cached, seed {i}...")
            home = base / f"{cli.name}-cold-0"
            results[cli.name].cached.append(cached(cli, home, weights, i))
    progress("start-up costs...")
    costs = start_up_costs()
    report_hymenoptera(args, results, baseline, costs, sides)


def start_up_costs(repeats: int = 3) -> dict[str, float]:
    """Fixed costs a process pays: the interpreter, the heavy imports, `a2m --help`."""
    env = clean_env()
    commands = {
        "python": [PY, "-c", "pass"],
        "import torch": [PY, "-c", "import torch"],
        "import torchvision": [PY, "-c", "import torchvision"],
        "import sklearn.linear_model": [PY, "-c", "import sklearn.linear_model"],
        "a2m --help": [*A2M, "--help"],
    }
    return {
        name: median([timed(cmd, env)[0] for _ in range(repeats)]) for name, cmd in commands.items()
    }


def report_hymenoptera(
    args: argparse.Namespace,
    results: dict[str, SideResult],
    baseline: list[tuple[float, dict[str, Any]]],
    costs: dict[str, float],
    sides: list[Cli],
) -> None:
    after = results[AFTER.name]
    base_s = median([s for s, _ in baseline]) if baseline else None
    n_images = after.cold[0].extraction.get("requested", "?")
    print(
        f"\n== 1. {args.data.name} ({n_images} images), {os.cpu_count()} cores: after (this "
        "checkout); whole processes, wall seconds: median [every repeat] =="
    )
    print(
        f"{'step':52} {'engine':17} {'val acc':>7}  {'wall s [repeats]':30} {'vs base':>8} "
        f"{'target':>12}"
    )
    if baseline:
        acc = median([float(b["val_accuracy"]) for _, b in baseline])
        runs = numbers([s for s, _ in baseline], 2)
        print(f"{'baseline: plain PyTorch, 10 epochs':52} {'torch fp32':17} {acc:7.3f}  {runs:30}")
    rows = [
        ("cold: init + import-folder + train", "cold", after.cold),
        ("cold --precision fp32: init + import-folder + train", "cold", after.cold_fp32),
        ("grown: import-folder + train (from half)", "grown", after.grown),
        (f"cached: train, seeds 0-{args.repeats - 1}", "cached", after.cached),
        ("half: init + import-folder + train (grown's start)", "half", after.half),
    ]
    for title, key, steps in rows:
        secs = median([s.seconds for s in steps])
        speed = target = "-"
        if base_s and key in TARGETS:
            ratio = base_s / secs
            speed = f"{ratio:.1f}x"
            target = f">={TARGETS[key]:.0f}x " + ("met" if ratio >= TARGETS[key] else "NOT met")
        acc = median([s.val_accuracy for s in steps])
        print(
            f"{title:52} {steps[0].engine:17} {acc:7.3f}  {series(steps):30} {speed:>8} "
            f"{target:>12}"
        )
    if baseline:
        b = baseline[0][1]
        print(
            f"baseline: {float(b['seconds']):.1f} s inside its process; --baseline-repeats "
            f"{len(baseline)}; best epoch's val acc {float(b['best_val_accuracy']):.3f}"
        )
    print("where the train process's time goes (median repeat, s):")
    for name, steps in (
        ("cold", after.cold),
        ("cold fp32", after.cold_fp32),
        ("grown", after.grown),
        ("cached", after.cached),
    ):
        print(f"  {name:9}: " + describe(middle(steps)))
    print("fixed costs per process (s): " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))

    if len(sides) < 2:
        return
    before = results[sides[1].name]
    print(
        f"\n== 3. {args.data.name}: before ({BEFORE}: torch-free probe path, numpy head) and "
        "after, side by side; the same steps interleaved in this run; wall seconds: median "
        "[every repeat] =="
    )
    print(
        f"{'step':8} {'before':30} {'after':30} {'after/before':>12}  {'vs baseline: before':>19}"
        f" {'after':>6}"
    )
    for name in ("cold", "grown", "cached"):
        b_steps: list[Step] = getattr(before, name)
        a_steps: list[Step] = getattr(after, name)
        b_s, a_s = median([s.seconds for s in b_steps]), median([s.seconds for s in a_steps])
        vs = ("-", "-")
        if base_s and name in TARGETS:
            vs = (f"{base_s / b_s:.1f}x", f"{base_s / a_s:.1f}x")
        print(
            f"{name:8} {series(b_steps):30} {series(a_steps):30} {a_s / b_s:11.2f}x  "
            f"{vs[0]:>19} {vs[1]:>6}"
        )
    print(
        "engines: "
        + ", ".join(f"before {s.engine}" for s in before.cold[:1])
        + ", after "
        + after.cold[0].engine
    )
    print("val accuracy (cached runs, seeds 0..):")
    for label, steps in (("before", before.cached), ("after", after.cached)):
        accs = [s.val_accuracy for s in steps]
        spread = max(accs) - min(accs)
        print(
            f"  {label:6}: "
            + ", ".join(f"seed {i} {a:.3f}" for i, a in enumerate(accs))
            + f" (median {median(accs):.3f}, spread {spread:.3f})"
        )
    print("where before's train process's time goes (median repeat, s):")
    for name, steps in (("cold", before.cold), ("grown", before.grown), ("cached", before.cached)):
        print(f"  {name:9}: " + describe(middle(steps)))


def middle(steps: Sequence[Step]) -> Step:
    """The repeat with the median total (its parts stay consistent)."""
    return sorted(steps, key=lambda s: s.seconds)[(len(steps) - 1) // 2]


def describe(step: Step) -> str:
    parts = ", ".join(f"{k} {v:.2f}" for k, v in step.parts.items())
    inside = ", ".join(f"{k} {v:.2f}" for k, v in step.breakdown().items())
    ex = step.extraction
    return (
        f"{parts}; train = {inside} ({ex.get('computed', 0)} extracted, "
        f"{ex.get('cached', 0)} cached)"
    )


# The photo set: whole processes, then the engines in one process.


def photos(args: argparse.Namespace, base: Path) -> None:
    progress(f"photo set of {args.photos}...")
    folder = photo_set(args.photos)
    weights = args.weights
    modes: dict[str, tuple[str, ...]] = {"fp32": ("--precision", "fp32"), "auto": ()}
    colds: dict[str, list[Step]] = {m: [] for m in modes}
    cacheds: dict[str, list[Step]] = {m: [] for m in modes}
    order = list(modes)
    for i in range(args.repeats):
        for mode in order if i % 2 == 0 else order[::-1]:
            progress(f"photos cold {mode} {i + 1}/{args.repeats}...")
            home = base / f"photos-{mode}-{i}"
            colds[mode].append(cold(AFTER, home, folder, weights, *modes[mode]))
    for i in range(args.repeats):
        for mode in order if i % 2 == 0 else order[::-1]:
            progress(f"photos cached {mode}, seed {i}...")
            home = base / f"photos-{mode}-0"
            cacheds[mode].append(cached(AFTER, home, weights, i, *modes[mode]))
    progress("engines in one process: extraction against the bare forward pass...")
    env = {**clean_env(), "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [PY, __file__, "--engines-worker", str(folder), "--weights", str(weights)]
    _, out, _ = timed([*cmd, "--repeats", str(args.repeats)], env)
    engines: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    report_photos(args, folder, colds, cacheds, engines)


def report_photos(
    args: argparse.Namespace,
    folder: Path,
    colds: dict[str, list[Step]],
    cacheds: dict[str, list[Step]],
    engines: dict[str, Any],
) -> None:
    split = engines["split"]
    print(
        f"\n== 2. {args.photos} photos ({split['train']} train, {split['val']} val, "
        f"{split['classes']} classes; JPEG 500x375 to 800x600 made from the shared photos; "
        f"{folder}), {os.cpu_count()} cores; whole processes, wall seconds: median "
        "[every repeat] =="
    )
    print(
        f"{'step':52} {'engine':17} {'val acc':>7}  {'wall s [repeats]':30} "
        f"{'extraction img/s [repeats]':28}"
    )
    for kind, table in (("cold", colds), ("cached", cacheds)):
        for mode, steps in table.items():
            what = "init + import-folder + train" if kind == "cold" else "train, seeds 0.."
            flag = "--precision fp32" if mode == "fp32" else "auto"
            title = f"{kind} {flag}: {what}"
            acc = median([s.val_accuracy for s in steps])
            rates = [float(s.run.get("images_per_second") or 0.0) for s in steps]
            rate = numbers(rates, 0) if kind == "cold" else "-"
            print(f"{title:52} {steps[0].engine:17} {acc:7.3f}  {series(steps):30} {rate:28}")
    c_fp32 = median([s.seconds for s in colds["fp32"]])
    c_auto = median([s.seconds for s in colds["auto"]])
    print(
        f"cold, whole processes: --precision fp32 ({colds['fp32'][0].engine}) takes "
        f"{c_fp32 / c_auto:.2f}x the time of auto ({colds['auto'][0].engine})"
    )
    print("where the train process's time goes (median repeat, s):")
    for kind, table in (("cold", colds), ("cached", cacheds)):
        for mode, steps in table.items():
            print(f"  {kind} {mode:4}: " + describe(middle(steps)))

    print(
        f"\n== 2b. engines in one process on the same {engines['images']} photos: extraction "
        f"(decode included; batch {engines['batch_size']}, {engines['workers']} decode "
        f"worker(s), a fresh cache each time) against the bare forward pass (the same network "
        f"on {BARE_IMAGES} pre-decoded uint8 images x{BARE_PASSES}); interleaved, "
        f"{engines['rounds']} rounds; img/s: median [every round] =="
    )
    print(
        f"{'engine':18} {'extraction img/s':26} {'bare img/s':26} {'extraction/bare':26} "
        f"{'target':>12}"
    )
    extraction: dict[str, float] = {}
    for name, r in engines["engines"].items():
        ratios = [e / b for e, b in zip(r["extract"], r["bare"], strict=True)]
        share = median(ratios)
        extraction[name] = median(r["extract"])
        pct = f"{100 * share:.0f}% [" + " ".join(f"{100 * v:.0f}" for v in ratios) + "]"
        met = ">=80% " + ("met" if share >= 0.8 else "NOT met")
        print(
            f"{name:18} {numbers(r['extract'], 1):26} {numbers(r['bare'], 1):26} {pct:26} {met:>12}"
        )
    tfp, tbf = (extraction[n] for n in ("torch fp32", "torch bf16"))
    print(f"torch bf16 / fp32 (auto on a CPU with native bf16): extraction {tbf / tfp:.2f}x")
    fit = engines["fit"]
    print(
        f"\n== 2c. the probe's head on the cached features: fit_head alone ({fit['train']} x "
        f"{fit['dim']} train, {fit['val']} val, {split['classes']} classes, {fit['grid']} C "
        f"values), {FIT_REPEATS} fits in one process (the first imports scikit-learn); seconds: "
        "median [every fit] =="
    )
    print(
        f"fit_head: {numbers(fit['seconds'], 3)}; kept C={fit['C']:g}, val acc "
        f"{fit['val_accuracy']:.3f}"
    )
    print(
        "whole cached `a2m train` process: --precision fp32 "
        f"{series(cacheds['fp32'])} s, auto {series(cacheds['auto'])} s"
    )


def engines_worker(folder: Path, weights: Path, rounds: int) -> dict[str, Any]:
    """Extraction against the bare forward pass, torch in fp32 and bf16, in this process."""
    import numpy as np
    import torch

    from annotate2model.training.config import auto_workers, eval_batch_size
    from annotate2model.training.features.backbones import (
        build_trunk,
        read_state_dict,
        trunk_state_from,
    )
    from annotate2model.training.features.embeddings import (
        EmbeddingCache,
        ExtractJob,
        Network,
        extract_features,
        torch_network,
    )
    from annotate2model.training.features.images import Preprocessing, load_image
    from annotate2model.training.fit.head import C_GRID, fit_head

    prep = Preprocessing(256, 224)
    trunk = build_trunk("resnet18")
    trunk.load_state_dict(trunk_state_from("resnet18", read_state_dict(weights), str(weights)))
    trunk.eval()
    cpu = torch.device("cpu")
    networks: dict[str, Network] = {
        "torch fp32": torch_network(trunk, prep, cpu, bf16=False),
        "torch bf16": torch_network(trunk, prep, cpu, bf16=True),
    }
    paths = sorted(p for p in folder.rglob("*.jpg"))
    jobs = [ExtractJob(f"{i:064x}", p, 0) for i, p in enumerate(paths)]
    batch_size, workers = eval_batch_size("cpu"), auto_workers()
    decoded = [load_image(p, prep) for p in paths[:BARE_IMAGES]]
    bare_batches = [
        np.stack(decoded[i : i + batch_size]) for i in range(0, len(decoded), batch_size)
    ]
    # Every batch shape each network will see, run once before any timing.
    rng = np.random.default_rng(0)
    for size in {batch_size, len(jobs) % batch_size or batch_size}:
        warm = rng.integers(0, 256, (size, 224, 224, 3), dtype=np.uint8)
        for run in networks.values():
            run(warm)

    def bare(run: Network) -> float:
        started = time.perf_counter()
        for _ in range(BARE_PASSES):
            for batch in bare_batches:
                run(batch)
        return BARE_PASSES * len(decoded) / (time.perf_counter() - started)

    def extract(run: Network) -> tuple[float, dict[tuple[str, int], Any]]:
        with tempfile.TemporaryDirectory() as tmp:
            cache = EmbeddingCache(Path(tmp))
            try:
                features, stats = extract_features(
                    cache, "k", "bench", jobs, lambda: run, prep, batch_size, workers
                )
            finally:
                cache.close()
        return stats.images_per_second, features

    results: dict[str, dict[str, list[float]]] = {n: {"extract": [], "bare": []} for n in networks}
    kept: dict[str, dict[tuple[str, int], Any]] = {}
    names = list(networks)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            print(f"  round {r + 1}/{rounds}: {name}...", file=sys.stderr, flush=True)
            rate, features = extract(networks[name])
            results[name]["extract"].append(rate)
            results[name]["bare"].append(bare(networks[name]))
            kept.setdefault(name, features)

    tfp = kept["torch fp32"]

    # The probe's head on the fp32 features, split and labelled as import-folder does.
    split_of = {
        job.sha256: (p.parts[-3], p.parent.name) for job, p in zip(jobs, paths, strict=True)
    }
    classes = sorted({label for _, label in split_of.values()})
    rows: dict[str, tuple[list[Any], list[int]]] = {"train": ([], []), "val": ([], [])}
    for (sha, _), vec in sorted(tfp.items()):
        where, label = split_of[sha]
        rows[where][0].append(vec)
        rows[where][1].append(classes.index(label))
    xt, yt = np.stack(rows["train"][0]), np.asarray(rows["train"][1])
    xv, yv = np.stack(rows["val"][0]), np.asarray(rows["val"][1])
    seconds = []
    fit = None
    for _ in range(FIT_REPEATS):
        started = time.perf_counter()
        fit = fit_head(xt, yt, xv, yv, len(classes))
        seconds.append(time.perf_counter() - started)
    assert fit is not None
    best = next(row for row in fit.history if row.get("kept"))
    return {
        "images": len(jobs),
        "batch_size": batch_size,
        "workers": workers,
        "rounds": rounds,
        "engines": results,
        "split": {"train": len(yt), "val": len(yv), "classes": len(classes)},
        "fit": {
            "seconds": seconds,
            "train": len(yt),
            "val": len(yv),
            "dim": int(xt.shape[1]),
            "grid": len(C_GRID),
            "C": fit.C,
            "val_accuracy": float(best["val_accuracy"]),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HYMENOPTERA)
    parser.add_argument("--weights", type=Path, default=SCENES_WEIGHTS)
    parser.add_argument("--repeats", type=int, default=3, help="repeats per step (median)")
    parser.add_argument("--photos", type=int, default=2000, help="size of the photo set")
    parser.add_argument(
        "--sections",
        default="hymenoptera,photos",
        help="which sections run: hymenoptera (with before and the baseline), photos",
    )
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-before", action="store_true")
    parser.add_argument("--engines-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engines_worker:
        print(json.dumps(engines_worker(args.engines_worker, args.weights, args.repeats)))
        return
    run_as_installed()
    require(args.data, "the benchmark's data set")
    require(args.weights, "the benchmark's weights")
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="a2m-bench-train-") as tmp:
        if "hymenoptera" in sections:
            hymenoptera(args, Path(tmp))
        if "photos" in sections and args.photos > 0:
            photos(args, Path(tmp))
    took = time.perf_counter() - started
    print(f"\n(benchmark took {took:.0f} s, load now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
