"""Training benchmark: from a folder of images to a trained model, plain PyTorch against `a2m`.

    .venv/bin/python bench/train.py [--data DIR] [--weights PATH] [--repeats 3]

Both sides start from the same folder of photos and end with a trained model; every step is its
own process, so wall times include Python, torch and store start-up, as a user waits for them:
- baseline (bench/baseline_train.py): the classic loop, frozen ResNet-18 run on every image every
  epoch, 10 epochs (--baseline-repeats runs, 1 by default: it is slow);
- cold: `a2m init` + `a2m import-folder DATA` + `a2m train` in a fresh workspace;
- grown: a workspace that trained on half the training images, then `a2m import-folder DATA` +
  `a2m train` (each repeat from a copy of the half-trained workspace);
- cached: `a2m train` with another learning rate where every feature is cached (nothing to
  import; absolute time only, no ratio: the baseline has no such step);
- fp32: the cold path in its own fresh workspace with `--precision fp32`.
cold, grown and cached are medians of --repeats; every time is printed. Targets: cold at least 10x
faster than the baseline, grown at least 25x. Then where the time goes (start-up, imports,
extraction, head training) and extraction throughput against a bare model(x) loop.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _shared import HYMENOPTERA, SCENES_WEIGHTS, require, run_as_installed

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
# What a user types: the installed console script (python -m where there is none).
_SCRIPT = Path(PY).parent / "a2m"
A2M = [str(_SCRIPT)] if _SCRIPT.is_file() else [PY, "-m", "annotate2model"]
TARGETS = {"cold": 10.0, "grown": 25.0}

# Embedding extraction (decode included, through the library on a fresh cache, with a2m's own
# decode workers and batch size) interleaved with the bare model(x) loop in one process, so that
# both see the same machine load. Run under both OpenMP wait policies (`a2m train` sets PASSIVE).
THROUGHPUT = r"""
import json, sys, tempfile, time
from pathlib import Path
import torch
from annotate2model.training.backbones import build_trunk, load_state_dict, resolve_weights
from annotate2model.training.backbones import trunk_state_from
from annotate2model.training.config import auto_workers, eval_batch_size
from annotate2model.training.embeddings import EmbeddingCache, ExtractJob, extract
from annotate2model.training.images import Preprocessing

data, weights, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
source = resolve_weights("resnet18", weights, 0)
state = trunk_state_from("resnet18", load_state_dict("resnet18", source), weights)
trunk = build_trunk("resnet18")
trunk.load_state_dict(state)
trunk.eval()
paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".gif"))
jobs = [ExtractJob(f"{i:064x}", p, 0) for i, p in enumerate(paths)]
prep = Preprocessing(256, 224)
batch_size = eval_batch_size("cpu")

def bare(cl, bf16, batch=64):
    fmt = torch.channels_last if cl else torch.contiguous_format
    m = trunk.to(memory_format=fmt)
    x = torch.randn(batch, 3, 224, 224)
    x = x.contiguous(memory_format=torch.channels_last) if cl else x
    def step():
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                m(x)
        else:
            m(x)
    with torch.inference_mode():
        step()
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            step()
            n += batch
        return n / (time.perf_counter() - t)

def embed(bf16):
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp))
        _, stats = extract(cache, "k", "bench", jobs, lambda: trunk, prep, torch.device("cpu"),
                           bf16, batch_size=batch_size, workers=auto_workers())
        cache.close()
    return stats.images_per_second

