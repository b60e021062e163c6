"""Faults against a real Label Studio: the server stopping mid-way, kill -9 of a sync."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.sync import sync_project
from annotate2model.settings import load_settings
from annotate2model.store import Store
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
        restarted = ls_server.server.start(
            username=ADMIN, password=PASSWORD, token=LEGACY_TOKEN, port=port
        )
        ls_server.url = restarted.url
    with ls_server.client() as c:
        result = sync_project(store, c, project)
    assert result.version is not None and result.version.version.item_count == 5


def _workspace(root: Path, url: str, project: int) -> Workspace:
    ws, _ = init_workspace(root)
    ws.update_config("labelstudio", {"url": url, "project": project})
    ws.write_secret("labelstudio_token", LEGACY_TOKEN)
    return ws


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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if sum(1 for _ in killed.blobs_dir.glob("*/*")) >= 20:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the sync finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
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
