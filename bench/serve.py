"""Serving speed: `a2m serve` over loopback at 1, 4 and 16 concurrent clients, torch and ONNX
Runtime, next to bare forward passes of the same model measured in the same run (issue 11).

Setup (in a temporary workspace, or --keep DIR): a ResNet-18 probe at 224 px (`--weights none`:
the weights do not change the speed) trained on generated images, exported to ONNX. Requests are
real photos (hymenoptera's validation JPEGs from ../shared when present, else generated JPEGs of
the same size), one image per request, sent as multipart uploads by client threads, each with its
own keep-alive connection. For each engine, a whole `a2m serve` process is started and warmed up.

The clients are the measuring instrument and share the cores with the server, so they are lean:
each request is a real HTTP/1.1 multipart upload of a real JPEG, built once per image as bytes
and written to a plain keep-alive socket; each answer is read by its Content-Length and must be
a 200 whose JSON holds a prediction. (httpx spent a few milliseconds of CPU per request on the
same two cores.) The clients' own CPU per request is printed beside the server's.

Reported per engine and client count: p50 and p99 latency, requests/s, CPU milliseconds per
request of the server process and of the clients, and the server's step times (its
Server-Timing header) with the mean images per forward pass. Beside them, bare forward
passes of the served model on already decoded images (no HTTP, no decoding), in this process:
one image (p50), and the batch size with the most images/s (chosen by a sweep beforehand). On a
shared machine the cores' speed drifts within a minute (a single pass went from 18 to 22 ms in
one run), so each client count's requests and the bare passes beside them run in alternating
turns (4 rounds, 2 with --quick), and every ratio compares figures from the same moments.
Targets: p99 at one client within 1.5x of one bare forward pass (p50); requests/s at 16 clients
at least 80% of the best bare batched forward. Beside the first: the bare pass's own p99 over its
p50, the tail this machine gives a pass with no HTTP and no decoding (where that is over 1.5x,
the target cannot be met here), and the served p99 over the bare p99.

    .venv/bin/python bench/serve.py [--quick] [--keep DIR] [--device cpu]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from _shared import HYMENOPTERA, run_as_installed

A2M = [sys.executable, "-m", "annotate2model"]
CLIENTS = (1, 4, 16)
P99_TARGET = 1.5
THROUGHPUT_TARGET = 0.8
BATCHES = (1, 2, 4, 8, 16, 32)


def run(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def photos(count: int) -> list[bytes]:
    """Real JPEG photos from ../shared, or generated JPEGs of a photo's size (500x375)."""
    if HYMENOPTERA.exists():
        files = sorted((HYMENOPTERA / "val").glob("*/*.jpg"))[:count]
        if files:
            return [f.read_bytes() for f in files]
    from PIL import Image

    out = []
    rng = random.Random(0)
    for _ in range(count):
        noise = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (375, 500, 3))
        buf = io.BytesIO()
        Image.fromarray(noise.astype(np.uint8), "RGB").save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def setup(base: Path, env: dict[str, str]) -> Path:
    """A workspace with run 1 (ResNet-18 probe at 224 px) and its model.onnx."""
    from PIL import Image

    ws = base / "ws"
    if (ws / ".a2m" / "runs" / "1" / "model.onnx").exists():
        return ws
    images = base / "images"
    rng = np.random.default_rng(1)
    for label in ("ants", "bees"):
        (images / label).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (240, 320, 3)).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(images / label / f"{i}.jpg", quality=85)
    env = {**env, "A2M_HOME": str(ws)}
    run([*A2M, "init", str(ws)], env)
    run([*A2M, "import-folder", str(images)], env)
    run([*A2M, "train", "--weights", "none", "--image-size", "224", "--epochs", "1"], env)
    run([*A2M, "export", "1", "--format", "onnx"], env)
    return ws


