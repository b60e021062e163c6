"""A Label Studio that answers 5xx or slowly: retries with backoff, then a clear error.

A real HTTP proxy stands between a2m and the real server and injects the faults.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.sync import sync_project
from annotate2model.settings import Secret
from annotate2model.store import Store
from annotate2model.store.versions import latest_version
from tests.conftest import image_bytes
from tests.labelstudio.conftest import LEGACY_TOKEN, LiveServer, Request, choice, forwarding_proxy

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


class Faults:
    """What the proxy does to the requests passing through it."""

    def __init__(self) -> None:
        self.fail_every = 0  # answer 503 to every Nth request (0: never)
        self.fail_all = False
        self.delay = 0.0  # seconds added before each answer
        self.seen = 0
        self.failed = 0
        # "METHOD /path" -> how many times it arrived (the query left out).
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()


@pytest.fixture
def flaky_proxy(ls_server: LiveServer) -> Iterator[tuple[str, Faults]]:
    faults = Faults()

    def inject(request: Request) -> tuple[int, bytes] | None:
        method, path, _body = request
        with faults.lock:
            faults.seen += 1
            faults.requests[f"{method} {urlsplit(path).path}"] += 1
            fail = faults.fail_all or (
                faults.fail_every > 0 and faults.seen % faults.fail_every == 0
            )
            if fail:
                faults.failed += 1
        time.sleep(faults.delay)
        return (503, b'{"detail": "injected fault"}') if fail else None

    with forwarding_proxy(ls_server.url, inject) as url:
        yield url, faults


def _project_with_tasks(
    ls_server: LiveServer, image_server: tuple[str, Path], n: int, seed: int
) -> int:
    base, served = image_server
    tasks = []
    for i in range(n):
        (served / f"flaky{seed}_{i}.png").write_bytes(image_bytes(seed + i))
        label = "a" if i % 2 else "b"
        tasks.append(
            {"data": {"image": f"{base}/flaky{seed}_{i}.png"}, "annotations": [choice(label)]}
        )
    project = ls_server.create_project(["a", "b"])
    with ls_server.client() as c:
        c.import_tasks(project, tasks)
    return project


def test_5xx_and_slow_answers_are_retried_and_the_sync_completes(
    ls_server: LiveServer,
    store: Store,
    image_server: tuple[str, Path],
    flaky_proxy: tuple[str, Faults],
) -> None:
    url, faults = flaky_proxy
    project = _project_with_tasks(ls_server, image_server, 12, seed=7100)
    # A first sync asks Label Studio twice (the project, every task in full): every 2nd fails.
    faults.fail_every = 2
    faults.delay = 0.05
    client = LabelStudioClient(url, Secret(LEGACY_TOKEN), attempts=4, backoff=0.02)
    with client:
        result = sync_project(store, client, project)
    assert faults.failed > 0, "the proxy injected no fault; the test proves nothing"
    assert result.version is not None and result.version.version.item_count == 12


def test_a_server_that_keeps_failing_gives_a_clear_error_and_writes_nothing(
    ls_server: LiveServer,
    store: Store,
    image_server: tuple[str, Path],
    flaky_proxy: tuple[str, Faults],
) -> None:
    url, faults = flaky_proxy
    project = _project_with_tasks(ls_server, image_server, 4, seed=7200)
    faults.fail_all = True
    client = LabelStudioClient(url, Secret(LEGACY_TOKEN), attempts=3, backoff=0.02)
    with client, pytest.raises(LabelStudioError) as info:
        sync_project(store, client, project)
    message = str(info.value)
    assert "503" in message and LEGACY_TOKEN not in message
    # Bounded: each request of the sync's first step (the project, the task listing; they may
    # run side by side) is tried exactly `attempts` times, then the error.
    assert set(faults.requests) <= {f"GET /api/projects/{project}", "GET /api/tasks"}
    assert faults.requests and all(n == 3 for n in faults.requests.values()), faults.requests
    with store.read() as session:
        assert latest_version(session) is None
    # The server recovers: the next sync completes.
    faults.fail_all = False
    with LabelStudioClient(url, Secret(LEGACY_TOKEN)) as healthy:
        result = sync_project(store, healthy, project)
    assert result.version is not None and result.version.version.item_count == 4
