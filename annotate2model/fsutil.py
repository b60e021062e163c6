"""Writing files so that a crash or kill -9 never leaves a partial one under the final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# Temp files are named `.tmp-<name>-<random>.part` beside their target, so a clean-up can find
# the ones a killed writer left behind.
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".part"


def atomic_write(path: Path, write: Callable[[Path], None], mode: int | None = None) -> None:
    """Have `write` fill a temp file beside `path`, make it durable, then rename it into place.

    Readers see the old file or the new one, never a part. The temp file is created with mode
    0600 (right for secrets); `mode` sets another before any byte is written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}-", suffix=TEMP_SUFFIX
    )
    tmp = Path(tmp_name)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        os.close(fd)
        write(tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_write(path, write, mode)


# A file's SHA-256 lives beside it (`NAME.sha256`), written after the file: a reader that finds
# both, matching, has the whole file as it was written.


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_with_digest(path: Path, data: bytes) -> None:
    """Write `data` atomically, then its SHA-256 beside it."""
    atomic_write_bytes(path, data)
    atomic_write_bytes(_digest_path(path), hashlib.sha256(data).hexdigest().encode())


def read_verified(path: Path) -> bytes | None:
    """The bytes `write_with_digest` wrote; None when the file or its digest is missing, partial
    or corrupt."""
    try:
        expected = _digest_path(path).read_text(encoding="ascii").strip()
        data = path.read_bytes()
    except (OSError, UnicodeDecodeError):
        return None
    return data if hashlib.sha256(data).hexdigest() == expected else None


def _signature(path: Path) -> list[int]:
    st = path.stat()
    # Any write to the file moves its change time, which no tool can set back (unlike mtime).
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_sha256(path: Path, memo: Path | None = None) -> str:
    """The SHA-256 of a file's content.

    With `memo` (a folder), an unchanged file is read once, not at every run: its digest is kept
    there with the file's signature (device, inode, size, modification and change times), and
    used again only while the signature is the same. A memo that cannot be read or written
    only costs the hashing.
    """
    entry = None
    if memo is not None:
        resolved = str(path.resolve())
        name = hashlib.sha256(resolved.encode()).hexdigest()[:32]
        entry = memo / f"{name}.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            known = json.loads(entry.read_text(encoding="utf-8"))
            if known["path"] == resolved and known["signature"] == _signature(path):
                return str(known["sha256"])
    before = _signature(path) if entry is not None else None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    if entry is not None and before == _signature(path):  # not written to while being read
        record = {"path": resolved, "signature": before, "sha256": hexdigest}
        with contextlib.suppress(OSError):
            atomic_write_bytes(entry, json.dumps(record).encode(), mode=0o644)
    return hexdigest
