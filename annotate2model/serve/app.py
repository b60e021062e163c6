"""The web application: the page, the REST API and the Label Studio ML-backend protocol.

`create_app` takes models that are already loaded and the settings; it reads no environment and
prints nothing. Routes:

- `GET /`: the page (drop or pick an image, see the top-5 classes as bars);
- `GET /health`: `{"status": "UP", ...}` for our clients, container healthchecks and Label Studio;
- `GET /v1/models`, `GET /v1/model?run=ID`: the run(s), labels, dataset version, metrics;
- `POST /v1/predict?run=ID&top_k=5`: images as multipart fields named `file` (or one image as the
  raw body), top-k labels with probabilities for each;
- the ML backend (`/setup`, `/predict`, `/versions`, `/webhook`, `/health`), at the root for the
  first run and under `/runs/ID/` for any other.

`/webhook` hands Label Studio's events to an `EventSink` when the server has one (`a2m serve
--auto-train`: autotrain.py) and answers at once; the sink may later `promote` a new model, which
then answers at the root (the one it replaced stays under `/runs/ID/` until the next promotion).

Limits: a request body over `max_upload_bytes` or with more than `max_files` images answers 413;
so does an image that would decode to more than `max_pixels` (a JPEG counts at the reduced size
it is decoded at), the images of one request past `max_request_pixels` in all, and a
decompression bomb; anything that is not an image answers 415 with the reason. No response ever
carries a traceback. With a token, every route but `/` and `/health` wants
`Authorization: Bearer TOKEN`, or Basic auth with the token as password (Label Studio can only
send Basic auth to a backend).

The ML backend's `/predict` reads each task's image through a `TaskImageReader` (which decides
what may be read at all), on a few threads of its own, at most `max_tasks` tasks per request,
within `task_seconds`, and stops asking after a few failed reads; a task whose image cannot be
had gets an empty result in its place. `/health` runs on the event loop itself, so it answers
whatever the readers and decoders are doing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from numpy.typing import NDArray
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from annotate2model.errors import A2MError, InvalidImage, LabelStudioError
from annotate2model.imaging import DEFAULT_MAX_PIXELS, decoded_size
from annotate2model.labelstudio.config import LabelingConfig, parse_label_config
from annotate2model.labelstudio.results import prediction
from annotate2model.serve.batching import Batcher
from annotate2model.serve.models import DEFAULT_MAX_BATCH, ServedModel
from annotate2model.serve.page import page_html
from annotate2model.settings import Secret
from annotate2model.training.features.images import load_image

log = logging.getLogger("annotate2model.serve")

DEFAULT_MAX_UPLOAD_BYTES = 20 << 20
DEFAULT_MAX_FILES = 16
DEFAULT_TOP_K = 5
# The most pixels one image may decode to. The model sees about 224 px, so a larger decode only
# costs memory: a 13,000 x 13,000 PNG of 190 KB took ~820 MB and 4.4 s (a 5,000 x 5,000 image
# takes ~75 MB). A JPEG is decoded at 1/2, 1/4 or 1/8 of its size (Pillow's draft) and counts so.
DEFAULT_SERVE_MAX_PIXELS = 25_000_000
# The most pixels the images of one request may decode to in all.
DEFAULT_REQUEST_PIXELS = 4 * DEFAULT_SERVE_MAX_PIXELS
# The most tasks in one /predict request, and the seconds it may spend reading their images
# (Label Studio waits 100 s for a backend's answer by default).
DEFAULT_MAX_TASKS = 512
DEFAULT_TASK_SECONDS = 60.0
# Threads reading task images for every /predict request together, and reads one request may
# have under way at once (so that one large request does not hold every reader).
TASK_READERS = 8
READS_PER_REQUEST = 4
# Failed reads (Label Studio or a host erring, timing out, unreachable) after which a request
# asks no more: the rest of its tasks get an empty result (80 bad tasks once cost 480 requests).
MAX_FAILED_READS = 8
# The nice value of the decoding threads beside torch's forward passes (see _Server).
DECODE_NICE = 10
# Seconds a model replaced twice keeps its batcher, for the requests already given to it.
RETIRE_SECONDS = 60.0
# The Basic-auth user name connect-backend registers (Label Studio wants one; any is accepted).
BASIC_USER = "a2m"


@dataclass(frozen=True)
class ServeSettings:
    """How the server behaves; built by the caller (the CLI reads flags and environment)."""

    # None: no authentication (the CLI binds to loopback unless told otherwise).
    token: Secret | None = None
    # Largest request body; larger ones answer 413 before they are read.
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    # Most images in one request (413 beyond).
    max_files: int = DEFAULT_MAX_FILES
    # Most images in one forward pass (requests arriving together are batched up to it).
    max_batch: int = DEFAULT_MAX_BATCH
    # Most pixels one image may decode to (a JPEG at its reduced decoding size); 413 beyond.
    max_pixels: int = DEFAULT_SERVE_MAX_PIXELS
    # Most pixels the images of one request may decode to in all; 413 beyond (/predict: the
    # tasks past it get an empty result).
    max_request_pixels: int = DEFAULT_REQUEST_PIXELS
    # Decompression-bomb guard on the image as sent, before any reduction (the workspace's
    # [images] max_pixels); 413 beyond.
    max_source_pixels: int = DEFAULT_MAX_PIXELS
    # Most tasks in one /predict request; 413 beyond.
    max_tasks: int = DEFAULT_MAX_TASKS
    # Seconds one /predict request may spend reading task images; the tasks not read by then
    # get an empty result.
    task_seconds: float = DEFAULT_TASK_SECONDS


class TaskImageReader(Protocol):
    """Reads the image of a Label Studio task from its URL (labelstudio/backend.py has one)."""

    def read(self, url: str) -> bytes:
        """The bytes, or an A2MError saying why they cannot be had."""
        ...


class EventSink(Protocol):
    """Takes Label Studio's events (autotrain.AutoTrainer has one)."""

    def notify(self, action: str, project: int | None) -> bool:
        """Note an event (it must return at once); False when it is not for this server."""
        ...

    def status(self) -> dict[str, Any]:
        """What it is doing and has decided, for /v1/model."""
        ...


