"""Real processes on one workspace: concurrent readers and writers, and kill -9 at any moment."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from annotate2model.fsutil import TEMP_PREFIX
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store.blobs import sha256_bytes
from annotate2model.workspace import Workspace, init_workspace
from tests.conftest import make_image_folder

pytestmark = pytest.mark.slow


def a2m(ws: Workspace, *args: str, database_url: str | None = None) -> subprocess.Popen[str]:
    """`a2m args...` started on workspace `ws` (its store at `database_url` when given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    env["A2M_HOME"] = str(ws.root)
    if database_url:
        env["A2M_DATABASE_URL"] = database_url
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


def blob_count(ws: Workspace) -> int:
    """Whole blobs on disk (a writer's temp files not counted)."""
    if not ws.blobs_dir.is_dir():
        return 0
    return sum(
        1
        for sub in os.scandir(ws.blobs_dir)
        if sub.is_dir()
        for f in os.scandir(sub.path)
        if not f.name.startswith(TEMP_PREFIX)
    )


def holds_write_lock(ws: Workspace) -> bool:
    """Whether another connection holds the store's write lock right now (a commit under way)."""
    conn = sqlite3.connect(ws.store_path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return True
    finally:
        conn.close()


class Watched:
    """A running `a2m` process whose stderr (its progress output) is collected as it comes."""

    def __init__(self, ws: Workspace, *args: str) -> None:
        self.proc = a2m(ws, *args)
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def kill_when(self, ready: Callable[[], bool], what: str) -> None:
        """SIGKILL the process as soon as `ready()`; fail if it ended before that point."""
        deadline = time.monotonic() + 180  # a hang guard only; the wait is for `ready`
        while not ready():
            code = self.proc.poll()
            assert code is None, f"import-folder exited ({code}) before {what}: {self.stderr}"
            assert time.monotonic() < deadline, f"import-folder never reached {what}"
            time.sleep(0.001)
        assert self.proc.poll() is None, f"import-folder exited right after {what}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(30)
        assert self.proc.returncode == -signal.SIGKILL, f"not killed at {what}"


def test_kill_9_during_import_leaves_store_consistent(tmp_path: Path) -> None:
    """SIGKILL an import at seven points of its work, each seen happening, not guessed by delay:
    just after its first progress output, while the blobs are being written (five points, each
    further on than the last: blobs of killed runs stay and are not written again), and while it
    holds the write lock to commit the version. After every kill the store is consistent, and a
    last run makes the same version an unbroken run makes."""
    data = tmp_path / "data"
    total = 0
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i in range(150):
            # Noisy photos-like JPEGs: checking each costs a real decode, so the work takes a while.
            noise = Image.effect_noise((160, 120), 40 + i % 20).convert("RGB")
            noise.paste((i, 255 - i, 7 * i % 256), (0, 0, 40, 30))
            noise.save(data / label / f"{label}_{i}.jpg", quality=90 - i % 7)
            total += 1

    clean, _ = init_workspace(tmp_path / "clean")
    done = a2m(clean, "import-folder", str(data))
    _out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    expected = latest_hash(clean)
    assert blob_count(clean) == total

    ws, _ = init_workspace(tmp_path / "ws")
    Store.open(load_settings(ws, {})).close()

    run = Watched(ws, "import-folder", str(data))
    run.kill_when(lambda: any("Reading" in line for line in run.stderr), "its first progress")
    check_consistent(ws)
    for share in (0.1, 0.3, 0.5, 0.7, 0.85):
        target = max(int(total * share), blob_count(ws) + 1)
        run = Watched(ws, "import-folder", str(data))
        run.kill_when(lambda target=target: blob_count(ws) >= target, f"{target} blobs")
        check_consistent(ws)
        assert blob_count(ws) < total
    conn = sqlite3.connect(ws.store_path)
    assert conn.execute("select count(*) from dataset_versions").fetchone()[0] == 0
    conn.close()
    run = Watched(ws, "import-folder", str(data))
    run.kill_when(lambda: holds_write_lock(ws), "the commit")
    check_consistent(ws)

    final = a2m(ws, "import-folder", str(data))
    _out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    check_consistent(ws)
    assert latest_hash(ws) == expected
    assert blob_count(ws) == total


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
