"""The workspace: a folder holding `a2m.toml` and `.a2m/` (store.db, blobs/, runs/, cache/).

Finding, creating and editing a workspace's files lives here; the store inside it lives in `store/`.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

from annotate2model.errors import WorkspaceError
from annotate2model.fsutil import (
    PRIVATE_FILE_MODE,
    atomic_write_bytes,
    exposed,
    make_private,
    private_dir,
)

CONFIG_NAME = "a2m.toml"
DATA_DIR_NAME = ".a2m"

DEFAULT_CONFIG = """\
# annotate2model workspace settings. Flags and A2M_* environment variables override these.

[store]
# SQLAlchemy URL of the dataset store; empty means SQLite at .a2m/store.db.
# A team can point this at PostgreSQL, e.g. "postgresql+psycopg://user@host/a2m".
database_url = ""

[split]
# Fractions of images in each split. A split is derived from the image's SHA-256, so an image
# keeps its split as the data set grows (as long as these fractions stay the same).
train = 0.8
val = 0.1
test = 0.1

[images]
# Images with more pixels than this are refused (decompression-bomb guard).
max_pixels = 178956970
"""


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace. Creating the object touches nothing on disk."""

    root: Path
    # What opening it (`find_workspace`, `init_workspace`) found open to other users and made
    # private; not part of its identity.
    repaired: tuple[Path, ...] = field(default=(), compare=False, repr=False)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def data_dir(self) -> Path:
        return self.root / DATA_DIR_NAME

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store.db"

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def reports_dir(self) -> Path:
        """Comparison pages, their plots and learning-curve plots."""
        return self.data_dir / "reports"

    @property
    def secrets_path(self) -> Path:
        return self.data_dir / "secrets.toml"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "store.lock"

    @property
    def labelstudio_dir(self) -> Path:
        """The local Label Studio of `a2m studio up`: its database (with every user's token) is
        in data/."""
        return self.data_dir / "labelstudio"

    def private_paths(self) -> list[Path]:
        """The folders and files only the workspace's owner may open: the store, the images, the
        secrets, the local Label Studio's database. Folders first: a private folder keeps others
        out of everything below it, so the many files inside (blobs, runs, uploads) need no
        visit of their own."""
        studio = self.labelstudio_dir
        studio_data = studio / "data"
        folders = [
            self.data_dir,
            self.blobs_dir,
            self.runs_dir,
            self.cache_dir,
            self.reports_dir,
            studio,
            studio_data,
            studio / "home",
        ]
        sqlite_files = [
            path.with_name(path.name + suffix)
            for path in (self.store_path, studio_data / "label_studio.sqlite3")
            for suffix in ("", "-wal", "-shm", "-journal")
        ]
        files = [
            self.secrets_path,
            self.lock_path,
            studio_data / ".env",
            studio / "server.log",
            studio / "server.json",
        ]
        return folders + sqlite_files + files

    def make_private(self) -> list[Path]:
        """Take group and other permissions off `private_paths`; returns what was changed. A few
        dozen system calls: cheap enough for every command."""
        return make_private(self.private_paths())

    def exposed(self) -> list[Path]:
        """Those of `private_paths` that group or other users may open (or list)."""
        return exposed(self.private_paths())

    def exists(self) -> bool:
        return self.config_path.is_file() and self.data_dir.is_dir()

    def read_config(self) -> dict[str, Any]:
        """The parsed a2m.toml; a clear error when it is not valid TOML."""
        try:
            with self.config_path.open("rb") as f:
                return tomllib.load(f)
        except FileNotFoundError:
            raise WorkspaceError(
                f"{self.config_path} is missing.", hint=f"run `a2m init {self.root}`."
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise WorkspaceError(f"{self.config_path} is not valid TOML: {exc}.") from None
        except OSError as exc:
            raise WorkspaceError(f"cannot read {self.config_path}: {exc.strerror}.") from None

    def update_config(self, section: str, values: dict[str, Any]) -> None:
        """Set (or with None remove) keys of one [section] in a2m.toml; comments, key order and
        blank lines elsewhere in the file stay as the person (or `a2m init`) wrote them."""
        self.read_config()  # the file's own errors (missing, not TOML) in their clear words
        original = self.config_path.read_text(encoding="utf-8")
        document = tomlkit.parse(original)
        table = document.get(section)
        if table is None:
            if all(value is None for value in values.values()):
                return
            table = tomlkit.table()
            if original.strip() and not original.endswith("\n\n"):
                document.add(tomlkit.nl())
            document.add(section, table)
        for key, value in values.items():
            if value is None:
                if key in table:
                    del table[key]
            else:
                table[key] = value
        text = tomlkit.dumps(document)
        atomic_write_bytes(self.config_path, text.encode(), mode=0o644)

    def read_secrets(self) -> dict[str, str]:
        """Secrets kept beside the store (never in it): an API token, for instance."""
        try:
            with self.secrets_path.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise WorkspaceError(f"cannot read {self.secrets_path}: {exc}.") from None
        return {str(k): str(v) for k, v in data.items()}

    def write_secret(self, key: str, value: str | None) -> None:
        """Set (or with None remove) one secret; the file is created with mode 0600."""
        secrets = self.read_secrets()
        if value is None:
            secrets.pop(key, None)
        else:
            secrets[key] = value
        atomic_write_bytes(self.secrets_path, tomlkit.dumps(secrets).encode(), mode=0o600)


def init_workspace(root: Path) -> tuple[Workspace, bool]:
    """Create (or complete) a workspace at `root`; returns it and whether anything was created.

    `.a2m/` and its folders are made for the owner only (0700), and an existing workspace's
    private paths are made so."""
    ws = Workspace(root.resolve())
    created = False
    try:
        ws.root.mkdir(parents=True, exist_ok=True)
        if not ws.config_path.exists():
            atomic_write_bytes(ws.config_path, DEFAULT_CONFIG.encode(), mode=0o644)
            created = True
        for folder in (ws.data_dir, ws.blobs_dir, ws.runs_dir, ws.cache_dir):
            if not folder.is_dir():
                private_dir(folder)
                created = True
    except OSError as exc:
        raise WorkspaceError(f"cannot create a workspace at {root}: {exc.strerror}.") from None
    return opened(ws), created


def opened(ws: Workspace) -> Workspace:
    """`ws` with its private paths made private (see `Workspace.repaired`)."""
    repaired = ws.make_private()
    return Workspace(ws.root, repaired=tuple(repaired)) if repaired else ws


def find_workspace(explicit: Path | None, home: str | None, cwd: Path) -> Workspace:
    """The workspace named `explicit`, else by `home` (A2M_HOME), else the nearest at or above cwd.

    The hints of its errors name the CLI's `--workspace` flag, which is where `explicit` comes from.
    A workspace whose private paths other users may open is made private on the way.
    """
    if explicit is not None or home:
        root = (explicit if explicit is not None else Path(str(home))).expanduser().resolve()
        ws = Workspace(root)
        if not ws.exists():
            how = "--workspace" if explicit is not None else "A2M_HOME"
            raise WorkspaceError(
                f"{root} is not an annotate2model workspace.",
                hint=f"run `a2m init {root}`, or point {how} at a workspace.",
            )
        return opened(ws)
    here = cwd.resolve()
    for folder in (here, *here.parents):
        ws = Workspace(folder)
        if ws.exists():
            return opened(ws)
    raise WorkspaceError(
        f"no workspace at {here} or above it.",
        hint="run `a2m init` here, or point --workspace or A2M_HOME at one.",
    )


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes; the kernel drops it when the holder dies (kill -9)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
