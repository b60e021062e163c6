"""Writing files so that a crash or kill -9 never leaves a partial one under the final name."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import socket
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from annotate2model.processes import running, start_time

# Temp files are named `.tmp-p<pid>.<start>.<where>-<name>-<random>.part` beside their target:
# the writer's pid, its start time (hundredths of a second since the epoch, 0 where unknown; an
# older a2m wrote `w` and clock ticks, whose writer is not told) and a tag of the
# machine boot and pid namespace its pid means something in. A clean-up finds the ones a killed
# writer left behind, and removes those whose writer is dead at once (`temp_writer_alive`).
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".part"
_TEMP_WRITER = re.compile(r"\.tmp-p(\d{1,10})\.(\d{1,20})\.([0-9a-f]{8})-")

# The workspace's private folders and files: its owner only (secrets, images, the store).
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# The permission bits that let anyone other than the owner in.
_OTHERS = stat.S_IRWXG | stat.S_IRWXO


@functools.cache
def _where() -> str:
    """Names the pid namespace of this machine's current boot (the same in a forked child)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
        place = f"{boot}:{namespace}"
    except OSError:
        place = f"host:{socket.gethostname()}"
    return hashlib.sha256(place.encode()).hexdigest()[:8]


def _writer_tag() -> str:
    pid = os.getpid()
    return f"p{pid}.{round((start_time(pid) or 0) * 100)}.{_where()}"


def temp_writer_alive(name: str) -> bool | None:
    """Whether the process that named a temp file `name` still runs: False when it is dead for
    certain (its temp file can go at once), None when this cannot be told here (an older name, a
    writer on another machine or in another pid namespace)."""
    match = _TEMP_WRITER.match(name)
    if match is None or match.group(3) != _where():
        return None
    pid, started = int(match.group(1)), int(match.group(2))
    # No start time known (0): a living pid may be the writer.
    return running(pid, started / 100 if started else None)


def make_private(paths: Iterable[Path]) -> list[Path]:
    """Take group and other permissions off those of `paths` that exist (folders then stay 0700,
    files 0600 at most); returns the ones changed. One that cannot be changed (another owner, a
    read-only disk) is left as it is: `exposed` still names it."""
    changed = []
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & _OTHERS:
                os.chmod(path, mode & ~_OTHERS)
                changed.append(path)
        except OSError:
            continue
    return changed


def exposed(paths: Iterable[Path]) -> list[Path]:
    """Those of `paths` that exist and let group or others in."""
    found = []
    for path in paths:
        with contextlib.suppress(OSError):
            if path.stat().st_mode & _OTHERS:
                found.append(path)
    return found


def private_dir(path: Path) -> Path:
    """Make a folder (and missing parents) for the owner only; an existing one is left as it is."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, write: Callable[[Path], None], mode: int | None = None) -> None:
    """Have `write` fill a temp file beside `path`, make it durable, then rename it into place.

    Readers see the old file or the new one, never a part. The temp file is created with mode
    0600 (right for secrets); `mode` sets another before any byte is written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f"{TEMP_PREFIX}{_writer_tag()}-{path.name}-", suffix=TEMP_SUFFIX
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
