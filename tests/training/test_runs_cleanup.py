"""`a2m runs --hide-failed` and `--delete-failed`: runs without a model can be hidden or removed,
and nothing else goes with them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from tests.conftest import run_cli


def test_failed_runs_can_be_hidden_and_deleted(
    cli: CliRunner, store: Store, version1: Path
) -> None:
    with store.write() as session:
        ok = store_runs.create_run(session, 1, "train", {"backbone": "resnet18"}, "cpu")
        store_runs.finish_run(session, ok.id, "succeeded", artifact_dir=".a2m/runs/1")
        bad = store_runs.create_run(session, 1, "train", {"backbone": "resnet18"}, "cpu")
        store_runs.finish_run(session, bad.id, "failed", error="KeyError: 101")
        stopped = store_runs.create_run(session, 1, "train", {"backbone": "resnet18"}, "cpu")
        store_runs.finish_run(session, stopped.id, "interrupted", error="Ctrl-C")
    leftover = store.settings.workspace.runs_dir / str(bad.id)
    leftover.mkdir(parents=True)
    (leftover / "history.csv").write_text("epoch\n")

    code, out, _ = run_cli(cli, "runs", "--hide-failed", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [ok.id]
    code, out, _ = run_cli(cli, "runs", "--json")
    assert [r["id"] for r in json.loads(out)] == [ok.id, bad.id, stopped.id]

    code, out, err = run_cli(cli, "runs", "--delete-failed", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [ok.id]
    assert f"Deleted 2 failed or interrupted run(s): {bad.id}, {stopped.id}" in err
    assert not leftover.exists()
    code, _, err = run_cli(cli, "runs", "--delete-failed")
    assert code == 0 and "No failed or interrupted run to delete" in err


def test_runs_table_reads_at_80_columns(cli: CliRunner, store: Store, version1: Path) -> None:
    import os
    import subprocess
    import sys

    with store.write() as session:
        ok = store_runs.create_run(
            session, 1, "train", {"backbone": "mobilenet_v3_large", "mode": "finetune"}, "cpu"
        )
        store_runs.finish_run(session, ok.id, "succeeded", metrics={"val_accuracy": 0.8125})
        bad = store_runs.create_run(session, 1, "train", {"backbone": "resnet18"}, "cpu")
        store_runs.finish_run(session, bad.id, "interrupted", error="Ctrl-C")
    env = {**os.environ, "A2M_HOME": str(store.settings.workspace.root), "COLUMNS": "80"}
    out = subprocess.run(
        [sys.executable, "-m", "annotate2model", "runs"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    # Nothing a reader needs is cut: statuses, the model and the accuracy are whole.
    for word in ("succeeded", "interrupted", "mobilenet_v3_large", "0.812"):
        assert word in out
    assert "…" not in out


def test_runs_lists_only_the_latest_auto_train_decisions(
    cli: CliRunner, store: Store, version1: Path
) -> None:
    """A long-lived `a2m serve --auto-train` decides on many runs: the table's footer keeps the
    latest few, says how many are left out and where they are, and --json keeps every one."""
    from annotate2model.cli.training import AUTO_TRAIN_LINES
    from annotate2model.store.promotions import record_decision

    ids = []
    with store.write() as session:
        for n in range(AUTO_TRAIN_LINES + 2):
            run = store_runs.create_run(session, 1, "train", {"backbone": "resnet18"}, "cpu")
            store_runs.finish_run(session, run.id, "succeeded")
            record_decision(
                session,
                version=1,
                run=run.id,
                served=ids[-1] if ids else None,
                promoted=n % 2 == 0,
                reason=f"reason {n}",
            )
            ids.append(run.id)
    code, out, _ = run_cli(cli, "runs")
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("Auto-train: run ")]
    assert [int(line.split()[2]) for line in lines] == ids[-AUTO_TRAIN_LINES:]
    assert "Auto-train: 2 earlier decision(s)" in out
    code, out, _ = run_cli(cli, "runs", "--json")
    assert [r["auto_train"]["run"] for r in json.loads(out)] == ids
