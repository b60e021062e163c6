"""Decoding a probe's new images, and computing their features, from the process's first second.

On a grown version the images that have no cached features yet are decoded on another core while
the run starts (reading the version, and importing torch where the run needs it), and where the
workspace holds the trunk's ONNX copy, ONNX Runtime computes their features too. Nothing here
imports torch: the CLI starts this first, then imports the runner, which takes the decoded images
and the features over (`extract_features` looks them up by image SHA-256, and takes features only
under the model key it asks for). Which images are new, and that the run will extract on the CPU
in fp32 with that trunk (lite.cpu_certain, lite.fp32_certain), are told without torch: a wrong
guess costs some work on a core that was idle, never a wrong feature."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from annotate2model.errors import A2MError
from annotate2model.fsutil import read_verified
from annotate2model.store import Store
from annotate2model.store import versions as store_versions
from annotate2model.training import onnx_runtime
from annotate2model.training.config import SPLITS, RunConfig
from annotate2model.training.images import Preprocessing, load_image
from annotate2model.training.keys import model_key
from annotate2model.training.weights import digest_memo, resolve_weights

# Decoded pixels allowed to wait for the network.
EARLY_BYTES = 128 << 20


# Images per ONNX Runtime call in the early extraction (the CPU's eval batch).
EARLY_BATCH = 32


@dataclass(frozen=True)
class OnnxGuess:
    """What the run will most likely extract with: the trunk's cached ONNX copy is looked up
    from these, and its features are offered under the model key they give."""

    cache_dir: Path
    backbone: str
    weights: str
    seed: int


class EarlyDecode:
    """Clean (view 0) decodes of some images, started at once on `workers` threads; with an
    `OnnxGuess`, their features too, on one more thread (ONNX Runtime's own threads under it)."""

    def __init__(
        self,
        images: Sequence[tuple[str, Path]],
        prep: Preprocessing,
        workers: int = 1,
        onnx: OnnxGuess | None = None,
    ) -> None:
        self.prep = prep
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers))
        limit = max(1, EARLY_BYTES // (prep.crop * prep.crop * 3))
        self._futures: dict[str, Future[NDArray[Any]]] = {
            sha: self._pool.submit(load_image, path, prep) for sha, path in images[:limit]
        }
        self._order = list(self._futures)
        self._stop = threading.Event()
        self._features: dict[str, NDArray[np.float32]] = {}
        self._features_key: str | None = None
        self._thread: threading.Thread | None = None
        if onnx is not None and self._order:
            self._thread = threading.Thread(
                target=self._extract, args=(onnx,), name="a2m-early-onnx", daemon=False
            )
            self._thread.start()

    def __len__(self) -> int:
        return len(self._futures)

    def take(self, sha256: str, prep: Preprocessing) -> Future[NDArray[Any]] | None:
        """The decode of `sha256` (its result raises InvalidImage when it cannot be decoded)."""
        if prep != self.prep:
            return None
        return self._futures.pop(sha256, None)

    def _extract(self, guess: OnnxGuess) -> None:
        """Features of the decoded images through the trunk's ONNX copy, a batch at a time,
        until done or stopped. Any failure only leaves the work to the run."""
        try:
            memo = digest_memo(guess.cache_dir)
            source = resolve_weights(guess.backbone, guess.weights, guess.seed, memo)
            name = onnx_runtime.file_name(guess.backbone, source.identity, self.prep.crop)
            data = read_verified(guess.cache_dir / "trunks" / name)
            if data is None or self._stop.is_set():
                return
            session = onnx_runtime.open_session(data, onnx_runtime.cpu_threads())
            if session is None:
                return
            key = model_key(guess.backbone, source.identity, self.prep, bf16=False)
            for start in range(0, len(self._order), EARLY_BATCH):
                if self._stop.is_set():
                    return
                shas, arrays = [], []
                for sha in self._order[start : start + EARLY_BATCH]:
                    future = self._futures.get(sha)
                    if future is None:
                        continue
                    try:
                        arrays.append(future.result())
                    except Exception:  # not an image: the run reports it, by its own decode
                        continue
                    shas.append(sha)
                if not arrays:
                    continue
                out = onnx_runtime.run(session, onnx_runtime.to_input(np.stack(arrays), self.prep))
                self._features.update(zip(shas, out, strict=True))
            self._features_key = key
        except Exception:
            return

    def features(
        self, key: str, prep: Preprocessing, on_progress: Callable[[int], None] | None = None
    ) -> dict[str, NDArray[np.float32]]:
        """The early features (clean view) once the early extraction is done, if they are the
        ones of model `key`; {} otherwise. `on_progress` hears how many are done while it waits.
        The decodes of the images returned are dropped."""
        if self._thread is None or prep != self.prep:
            return {}
        reported = 0
        while self._thread.is_alive():
            self._thread.join(timeout=0.1)
            if on_progress is not None and len(self._features) > reported:
                on_progress(len(self._features) - reported)
                reported = len(self._features)
        if self._features_key != key:
            return {}
        if on_progress is not None and len(self._features) > reported:
            on_progress(len(self._features) - reported)
        for sha in self._features:
            self._futures.pop(sha, None)
        return dict(self._features)

    def close(self) -> None:
        self._stop.set()
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        if self._thread is not None:
            self._thread.join()  # within one batch of the stop
        self._pool.shutdown(wait=True, cancel_futures=True)


def start_early_decode(
    store: Store, config: RunConfig, version_ref: int | str | None
) -> EarlyDecode | None:
    """Start decoding the version's images that have no cached features (probes only)."""
    if config.mode != "probe":
        return None
    try:
        with store.read() as session:
            version = store_versions.get_version(session, version_ref)
            items = store_versions.version_items(session, version.number)
    except A2MError:
        return None  # the run itself reports it
    shas: list[str] = []
    seen: set[str] = set()
    for split in SPLITS:
        for item in items:
            if item.split == split and item.image_sha256 not in seen:
                seen.add(item.image_sha256)
                shas.append(item.image_sha256)
    cached = _cached_shas(store.settings.workspace.cache_dir / "embeddings" / "embeddings.sqlite")
    new = [sha for sha in shas if sha not in cached]
    if not new:
        return None
    prep = Preprocessing(config.resize_size, config.image_size)
    # Early features only where the run will take them: on the CPU in fp32, told without torch
    # as the run itself tells it (lite.py; imported here, as lite imports this module).
    from annotate2model.training.lite import cpu_certain, fp32_certain

    onnx = None
    cpu_fp32 = cpu_certain(store.settings.device) and fp32_certain(config.precision)
    if cpu_fp32 and onnx_runtime.available():
        cache_dir = store.settings.workspace.cache_dir / "embeddings"
        onnx = OnnxGuess(cache_dir, config.backbone, config.weights, config.seed)
    return EarlyDecode([(sha, store.blobs.path(sha)) for sha in new], prep, onnx=onnx)


def _cached_shas(path: Path) -> set[str]:
    """Images with any cached clean-view vector (read-only; an unreadable cache means none)."""
    if not path.is_file():
        return set()
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        ) as conn:
            rows = conn.execute("SELECT DISTINCT image_sha256 FROM vectors WHERE view = 0")
            return {row[0] for row in rows}
    except sqlite3.Error:
        return set()
