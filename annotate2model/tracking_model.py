"""An a2m run as an MLflow pyfunc model (imported only where MLflow is: logging, loading).

A frame with a `path` column of image files in; a frame of the likeliest `label` and its
`confidence` out (None for an image that cannot be read). The run folder travels as the model's
artifact; the Predictor does the work, so MLflow's answers are a2m's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd  # type: ignore[import-untyped]
from mlflow.models import ModelSignature
from mlflow.pyfunc.model import PythonModel
from mlflow.types import ColSpec, Schema

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "path")]),
    outputs=Schema([ColSpec("string", "label"), ColSpec("double", "confidence")]),
)


class RunModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from annotate2model.training.runs.predictor import Predictor

        self.predictor = Predictor.load(Path(context.artifacts["run"]), "auto")

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        # No annotations: MLflow reads them as its input schema; SIGNATURE says it instead.
        paths = [Path(p) for p in model_input["path"]]
        result = self.predictor.predict(paths)
        tops = [result.top(i, 1) for i in range(len(paths))]
        return pd.DataFrame(
            {
                "label": [t[0][0] if t else None for t in tops],
                "confidence": [t[0][1] if t else None for t in tops],
            }
        )
