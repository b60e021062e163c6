"""The CUDA paths on a real GPU: bf16 autocast, channels_last inputs from pinned host memory, and a
probe and a fine-tune run through the CLI (`A2M_DEVICE=cuda`, `--device cuda`).

Every test here carries the `gpu` marker: where torch.cuda.is_available() is False they are
skipped with that reason (tests/conftest.py), the one skip allowed under CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import image_bytes

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

CUDA = torch.device("cuda")


def test_auto_picks_cuda_and_bf16_follows_the_device() -> None:
    from annotate2model.errors import InputError
    from annotate2model.training.features.device import device_name, pick_device, use_bf16

    assert pick_device("auto").type == "cuda"
    assert pick_device("cuda").type == "cuda"
    assert device_name(CUDA).startswith("cuda: ")
    supported = torch.cuda.is_bf16_supported()
    assert use_bf16(CUDA, "auto") is supported
    assert use_bf16(CUDA, "fp32") is False
    if supported:
        assert use_bf16(CUDA, "bf16") is True
    else:
        with pytest.raises(InputError, match="lacks bf16"):
            use_bf16(CUDA, "bf16")


def test_bf16_autocast_runs_convolutions_in_bf16_close_to_fp32() -> None:
    from annotate2model.training.features.device import autocast

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3)).to(CUDA)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        with autocast(CUDA, False):
            full = model(x)
        assert full.dtype == torch.float32
        if not torch.cuda.is_bf16_supported():
            return
        with autocast(CUDA, True):
            half = model(x)
    assert half.dtype == torch.bfloat16 and half.device.type == "cuda"
    # bf16 keeps 8 bits of mantissa: close to fp32, not equal to it.
    assert not torch.equal(half.float(), full)
    assert torch.allclose(half.float(), full, atol=0.05, rtol=0.05)


def test_inputs_go_through_pinned_memory_and_land_channels_last() -> None:
    from torch.profiler import ProfilerActivity, profile

    from annotate2model.training.features.data import to_input
    from annotate2model.training.features.images import Preprocessing

    prep = Preprocessing(32, 28)
    arrays = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        x = to_input(arrays, prep, CUDA)
        torch.cuda.synchronize()
    ops = {event.key for event in prof.key_averages()}
    assert any("pin_memory" in op for op in ops), sorted(ops)
    assert x.device.type == "cuda" and x.dtype == torch.float32
    assert x.shape == (4, 3, 28, 28)
    assert x.is_contiguous(memory_format=torch.channels_last)
    on_cpu = to_input(arrays, prep, torch.device("cpu"))
    assert torch.allclose(x.cpu(), on_cpu, atol=1e-5)


def colour_folder(root: Path, per_class: int) -> Path:
    """train/ and val/ of two classes any backbone separates: reddish and bluish photos."""
    for split, count, offset in (("train", per_class, 0), ("val", per_class // 2, 10_000)):
        for label, colour in (("red", "#c83c28"), ("blue", "#2846c8")):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                seed = offset + i + (0 if label == "red" else 50_000)
                data = image_bytes(seed, size=(96, 72), color=colour)
                (folder / f"{label}_{i}.png").write_bytes(data)
    return root


def a2m(home: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """`a2m args...` as its own process (CUDA never starts in the test process's children)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    base.update({"A2M_HOME": str(home), "NO_COLOR": "1", **(env or {})})
    proc = subprocess.run(
        [sys.executable, "-m", "annotate2model", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert proc.returncode == 0, f"a2m {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def colour_workspace(tmp_path: Path) -> Path:
    home = tmp_path / "ws"
    a2m(home, "init", str(home))
    a2m(home, "import-folder", str(colour_folder(tmp_path / "photos", 24)))
    return home


def model_card(home: Path, run: dict[str, Any]) -> dict[str, Any]:
    card: dict[str, Any] = json.loads((home / run["artifact_dir"] / "model.json").read_text())
    return card


def expected_precision() -> str:
    return "bf16" if torch.cuda.is_bf16_supported() else "fp32"


def test_probe_on_cuda_through_the_cli(colour_workspace: Path, scenes_weights: Path) -> None:
    out = a2m(
        colour_workspace,
        "train",
        "--weights",
        str(scenes_weights),
        "--image-size",
        "112",
        "--json",
        env={"A2M_DEVICE": "cuda"},
    )
    run = json.loads(out)
    assert run["status"] == "succeeded"
    assert run["device"].startswith("cuda")
    extraction = run["metrics"]["timing"]["extraction"]
    assert extraction["computed"] == 72 and extraction["cached"] == 0
    assert run["images_per_second"] > 0
    assert run["metrics"]["val_accuracy"] >= 0.9
    card = model_card(colour_workspace, run)
    assert card["precision"] == expected_precision()

    # fp32 features on the same device: a second cache key, the same verdict.
    out = a2m(
        colour_workspace,
        "train",
        "--weights",
        str(scenes_weights),
        "--image-size",
        "112",
        "--precision",
        "fp32",
        "--device",
        "cuda",
        "--json",
    )
    fp32 = json.loads(out)
    assert fp32["device"].startswith("cuda")
    assert model_card(colour_workspace, fp32)["precision"] == "fp32"
    assert fp32["metrics"]["timing"]["extraction"]["computed"] == 72
    assert fp32["metrics"]["val_accuracy"] >= 0.9


# unfreeze 1: layer4 on the frozen blocks' outputs; all: decoded images through a DataLoader.
@pytest.mark.parametrize("unfreeze", ["1", "all"])
def test_finetune_on_cuda_through_the_cli(
    colour_workspace: Path, scenes_weights: Path, unfreeze: str
) -> None:
    out = a2m(
        colour_workspace,
        "train",
        "--weights",
        str(scenes_weights),
        "--mode",
        "finetune",
        "--unfreeze",
        unfreeze,
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--image-size",
        "112",
        "--lr",
        "0.003",
        "--device",
        "cuda",
        "--json",
    )
    run = json.loads(out)
    assert run["status"] == "succeeded"
    assert run["device"].startswith("cuda")
    assert run["config"]["mode"] == "finetune"
    assert run["images_per_second"] > 0
    # Epoch 0 is the probe stage; early stopping may end before epoch 3.
    assert run["history"][0]["stage"] == "probe" and 3 <= len(run["history"]) <= 4
    assert run["metrics"]["val_accuracy"] >= 0.8
    assert model_card(colour_workspace, run)["precision"] == expected_precision()

    # The trained network predicts on the GPU too.
    image = next((colour_workspace.parent / "photos" / "val" / "red").iterdir())
    out = a2m(colour_workspace, "predict", str(run["id"]), str(image), "--device", "cuda", "--json")
    top = json.loads(out)[0]["top"]
    assert top[0]["label"] == "red"
