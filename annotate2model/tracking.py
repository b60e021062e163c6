"""Runs mirrored to MLflow, where teams already look (the `mlflow` extra).

With MLFLOW_TRACKING_URI set (or `[tracking] mlflow_uri` in a2m.toml), every succeeded training
is also an MLflow run in the experiment named after the workspace: its resolved configuration as
parameters, each epoch's figures as metrics by step, the final figures per split, the dataset
version's number, hash and counts as tags, the run folder as artifacts, and the model as an MLflow
pyfunc model (tracking_model.py wraps the Predictor: `mlflow.pyfunc.load_model(...).predict(frame)`
with a `path` column of image files; `mlflow models serve` loads it the same way). `a2m evaluate`
and `a2m compare` log their judgements to the MLflow runs of the runs they judge (runs that were
never mirrored are left alone). `--track mlflow` asks for all this for one command, where the
settings name no tracking URI: MLflow's own default local store (`sqlite:///mlflow.db`, artifacts
in `mlruns/` beside it) in the workspace folder; `--track none` turns it off.

The ledger stays the source of truth: MLflow missing, refusing or down costs one warning on the
command's output (with the reason), never the run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from annotate2model.errors import InputError

if TYPE_CHECKING:
    from annotate2model.judging.records import Comparison
    from annotate2model.settings import Settings

log = logging.getLogger(__name__)

# How to install what mirroring needs.
INSTALL = "pip install 'annotate2model[mlflow]'"

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


def installed() -> bool:
    """Whether the mlflow extra is installed (without importing it: that takes seconds)."""
    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):
        return False


def require_installed() -> None:
    """Mirroring asked for by name needs mlflow: refused at once, not a warning after the work."""
    if not installed():
        raise InputError(
            "logging to MLflow was asked for, but mlflow is not installed.", hint=INSTALL
        )


def default_uri(folder: Path) -> str:
    """MLflow's own default store (`sqlite:///mlflow.db`), in `folder` rather than in whatever
    folder a command runs from; `mlflow ui` started in `folder` shows what is logged there."""
    return f"sqlite:///{(folder.resolve() / 'mlflow.db').as_posix()}"


def _artifact_location(uri: str) -> str | None:
    """Where a new experiment of a local SQLite store keeps its artifacts: `mlruns/` beside the
    database file (MLflow's own default, ./mlruns, would follow the folder a command runs in);
    None (the store's own default) for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///") :]).split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return (Path(path).resolve().parent / "mlruns").as_uri()


def _experiment(client: Any, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found:
        return str(found.experiment_id)
    return str(client.create_experiment(name, artifact_location=_artifact_location(uri)))


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
        _experiment(client, experiment, uri),
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


def _find(client: Any, experiment: str, run_id: int) -> str | None:
    """The MLflow run id of ledger run `run_id`, or None when it was not logged."""
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
    client = _client(uri)
    mlflow_run = _find(client, experiment, run_id)
    if mlflow_run is None:
        return False
    for key, value in numeric(metrics).items():
        client.log_metric(mlflow_run, f"{name}.{key}", value)
    return True


def _key(text: str) -> str:
    """`text` as part of an MLflow metric or tag key (letters, digits, _ - . and spaces)."""
    return re.sub(r"[^\w\-. ]", "_", text)


def comparison_figures(
    comparison: Comparison,
) -> dict[int, tuple[dict[str, float], dict[str, str]]]:
    """Ledger run -> (metrics, tags): a comparison's judgement of each compared run, as `a2m
    compare` computed it, under one prefix per comparison and judged set, such as
    `compare.runs-3-5.unseen` (`.shared-test`, `.v4-test` with `--test-of 4`):

    - `PREFIX.accuracy` with its 95% Wilson interval `PREFIX.accuracy_low`/`_high`,
      `PREFIX.macro_f1` and `PREFIX.images` (how many images were judged);
    - for each run it was tested against (McNemar's exact test, consecutive runs as `a2m compare`
      pairs them), `PREFIX.vs_run_N.accuracy_delta` (this run's accuracy minus run N's),
      `.p_value`, `.right_only` and `.wrong_only` (images only this run gets right or wrong), and
      `.per_class_delta.CLASS`;
    - tags `a2m.PREFIX.compared_with` (the other runs' ids), `a2m.PREFIX.test_set` (what was
      judged) and `a2m.PREFIX.vs_run_N` (the verdict, as `a2m compare` says it).
    """
    test_set = comparison.test_set
    judged = {
        "unseen": "unseen",
        "shared": f"shared-{test_set.split}",
        "pinned": f"v{test_set.version}-{test_set.split}",
    }.get(test_set.kind, _key(test_set.kind))
    ids = [row.run for row in comparison.rows]
    prefix = f"compare.runs-{'-'.join(map(str, ids))}.{judged}"
    out: dict[int, tuple[dict[str, float], dict[str, str]]] = {}
    for row in comparison.rows:
        metrics: dict[str, float] = {
            f"{prefix}.accuracy": row.accuracy,
            f"{prefix}.accuracy_low": row.interval.low,
            f"{prefix}.accuracy_high": row.interval.high,
            f"{prefix}.images": float(len(test_set.images)),
        }
        if row.macro_f1 is not None:
            metrics[f"{prefix}.macro_f1"] = row.macro_f1
        tags = {
            f"a2m.{prefix}.compared_with": ",".join(str(i) for i in ids if i != row.run),
            f"a2m.{prefix}.test_set": test_set.description[:MAX_TAG],
        }
        out[row.run] = (metrics, tags)
    accuracy = {row.run: row.accuracy for row in comparison.rows}
    for pair in comparison.pairs:
        for this, other, sign in ((pair.after, pair.before, 1), (pair.before, pair.after, -1)):
            metrics, tags = out[this]
            vs = f"{prefix}.vs_run_{other}"
            metrics[f"{vs}.accuracy_delta"] = accuracy[this] - accuracy[other]
            metrics[f"{vs}.p_value"] = pair.p_value
            metrics[f"{vs}.right_only"] = float(pair.fixed if sign > 0 else pair.broken)
            metrics[f"{vs}.wrong_only"] = float(pair.broken if sign > 0 else pair.fixed)
            for label, delta in pair.per_class_delta.items():
                metrics[f"{vs}.per_class_delta.{_key(label)}"] = sign * delta
            tags[f"a2m.{vs}"] = pair.sentence[:MAX_TAG]
    return out


# The longest tag value a2m writes (MLflow takes 8,000 characters).
MAX_TAG = 5000


def log_comparison(uri: str, experiment: str, comparison: Comparison) -> list[int]:
    """Log a comparison (comparison_figures) to the MLflow run of each compared run that has one;
    returns the ledger runs it was logged to (runs never mirrored are left out)."""
    from mlflow.entities import Metric, RunTag

    _check_reachable(uri)
    client = _client(uri)
    logged = []
    for run_id, (metrics, tags) in comparison_figures(comparison).items():
        mlflow_run = _find(client, experiment, run_id)
        if mlflow_run is None:
            log.debug("run %s has no MLflow run; its comparison stays in the ledger", run_id)
            continue
        now = int(time.time() * 1000)
        entries = [Metric(k, v, now, 0) for k, v in metrics.items()]
        # MLflow takes at most 1,000 metrics and 100 tags per batch.
        for i in range(0, len(entries), 1000):
            client.log_batch(mlflow_run, metrics=entries[i : i + 1000])
        marks = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(marks), 100):
            client.log_batch(mlflow_run, tags=marks[i : i + 100])
        logged.append(run_id)
    return logged


def log_files(
    uri: str, experiment: str, run_ids: Sequence[int], files: Sequence[Path], folder: str
) -> list[int]:
    """Attach `files` (a report's page and plots) under `folder` to the MLflow run of each
    ledger run that has one; returns the runs they were attached to."""
    _check_reachable(uri)
    client = _client(uri)
    logged = []
    for run_id in run_ids:
        mlflow_run = _find(client, experiment, run_id)
        if mlflow_run is None:
            continue
        for path in files:
            client.log_artifact(mlflow_run, str(path), artifact_path=folder)
        logged.append(run_id)
    return logged


def mirror(
    settings: Settings, what: str, warn: Callable[[str], None], action: Callable[[str, str], Any]
) -> Any:
    """`action(tracking URI, experiment)` when the workspace's settings track runs in MLflow
    (else nothing). Any failure (not installed, refused, down) becomes one warning: the ledger
    already holds what MLflow would have had."""
    uri = settings.mlflow_uri
    if not uri:
        return None
    try:
        return action(uri, settings.mlflow_experiment)
    except ImportError:
        warn(f"MLflow: {what} not logged: mlflow is not installed ({INSTALL}).")
    except Exception as exc:
        log.debug("MLflow failure", exc_info=True)
        reason = f"{type(exc).__name__}: {str(exc)[:300]}"
        warn(f"MLflow: {what} not logged ({reason}); the ledger has it.")
    return None
