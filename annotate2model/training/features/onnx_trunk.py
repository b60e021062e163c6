"""Frozen trunks exported with `torch.onnx.export` and run by ONNX Runtime, for feature extraction
on the CPU in fp32 (bench/train.py measures it against torch's own forward pass on this CPU).

The torchvision network is the source of truth: the graph is `torch.onnx.export` of the trunk
behind `data.ImageInput` (so it takes the uint8 NHWC batch the decoders produce and normalises it
exactly as torch does), kept only when ONNX Runtime gives the network's own output on a check
batch, and used only in eval mode. The embedding cache keeps it per backbone, weights identity
and crop, with a SHA-256 sidecar, so a partial or corrupt file is exported again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from annotate2model.training.features.images import Preprocessing

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

INPUT = "images"
OUTPUT = "features"
# What torch's TorchScript-based exporter writes well for every backbone a2m offers.
OPSET = 18
# Largest relative difference between ONNX Runtime's and torch's features that passes the check
# (batch-norm folding moves the last bits of a float; far below what a probe can see).
TOLERANCE = 1e-4


def file_name(backbone: str, weights_identity: str, crop: int) -> str:
    """The cached trunk's file name: by architecture, weights and input size."""
    key = f"{backbone}|{weights_identity}|crop{crop}|opset{OPSET}|uint8-input-v2"
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".onnx"


def open_session(model_bytes: bytes) -> Any:
    """An ONNX Runtime session on the CPU, on the cores this process may use."""
    import onnxruntime  # type: ignore[import-untyped]

    options = onnxruntime.SessionOptions()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    options.intra_op_num_threads = max(1, threads or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    # Idle threads sleep instead of spinning: the decoding workers need the cores between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run(session: Any, images: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The graph's output for a uint8 NHWC batch, flattened per image."""
    out = session.run(None, {INPUT: np.ascontiguousarray(images, dtype=np.uint8)})[0]
    result: NDArray[np.float32] = np.asarray(out, dtype=np.float32).reshape(len(images), -1)
    return result


def to_onnx(model: nn.Module, example: torch.Tensor, output: str = OUTPUT) -> bytes:
    """`model` (uint8 NHWC images in) as ONNX bytes, through `torch.onnx.export`: the one export
    of a2m, for a frozen trunk here and a whole run in `a2m export`."""
    import torch

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The exporters' notices about their own future are not the user's concern.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript-based exporter takes a file
            input_names=[INPUT],
            output_names=[output],
            dynamic_axes={INPUT: {0: "batch"}, output: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def export(trunk: nn.Module, prep: Preprocessing) -> tuple[bytes, Any] | None:
    """The trunk (behind its input normalisation) as ONNX bytes and a session of them, when
    ONNX Runtime gives the trunk's own output on a check batch; None (logged) otherwise, and
    the caller extracts with torch."""
    import torch

    from annotate2model.training.features.data import ImageInput

    model = torch.nn.Sequential(ImageInput(prep), trunk).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, prep.crop, prep.crop, 3), generator=generator)
    example = example.to(torch.uint8)
    try:
        with torch.no_grad():
            expected = model(example).float().flatten(1).numpy()
        data = to_onnx(model, example)
        session = open_session(data)
        got = run(session, example.numpy())
    except (RuntimeError, ValueError, OSError, ImportError) as exc:
        log.warning("exporting the trunk to ONNX failed; extracting with torch: %s", exc)
        return None
    scale = float(np.abs(expected).max()) or 1.0
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if diff > TOLERANCE * scale:
        log.warning(
            "the ONNX trunk differs from torch's by %.3g (scale %.3g); extracting with torch",
            diff,
            scale,
        )
        return None
    return data, session
