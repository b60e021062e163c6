"""Benchmark `a2m sync` against a local Label Studio: 2,000 tasks with images over loopback HTTP.

Reports first-sync tasks/s, no-change re-sync seconds (median of 3), a re-sync after 100 tasks
changed, and the time of Label Studio's own JSON export of the same project in the same run.

    .venv/bin/python bench/sync.py [--tasks 2000]
"""

from __future__ import annotations

import argparse
import http.server
import io
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.config import build_label_config
from annotate2model.labelstudio.server import LocalServer, free_port
from annotate2model.labelstudio.sync import sync_project
from annotate2model.settings import Secret, load_settings
from annotate2model.store import Store
from annotate2model.workspace import init_workspace

TOKEN = "a2mbench0legacy0token0123456789abcdef012"


def png(seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", (64, 64), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def choice(label: str) -> dict[str, Any]:
    value = {"choices": [label]}
    return {
        "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": value}]
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    args = parser.parse_args()
    n = args.tasks
    tmp = Path(tempfile.mkdtemp(prefix="a2m-bench-sync-"))
    served = tmp / "served"
    served.mkdir()
    for i in range(n):
        (served / f"{i}.png").write_bytes(png(i))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, directory=str(served), **k)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"

    server = LocalServer(tmp / "labelstudio")
    t = time.perf_counter()
    started = server.start(
        username="admin@a2m.local", password="bench-pass-1", token=TOKEN, port=free_port()
    )
    print(f"Label Studio started in {time.perf_counter() - t:.1f} s at {started.url}")
    try:
        client = LabelStudioClient(started.url, Secret(TOKEN))
        project = client.create_project("bench", build_label_config(["a", "b"])).id
        t = time.perf_counter()
        ids: list[int] = []
        for start in range(0, n, 1000):
            ids += client.import_tasks(
                project,
                [
                    {"data": {"image": f"{base}/{i}.png"}, "annotations": [choice("ab"[i % 2])]}
                    for i in range(start, min(n, start + 1000))
                ],
            )
        print(f"imported {n} tasks in {time.perf_counter() - t:.1f} s")
        ws, _ = init_workspace(tmp / "ws")
        store = Store.open(load_settings(ws, env={}))

        t = time.perf_counter()
        first = sync_project(store, client, project)
        first_s = time.perf_counter() - t
        assert first.version is not None and first.version.version.item_count == n

        nochange = []
        for _ in range(3):
            t = time.perf_counter()
            r = sync_project(store, client, project)
            nochange.append(time.perf_counter() - t)
            assert r.version is not None and not r.version.created

        for tid in ids[:100]:
            task = client.json("GET", f"/api/tasks/{tid}", "read task")
            ann = task["annotations"][0]["id"]
            label = task["annotations"][0]["result"][0]["value"]["choices"][0]
            client.json(
                "PATCH",
                f"/api/annotations/{ann}/",
                "relabel",
                json=choice("b" if label == "a" else "a"),
            )
        t = time.perf_counter()
        changed = sync_project(store, client, project)
        changed_s = time.perf_counter() - t
        assert changed.relabeled == 100, changed.relabeled

        exports = []
        for _ in range(3):
            t = time.perf_counter()
            response = client.request(
                "GET", f"/api/projects/{project}/export", params={"exportType": "JSON"}, timeout=300
            )
            assert response.status_code == 200 and len(response.json()) == n
            exports.append(time.perf_counter() - t)
        client.close()
        store.close()
    finally:
        server.stop()
        httpd.shutdown()

    print()
    print(f"| measure ({n} tasks, images over loopback HTTP) | value |")
    print("|---|---|")
    print(f"| first sync | {first_s:.2f} s = {n / first_s:.0f} tasks/s |")
    print(f"| no-change re-sync (median of 3) | {statistics.median(nochange):.2f} s |")
    print(f"| re-sync after 100 tasks relabeled | {changed_s:.2f} s |")
    print(f"| Label Studio JSON export (median of 3) | {statistics.median(exports):.2f} s |")


if __name__ == "__main__":
    main()
