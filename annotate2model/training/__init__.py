"""Training: a run configuration trained on a dataset version, and what a trained run does.

Shared words: `config` (RunConfig, choices, presets) and `context` (RunContext: what a run needs
from outside). Then three rooms, imported one way (features <- fit <- runs):

- `features/`: backbones and weights (torchvision), images to model input, the device, the
  embedding cache and feature extraction (torch, or ONNX Runtime on the trunk's export).
- `fit/`: the trainers: the probe (a scikit-learn head on cached features) and fine-tuning (the
  torch loop), with what they are given and return.
- `runs/`: orchestration, the ledger, a run's folder, metrics, the Predictor and export.

Importing this package does not import torch; `Predictor` and friends load it when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from annotate2model.training.config import RunConfig
    from annotate2model.training.context import RunContext
    from annotate2model.training.runs.predictor import EnsemblePredictor, Predictions, Predictor

__all__ = ["EnsemblePredictor", "Predictions", "Predictor", "RunConfig", "RunContext"]

_HOMES = {
    "EnsemblePredictor": "annotate2model.training.runs.predictor",
    "Predictions": "annotate2model.training.runs.predictor",
    "Predictor": "annotate2model.training.runs.predictor",
    "RunConfig": "annotate2model.training.config",
    "RunContext": "annotate2model.training.context",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
