"""The store's schema comes only from migrations, and the models match them."""

from __future__ import annotations

import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from annotate2model.settings import Settings
from annotate2model.store import Store
from annotate2model.store.db import SCHEMA_HEAD, alembic_config
from annotate2model.store.models import Base

EXPECTED_TABLES = {
    "alembic_version",
    "annotations",
    "curves",
    "dataset_versions",
    "evaluations",
    "flags",
    "images",
    "predictions",
    "promotions",
    "runs",
    "sync_state",
    "tasks",
    "version_items",
}


def test_single_head_is_the_one_the_code_expects() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert heads == [SCHEMA_HEAD]


def test_a_store_from_a_newer_version_is_refused(settings: Settings) -> None:
    import pytest

    from annotate2model.errors import StoreError

    Store.open(settings).close()
    conn = sqlite3.connect(settings.workspace.store_path)
    conn.execute("update alembic_version set version_num = '9999'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer version"):
        Store.open(settings)


def test_blank_database_migrates_to_exact_schema(settings: Settings) -> None:
    store = Store.open(settings)
    assert store.current_revision() == SCHEMA_HEAD
    store.close()
    conn = sqlite3.connect(settings.workspace.store_path)
    tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert tables == EXPECTED_TABLES
    columns = {r[1] for r in conn.execute("pragma table_info(version_items)")}
    assert columns == {"version", "image_sha256", "label", "split"}
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    conn.close()


@pytest.mark.both_dialects
def test_models_and_migrations_do_not_drift(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


@pytest.mark.both_dialects
def test_foreign_keys_are_enforced(store: Store) -> None:
    from sqlalchemy.exc import IntegrityError

    from annotate2model.store.models import VersionItem

    with pytest.raises(IntegrityError), store.write() as session:
        session.add(VersionItem(version=99, image_sha256="0" * 64, label="x", split="train"))
        session.flush()


@pytest.mark.both_dialects
def test_reopening_a_migrated_store_is_cheap_and_idempotent(settings: Settings) -> None:
    Store.open(settings).close()
    store = Store.open(settings)
    assert store.current_revision() == SCHEMA_HEAD
    store.close()


def test_garbage_database_file_is_a_clear_error(settings: Settings) -> None:
    import pytest

    from annotate2model.errors import StoreError

    settings.workspace.store_path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the store"):
        Store.open(settings)


@pytest.mark.both_dialects
def test_blob_read_verifies_hash_and_partials_are_cleaned(store: Store) -> None:
    import os

    import pytest

    from annotate2model.errors import BlobCorrupted, NotFoundError

    sha = store.blobs.put(b"some image bytes")
    assert store.blobs.read(sha) == b"some image bytes"
    assert store.blobs.put(b"some image bytes") == sha
    store.blobs.path(sha).write_bytes(b"some image bytez")
    with pytest.raises(BlobCorrupted, match="corrupted"):
        store.blobs.read(sha)
    with pytest.raises(NotFoundError):
        store.blobs.read("ab" * 32)
    stale = store.blobs.path(sha).parent / ".tmp-x.part"
    fresh = store.blobs.path(sha).parent / ".tmp-y.part"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(stale, (0, 0))
    assert store.blobs.remove_partials() == 1
    assert not stale.exists() and fresh.exists()
