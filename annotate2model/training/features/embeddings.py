"""The embedding cache: a frozen backbone's features, computed once per image and kept.

Key: (image SHA-256, model key, view). The model key hashes the backbone, the weights identity,
the preprocessing and the precision, so any change to them misses the cache. Storage is one SQLite
file (raw sqlite3, WAL): every extraction batch commits as one transaction, so a process killed
with -9 leaves whole batches or nothing. Also here: a safetensors copy of each frozen trunk, so a
probe on cached features writes its artifact without rebuilding the network. One engine extracts
features: torch, on whichever device the run picked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from annotate2model.errors import InvalidImage
from annotate2model.progress import NullProgress, Progress
from annotate2model.training import distributed
from annotate2model.training.features.images import ImageSource, Preprocessing, load_image

if TYPE_CHECKING:
    import torch


def model_key(backbone: str, weights_identity: str, prep: Preprocessing, bf16: bool) -> str:
    description = model_description(backbone, weights_identity, prep, bf16)
    return hashlib.sha256(description.encode()).hexdigest()[:32]


def model_description(backbone: str, weights_identity: str, prep: Preprocessing, bf16: bool) -> str:
    return json.dumps(
        {
            "backbone": backbone,
            "weights": weights_identity,
            "preprocessing": prep.key,
            "precision": "bf16" if bf16 else "fp32",
        },
        sort_keys=True,
    )


# A network as the extraction loop sees it: uint8 NHWC images in, float32 features out (a row
# per image). `torch_network` makes one of a torch module.
Network = Callable[[NDArray[np.uint8]], NDArray[np.float32]]

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    model_key TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    dim INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (
    model_key TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    view INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (model_key, image_sha256, view)
) WITHOUT ROWID;
"""


# Decoded images allowed to wait for the network at the start of an extraction.
PREFETCH_BYTES = 128 << 20


@dataclass
class ExtractionStats:
    """What one extraction did: how many (image, view) pairs were computed and how fast."""

    requested: int = 0
    cached: int = 0
    computed: int = 0
    # From the network being ready to the last batch stored; decoding that ran while the
    # network was being built is not counted.
    seconds: float = 0.0
    # (image sha256, reason) of images that could not be decoded.
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def trunk_path(cache_dir: Path, weights_identity: str, backbone: str) -> Path:
    """The frozen trunk's safetensors copy in the cache at `cache_dir` (written by the first
    probe of those weights, after they were checked against the architecture)."""
    name = hashlib.sha256(f"{backbone}|{weights_identity}".encode()).hexdigest()[:32]
    return cache_dir / "trunks" / f"{name}.safetensors"


class EmbeddingCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = root / "embeddings.sqlite"
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def get(self, key: str, shas: Sequence[str], view: int = 0) -> dict[str, NDArray[Any]]:
        """Cached vectors for the images that have one."""
        found: dict[str, NDArray[Any]] = {}
        for start in range(0, len(shas), 500):
            chunk = list(shas[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT image_sha256, data FROM vectors WHERE model_key = ? AND view = ? "
                f"AND image_sha256 IN ({marks})",
                [key, view, *chunk],
            )
            for sha, data in rows:
                found[sha] = np.frombuffer(data, dtype=np.float32)
        return found

    def put(
        self, key: str, description: str, rows: Sequence[tuple[str, int, NDArray[Any]]]
    ) -> None:
        """Store (sha, view, vector) rows in one transaction."""
        if not rows:
            return
        dim = int(rows[0][2].shape[0])
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO models (model_key, description, dim) VALUES (?, ?, ?)",
                (key, description, dim),
            )
            conn.executemany(
                "INSERT OR REPLACE INTO vectors (model_key, image_sha256, view, data) "
                "VALUES (?, ?, ?, ?)",
                [
                    (key, sha, view, np.ascontiguousarray(v, np.float32).tobytes())
                    for sha, view, v in rows
                ],
            )

    def count(self, key: str | None = None) -> int:
        if key is None:
            row = self._conn.execute("SELECT COUNT(*) FROM vectors").fetchone()
        else:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM vectors WHERE model_key = ?", (key,)
            ).fetchone()
        return int(row[0])