out = {"images": len(jobs), "batch_size": batch_size, "workers": auto_workers()}
out["bare_bf16_cl_64"] = bare(True, True, 64)
out["embed_bf16"] = embed(True)
out["bare_bf16_cl_32"] = bare(True, True, 32)
out["bare_fp32"] = bare(False, False)
out["bare_fp32_cl"] = bare(True, False)
out["embed_fp32"] = embed(False)
print(json.dumps(out))
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str, str]:
    """(wall seconds, stdout, stderr) of one whole process; a failure stops the benchmark."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout, proc.stderr


def a2m_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    return {**env, "A2M_HOME": str(home), "NO_COLOR": "1"}


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


def train(home: Path, weights: Path, *extra: str) -> tuple[float, dict[str, Any]]:
    cmd = [*A2M, "train", "--weights", str(weights), "--json", *extra]
    seconds, out, _ = timed(cmd, a2m_env(home))
    run: dict[str, Any] = json.loads(out)
    return seconds, run


def breakdown(run: dict[str, Any], train_s: float) -> dict[str, float]:
    """Where one `a2m train` process spent its wall time."""
    timing = run["metrics"].get("timing") or {}
    in_run = float(timing.get("seconds") or 0.0)
    extraction = float((timing.get("extraction") or {}).get("seconds") or 0.0)
    head = sum(float(row.get("seconds") or 0.0) for row in run.get("history") or [])
    return {
        "process_outside_run": train_s - in_run,
        "extraction": extraction,
        "epochs": head,
        "rest_of_run": in_run - extraction - head,
    }


def from_folder(
    base: Path, name: str, data: Path, weights: Path, *extra: str
) -> tuple[Path, dict[str, Any]]:
    """init + import-folder + train in a fresh workspace: each process timed."""
    home = base / name
    init_s, _, _ = timed([*A2M, "init", str(home)], a2m_env(home))
    import_s, _, _ = timed([*A2M, "import-folder", str(data)], a2m_env(home))
    train_s, run = train(home, weights, *extra)
    ex = run["metrics"]["timing"]["extraction"] or {}
    row = {
        "seconds": init_s + import_s + train_s,
        "load": os.getloadavg()[0],
        "init_seconds": init_s,
        "import_seconds": import_s,
        "train_seconds": train_s,
        "val_accuracy": run["metrics"]["val_accuracy"],
        "extracted": ex.get("computed"),
        "cached": ex.get("cached"),
        "embed_images_per_second": run["images_per_second"],
        "precision": run["config"].get("effective_precision", "?"),
        "breakdown": breakdown(run, train_s),
    }
    return home, row


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat with the median total (its parts stay consistent); every total kept."""
    ordered = sorted(rows, key=lambda r: float(r["seconds"]))
    row = dict(ordered[(len(ordered) - 1) // 2])
    row["seconds"] = statistics.median(float(r["seconds"]) for r in rows)
    row["all_seconds"] = [float(r["seconds"]) for r in rows]
    return row


def start_up_costs(repeats: int = 3) -> dict[str, Any]:
    """Fixed costs every process pays: the interpreter, torch, torchvision, `a2m --help`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    commands = {
        "python": [PY, "-c", "pass"],
        "import torch": [PY, "-c", "import torch"],
        # As a2m imports it: without torch._dynamo (training/vision.py).
        "import torchvision": [
            PY,
            "-c",
            "import torch; from annotate2model.training.vision import import_torchvision; "
            "import_torchvision()",
        ],
        "a2m --help": [*A2M, "--help"],
    }
    out: dict[str, Any] = {}
    for name, cmd in commands.items():
        out[name] = statistics.median(timed(cmd, env)[0] for _ in range(repeats))
    # The heaviest packages that importing the training code loads (python -X importtime):
    # cumulative time of each package's own import line (they nest: torch includes numpy when
    # it loads it first), and the self time of annotate2model's modules.
    code = "import annotate2model.training.runner"
    _, _, err = timed([PY, "-X", "importtime", "-c", code], env)
    roots: dict[str, int] = {}
    own = 0
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
        if not m:
            continue
        name = m.group(3)
        if name.split(".")[0] == "annotate2model":
            own += int(m.group(1))
        elif "." not in name and not name.startswith("_"):
            roots[name] = max(roots.get(name, 0), int(m.group(2)))
    heaviest = sorted(roots.items(), key=lambda kv: -kv[1])[:6]
    out["imports"] = {**dict(heaviest), "annotate2model (own modules)": own}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HYMENOPTERA)
    parser.add_argument("--weights", type=Path, default=SCENES_WEIGHTS)
    parser.add_argument("--repeats", type=int, default=3, help="cold, grown, cached runs (median)")
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--bare-seconds", type=float, default=5.0)
    parser.add_argument("--throughput-repeats", type=int, default=1)
    args = parser.parse_args()
    run_as_installed()
    require(args.data, "the benchmark's data set")
    require(args.weights, "the benchmark's weights")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="a2m-bench-train-") as tmp:
        base = Path(tmp)
        if not args.skip_baseline:
            rows = []
            for i in range(args.baseline_repeats):
                print(f"baseline {i + 1}/{args.baseline_repeats}...", file=sys.stderr, flush=True)
                cmd = [PY, str(ROOT / "bench" / "baseline_train.py"), str(args.data)]
                seconds, out, _ = timed([*cmd, str(args.weights)], dict(os.environ))
                b = json.loads(out.strip().splitlines()[-1])
                rows.append(
                    {
                        "seconds": seconds,
                        "load": os.getloadavg()[0],
                        "val_accuracy": b["val_accuracy"],
                        "in_process_seconds": b["seconds"],
                    }
                )
            results["baseline"] = median_row(rows)

        cold_rows = []
        full_home: Path | None = None
        for i in range(args.repeats):
            print(f"a2m cold {i + 1}/{args.repeats}...", file=sys.stderr, flush=True)
            home, row = from_folder(base, f"cold-{i}", args.data, args.weights)
            full_home = full_home or home
            cold_rows.append(row)
        results["cold"] = median_row(cold_rows)

        print("a2m fp32 features, cold...", file=sys.stderr, flush=True)
        _, results["fp32"] = from_folder(
            base, "fp32", args.data, args.weights, "--precision", "fp32"
        )

        print("a2m cached re-runs (other learning rates)...", file=sys.stderr, flush=True)
        assert full_home is not None
        cached_rows = []
        for lr in ("0.003", "0.002", "0.004", "0.005", "0.006")[: args.repeats]:
            seconds, run = train(full_home, args.weights, "--lr", lr)
            cached_rows.append(
                {
                    "seconds": seconds,
                    "load": os.getloadavg()[0],
                    "val_accuracy": run["metrics"]["val_accuracy"],
                    "breakdown": breakdown(run, seconds),
                }
            )
        results["cached"] = median_row(cached_rows)

        print("a2m half, then grown...", file=sys.stderr, flush=True)
        half = half_folder(args.data, base / "half-data")
        template, results["half"] = from_folder(base, "half", half, args.weights)
        grown_rows = []
        for i in range(args.repeats):
            home = base / f"grown-{i}"
            shutil.copytree(template, home, symlinks=True)
            import_s, _, _ = timed([*A2M, "import-folder", str(args.data)], a2m_env(home))
            train_s, run = train(home, args.weights)
            ex = run["metrics"]["timing"]["extraction"] or {}
            grown_rows.append(
                {
                    "seconds": import_s + train_s,
                    "load": os.getloadavg()[0],
                    "import_seconds": import_s,
                    "train_seconds": train_s,
                    "val_accuracy": run["metrics"]["val_accuracy"],
                    "extracted": ex.get("computed"),
                    "early": ex.get("early"),
                    "cached": ex.get("cached"),
                    "breakdown": breakdown(run, train_s),
                }
            )
        results["grown"] = median_row(grown_rows)

        print("start-up costs...", file=sys.stderr, flush=True)
        costs = start_up_costs()

        throughput: dict[str, float] = {}
        if not args.skip_throughput:
            print("throughput: extraction vs bare model(x)...", file=sys.stderr, flush=True)
            throughput = measure_throughput(args)
    report(results, costs, throughput, args)


def measure_throughput(args: argparse.Namespace) -> dict[str, float]:
    runs: dict[str, list[dict[str, float]]] = {"spin": [], "passive": []}
    for _ in range(args.throughput_repeats):
        for policy in ("spin", "passive"):
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy == "passive":
                env["OMP_WAIT_POLICY"] = "PASSIVE"
            cmd = [PY, "-c", THROUGHPUT, str(args.data), str(args.weights)]
            _, out, _ = timed([*cmd, str(args.bare_seconds)], env)
            runs[policy].append(json.loads(out))
    throughput = {
        f"{key}_{policy}": statistics.median(r[key] for r in rows)
        for policy, rows in runs.items()
        for key in rows[0]
    }
    throughput["repeats"] = args.throughput_repeats
    return throughput


def _times(r: dict[str, Any]) -> str:
    values = r.get("all_seconds") or [r["seconds"]]
    if len(values) == 1:
        return "1 run"
    return f"median of {len(values)}: " + ", ".join(f"{v:.1f}" for v in values)


def report(
    results: dict[str, dict[str, Any]],
    costs: dict[str, Any],
    t: dict[str, float],
    args: argparse.Namespace,
) -> None:
    base = results.get("baseline")
    base_s = float(base["seconds"]) if base else None
    rows = [
        ("baseline: plain PyTorch, 10 epochs", "baseline"),
        ("a2m cold: init + import-folder + train", "cold"),
        ("a2m grown: import-folder + train", "grown"),
        ("a2m cached: train, another lr", "cached"),
        ("a2m fp32 cold: init + import + train", "fp32"),
        ("a2m half: init + import + train", "half"),
    ]
    print(
        f"\n{args.data.name}, {os.cpu_count()} cores; every step a whole process; load: the "
        "1-minute load average when the step ended (a busy machine makes every figure noisy)"
    )
    header = (
        f"{'step':42} {'val acc':>7} {'wall s':>7} {'speed-up':>9} {'target':>7} {'load':>5}  runs"
    )
    print(header)
    verdicts = []
    for title, key in rows:
        r = results.get(key)
        if r is None:
            continue
        seconds = float(r["seconds"])
        speed, target = "-", "-"
        # Ratios only where both sides go from the folder to a model (not cached, not half).
        if key in ("cold", "grown", "fp32") and base_s:
            speed = f"{base_s / seconds:.1f}x"
        if key in TARGETS and base_s:
            ratio = base_s / seconds
            target = f">={TARGETS[key]:.0f}x"
            met = "met" if ratio >= TARGETS[key] else "NOT met"
            verdicts.append(f"{key}: {ratio:.1f}x against a target of {TARGETS[key]:.0f}x: {met}")
        acc = float(r["val_accuracy"])
        load = f"{float(r['load']):.1f}" if "load" in r else "-"
        print(f"{title:42} {acc:7.3f} {seconds:7.2f} {speed:>9} {target:>7} {load:>5}  {_times(r)}")
    for line in verdicts:
        print(line)
    if base:
        runs = len(base["all_seconds"])
        print(
            f"baseline: {float(base['in_process_seconds']):.1f} s inside its process, "
            f"{float(base['seconds']) - float(base['in_process_seconds']):.1f} s start-up and exit"
            + (" (one run: it is slow; --baseline-repeats N for a median)" if runs == 1 else "")
        )

    print("\nwhere the time goes (median repeat; seconds):")
    for key in ("cold", "grown", "cached"):
        r = results[key]
        b = r["breakdown"]
        parts = [f"init {r['init_seconds']:.2f}"] if "init_seconds" in r else []
        if "import_seconds" in r:
            parts.append(f"import-folder {r['import_seconds']:.2f}")
        train_s = r.get("train_seconds", r["seconds"])
        parts.append(
            f"train {train_s:.2f} = start-up/imports/exit {b['process_outside_run']:.2f}"
            f" + extraction {b['extraction']:.2f} + head epochs {b['epochs']:.2f}"
            f" + rest of the run {b['rest_of_run']:.2f}"
        )
        extra = ""
        if r.get("extracted") is not None:
            early = (
                f", {r['early']} of them on the early thread (extraction: the wait after)"
                if r.get("early")
                else ""
            )
            extra = f" ({r['extracted']} images extracted{early}, {r['cached']} cached)"
        print(f"  {key}: " + "; ".join(parts) + extra)
    print(
        "  fixed costs per process: "
        + ", ".join(f"{k} {v:.2f}" for k, v in costs.items() if k != "imports")
    )
    print(
        "  import annotate2model.training.runner, heaviest packages (python -X importtime, s): "
        + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in costs["imports"].items())
    )

    cold = results["cold"]
    acc_bf16 = float(cold["val_accuracy"])
    acc_fp32 = float(results["fp32"]["val_accuracy"])
    auto = cold.get("precision", "?")
    print(
        f"\nprecision auto chose {auto} on this machine; probe val accuracy {acc_bf16:.3f} "
        f"(auto) vs fp32 features {acc_fp32:.3f} (difference {100 * (acc_bf16 - acc_fp32):+.1f} "
        f"points); cold extraction {float(cold['embed_images_per_second']):.0f} img/s ({auto}), "
        f"{float(results['fp32']['embed_images_per_second']):.0f} img/s (fp32)"
    )
    if t:
        report_throughput(t)
    print("\n" + json.dumps({"results": results, "start_up": costs, "throughput": t}))


def report_throughput(t: dict[str, float]) -> None:
    # The best bare loop over batch sizes and OpenMP wait policies, against the extraction as
    # `a2m train` runs it (PASSIVE); the extraction under the default policy is shown as well.
    bare = {
        f"{p}, batch {b}": t[f"bare_bf16_cl_{b}_{p}"] for p in ("spin", "passive") for b in (32, 64)
    }
    best_name = max(bare, key=lambda k: bare[k])
    best = bare[best_name]
    print(
        f"bare model(x), ResNet-18 224 px, bf16 + channels_last "
        f"(medians of {t['repeats']:.0f} process(es) per policy): "
        + ", ".join(f"{k} {v:.0f}" for k, v in bare.items())
        + f" img/s; fp32 {t['bare_fp32_spin']:.0f}, fp32 channels_last "
        f"{t['bare_fp32_cl_spin']:.0f} img/s (spin)"
    )
    fp32_best = max(t["bare_fp32_cl_spin"], t["bare_fp32_cl_passive"])
    print(
        f"embedding extraction (batch {t['batch_size_passive']:.0f}, "
        f"{t['workers_passive']:.0f} decode thread(s), decode included), "
        f"{t['images_passive']:.0f} images: bf16 {t['embed_bf16_passive']:.0f} img/s = "
        f"{100 * t['embed_bf16_passive'] / best:.0f}% of the best bare loop ({best_name}); "
        f"under the default spinning policy {t['embed_bf16_spin']:.0f} img/s = "
        f"{100 * t['embed_bf16_spin'] / best:.0f}%; fp32 {t['embed_fp32_passive']:.0f} img/s = "
        f"{100 * t['embed_fp32_passive'] / fp32_best:.0f}% of bare fp32 channels_last"
    )


if __name__ == "__main__":
    main()
