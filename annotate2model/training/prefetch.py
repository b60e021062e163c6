"""Decoding a probe's new images while torch is still being imported.

`import torch` keeps one core busy for a second or more; on a grown version the images that have
no cached features yet can be decoded on another core meanwhile. Nothing here imports torch: the
CLI starts this first, then imports the runner, which takes the decoded images over (`extract`
looks them up by image SHA-256). Which images are new is a guess made without torch: those with
no cached vector under any model. A wrong guess costs some decoding, never a wrong feature.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from annotate2model.errors import A2MError
from annotate2model.store import Store
from annotate2model.store import versions as store_versions
from annotate2model.training.config import SPLITS, RunConfig
from annotate2model.training.images import Preprocessing, load_image

# Decoded pixels allowed to wait for the network.
EARLY_BYTES = 128 << 20


class EarlyDecode:
    """Clean (view 0) decodes of some images, started at once on `workers` threads."""

    def __init__(
        self, images: Sequence[tuple[str, Path]], prep: Preprocessing, workers: int = 1
    ) -> None:
        self.prep = prep
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers))
        limit = max(1, EARLY_BYTES // (prep.crop * prep.crop * 3))
        self._futures: dict[str, Future[NDArray[Any]]] = {
            sha: self._pool.submit(load_image, path, prep) for sha, path in images[:limit]
        }

    def __len__(self) -> int:
        return len(self._futures)

    def take(self, sha256: str, prep: Preprocessing) -> Future[NDArray[Any]] | None:
        """The decode of `sha256` (its result raises InvalidImage when it cannot be decoded)."""
        if prep != self.prep:
            return None
        return self._futures.pop(sha256, None)

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
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
    return EarlyDecode([(sha, store.blobs.path(sha)) for sha in new], prep)


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
