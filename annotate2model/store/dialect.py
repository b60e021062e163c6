"""What differs between the store's two databases, SQLite and PostgreSQL, and nothing else.

- the engine: SQLite gets WAL, foreign keys, a busy timeout and explicit BEGIN modes;
- insert-or-ignore (`INSERT ... ON CONFLICT DO NOTHING` in both, built by each dialect);
- bulk appends of many rows: SQLite's executemany on the driver's connection, PostgreSQL's COPY;
- the write lock: one writer at a time. SQLite takes it with `BEGIN IMMEDIATE`; PostgreSQL with a
  transaction-level advisory lock, released at commit or rollback;
- the migration lock: one process migrates. SQLite uses a file lock beside the store; PostgreSQL a
  session-level advisory lock on a connection held while migrating.

Everything else in store/ calls these and stays dialect-neutral, so PostgreSQL is a URL.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    create_engine,
    event,
    func,
    insert,
    make_url,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.sql import Executable
from sqlalchemy.sql.dml import Insert

from annotate2model.errors import StoreError
from annotate2model.workspace import file_lock

SUPPORTED = ("sqlite", "postgresql")

# How long a writer waits for another writer before giving up (SQLite busy timeout).
BUSY_TIMEOUT_MS = 60_000

# Rows per executemany where bulk_insert has no faster way than SQLAlchemy's.
BULK_BATCH = 10_000

# PostgreSQL advisory lock keys (any 64-bit numbers other software on the server is unlikely to
# use): "a2m" + "wr" / "mg" in ASCII.
WRITE_LOCK_KEY = 0x61326D_7772
MIGRATION_LOCK_KEY = 0x61326D_6D67
# A training's liveness lock is the two-key advisory lock (LIVENESS_SPACE, run id), ASCII "a2".
LIVENESS_SPACE = 0x6132


def redacted_url(url: str) -> str:
    """A database URL fit to print: its password, if any, shown as ***."""
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url.split(":", 1)[0] + ":..."


def make_engine(url: str) -> Engine:
    """An engine for a supported database; SQLite set up for several processes at once."""
    name = make_url(url).get_backend_name()
    if name not in SUPPORTED:
        raise StoreError(
            f"the store can be SQLite or PostgreSQL; {name!r} (from the database URL) is neither."
        )
    if name == "postgresql":
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


def writer_engine(engine: Engine) -> Engine:
    """The engine write sessions use: on SQLite its transactions begin IMMEDIATE."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(sqlite_begin="IMMEDIATE")
    return engine


def write_lock_statement(name: str) -> Executable | None:
    """The statement that takes the write lock inside a transaction; None where BEGIN took it."""
    if name == "postgresql":
        # Released by PostgreSQL itself at commit or rollback (or when the connection dies).
        return select(func.pg_advisory_xact_lock(WRITE_LOCK_KEY))
    return None


def migration_lock_statements() -> tuple[Executable, Executable]:
    """PostgreSQL: take and release the migration lock (session-level, on one connection)."""
    return (
        select(func.pg_advisory_lock(MIGRATION_LOCK_KEY)),
        select(func.pg_advisory_unlock(MIGRATION_LOCK_KEY)),
    )


def take_write_lock(session: Session) -> None:
    """Make `session`'s transaction the only writer until it ends (call it before any read)."""
    statement = write_lock_statement(session.get_bind().dialect.name)
    if statement is not None:
        session.execute(statement)


def insert_ignore(name: str, model: type[DeclarativeBase]) -> Insert:
    """INSERT that skips rows whose primary or unique key is already present."""
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(model).on_conflict_do_nothing()
    if name == "postgresql":
        # Imported only here: SQLite users do not pay for loading the PostgreSQL dialect.
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model).on_conflict_do_nothing()
    raise StoreError(f"the store cannot insert-or-ignore on a {name!r} database.")


