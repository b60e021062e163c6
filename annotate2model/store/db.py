"""Opening the store: engine set-up (SQLite pragmas), migrations on open, sessions."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

import annotate2model
from annotate2model.errors import StoreError
from annotate2model.settings import Settings
from annotate2model.store.blobs import BlobStore
from annotate2model.workspace import file_lock

if TYPE_CHECKING:
    from alembic.config import Config

# How long a writer waits for another writer before giving up (SQLite busy timeout).
BUSY_TIMEOUT_MS = 60_000

# The schema revision this code works with. Checking it needs no Alembic import (a quarter of a
# second at every start); tests/test_store_schema.py asserts it is the migrations' single head.
SCHEMA_HEAD = "0001"


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


def head_revision() -> str:
    """The single head of the migration scripts (reads them; SCHEMA_HEAD is the cheap answer)."""
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise StoreError(f"the migrations have {len(heads)} heads; expected exactly one.")
    return heads[0]


def make_engine(url: str) -> Engine:
    """An engine; for SQLite with WAL, foreign keys, a busy timeout and explicit BEGIN modes."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below instead of pysqlite.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer takes the write lock up front (BEGIN IMMEDIATE) so it waits on the busy timeout
        # instead of failing with "database is locked" when upgrading a read transaction.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class Store:
    """A migrated database and the workspace's blob store."""

    def __init__(self, engine: Engine, blobs: BlobStore, settings: Settings) -> None:
        self.engine = engine
        self.blobs = blobs
        self.settings = settings
        self._writer = engine.execution_options(sqlite_begin="IMMEDIATE")

    @classmethod
    def open(cls, settings: Settings, migrate: bool = True) -> Store:
        """Open the store, applying pending migrations (under a cross-process lock)."""
        ws = settings.workspace
        try:
            engine = make_engine(settings.database_url)
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(f"cannot use database URL: {exc}") from None
        store = cls(engine, BlobStore(ws.blobs_dir), settings)
        try:
            current = store.current_revision()
            if current != SCHEMA_HEAD:
                if not migrate:
                    raise StoreError(
                        f"the store's schema is at {current or 'nothing'}, this a2m needs "
                        f"{SCHEMA_HEAD}; run `a2m init` (or any command) to migrate it."
                    )
                with file_lock(ws.lock_path):
                    store._migrate()
        except DBAPIError as exc:
            store.close()
            raise StoreError(
                f"cannot open the store ({settings.database_url}): {exc.orig}"
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
        """A session holding the write lock; commits on success, rolls back on any exception."""
        with Session(self._writer, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()
