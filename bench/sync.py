"""Benchmark `a2m sync` as a user waits for it: the whole process, against a local Label Studio.

    .venv/bin/python bench/sync.py [--small 150] [--large 2000] [--repeats 5] [--relabel 100]
                                   [--source local-files|http]

Issue 22's scale, a 10,000-task project (12-15 minutes on a 2-core machine, plus 3 minutes the
first time to make the photos; docs/scaling.md has its figures):

    .venv/bin/python bench/sync.py --large 10000

Two projects (150 and 2,000 tasks by default) of photo-sized JPEGs (500x375, 50-150 kB, seeded
noise and shapes), one label each, each synced into its own workspace. The images are Label
Studio Local Files of each workspace's own server (`--source own`, the default: what `a2m studio
up --files-root` and `a2m collect` give; a2m reads its own server's images from disk), Local
Files of a server that is not the workspace's (`--source local-files`: read over HTTP, as from a
team's remote Label Studio), or served by a plain static HTTP server on loopback (`--source
http`: images hosted outside Label Studio, as with cloud storage URLs). Every
timed step is a fresh `python -m annotate2model sync` process (interpreter start, imports, store
open, HTTP, rendering: the `a2m` script does the same), timed from launch to exit:

- first sync of each project (tasks/s; median of --first-repeats, each on the workspace's store
  as `connect` left it, with an empty blob store);
- no-change re-sync of each (median of --repeats, every time shown);
- re-sync of the large project after --relabel of its tasks were relabeled;
- Label Studio's own JSON export of the same projects (median of 3) as the baseline;
- where a first sync's time goes (bench/sync_probe.py runs the same CLI in-process with timers:
  start-up, imports, the listing and its calls, the image step and, summed over its threads, file
  reads, image checks, hashes and blob writes, label resolution, the commit), for both projects;
- where a no-change sync's time goes (the same probe; `-X importtime` lists the imports), for both;
- what a first sync leaves on disk: the store's bytes per task and the blob store's per image.

Each figure is printed next to its target: issue 7's for the default sizes (first sync at least
100 tasks/s; no-change re-sync at most 1.0 s for the small project, 1.5 s for the large one),
issue 22's for a project of 10,000 tasks or more (first sync at least 200 tasks/s; no-change
re-sync at most 2 s).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _shared import run_as_installed

HERE = Path(__file__).resolve().parent
PY = sys.executable
A2M = [PY, "-m", "annotate2model"]
TOKEN = "a2mbench0legacy0token0123456789abcdef012"
LABELS = ["cat", "dog"]

# Targets (issue 7, section 4): the default sizes.
NOCHANGE_SMALL_S = 1.0
NOCHANGE_LARGE_S = 1.5
FIRST_SYNC_TASKS_PER_S = 100.0
# Targets (issue 22, "Beyond one machine"): a project of HUGE_TASKS tasks or more.
HUGE_TASKS = 10_000
NOCHANGE_HUGE_S = 2.0
FIRST_SYNC_HUGE_TASKS_PER_S = 200.0


@dataclass(frozen=True)
class Targets:
    issue: int
    first_tasks_per_s: float
    nochange_s: float


def targets_for(tasks: int, *, small: bool) -> Targets:
    """The targets a project of `tasks` tasks is held to (`small`: the --small project)."""
    if tasks >= HUGE_TASKS:
        return Targets(22, FIRST_SYNC_HUGE_TASKS_PER_S, NOCHANGE_HUGE_S)
    return Targets(7, FIRST_SYNC_TASKS_PER_S, NOCHANGE_SMALL_S if small else NOCHANGE_LARGE_S)


# -- images ---------------------------------------------------------------------------------------


def photo(seed: int, width: int = 500, height: int = 375) -> bytes:
    """A seeded photo-sized JPEG: a colour gradient, a dozen shapes, sensor-like noise.

    The noise level varies with the seed, so file sizes spread over about 50-130 kB at quality 85,
    like phone photos scaled to 500 px.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    gx = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    gy = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    t = (gx * rng.uniform(0.3, 1) + gy * rng.uniform(0.3, 1)) / 2
    img = Image.fromarray((c0 * (1 - t) + c1 * t).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 150)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * rng.uniform(11, 60)
    pixels = (np.asarray(img, np.float32) + noise).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=85)
    return out.getvalue()


