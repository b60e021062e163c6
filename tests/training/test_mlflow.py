"""Runs mirrored to MLflow: MLflow's local store and a real `mlflow server` on loopback. The
ledger stays the source of truth: MLflow down is one warning, never a failed run. `a2m compare`
logs to the runs it judges; `--track mlflow|none` turns mirroring on or off for one command."""

from __future__ import annotations

import json
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
from typer.testing import CliRunner

from annotate2model import tracking
from annotate2model.judging.compare import compare
from annotate2model.labelstudio.server import free_port
from annotate2model.reference import commands
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store.versions import get_version
from annotate2model.training.runs import runner
from annotate2model.workspace import Workspace
from tests.conftest import run_cli
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


def _mlflow_runs(uri: str, experiment: str) -> dict[int, mlflow.entities.Run]:
    """Ledger run id -> its MLflow run, in `experiment` of the store at `uri`."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = client.search_runs([found.experiment_id])
    return {int(r.data.tags[tracking.RUN_TAG]): r for r in runs}


def test_a_comparison_is_logged_to_the_runs_it_judges(
    workspace: Workspace,
    store: Store,
    version1: Path,
    weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each compared run's MLflow run gets the comparison's figures, as compare computed them; a
    run that was never mirrored is left out without a word. A local SQLite store keeps its
    artifacts beside its file, not in the folder a command runs in."""
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    # Run 1 before the workspace tracked anything; runs 2 and 3 mirrored.
    unmirrored = runner.train(store, small_config(weights)).run.id
    tracked = _tracked_store(workspace, uri)
    try:
        first = runner.train(tracked, small_config(weights)).run.id
        second = runner.train(tracked, small_config(weights, image_size=48)).run.id
        progress = RecordingProgress()
        result = compare(tracked, runs=[unmirrored, first, second], progress=progress)
    finally:
        tracked.close()
    assert [n for n in progress.notes if n.startswith("MLflow")] == []
    assert list(here.iterdir()) == []
    assert (tmp_path / "mlflow" / "mlruns").is_dir()
    found = _mlflow_runs(uri, "a2m-tests")
    assert set(found) == {first, second}
    assert result.test_set.kind == "shared" and result.test_set.split == "val"
    prefix = f"compare.runs-{unmirrored}-{first}-{second}.shared-val"
    rows = {row.run: row for row in result.rows}
    for run_id in (first, second):
        metrics, tags = found[run_id].data.metrics, found[run_id].data.tags
        row = rows[run_id]
        assert metrics[f"{prefix}.accuracy"] == pytest.approx(row.accuracy)
        assert metrics[f"{prefix}.accuracy_low"] == pytest.approx(row.interval.low)
        assert metrics[f"{prefix}.accuracy_high"] == pytest.approx(row.interval.high)
        assert metrics[f"{prefix}.images"] == len(result.test_set.images) == 8
        others = [i for i in (unmirrored, first, second) if i != run_id]
        assert tags[f"a2m.{prefix}.compared_with"] == ",".join(map(str, others))
        assert tags[f"a2m.{prefix}.test_set"] == result.test_set.description
    # The pairs compare tested (consecutive runs), from each run's side.
    before, after = result.pairs
    assert (before.before, before.after, after.before, after.after) == (
        unmirrored,
        first,
        first,
        second,
    )
    mine = found[second].data.metrics
    theirs = found[first].data.metrics
    vs_first, vs_second = f"{prefix}.vs_run_{first}", f"{prefix}.vs_run_{second}"
    assert mine[f"{vs_first}.accuracy_delta"] == pytest.approx(
        rows[second].accuracy - rows[first].accuracy
    )
    assert theirs[f"{vs_second}.accuracy_delta"] == pytest.approx(
        -mine[f"{vs_first}.accuracy_delta"]
    )
    assert mine[f"{vs_first}.p_value"] == theirs[f"{vs_second}.p_value"]
    assert mine[f"{vs_first}.p_value"] == pytest.approx(after.p_value)
    assert (mine[f"{vs_first}.right_only"], mine[f"{vs_first}.wrong_only"]) == (
        after.fixed,
        after.broken,
    )
    assert (theirs[f"{vs_second}.right_only"], theirs[f"{vs_second}.wrong_only"]) == (
        after.broken,
        after.fixed,
    )
    for label in ("ants", "bees"):
        assert mine[f"{vs_first}.per_class_delta.{label}"] == pytest.approx(
            after.per_class_delta[label]
        )
    assert found[second].data.tags[f"a2m.{vs_first}"] == after.sentence
    # Run 2 was also tested against run 1, which has no MLflow run: its side is still logged.
    assert f"{prefix}.vs_run_{unmirrored}.p_value" in theirs