@dataclass(frozen=True)
class ExtractJob:
    """One (image, view) to run through a network; `sha256` is its key (any unique text works
    for images that are not in the store, such as a file a user asks about)."""

    sha256: str
    source: ImageSource
    view: int


@dataclass
class ForwardBatch:
    """One batch through the network: the jobs that decoded, their outputs (row per job), and
    the jobs that could not be decoded with the reason."""

    kept: list[ExtractJob]
    outputs: NDArray[Any]
    errors: list[tuple[ExtractJob, str]]


class _InlinePool:
    """A stand-in for a thread pool with no workers: decoding runs on the calling thread."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def torch_network(
    model: torch.nn.Module, prep: Preprocessing, device: torch.device, bf16: bool
) -> Network:
    """`model` on `device` (eval mode, channels_last but on MPS) as a Network."""
    import torch

    from annotate2model.training.features.data import to_input
    from annotate2model.training.features.device import autocast

    # Grad mode is switched off around the network's own work only: the extraction loop is a
    # generator, suspended between batches, and its caller's code must not run in inference mode.
    with torch.inference_mode():
        model = model.to(device).eval()
        if device.type != "mps":
            model = model.to(memory_format=torch.channels_last)

    def run(arrays: NDArray[np.uint8]) -> NDArray[np.float32]:
        with torch.inference_mode():
            x = to_input(arrays, prep, device)
            with autocast(device, bf16):
                out = model(x)
            features: NDArray[np.float32] = out.float().flatten(1).cpu().numpy()
            return features

    return run


def forward_batches(
    jobs: Sequence[ExtractJob],
    network: Callable[[], Network],
    prep: Preprocessing,
    batch_size: int,
    workers: int,
    seed: int = 0,
    rotation: float = 10.0,
    max_pixels: int | None = None,
    on_ready: Callable[[], None] | None = None,
) -> Iterator[ForwardBatch]:
    """Decode `jobs` (in `workers` threads, 0: on this thread) a few batches ahead of the forward
    passes, so that the two overlap; yields each batch's float32 outputs, flattened per image.

    `network` is called once, after the first batches were queued (building it may take seconds
    of imports, during which decoding runs ahead up to PREFETCH_BYTES). `on_ready` is called once
    the network is ready. Stopping early (an exception, Ctrl-C, closing the generator) cancels the
    queued decodes instead of waiting for them.
    """
    batches = [list(jobs[i : i + batch_size]) for i in range(0, len(jobs), batch_size)]
    if not batches:
        return

    def decode(batch: list[ExtractJob]) -> tuple[list[ExtractJob], list[NDArray[Any]], list[Any]]:
        kept: list[ExtractJob] = []
        arrays: list[NDArray[Any]] = []
        errors: list[tuple[ExtractJob, str]] = []
        for job in batch:
            # View 0 is the clean centre crop; later views are seeded augmentations.
            aug = None if job.view == 0 else _view_seed(job.sha256, job.view, seed)
            try:
                arrays.append(load_image(job.source, prep, aug, rotation, max_pixels))
                kept.append(job)
            except InvalidImage as exc:
                errors.append((job, str(exc)))
        return kept, arrays, errors

    ahead = max(2, workers + 1)
    batch_bytes = batch_size * prep.crop * prep.crop * 3
    first_ahead = max(ahead, PREFETCH_BYTES // max(1, batch_bytes))
    pool: ThreadPoolExecutor | _InlinePool = (
        ThreadPoolExecutor(max_workers=workers) if workers > 0 else _InlinePool()
    )
    try:
        pending: deque[Future[tuple[list[ExtractJob], list[NDArray[Any]], list[Any]]]] = deque()
        queue = iter(batches)
        if workers > 0:
            for batch in queue:
                pending.append(pool.submit(decode, batch))
                if len(pending) >= first_ahead:
                    break
        run = network()
        if on_ready is not None:
            on_ready()
        if not pending:
            first = next(queue, None)
            if first is not None:
                pending.append(pool.submit(decode, first))
        while pending:
            kept, arrays, errors = pending.popleft().result()
            while len(pending) < (ahead if workers > 0 else 1):
                nxt = next(queue, None)
                if nxt is None:
                    break
                pending.append(pool.submit(decode, nxt))
            outputs = run(np.stack(arrays)) if arrays else np.empty((0, 0), dtype=np.float32)
            yield ForwardBatch(kept, outputs, errors)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def extract_features(
    cache: EmbeddingCache,
    key: str,
    description: str,
    jobs: Sequence[ExtractJob],
    network: Callable[[], Network],
    prep: Preprocessing,
    batch_size: int = 64,
    workers: int = 1,
    seed: int = 0,
    rotation: float = 10.0,
    progress: Progress | None = None,
    max_pixels: int | None = None,
) -> tuple[dict[tuple[str, int], NDArray[Any]], ExtractionStats]:
    """Features for every job: read from the cache, computing (and storing) only what is missing.

    `network` is called only when something must be computed; each computed batch is stored as
    one transaction, so a killed process leaves whole batches.
    """
    progress = progress or NullProgress()
    stats = ExtractionStats(requested=len(jobs))
    out: dict[tuple[str, int], NDArray[Any]] = {}
    by_view: dict[int, list[str]] = {}
    for job in jobs:
        by_view.setdefault(job.view, []).append(job.sha256)
    for view, shas in by_view.items():
        for sha, vec in cache.get(key, shas, view).items():
            out[(sha, view)] = vec
    missing = [job for job in jobs if (job.sha256, job.view) not in out]
    if distributed.world_size() > 1:
        # What any rank's cache lacks is computed once, each rank taking its share.
        lacking = set().union(*distributed.gather({(j.sha256, j.view) for j in missing}))
        missing = [job for job in jobs if (job.sha256, job.view) in lacking]
    stats.cached = len(jobs) - len(missing)
    if not missing:
        return out, stats
    started = time.perf_counter()

    def ready() -> None:
        nonlocal started
        started = time.perf_counter()

    mine = distributed.shard(missing)
    computed: list[tuple[str, int, NDArray[Any]]] = []
    progress.begin("Extracting features", total=len(mine))
    for batch in forward_batches(
        mine,
        network,
        prep,
        batch_size,
        workers,
        seed,
        rotation,
        max_pixels,
        on_ready=ready,
    ):
        for job, reason in batch.errors:
            if not any(s == job.sha256 for s, _ in stats.skipped):
                stats.skipped.append((job.sha256, reason))
        rows = [(job.sha256, job.view, batch.outputs[i]) for i, job in enumerate(batch.kept)]
        cache.put(key, description, rows)
        for sha, view, vec in rows:
            out[(sha, view)] = vec
        computed.extend(rows)
        stats.computed += len(rows)
        progress.advance(len(batch.kept) + len(batch.errors), status=f"{stats.computed} images")
    progress.end()
    # From the network being ready to the last batch stored.
    stats.seconds = time.perf_counter() - started
    if distributed.world_size() > 1:
        _merge_shares(cache, key, description, out, stats, computed)
    return out, stats


def _merge_shares(
    cache: EmbeddingCache,
    key: str,
    description: str,
    out: dict[tuple[str, int], NDArray[Any]],
    stats: ExtractionStats,
    computed: list[tuple[str, int, NDArray[Any]]],
) -> None:
    """Every rank's computed features on every rank, and in each machine's cache (its first
    process writes what the others computed); the counts are the whole run's."""
    shares = distributed.gather((computed, stats.skipped, stats.seconds))
    me = distributed.rank()
    others = [row for r, (rows, _, _) in enumerate(shares) if r != me for row in rows]
    if distributed.machine_leader():
        cache.put(key, description, others)
    for sha, view, vec in others:
        out[(sha, view)] = vec
    stats.computed = sum(len(rows) for rows, _, _ in shares)
    stats.skipped = sorted({pair for _, skipped, _ in shares for pair in skipped})
    stats.seconds = max(seconds for _, _, seconds in shares)
    # Nobody reads the cache for these rows before every machine has them.
    distributed.barrier()


def _view_seed(sha256: str, view: int, seed: int) -> int:
    return int(sha256[:12], 16) ^ (view * 7_919) ^ (seed * 104_729)
