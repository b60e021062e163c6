"""Concurrent writers of the same blob and of the same embedding-cache entry (docs/team.md): four
processes started together, each writing the same content many times; every one succeeds and
what is left is whole."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from annotate2model.store.blobs import BlobStore
from annotate2model.training.features.embeddings import EmbeddingCache

pytestmark = pytest.mark.slow

WRITERS = 4

BLOB_WRITER = """
import sys
from pathlib import Path
from annotate2model.store.blobs import BlobStore
store = BlobStore(Path(sys.argv[1]))
data = bytes(range(256)) * 4096  # 1 MiB: long enough for the writes to overlap
for _ in range(40):
    store.put(data)
    # Gone again, so that the next put writes it anew while the other writers do too.
    store.path(store.put(data)).unlink(missing_ok=True)
store.put(data)
"""

CACHE_WRITER = """
import sys
from pathlib import Path
import numpy as np
from annotate2model.training.features.embeddings import EmbeddingCache
cache = EmbeddingCache(Path(sys.argv[1]))
rows = [(f"{i:064x}", 0, np.full(512, i, dtype=np.float32)) for i in range(300)]
for _ in range(20):
    cache.put("resnet18/abc", "resnet18 on test weights", rows)
cache.close()
"""


def _together(code: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(WRITERS)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


def test_writers_of_the_same_blob_all_succeed_and_leave_it_whole(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    _together(BLOB_WRITER, str(root))
    data = bytes(range(256)) * 4096
    digest = hashlib.sha256(data).hexdigest()
    store = BlobStore(root)
    assert store.read(digest) == data
    # Only the blob is left: no writer's temporary file.
    assert [p.name for p in root.rglob("*") if p.is_file()] == [digest]


def test_writers_of_the_same_cache_entry_all_succeed_and_agree(tmp_path: Path) -> None:
    _together(CACHE_WRITER, str(tmp_path / "cache"))
    cache = EmbeddingCache(tmp_path / "cache")
    try:
        assert cache.count("resnet18/abc") == 300
        got = cache.get("resnet18/abc", [f"{i:064x}" for i in range(300)])
        assert all(
            np.array_equal(got[f"{i:064x}"], np.full(512, i, np.float32)) for i in range(300)
        )
    finally:
        cache.close()
