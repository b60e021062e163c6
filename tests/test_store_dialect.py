"""store/dialect.py: the only place that knows SQLite from PostgreSQL.

PostgreSQL is not run here; its statements are compiled with SQLAlchemy's PostgreSQL dialect so a
typo or a wrong construct fails here, not on a team's server.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import ClauseElement

from annotate2model.errors import StoreError
from annotate2model.store import Store
from annotate2model.store.dialect import (
    MIGRATION_LOCK_KEY,
    WRITE_LOCK_KEY,
    insert_ignore,
    insert_or_ignore,
    make_engine,
    migration_lock_statements,
    write_lock_statement,
)
from annotate2model.store.models import Annotation, Image

STORE_PACKAGE = Path(__file__).resolve().parents[1] / "annotate2model" / "store"


def pg(statement: ClauseElement) -> str:
    return str(statement.compile(dialect=postgresql.dialect()))


def test_postgresql_statements_compile() -> None:
    for model in (Image, Annotation):
        sql = pg(insert_ignore("postgresql", model))
        assert sql.startswith(f"INSERT INTO {model.__tablename__} ")
        assert sql.endswith("ON CONFLICT DO NOTHING")
    write_lock = write_lock_statement("postgresql")
    assert isinstance(write_lock, ClauseElement)
    assert "pg_advisory_xact_lock(" in pg(write_lock)
    lock, unlock = migration_lock_statements()
    assert isinstance(lock, ClauseElement) and isinstance(unlock, ClauseElement)
    assert "pg_advisory_lock(" in pg(lock) and "pg_advisory_unlock(" in pg(unlock)
    # The two locks are different keys: a migration never waits on a writer's lock, or back.
    assert WRITE_LOCK_KEY != MIGRATION_LOCK_KEY
    assert all(0 < key < 2**63 for key in (WRITE_LOCK_KEY, MIGRATION_LOCK_KEY))


def test_sqlite_statements() -> None:
    sql = str(insert_ignore("sqlite", Image).compile(dialect=sqlite.dialect()))
    assert sql.startswith("INSERT INTO images ") and sql.endswith("ON CONFLICT DO NOTHING")
    # SQLite's write lock is BEGIN IMMEDIATE, taken by the writer engine, not by a statement.
    assert write_lock_statement("sqlite") is None


def test_only_sqlite_and_postgresql_are_accepted() -> None:
    with pytest.raises(StoreError, match="SQLite or PostgreSQL"):
        make_engine("mysql://user@localhost/a2m")
    with pytest.raises(StoreError):
        insert_ignore("mysql", Image)


def test_a_write_session_holds_the_write_lock(store: Store) -> None:
    path = store.settings.workspace.store_path
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with store.write() as session:
            # Taken at BEGIN, when the session first touches the database, even to read.
            session.execute(select(Image.sha256)).all()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        with store.read() as session:
            session.execute(select(Image.sha256)).all()
            other.execute("BEGIN IMMEDIATE")  # a reader never holds the write lock
            other.execute("ROLLBACK")
    finally:
        other.close()


def test_insert_or_ignore_keeps_the_first_row(store: Store) -> None:
    now = datetime.now(UTC)

    def row(fmt: str) -> dict[str, object]:
        return {
            "sha256": "ab" * 32,
            "format": fmt,
            "width": 1,
            "height": 1,
            "mode": "RGB",
            "size_bytes": 1,
            "origin": None,
            "created_at": now,
        }

    with store.write() as session:
        insert_or_ignore(session, Image, [row("PNG")])
    with store.write() as session:
        insert_or_ignore(session, Image, [row("JPEG")])
        insert_or_ignore(session, Image, [])
    with store.read() as session:
        assert session.scalars(select(Image.format)).all() == ["PNG"]


def test_no_dialect_specific_code_outside_dialect_module() -> None:
    """Insert-or-ignore, locks and dialect imports live in store/dialect.py alone."""
    pattern = re.compile(
        r"sqlalchemy\.dialects|on_conflict|BEGIN IMMEDIATE|sqlite_begin|pg_advisory|"
        r"dialect\.name|file_lock"
    )
    offenders = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted(STORE_PACKAGE.glob("*.py"))
        if path.name != "dialect.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
