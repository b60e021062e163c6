"""ONNX Runtime for frozen trunks, without torch: what both the probe's extraction
(onnx_trunk.OnnxTrunk) and the early extraction before torch is imported (prefetch.py) use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from typing import Any

import numpy as np
from numpy.typing import NDArray

from annotate2model.training.images import Preprocessing

INPUT = "images"
OUTPUT = "features"
# What torch's TorchScript-based exporter writes well for every backbone a2m offers.
OPSET = 18


def available() -> bool:
    """Whether ONNX Runtime (to run) and onnx (torch's exporter needs it) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def file_name(backbone: str, weights_identity: str, crop: int) -> str:
    """The cached trunk's file name: by architecture, weights and input size (the export is
    checked at it)."""
    key = f"{backbone}|{weights_identity}|crop{crop}|opset{OPSET}|onnx-v1"
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".onnx"


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def open_session(model_bytes: bytes, threads: int) -> Any | None:
    """An ONNX Runtime session on the CPU, or None when it cannot be made."""
    try:
        import onnxruntime  # type: ignore[import-untyped]

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # Idle threads sleep instead of spinning: the decoding workers need the cores between
        # batches (as `a2m train` sets OpenMP's wait policy to PASSIVE for torch).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
    except Exception:
        return None


def run(session: Any, batch: NDArray[np.float32]) -> NDArray[np.float32]:
    """Features of an NCHW float32 batch, flattened per image."""
    (out,) = session.run([OUTPUT], {INPUT: np.ascontiguousarray(batch, dtype=np.float32)})
    result: NDArray[np.float32] = np.asarray(out, dtype=np.float32).reshape(len(batch), -1)
    return result


def to_input(arrays: NDArray[np.uint8], prep: Preprocessing) -> NDArray[np.float32]:
    """uint8 NHWC images to the normalised float NCHW batch, the same float32 arithmetic as
    `data.to_input` (the probe's torch path)."""
    x = arrays.transpose(0, 3, 1, 2).astype(np.float32)
    mean = (np.asarray(prep.mean, dtype=np.float32) * np.float32(255)).reshape(1, 3, 1, 1)
    std = (np.asarray(prep.std, dtype=np.float32) * np.float32(255)).reshape(1, 3, 1, 1)
    normalised: NDArray[np.float32] = np.ascontiguousarray((x - mean) / std)
    return normalised
