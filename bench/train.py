"""Training benchmark: the classic plain-PyTorch loop against `a2m train`, side by side.

    .venv/bin/python bench/train.py [--data DIR] [--weights PATH] [--skip-baseline]

Every step runs as its own process, so wall times include start-up (Python, torch, the store):
1. baseline (bench/baseline_train.py): frozen ResNet-18, backbone forward on every image, 10 epochs;
2. `a2m train` cold (probe, defaults) on the same images, empty cache;
3. retrain: a version with half the training images, train; the full version, train again
   (--repeats times from copies of the half-trained workspace; median);
4. probes on the full version with other learning rates (everything cached; median).
Then: embedding throughput (decode included) next to the bare `model(x)` loop measured in the
same process (processes alternating between OpenMP's default spinning and the PASSIVE wait policy
that `a2m train` sets; medians), and probe accuracy from bf16 features against fp32 features.
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
from typing import Any

from _shared import HYMENOPTERA, SCENES_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]


PY = sys.executable
A2M = [PY, "-m", "annotate2model"]

# Embedding extraction (decode included, through the library on a fresh cache, with a2m's own
# decode workers and batch size) interleaved with the bare model(x) loop in one process, so that
# both see the same machine load. Run under both OpenMP wait policies (`a2m train` sets PASSIVE).
THROUGHPUT = r"""
import json, sys, tempfile, time
from pathlib import Path
import torch
from annotate2model.training.backbones import build_trunk, load_state_dict, resolve_weights
from annotate2model.training.backbones import trunk_state_from
from annotate2model.training.config import RunConfig
from annotate2model.training.data import Preprocessing
from annotate2model.training.embeddings import EmbeddingCache, ExtractJob, extract
from annotate2model.training.runner import default_workers

data, weights, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
source = resolve_weights("resnet18", weights, 0)
state = trunk_state_from("resnet18", load_state_dict("resnet18", source), weights)
trunk = build_trunk("resnet18")
trunk.load_state_dict(state)
trunk.eval()
paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".gif"))
jobs = [ExtractJob(f"{i:064x}", p, 0) for i, p in enumerate(paths)]
prep = Preprocessing(256, 224)
batch_size = RunConfig().eval_batch_for("cpu")

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
                           bf16, batch_size=batch_size, workers=default_workers())
        cache.close()
    return stats.images_per_second

out = {"images": len(jobs), "batch_size": batch_size, "workers": default_workers()}
out["bare_bf16_cl_64"] = bare(True, True, 64)
out["embed_bf16"] = embed(True)
out["bare_bf16_cl_32"] = bare(True, True, 32)
out["bare_fp32"] = bare(False, False)
out["bare_fp32_cl"] = bare(True, False)
out["embed_fp32"] = embed(False)
print(json.dumps(out))
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def workspace(base: Path, name: str) -> dict[str, str]:
    root = base / name
    subprocess.run([*A2M, "init", str(root)], check=True, capture_output=True)
    env = {**os.environ, "A2M_HOME": str(root), "NO_COLOR": "1"}
    return env


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


