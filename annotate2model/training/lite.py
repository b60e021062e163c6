"""The probe on the CPU without torch.

Importing torch keeps a core busy for 2 to 4 seconds on a small machine, and tearing it down at
exit costs more: as much as a probe on cached features takes in all. A probe on the CPU in fp32
needs none of it: ONNX Runtime runs the frozen trunk, numpy trains the head (head.py) and
safetensors writes the weights, exactly as the torch path does them (the same ONNX trunk, the same
head code). `plan` says whether a run can go this way and readies the trunk:

- the trunk's ONNX copy is in the cache (any backbone: a run through torch exported it), or
- the backbone is a ResNet (resnet_onnx.py builds its graph from the weights, read without torch
  by checkpoint.py, or from the cache's safetensors copy of the trunk).

Any doubt sends the run down the torch path, which checks everything and explains what is wrong:
a device that might not be the CPU, a CPU with native bf16 (`precision: auto` would pick it),
weights that are not a plain float32 state dict of the architecture, ImageNet weights not yet
downloaded, random weights (`--weights none`: torch's initialisation).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from annotate2model.fsutil import read_verified, write_with_digest
from annotate2model.training import onnx_runtime
from annotate2model.training.config import HEADS, RunConfig
from annotate2model.training.embeddings import Network, onnx_network, trunk_path
from annotate2model.training.images import Preprocessing
from annotate2model.training.weights import WeightsSource, imagenet_checkpoint_path

# Device files through which torch would find an accelerator: NVIDIA's driver, AMD's ROCm (torch
# calls it cuda too), and the GPU of WSL 2.
ACCELERATOR_DEVICES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")

# CPU flags with which torch runs bf16 natively (`device.bf16_fast`): `precision: auto` then
# takes bf16, which this path does not do.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def cpu_certain(requested: str) -> bool:
    """Whether the run will compute on the CPU, as far as can be known without torch: asked for,
    or `auto` on Linux with none of the device files of an accelerator torch would pick."""
    if requested == "cpu":
        return True
    if requested not in ("auto", "") or not sys.platform.startswith("linux"):
        return False
    return not any(os.path.exists(path) for path in ACCELERATOR_DEVICES)


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether the CPU has native bf16 instructions; None when its flags cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            flags.update(value.split())
    if not flags:
        return None
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def fp32_certain(precision: str) -> bool:
    """Whether the run computes in fp32: asked for, or `auto` on a CPU without native bf16."""
    return precision == "fp32" or (precision == "auto" and native_bf16() is False)


def cpu_name(threads: int) -> str:
    """The ledger's device text, as `device.device_name` writes it for the CPU."""
    return f"cpu: {os.cpu_count()} cores, {threads} threads"


@dataclass(frozen=True)
class LitePlan:
    """A probe ready to run without torch: its trunk as an ONNX model (the cache's file, read
    only if some features must be computed, or the bytes just built), run on `threads`."""

    onnx_file: Path
    threads: int
    built: bytes | None = None

    def network(self, prep: Preprocessing, fallback: Callable[[], Network]) -> Network:
        """The trunk in an ONNX Runtime session; `fallback()` (the torch path's trunk) when the
        cached file went bad or ONNX Runtime cannot open it."""
        model = self.built if self.built is not None else read_verified(self.onnx_file)
        session = onnx_runtime.open_session(model, self.threads) if model is not None else None
        return onnx_network(session, prep) if session is not None else fallback()


def plan(
    config: RunConfig, source: WeightsSource, prep: Preprocessing, device: str, cache_dir: Path
) -> LitePlan | None:
    """The torch-free probe of `config` on the CPU, or None where the run must go through torch.

    Builds the trunk's ONNX graph (kept in the cache) and the trunk's safetensors copy (which the
    run's folder links to) when they are not in the cache yet.
    """
    if config.mode != "probe" or not onnx_runtime.available():
        return None
    if not cpu_certain(device) or not fp32_certain(config.precision):
        return None
    onnx_file = (
        cache_dir / "trunks" / onnx_runtime.file_name(config.backbone, source.identity, prep.crop)
    )
    trunk_file = trunk_path(cache_dir, source.identity, config.backbone)
    threads = onnx_runtime.cpu_threads()
    if onnx_file.is_file() and trunk_file.is_file():
        return LitePlan(onnx_file, threads)
    state = _trunk_state(config.backbone, source, trunk_file)
    if state is None:
        return None
    built = None
    if read_verified(onnx_file) is None:
        from annotate2model.training import resnet_onnx

        built = resnet_onnx.build(config.backbone, state, prep.crop)
        if built is None:
            return None
        write_with_digest(onnx_file, built)
    if not trunk_file.is_file():
        from annotate2model.training.artifacts import write_tensors

        write_tensors(trunk_file, state, mode=None)
    return LitePlan(onnx_file, threads, built)


def _trunk_state(
    backbone: str, source: WeightsSource, trunk_file: Path
) -> dict[str, NDArray[Any]] | None:
    """The trunk's float32 weights (the classifier's last Linear left out) read without torch:
    from the cache's copy, the weights file, or torch hub's cached ImageNet file; None where
    only torch can say (random weights, a download, another format)."""
    if trunk_file.is_file():
        from safetensors.numpy import load_file

        try:
            loaded: dict[str, NDArray[Any]] = load_file(str(trunk_file))
        except Exception:
            return None
        return loaded
    if source.kind == "path" and source.path is not None:
        path = source.path
    elif source.kind == "imagenet":
        path = imagenet_checkpoint_path(backbone)
        if not path.is_file():
            return None
    else:
        return None
    from annotate2model.training.checkpoint import read_numpy_state

    state = read_numpy_state(path)
    if state is None:
        return None
    head = HEADS[backbone][0] + "."
    trunk = {k: v for k, v in state.items() if not k.startswith(head)}
    floats = [v for k, v in trunk.items() if not k.endswith("num_batches_tracked")]
    if not floats or any(v.dtype != np.float32 for v in floats):
        return None
    return trunk