@dataclass
class Bare:
    """Bare forward passes taken in turns with the served loads."""

    one_p50_ms: float
    one_p99_ms: float
    best_images_per_s: float
    best_batch: int
    # The batch sweep before the loads (which chose best_batch).
    swept_images_per_s: float


class BareModel:
    """The served model's own forward passes on already decoded images, in this process."""

    def __init__(self, ws: Path, engine: str, device: str) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from annotate2model.serve.models import OnnxModel, ServedModel, TorchModel
        from annotate2model.training.features.images import load_image

        run_dir = ws / ".a2m" / "runs" / "1"
        self.model: ServedModel = (
            TorchModel.load(run_dir, device)
            if engine == "torch"
            else OnnxModel.load(run_dir / "model.onnx", device)
        )
        self.decoded = np.stack([load_image(p, self.model.prep) for p in photos(32)])
        for _ in range(3):
            self.model.forward(self.decoded[:1])

    def one(self, count: int) -> list[float]:
        """Seconds of `count` one-image passes."""
        times = []
        for i in range(count):
            started = time.perf_counter()
            self.model.forward(self.decoded[i % 32 : i % 32 + 1])
            times.append(time.perf_counter() - started)
        return times

    def batched(self, batch: int, rounds: int) -> tuple[int, float]:
        """Images and seconds of `rounds` passes of `batch` images."""
        self.model.forward(self.decoded[:batch])
        started = time.perf_counter()
        for _ in range(rounds):
            self.model.forward(self.decoded[:batch])
        return batch * rounds, time.perf_counter() - started

    def best_batch(self, repeats: int) -> tuple[int, float]:
        """The batch size with the most images/s, and that rate."""
        rates = {}
        for batch in BATCHES:
            images, seconds = self.batched(batch, max(2, repeats // (4 * batch)))
            rates[batch] = images / seconds
        best = max(rates, key=rates.__getitem__)
        return best, rates[best]


@dataclass
class Load:
    clients: int
    requests: int
    p50_ms: float
    p99_ms: float
    per_second: float
    # Median server-side milliseconds per step (its Server-Timing header): read, decode, model.
    steps: dict[str, float]
    # CPU milliseconds per request: the server process, and this process (the clients).
    server_cpu_ms: float
    client_cpu_ms: float
    # Images per forward pass, on average (the server's batch counters).
    mean_batch: float
    latencies: list[float]
    step_values: dict[str, list[float]]
    wall: float
    passes: int


def merged(parts: list[Load]) -> Load:
    """One Load from rounds of the same client count."""
    latencies = [x for p in parts for x in p.latencies]
    values: dict[str, list[float]] = {}
    for p in parts:
        for name, v in p.step_values.items():
            values.setdefault(name, []).extend(v)
    n, wall, passes = len(latencies), sum(p.wall for p in parts), sum(p.passes for p in parts)
    return Load(
        clients=parts[0].clients,
        requests=n,
        p50_ms=1000 * statistics.median(latencies),
        p99_ms=1000 * float(np.percentile(latencies, 99)),
        per_second=n / wall,
        steps={name: statistics.median(v) for name, v in values.items()},
        server_cpu_ms=sum(p.server_cpu_ms * p.requests for p in parts) / n,
        client_cpu_ms=sum(p.client_cpu_ms * p.requests for p in parts) / n,
        mean_batch=sum(p.mean_batch * p.passes for p in parts) / max(1, passes),
        latencies=latencies,
        step_values=values,
        wall=wall,
        passes=passes,
    )


BOUNDARY = "a2m-bench-7d3f0c"


def upload(host: str, data: bytes) -> bytes:
    """The whole HTTP request uploading `data` as the multipart field `file` (built once)."""
    body = (
        (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection on a plain socket: send a request built beforehand,
    read the status, headers and the Content-Length body of the answer."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""

    def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(request)
        data = self.pending
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(rest) < length:
            rest += self._recv()
        self.pending = rest[length:]
        return int(status_line.split(" ", 2)[1]), headers, rest[:length]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc; 0 elsewhere)."""
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return 0.0
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(url: str, server_pid: int, clients: int, per_client: int, images: list[bytes]) -> Load:
    """`clients` threads, each with its own keep-alive connection, sending `per_client`
    one-image requests back to back; every answer must be a 200 with a prediction."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    requests = [upload(f"{host}:{port}", data) for data in images]
    latencies: list[float] = []
    steps: dict[str, list[float]] = {}
    lock = threading.Lock()
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        mine: list[float] = []
        timings: list[str] = []
        conn = Connection(host, int(port))
        try:
            barrier.wait()
            for i in range(per_client):
                request = requests[(k * per_client + i) % len(requests)]
                started = time.perf_counter()
                status, headers, body = conn.exchange(request)
                mine.append(time.perf_counter() - started)
                if status != 200 or not json.loads(body)["predictions"][0]["top"]:
                    failures.append(f"{status} {body[:200]!r}")
                timings.append(headers.get("server-timing", ""))
        finally:
            conn.close()
        with lock:
            latencies.extend(mine)
            for timing in timings:
                for part in filter(None, timing.split(", ")):
                    name, _, dur = part.partition(";dur=")
                    steps.setdefault(name, []).append(float(dur))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    before = httpx.get(f"{url}/v1/model", timeout=10).json()["batches"]
    server_cpu, client_cpu = cpu_seconds(server_pid), time.process_time()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    server_cpu, client_cpu = cpu_seconds(server_pid) - server_cpu, time.process_time() - client_cpu
    after = httpx.get(f"{url}/v1/model", timeout=10).json()["batches"]
    passes = after["batches"] - before["batches"]
    if failures:
        sys.exit(f"requests failed: {failures[:3]}")
    return Load(
        clients=clients,
        requests=len(latencies),
        p50_ms=1000 * statistics.median(latencies),
        p99_ms=1000 * float(np.percentile(latencies, 99)),
        per_second=len(latencies) / wall,
        steps={name: statistics.median(values) for name, values in steps.items()},
        server_cpu_ms=1000 * server_cpu / len(latencies),
        client_cpu_ms=1000 * client_cpu / len(latencies),
        mean_batch=(after["images"] - before["images"]) / max(1, passes),
        latencies=latencies,
        step_values=steps,
        wall=wall,
        passes=passes,
    )


def serve(
    ws: Path, env: dict[str, str], engine: str, device: str, log: Path
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    args = [*A2M, "serve", "1", "--port", str(port), "--device", device]
    if engine == "onnxruntime":
        args.append("--onnx")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, env={**env, "A2M_HOME": str(ws)}, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"a2m serve exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    sys.exit(f"a2m serve did not start:\n{log.read_text()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Few requests (while developing).")
    parser.add_argument("--keep", type=Path, help="Build the workspace here and keep it.")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda when one is lent.")
    args = parser.parse_args()
    run_as_installed()
    per_client = {1: 15, 4: 8, 16: 4} if args.quick else {1: 120, 4: 60, 16: 25}
    repeats = 20 if args.quick else 120
    rounds = 2 if args.quick else 4

    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    base = args.keep or Path(tempfile.mkdtemp(prefix="a2m-bench-serve-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        print(f"Setting up in {base}: ResNet-18 probe at 224 px, exported to ONNX.")
        ws = setup(base, env)
        images = photos(32)
        source = "hymenoptera val JPEGs" if HYMENOPTERA.exists() else "generated 500x375 JPEGs"
        size = np.mean([len(i) for i in images]) / 1024
        print(f"Requests: one image each ({source}, {size:.0f} KiB mean).")
        rows: list[tuple[str, Bare, list[Load]]] = []
        for engine in ("torch", "onnxruntime"):
            bare = BareModel(ws, engine, args.device)
            best_batch, swept = bare.best_batch(repeats)
            url, proc = serve(ws, env, engine, args.device, base / f"{engine}.log")
            # Rounds: each client count's requests, and the bare passes beside them, are split
            # into ROUNDS alternating turns, so both see the same moments of a shared machine.
            ones: list[float] = []
            parts: dict[int, list[Load]] = {c: [] for c in CLIENTS}
            bare_images, bare_seconds = 0, 0.0
            try:
                load(url, proc.pid, 2, 4, images)  # warm-up: the first requests pay for set-up
                for _ in range(rounds):
                    for c in CLIENTS:
                        if c == 1:
                            ones += bare.one(repeats // rounds)
                        elif c == max(CLIENTS):
                            done = bare.batched(best_batch, max(2, repeats // (2 * best_batch)))
                            bare_images, bare_seconds = (
                                bare_images + done[0],
                                bare_seconds + done[1],
                            )
                        parts[c].append(load(url, proc.pid, c, per_client[c] // rounds, images))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            del bare
            summary = Bare(
                one_p50_ms=1000 * statistics.median(ones),
                one_p99_ms=1000 * float(np.percentile(ones, 99)),
                best_images_per_s=bare_images / bare_seconds,
                best_batch=best_batch,
                swept_images_per_s=swept,
            )
            rows.append((engine, summary, [merged(parts[c]) for c in CLIENTS]))
            print(f"  {engine}: done")
        print()
        print(
            f"{'engine':<12}{'clients':>8}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}"
            f"{'CPU ms/req srv':>15}{'cli':>5}   baseline (same run, bare forward)"
        )
        verdicts = []
        for engine, b, loads in rows:
            for r in loads:
                note = ""
                if r.clients == 1:
                    ratio = r.p99_ms / b.one_p50_ms
                    ok = ratio <= P99_TARGET
                    # Beside the target: the bare pass's own tail (its p99 over its p50, what
                    # this machine does to a pass with no HTTP and no decoding at all), and the
                    # served p99 over the bare p99.
                    note = (
                        f"1 image: p50 {b.one_p50_ms:.1f} ms (p99 {b.one_p99_ms:.1f}); "
                        f"p99/bare {ratio:.2f}x, target <= {P99_TARGET}x {'ok' if ok else 'MISSED'}"
                        f" (p50/bare {r.p50_ms / b.one_p50_ms:.2f}x; bare p99/p50 "
                        f"{b.one_p99_ms / b.one_p50_ms:.2f}x; p99/bare p99 "
                        f"{r.p99_ms / b.one_p99_ms:.2f}x)"
                    )
                    verdicts.append(ok)
                elif r.clients == max(CLIENTS):
                    share = r.per_second / b.best_images_per_s
                    ok = share >= THROUGHPUT_TARGET
                    note = (
                        f"best batched {b.best_images_per_s:.1f} img/s "
                        f"(batch {b.best_batch}; {b.swept_images_per_s:.1f} in the sweep); "
                        f"{100 * share:.0f}%, target >= {100 * THROUGHPUT_TARGET:.0f}% "
                        f"{'ok' if ok else 'MISSED'}"
                    )
                    verdicts.append(ok)
                print(
                    f"{engine:<12}{r.clients:>8}{r.requests:>9}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}"
                    f"{r.per_second:>8.1f}{r.server_cpu_ms:>15.1f}{r.client_cpu_ms:>5.1f}   {note}"
                )
        print("\nWhere a request's time goes (server-side medians, ms; the rest is HTTP):")
        for engine, _, loads in rows:
            for r in loads:
                steps = ", ".join(f"{k} {v:.1f}" for k, v in r.steps.items())
                print(
                    f"  {engine:<12} {r.clients:>2} clients: {steps}; "
                    f"{r.mean_batch:.1f} images per pass"
                )
        load1, load5, load15 = os.getloadavg()
        print(
            f"\ndevice {args.device}, {os.cpu_count()} cores; "
            f"load average {load1:.2f} {load5:.2f} {load15:.2f}"
        )
        print(f"targets met: {sum(verdicts)}/{len(verdicts)}")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
