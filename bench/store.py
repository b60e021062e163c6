"""Store benchmark: import-folder, large versions and their diff, a no-op re-import.

Run: .venv/bin/python bench/store.py [--data ../shared/datasets/hymenoptera_data] [--repeat 5]
     [--rows 1000000] [--dialects sqlite,postgresql]
Prints medians over the repeats, next to a baseline measured in the same run. The versions are
measured on each dialect asked for; PostgreSQL is a throw-away server that tests/postgres.py
starts from Debian's package (fsync off, as in the tests: the figures are the store's work, not
the disk's).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from _shared import HYMENOPTERA
from sqlalchemy import insert, select

from annotate2model.settings import SplitFractions, load_settings
from annotate2model.store import Store
from annotate2model.store.models import DatasetVersion, Image, VersionItem
from annotate2model.store.records import VersionItemRecord
from annotate2model.store.versions import create_version, diff_versions, split_for
from annotate2model.workspace import init_workspace

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = HYMENOPTERA


Row = tuple[str, float, float, str]


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def a2m(ws: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2M_")}
    env["A2M_HOME"] = str(ws)
    subprocess.run(
        [sys.executable, "-m", "annotate2model", *args], env=env, check=True, capture_output=True
    )


def bench_import(data: Path, repeat: int, tmp: Path) -> list[Row]:
    counter = iter(range(10_000))

    def cold() -> None:
        ws = tmp / f"cold{next(counter)}"
        init_workspace(ws)
        a2m(ws, "import-folder", str(data))

    def copy_baseline() -> None:
        target = tmp / f"copy{next(counter)}"
        shutil.copytree(data, target)
        for path in target.rglob("*"):
            if path.is_file():
                hashlib.sha256(path.read_bytes()).hexdigest()

    warm_ws = tmp / "warm"
    init_workspace(warm_ws)
    a2m(warm_ws, "import-folder", str(data))
    return [
        (
            "import-folder, cold (whole process)",
            median_time(cold, repeat),
            median_time(copy_baseline, repeat),
            "copytree + sha256 of the same files",
        ),
        (
            "import-folder, no-op re-import (whole process)",
            median_time(lambda: a2m(warm_ws, "import-folder", str(data)), repeat),
            median_time(lambda: a2m(warm_ws, "versions", "--json"), repeat),
            "a2m versions --json (start-up floor)",
        ),
    ]


def bench_versions(
    rows: int,
    repeat: int,
    tmp: Path,
    dialect: str = "sqlite",
    new_url: Callable[[], str] | None = None,
) -> list[Row]:
    fractions = SplitFractions()
    shas = [hashlib.sha256(f"bench-{i}".encode()).hexdigest() for i in range(rows + rows // 100)]
    labels = [f"class{i % 20}" for i in range(len(shas))]
    now = datetime.now(UTC)
    create_times, naive_times, diff_times, set_times = [], [], [], []
    for attempt in range(repeat):
        ws, _ = init_workspace(tmp / f"{dialect}{attempt}")
        env = {"A2M_DATABASE_URL": new_url()} if new_url is not None else {}
        store = Store.open(load_settings(ws, env))
        with store.write() as session:
            session.execute(
                insert(Image),
                [
                    {
                        "sha256": s,
                        "format": "PNG",
                        "width": 1,
                        "height": 1,
                        "mode": "RGB",
                        "size_bytes": 1,
                        "origin": None,
                        "created_at": now,
                    }
                    for s in shas
                ],
            )
        first = [
            VersionItemRecord(s, labels[i], split_for(s, fractions))
            for i, s in enumerate(shas[:rows])
        ]
        # The next version: 1% removed, 1% added, 1% relabeled.
        second = first[rows // 100 :] + [
            VersionItemRecord(s, "new", split_for(s, fractions)) for s in shas[rows:]
        ]
        second = [
            VersionItemRecord(r.image_sha256, "moved", r.split) if i % 100 == 0 else r
            for i, r in enumerate(second)
        ]
        start = time.perf_counter()
        with store.write() as session:
            create_version(session, first, source="bench", fractions=fractions)
        create_times.append(time.perf_counter() - start)
        with store.write() as session:
            create_version(session, second, source="bench", fractions=fractions)
        start = time.perf_counter()
        with store.read() as session:
            diff = diff_versions(session, 1, 2)
        diff_times.append(time.perf_counter() - start)
        assert diff.counts["added"] == rows // 100 and diff.counts["removed"] == rows // 100
        # Baselines: one ORM object per row, and a diff of two in-memory dicts after loading.
        start = time.perf_counter()
        with store.write() as session:
            session.add(
                DatasetVersion(
                    number=3,
                    parent=2,
                    content_hash="x",
                    created_at=now,
                    note="",
                    source="naive",
                    item_count=rows,
                    split_json="{}",
                )
            )
            session.flush()
            session.add_all(
                VersionItem(version=3, image_sha256=r.image_sha256, label=r.label, split=r.split)
                for r in first
            )
        naive_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        with store.read() as session:
            query = select(VersionItem.image_sha256, VersionItem.label)
            a = {
                sha: label for sha, label in session.execute(query.where(VersionItem.version == 1))
            }
            b = {
                sha: label for sha, label in session.execute(query.where(VersionItem.version == 2))
            }
            _ = (
                b.keys() - a.keys(),
                a.keys() - b.keys(),
                [k for k in a.keys() & b.keys() if a[k] != b[k]],
            )
        set_times.append(time.perf_counter() - start)
        store.close()
    return [
        (
            f"{dialect}: create version of {rows:,} rows",
            statistics.median(create_times),
            statistics.median(naive_times),
            "one ORM object per row",
        ),
        (
            f"{dialect}: diff two {rows:,}-row versions",
            statistics.median(diff_times),
            statistics.median(set_times),
            "load both, diff Python dicts",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dialects", default="sqlite", help="sqlite, postgresql or both")
    args = parser.parse_args()
    dialects = args.dialects.split(",")
    with tempfile.TemporaryDirectory(prefix="a2m-bench-") as tmp_name:
        tmp = Path(tmp_name)
        rows: list[Row] = []
        if args.data.is_dir():
            rows += bench_import(args.data, args.repeat, tmp)
        else:
            print(f"(skipping import: {args.data} not found)")
        if "sqlite" in dialects:
            rows += bench_versions(args.rows, args.repeat, tmp)
        if "postgresql" in dialects:
            sys.path.insert(0, str(ROOT))
            from tests.postgres import PostgresServer, binaries

            bin_dir = binaries()
            if bin_dir is None:
                raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
            server = PostgresServer(bin_dir).start()
            try:
                rows += bench_versions(
                    args.rows, args.repeat, tmp, "postgresql", server.new_database
                )
            finally:
                server.stop()
    print(f"\nmedian of {args.repeat} runs, seconds; ratio = baseline / a2m")
    print(f"{'what':52} {'a2m':>7} {'baseline':>9} {'ratio':>6}  baseline is")
    for what, ours, base, baseline in rows:
        print(f"{what:52} {ours:7.3f} {base:9.3f} {base / ours:6.2f}  {baseline}")


if __name__ == "__main__":
    main()
