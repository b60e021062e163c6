"""Run `a2m ARGS` in this process and write down where its time went (bench/sync.py uses it).

    python bench/sync_probe.py OUT.json ARGS...

It changes nothing in what runs: the CLI is imported and called as the `a2m` script does. It
records wall-clock times (`time.time()`, so the parent can line them up with the moment it
launched this process): this script's first line (the end of interpreter start-up), the end of
`import annotate2model.cli.app`, each call of `Store.open`, `parse_label_config`, `sync_project`
and its steps (listing, image download, label resolution, commit), and within the image step
each file read, image check (`probe_image`), hash and blob write (all wrapped as their modules
finish loading, wherever and whenever that happens, on whichever thread), the execution of a few
heavy modules (Pillow, SQLAlchemy, httpx, typer, pydantic, Rich: when and for how long they were
imported), each HTTP request (from httpcore's own debug log: no patching of the transport), the
end of `main()`, and which heavy third-party modules were loaded by then.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

# Third-party modules a no-change sync should not need to load.
HEAVY = (
    "torch",
    "torchvision",
    "numpy",
    "PIL",
    "label_studio_sdk",
    "pydantic",
    "alembic",
    "safetensors",
    "lxml",
)

Spans = dict[str, list[tuple[float, float]]]

# The sync's steps, timed where `sync_project` calls them (those a given sync does not take
# simply have no span).
STEPS_SYNC = (
    "list_tasks",
    "read_all_tasks",
    "fetch_changed_tasks",
    "download_images",
    "resolve_labels",
    "commit",
)
# Within the image step, per image (on the download threads).
STEPS_DOWNLOADS = ("_read_local", "_read_image")


def _timed(spans: Spans, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            spans.setdefault(name, []).append((began, time.time()))

    return wrapper


# Modules whose execution (their own imports included) is timed as "import NAME".
TIMED_IMPORTS = ("PIL.Image", "sqlalchemy", "sqlalchemy.orm", "httpx", "typer", "pydantic", "rich")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls hooks[name](module) right after module `name` has executed, before anyone uses it,
    and times the execution of the modules named in `timed` (spans "import NAME")."""

    def __init__(
        self,
        hooks: dict[str, Callable[[ModuleType], None]],
        timed: Sequence[str] = (),
        spans: Spans | None = None,
    ) -> None:
        self.hooks = hooks
        self.timed = set(timed)
        self.spans: Spans = spans if spans is not None else {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        hook = self.hooks.pop(fullname, None)
        timed = fullname in self.timed
        self.timed.discard(fullname)
        if hook is None and not timed:
            return None
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader: Any = spec.loader
        run = loader.exec_module
        spans = self.spans

        def exec_module(module: ModuleType) -> None:
            began = time.time()
            run(module)
            if timed:
                spans.setdefault(f"import {fullname}", []).append((began, time.time()))
            if hook is not None:
                hook(module)

        loader.exec_module = exec_module
        return spec


class _HttpLog(logging.Handler):
    """Pairs httpcore's per-connection debug events into (method, path, start, end) per call.

    With `Connection: close` every call opens its own connection, and a thread makes one call at
    a time, so a thread's events from `connect_tcp.started` (or `send_request_headers.started`)
    to `response_closed.complete` are one call; httpx's INFO line in between names it.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.calls: list[dict[str, Any]] = []
        self._open: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        with self._lock:
            current = self._open.get(record.thread or 0)
            if record.name == "httpx" and message.startswith("HTTP Request:"):
                # "HTTP Request: GET http://host/path?query "HTTP/1.1 200 OK""
                parts = message.split(" ")
                if current is not None and len(parts) >= 4:
                    current["method"] = parts[2]
                    current["path"] = "/" + parts[3].split("/", 3)[-1].split("?")[0]
                    current["status"] = parts[5] if len(parts) > 5 else ""
            elif message.startswith(("connect_tcp.started", "send_request_headers.started")):
                if current is None:
                    self._open[record.thread or 0] = {"start": record.created, "path": "?"}
            elif message.startswith("response_closed.complete") and current is not None:
                current["end"] = record.created
                self.calls.append(current)
                del self._open[record.thread or 0]


def main() -> None:
    began = time.time()
    out_path, args = sys.argv[1], sys.argv[2:]
    spans: Spans = {}

    def wrap_store(module: ModuleType) -> None:
        store = module.Store
        store.open = classmethod(_timed(spans, "store_open", store.open.__func__))

    def wrap(*attrs: str) -> Callable[[ModuleType], None]:
        def hook(module: ModuleType) -> None:
            for attr in attrs:
                if hasattr(module, attr):
                    setattr(module, attr, _timed(spans, attr, getattr(module, attr)))

        return hook

    def wrap_blobs(module: ModuleType) -> None:
        wrap("sha256_bytes")(module)
        blobs = module.BlobStore
        blobs.put = _timed(spans, "BlobStore.put", blobs.put)

    sys.meta_path.insert(
        0,
        _AfterImport(
            {
                "annotate2model.store.db": wrap_store,
                "annotate2model.store.blobs": wrap_blobs,
                "annotate2model.imaging": wrap("probe_image"),
                "annotate2model.labelstudio.config": wrap("parse_label_config"),
                "annotate2model.labelstudio.downloads": wrap(*STEPS_DOWNLOADS),
                "annotate2model.labelstudio.sync": wrap("sync_project", *STEPS_SYNC),
                # A first sync's full reading starts in `HeadStart`, before `sync_project`.
                "annotate2model.labelstudio.reading": wrap("read_all_tasks"),
            },
            TIMED_IMPORTS,
            spans,
        ),
    )
    http = _HttpLog()
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(http)
        logger.propagate = False

    from annotate2model.cli.app import main as a2m_main

    imported = time.time()
    sys.argv = ["a2m", *args]
    code: object = 0
    try:
        a2m_main()
    except SystemExit as exc:
        code = exc.code
    ended = time.time()
    cpu = os.times()
    report = {
        "cpu_s": cpu.user + cpu.system,
        "began": began,
        "imported": imported,
        "ended": ended,
        "exit_code": code,
        "spans": spans,
        "http": http.calls,
        "heavy_modules": sorted(
            name for name in sys.modules if name.split(".")[0] in HEAVY and "." not in name
        ),
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(report, f)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
