"""Training: backbones, embedding cache, trainers, metrics, artifacts, the ledger and the Predictor.

Parts: `config` (RunConfig, choices), `context` (RunContext: what a run needs from outside),
`probe` and `finetune` (trainers: compute and return a TrainResult), `ledger` (the one writer of
runs), `runner` (orchestration), `predictor` (a run loaded once, for evaluate, predict, ensembles,
review and serving).

Importing this package does not import torch; `Predictor` and friends load it when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from annotate2model.training.config import RunConfig
    from annotate2model.training.context import RunContext
    from annotate2model.training.predictor import EnsemblePredictor, Predictions, Predictor

__all__ = ["EnsemblePredictor", "Predictions", "Predictor", "RunConfig", "RunContext"]

_HOMES = {
    "EnsemblePredictor": "annotate2model.training.predictor",
    "Predictions": "annotate2model.training.predictor",
    "Predictor": "annotate2model.training.predictor",
    "RunConfig": "annotate2model.training.config",
    "RunContext": "annotate2model.training.context",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
