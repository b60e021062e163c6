"""One task whose image Label Studio cannot serve (its uploaded file gone from the server's disk:
HTTP 500) is skipped with its reason; it does not stop the sync of the rest, nor every later one.

The real server's 500 is measured here; what the sync does with a media URL that fails while
`/health` answers (a per-task problem) or fails too (the server is down: the sync stops, writing
nothing) is tested against a small HTTP server that answers what each test needs.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.config import parse_label_config
from annotate2model.labelstudio.downloads import ImageReader, download_images
from annotate2model.labelstudio.sync import sync_project
from annotate2model.progress import NullProgress
from annotate2model.settings import Secret
from annotate2model.store import Store
from annotate2model.store.blobs import BlobStore
from annotate2model.store.tasks import load_tasks
from annotate2model.workspace import Workspace
from tests.conftest import image_bytes, run_cli
from tests.labelstudio.conftest import LEGACY_TOKEN, LiveServer, choice, serve_http

pytestmark = pytest.mark.both_dialects

# A sync of a few tasks with one bad one: the bad one costs about a second (two tries and a
# look at /health), not the ~18 s of back-off meant for a server that restarts.
QUICK_S = 8.0


def uploaded_project(ls: LiveServer, n: int, seed: int) -> tuple[int, list[int], list[str]]:
    """A project of `n` labeled tasks whose images are uploads: (project, task ids, URLs)."""
    project = ls.create_project(["a", "b"])
    with ls.client() as c:
        urls = [c.upload_file(project, f"u{i}.png", image_bytes(seed + i)) for i in range(n)]
        ids = c.import_tasks(
            project,
            [
                {"data": {"image": url}, "annotations": [choice("ab"[i % 2])]}
                for i, url in enumerate(urls)
            ],
        )
    return project, ids, urls


def media_file(ls: LiveServer, url: str) -> Path:
    """Where the server keeps an uploaded file (`/data/upload/P/F` -> data/media/upload/P/F)."""
    assert url.startswith("/data/upload/")
    return ls.server.data_dir / "media" / url.removeprefix("/data/")


@pytest.mark.labelstudio
def test_a_missing_upload_is_skipped_and_picked_up_once_restored(
    ls_server: LiveServer, store: Store
) -> None:
    project, ids, urls = uploaded_project(ls_server, 6, seed=3100)
    bad_id, bad_url = ids[2], urls[2]
    path = media_file(ls_server, bad_url)
    saved = path.read_bytes()
    path.unlink()
    answer = httpx.get(
        ls_server.url + bad_url, headers={"Authorization": f"Token {LEGACY_TOKEN}"}, timeout=30
    )
    assert answer.status_code == 500  # what Label Studio 1.23.2 does for it

    with ls_server.client() as c:  # the default retries
        first = sync_project(store, c, project)
    assert first.version is not None and first.version.version.item_count == 5
    assert first.seconds < QUICK_S, f"one bad task cost {first.seconds:.1f} s"
    assert len(first.skipped) == 1
    task, reason = first.skipped[0]
    assert task == bad_id
    assert reason == f"image: Label Studio answered HTTP 500 for {bad_url}"
    assert first.skipped_by_reason == {"image": 1}
    with store.read() as session:
        rec = load_tasks(session, project)[bad_id]
    assert rec.image_sha256 is None and rec.problem == reason

    # The next sync tries the task again (still failing: no new version), as quickly.
    with ls_server.client() as c:
        again = sync_project(store, c, project)
    assert again.version is not None and not again.version.created
    assert again.skipped == first.skipped and again.tasks_fetched == 1
    assert again.seconds < QUICK_S

    # The file is back: the next sync picks the task up.
    path.write_bytes(saved)
    with ls_server.client() as c:
        fixed = sync_project(store, c, project)
    assert fixed.version is not None and fixed.version.created
    assert fixed.version.version.item_count == 6 and fixed.added == 1 and not fixed.skipped


@pytest.mark.labelstudio
def test_sync_command_says_which_task_and_why(
    cli: CliRunner, ls_server: LiveServer, workspace: Workspace
) -> None:
    project, ids, urls = uploaded_project(ls_server, 3, seed=3200)
    media_file(ls_server, urls[0]).unlink()
    code, out, err = run_cli(
        cli, "connect", ls_server.url, "--token", ls_server.legacy, "--project", str(project)
    )
    assert code == 0, err
    code, out, err = run_cli(cli, "sync")
    assert code == 0, err
    assert "Version 1: 2 images." in out
    assert f"task {ids[0]}" in out and "HTTP 500" in out and urls[0] in out
    code, out, err = run_cli(cli, "sync", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["created"] is False and summary["version"] == 1
    assert summary["skipped"] == [
        {"task": ids[0], "reason": f"image: Label Studio answered HTTP 500 for {urls[0]}"}
    ]
    # The version's note says that a task was left out, and why, where `a2m versions` shows it.
    code, out, err = run_cli(cli, "versions", "--json")
    assert code == 0, err
    (version,) = json.loads(out)
    assert version["item_count"] == 2
    assert "1 task left out" in version["note"] and "HTTP 500" in version["note"]


# -- the same decisions against a server that answers what each test needs --------------------


class FakeServer:
    """Answers `/health` (UP or HTTP 500) and `/data/upload/...` (an image, or a status)."""

    def __init__(self) -> None:
        self.healthy = True
        # Path -> status to answer for it; any other /data/ path gets an image.
        self.fail: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()


def fake_handler(fake: FakeServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            with fake.lock:
                fake.hits[self.path] = fake.hits.get(self.path, 0) + 1
            if self.path == "/health":
                if fake.healthy:
                    self._send(200, b'{"status": "UP"}', "application/json")
                else:
                    self._send(500, b"down", "text/plain")
            elif self.path in fake.fail:
                self._send(fake.fail[self.path], b"<h1>Server Error (500)</h1>", "text/html")
            else:
                seed = sum(self.path.encode()) % 1000
                self._send(200, image_bytes(seed), "image/png")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _download(
    url: str, fake: FakeServer, tmp_path: Path, urls: list[str], **client: Any
) -> tuple[dict[int, str], dict[int, str | None], float]:
    config = parse_label_config(
        '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
        '<Choice value="a"/><Choice value="b"/></Choices></View>',
        1,
    )
    tasks = {i + 1: {"id": i + 1, "data": {"image": u}} for i, u in enumerate(urls)}
    started = time.monotonic()
    with (
        LabelStudioClient(url, Secret(LEGACY_TOKEN), **client) as c,
        ImageReader(BlobStore(tmp_path / "blobs"), c, max_pixels=10_000_000) as reader,
    ):
        images = download_images(reader, tasks, {}, config, progress=NullProgress())
    return images.problems, images.shas, time.monotonic() - started


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_media_url_failing_while_the_server_is_healthy_is_that_task_alone(
    tmp_path: Path, status: int
) -> None:
    fake = FakeServer()
    bad = "/data/upload/1/gone.png"
    fake.fail[bad] = status
    urls = [bad, "/data/upload/1/ok1.png", "/data/upload/1/ok2.png"]
    with serve_http(fake_handler(fake)) as url:
        problems, shas, seconds = _download(url, fake, tmp_path, urls)
    assert problems == {1: f"image: Label Studio answered HTTP {status} for {bad}"}
    assert shas[1] is None and shas[2] and shas[3]
    # A couple of tries, not the six of a server that restarts; /health asked once.
    assert 2 <= fake.hits[bad] <= 3 and fake.hits["/health"] == 1
    assert seconds < 3.0


def test_many_bad_media_urls_cost_little_more_than_one(tmp_path: Path) -> None:
    fake = FakeServer()
    bad = [f"/data/upload/1/gone{i}.png" for i in range(40)]
    fake.fail.update(dict.fromkeys(bad, 500))
    with serve_http(fake_handler(fake)) as url:
        problems, _, seconds = _download(url, fake, tmp_path, [*bad, "/data/upload/1/ok.png"])
    assert len(problems) == 40 and all("HTTP 500" in p for p in problems.values())
    assert seconds < 6.0, f"{seconds:.1f} s for 40 bad images"
    # One look at /health stands for the failures around it, not one look each.
    assert fake.hits["/health"] < 10


def test_a_media_url_failing_while_health_fails_too_stops_the_sync(tmp_path: Path) -> None:
    fake = FakeServer()
    fake.healthy = False
    bad = "/data/upload/1/gone.png"
    fake.fail[bad] = 500
    with serve_http(fake_handler(fake)) as url, pytest.raises(LabelStudioError) as info:
        _download(url, fake, tmp_path, [bad, "/data/upload/1/ok.png"], backoff=0.05)
    message = str(info.value)
    assert "HTTP 500" in message and bad in message and "/health" in message
    assert LEGACY_TOKEN not in message


def test_a_missing_file_still_answers_404_as_before(tmp_path: Path) -> None:
    fake = FakeServer()
    bad = "/data/local-files/?d=x/missing.png"
    fake.fail[bad] = 404
    with serve_http(fake_handler(fake)) as url:
        problems, _, _ = _download(url, fake, tmp_path, [bad])
    assert problems == {1: f"image: Label Studio answered HTTP 404 for {bad}"}
    assert fake.hits[bad] == 1 and "/health" not in fake.hits