def train(env: dict[str, str], weights: Path, *extra: str) -> tuple[float, dict[str, Any]]:
    seconds, out = timed([*A2M, "train", "--weights", str(weights), "--json", *extra], env)
    run: dict[str, Any] = json.loads(out)
    return seconds, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HYMENOPTERA)
    parser.add_argument("--weights", type=Path, default=SCENES_WEIGHTS)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--bare-seconds", type=float, default=5.0)
    parser.add_argument("--throughput-repeats", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of the grown and cached steps (median)"
    )
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="a2m-bench-train-") as tmp:
        base = Path(tmp)
        if not args.skip_baseline:
            print("baseline (plain PyTorch, 10 epochs)...", file=sys.stderr, flush=True)
            seconds, out = timed(
                [PY, str(ROOT / "bench" / "baseline_train.py"), str(args.data), str(args.weights)],
                dict(os.environ),
            )
            b = json.loads(out.strip().splitlines()[-1])
            results["baseline"] = {"seconds": seconds, "val_accuracy": b["val_accuracy"]}

        print("a2m cold...", file=sys.stderr, flush=True)
        full = workspace(base, "full")
        import_s, _ = timed([*A2M, "import-folder", str(args.data)], full)
        seconds, run = train(full, args.weights)
        metrics = run["metrics"]
        extraction = metrics["timing"]["extraction"]
        results["cold"] = {
            "seconds": seconds,
            "val_accuracy": metrics["val_accuracy"],
            "import_seconds": import_s,
            "extracted": extraction["computed"],
            "embed_images_per_second": run["images_per_second"],
        }

        print("a2m cached re-run (another lr)...", file=sys.stderr, flush=True)
        times = []
        for lr in ("0.003", "0.002", "0.004")[: args.repeats]:
            seconds, run = train(full, args.weights, "--lr", lr)
            times.append(seconds)
        results["cached"] = {
            "seconds": statistics.median(times),
            "all_seconds": times,
            "val_accuracy": run["metrics"]["val_accuracy"],
        }

        print("a2m fp32 features...", file=sys.stderr, flush=True)
        seconds, run = train(full, args.weights, "--precision", "fp32")
        results["fp32_features"] = {
            "seconds": seconds,
            "val_accuracy": run["metrics"]["val_accuracy"],
            "embed_images_per_second": run["images_per_second"],
        }

        print("a2m retrain after growth...", file=sys.stderr, flush=True)
        grow = workspace(base, "grow")
        half = half_folder(args.data, base / "half")
        timed([*A2M, "import-folder", str(half)], grow)
        seconds, run = train(grow, args.weights)
        results["half"] = {
            "seconds": seconds,
            "val_accuracy": run["metrics"]["val_accuracy"],
        }
        # Each repeat starts from a copy of the workspace as the half run left it.
        template = Path(grow["A2M_HOME"])
        times = []
        for i in range(args.repeats):
            root = base / f"grow-{i}"
            shutil.copytree(template, root, symlinks=True)
            env = {**grow, "A2M_HOME": str(root)}
            timed([*A2M, "import-folder", str(args.data)], env)
            seconds, run = train(env, args.weights)
            times.append(seconds)
        ex = run["metrics"]["timing"]["extraction"]
        results["grown"] = {
            "seconds": statistics.median(times),
            "all_seconds": times,
            "val_accuracy": run["metrics"]["val_accuracy"],
            "extracted": ex["computed"],
            "cached": ex["cached"],
        }

        print("throughput: extraction vs bare model(x)...", file=sys.stderr, flush=True)
        runs: dict[str, list[dict[str, float]]] = {"spin": [], "passive": []}
        for _ in range(args.throughput_repeats):
            for policy in ("spin", "passive"):
                env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                if policy == "passive":
                    env["OMP_WAIT_POLICY"] = "PASSIVE"
                cmd = [PY, "-c", THROUGHPUT, str(args.data), str(args.weights)]
                _, out = timed([*cmd, str(args.bare_seconds)], env)
                runs[policy].append(json.loads(out))
        throughput = {
            f"{key}_{policy}": statistics.median(r[key] for r in rows)
            for policy, rows in runs.items()
            for key in rows[0]
        }
        throughput["repeats"] = args.throughput_repeats
    report(results, throughput)


def report(results: dict[str, dict[str, Any]], t: dict[str, float]) -> None:
    base = results.get("baseline")
    base_s = float(base["seconds"]) if base else None
    rows = [
        ("baseline: plain PyTorch, 10 epochs", "baseline"),
        ("a2m train, cold (probe, defaults)", "cold"),
        ("a2m train, half the training images", "half"),
        ("a2m train, grown to the full set", "grown"),
        ("a2m train, cached, another lr", "cached"),
        ("a2m train, fp32 features (cold)", "fp32_features"),
    ]
    print(f"\n{'step':40} {'val acc':>8} {'wall s':>8} {'vs baseline':>12}")
    for title, key in rows:
        r = results.get(key)
        if r is None:
            continue
        seconds = float(r["seconds"])
        ratio = f"{base_s / seconds:.1f}x" if base_s and key != "baseline" else "-"
        spread = ""
        if "all_seconds" in r:
            spread = "  (median of " + ", ".join(f"{v:.2f}" for v in r["all_seconds"]) + ")"
        print(f"{title:40} {float(r['val_accuracy']):8.3f} {seconds:8.2f} {ratio:>12}{spread}")
    # The best bare loop over batch sizes and OpenMP wait policies, against the extraction as
    # `a2m train` runs it (PASSIVE); the extraction under the default policy is shown as well.
    bare = {
        f"{p}, batch {b}": t[f"bare_bf16_cl_{b}_{p}"] for p in ("spin", "passive") for b in (32, 64)
    }
    best_name = max(bare, key=lambda k: bare[k])
    best = bare[best_name]
    print(
        f"\nbare model(x), ResNet-18 224 px, bf16 + channels_last, {os.cpu_count()} cores "
        f"(medians of {t['repeats']:.0f} processes per policy): "
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
    cold = results["cold"]
    print(f"a2m cold run's own extraction: {cold['embed_images_per_second']:.0f} img/s")
    acc_bf16 = float(cold["val_accuracy"])
    acc_fp32 = float(results["fp32_features"]["val_accuracy"])
    print(
        f"probe val accuracy from bf16 features {acc_bf16:.3f} vs fp32 features {acc_fp32:.3f} "
        f"(difference {100 * (acc_bf16 - acc_fp32):+.1f} points)"
    )
    grown = results["grown"]
    print(
        f"grown retrain extracted {grown['extracted']} new images, reused {grown['cached']} cached"
    )
    print("\n" + json.dumps({"results": results, "throughput": t}))


if __name__ == "__main__":
    main()