def _write_photo(job: tuple[int, str]) -> int:
    seed, path = job
    data = photo(seed)
    Path(path).write_bytes(data)
    return len(data)


def write_photos(folder: Path, count: int, first_seed: int) -> list[int]:
    """`count` photos named 0.jpg... in `folder` (seeds first_seed...); their sizes in bytes.

    Photos already there from an earlier run (same seeds, so the same bytes) are kept.
    """
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(first_seed + i, str(folder / f"{i}.jpg")) for i in range(count)]
    todo = [job for job in jobs if not Path(job[1]).is_file()]
    if todo:
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(_write_photo, todo, chunksize=16))
    return [Path(path).stat().st_size for _, path in jobs]


# -- processes ------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """Our environment without a2m's or Label Studio's variables: the workspace is the cwd."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("A2M_", "LABEL_STUDIO_", "CI"))
    }


@dataclass
class Timed:
    seconds: float
    stdout: str
    stderr: str
    # Set by probe(): time.time() when the process was launched and when it had exited.
    launched: float = 0.0
    exited: float = 0.0


def run(cmd: Sequence[str], cwd: Path, check: bool = True) -> Timed:
    launched = time.time()
    t = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=cwd, env=child_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if check and proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd[2:])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return Timed(seconds, proc.stdout, proc.stderr, launched, time.time())


def a2m(ws: Path, *args: str) -> Timed:
    return run([*A2M, *args], ws)


def a2m_json(ws: Path, *args: str) -> Any:
    return json.loads(a2m(ws, *args, "--json").stdout)


def bare_interpreter(repeats: int) -> float:
    """Median seconds of `python -c pass` (interpreter and site, nothing of ours)."""
    return statistics.median(run([PY, "-c", "pass"], HERE).seconds for _ in range(repeats))


# -- where the time goes --------------------------------------------------------------------------


@dataclass
class Breakdown:
    tasks: int
    rows: list[tuple[str, float, str]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    imports_total: float = 0.0
    heaviest: list[tuple[str, float]] = field(default_factory=list)
    heavy_modules: list[str] = field(default_factory=list)


def probe(ws: Path, tmp: Path, expect: str = "Nothing changed") -> dict[str, Any]:
    """One `a2m sync` under bench/sync_probe.py; its report, with launch and exit times."""
    out = tmp / f"probe-{time.monotonic_ns()}.json"
    timed = run([PY, str(HERE / "sync_probe.py"), str(out), "sync"], ws)
    report: dict[str, Any] = json.loads(out.read_text())
    report["launched"], report["exited"] = timed.launched, timed.exited
    if expect not in timed.stdout:
        raise SystemExit(f"the probed sync did not say {expect!r}:\n{timed.stdout}")
    return report


# -- first syncs, again and again -----------------------------------------------------------------


def snapshot_store(ws: Path, keep: Path) -> None:
    """Keep the workspace's store as it is now (before its first sync) in `keep`."""
    keep.mkdir(parents=True, exist_ok=True)
    for f in (ws / ".a2m").glob("store.db*"):
        shutil.copy2(f, keep / f.name)


def restore_store(ws: Path, keep: Path) -> None:
    """Put back the store kept by `snapshot_store` and empty the blob store: the next sync is a
    first sync again, against the same server and its files."""
    data = ws / ".a2m"
    for f in data.glob("store.db*"):
        f.unlink()
    for f in keep.glob("store.db*"):
        shutil.copy2(f, data / f.name)
    shutil.rmtree(data / "blobs")
    (data / "blobs").mkdir()


def _spans(report: dict[str, Any], name: str) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in report["spans"].get(name, [])]