def test_track_mlflow_mirrors_a_train_where_nothing_names_a_server(
    cli: CliRunner, workspace: Workspace, store: Store, version1: Path, weights: Path
) -> None:
    """MLflow's own default store (mlflow.db, artifacts in mlruns/), in the workspace folder."""
    code, out, err = run_cli(
        cli, "train", "--weights", str(weights), "--image-size", "32", "--track", "mlflow", "--json"
    )
    assert code == 0, err
    run_id = json.loads(out)["id"]
    uri = tracking.default_uri(workspace.root)
    assert "no tracking server is set" in err and uri in err
    found = _mlflow_runs(uri, workspace.root.name)
    assert list(found) == [run_id] and found[run_id].info.status == "FINISHED"
    assert (workspace.root / "mlflow.db").is_file()
    artifacts = workspace.root / "mlruns"
    assert any(p.name == "model.json" for p in artifacts.rglob("model.json"))

    # The run's report (page and plots) joins the run's artifacts when it is written.
    code, out, err = run_cli(cli, "report", str(run_id), "--track", "mlflow", "--json")
    assert code == 0, err
    written = json.loads(out)
    client = mlflow.MlflowClient(tracking_uri=uri)
    attached = {a.path for a in client.list_artifacts(found[run_id].info.run_id, "report")}
    expected = {Path(written["html"]).name, *(Path(p).name for p in written["plots"].values())}
    assert attached == {f"report/{name}" for name in expected} and len(expected) >= 2


def test_track_none_mirrors_nothing_where_the_settings_would(
    cli: CliRunner,
    workspace: Workspace,
    store: Store,
    version1: Path,
    weights: Path,
    tmp_path: Path,
) -> None:
    database = tmp_path / "team-mlflow.db"
    workspace.update_config("tracking", {"mlflow_uri": f"sqlite:///{database}"})
    args = ("train", "--weights", str(weights), "--image-size", "32")
    code, out, err = run_cli(cli, *args, "--track", "none")
    assert code == 0, err
    assert "MLflow" not in out + err
    code, out, err = run_cli(cli, "evaluate", "1", "--track", "none")
    assert code == 0, err
    assert not database.exists()


def test_compare_with_mlflow_down_is_one_warning(
    cli: CliRunner,
    store: Store,
    version1: Path,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for size in (32, 48):
        runner.train(store, small_config(weights, image_size=size))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    code, out, err = run_cli(cli, "compare", "--runs", "1,2", "--no-plots", "--track", "mlflow")
    assert code == 0, err
    assert time.monotonic() - started < 60
    warnings = [line for line in (out + err).splitlines() if "MLflow:" in line]
    assert len(warnings) == 1, warnings
    assert "comparison of runs 1, 2 not logged" in warnings[0]
    assert "does not answer" in warnings[0]


def test_track_mlflow_without_mlflow_installed_is_refused(
    cli: CliRunner, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As where the extra is missing: importing mlflow finds nothing.
    monkeypatch.setitem(sys.modules, "mlflow", None)
    code, _, err = run_cli(cli, "compare", "--track", "mlflow")
    assert code == 1
    assert "mlflow is not installed" in err and "pip install 'annotate2model[mlflow]'" in err


def test_track_overrides_the_settings(workspace: Workspace) -> None:
    env = {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}
    assert load_settings(workspace, env).mlflow_uri == env["MLFLOW_TRACKING_URI"]
    assert load_settings(workspace, env, {"track": "none"}).mlflow_uri is None
    assert (
        load_settings(workspace, env, {"track": "mlflow"}).mlflow_uri
        == (env["MLFLOW_TRACKING_URI"])
    )
    assert load_settings(workspace, {}).mlflow_uri is None
    assert load_settings(workspace, {}, {"track": "mlflow"}).mlflow_uri == (
        tracking.default_uri(workspace.root)
    )


def test_track_is_one_option_on_every_command_that_mirrors() -> None:
    helps = {}
    for name, command in commands():
        for param in command.params:
            if "--track" in getattr(param, "opts", ()):
                helps[name] = param.help
    assert set(helps) == {"a2m train", "a2m evaluate", "a2m compare", "a2m loop", "a2m report"}
    assert len(set(helps.values())) == 1
