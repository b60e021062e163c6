"""Real processes on one workspace: concurrent readers and writers, and kill -9 at any moment."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store.blobs import sha256_bytes
from annotate2model.workspace import Workspace, init_workspace
from tests.conftest import make_image_folder

pytestmark = pytest.mark.slow


def a2m(ws: Workspace, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    env["A2M_HOME"] = str(ws.root)
    return subprocess.Popen(
        [sys.executable, "-m", "annotate2model", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_consistent(ws: Workspace) -> None:
    """Every version is whole, every row points at a stored image, every blob matches its name."""
    conn = sqlite3.connect(ws.store_path)
    try:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert conn.execute("pragma foreign_key_check").fetchall() == []
        for number, count in conn.execute("select number, item_count from dataset_versions"):
            rows = conn.execute("select count(*) from version_items where version=?", (number,))
            assert rows.fetchone()[0] == count, f"version {number} is partial"
        for (sha,) in conn.execute("select sha256 from images"):
            path = ws.blobs_dir / sha[:2] / sha
            assert path.is_file(), f"row for {sha[:12]} without its blob"
            assert sha256_bytes(path.read_bytes()) == sha
    finally:
        conn.close()


def latest_hash(ws: Workspace) -> str:
    conn = sqlite3.connect(ws.store_path)
    try:
        row = conn.execute("select content_hash from dataset_versions order by number desc limit 1")
        return str(row.fetchone()[0])
    finally:
        conn.close()


def test_kill_9_during_import_leaves_store_consistent(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", {"a": 150, "b": 150})
    clean, _ = init_workspace(tmp_path / "clean")
    done = a2m(clean, "import-folder", str(data))
    assert done.wait(120) == 0, done.stderr.read() if done.stderr else ""
    expected = latest_hash(clean)

    ws, _ = init_workspace(tmp_path / "ws")
    Store.open(load_settings(ws, {})).close()
    # Kill at increasing delays so the signal lands at start-up, mid-blobs and mid-commit.
    for delay in (0.3, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0):
        proc = a2m(ws, "import-folder", str(data))
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        check_consistent(ws)
    final = a2m(ws, "import-folder", str(data))
    assert final.wait(120) == 0
    check_consistent(ws)
    assert latest_hash(ws) == expected


def test_concurrent_writers_and_readers_never_see_locked(tmp_path: Path) -> None:
    ws, _ = init_workspace(tmp_path / "ws")
    Store.open(load_settings(ws, {})).close()
    folders = [make_image_folder(tmp_path / f"d{i}", {"x": 40, "y": 40}, seed=i) for i in range(3)]
    procs = [a2m(ws, "import-folder", str(f)) for f in folders]
    readers = [a2m(ws, "versions", "--json") for _ in range(6)]
    for p in procs + readers:
        _out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        assert "locked" not in err
    conn = sqlite3.connect(ws.store_path)
    assert conn.execute("select count(*) from dataset_versions").fetchone()[0] == 3
    conn.close()
    check_consistent(ws)
