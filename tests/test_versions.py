"""Dataset versions: immutability, no-op detection, stable splits, diff."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime, timezone

import pytest

from annotate2model.errors import InputError, NotFoundError
from annotate2model.settings import SplitFractions
from annotate2model.store import Store
from annotate2model.store.models import Image
from annotate2model.store.records import VersionItemRecord
from annotate2model.store.versions import (
    create_version,
    diff_versions,
    get_version,
    list_versions,
    split_for,
    summarize_version,
    version_items,
)

FRACTIONS = SplitFractions()


def fake_sha(i: int) -> str:
    return hashlib.sha256(f"img{i}".encode()).hexdigest()


def add_fake_images(store: Store, n: int) -> list[str]:
    shas = [fake_sha(i) for i in range(n)]
    now = datetime.now(timezone.utc)
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
