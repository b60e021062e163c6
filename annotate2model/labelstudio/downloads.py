"""The image step of a sync: read each changed task's image, validate it, put it in the blob store.

Image URLs come in four kinds (Label Studio's own `/data/...`, `http(s)://`, `data:` and anything
else); an image that cannot be read or is no usable image is a problem of its task alone, while
Label Studio itself failing stops the sync. Which of the two a failing `/data/...` URL is, its
answer and then `/health` say: a file the server answers 404 or 500 for while `/health` answers
UP is that task's problem (an upload deleted from the server's disk gives 500 for ever); no
answer, or `/health` failing too, is the server down. Blobs are written here, before any row
points at them; their rows are written by the sync's commit.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from annotate2model.errors import InvalidImage, LabelStudioError
from annotate2model.labelstudio.client import PATH_FAILURE_STATUS, LabelStudioClient
from annotate2model.labelstudio.config import LabelingConfig
from annotate2model.progress import Progress
from annotate2model.store.blobs import BlobStore
from annotate2model.store.images import StagedImage, stage_image
from annotate2model.store.tasks import TaskRecord

if TYPE_CHECKING:
    from annotate2model.labelstudio.connection import LocalFiles

# Every image problem starts so; a task with one is retried by the next sync.
IMAGE_PROBLEM = "image: "
# Answers of a failing status (500, 502, 504) a Label Studio image URL gets before /health is
# asked whether the server is up: one retry, half a second later. (A server that restarts
# refuses connections, which keep the client's whole back-off.)
MEDIA_ATTEMPTS = 2
# A URL named in a task's problem is cut to this many characters.
MAX_URL_SHOWN = 300


@dataclass(frozen=True)
class TaskImages:
    """Where each fetched task's image stands after the download step."""

    # Task id -> the image URL in its data (None: the task has no image field).
    urls: dict[int, str | None]
    # Task id -> the stored image's SHA-256 (None: no usable image).
    shas: dict[int, str | None]
    # Task id -> why its image is unusable ("image: ..."), for tasks without one.
    problems: dict[int, str]
    # Images newly written to the blob store; their rows are written by `commit`.
    staged: list[StagedImage]


# What reading one image gives: the staged image, or None and why not.
Fetched = tuple[StagedImage | None, str | None]