class _NoTaskImages:
    def read(self, url: str) -> bytes:
        raise A2MError("this server has no Label Studio connection to read task images with.")


class _TooLarge(Exception):
    pass


class _OverLimit(Exception):
    """An image or a request that would decode to more pixels than the server allows (413)."""


class _NotRead(Exception):
    """A task image left unread: the request's time or failure allowance is spent."""


class PixelBudget:
    """The pixels the images of one request may still decode to (thread-safe)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.left = total
        self._lock = threading.Lock()

    def take(self, pixels: int) -> bool:
        """Take `pixels` from the budget; False (and nothing taken) when too few are left."""
        with self._lock:
            if pixels > self.left:
                return False
            self.left -= pixels
            return True


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes answers 413 (by its Content-Length
    before anything is read, or as soon as a streamed body passes the limit)."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _too_large(self.limit)(scope, receive, send)
                return
        seen = 0
        started = False

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracked(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except _TooLarge:
            if not started:
                await _too_large(self.limit)(scope, receive, send)


class TokenGuard:
    """ASGI middleware: every route but the page and the health checks wants the token (401)."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: Secret) -> None:
        self.app = app
        self.token = token

    @staticmethod
    def is_open(path: str) -> bool:
        return path in ("/", "/health") or (path.startswith("/runs/") and path.endswith("/health"))

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "http" and not self.is_open(scope.get("path", "")):
            header = next(
                (v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"),
                None,
            )
            if not _authorized(header, self.token):
                refusal = JSONResponse(
                    {"detail": "a token is needed: send Authorization: Bearer TOKEN."},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer, Basic realm="a2m"'},
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"detail": f"the request is larger than this server's limit of {_size(limit)}."},
        status_code=413,
        headers={"Connection": "close"},
    )


def _size(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n:,} bytes"


def _authorized(header: str | None, token: Secret) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    given = ""
    if scheme == "bearer":
        given = value.strip()
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        given = decoded.partition(":")[2]
    return bool(given) and hmac.compare_digest(given.encode(), token.reveal().encode())


@lru_cache(maxsize=32)
def _label_config(xml: str) -> LabelingConfig:
    return parse_label_config(xml)


