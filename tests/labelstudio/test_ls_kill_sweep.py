"""A real `a2m sync` killed (SIGKILL) at ten seeded moments spread over its run: after every kill
the store is whole (SQLite's own check, no half-written version or sync), and the sync that
finally runs to its end reaches the version a clean sync of the same project makes.

The project mixes images from another host, uploads Label Studio serves, one upload whose file
is gone from the server's disk (HTTP 500: skipped, not fatal) and one task whose only answer
was cancelled, so that the kills land in every step of a sync: start-up and the store's
creation, the listing, the downloads, the skipped tasks, the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from annotate2model.workspace import Workspace, init_workspace
from tests.conftest import image_bytes
from tests.labelstudio.conftest import LEGACY_TOKEN, LiveServer, choice

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

SEED = 26
KILLS = 10
# Tasks whose image comes from another host, and uploads Label Studio serves itself.
N_HTTP = 400
N_UPLOADS = 24


@dataclass(frozen=True)
class SweepProject:
    id: int
    # Task ids expected to give no row, and why (the start of the reason).
    skipped: dict[int, str]
    tasks: int


def build_project(ls: LiveServer, served: Path, base: str) -> SweepProject:
    project = ls.create_project(["a", "b"])
    with ls.client() as c:
        uploads = [
            c.upload_file(project, f"s{i}.png", image_bytes(5000 + i, size=(96, 96)))
            for i in range(N_UPLOADS + 1)
        ]
        for i in range(N_HTTP):
            (served / f"s{i}.png").write_bytes(image_bytes(5100 + i, size=(96, 96)))
        tasks: list[dict[str, Any]] = [
            {"data": {"image": f"{base}/s{i}.png"}, "annotations": [choice("ab"[i % 2])]}
            for i in range(N_HTTP)
        ]
        tasks += [
            {"data": {"image": url}, "annotations": [choice("ba"[i % 2])]}
            for i, url in enumerate(uploads)
        ]
        tasks.append(
            {
                "data": {"image": f"{base}/s0.png"},
                "annotations": [choice("a", was_cancelled=True)],
            }
        )
        ids = c.import_tasks(project, tasks)
    # The last upload's file leaves the server's disk: Label Studio answers 500 for it.
    bad = uploads[-1]
    (ls.server.data_dir / "media" / bad.removeprefix("/data/")).unlink()
    return SweepProject(
        id=project,
        skipped={
            ids[N_HTTP + N_UPLOADS]: "image: Label Studio answered HTTP 500",
            ids[-1]: "skipped",
        },
        tasks=len(ids),
    )


def connected(root: Path, url: str, project: int) -> Workspace:
    ws, _ = init_workspace(root)
    ws.update_config("labelstudio", {"url": url, "project": project})
    ws.write_secret("labelstudio_token", LEGACY_TOKEN)
    return ws


def sync_process(ws: Workspace) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "LABEL_STUDIO_"))}
    env["A2M_HOME"] = str(ws.root)
    return subprocess.Popen(
        [sys.executable, "-m", "annotate2model", "sync", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_sync(ws: Workspace) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    process = sync_process(ws)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out), time.monotonic() - started


def check_store(ws: Workspace, project: SweepProject) -> dict[str, int]:
    """Assert what a killed sync may leave: the store as it was or with the whole sync in it.

    Returns the row counts of the tables a sync writes."""
    path = ws.store_path
    if not path.exists():
        return {}  # killed before it created the store
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "dataset_versions" not in tables:
            return {}  # killed while it created the schema: nothing of a sync is there
        counts = {
            table: int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("images", "tasks", "annotations", "sync_state", "dataset_versions")
        }
        # Every version whole: as many rows as it says, and the hash of those rows.
        for number, item_count, stored_hash in db.execute(
            "SELECT number, item_count, content_hash FROM dataset_versions"
        ).fetchall():
            rows = db.execute(
                "SELECT image_sha256, label, split FROM version_items WHERE version = ? "
                "ORDER BY image_sha256",
                (number,),
            ).fetchall()
            assert len(rows) == item_count, f"version {number}: {len(rows)} of {item_count} rows"
            text = "".join(f"{sha}\t{label}\t{split}\n" for sha, label, split in rows)
            assert hashlib.sha256(text.encode()).hexdigest() == stored_hash
        orphans = db.execute(
            "SELECT count(*) FROM version_items WHERE version NOT IN "
            "(SELECT number FROM dataset_versions) "
            "OR image_sha256 NOT IN (SELECT sha256 FROM images)"
        ).fetchone()[0]
        assert orphans == 0
        # A sync commits whole: its task rows, its sync state and its version together.
        if counts["tasks"] or counts["sync_state"] or counts["dataset_versions"]:
            assert counts["tasks"] == project.tasks and counts["sync_state"] == 1
            assert counts["dataset_versions"] == 1
            (last,) = db.execute("SELECT last_version FROM sync_state").fetchone()
            assert last == 1
            problems = dict(
                db.execute("SELECT task_id, problem FROM tasks WHERE problem IS NOT NULL")
            )
            assert set(problems) == set(project.skipped)
        # Every image row's blob is on disk, whole.
        for sha, size in db.execute("SELECT sha256, size_bytes FROM images").fetchall():
            blob = ws.blobs_dir / sha[:2] / sha
            assert blob.is_file() and blob.stat().st_size == size, f"blob {sha[:12]}"
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha
        return counts
    finally:
        db.close()


def test_kill_9_at_ten_seeded_moments_leaves_a_whole_store_and_resync_equals_clean(
    ls_server: LiveServer, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, served = image_server
    project = build_project(ls_server, served, base)

    # A clean sync into a fresh workspace: the version to reach, and how long a sync takes.
    clean_ws = connected(tmp_path / "clean", ls_server.url, project.id)
    clean, duration = run_sync(clean_ws)
    assert clean["created"] and clean["version"] == 1
    assert {s["task"]: s["reason"] for s in clean["skipped"]}.keys() == project.skipped.keys()
    for task, reason in project.skipped.items():
        assert next(s["reason"] for s in clean["skipped"] if s["task"] == task).startswith(reason)
    check_store(clean_ws, project)

    # One moment in each tenth of the clean sync's duration, the same ones on every run. The
    # kills follow one another in one workspace, each sync resuming what the killed ones left;
    # once one gets through its commit, its version must be the clean one, and the next moments
    # start again from a fresh workspace (a sync with nothing to do would prove little).
    rng = random.Random(SEED)
    moments = [duration * (i + rng.random()) / KILLS for i in range(KILLS)]
    chain = 0
    killed_ws = connected(tmp_path / "killed0", ls_server.url, project.id)
    outcomes: list[str] = []
    for moment in moments:
        process = sync_process(killed_ws)
        started = time.monotonic()
        while process.poll() is None and time.monotonic() - started < moment:
            time.sleep(0.005)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)  # it may end on its own meanwhile: then 0
        _, err = process.communicate()
        assert process.returncode in (0, -signal.SIGKILL), err[-2000:]
        if process.returncode:
            outcome = f"killed at {moment:.2f} s"
        else:
            outcome = f"done before {moment:.2f} s"
        blobs = sum(1 for p in killed_ws.blobs_dir.glob("*/*") if len(p.name) == 64)
        counts = check_store(killed_ws, project)
        committed = bool(counts.get("dataset_versions"))
        outcomes.append(f"{outcome} ({blobs} blobs, {'committed' if committed else 'no rows'})")
        if committed:
            assert version_rows(killed_ws) == version_rows(clean_ws), outcomes
            chain += 1
            killed_ws = connected(tmp_path / f"killed{chain}", ls_server.url, project.id)
    print(f"clean sync {duration:.2f} s; " + "; ".join(outcomes))
    # Most moments fall inside a sync: a sweep that killed nothing would prove nothing.
    assert sum(o.startswith("killed") for o in outcomes) >= KILLS // 2, outcomes

    # The last workspace's sync runs to its end: the clean version, the same tasks left out.
    resumed, _ = run_sync(killed_ws)
    check_store(killed_ws, project)
    assert resumed["version"] == 1, outcomes
    assert resumed["skipped"] == clean["skipped"]
    assert version_rows(killed_ws) == version_rows(clean_ws)


def version_rows(ws: Workspace) -> list[tuple[int, int, str]]:
    """(number, item count, content hash) of every version in the workspace's store."""
    db = sqlite3.connect(ws.store_path)
    try:
        rows = db.execute("SELECT number, item_count, content_hash FROM dataset_versions")
        return [(int(n), int(c), str(h)) for n, c, h in rows.fetchall()]
    finally:
        db.close()
