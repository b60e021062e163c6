"""An exported ONNX file as ONNX Runtime opens it, for `a2m export`'s check and `a2m serve
--onnx` alike: the graph's input and output names, the card's metadata key, and one way to open a
session. Imports neither torch nor onnxruntime until a session is opened, so a server of ONNX
files has no torch in its process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from annotate2model.errors import InputError

INPUT_NAME = "images"  # (N, crop, crop, 3) uint8 RGB
OUTPUT_NAME = "probabilities"  # (N, classes) float32
# The run's card (JSON) in an exported file's metadata (ONNX metadata_props, TorchScript extras).
CARD_KEY = "a2m_card"


def open_session(path: Path, providers: list[str]) -> Any:
    """An ONNX Runtime session on `path` with `providers` (first preferred); a file ONNX Runtime
    cannot load is an InputError that says so."""
    import onnxruntime  # type: ignore[import-untyped]

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    # Idle runtime threads sleep instead of spinning: the cores go to decoding the next images.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own (C++) exception types
        raise InputError(f"{path} is not an ONNX model ONNX Runtime can load ({exc}).") from None
