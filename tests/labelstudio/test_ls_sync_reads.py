"""How a sync reads a real Label Studio: tasks narrowed to the keys it uses lose nothing it
reads, pages that grow from a small first one give every task once, and a first sync reads the
images it can get without the server while the server still lists tasks, with the same result
as one that reads them afterwards, and nothing written when the server dies meanwhile."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.connection import LocalFiles
from annotate2model.labelstudio.reading import FIRST_PAGE, TASK_FIELDS, HeadStart
from annotate2model.labelstudio.results import parse_annotation
from annotate2model.labelstudio.sync import sync_project
from annotate2model.progress import NullProgress
from annotate2model.settings import load_settings
from annotate2model.store import Store
from annotate2model.store.models import DatasetVersion, Image, Task
from annotate2model.workspace import init_workspace
from tests.labelstudio.conftest import ADMIN, LEGACY_TOKEN, PASSWORD, LiveServer, choice

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def _as_a_sync_reads(tasks: list[dict[str, Any]]) -> dict[int, Any]:
    """What a sync takes from each task: its data, updated_at and parsed annotations."""
    return {
        int(t["id"]): (
            t["data"],
            t["updated_at"],
            [parse_annotation(a, "label") for a in t.get("annotations") or []],
        )
        for t in tasks
    }


def test_narrowed_tasks_carry_everything_a_sync_reads(ls_server: LiveServer) -> None:
    project = ls_server.create_project(["a", "b"])
    with ls_server.client() as c:
        ids = c.import_tasks(
            project,
            [
                {
                    "data": {"image": "https://example.invalid/0.png", "note": "two answers"},
                    "annotations": [choice("a"), choice("b", ground_truth=False)],
                },
                {
                    "data": {"image": "https://example.invalid/1.png"},
                    "annotations": [{"result": [], "was_cancelled": True}],
                },
                {"data": {"image": "https://example.invalid/2.png"}},
                {
                    "data": {"image": "https://example.invalid/3.png"},
                    "predictions": [{"result": choice("b")["result"], "score": 0.5}],
                },
            ],
        )
        ls_server.api("POST", f"/api/tasks/{ids[2]}/annotations/", json=choice("b"))
        whole = [t for _, page in c.task_pages(project) for t in page]
        narrowed = [t for _, page in c.task_pages(project, fields=TASK_FIELDS) for t in page]
        by_id = [t for page in c.tasks_by_id(project, ids[:3], fields=TASK_FIELDS) for t in page]
    # Narrowed: only the keys asked for, and no less of them than in whole tasks.
    assert all(set(t) <= set(TASK_FIELDS) for t in narrowed)
    assert all(set(a) <= set(TASK_FIELDS) for t in narrowed for a in t["annotations"])
    assert len(whole) == 4 and len(whole[0]["annotations"]) == 2
    assert _as_a_sync_reads(narrowed) == _as_a_sync_reads(whole)
    assert _as_a_sync_reads(by_id) == {
        tid: read for tid, read in _as_a_sync_reads(whole).items() if tid in ids[:3]
    }
    cancelled = _as_a_sync_reads(narrowed)[ids[1]][2][0]
    assert cancelled.was_cancelled and cancelled.label is None


def test_pages_growing_from_a_small_first_one_give_every_task_once(
    ls_server: LiveServer,
) -> None:
    project = ls_server.create_project(["a", "b"])
    with ls_server.client() as c:
        ids = c.import_tasks(
            project,
            [
                {"data": {"image": f"https://example.invalid/{i}.png"}, "annotations": []}
                for i in range(230)
            ],
        )
        asked: list[tuple[str, str]] = []

        def record(request: httpx.Request) -> None:
            if request.url.path == "/api/tasks":
                asked.append((request.url.params["page_size"], request.url.params["page"]))

        c._http.event_hooks["request"].append(record)
        pages = [
            [int(t["id"]) for t in page]
            for _, page in c.task_pages(project, fields=TASK_FIELDS, first_page=50, page_size=100)
        ]
    assert [len(p) for p in pages] == [50, 50, 100, 30]
    assert [tid for page in pages for tid in page] == sorted(ids)
    assert asked == [("50", "1"), ("50", "2"), ("100", "2"), ("100", "3")]


class WaitForImagesWhileListing(NullProgress):
    """Holds the task listing after its first page until an image of that page is in the blob
    store: it only gets there if images are read while the tasks are still being listed.
    `then` runs once an image is in (to kill the server in the middle of the listing)."""

    def __init__(self, blobs: Path, then: Any = None) -> None:
        self.blobs = blobs
        self.then = then
        self.stage = ""
        self.pages = 0
        self.blobs_while_listing = 0
        self.blobs_at_downloads: int | None = None

    def begin(self, description: str, total: float | None = None) -> None:
        self.stage = description
        if description.startswith("Downloading images"):
            self.blobs_at_downloads = _blob_count(self.blobs)

    def advance(self, amount: float = 1.0, status: str | None = None) -> None:
        if not self.stage.startswith("Reading changed tasks"):
            return
        self.pages += 1
        if self.pages > 1:
            return
        deadline = time.monotonic() + 60
        while _blob_count(self.blobs) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.blobs_while_listing = _blob_count(self.blobs)
        if self.then is not None:
            self.then()


def _blob_count(root: Path) -> int:
    return sum(1 for p in root.glob("*/*") if len(p.name) == 64 and p.is_file())


def _other_store(tmp_path: Path, name: str) -> Store:
    ws, _ = init_workspace(tmp_path / name)
    return Store.open(load_settings(ws, env={}))


def _plain_sync_hash(
    ls_server: LiveServer, tmp_path: Path, name: str, project: int, local: LocalFiles | None = None
) -> str:
    """The content hash of the version a plain sync (no prefetch, no head start) of `project`
    makes in a fresh store."""
    other = _other_store(tmp_path, name)
    try:
        with ls_server.client() as c:
            plain = sync_project(other, c, project, local=local)
    finally:
        other.close()
    assert plain.version is not None
    return plain.version.version.content_hash


def test_first_sync_reads_images_while_listing_and_ends_as_one_that_reads_them_after(
    ls_server: LiveServer, store: Store, tmp_path: Path
) -> None:
    n = FIRST_PAGE + 40
    project = ls_server.local_files_project("overlap", n, seed=2000)
    local = LocalFiles(same_server=True, root=ls_server.files_root)
    progress = WaitForImagesWhileListing(store.blobs.root)
    with ls_server.client() as c:
        result = sync_project(store, c, project, progress=progress, local=local)
    assert progress.pages == 2 and progress.blobs_while_listing > 0
    assert result.version is not None and result.version.version.item_count == n
    assert result.images_downloaded == n and not result.skipped
    # The same project read over HTTP, images only after the listing (nothing to prefetch).
    plain = _plain_sync_hash(ls_server, tmp_path, "over-http", project)
    assert plain == result.version.version.content_hash


def test_server_dying_while_images_are_read_during_the_listing_writes_no_row(
    ls_server: LiveServer, tmp_path: Path
) -> None:
    n = FIRST_PAGE + 40
    project = ls_server.local_files_project("dies", n, seed=2000)
    local = LocalFiles(same_server=True, root=ls_server.files_root)
    store = _other_store(tmp_path, "dies")
    port = ls_server.server.status().port
    assert port is not None

    def kill() -> None:
        pid = ls_server.server.status().pid
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)

    progress = WaitForImagesWhileListing(store.blobs.root, then=kill)
    try:
        with (
            ls_server.client(attempts=3, backoff=0.05) as c,
            pytest.raises(LabelStudioError) as info,
        ):
            sync_project(store, c, project, progress=progress, local=local)
    finally:
        restarted = ls_server.server.start(
            username=ADMIN,
            password=PASSWORD,
            token=LEGACY_TOKEN,
            port=port,
            files_root=ls_server.files_root,
        )
        ls_server.url = restarted.url
    assert progress.blobs_while_listing > 0 and progress.blobs_at_downloads is None
    assert LEGACY_TOKEN not in str(info.value) and "\n" not in str(info.value)
    with store.read() as session:
        rows = [
            int(session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Image, Task, DatasetVersion)
        ]
    assert rows == [0, 0, 0]
    try:
        with ls_server.client() as c:
            resumed = sync_project(store, c, project, local=local)
    finally:
        store.close()
    assert resumed.version is not None and resumed.version.version.item_count == n
    assert not resumed.skipped


class OneStageAtATime(NullProgress):
    """Fails the test if a stage begins while another one is open (two threads reporting)."""

    def __init__(self) -> None:
        self.open: str | None = None
        self.stages: list[str] = []
        self.overlaps: list[tuple[str, str]] = []

    def begin(self, description: str, total: float | None = None) -> None:
        if self.open is not None:
            self.overlaps.append((self.open, description))
        self.open = description
        self.stages.append(description)

    def end(self) -> None:
        self.open = None


def test_first_sync_from_a_head_start_reads_images_early_and_equals_one_without(
    ls_server: LiveServer, tmp_path: Path
) -> None:
    """`a2m sync`'s way: the tasks are asked for before the store is open; the pages that
    arrive before the sync takes the reading are held, then their images read."""
    n = FIRST_PAGE + 40
    project = ls_server.local_files_project("head", n, seed=2200)
    local = LocalFiles(same_server=True, root=ls_server.files_root)
    store = _other_store(tmp_path, "head")
    progress = WaitForImagesWhileListing(store.blobs.root)
    try:
        with (
            ls_server.client() as c,
            HeadStart(c, project, read_all=True, progress=progress) as head,
        ):
            ahead = sync_project(store, c, project, local=local, head=head)
    finally:
        store.close()
    assert progress.pages == 2 and progress.blobs_while_listing > 0
    assert ahead.version is not None and ahead.version.version.item_count == n
    assert ahead.tasks_fetched == n and not ahead.skipped
    plain = _plain_sync_hash(ls_server, tmp_path, "plain", project, local)
    assert plain == ahead.version.version.content_hash


def test_a_head_start_that_guessed_a_first_sync_wrongly_changes_nothing(
    ls_server: LiveServer, store: Store
) -> None:
    """The store already holds the project (another sync got there first): the early full
    reading is stopped and waited for, and the sync goes on as a no-change one."""
    project = ls_server.local_files_project("guess", 30, seed=2400)
    local = LocalFiles(same_server=True, root=ls_server.files_root)
    with ls_server.client() as c:
        first = sync_project(store, c, project, local=local)
        progress = OneStageAtATime()
        with HeadStart(c, project, read_all=True, progress=progress) as head:
            again = sync_project(store, c, project, local=local, progress=progress, head=head)
        with (
            pytest.raises(ValueError, match="another project"),
            HeadStart(c, project + 1000, read_all=False) as other,
        ):
            sync_project(store, c, project, head=other)
    assert first.version is not None and again.version is not None
    assert not again.version.created and again.tasks_fetched == 0
    assert again.version.version.number == first.version.version.number
    assert progress.overlaps == [] and progress.stages[0] == "Reading changed tasks"
