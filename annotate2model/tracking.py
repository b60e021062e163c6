"""Runs mirrored to MLflow, where teams already look (the `mlflow` extra).

With MLFLOW_TRACKING_URI set (or `[tracking] mlflow_uri` in a2m.toml), every succeeded training
is also an MLflow run in the experiment named after the workspace: its resolved configuration as
parameters, each epoch's figures as metrics by step, the final figures per split, the dataset
version's number, hash and counts as tags, the run folder as artifacts, and the model as an MLflow
pyfunc model (tracking_model.py wraps the Predictor: `mlflow.pyfunc.load_model(...).predict(frame)`
with a `path` column of image files; `mlflow models serve` loads it the same way). `a2m evaluate`
logs its judgement to the MLflow run of the run it judges.

The ledger stays the source of truth: MLflow missing, refusing or down costs one warning on the
command's output (with the reason), never the run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The tag that ties an MLflow run to the ledger's run.
RUN_TAG = "a2m.run_id"


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = value


def flat_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The configuration as MLflow parameters: nested keys joined by dots, values as text."""
    out: dict[str, Any] = {}
    _flat("", config, out)
    return {k: json.dumps(v) if isinstance(v, list | tuple) else str(v) for k, v in out.items()}


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries that are numbers (MLflow metrics), nested keys joined by dots."""
    out: dict[str, Any] = {}
    _flat("", values, out)
    return {
        k: float(v)
        for k, v in out.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _experiment(mlflow: Any, name: str) -> str:
    found = mlflow.get_experiment_by_name(name)
    return str(found.experiment_id if found else mlflow.create_experiment(name))


def _client(uri: str) -> Any:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow


def log_training(
    uri: str,
    experiment: str,
    *,
    run_id: int,
    config: Mapping[str, Any],
    history: list[dict[str, Any]],
    metrics: Mapping[str, Any],
    tags: Mapping[str, Any],
    run_dir: Path,
) -> str:
    """Log one succeeded run (see the module); returns the MLflow run id."""
    mlflow = _client(uri)
    with mlflow.start_run(
        experiment_id=_experiment(mlflow, experiment), run_name=f"a2m run {run_id}"
    ) as active:
        mlflow.set_tags({RUN_TAG: str(run_id), **{k: str(v) for k, v in tags.items()}})
        mlflow.log_params(flat_params(config))
        for step, row in enumerate(history, start=1):
            epoch_metrics = numeric({k: v for k, v in row.items() if k != "epoch"})
            if epoch_metrics:
                mlflow.log_metrics(epoch_metrics, step=int(row.get("epoch", step)))
        mlflow.log_metrics(numeric(metrics))
        mlflow.log_artifacts(str(run_dir), artifact_path="run")
        from annotate2model.tracking_model import SIGNATURE, RunModel

        mlflow.pyfunc.log_model(
            name="model",
            python_model=RunModel(),
            signature=SIGNATURE,
            artifacts={"run": str(run_dir)},
            pip_requirements=["annotate2model"],
        )
        return str(active.info.run_id)


def find_run(uri: str, experiment: str, run_id: int) -> str | None:
    """The MLflow run id of ledger run `run_id`, or None when it was not logged."""
    mlflow = _client(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = mlflow.search_runs(
        experiment_ids=[found.experiment_id],
        filter_string=f"tags.`{RUN_TAG}` = '{run_id}'",
        output_format="list",
    )
    return str(runs[0].info.run_id) if runs else None


def log_evaluation(
    uri: str, experiment: str, run_id: int, name: str, metrics: Mapping[str, Any]
) -> bool:
    """Log a judgement of ledger run `run_id` (prefix `name`) to its MLflow run, if it has one."""
    mlflow_run = find_run(uri, experiment, run_id)
    if mlflow_run is None:
        return False
    mlflow = _client(uri)
    client = mlflow.MlflowClient()
    for key, value in numeric(metrics).items():
        client.log_metric(mlflow_run, f"{name}.{key}", value)
    return True


def mirrored(what: str, warn: Callable[[str], None], action: Callable[[], Any]) -> Any:
    """Run an MLflow `action`; any failure (not installed, refused, down) becomes one warning:
    the ledger already holds what MLflow would have had."""
    try:
        return action()
    except ImportError:
        warn(
            f"MLflow: {what} not logged: mlflow is not installed "
            "(pip install 'annotate2model[mlflow]')."
        )
    except Exception as exc:
        log.debug("MLflow failure", exc_info=True)
        reason = f"{type(exc).__name__}: {str(exc)[:300]}"
        warn(f"MLflow: {what} not logged ({reason}); the ledger has it.")
    return None
