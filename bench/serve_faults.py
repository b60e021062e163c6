"""What a hostile request costs `a2m serve` (issue 26): the code of this checkout beside a baseline
commit's, in the same run, on the same workspace.

Three requests a stranger can send, each to a whole `a2m serve` process (torch, CPU) next to a
stand-in Label Studio that answers every image with HTTP 500:
- one 13,000 x 13,000 PNG of ~165 KB (169 M pixels to decode) to /v1/predict;
- sixteen of them in one request;
- 80 ML-backend tasks (/predict) whose images Label Studio fails, while a client polls /health.
Printed per side: the HTTP status and seconds of each, the server's peak resident memory
(VmHWM) and its memory afterwards (VmRSS), the requests the stand-in Label Studio received and
the slowest /health answer during the 80 tasks. Medians of --repeats servers per side.

The baseline runs from a `git worktree` of --baseline (default: the commit before the model
server's hardening) on the same workspace, made by this checkout's code (the baseline must read
its schema: any commit from 0004 on).

    .venv/bin/python bench/serve_faults.py [--baseline REV] [--repeats N]
"""

from __future__ import annotations

import argparse
import http.server
import importlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx
from _shared import PROJECT_ROOT, run_as_installed
from serve import free_port, setup

sys.path.insert(0, str(PROJECT_ROOT))
# The tests' own requests: a decodable 13,000 x 13,000 PNG, a small image, the labeling config.
hardening = importlib.import_module("tests.serve.test_hardening")
GOOD, LABEL_CONFIG, gray_png = hardening.GOOD, hardening.LABEL_CONFIG, hardening.gray_png

BASELINE = "91e667b"
BAD_TASKS = 80
GIT = ["git", "-C", str(PROJECT_ROOT)]


class FailingStudio(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        FailingStudio.hits.append(self.path)
        self.send_response(500)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"error")

    def log_message(self, *args: Any) -> None:
        pass


def memory_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_server(code: Path, ws: Path, studio: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "LABEL_STUDIO_"))}
    env |= {
        "A2M_HOME": str(ws),
        "PYTHONPATH": str(code),
        "LABEL_STUDIO_URL": studio,
        "LABEL_STUDIO_API_KEY": "legacy-token-for-the-stand-in",
    }
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "annotate2model", "serve", "1", "--port", str(port)],
        cwd=code,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    out: dict[str, float] = {}
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        client = httpx.Client(base_url=url, timeout=300)
        assert client.post("/v1/predict", files=[("file", ("ok.png", GOOD))]).status_code == 200
        out["warm MB"] = memory_mb(proc.pid, "VmHWM")
        huge = gray_png(13_000, 13_000)
        start = time.perf_counter()
        answer = client.post("/v1/predict", files=[("file", ("huge.png", huge))])
        out["1 PNG s"], out["1 PNG status"] = time.perf_counter() - start, answer.status_code
        start = time.perf_counter()
        files = [("file", (f"{i}.png", huge)) for i in range(16)]
        answer = client.post("/v1/predict", files=files)
        out["16 PNGs s"], out["16 PNGs status"] = time.perf_counter() - start, answer.status_code
        out["peak MB"] = memory_mb(proc.pid, "VmHWM")
        out["after MB"] = memory_mb(proc.pid, "VmRSS")

        FailingStudio.hits.clear()
        health: list[float] = []
        done = threading.Event()

        def poll() -> None:
            with httpx.Client(base_url=url, timeout=120) as h:
                while not done.is_set():
                    began = time.perf_counter()
                    h.get("/health")
                    health.append(time.perf_counter() - began)
                    time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        tasks = [
            {"id": i, "data": {"image": f"/data/upload/1/bad-{i}.png"}} for i in range(BAD_TASKS)
        ]
        start = time.perf_counter()
        answer = client.post("/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG})
        out["80 tasks s"] = time.perf_counter() - start
        done.set()
        poller.join()
        out["80 tasks status"] = answer.status_code
        out["requests to LS"] = len(FailingStudio.hits)
        out["slowest /health s"] = max(health) if health else float("nan")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="Commit to compare with.")
    parser.add_argument("--repeats", type=int, default=3, help="Servers per side (median).")
    args = parser.parse_args()
    run_as_installed()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingStudio)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    studio = f"http://127.0.0.1:{httpd.server_address[1]}"
    with tempfile.TemporaryDirectory(prefix="a2m-serve-faults-") as tmp:
        base = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "LABEL_STUDIO_"))}
        ws = setup(base, env)
        old = base / "baseline"
        subprocess.run(
            [*GIT, "worktree", "add", "-q", "--detach", str(old), args.baseline],
            check=True,
        )
        try:
            sides = {f"baseline {args.baseline}": old, "this checkout": PROJECT_ROOT}
            results: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
            for _ in range(args.repeats):  # sides in turns: drift on a shared machine hits both
                for name, code in sides.items():
                    results[name].append(one_server(code, ws, studio))
        finally:
            subprocess.run(
                [*GIT, "worktree", "remove", "--force", str(old)],
                check=False,
            )
    keys = list(next(iter(results.values()))[0])
    names = list(results)
    print(f"{'median of ' + str(args.repeats):<20}" + "".join(f"{n:>24}" for n in names))
    for key in keys:
        cells = [statistics.median(r[key] for r in results[n]) for n in names]
        whole = "status" in key or "MB" in key or "LS" in key
        shown = [f"{c:.0f}" if whole else f"{c:.2f}" for c in cells]
        print(f"{key:<20}" + "".join(f"{s:>24}" for s in shown))


if __name__ == "__main__":
    main()
