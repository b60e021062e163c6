"""`a2m store migrate-to URL`: copy a workspace's store into another database (a team's
PostgreSQL), then prove the copy whole.

The target gets the schema from the same Alembic migrations, then every table's rows in
foreign-key order, in batches, in one transaction: a failure leaves the target as empty as it
was. A target that holds any row is refused (a copy never merges into someone's store). The
copy is verified table by table: the count and a SHA-256 over every row, read back from both
through the same column types, and each version's content hash recomputed from its copied rows.
Blobs stay where they are: they are files under the workspace, not rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, func, insert, select

from annotate2model.errors import InputError, StoreError
from annotate2model.store.db import Store
from annotate2model.store.dialect import restart_id_sequences
from annotate2model.store.models import Base
from annotate2model.store.records import VersionItemRecord

BATCH = 5_000


@dataclass(frozen=True)
class TableCopy:
    name: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class CopyResult:
    target: str
    tables: list[TableCopy]
    versions_verified: int


def _tables() -> list[Table]:
    return [t for t in Base.metadata.sorted_tables if t.name != "alembic_version"]


def _value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def table_digest(conn: Connection, table: Table) -> TableCopy:
    """Count and SHA-256 of a table's rows, in primary-key order, as its column types read them."""
    digest = hashlib.sha256()
    rows = 0
    order = list(table.primary_key.columns) or list(table.columns)
    for row in conn.execute(select(table).order_by(*order)).yield_per(BATCH):
        digest.update(json.dumps([_value(v) for v in row], default=str).encode())
        digest.update(b"\n")
        rows += 1
    return TableCopy(table.name, rows, digest.hexdigest())


def refuse_unless_empty(conn: Connection, where: str) -> None:
    """Refuse a database that holds any row of an a2m table (other software's tables ignored):
    a copy never merges into someone's store."""
    if not all(
        not conn.dialect.has_table(conn, t.name)
        or conn.execute(select(func.count()).select_from(t)).scalar() == 0
        for t in _tables()
    ):
        raise InputError(
            f"{where} already holds a2m data; the copy goes only into an empty database.",
            hint="create a new database for it (createdb NAME), or empty this one.",
        )


def copy_store(
    source: Store, target: Store, *, on_table: Callable[[str, int], None] | None = None
) -> CopyResult:
    """Copy every row of `source` into the empty, migrated `target`, then verify (see module)."""
    from annotate2model.store.dialect import redacted_url
    from annotate2model.store.versions import content_hash

    where = redacted_url(target.settings.database_url)
    if source.settings.database_url == target.settings.database_url:
        raise InputError("the target is the store itself; give another database's URL.")
    with target.engine.begin() as out, source.engine.connect() as src:
        refuse_unless_empty(out, where)
        for table in _tables():
            count = 0
            for batch in src.execute(select(table)).mappings().yield_per(BATCH).partitions():
                out.execute(insert(table), [dict(row) for row in batch])
                count += len(batch)
            if on_table is not None:
                on_table(table.name, count)
        # Rows came with their ids: the id sequences start after the highest one copied.
        restart_id_sequences(out, _tables())
    # Verified after the commit, from what each database now holds.
    with source.engine.connect() as src, target.engine.connect() as out:
        tables = []
        for table in _tables():
            ours, theirs = table_digest(src, table), table_digest(out, table)
            if ours != theirs:
                raise StoreError(
                    f"the copy in {where} differs from the store in table {table.name} "
                    f"({ours.rows} rows here, {theirs.rows} there); empty it before trying again."
                )
            tables.append(ours)
        versions = Base.metadata.tables["dataset_versions"]
        items = Base.metadata.tables["version_items"]
        checked = 0
        for number, expected in out.execute(select(versions.c.number, versions.c.content_hash)):
            rows = [
                VersionItemRecord(r.image_sha256, r.label, r.split)
                for r in out.execute(
                    select(items).where(items.c.version == number).order_by(items.c.image_sha256)
                )
            ]
            if content_hash(rows) != expected:
                raise StoreError(f"version {number}'s rows in {where} do not match its hash.")
            checked += 1
    return CopyResult(target=where, tables=tables, versions_verified=checked)
