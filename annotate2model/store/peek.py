"""What a command may learn from the store before SQLAlchemy is imported, with the standard
library's sqlite3 alone, to start slow work early. An answer here is a guess to act on
speculatively: the command still reads the store properly and corrects course when the guess was
wrong, so a wrong or missing answer costs time, never correctness.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from urllib.parse import quote

_SQLITE_FILE = "sqlite:///"

# A project counts as synced when a sync left its state or any of its tasks (sync.py's test for
# a first sync is the same, read through the store).
_SYNCED = (
    "SELECT EXISTS (SELECT 1 FROM sync_state WHERE project_id = ?) "
    "OR EXISTS (SELECT 1 FROM tasks WHERE project_id = ?)"
)


def project_synced(database_url: str, project_id: int) -> bool | None:
    """Whether the store holds anything of this Label Studio project; None when that cannot be
    told cheaply: not a SQLite file, a schema without the tables, a damaged file."""
    if not database_url.startswith(_SQLITE_FILE) or "?" in database_url:
        return None
    path = Path(database_url[len(_SQLITE_FILE) :])
    if not path.exists():
        return False  # opening the store will make it, empty
    # Read-only and without waiting on a writer: a busy store is a question for later.
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=0.05)) as conn:
            row = conn.execute(_SYNCED, (project_id, project_id)).fetchone()
    except sqlite3.Error:
        return None
    return bool(row[0])