def first_breakdown(reports: list[dict[str, Any]], tasks: int) -> Breakdown:
    """Where a first sync's time goes: the median over `reports` of each step (wall seconds),
    and the per-image work summed over the download threads (CPU-ish seconds)."""

    def one(r: dict[str, Any]) -> dict[str, float]:
        (sync_start, sync_end), *_ = _spans(r, "sync_project")
        http = sorted(r["http"], key=lambda c: c["start"])
        first_http = http[0]["start"] if http else sync_start
        listing = _spans(r, "read_all_tasks") or _spans(r, "list_tasks")
        list_start = min((a for a, _ in listing), default=sync_start)
        list_end = max((b for _, b in listing), default=sync_start)
        in_listing = [c for c in http if list_start <= c["start"] <= list_end]
        # The listing starts before the store is open (`HeadStart`); what the sync still waits
        # for of it once the store is open:
        waited = max(0.0, list_end - sync_start)

        def total(name: str) -> float:
            return sum(b - a for a, b in _spans(r, name))

        return {
            "start": r["began"] - r["launched"],
            "import": r["imported"] - r["began"],
            "cli": first_http - r["imported"],
            "store": sync_start - first_http,
            "store_open": total("store_open"),
            "list": list_end - list_start,
            "list_calls": float(len(in_listing)),
            "list_server": sum(c["end"] - c["start"] for c in in_listing),
            "waited": waited,
            "downloads": total("download_images"),
            "read": total("_read_local") + total("_read_image"),
            "check": total("probe_image"),
            "hash": total("sha256_bytes"),
            "put": total("BlobStore.put"),
            "pillow": total("import PIL.Image"),
            "resolve": total("resolve_labels"),
            "commit": total("commit"),
            "sync_rest": (sync_end - sync_start)
            - waited
            - total("download_images")
            - total("resolve_labels")
            - total("commit"),
            "render": r["ended"] - sync_end,
            "exit": r["exited"] - r["ended"],
            "whole": r["exited"] - r["launched"],
            "cpu": float(r.get("cpu_s", 0.0)),
            **{
                f"import {name}": total(f"import {name}")
                for name in ("sqlalchemy", "httpx", "typer", "pydantic", "rich")
            },
        }

    each = [one(r) for r in reports]
    m = {key: statistics.median(e[key] for e in each) for key in each[0]}
    b = Breakdown(tasks)
    b.rows = [
        ("interpreter start (launch to the script's first line)", m["start"], ""),
        ("import annotate2model.cli.app", m["import"], ""),
        ("CLI: the command's imports, settings, client, up to the first request", m["cli"], ""),
        (
            "store modules loading, store open (the listing under way meanwhile)",
            m["store"],
            f"store open {m['store_open']:.3f} s of it",
        ),
        ("waiting for the rest of the listing", m["waited"], ""),
        ("image step after the listing (read, check, hash, write blobs)", m["downloads"], "wall"),
        ("- reading image files / URLs", m["read"], "summed over threads"),
        ("- checking images (probe_image, Pillow)", m["check"], "summed over threads"),
        ("- hashing (SHA-256)", m["hash"], "summed over threads"),
        ("- writing blobs (temp file, fsync, rename)", m["put"], "summed over threads"),
        ("- import PIL.Image", m["pillow"], "first image check"),
        ("resolving labels", m["resolve"], ""),
        ("commit (rows, version, one transaction)", m["commit"], ""),
        ("rest of the sync", m["sync_rest"], ""),
        ("rendering the result", m["render"], ""),
        ("interpreter exit", m["exit"], ""),
        ("whole process", m["whole"], f"median of {len(each)} probed runs"),
        ("CPU time of the process (user + system)", m["cpu"], "both cores"),
        (
            f"listing every task in full ({m['list_calls']:.0f} calls), from the first request",
            m["list"],
            f"{tasks / max(m['list'], 1e-9):.0f} tasks/s; server time {m['list_server']:.3f} s;"
            " overlaps the rows above",
        ),
    ]
    imports = ", ".join(
        f"{name} {m[f'import {name}'] * 1000:.0f} ms"
        for name in ("sqlalchemy", "httpx", "typer", "pydantic", "rich")
    )
    pillow = m["pillow"] * 1000
    b.calls = [f"imports timed inside the process: {imports}, PIL.Image {pillow:.0f} ms"]
    b.heavy_modules = list(reports[-1]["heavy_modules"])
    return b


def _span(report: dict[str, Any], name: str) -> float:
    return float(sum(end - start for start, end in report["spans"].get(name, [])))