def insert_or_ignore(
    session: Session, model: type[DeclarativeBase], rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert `rows`, leaving alone those whose key another writer (or an earlier run) stored."""
    if rows:
        session.execute(insert_ignore(session.get_bind().dialect.name, model), list(rows))


def bulk_insert(
    session: Session,
    model: type[DeclarativeBase],
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    same: Mapping[str, int] | None = None,
) -> None:
    """Append `rows` (each one value per name in `columns`) to `model`'s table in `session`'s
    transaction, with the integer columns in `same` set to one value in every row.

    For many rows of plain values, ints and strings, that the driver takes as they are: they skip
    SQLAlchemy's per-row parameter handling and type processing, which for a million rows costs
    more than the database's own work. SQLite: executemany on the driver's cursor, the `same`
    values written into the statement (ints, so nothing to quote). PostgreSQL with psycopg: COPY
    ... FROM STDIN. Any other driver: SQLAlchemy's executemany in batches.
    """
    table = model.__table__
    assert isinstance(table, Table)
    fixed = {name: int(value) for name, value in (same or {}).items()}
    conn = session.connection()
    quote = conn.dialect.identifier_preparer
    names = [*fixed, *columns]
    target = f"{quote.format_table(table)} ({', '.join(quote.quote(c) for c in names)})"
    name, driver = conn.dialect.name, conn.dialect.driver
    if name == "sqlite" and driver == "pysqlite":
        values = ", ".join([*map(str, fixed.values()), *("?" * len(columns))])
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        cursor = raw.cursor()
        try:
            cursor.executemany(f"INSERT INTO {target} VALUES ({values})", rows)
        finally:
            cursor.close()
        return
    prefix = tuple(fixed.values())
    if name == "postgresql" and driver == "psycopg":
        with (
            conn.connection.driver_connection.cursor() as cursor,  # type: ignore[union-attr]
            cursor.copy(f"COPY {target} FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row((*prefix, *row))
        return
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(dict(zip(names, (*prefix, *row), strict=True)))
        if len(batch) == BULK_BATCH:
            conn.execute(insert(table), batch)
            batch = []
    if batch:
        conn.execute(insert(table), batch)


@contextlib.contextmanager
def migration_lock(engine: Engine, lock_path: Path) -> Iterator[None]:
    """Held while one process migrates; the others wait, then find the work done.

    SQLite: an exclusive file lock at `lock_path` (the kernel drops it if the holder dies).
    PostgreSQL: a session-level advisory lock, dropped with the connection if the holder dies.
    """
    if engine.dialect.name != "postgresql":
        with file_lock(lock_path):
            yield
        return
    lock, unlock = migration_lock_statements()
    with engine.connect() as conn:
        conn.execute(lock)
        conn.commit()
        try:
            yield
        finally:
            conn.execute(unlock)
            conn.commit()


# Liveness: on PostgreSQL (a store several machines share), a training holds an advisory lock
# per run on a connection of its own for as long as it lives; the server drops it with the
# connection when the process dies, on whatever machine. SQLite judges by pid and host instead.


def has_liveness_locks(session: Session) -> bool:
    return bool(session.get_bind().dialect.name == "postgresql")


def hold_liveness_lock(session: Session, key: int) -> Connection | None:
    """Take lock `key` on a new connection of `session`'s engine; None where there are none."""
    if not has_liveness_locks(session):
        return None
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    conn = engine.connect()
    conn.execute(select(func.pg_advisory_lock(LIVENESS_SPACE, key)))
    conn.commit()
    return conn


def release_liveness_lock(conn: Connection | None, key: int) -> None:
    if conn is None:
        return
    try:
        conn.execute(select(func.pg_advisory_unlock(LIVENESS_SPACE, key)))
        conn.commit()
    finally:
        # A pooled connection would keep a session lock: this one is closed for good.
        conn.invalidate()
        conn.close()


def liveness_lock_free(session: Session, key: int) -> bool:
    """Whether no session holds lock `key` (then the process that took it is gone)."""
    if not session.execute(select(func.pg_try_advisory_lock(LIVENESS_SPACE, key))).scalar():
        return False
    session.execute(select(func.pg_advisory_unlock(LIVENESS_SPACE, key)))
    return True


def restart_id_sequences(conn: Connection, tables: Sequence[Table]) -> None:
    """After rows were copied in with their ids: each table's id sequence (PostgreSQL) starts
    after the highest id. SQLite needs nothing: its next id is always max + 1."""
    if conn.dialect.name != "postgresql":
        return
    for table in tables:
        keys = list(table.primary_key.columns)
        if len(keys) == 1 and keys[0].autoincrement is True:
            pk = keys[0].name
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{pk}'), "
                    f"COALESCE((SELECT MAX({pk}) FROM {table.name}), 0) + 1, false)"
                )
            )