class _Server:
    """The state behind the routes: the models by run, their batchers, the limits."""

    def __init__(
        self, models: Sequence[ServedModel], settings: ServeSettings, reader: TaskImageReader
    ) -> None:
        if not models:
            raise A2MError("nothing to serve: give at least one model.")
        self.settings = settings
        self.reader = reader
        self.models: dict[int | None, ServedModel] = {}
        for m in models:
            if m.run_id in self.models:
                raise A2MError(f"run {m.run_id} is given twice.")
            self.models[m.run_id] = m
        self.default = models[0]
        self.batchers = {m.run_id: Batcher(m, settings.max_batch) for m in models}
        # The runs served because they were asked for (never retired by a promotion), and the
        # default that the last promotion replaced (served under /runs/ID/ until the next one).
        self.given = set(self.models)
        self.replaced: ServedModel | None = None
        self._swap = threading.Lock()
        # Torch's forward passes share the cores with the decoding: those threads run at a lower
        # priority, so they fill the passes' idle moments instead of stalling OpenMP's threads at
        # their barriers (bench/serve.py, 16 clients on 2 cores: 31 -> 46 requests/s). ONNX
        # Runtime keeps its pace beside Starlette's threads (no gain measured from this).
        self.decoders: ThreadPoolExecutor | None = None
        # Task images are read on threads of their own: a slow or failing source never takes
        # the threads that decode or answer other requests.
        self.readers: ThreadPoolExecutor | None = None

    def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.start()
        self.readers = ThreadPoolExecutor(TASK_READERS, thread_name_prefix="a2m-read")
        if any(not m.yields_to_decoding for m in self.models.values()):
            self.decoders = ThreadPoolExecutor(
                os.cpu_count() or 2, thread_name_prefix="a2m-decode", initializer=_lower_priority
            )

    def stop(self) -> None:
        for batcher in self.batchers.values():
            batcher.stop()
        if self.decoders is not None:
            self.decoders.shutdown(wait=True, cancel_futures=True)
            self.decoders = None
        if self.readers is not None:
            # A read under way ends by its own timeout; nothing waits for it.
            self.readers.shutdown(wait=False, cancel_futures=True)
            self.readers = None

    def promote(self, model: ServedModel) -> None:
        """Answer at the root with `model` from now on. The default it replaces stays under
        /runs/ID/ until the next promotion; the one before that is retired (its batcher stops
        once the requests already given to it are answered)."""
        batcher = Batcher(model, self.settings.max_batch)
        batcher.start()
        with self._swap:
            retired = self.replaced
            self.batchers[model.run_id] = batcher
            self.models[model.run_id] = model
            self.replaced, self.default = self.default, model
            if retired is not None and retired.run_id not in self.given | {model.run_id}:
                del self.models[retired.run_id]
            else:
                retired = None
        if retired is not None:
            timer = threading.Timer(RETIRE_SECONDS, self._retire, (retired.run_id,))
            timer.daemon = True
            timer.start()

    def _retire(self, run_id: int | None) -> None:
        with self._swap:
            if run_id in self.models:
                return  # served again since
            batcher = self.batchers.pop(run_id, None)
        if batcher is not None:
            batcher.stop()

    def model(self, run: str | int | None) -> ServedModel:
        if run is None or run == "":
            return self.default
        try:
            number = int(str(run).lstrip("#"))
        except ValueError:
            raise HTTPException(400, f"{run!r} is not a run id (a number).") from None
        found = self.models.get(number)
        if found is None:
            served = ", ".join(str(k) for k in self.models)
            raise HTTPException(404, f"run {number} is not served here (served: {served}).")
        return found

    async def decode(
        self, model: ServedModel, data: bytes, name: str, budget: PixelBudget
    ) -> NDArray[np.uint8]:
        """The model's input for one image, its pixels taken from the request's `budget`: 413
        when it or the request would decode to too many, 415 when it is no image."""
        try:
            if not model.yields_to_decoding and self.decoders is not None:
                decoded: NDArray[np.uint8] = await asyncio.get_running_loop().run_in_executor(
                    self.decoders, self._decode, model, data, budget
                )
                return decoded
            array: NDArray[np.uint8] = await run_in_threadpool(self._decode, model, data, budget)
            return array
        except _OverLimit as exc:
            raise HTTPException(413, f"{name}: {exc}") from None
        except InvalidImage as exc:
            # imaging.py words every pixel-limit refusal with "decompression-bomb guard".
            bomb = "decompression-bomb" in str(exc)
            raise HTTPException(413 if bomb else 415, f"{name}: {exc}") from None

    def _decode(self, model: ServedModel, data: bytes, budget: PixelBudget) -> NDArray[np.uint8]:
        # The header says what the decode will cost before any of it is paid.
        limits = self.settings
        side = model.prep.resize
        width, height = decoded_size(data, limits.max_source_pixels, (side, side))
        pixels = width * height
        if pixels > limits.max_pixels:
            raise _OverLimit(
                f"it would decode to {width:,} x {height:,} = {pixels:,} pixels, over this "
                f"server's limit of {limits.max_pixels:,} per image (the model sees "
                f"{model.prep.crop} px); send a smaller image"
            )
        if not budget.take(pixels):
            raise _OverLimit(
                f"the images of this request would decode to more than "
                f"{budget.total:,} pixels in all, this server's limit per request; send fewer "
                "or smaller images"
            )
        return load_image(data, model.prep, None, 10.0, limits.max_source_pixels)

    async def read_task_images(self, urls: Sequence[str]) -> dict[str, asyncio.Future[bytes]]:
        """Start reading each distinct URL once, within the request's allowances."""
        reading = _TaskReading(self)
        return {url: asyncio.ensure_future(reading.read(url)) for url in dict.fromkeys(urls)}

    async def probabilities(
        self, model: ServedModel, images: Sequence[NDArray[np.uint8]]
    ) -> NDArray[np.float32]:
        future = self.batchers[model.run_id].submit(np.stack(images))
        return await asyncio.wrap_future(future)


