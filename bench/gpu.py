"""GPU throughput: `a2m train` extraction and fine-tuning against bare loops on the same device.

    .venv/bin/python bench/gpu.py [--data DIR ...] [--weights PATH] [--device cuda] [--epochs 3]

For each data set (default: the shared hymenoptera photos and scenes_1200), in fresh workspaces:
1. probe: `a2m init` + `a2m import-folder` + `a2m train --device D`: extraction images/s as the
   run records it (decode included) and the whole wall time;
2. fine-tune: `a2m train --mode finetune --device D --epochs N`: training images/s as the run
   records it (training images over the fit, its validation passes included);
3. the same fine-tuning under torchrun (`python -m torch.distributed.run --standalone
   --nproc-per-node N -m annotate2model train ...`) with N = 1 (DistributedDataParallel's own
   cost against step 2) and, where the machine has several GPUs, N = all of them (`--processes`);
then, in one process on the same device, ResNet-18 at 224 px, bf16 autocast (where the device has
it) and channels_last, inputs already on the device:
- bare extraction: trunk forward under inference_mode at a2m's accelerator batch size;
- bare fine-tuning: forward + backward + SGD step with layer4 and fc trainable (a2m's default
  `--unfreeze 1`), batch 32.
The gap between the two is decoding, host-to-device copies and a2m's own work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _shared import HYMENOPTERA, SCENES_1200, SCENES_WEIGHTS, require

PY = sys.executable
_SCRIPT = Path(PY).parent / "a2m"
A2M = [str(_SCRIPT)] if _SCRIPT.is_file() else [PY, "-m", "annotate2model"]

BARE = r"""
import json, sys, time
import torch
import torchvision
from annotate2model.training.config import eval_batch_size
from annotate2model.training.features.device import use_bf16

device, seconds = torch.device(sys.argv[1]), float(sys.argv[2])
bf16 = use_bf16(device, "auto")
fmt = torch.channels_last if device.type != "mps" else torch.contiguous_format

def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()

def timed(step, batch):
    for _ in range(3):
        step()
    sync()
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        step()
        n += batch
    sync()
    return n / (time.perf_counter() - t)

def autocast():
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

trunk = torchvision.models.resnet18()
trunk.fc = torch.nn.Identity()
trunk = trunk.to(device).to(memory_format=fmt).eval()
batch = eval_batch_size(device.type)
x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=fmt)

def extract_step():
    with torch.inference_mode(), autocast():
        trunk(x).float()

out = {"device": str(device), "bf16": bf16, "extract_batch": batch}
out["extract"] = timed(extract_step, batch)

model = torchvision.models.resnet18(num_classes=6)
for name, p in model.named_parameters():
    p.requires_grad = name.startswith(("layer4.", "fc."))
model = model.to(device).to(memory_format=fmt).train()
for name, m in model.named_modules():
    if isinstance(m, torch.nn.BatchNorm2d) and not name.startswith("layer4"):
        m.eval()
opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
xb = torch.randn(32, 3, 224, 224, device=device).contiguous(memory_format=fmt)
yb = torch.randint(0, 6, (32,), device=device)
loss_fn = torch.nn.CrossEntropyLoss()

def train_step():
    opt.zero_grad(set_to_none=True)
    with autocast():
        logits = model(xb)
    loss_fn(logits.float(), yb).backward()
    opt.step()

