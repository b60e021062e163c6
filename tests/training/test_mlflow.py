"""Runs mirrored to MLflow: MLflow's local store and a real `mlflow server` on loopback. The
ledger stays the source of truth: MLflow down is one warning, never a failed run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pandas as pd  # type: ignore[import-untyped]
import pytest

from annotate2model.labelstudio.server import free_port
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store.versions import get_version
from annotate2model.training.runs import runner
from annotate2model.workspace import Workspace
from tests.training.conftest import small_config
from tests.training.test_runs import RecordingProgress

pytestmark = [pytest.mark.training, pytest.mark.slow]


def _tracked_store(workspace: Workspace, uri: str) -> Store:
    return Store.open(
        load_settings(
            workspace, {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "a2m-tests"}
        )
    )


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on loopback with its own SQLite backend and artifact folder."""
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp_path / "mlflow-artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _check_mirrored(uri: str, store: Store, version1: Path, weights: Path) -> None:
    outcome = runner.train(store, small_config(weights))
    run = outcome.run
    # a2m leaves the process's MLflow settings alone (MLflow's fluent API would not).
    assert "MLFLOW_TRACKING_URI" not in os.environ
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("a2m-tests")
    (found,) = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`a2m.run_id` = '{run.id}'"
    )
    assert found.info.status == "FINISHED"
    with store.read() as session:
        version = get_version(session, run.version)
    assert found.data.tags["a2m.version"] == str(run.version)
    assert found.data.tags["a2m.version_hash"] == version.content_hash
    assert found.data.params["backbone"] == "resnet18"
    assert found.data.params["image_size"] == "32"
    # The final figures are the ledger's, per split; each epoch's history is a metric by step.
    assert found.data.metrics["val.accuracy"] == pytest.approx(
        run.metrics["splits"]["val"]["accuracy"]
    )
    steps = client.get_metric_history(found.info.run_id, "val_accuracy")
    assert len(steps) == len(run.history) >= 1
    names = {a.path for a in client.list_artifacts(found.info.run_id, "run")}
    assert "run/model.json" in names
    # The logged model predicts what the run predicts.
    local = mlflow.artifacts.download_artifacts(
        run_id=found.info.run_id, artifact_path="model", tracking_uri=uri
    )
    model = mlflow.pyfunc.load_model(local)
    images = (
        sorted((version1 / "val" / "ants").iterdir())[:2]
        + sorted((version1 / "val" / "bees").iterdir())[:2]
    )
    frame = model.predict(pd.DataFrame({"path": [str(p) for p in images]}))
    ours = runner.predict_files(store, run.id, images)
    assert list(frame["label"]) == [row["top"][0]["label"] for row in ours]
    # An evaluation is logged to the run it judges.
    runner.evaluate_run(store, run.id, split="val")
    assert client.get_run(found.info.run_id).data.metrics["evaluate.v1.val.accuracy"] >= 0


def test_a_run_is_mirrored_to_a_local_mlflow_store(
    workspace: Workspace,
    version1: Path,
    weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow's local store without a server: a SQLite file (MLflow 3 keeps its `file:` store
    in maintenance mode and refuses it unless told otherwise); artifacts go to ./mlruns."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = _tracked_store(workspace, uri)
    try:
        _check_mirrored(uri, store, version1, weights)
    finally:
        store.close()


def test_a_run_is_mirrored_to_an_mlflow_server(
    workspace: Workspace, version1: Path, weights: Path, mlflow_server: str
) -> None:
    store = _tracked_store(workspace, mlflow_server)
    try:
        _check_mirrored(mlflow_server, store, version1, weights)
    finally:
        store.close()


def test_mlflow_down_is_one_warning_not_a_failed_run(
    workspace: Workspace, version1: Path, weights: Path
) -> None:
    # A server that is not there: one warning at once, not MLflow's minutes of retries.
    store = _tracked_store(workspace, f"http://127.0.0.1:{free_port()}")
    try:
        progress = RecordingProgress()
        started = time.monotonic()
        outcome = runner.train(store, small_config(weights), progress=progress)
        waited = time.monotonic() - started
        assert outcome.run.status == "succeeded"
        warnings = [n for n in progress.notes if n.startswith("MLflow:")]
        assert len(warnings) == 1 and f"run {outcome.run.id} not logged" in warnings[0]
        assert "the ledger has it" in warnings[0] and "does not answer" in warnings[0]
        assert waited < 60, waited
    finally:
        store.close()
