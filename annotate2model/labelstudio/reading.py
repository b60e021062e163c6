"""Reading a project's tasks in full, and a sync's head start.

Nothing here imports the store: `a2m sync` sends its first requests (`HeadStart`) before it
imports SQLAlchemy and opens the store, so that Label Studio answers while this process imports.
On a first sync of 150 tasks that hides the store's 0.3 s of imports behind the listing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from annotate2model.labelstudio.client import LabelStudioClient, ProjectInfo
from annotate2model.progress import NullProgress, Progress

# What a sync reads of a task and of its annotations (the keys `resolve_labels`,
# `download_images` and `results.parse_annotation` use): Label Studio answers these alone in a
# third to a half of the time it takes for whole tasks (`LabelStudioClient.task_pages`).
TASK_FIELDS = (
    "id",
    "data",
    "updated_at",
    "annotations",
    # the annotations' own (with their id and updated_at above)
    "result",
    "was_cancelled",
    "ground_truth",
    "completed_by",
    "created_at",
)


@dataclass(frozen=True)
class FetchedTasks:
    # Task id -> the task as Label Studio answers it (annotations included).
    tasks: dict[int, dict[str, Any]]
    # Wanted ids that were deleted between the listing and the fetch.
    gone: frozenset[int] = frozenset()


# A first sync's first page of tasks: small, so that their images are read while the server
# lists the rest (the pages after it grow to the client's page size).
FIRST_PAGE = 100

# Called with each page of tasks as it arrives (to start reading their images).
OnPage = Callable[[list[dict[str, Any]]], None]


def read_all_tasks(
    client: LabelStudioClient,
    project_id: int,
    progress: Progress,
    *,
    stop: threading.Event | None = None,
    on_page: OnPage | None = None,
) -> FetchedTasks:
    """Every task of the project in full (annotations included), for a first sync.

    `stop`: set by the caller when it gives up (its own error); the reading ends after the
    current page, its result unused.
    """
    tasks: dict[int, dict[str, Any]] = {}
    progress.begin("Reading changed tasks")
    for _total, page in client.task_pages(project_id, fields=TASK_FIELDS, first_page=FIRST_PAGE):
        if on_page is not None:
            on_page(page)
        for task in page:
            tasks.setdefault(int(task["id"]), task)
        progress.advance(len(page))
        if stop is not None and stop.is_set():
            break
    progress.end()
    return FetchedTasks(tasks)


class _PageRelay:
    """Holds the pages that arrive before anyone wants them, then passes them on in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[list[dict[str, Any]]] = []
        self._sink: OnPage | None = None

    def __call__(self, page: list[dict[str, Any]]) -> None:
        with self._lock:
            if self._sink is None:
                self._held.append(page)
            else:
                self._sink(page)

    def attach(self, sink: OnPage) -> None:
        with self._lock:
            for page in self._held:
                sink(page)
            self._held.clear()
            self._sink = sink


class HeadStart:
    """A sync's first requests, sent before the store is open: the project (its labeling config
    and task count), and on a first sync every task in full (`read_all`).

    `read_all` is a guess (`store.peek.project_synced`): `sync_project` takes the reading when
    the store confirms that nothing of the project is stored, and otherwise stops it after its
    current page and waits for that, so the two never report progress at once. A context
    manager: leaving it stops a reading nobody took and waits for both requests' threads.
    """

    def __init__(
        self,
        client: LabelStudioClient,
        project_id: int,
        *,
        read_all: bool,
        progress: Progress | None = None,
    ) -> None:
        self.client = client
        self.project_id = project_id
        self.stop = threading.Event()
        self._relay = _PageRelay()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="a2m-sync-head")
        self.project: Future[ProjectInfo] = self._pool.submit(client.project, project_id)
        self._reading: Future[FetchedTasks] | None = None
        if read_all:
            self._reading = self._pool.submit(
                read_all_tasks,
                client,
                project_id,
                progress or NullProgress(),
                stop=self.stop,
                on_page=self._relay,
            )

    def take_reading(self, on_page: OnPage) -> Future[FetchedTasks] | None:
        """The full reading, if one was started; its pages so far and from now on go to
        `on_page`."""
        if self._reading is None:
            return None
        self._relay.attach(on_page)
        return self._reading

    def drop_reading(self) -> None:
        """The guess was wrong: stop the full reading after its current page and wait for it
        (its result and its errors are of no use)."""
        if self._reading is None:
            return
        self.stop.set()
        with contextlib.suppress(Exception):  # a dropped reading's failure is nobody's concern
            self._reading.result()
        self._reading = None

    def close(self) -> None:
        self.stop.set()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> HeadStart:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