out["finetune"] = timed(train_step, 32)
print(json.dumps(out))
"""


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started, proc.stdout


def a2m_runs(data: Path, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    home = base / data.name
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    env.update({"A2M_HOME": str(home), "NO_COLOR": "1"})
    wall = run([*A2M, "init", str(home)], env)[0]
    wall += run([*A2M, "import-folder", str(data)], env)[0]
    common = ["--weights", str(args.weights), "--device", args.device, "--json"]
    if args.workers is not None:
        common += ["--workers", str(args.workers)]
    seconds, out = run([*A2M, "train", *common], env)
    probe = json.loads(out)
    extraction = probe["metrics"]["timing"]["extraction"]
    seconds_ft, out = run(
        [*A2M, "train", *common, "--mode", "finetune", "--epochs", str(args.epochs)], env
    )
    finetune = json.loads(out)
    ranks = {}
    for n in sorted({1, args.processes}):
        torchrun = [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
        tuned = [*common, "--mode", "finetune", "--epochs", str(args.epochs)]
        wall, out = run([*torchrun, "-m", "annotate2model", "train", *tuned], env)
        row = json.loads(out)
        ranks[n] = {"wall": wall, "ips": row["images_per_second"], "processes": n}
    return {
        "images": extraction["computed"],
        "device": probe["device"],
        "probe_wall_seconds": wall + seconds,
        "probe_val_accuracy": probe["metrics"]["val_accuracy"],
        "extract_images_per_second": probe["images_per_second"],
        "extract_seconds": extraction["seconds"],
        "finetune_wall_seconds": seconds_ft,
        "finetune_val_accuracy": finetune["metrics"]["val_accuracy"],
        "finetune_images_per_second": finetune["images_per_second"],
        "finetune_epoch_seconds": [row["seconds"] for row in finetune["history"]],
        "torchrun": ranks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", help="(repeatable)")
    parser.add_argument("--weights", type=Path, default=SCENES_WEIGHTS)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="a2m's decode workers")
    parser.add_argument("--bare-seconds", type=float, default=10.0)
    parser.add_argument(
        "--processes", type=int, default=None, help="torchrun's ranks (default: every GPU)"
    )
    args = parser.parse_args()
    if args.processes is None:
        count = "import torch; print(torch.cuda.device_count())"
        found = subprocess.run([PY, "-c", count], capture_output=True, text=True, check=True)
        args.processes = max(1, int(found.stdout.strip() or 1))
    datasets = args.data or [HYMENOPTERA, SCENES_1200]
    for data in datasets:
        require(data, f"the data set {data.name}")
    require(args.weights, "the ResNet-18 scenes weights")
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    print(f"bare loops on {args.device}...", file=sys.stderr, flush=True)
    bare = json.loads(run([PY, "-c", BARE, args.device, str(args.bare_seconds)], env)[1])
    results = {}
    with tempfile.TemporaryDirectory(prefix="a2m-bench-gpu-") as tmp:
        for data in datasets:
            print(f"a2m on {data.name}...", file=sys.stderr, flush=True)
            results[data.name] = a2m_runs(data, args, Path(tmp))
    precision = "bf16" if bare["bf16"] else "fp32"
    print(
        f"\nbare ResNet-18 on {bare['device']} ({precision}, channels_last, 224 px): extraction "
        f"{bare['extract']:.0f} img/s (batch {bare['extract_batch']}), fine-tuning "
        f"{bare['finetune']:.0f} img/s (batch 32, layer4 + fc)"
    )
    for name, r in results.items():
        print(
            f"{name} ({r['images']} images) on {r['device']}:\n"
            f"  extraction {r['extract_images_per_second']:.0f} img/s = "
            f"{100 * r['extract_images_per_second'] / bare['extract']:.0f}% of bare "
            f"({r['extract_seconds']:.2f} s); init + import + probe {r['probe_wall_seconds']:.1f} s"
            f" wall, val acc {r['probe_val_accuracy']:.3f}\n"
            f"  fine-tuning {r['finetune_images_per_second']:.0f} img/s = "
            f"{100 * r['finetune_images_per_second'] / bare['finetune']:.0f}% of bare; "
            f"{args.epochs} epochs "
            + ", ".join(f"{s:.2f}" for s in r["finetune_epoch_seconds"])
            + f" s; train process {r['finetune_wall_seconds']:.1f} s wall, "
            f"val acc {r['finetune_val_accuracy']:.3f}"
        )
        for n, t in r["torchrun"].items():
            print(
                f"  torchrun, {n} process(es): fine-tuning {t['ips']:.0f} img/s = "
                f"{t['ips'] / r['finetune_images_per_second']:.2f}x one plain process; "
                f"{t['wall']:.1f} s wall"
            )
    print("\n" + json.dumps({"bare": bare, "a2m": results}))


if __name__ == "__main__":
    main()
