"""Faults against a real Label Studio: the server stopping before and in the middle of a sync,
kill -9 of a sync process in the middle of its work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.sync import sync_project
from annotate2model.progress import NullProgress
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store.models import Annotation, DatasetVersion, Image, SyncState, Task
from annotate2model.store.versions import latest_version
from annotate2model.workspace import Workspace, init_workspace
from tests.conftest import image_bytes
from tests.labelstudio.conftest import ADMIN, LEGACY_TOKEN, PASSWORD, LiveServer, choice

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def test_server_down_during_sync_writes_nothing_and_next_sync_completes(
    ls_server: LiveServer, store: Store, image_server: tuple[str, Path]
) -> None:
    base, served = image_server
    for i in range(5):
        (served / f"d{i}.png").write_bytes(image_bytes(600 + i))
    project = ls_server.create_project(["a", "b"])
    with ls_server.client() as c:
        c.import_tasks(
            project,
            [
                {"data": {"image": f"{base}/d{i}.png"}, "annotations": [choice("a")]}
                for i in range(5)
            ],
        )
    port = ls_server.server.status().port
    ls_server.server.stop()
    try:
        with (
            ls_server.client(attempts=3, backoff=0.05) as c,
            pytest.raises(LabelStudioError) as info,
        ):
            sync_project(store, c, project)
        assert "did not answer" in str(info.value) and LEGACY_TOKEN not in str(info.value)
        with store.read() as session:
            assert latest_version(session) is None
    finally:
        assert port is not None
        _restart(ls_server, port)
    with ls_server.client() as c:
        result = sync_project(store, c, project)
    assert result.version is not None and result.version.version.item_count == 5


def _restart(ls_server: LiveServer, port: int) -> None:
    """Start the module's server again on its port, serving the same Local Files root."""
    restarted = ls_server.server.start(
        username=ADMIN,
        password=PASSWORD,
        token=LEGACY_TOKEN,
        port=port,
        files_root=ls_server.files_root,
    )
    ls_server.url = restarted.url


class KillDuringDownloads(NullProgress):
    """Progress that kills the Label Studio process (SIGKILL) once `after` images were read."""

    def __init__(self, ls_server: LiveServer, after: int) -> None:
        self.ls_server = ls_server
        self.after = after
        self.stage = ""
        self.tasks_read = 0
        self.images_read = 0
        self.killed_at: int | None = None

    def begin(self, description: str, total: float | None = None) -> None:
        self.stage = description

    def advance(self, amount: float = 1.0, status: str | None = None) -> None:
        if self.stage.startswith("Reading changed tasks"):
            self.tasks_read += int(amount)
        if not self.stage.startswith("Downloading images"):
            return
        self.images_read += int(amount)
        if self.killed_at is None and self.images_read >= self.after:
            pid = self.ls_server.server.status().pid
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)
            self.killed_at = self.images_read


def _row_counts(store: Store) -> dict[str, int]:
    with store.read() as session:
        return {
            model.__tablename__: int(session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Image, Task, Annotation, SyncState, DatasetVersion)
        }


def test_server_dying_in_the_middle_of_the_downloads_writes_nothing_and_resync_is_clean(
    ls_server: LiveServer, store: Store, tmp_path: Path
) -> None:
    n = 60
    project = ls_server.local_files_project("midsync", n, seed=900, size=(96, 96))
    port = ls_server.server.status().port
    assert port is not None
    progress = KillDuringDownloads(ls_server, after=5)
    try:
        with (
            ls_server.client(attempts=3, backoff=0.05) as c,
            pytest.raises(LabelStudioError) as info,
        ):
            sync_project(store, c, project, progress=progress, workers=2)
    finally:
        _restart(ls_server, port)
    # The server died after every task and some images were read, not before.
    assert progress.tasks_read == n and progress.killed_at is not None
    assert 5 <= progress.images_read < n
    message = str(info.value)
    assert "Label Studio" in message and LEGACY_TOKEN not in message
    assert "\n" not in message and "Traceback" not in message
    # Nothing committed: no image, task, annotation, sync state or version row.
    assert _row_counts(store) == {
        "images": 0,
        "tasks": 0,
        "annotations": 0,
        "sync_state": 0,
        "dataset_versions": 0,
    }
    with ls_server.client() as c:
        resumed = sync_project(store, c, project)
    clean_store = Store.open(
        load_settings(_workspace(tmp_path / "clean", ls_server.url, project), env={})
    )
    try:
        with ls_server.client() as c:
            clean = sync_project(clean_store, c, project)
    finally:
        clean_store.close()
    assert resumed.version is not None and clean.version is not None
    assert resumed.version.version.number == 1 and resumed.version.version.item_count == n
    assert resumed.version.version.content_hash == clean.version.version.content_hash
    assert not resumed.skipped


def _workspace(root: Path, url: str, project: int) -> Workspace:
    ws, _ = init_workspace(root)
    ws.update_config("labelstudio", {"url": url, "project": project})
    ws.write_secret("labelstudio_token", LEGACY_TOKEN)
    return ws


def _blob_count(ws: Workspace) -> int:
    """Images written whole to the blob store (temporary files of unfinished writes excluded)."""
    return sum(1 for p in ws.blobs_dir.glob("*/*") if len(p.name) == 64 and p.is_file())


def test_kill_9_mid_sync_then_resync_equals_clean_sync(
    ls_server: LiveServer, tmp_path: Path, image_server: tuple[str, Path]
) -> None:
    base, served = image_server
    n = 400
    for i in range(n):
        (served / f"k{i}.png").write_bytes(image_bytes(700 + i, size=(96, 96)))
    project = ls_server.create_project(["a", "b"])
    with ls_server.client() as c:
        c.import_tasks(
            project,
            [
                {"data": {"image": f"{base}/k{i}.png"}, "annotations": [choice("ab"[i % 2])]}
                for i in range(n)
            ],
        )
    killed = _workspace(tmp_path / "killed", ls_server.url, project)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "LABEL_STUDIO_"))}
    env["A2M_HOME"] = str(killed.root)
    process = subprocess.Popen(
        [sys.executable, "-m", "annotate2model", "sync", "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill only once the process is provably in the middle of its work: it has listed and read
    # the tasks and written some images to the blob store, but not all of them.
    blobs = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        blobs = _blob_count(killed)
        if blobs >= 20:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the sync finished (or died) before it could be killed"
    assert blobs >= 20, "the sync never got to its downloads; nothing in the middle to kill"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert _blob_count(killed) < n, "every image was already read: killed at the end, not mid-way"
    settings = load_settings(killed, env={})
    store = Store.open(settings)
    with store.read() as session:
        assert latest_version(session) is None
    env_out = subprocess.run(
        [sys.executable, "-m", "annotate2model", "sync", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    resumed = json.loads(env_out.stdout)
    clean_ws = _workspace(tmp_path / "clean", ls_server.url, project)
    clean_store = Store.open(load_settings(clean_ws, env={}))
    with ls_server.client() as c:
        sync_project(clean_store, c, project)
    with store.read() as a, clean_store.read() as b:
        va, vb = latest_version(a), latest_version(b)
    assert va is not None and vb is not None and resumed["version"] == va.number == 1
    assert va.content_hash == vb.content_hash and va.item_count == n
    store.close()
    clean_store.close()