class _TaskReading:
    """One /predict request's reads: a few at a time, until its deadline or too many failures."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.seconds = server.settings.task_seconds
        self.deadline = asyncio.get_running_loop().time() + self.seconds
        self.slots = asyncio.Semaphore(READS_PER_REQUEST)
        self.failures = 0

    async def read(self, url: str) -> bytes:
        loop = asyncio.get_running_loop()
        async with self.slots:
            if self.failures >= MAX_FAILED_READS:
                raise _NotRead(f"not read: {self.failures} reads of this request failed already")
            left = self.deadline - loop.time()
            if left <= 0:
                raise _NotRead(f"not read: the request's {self.seconds:g} s for images are spent")
            future = loop.run_in_executor(self.server.readers, self.server.reader.read, url)
            try:
                return await asyncio.wait_for(future, left)
            except TimeoutError:
                self.failures += 1
                raise _NotRead(
                    f"not read within the request's {self.seconds:g} s for images"
                ) from None
            except LabelStudioError:
                # The source erred, timed out or is down: worth counting. A refused URL or an
                # answer that is no image is the task's own problem and is not.
                self.failures += 1
                raise


def create_app(
    models: Sequence[ServedModel],
    settings: ServeSettings | None = None,
    task_images: TaskImageReader | None = None,
    events: EventSink | None = None,
    on_start: Callable[[Callable[[ServedModel], None]], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> FastAPI:
    """The application serving `models` (the first is the default run). `events` takes the
    `/webhook` events; `on_start` is called once the server runs, with the function that
    promotes a model; `on_stop` as it stops."""
    settings = settings or ServeSettings()
    server = _Server(models, settings, task_images or _NoTaskImages())

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        server.start()
        if on_start is not None:
            on_start(server.promote)
        try:
            yield
        finally:
            if on_stop is not None:
                await run_in_threadpool(on_stop)
            await run_in_threadpool(server.stop)

    app = FastAPI(
        title="annotate2model",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.server = server

    @app.exception_handler(A2MError)
    async def a2m_error(_request: Request, exc: A2MError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        ]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server's log, never into a response.
        log.error("unexpected error", exc_info=exc)
        return JSONResponse(
            {"detail": "internal error; the server's log has the details."}, status_code=500
        )

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-store"})

    async def health() -> dict[str, Any]:
        return {
            "status": "UP",
            "model_class": "annotate2model",
            "runs": list(server.models),
            "default": server.default.run_id,
            "engine": server.default.engine,
        }

    app.get("/health")(health)
    app.get("/runs/{run}/health")(health)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "default": server.default.run_id,
            "models": [m.describe() for m in list(server.models.values())],
        }

    @app.get("/v1/model")
    async def describe(run: str | None = None) -> dict[str, Any]:
        model = server.model(run)
        batcher = server.batchers[model.run_id]
        return {
            **model.describe(),
            "limits": {
                "max_upload_bytes": settings.max_upload_bytes,
                "max_files": settings.max_files,
                "max_batch": batcher.max_batch,
                "max_pixels": settings.max_pixels,
                "max_request_pixels": settings.max_request_pixels,
                "max_tasks": settings.max_tasks,
            },
            "batches": vars(batcher.stats).copy(),
            "default": model is server.default,
            **({"auto_train": events.status()} if events is not None else {}),
        }

    @app.post("/v1/predict")
    async def predict(
        request: Request, run: str | None = None, top_k: int = DEFAULT_TOP_K
    ) -> JSONResponse:
        model = server.model(run)
        if top_k < 1:
            raise HTTPException(422, "top_k must be at least 1.")
        started = time.perf_counter()
        uploads = await _uploads(request, settings.max_files)
        read = time.perf_counter()
        budget = PixelBudget(settings.max_request_pixels)
        if len(uploads) == 1:  # the usual request: no task to gather
            images = [await server.decode(model, uploads[0][1], uploads[0][0], budget)]
        else:
            images = await asyncio.gather(*(server.decode(model, d, n, budget) for n, d in uploads))
        decoded = time.perf_counter()
        probs = await server.probabilities(model, images)
        done = time.perf_counter()
        # Where the time went (browsers' developer tools show it; so does bench/serve.py).
        timing = ", ".join(
            f"{name};dur={1000 * (b - a):.2f}"
            for name, a, b in (
                ("read", started, read),
                ("decode", read, decoded),
                ("model", decoded, done),
            )
        )
        k = min(top_k, len(model.labels))
        # A JSONResponse of plain values: FastAPI's encoding pass over a returned dict is skipped.
        body = {
            "run": model.run_id,
            "model_version": model.model_version,
            "engine": model.engine,
            "predictions": [
                {"file": name, "top": _top(model.labels, row, k)}
                for (name, _), row in zip(uploads, probs, strict=True)
            ],
        }
        return JSONResponse(body, headers={"Server-Timing": timing})

    async def setup(request: Request, run: str | None = None) -> dict[str, Any]:
        model = server.model(run)
        body = await _json(request)
        schema = body.get("schema") or body.get("label_config")
        if schema:
            _usable_labels(model, await run_in_threadpool(_label_config, str(schema)))
        return {"model_version": model.model_version}

    async def ls_predict(request: Request, run: str | None = None) -> dict[str, Any]:
        model = server.model(run)
        body = await _json(request)
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise HTTPException(422, "the body has no list of tasks.")
        if len(tasks) > settings.max_tasks:
            raise HTTPException(
                413,
                f"at most {settings.max_tasks} tasks per request (this one has {len(tasks)}); "
                "send them in smaller batches.",
            )
        # Off the event loop: the first config parsed imports Label Studio's SDK (about a second).
        config = await run_in_threadpool(_label_config, str(body.get("label_config") or ""))
        usable = _usable_labels(model, config)
        urls = [_task_url(task, config.image_field) for task in tasks]
        reads = await server.read_task_images([u for u in urls if u])
        budget = PixelBudget(settings.max_request_pixels)

        async def one(task: Any, url: str | None) -> NDArray[np.uint8] | None:
            name = f"task {task.get('id') if isinstance(task, dict) else '?'}"
            if not url:
                return None
            try:
                raw = await reads[url]
                return await server.decode(model, raw, name, budget)
            except (A2MError, HTTPException, _NotRead) as exc:
                detail = str(getattr(exc, "detail", exc))
                log.warning("%s", detail if detail.startswith(name) else f"{name}: {detail}")
                return None
            except Exception:
                # One task's surprise is its own: the others are still answered.
                log.error("%s: unexpected error", name, exc_info=True)
                return None

        images = await asyncio.gather(*(one(t, u) for t, u in zip(tasks, urls, strict=True)))
        good = [i for i, img in enumerate(images) if img is not None]
        probs = (
            await server.probabilities(model, [images[i] for i in good])  # type: ignore[misc]
            if good
            else np.empty((0, len(model.labels)), dtype=np.float32)
        )
        rows = dict(zip(good, probs, strict=True))
        results: list[dict[str, Any]] = []
        for i in range(len(tasks)):
            if i not in rows:
                # Label Studio pairs results with tasks by position: an empty one keeps the place.
                results.append({"result": [], "score": 0.0, "model_version": model.model_version})
                continue
            label, score = max(((lab, float(rows[i][j])) for j, lab in usable), key=itemgetter(1))
            results.append(
                prediction(config, label, model_version=model.model_version, score=score)
            )
        return {"results": results, "model_version": model.model_version}

    async def versions(run: str | None = None) -> dict[str, Any]:
        return {"versions": [server.model(run).model_version]}

    async def webhook(request: Request) -> dict[str, Any]:
        # Label Studio waits for this answer (1 s by default) while its user saves: the event is
        # only noted here; the sync and any training run on the sink's own thread.
        if events is None:
            return {"status": "ignored"}
        try:
            body = await request.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        action = str(body.get("action") or "")
        project = body.get("project")
        pid = project.get("id") if isinstance(project, dict) else project
        taken = events.notify(
            action, int(pid) if isinstance(pid, int | str) and str(pid).isdigit() else None
        )
        return {"status": "noted" if taken else "ignored"}

    for prefix in ("", "/runs/{run}"):
        app.post(f"{prefix}/setup")(setup)
        app.post(f"{prefix}/predict")(ls_predict)
        app.get(f"{prefix}/versions")(versions)
        app.post(f"{prefix}/webhook")(webhook)

    if settings.token is not None:
        app.add_middleware(TokenGuard, token=settings.token)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    return app


def _task_url(task: Any, field: str) -> str | None:
    value = (task.get("data") or {}).get(field) if isinstance(task, dict) else None
    return str(value) if value else None


def _top(labels: Sequence[str], row: NDArray[np.float32], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-row, kind="stable")[:k]
    return [{"label": labels[i], "probability": round(float(row[i]), 6)} for i in order]


def _usable_labels(model: ServedModel, config: LabelingConfig) -> list[tuple[int, str]]:
    """(column, label) of the model's labels that the project offers; 400 when none is."""
    offered = set(config.labels)
    usable = [(j, lab) for j, lab in enumerate(model.labels) if lab in offered]
    if not usable:
        raise HTTPException(
            400,
            f"the project's choices ({', '.join(config.labels)}) share no label with run "
            f"{model.run_id} ({', '.join(model.labels)}).",
        )
    return usable


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "the body is not JSON.") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body is not a JSON object.")
    return body


