"""store.peek: what `a2m sync` guesses of the store before SQLAlchemy loads, with sqlite3 alone.
A wrong answer would cost time only; an answer where it cannot tell must be None."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from annotate2model.settings import Settings
from annotate2model.store import Store
from annotate2model.store.models import SyncState, Task
from annotate2model.store.peek import project_synced


def test_a_fresh_store_holds_no_project(settings: Settings, tmp_path: Path) -> None:
    # Not made yet (opening it will make it), then made and migrated.
    assert project_synced(f"sqlite:///{tmp_path / 'not-yet.db'}", 1) is False
    Store.open(settings).close()
    assert project_synced(settings.database_url, 1) is False


def test_a_sync_state_or_a_task_marks_only_its_own_project(
    settings: Settings, store: Store
) -> None:
    with store.write() as session:
        session.add(SyncState(project_id=3, watermark=None))
        session.add(
            Task(
                project_id=5,
                task_id=1,
                image_url="/data/upload/1/a.png",
                synced_at=datetime.now(UTC),
            )
        )
    assert project_synced(settings.database_url, 3) is True
    assert project_synced(settings.database_url, 5) is True
    assert project_synced(settings.database_url, 4) is False


def test_cannot_tell_without_a_sqlite_store_to_read(settings: Settings, tmp_path: Path) -> None:
    assert project_synced("postgresql://a2m@localhost/a2m", 1) is None
    assert project_synced(f"sqlite:///{settings.workspace.store_path}?mode=ro", 1) is None
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not a database" * 100)
    assert project_synced(f"sqlite:///{damaged}", 1) is None
    blank = tmp_path / "blank.db"
    sqlite3.connect(blank).close()  # a file, but no tables (never migrated)
    assert project_synced(f"sqlite:///{blank}", 1) is None


def test_a_store_being_written_is_read_as_it_was(settings: Settings, store: Store) -> None:
    """A writer holding the store's write lock does not make the guess wait (WAL)."""
    with store.write() as session:
        session.add(SyncState(project_id=8, watermark=None))
        session.flush()
        assert project_synced(settings.database_url, 8) is False
    assert project_synced(settings.database_url, 8) is True
