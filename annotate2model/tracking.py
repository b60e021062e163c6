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


def _client(uri: str) -> Any:
    """A client of `uri` alone: MLflow's fluent API would set the process-wide tracking URI (and
    the MLFLOW_TRACKING_URI variable every later process inherits)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _check_reachable(uri: str) -> None:
    """An HTTP tracking server that does not answer fails at once, instead of after MLflow's
    retries (minutes): the run is recorded either way, and nobody waits on a dead server."""
    if not uri.startswith(("http://", "https://")):
        return
    import httpx

    try:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise ConnectionError(f"{uri} does not answer ({type(exc).__name__})") from None


# How long a tracking server has to answer its /health before a run's logging is given up.
REACH_TIMEOUT_S = 5.0


def _experiment(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return str(found.experiment_id if found else client.create_experiment(name))


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
    import tempfile

    import mlflow.pyfunc
    from mlflow.entities import Metric, Param

    from annotate2model.tracking_model import SIGNATURE, RunModel

    _check_reachable(uri)
    client = _client(uri)
    created = client.create_run(
        _experiment(client, experiment),
        run_name=f"a2m run {run_id}",
        tags={RUN_TAG: str(run_id), **{k: str(v) for k, v in tags.items()}},
    )
    mlflow_run = str(created.info.run_id)
    try:
        now = int(created.info.start_time)
        steps = [
            Metric(key, value, now, int(row.get("epoch", step)))
            for step, row in enumerate(history, start=1)
            for key, value in numeric({k: v for k, v in row.items() if k != "epoch"}).items()
        ]
        final = [Metric(key, value, now, 0) for key, value in numeric(metrics).items()]
        params = [Param(k, v[:6000]) for k, v in flat_params(config).items()]
        # MLflow takes at most 1,000 metrics and 100 params per batch.
        for i in range(0, len(steps) + len(final), 1000):
            client.log_batch(mlflow_run, metrics=(steps + final)[i : i + 1000])
        for i in range(0, len(params), 100):
            client.log_batch(mlflow_run, params=params[i : i + 100])
        client.log_artifacts(mlflow_run, str(run_dir), artifact_path="run")
        with tempfile.TemporaryDirectory(prefix="a2m-mlflow-") as tmp:
            model_dir = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                path=str(model_dir),
                python_model=RunModel(),
                artifacts={"run": str(run_dir)},
                signature=SIGNATURE,
                pip_requirements=["annotate2model"],
            )
            client.log_artifacts(mlflow_run, str(model_dir), artifact_path="model")
    except BaseException:
        client.set_terminated(mlflow_run, status="FAILED")
        raise
    client.set_terminated(mlflow_run, status="FINISHED")
    return mlflow_run


def find_run(uri: str, experiment: str, run_id: int) -> str | None:
    """The MLflow run id of ledger run `run_id`, or None when it was not logged."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'", max_results=1
    )
    return str(runs[0].info.run_id) if runs else None


def log_evaluation(
    uri: str, experiment: str, run_id: int, name: str, metrics: Mapping[str, Any]
) -> bool:
    """Log a judgement of ledger run `run_id` (prefix `name`) to its MLflow run, if it has one."""
    _check_reachable(uri)
    mlflow_run = find_run(uri, experiment, run_id)
    if mlflow_run is None:
        return False
    client = _client(uri)
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