async def _uploads(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each uploaded image: multipart fields named `file`, or a raw image body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind.startswith("image/") or kind == "application/octet-stream":
        return [("body", await request.body())]
    if kind != "multipart/form-data":
        raise HTTPException(
            415,
            f"send images as multipart/form-data fields named file (got {kind or 'no type'}).",
        )
    # The body is already capped by size; the count is checked below, to answer 413 for it.
    form = await request.form(max_files=10_000, max_fields=10_000)
    files: list[tuple[str, bytes]] = []
    for name, value in form.multi_items():
        if name != "file":
            continue
        if not isinstance(value, UploadFile):
            raise HTTPException(415, "the file field holds text, not an uploaded image.")
        files.append((value.filename or f"file {len(files) + 1}", await value.read()))
    await form.close()
    if not files:
        raise HTTPException(422, "no image: send one or several multipart fields named file.")
    if len(files) > max_files:
        raise HTTPException(413, f"at most {max_files} images per request.")
    return files


def _lower_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: threads have their own nice)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODE_NICE)


def is_loopback(host: str) -> bool:
    """Whether `host` is an address (or the name) of this machine's loopback interface only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure(host: str, token: Secret | None) -> str | None:
    """What anyone who can reach the server may do when it listens on `host` beyond this machine
    without a token; None when it needs a token or only listens on loopback."""
    if token is not None or is_loopback(host):
        return None
    return (
        f"the server listens on {host} without a token: anyone who can reach it can run the "
        "model on images they send (the page, /v1/predict), read the served runs' labels, "
        "dataset versions and metrics (/v1/models), and have it read task images through "
        "/predict: the connected Label Studio's media, with this workspace's Label Studio "
        "token, and the hosts named in [serve] image_hosts."
    )
