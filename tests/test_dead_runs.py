"""A training killed with -9 leaves a `running` row; every command that opens the store closes it,
judged by the process's start time as well as its pid (a reused pid is not the run's process), and
only on the host the run belongs to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.store.imports import import_folder
from annotate2model.store.models import Run
from tests.conftest import make_image_folder, run_cli

pytestmark = pytest.mark.both_dialects


@pytest.fixture
def version1(store: Store, tmp_path: Path) -> int:
    import_folder(store, make_image_folder(tmp_path / "data", {"a": 2, "b": 2}))
    return 1


def _status(store: Store, run_id: int) -> store_runs.RunRecord:
    with store.read() as session:
        return store_runs.get_run(session, run_id)


def test_a_killed_training_is_failed_in_the_next_command_whatever_it_is(
    cli: CliRunner, store: Store, version1: int
) -> None:
    """A real process opens a run and is killed -9 while it holds it; `a2m versions` (not only
    `a2m runs`) then shows the truth in the store."""
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from annotate2model.settings import load_settings
        from annotate2model.store import Store
        from annotate2model.training.runs.ledger import Ledger
        from annotate2model.workspace import Workspace
        root = Path({str(store.settings.workspace.root)!r})
        env = {{"A2M_DATABASE_URL": {store.settings.database_url!r}}}
        store = Store.open(load_settings(Workspace(root), env))
        with Ledger(store).running(1, "train", {{}}, "cpu") as run:
            print(run.id, flush=True)
            time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    run_id = int(child.stdout.readline())
    code, _, _ = run_cli(cli, "versions")
    assert code == 0 and _status(store, run_id).status == "running"  # alive: left alone
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    code, _, _ = run_cli(cli, "versions")
    run = _status(store, run_id)
    assert code == 0 and run.status == "failed" and run.pid is None
    assert run.error is not None and f"pid {child.pid}" in run.error


def test_a_reused_pid_is_not_the_runs_process(cli: CliRunner, store: Store, version1: int) -> None:
    """A live process holding the pid, started after the run's process: the run is dead."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        with store.write() as session:
            run = store_runs.create_run(session, 1, "train", {}, "cpu")
            started = psutil.Process(stranger.pid).create_time()
            session.execute(
                update(Run)
                .where(Run.id == run.id)
                .values(pid=stranger.pid, process_started=started - 3600)
            )
        code, out, _ = run_cli(cli, "runs", "--json")
        (row,) = json.loads(out)
        assert code == 0 and row["status"] == "failed"
        assert stranger.poll() is None  # the stranger was only looked at
    finally:
        stranger.kill()
        stranger.wait()


def test_the_same_process_and_another_hosts_run_stay_running(
    cli: CliRunner, store: Store, version1: int, dialect: str
) -> None:
    """SQLite: another host's run is left alone. PostgreSQL: it is judged by its liveness lock,
    held by whatever machine trains it; a row whose lock nobody holds is a dead run's."""
    locks = []
    with store.write() as session:
        ours = store_runs.create_run(session, 1, "train", {}, "cpu")  # this very process
        theirs = store_runs.create_run(session, 1, "train", {}, "cuda")
        session.execute(
            update(Run).where(Run.id == theirs.id).values(host="gpu-box-7", pid=999_999_999)
        )
        locks = [(store_runs.hold_run_lock(session, r.id), r.id) for r in (ours, theirs)]
        orphan = store_runs.create_run(session, 1, "train", {}, "cuda")
        session.execute(
            update(Run).where(Run.id == orphan.id).values(host="gpu-box-8", pid=999_999_998)
        )
    try:
        run_cli(cli, "runs")
        assert _status(store, ours.id).status == "running"
        assert _status(store, theirs.id).status == "running"
        gone = _status(store, orphan.id)
        if dialect == "postgresql":
            assert gone.status == "failed" and gone.error and "on gpu-box-8" in gone.error
        else:
            assert gone.status == "running"
    finally:
        for conn, run_id in locks:
            store_runs.release_run_lock(conn, run_id)
    if dialect == "postgresql":
        # The lock given back without the row closed (the process died): the run is dead.
        run_cli(cli, "runs")
        assert _status(store, theirs.id).status == "failed"


def test_a_row_from_before_hosts_were_recorded_is_judged_by_its_pid(
    cli: CliRunner, store: Store, version1: int
) -> None:
    """SQLite (a store on this machine): by its pid. PostgreSQL: by its liveness lock, which
    nobody holds."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with store.write() as session:
        run = store_runs.create_run(session, 1, "train", {}, "cpu")
        session.execute(
            update(Run)
            .where(Run.id == run.id)
            .values(pid=gone.pid, host=None, process_started=None)
        )
    run_cli(cli, "versions")
    assert _status(store, run.id).status == "failed"
