"""Dataset versions: immutability, no-op detection, stable splits, diff."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from annotate2model.errors import InputError, NotFoundError
from annotate2model.settings import SplitFractions
from annotate2model.store import Store
from annotate2model.store.models import Image
from annotate2model.store.records import NewVersion, VersionItemRecord, VersionRecord
from annotate2model.store.versions import (
    create_version,
    diff_versions,
    get_version,
    list_versions,
    split_for,
    summarize_version,
    version_items,
)

pytestmark = pytest.mark.both_dialects

FRACTIONS = SplitFractions()


def fake_sha(i: int) -> str:
    return hashlib.sha256(f"img{i}".encode()).hexdigest()


def add_fake_images(store: Store, n: int) -> list[str]:
    shas = [fake_sha(i) for i in range(n)]
    now = datetime.now(UTC)
    with store.write() as session:
        session.add_all(
            Image(
                sha256=s, format="PNG", width=1, height=1, mode="RGB", size_bytes=1, created_at=now
            )
            for s in shas
        )
    return shas


def items(shas: list[str], label: str = "a") -> list[VersionItemRecord]:
    return [VersionItemRecord(s, label, split_for(s, FRACTIONS)) for s in shas]


def test_split_is_stable_and_follows_fractions() -> None:
    shas = [fake_sha(i) for i in range(20_000)]
    counts = Counter(split_for(s, FRACTIONS) for s in shas)
    assert abs(counts["train"] / 20_000 - 0.8) < 0.015
    assert abs(counts["val"] / 20_000 - 0.1) < 0.01
    assert abs(counts["test"] / 20_000 - 0.1) < 0.01
    # The split depends on the image alone, never on what else is in the data set.
    assert [split_for(s, FRACTIONS) for s in shas[:50]] == [
        split_for(s, FRACTIONS) for s in reversed(shas[:50])
    ][::-1]


def test_create_noop_and_parent(store: Store) -> None:
    shas = add_fake_images(store, 30)
    with store.write() as session:
        first = create_version(session, items(shas[:20]), source="test", fractions=FRACTIONS)
    assert first.created and first.version.number == 1 and first.version.parent is None
    with store.write() as session:
        same = create_version(session, items(shas[:20])[::-1], source="test", fractions=FRACTIONS)
    assert not same.created and same.version.number == 1
    with store.write() as session:
        second = create_version(
            session, items(shas), source="test", note="grown", fractions=FRACTIONS
        )
    assert second.created and second.version.number == 2 and second.version.parent == 1
    with store.read() as session:
        assert [v.number for v in list_versions(session)] == [1, 2]
        assert len(version_items(session, 1)) == 20
        assert get_version(session, "latest").note == "grown"
        # A later version's test split holds every earlier test image still present.
        old_test = {i.image_sha256 for i in version_items(session, 1, "test")}
        new_test = {i.image_sha256 for i in version_items(session, 2, "test")}
        assert old_test <= new_test


def test_diff_added_removed_relabeled(store: Store) -> None:
    shas = add_fake_images(store, 10)
    with store.write() as session:
        create_version(session, items(shas[:6]), source="t", fractions=FRACTIONS)
        relabeled = [*items(shas[2:4], "b"), *items(shas[4:8])]
        create_version(session, relabeled, source="t", fractions=FRACTIONS)
    with store.read() as session:
        diff = diff_versions(session, 1, 2)
    assert diff.counts == {"added": 2, "removed": 2, "relabeled": 2}
    assert {r.image_sha256 for r in diff.added} == set(shas[6:8])
    assert {r.image_sha256 for r in diff.removed} == set(shas[:2])
    assert {(r.old_label, r.new_label) for r in diff.relabeled} == {("a", "b")}


def test_summary_counts(store: Store) -> None:
    shas = add_fake_images(store, 40)
    with store.write() as session:
        create_version(
            session,
            items(shas[:25], "cat") + items(shas[25:], "dog"),
            source="t",
            fractions=FRACTIONS,
        )
    with store.read() as session:
        summary = summarize_version(session, 1)
    assert summary.labels == ["cat", "dog"]
    assert sum(summary.counts["cat"].values()) == 25
    assert sum(summary.split_totals.values()) == 40


def test_bad_references(store: Store) -> None:
    with store.read() as session:
        with pytest.raises(NotFoundError, match="no dataset version yet"):
            get_version(session, "latest")
        with pytest.raises(InputError, match="not a version number"):
            get_version(session, "banana")
        with pytest.raises(NotFoundError, match="no dataset version 7"):
            get_version(session, 7)


def test_duplicate_image_in_one_version_is_refused(store: Store) -> None:
    shas = add_fake_images(store, 1)
    rows = [VersionItemRecord(shas[0], "a", "train"), VersionItemRecord(shas[0], "b", "train")]
    with pytest.raises(InputError, match="twice"), store.write() as session:
        create_version(session, rows, source="t", fractions=FRACTIONS)
    with store.read() as session:
        assert list_versions(session) == []


def test_version_numbers_are_unique_in_the_schema(store: Store) -> None:
    """The database itself refuses a second version with a taken number (not only the lock)."""
    from sqlalchemy.exc import IntegrityError

    from annotate2model.store.models import DatasetVersion

    shas = add_fake_images(store, 2)
    with store.write() as session:
        create_version(session, items(shas), source="t", fractions=FRACTIONS)
    now = datetime.now(UTC)
    with pytest.raises(IntegrityError), store.write() as session:
        session.add(
            DatasetVersion(
                number=1,
                content_hash="0" * 64,
                created_at=now,
                source="t",
                item_count=0,
                split_json="{}",
            )
        )


def test_concurrent_writers_never_share_a_number(store: Store) -> None:
    """Threads, each with its own store connection, make versions at once: 1..n, one chain."""
    import threading

    shas = add_fake_images(store, 16)
    writers = 8
    start = threading.Barrier(writers)
    made: list[int] = []
    errors: list[BaseException] = []

    def write(k: int) -> None:
        own = Store.open(store.settings)
        try:
            start.wait()
            with own.write() as session:
                new = create_version(
                    session, items(shas[: k + 2]), source=f"w{k}", fractions=FRACTIONS
                )
            made.append(new.version.number)
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(made) == list(range(1, writers + 1))
    with store.read() as session:
        versions = list_versions(session)
    assert [v.parent for v in versions] == [None, *range(1, writers)]
    assert len({v.content_hash for v in versions}) == writers


def test_a_number_lost_to_another_writer_is_retried(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer whose read of the latest version is stale (as happens without the write lock:
    another transaction committed between its read and its insert) collides on the number and
    takes the next one instead of failing or overwriting."""
    import annotate2model.store.versions as versions_module

    real_latest = versions_module.latest_version
    shas = add_fake_images(store, 12)

    def make(rows: list[VersionItemRecord], source: str) -> NewVersion:
        with store.write() as session:
            return create_version(session, rows, source=source, fractions=FRACTIONS)

    def latest() -> VersionRecord:
        with store.read() as session:
            record = real_latest(session)
        assert record is not None
        return record

    def racing(stale: VersionRecord, rows: list[VersionItemRecord]) -> tuple[NewVersion, list[int]]:
        """create_version whose first read of the latest version returns `stale`."""
        reads: list[int] = []

        def read(session: Session) -> VersionRecord | None:
            record = stale if not reads else real_latest(session)
            reads.append(record.number if record else 0)
            return record

        with monkeypatch.context() as patch:
            patch.setattr(versions_module, "latest_version", read)
            return make(rows, "t"), reads

    make(items(shas[:4]), "t")
    stale = latest()
    make(items(shas[:8]), "other")  # commits number 2 behind the stale reader's back
    new, reads = racing(stale, items(shas))
    assert reads == [1, 2]  # tried number 2, found it taken, read again
    assert new.created and new.version.number == 3 and new.version.parent == 2

    # The same race where the other writer committed the very same rows: no new version.
    stale = latest()
    make(items(shas[:10]), "other")
    same, reads = racing(stale, items(shas[:10]))
    assert reads == [3, 4] and not same.created and same.version.number == 4

    with store.read() as session:
        assert [(v.number, v.parent, v.item_count) for v in list_versions(session)] == [
            (1, None, 4),
            (2, 1, 8),
            (3, 2, 12),
            (4, 3, 10),
        ]
        assert len(version_items(session, 2)) == 8 and len(version_items(session, 3)) == 12
