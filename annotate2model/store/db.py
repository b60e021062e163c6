"""Opening the store: migrations on open, read and write sessions.

What differs between SQLite and PostgreSQL (engine set-up, locks) is in `store/dialect.py`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

import annotate2model
from annotate2model.errors import StoreError
from annotate2model.fsutil import PRIVATE_FILE_MODE
from annotate2model.settings import Settings
from annotate2model.store.blobs import BlobStore
from annotate2model.store.dialect import (
    make_engine,
    migration_lock,
    redacted_url,
    take_write_lock,
    writer_engine,
)

if TYPE_CHECKING:
    from alembic.config import Config

# The schema revision this code works with. Checking it needs no Alembic import (a quarter of a
# second at every start); tests/test_store_schema.py asserts it is the migrations' single head.
SCHEMA_HEAD = "0005"


def migrations_dir() -> Path:
    """Where the Alembic scripts are: inside the installed wheel, or beside a source checkout."""
    package = Path(annotate2model.__file__).resolve().parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise StoreError("the store's migration scripts are missing from this installation.")


def alembic_config(engine: Engine | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["engine"] = engine
    return config


def create_private_sqlite(url: str) -> None:
    """Create a SQLite store's file for its owner only (0600) before SQLite does (0644 less the
    umask): SQLite gives its -wal and -shm files the database file's mode. An existing file, an
    in-memory database or another database is left alone."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return
    if parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return
    with contextlib.suppress(OSError):  # exists already, or SQLite says why it cannot open it
        os.close(os.open(parsed.database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))


class Store:
    """A migrated database and the workspace's blob store."""

    def __init__(self, engine: Engine, blobs: BlobStore, settings: Settings) -> None:
        self.engine = engine
        self.blobs = blobs
        self.settings = settings
        self._writer = writer_engine(engine)

    @classmethod
    def open(cls, settings: Settings, migrate: bool = True) -> Store:
        """Open the store, applying pending migrations (under a cross-process lock)."""
        ws = settings.workspace
        create_private_sqlite(settings.database_url)
        try:
            engine = make_engine(settings.database_url)
        except ImportError as exc:
            raise StoreError(
                f"cannot use database URL {redacted_url(settings.database_url)}: {exc}",
                hint="a PostgreSQL store needs psycopg: pip install 'annotate2model[postgres]'.",
            ) from None
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot use database URL {redacted_url(settings.database_url)}: {exc}"
            ) from None
        store = cls(engine, BlobStore(ws.blobs_dir), settings)
        try:
            current = store.current_revision()
            if current != SCHEMA_HEAD:
                if not migrate:
                    raise StoreError(
                        f"the store's schema is at {current or 'nothing'}, this annotate2model "
                        f"needs {SCHEMA_HEAD}.",
                        hint="run `a2m init` (or any other command) to migrate it.",
                    )
                with migration_lock(engine, ws.lock_path):
                    store._migrate()
        except DBAPIError as exc:
            store.close()
            raise StoreError(
                f"cannot open the store ({redacted_url(settings.database_url)}): {exc.orig}"
            ) from None
        store.blobs.remove_partials()
        return store

    def current_revision(self) -> str | None:
        """The schema revision recorded in the database; None for a blank one."""
        with self.engine.connect() as conn:
            if not conn.dialect.has_table(conn, "alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    def _migrate(self) -> None:
        """Upgrade to SCHEMA_HEAD; refuse a database written by a newer annotate2model."""
        from alembic import command
        from alembic.script import ScriptDirectory
        from alembic.util.exc import CommandError

        current = self.current_revision()
        if current == SCHEMA_HEAD:
            return  # another process migrated while we waited for the lock
        config = alembic_config(self.engine)
        try:
            if current is not None:
                ScriptDirectory.from_config(config).get_revision(current)
        except CommandError:
            raise StoreError(
                f"the store's schema is at {current}, which this annotate2model does not know; "
                "it was written by a newer version: upgrade annotate2model."
            ) from None
        command.upgrade(config, SCHEMA_HEAD)

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading; never blocks a writer and is never blocked (WAL)."""
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A session that is the only writer (dialect.py's write lock: on SQLite from its first
        statement, on PostgreSQL from the start); commits on success, rolls back on any exception.
        """
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            take_write_lock(session)
            yield session

    def close(self) -> None:
        self.engine.dispose()
