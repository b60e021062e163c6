"""Content-addressed image bytes: blobs/<ab>/<sha256>, written atomically, read verified."""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path

from annotate2model.errors import BlobCorrupted, NotFoundError, StoreError
from annotate2model.fsutil import (
    PRIVATE_FILE_MODE,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    atomic_write_bytes,
    private_dir,
    temp_writer_alive,
)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store bytes under their SHA-256 (temp file, fsync, rename); returns the hash.

        Writing the same bytes twice is a no-op. A crash leaves either no file or the whole file,
        never a partial one under the final name. Folders and files are the owner's only.
        """
        digest = sha256 or sha256_bytes(data)
        target = self.path(digest)
        with contextlib.suppress(FileNotFoundError):  # (removed meanwhile: written below)
            if target.stat().st_size == len(data):
                return digest
        try:
            private_dir(self.root)
            private_dir(target.parent)
            atomic_write_bytes(target, data, mode=PRIVATE_FILE_MODE)
        except OSError as exc:
            raise StoreError(f"cannot write blob {digest[:12]}: {exc.strerror}") from None
        return digest

    def read(self, sha256: str, verify: bool = True) -> bytes:
        """The bytes of a blob; with `verify`, a clear error if they no longer match their name."""
        try:
            data = self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"image {sha256[:12]} is missing from {self.root}") from None
        if verify and sha256_bytes(data) != sha256:
            raise BlobCorrupted(
                f"image {sha256[:12]} in {self.root} is corrupted (its bytes no longer match "
                "their SHA-256)"
            )
        return data

    def remove_partials(self, older_than_s: float = 3600.0) -> int:
        """Delete temp files a killed writer left behind; returns how many were removed.

        A temp file names its writer (fsutil's temp names): one whose writer is dead goes at
        once. One whose writer lives, or cannot be told (an older name, a writer on another
        machine sharing the folder), goes only once older than `older_than_s`, so a writer still
        at work is never disturbed.
        """
        if not self.root.is_dir():
            return 0
        removed = 0
        cutoff = time.time() - older_than_s
        for partial in self.root.glob(f"*/{TEMP_PREFIX}*{TEMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if temp_writer_alive(partial.name) is False or partial.stat().st_mtime < cutoff:
                    partial.unlink()
                    removed += 1
        return removed
