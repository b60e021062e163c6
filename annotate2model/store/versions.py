"""Dataset versions: immutable numbered snapshots of (image, label, split) rows."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from operator import attrgetter, itemgetter

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from annotate2model.errors import InputError, NotFoundError, StoreError
from annotate2model.settings import SPLITS, SplitFractions
from annotate2model.store.dialect import bulk_insert
from annotate2model.store.images import file_name
from annotate2model.store.models import DatasetVersion, Image, Task, VersionItem
from annotate2model.store.records import (
    NewVersion,
    RelabeledRow,
    VersionDiff,
    VersionItemRecord,
    VersionRecord,
    VersionSummary,
    from_row,
)

# How many times create_version takes the next number after losing one to another writer.
NUMBER_ATTEMPTS = 20


# A row as (image hash, label, split), the order of its columns in the content hash.
Row = tuple[str, str, str]
_ROW = attrgetter("image_sha256", "label", "split")
_IMAGE, _SPLIT = itemgetter(0), itemgetter(2)
# Rows hashed at a time: a million-row version's text is never held whole.
HASH_CHUNK = 65_536


def split_for(image_sha256: str, fractions: SplitFractions) -> str:
    """The split an image belongs to, from its hash alone: stable as the data set grows."""
    # The first 64 bits of a SHA-256 are uniform; map them to [0, 1).
    position = int(image_sha256[:16], 16) / float(1 << 64)
    if position < fractions.train:
        return "train"
    if position < fractions.train + fractions.val:
        return "val"
    return "test"


def content_hash(items: Iterable[VersionItemRecord]) -> str:
    """SHA-256 over the rows in image-hash order (an image appears once per version)."""
    return _rows_hash(sorted(map(_ROW, items), key=_IMAGE))


def _rows_hash(rows: Sequence[Row]) -> str:
    """The content hash of rows already in image-hash order: over one line per row, its image
    hash, label and split joined by tabs (the text the hash has always been over)."""
    digest = hashlib.sha256()
    for start in range(0, len(rows), HASH_CHUNK):
        chunk = rows[start : start + HASH_CHUNK]
        digest.update(
            "".join([f"{sha}\t{label}\t{split}\n" for sha, label, split in chunk]).encode()
        )
    return digest.hexdigest()


def _version_rows(items: Iterable[VersionItemRecord]) -> list[Row]:
    """`items` as rows in image-hash order, each image once (a repeated identical row is one).

    InputError for a split that is not one of SPLITS, or an image given two different rows.
    Written as passes of C-level map/set/sort over plain tuples, the checks before the sort
    while the rows are still in the order they were made in (cheaper on memory): for a million
    rows, a Python loop per row or a dict of them costs a good part of the database's insert.
    """
    rows = list(map(_ROW, items))
    if not set(map(_SPLIT, rows)) <= set(SPLITS):
        sha, _label, split = next(r for r in rows if r[2] not in SPLITS)
        raise InputError(f"unknown split {split!r} for image {sha[:12]}.")
    repeated = len(set(map(_IMAGE, rows))) != len(rows)
    rows.sort(key=_IMAGE)
    if repeated:
        unique = rows[:1]
        for row in islice(rows, 1, None):
            if row[0] != unique[-1][0]:
                unique.append(row)
            elif row != unique[-1]:
                raise InputError(f"image {row[0][:12]} appears twice in one version.")
        rows = unique
    return rows


def _record(row: DatasetVersion) -> VersionRecord:
    return from_row(VersionRecord, row, split_fractions=json.loads(row.split_json))


def latest_version(session: Session) -> VersionRecord | None:
    row = session.scalars(select(DatasetVersion).order_by(DatasetVersion.number.desc())).first()
    return _record(row) if row else None


def get_version(session: Session, ref: int | str | None = None) -> VersionRecord:
    """A version by number, or the latest for None / "latest"."""
    if ref is None or ref == "latest":
        latest = latest_version(session)
        if latest is None:
            raise NotFoundError(
                "the store holds no dataset version yet.",
                hint="make one with `a2m import-folder DIR` or `a2m sync`.",
            )
        return latest
    try:
        number = int(str(ref).lstrip("v"))
    except ValueError:
        raise InputError(f"{ref!r} is not a version number (try 3, v3 or latest).") from None
    row = session.get(DatasetVersion, number)
    if row is None:
        raise NotFoundError(
            f"there is no dataset version {number}.", hint="`a2m versions` lists them."
        )
    return _record(row)


def list_versions(session: Session) -> list[VersionRecord]:
    rows = session.scalars(select(DatasetVersion).order_by(DatasetVersion.number))
    return [_record(r) for r in rows]


def version_items(
    session: Session, number: int, split: str | None = None
) -> list[VersionItemRecord]:
    """The rows of a version, sorted by image hash."""
    query = select(VersionItem.image_sha256, VersionItem.label, VersionItem.split).where(
        VersionItem.version == number
    )
    if split is not None:
        query = query.where(VersionItem.split == split)
    rows = session.execute(query.order_by(VersionItem.image_sha256))
    return [VersionItemRecord(sha, label, sp) for sha, label, sp in rows]


def create_version(
    session: Session,
    items: Iterable[VersionItemRecord],
    *,
    source: str,
    note: str = "",
    fractions: SplitFractions,
) -> NewVersion:
    """Record `items` as a new version unless they equal the latest version's rows.

    The caller's session must be a write session: the version and all its rows commit together,
    so a killed process leaves either the whole version or none of it.
    """
    rows = _version_rows(items)
    digest = _rows_hash(rows)
    for _attempt in range(NUMBER_ATTEMPTS):
        latest = latest_version(session)
        if latest is not None and latest.content_hash == digest:
            return NewVersion(version=latest, created=False)
        number = (latest.number + 1) if latest else 1
        version = DatasetVersion(
            number=number,
            parent=latest.number if latest else None,
            content_hash=digest,
            created_at=datetime.now(UTC),
            note=note,
            source=source,
            item_count=len(rows),
            split_json=json.dumps(fractions.as_dict()),
        )
        try:
            # A savepoint, so that losing the number to another writer undoes only this insert.
            with session.begin_nested():
                session.add(version)
        except IntegrityError:
            # The write lock makes this impossible on SQLite; a writer that does not take it (or
            # a database that lets two transactions read the same latest) can commit `number`
            # between our read and our insert. The number is unique: read again, take the next.
            if session.get(DatasetVersion, number) is None:
                raise  # some other constraint failed
            continue
        break
    else:
        raise StoreError(
            f"could not take a version number: {NUMBER_ATTEMPTS} tries were each beaten by "
            "another writer."
        )
    if rows:
        # The database's bulk path (dialect.py): SQLAlchemy's own executemany spends more time
        # turning a million rows into parameters than the database spends storing them.
        bulk_insert(
            session,
            VersionItem,
            ("image_sha256", "label", "split"),
            rows,
            same={"version": number},
        )
    return NewVersion(version=_record(version), created=True)


def summarize_version(session: Session, ref: int | str | None) -> VersionSummary:
    version = get_version(session, ref)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    totals = dict.fromkeys(SPLITS, 0)
    query = (
        select(VersionItem.label, VersionItem.split, func.count())
        .where(VersionItem.version == version.number)
        .group_by(VersionItem.label, VersionItem.split)
    )
    for label, split, n in session.execute(query):
        counts[label][split] = n
        totals[split] += n
    labels = sorted(counts)
    return VersionSummary(
        version=version,
        labels=labels,
        counts={label: dict(counts[label]) for label in labels},
        split_totals=totals,
    )


def diff_versions(session: Session, old_ref: int | str, new_ref: int | str) -> VersionDiff:
    """Images added, removed and relabeled going from `old` to `new`."""
    old = get_version(session, old_ref).number
    new = get_version(session, new_ref).number
    a = aliased(VersionItem)
    b = aliased(VersionItem)
    added = session.execute(
        select(b.image_sha256, b.label, b.split)
        .outerjoin(a, (a.image_sha256 == b.image_sha256) & (a.version == old))
        .where(b.version == new, a.image_sha256.is_(None))
        .order_by(b.image_sha256)
    )
    removed = session.execute(
        select(a.image_sha256, a.label, a.split)
        .outerjoin(b, (b.image_sha256 == a.image_sha256) & (b.version == new))
        .where(a.version == old, b.image_sha256.is_(None))
        .order_by(a.image_sha256)
    )
    relabeled = session.execute(
        select(a.image_sha256, a.label, b.label, b.split)
        .join(b, (b.image_sha256 == a.image_sha256) & (b.version == new))
        .where(a.version == old, a.label != b.label)
        .order_by(a.image_sha256)
    )
    return VersionDiff(
        old=old,
        new=new,
        added=[VersionItemRecord(*row) for row in added],
        removed=[VersionItemRecord(*row) for row in removed],
        relabeled=[RelabeledRow(*row) for row in relabeled],
    )


def split_hashes(session: Session, numbers: Iterable[int], split: str = "test") -> dict[int, str]:
    """Version -> SHA-256 over the image hashes of one split: equal values, the same images."""
    from annotate2model.store.runs import images_hash

    return {
        n: images_hash(i.image_sha256 for i in version_items(session, n, split))
        for n in sorted(set(numbers))
    }


@dataclass(frozen=True)
class ImageSource:
    """How a person finds an image again: its file name and its Label Studio task(s)."""

    # The file name it was imported from, or of the Label Studio task's image; None when there is
    # none (an image inlined as a data: URL).
    name: str | None
    # Where the bytes first came from: the imported file's path or the task's image URL.
    origin: str | None
    # (project id, task id) of the live tasks that show it, oldest first.
    tasks: tuple[tuple[int, int], ...]


def image_sources(session: Session, shas: Iterable[str]) -> dict[str, ImageSource]:
    """Each image's file name and live tasks; images the store does not know are left out."""
    wanted = sorted(set(shas))
    origins: dict[str, str | None] = {}
    tasks: dict[str, list[tuple[int, int, str | None]]] = defaultdict(list)
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        for sha, origin in session.execute(
            select(Image.sha256, Image.origin).where(Image.sha256.in_(chunk))
        ):
            origins[sha] = origin
        for task_sha, project, task, url in session.execute(
            select(Task.image_sha256, Task.project_id, Task.task_id, Task.image_url)
            .where(Task.image_sha256.in_(chunk), Task.deleted_at.is_(None))
            .order_by(Task.id)
        ):
            if task_sha is not None:
                tasks[task_sha].append((project, task, url))
    out = {}
    for image, where in origins.items():
        name = file_name(where) or next(
            (n for n in (file_name(url) for _, _, url in tasks[image]) if n), None
        )
        out[image] = ImageSource(
            name=name,
            # A data: URL is the image itself, cut at 500 characters: no place to go back to.
            origin=where if where is None or not where.startswith("data:") else None,
            tasks=tuple((p, t) for p, t, _ in tasks[image]),
        )
    return out