def _covered(spans: list[tuple[float, float]]) -> float:
    """Seconds during which at least one of the (start, end) spans was under way."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def importtime(ws: Path, *args: str) -> dict[str, float]:
    """Cumulative seconds of each top-level import a2m makes beyond a bare interpreter."""

    def tops(cmd: list[str]) -> dict[str, float]:
        err = run(cmd, ws).stderr
        found: dict[str, float] = {}
        for line in err.splitlines():
            m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
            if m and len(m[2]) == 1:  # one space: imported by the script itself
                found[m[3]] = found.get(m[3], 0.0) + int(m[1]) / 1e6
        return found

    bare = tops([PY, "-X", "importtime", "-c", "pass"])
    ours = tops([PY, "-X", "importtime", "-m", "annotate2model", *args])
    return {name: s for name, s in ours.items() if name not in bare}


def breakdown(ws: Path, tasks: int, tmp: Path, repeats: int) -> Breakdown:
    reports = [probe(ws, tmp) for _ in range(repeats)]

    def med(values: list[float]) -> float:
        return statistics.median(values)

    def phase(r: dict[str, Any]) -> dict[str, float]:
        http = sorted(r["http"], key=lambda c: c["start"])
        (sync_start, sync_end), *_ = _spans(r, "sync_project")
        first_http = http[0]["start"] if http else sync_start
        # The project call leaves before the store is open (`HeadStart`): count, inside the
        # sync, only the time some call is still under way.
        clipped = [(max(c["start"], sync_start), min(c["end"], sync_end)) for c in http]
        http_s = _covered([(a, b) for a, b in clipped if b > a])
        config_s = _span(r, "parse_label_config")
        return {
            "start": r["began"] - r["launched"],
            "import": r["imported"] - r["began"],
            "before_http": first_http - r["imported"],
            "store": sync_start - first_http,
            "store_open": _span(r, "store_open"),
            "http": http_s,
            "config": config_s,
            "sync_rest": (sync_end - sync_start) - http_s - config_s,
            "render": r["ended"] - sync_end,
            "exit": r["exited"] - r["ended"],
            "whole": r["exited"] - r["launched"],
        }

    phases = [phase(r) for r in reports]
    m = {key: med([p[key] for p in phases]) for key in phases[0]}
    last = reports[-1]
    calls = sorted(last["http"], key=lambda c: c["start"])
    b = Breakdown(tasks)
    b.calls = [
        f"{c.get('method', '?')} {c.get('path', '?')} {(c['end'] - c['start']) * 1000:.0f} ms"
        for c in calls
    ]
    b.rows = [
        ("interpreter start (launch to the script's first line)", m["start"], ""),
        ("import annotate2model.cli.app", m["import"], ""),
        ("CLI parsing, settings, client (before the first call)", m["before_http"], ""),
        (
            "store modules loading, store open (the project call under way meanwhile)",
            m["store"],
            f"store open {m['store_open']:.3f} s of it",
        ),
        (
            f"waiting on Label Studio in the sync ({len(calls)} calls in all)",
            m["http"],
            "wall time, calls overlap",
        ),
        ("labeling config parse", m["config"], ""),
        ("rest of the sync (store reads, comparison, commit)", m["sync_rest"], "outside HTTP"),
        ("rendering the result", m["render"], ""),
        ("interpreter exit", m["exit"], ""),
        ("whole process", m["whole"], f"median of {len(reports)} probed runs"),
    ]
    b.heavy_modules = list(last["heavy_modules"])
    imports = importtime(ws, "sync")
    b.imports_total = sum(imports.values())
    b.heaviest = sorted(imports.items(), key=lambda kv: -kv[1])[:8]
    return b


# -- the benchmark --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Disk:
    """What a first sync left on disk: the store's files and the blob store's."""

    store_bytes: int
    blobs: int
    blob_bytes: int
    # Allocated blocks (what `du` counts): each blob is a file of its own.
    blob_disk_bytes: int


def disk_use(ws: Path) -> Disk:
    data = ws / ".a2m"
    store = sum(f.stat().st_size for f in data.glob("store.db*"))
    blobs = [f.stat() for f in (data / "blobs").glob("*/*") if f.is_file()]
    return Disk(
        store,
        len(blobs),
        sum(b.st_size for b in blobs),
        sum(b.st_blocks * 512 for b in blobs),
    )


@dataclass
class ProjectFigures:
    tasks: int
    firsts: list[float] = field(default_factory=list)
    nochange: list[float] = field(default_factory=list)
    relabeled: float | None = None
    export: list[float] = field(default_factory=list)
    breakdown: Breakdown | None = None
    first_breakdown: Breakdown | None = None
    disk: Disk | None = None

    @property
    def first(self) -> float:
        return statistics.median(self.firsts)


def _print_steps(title: str, rows: Sequence[tuple[str, float, str]]) -> None:
    """A breakdown as a Markdown table of steps, with a blank line around it."""
    print()
    print(title)
    print()
    print("| step | seconds | note |")
    print("|---|---|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.3f} | {note} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=150, help="tasks in the small project")
    parser.add_argument("--large", type=int, default=2000, help="tasks in the large project")
    parser.add_argument("--repeats", type=int, default=5, help="no-change re-syncs per project")
    parser.add_argument(
        "--first-repeats", type=int, default=3, help="first syncs per project (median)"
    )
    parser.add_argument(
        "--probes",
        type=int,
        default=3,
        help="probed runs per breakdown (first syncs of the large project: 1)",
    )
    parser.add_argument("--relabel", type=int, default=100, help="tasks relabeled before a sync")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--photos",
        type=Path,
        default=Path(tempfile.gettempdir()) / "a2m-bench-sync-photos",
        help="where the generated photos are kept between runs (Label Studio's files root)",
    )
    parser.add_argument(
        "--source",
        choices=("own", "local-files", "http"),
        default="own",
        help="who serves the images: each workspace's own Label Studio (Local Files, read from "
        "disk by a2m), another Label Studio (Local Files over HTTP) or a static HTTP server",
    )
    args = parser.parse_args()
    run_as_installed()

    from annotate2model.labelstudio.client import LabelStudioClient
    from annotate2model.labelstudio.config import build_label_config
    from annotate2model.labelstudio.server import LocalServer, free_port
    from annotate2model.settings import Secret
    from annotate2model.workspace import init_workspace

    tmp = Path(tempfile.mkdtemp(prefix="a2m-bench-sync-"))
    files_root = args.photos.resolve()
    t = time.perf_counter()
    sizes: list[int] = []
    projects = [ProjectFigures(args.small), ProjectFigures(args.large)]
    for i, p in enumerate(projects):
        sizes += write_photos(files_root / f"p{i}", p.tasks, first_seed=i * 1_000_000)
    print(
        f"{len(sizes)} JPEGs of 500x375: {min(sizes) / 1e3:.0f}-{max(sizes) / 1e3:.0f} kB, "
        f"median {statistics.median(sizes) / 1e3:.0f} kB ({time.perf_counter() - t:.0f} s)",
        flush=True,
    )

    static = _static_server(files_root) if args.source == "http" else None

    def image_url(project: int, n: int) -> str:
        if static is not None:
            return f"http://127.0.0.1:{static.server_address[1]}/p{project}/{n}.jpg"
        return f"/data/local-files/?d=p{project}/{n}.jpg"

    own = args.source == "own"
    workspaces = [init_workspace(tmp / f"ws{i}")[0] for i in range(len(projects))]
    for ws in workspaces:
        # As a user starts: `a2m init` creates the store (its schema), so a first sync finds it.
        a2m(ws.root, "init")
    # `own`: each workspace runs its own server, as `a2m studio up --files-root` does; otherwise
    # one server outside the workspaces (as a team's remote Label Studio is to a2m).
    roots = [ws.data_dir / "labelstudio" for ws in workspaces] if own else [tmp / "labelstudio"]
    servers = [LocalServer(root) for root in roots]
    urls_of: list[str] = []
    for server in servers:
        t = time.perf_counter()
        started = server.start(
            username="admin@a2m.local",
            password="bench-pass-1",
            token=TOKEN,
            port=free_port(),
            files_root=files_root,
        )
        urls_of.append(started.url)
        print(
            f"Label Studio started in {time.perf_counter() - t:.0f} s at {started.url}", flush=True
        )
    interpreter = 0.0
    serving = [0.0, 0.0]
    clients = [LabelStudioClient(url, Secret(TOKEN)) for url in urls_of]

    def client_of(i: int) -> Any:
        return clients[i] if own else clients[0]

    def url_of(i: int) -> str:
        return urls_of[i] if own else urls_of[0]

    try:
        ids: list[list[int]] = []
        project_ids: list[int] = []
        for i, p in enumerate(projects):
            client = client_of(i)
            project = client.create_project(f"bench {p.tasks}", build_label_config(LABELS))
            project_ids.append(project.id)
            if static is None and not client.add_local_storage(
                project.id, str(files_root / f"p{i}")
            ):
                raise SystemExit("Label Studio refused the Local Files storage")
            tasks = [
                {
                    "data": {"image": image_url(i, n)},
                    "annotations": [_choice(LABELS[n % 2])],
                }
                for n in range(p.tasks)
            ]
            ids.append([])
            for start in range(0, len(tasks), 1000):
                ids[-1] += client.import_tasks(project.id, tasks[start : start + 1000])

        interpreter = bare_interpreter(args.repeats)
        urls = [image_url(0, n) for n in range(min(projects[0].tasks, 60))]
        serving = [serving_rate(client_of(0), urls, w) for w in (1, 8)]
        for i, p in enumerate(projects):
            ws = workspaces[i]
            connect = ("connect", url_of(i), "--token", TOKEN, "--project")
            a2m(ws.root, *connect, str(project_ids[i]))
            kept = tmp / f"store-before-first-sync-{i}"
            snapshot_store(ws.root, kept)
            for n in range(args.first_repeats):
                if n:
                    restore_store(ws.root, kept)
                p.firsts.append(a2m(ws.root, "sync").seconds)
                versions = a2m_json(ws.root, "versions")
                assert [v["item_count"] for v in versions] == [p.tasks], versions
            p.disk = disk_use(ws.root)
            reports = []
            for _ in range(args.probes if p.tasks <= 500 else 1):
                restore_store(ws.root, kept)
                reports.append(probe(ws.root, tmp, expect="Version 1:"))
            p.first_breakdown = first_breakdown(reports, p.tasks)
            versions = a2m_json(ws.root, "versions")
            assert [v["item_count"] for v in versions] == [p.tasks], versions
            for _ in range(args.repeats):
                again = a2m(ws.root, "sync")
                assert "Nothing changed" in again.stdout, again.stdout
                p.nochange.append(again.seconds)
            print(
                f"{p.tasks} tasks: first sync "
                + ", ".join(f"{s:.2f}" for s in p.firsts)
                + " s, no-change "
                + ", ".join(f"{s:.2f}" for s in p.nochange),
                flush=True,
            )
            p.breakdown = breakdown(ws.root, p.tasks, tmp, args.probes)

        client = client_of(len(projects) - 1)
        large = projects[-1]
        relabeled = ids[-1][: args.relabel]
        for tid in relabeled:
            task = client.json("GET", f"/api/tasks/{tid}", "read task")
            ann = task["annotations"][0]
            label = ann["result"][0]["value"]["choices"][0]
            other = LABELS[1] if label == LABELS[0] else LABELS[0]
            client.json("PATCH", f"/api/annotations/{ann['id']}/", "relabel", json=_choice(other))
        ws_large = tmp / f"ws{len(projects) - 1}"
        large.relabeled = a2m(ws_large, "sync").seconds
        diff = a2m_json(ws_large, "diff", "1", "2")
        assert diff["counts"]["relabeled"] == len(relabeled), diff["counts"]

        for i, (p, project_id) in enumerate(zip(projects, project_ids, strict=True)):
            for _ in range(3):
                t = time.perf_counter()
                response = client_of(i).request(
                    "GET",
                    f"/api/projects/{project_id}/export",
                    params={"exportType": "JSON"},
                    timeout=600,
                )
                assert response.status_code == 200 and len(response.json()) == p.tasks
                p.export.append(time.perf_counter() - t)
    finally:
        for c in clients:
            c.close()
        for server in servers:
            server.stop()
        if static is not None:
            static.shutdown()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    where = {
        "own": "the workspace's own Label Studio (Local Files; a2m reads them from disk)",
        "local-files": "a Label Studio that is not the workspace's (Local Files, over HTTP)",
        "http": "a static HTTP server on loopback",
    }[args.source]
    report(projects, args.relabel, interpreter, serving, where, len(os.sched_getaffinity(0)))


def serving_rate(client: Any, urls: list[str], workers: int) -> float:
    """Images/s at which these photos are served to `workers` threads."""
    from concurrent.futures import ThreadPoolExecutor

    def get(url: str) -> int:
        if url.startswith("http"):
            return len(client.get_external(url))
        response = client.request("GET", url)
        assert response.status_code == 200, response.status_code
        return len(response.content)

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(get, urls))
    return len(urls) / (time.perf_counter() - t)


def _static_server(folder: Path) -> Any:
    """A threaded static HTTP server for `folder` on a free loopback port (already serving)."""
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _choice(label: str) -> dict[str, Any]:
    value = {"choices": [label]}
    return {
        "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": value}]
    }


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(
    projects: list[ProjectFigures],
    relabel: int,
    interpreter: float,
    serving: list[float],
    where: str,
    cpus: int,
) -> None:
    small, large = projects[0], projects[-1]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print()
    print(
        f"`a2m sync` as whole processes (launch to exit), photo-sized JPEGs served by {where}, "
        f"{cpus} CPUs, load average {load}; `python -c pass` takes {interpreter:.2f} s here. "
        f"Label Studio serves the photos at {serving[0]:.0f} images/s one at a time, "
        f"{serving[1]:.0f} images/s 8 at a time: the ceiling of a sync that reads them over HTTP."
    )
    print()
    print("| measure | value | target |")
    print("|---|---|---|")
    goals = [targets_for(p.tasks, small=p is small) for p in projects]
    for p, goal in zip(projects, goals, strict=True):
        rate = p.tasks / p.first
        ok = _verdict(rate >= goal.first_tasks_per_s)
        runs = ", ".join(f"{s:.2f}" for s in p.firsts)
        print(
            f"| first sync, {p.tasks} tasks (median of {len(p.firsts)}: {runs}) "
            f"| {p.first:.2f} s = {rate:.0f} tasks/s "
            f"| issue {goal.issue}: >= {goal.first_tasks_per_s:.0f} tasks/s: {ok} |"
        )
    for p, goal in zip(projects, goals, strict=True):
        med = statistics.median(p.nochange)
        runs = ", ".join(f"{s:.2f}" for s in p.nochange)
        print(
            f"| no-change re-sync, {p.tasks} tasks (median of {len(p.nochange)}: {runs}) "
            f"| {med:.2f} s | issue {goal.issue}: <= {goal.nochange_s:.1f} s: "
            f"{_verdict(med <= goal.nochange_s)} |"
        )
    if large.relabeled is not None:
        what = f"re-sync after {relabel} of {large.tasks} tasks relabeled"
        print(f"| {what} | {large.relabeled:.2f} s | - |")
    for p in projects:
        med = statistics.median(p.export)
        print(
            f"| baseline: Label Studio JSON export, {p.tasks} tasks (median of {len(p.export)}) "
            f"| {med:.2f} s | - |"
        )
    for p in projects:
        d = p.disk
        if d is None or not d.blobs:
            continue
        print(
            f"| on disk after the first sync of {p.tasks} tasks: store (store.db*) "
            f"| {d.store_bytes / p.tasks:,.0f} bytes/task; blobs {d.blob_bytes / d.blobs:,.0f} "
            f"bytes/image ({d.blob_disk_bytes / d.blobs:,.0f} allocated) | - |"
        )
    for p in projects:
        b = p.first_breakdown
        if b is None:
            continue
        _print_steps(f"Where a first `a2m sync` of {b.tasks} tasks spends its time:", b.rows)
        print("; ".join(b.calls))
        print(f"Heavy modules loaded: {', '.join(b.heavy_modules) or 'none'}")
    for p in projects:
        b = p.breakdown
        if b is None:
            continue
        _print_steps(f"Where a no-change `a2m sync` of {b.tasks} tasks spends its time:", b.rows)
        print(f"Label Studio calls: {'; '.join(b.calls)}")
        heaviest = ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in b.heaviest)
        print(
            f"Imports (-X importtime, beyond a bare interpreter): {b.imports_total:.2f} s in all; "
            f"heaviest: {heaviest}"
        )
        print(f"Heavy modules loaded: {', '.join(b.heavy_modules) or 'none'}")


if __name__ == "__main__":
    main()