class ImageReader:
    """Reads, validates and stores images on a pool of threads, each URL once.

    `download_images` asks it for the URLs it needs and waits for them. Before that, while the
    tasks are still being listed, `prefetch` can start the images that need no request to
    Label Studio (files of the workspace's own server on this disk, `data:` URLs, other hosts),
    so that their reading overlaps the server's listing; an image served by Label Studio
    itself waits for the listing to end, which it would only slow down. A prefetched URL that
    no task wants in the end (its task changed or went in between) is a blob without a row,
    which the next write of the same bytes reuses.

    `local`: the workspace's own server, whose `/data/` images are read from its folders on
    this disk (the same bytes it would send, without its web server's one-at-a-time pace); any
    image not found there goes through HTTP as usual.

    Use it as a context manager: on the way out the images not started yet are dropped, and an
    error of one reading stops the others from starting.
    """

    def __init__(
        self,
        blobs: BlobStore,
        client: LabelStudioClient,
        *,
        max_pixels: int,
        workers: int = 8,
        local: LocalFiles | None = None,
    ) -> None:
        self.blobs = blobs
        self.client = client
        self.max_pixels = max_pixels
        self.local = local
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._futures: dict[str, Future[Fetched]] = {}
        self._lock = threading.Lock()
        self._failed = threading.Event()

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop what has not started; wait for what has (its blob lands whole or not at all)."""
        self._failed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def read(self, url: str) -> Future[Fetched]:
        """The reading of `url`: the one already under way, else a new one."""
        with self._lock:
            future = self._futures.get(url)
            if future is None:
                future = self._futures[url] = self._pool.submit(self._fetch, url)
            return future

    def prefetch(
        self,
        tasks: Iterable[Mapping[str, Any]],
        config: LabelingConfig,
        stored: Mapping[int, TaskRecord],
    ) -> None:
        """Start the images of these tasks that `download_images` will want and that need no
        request to Label Studio."""
        for url in wanted_urls(tasks, config, stored):
            if not url.startswith("/") or (self.local and self.local.path_of(url)):
                self.read(url)

    def _fetch(self, url: str) -> Fetched:
        if self._failed.is_set():
            return None, None  # the sync is failing; do not start another download
        try:
            data = _read_local(self.local, url) if self.local is not None else None
            if data is None:
                data = _read_image(self.client, url)
            return stage_image(self.blobs, data, url[:500], self.max_pixels), None
        except (_ImageUnavailable, InvalidImage) as exc:
            return None, str(exc)
        except BaseException:
            self._failed.set()
            raise


def wanted_urls(
    tasks: Iterable[Mapping[str, Any]],
    config: LabelingConfig,
    stored: Mapping[int, TaskRecord],
) -> list[str]:
    """The image URLs of these tasks that are new or changed (what `download_images` reads)."""
    urls: list[str] = []
    for task in tasks:
        url = _image_url(task, config)
        old = stored.get(int(task["id"])) if "id" in task else None
        if url is not None and not (old is not None and old.image_url == url and old.image_sha256):
            urls.append(url)
    return urls


def download_images(
    reader: ImageReader,
    tasks: Mapping[int, Mapping[str, Any]],
    stored: Mapping[int, TaskRecord],
    config: LabelingConfig,
    *,
    progress: Progress,
) -> TaskImages:
    """Read, validate and store the images of the fetched tasks whose URL is new or changed.

    `reader` reads them (it may have started some of them already).

    An image that cannot be read or is not a usable image is a per-task problem and the rest
    proceeds; Label Studio itself failing (not answering its own /data/ URLs, or failing one
    while its /health fails too) raises LabelStudioError, and the downloads not yet started
    are dropped so the error comes promptly.
    """
    urls = {tid: _image_url(task, config) for tid, task in tasks.items()}
    shas: dict[int, str | None] = {}
    problems: dict[int, str] = {}
    to_download: dict[str, list[int]] = {}
    for tid, url in urls.items():
        old = stored.get(tid)
        if url is None:
            problems[tid] = f"{IMAGE_PROBLEM}the task has no {config.image_field!r} field"
            shas[tid] = None
        elif old is not None and old.image_url == url and old.image_sha256:
            shas[tid] = old.image_sha256
        else:
            to_download.setdefault(url, []).append(tid)
    staged: list[StagedImage] = []
    if not to_download:
        return TaskImages(urls, shas, problems, staged)

    progress.begin("Downloading images", total=len(to_download))
    futures = {reader.read(url): url for url in to_download}
    try:
        for future in as_completed(futures):
            image, error = future.result()  # Label Studio's own failure raises here
            for tid in to_download[futures[future]]:
                if image is None:
                    shas[tid] = None
                    problems[tid] = f"{IMAGE_PROBLEM}{error}"
                else:
                    shas[tid] = image.sha256
            if image is not None:
                staged.append(image)
            progress.advance()
    except BaseException:
        reader.close()  # drops the downloads not started, so the error comes promptly
        raise
    progress.end()
    staged.sort(key=lambda s: s.sha256)
    return TaskImages(urls, shas, problems, staged)


def _image_url(task: Mapping[str, Any], config: LabelingConfig) -> str | None:
    value = (task.get("data") or {}).get(config.image_field)
    return str(value) if value else None


def _read_local(local: LocalFiles, url: str) -> bytes | None:
    path = local.path_of(url)
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError:
        return None  # let the server answer for it


class _ImageUnavailable(Exception):
    """One image could not be read; recorded against its task, the sync goes on."""


def _read_image(client: LabelStudioClient, url: str) -> bytes:
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        try:
            if header.endswith(";base64"):
                return base64.b64decode(payload, validate=False)
            return unquote_to_bytes(payload)
        except (binascii.Error, ValueError):
            raise _ImageUnavailable("the data: URL is not valid base64") from None
    if url.startswith("/"):
        # Served by Label Studio itself: an unreachable server aborts the sync (no partial read),
        # while one file it fails to serve is a problem of its task alone (an upload missing
        # from its disk answers 500 for ever): a couple of tries, then a look at /health says
        # which. A task with an image problem is tried again by the next sync.
        response = client.request("GET", url, status_attempts=MEDIA_ATTEMPTS)
        if response.status_code < 400:
            return response.content
        problem = f"Label Studio answered HTTP {response.status_code} for {url[:MAX_URL_SHOWN]}"
        if response.status_code in PATH_FAILURE_STATUS and not client.server_up():
            raise LabelStudioError(
                f"{problem}, and its /health does not answer UP either; check that it is "
                "running and retry."
            )
        raise _ImageUnavailable(problem)
    if url.startswith(("http://", "https://")):
        try:
            return client.get_external(url)
        except LabelStudioError as exc:
            raise _ImageUnavailable(str(exc)) from None
    raise _ImageUnavailable(f"unsupported image URL {url[:80]!r}")
