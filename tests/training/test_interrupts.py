"""Ctrl-C (SIGINT) and SIGTERM stop training within seconds, at every stage, and leave the run
closed as interrupted with nothing half-written.

The processes are started the way CI and shell scripts start background jobs: with SIGINT
inherited as ignored. Python then installs no KeyboardInterrupt handler of its own, which is how
a real Ctrl-C used to be lost (the run went on for minutes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.training.runs import artifacts, runner
from annotate2model.workspace import Workspace
from tests.conftest import make_image_folder
from tests.training.conftest import small_config

pytestmark = [pytest.mark.training]


def _inherit_ignored_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start(workspace: Workspace, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "annotate2model", "train", *args],
        env={**os.environ, "A2M_HOME": str(workspace.root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_inherit_ignored_sigint,
    )


def _wait_for(condition: object, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        if proc.poll() is not None:
            pytest.fail(f"the process ended before {what}: {proc.stderr.read()!r}")  # type: ignore[union-attr]
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _stop(proc: subprocess.Popen[bytes], sig: int) -> str:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the process was still running 60 s after signal {sig}")
    assert proc.returncode != 0
    return err.decode()


def _vectors(db: Path) -> int:
    if not db.is_file():
        return 0
    with (
        contextlib.suppress(sqlite3.Error),
        contextlib.closing(sqlite3.connect(db, timeout=5)) as c,
    ):
        return int(c.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
    return 0


def _runs(store: Store) -> list[store_runs.RunRecord]:
    with store.read() as session:
        return store_runs.list_runs(session)


@pytest.mark.slow
def test_sigint_while_torch_loads(
    workspace: Workspace, store: Store, version1: Path, weights: Path
) -> None:
    # Fine-tuning needs torch (a probe on the CPU runs without it: lite.py).
    proc = _start(workspace, "--weights", str(weights), "--image-size", "32", "--mode", "finetune")
    maps = Path(f"/proc/{proc.pid}/maps")

    def torch_loading() -> bool:
        with contextlib.suppress(OSError):
            return "libtorch" in maps.read_text()
        return False

    _wait_for(torch_loading, "torch started loading", proc)
    assert not _runs(store), "the signal must arrive before the run starts"
    err = _stop(proc, signal.SIGINT)
    assert "Traceback" not in err
    assert all(r.status != "running" for r in _runs(store))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_extraction(
    workspace: Workspace, store: Store, tmp_path: Path, weights: Path, sig: int
) -> None:
    from annotate2model.store.imports import import_folder

    import_folder(store, make_image_folder(tmp_path / "many", {"ants": 200, "bees": 200}))
    db = workspace.cache_dir / "embeddings" / "embeddings.sqlite"
    proc = _start(workspace, "--weights", str(weights), "--image-size", "128")
    _wait_for(lambda: _vectors(db) > 0, "the first features were stored", proc)
    _stop(proc, sig)
    stored = _vectors(db)
    assert 0 < stored < 400, "the process must be stopped in the middle of extraction"
    assert stored % 32 == 0  # whole batches only
    (run,) = _runs(store)
    assert run.status == "interrupted" and run.pid is None
    expected = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
    assert expected in (run.error or "")


@pytest.mark.slow
def test_sigint_during_an_epoch(
    workspace: Workspace, store: Store, tmp_path: Path, weights: Path
) -> None:
    from annotate2model.store.imports import import_folder

    import_folder(store, make_image_folder(tmp_path / "many", {"ants": 150, "bees": 150}))
    args = ["--weights", str(weights), "--image-size", "64", "--mode", "finetune"]
    proc = _start(workspace, *args, "--unfreeze", "all", "--epochs", "50", "--workers", "0")
    _wait_for(lambda: bool(_runs(store) and _runs(store)[0].history), "one epoch ended", proc)
    _stop(proc, signal.SIGINT)
    (run,) = _runs(store)
    assert run.status == "interrupted" and run.pid is None
    assert 1 <= len(run.history) < 50, "stopped in the middle of training"
    run_dir = workspace.runs_dir / str(run.id)
    assert not run_dir.exists() or not (run_dir / artifacts.CARD_FILE).exists()


def test_sigint_while_writing_the_model_leaves_no_card(
    store: Store, version1: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = artifacts.write_text

    def interrupted_write(path: Path, text: str) -> None:
        if path.name == artifacts.CARD_FILE:
            os.kill(os.getpid(), signal.SIGINT)  # the weights are written, the card is next
        real(path, text)

    monkeypatch.setattr(artifacts, "write_text", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        runner.train(store, small_config(weights, epochs=1))
    (run,) = _runs(store)
    assert run.status == "interrupted" and run.artifact_dir is None
    run_dir = store.settings.workspace.runs_dir / str(run.id)
    assert not (run_dir / artifacts.CARD_FILE).exists()


def test_sigint_inside_a_ledger_write_is_acted_on_after_it(
    store: Store, version1: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store_runs.record_history

    def signal_mid_write(session: object, run_id: int, history: list[dict[str, object]]) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # inside the write transaction
        real(session, run_id, history)  # type: ignore[arg-type]

    monkeypatch.setattr(store_runs, "record_history", signal_mid_write)
    with pytest.raises(KeyboardInterrupt):
        runner.train(store, small_config(weights, epochs=3))
    (run,) = _runs(store)
    # The epoch's history was committed whole, then the interrupt closed the run.
    assert run.status == "interrupted" and len(run.history) == 1
    # And nothing holds the write lock afterwards.
    with store.write() as session:
        real(session, run.id, run.history)


def test_sigint_while_the_run_row_is_created_closes_it(
    store: Store, version1: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store_runs.create_run

    def signal_mid_create(*args: object, **kwargs: object) -> store_runs.RunRecord:
        os.kill(os.getpid(), signal.SIGINT)  # inside the creating transaction
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_runs, "create_run", signal_mid_create)
    with pytest.raises(KeyboardInterrupt):
        runner.train(store, small_config(weights, epochs=1))
    (run,) = _runs(store)
    assert run.status == "interrupted" and run.pid is None and run.history == []
