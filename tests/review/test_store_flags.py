"""store.flags on a real SQLite store: one flag per (run, task), resolution, withdrawal,
precision."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from annotate2model.store import Store
from annotate2model.store.flags import (
    NewFlag,
    flag_precision,
    interrupted_pushes,
    list_flags,
    mark_push_started,
    mark_pushed,
    mark_retired,
    record_flags,
    resolve_flags,
    withdraw,
)
from annotate2model.store.models import Annotation, Image, Task
from annotate2model.store.records import VersionItemRecord
from annotate2model.store.runs import create_run
from annotate2model.store.versions import create_version

pytestmark = pytest.mark.both_dialects

PROJECT = 7


def _setup(store: Store, n: int = 3) -> tuple[int, list[int]]:
    """n images with one labeled task each (annotation 100+i), a version and a run."""
    now = datetime.now(UTC)
    rows: list[int] = []
    with store.write() as session:
        for i in range(n):
            sha = f"{i:064x}"
            session.add(
                Image(
                    sha256=sha,
                    format="PNG",
                    width=1,
                    height=1,
                    mode="RGB",
                    size_bytes=1,
                    created_at=now,
                )
            )
            task = Task(
                project_id=PROJECT, task_id=10 + i, image_sha256=sha, label="ant", synced_at=now
            )
            session.add(task)
            session.flush()
            rows.append(task.id)
            _answer(session, task.id, 100 + i, "ant", "2026-01-01T00:00:00Z")
        create_version(
            session,
            [VersionItemRecord(f"{i:064x}", "ant", "train") for i in range(n)],
            source="sync",
            note="",
            fractions=store.settings.split,
        )
        run = create_run(session, 1, "train", {}, None)
    return run.id, rows


def _answer(session: object, task_row: int, annotation_id: int, label: str, updated: str) -> None:
    session.add(  # type: ignore[attr-defined]
        Annotation(
            project_id=PROJECT,
            annotation_id=annotation_id,
            task_row_id=task_row,
            label=label,
            result_json="[]",
            remote_updated_at=updated,
            seen_at=datetime.now(UTC),
        )
    )


def _flags(rows: list[int], score: float = 0.9) -> list[NewFlag]:
    return [NewFlag(r, f"{i:064x}", "label-issue", score, "ant", "bee") for i, r in enumerate(rows)]


def test_flagging_twice_adds_nothing_and_refreshes_scores(store: Store) -> None:
    run, rows = _setup(store)
    with store.write() as session:
        first = record_flags(session, run, _flags(rows))
    with store.write() as session:
        again = record_flags(session, run, _flags(rows, score=0.95))
    assert [f.id for f in first] == [f.id for f in again]
    with store.read() as session:
        listed = list_flags(session, run)
    assert len(listed) == 3
    assert {f.score for f in listed} == {0.95}
    assert {f.task_id for f in listed} == {10, 11, 12}
    assert {f.outcome for f in listed} == {"not pushed"}


def test_sync_resolves_relabeled_confirmed_and_pending(store: Store) -> None:
    run, rows = _setup(store)
    with store.write() as session:
        flags = record_flags(session, run, _flags(rows))
        mark_pushed(session, [f.id for f in flags], review_field="a2m_review_run_1", view_id=5)
    with store.write() as session:
        # Task 10 relabeled; task 11 answered again with the same label; task 12 untouched.
        session.get(Task, rows[0]).label = "bee"  # type: ignore[union-attr]
        _answer(session, rows[0], 100, "bee", "2026-02-01T00:00:00Z")
        _answer(session, rows[1], 101, "ant", "2026-02-01T00:00:00Z")
        counts = resolve_flags(session, PROJECT)
    assert counts == {"relabeled": 1, "confirmed": 1}
    with store.read() as session:
        by_task = {f.task_id: f for f in list_flags(session, run)}
        precision = flag_precision(session, [run, run + 1])
    assert by_task[10].outcome == "relabeled" and by_task[10].label_now == "bee"
    assert by_task[11].outcome == "confirmed"
    assert by_task[12].outcome == "pending"
    assert by_task[12].review_field == "a2m_review_run_1" and by_task[12].view_id == 5
    assert precision == {run: (2, 1)}
    with store.write() as session:  # a second sync changes nothing
        assert resolve_flags(session, PROJECT) == {}


def test_a_requeued_task_is_pending_until_answered(store: Store) -> None:
    run, rows = _setup(store, 1)
    with store.write() as session:
        flags = record_flags(session, run, _flags(rows))
        mark_pushed(
            session, [flags[0].id], review_field="f", view_id=None, requeued={flags[0].id: (100, 9)}
        )
    with store.write() as session:  # the annotation became a draft: no label until answered
        session.get(Task, rows[0]).label = None  # type: ignore[union-attr]
        assert resolve_flags(session, PROJECT) == {}
    with store.write() as session:
        session.get(Task, rows[0]).label = "ant"  # type: ignore[union-attr]
        _answer(session, rows[0], 200, "ant", "2026-03-01T00:00:00Z")
        assert resolve_flags(session, PROJECT) == {"confirmed": 1}
    with store.read() as session:
        (flag,) = list_flags(session, run)
    assert flag.requeued_annotation_id == 100 and flag.draft_id == 9


def test_withdraw_keeps_resolved_flags_and_a_new_flag_reopens(store: Store) -> None:
    run, rows = _setup(store, 2)
    with store.write() as session:
        flags = record_flags(session, run, _flags(rows))
        mark_pushed(session, [f.id for f in flags], review_field="f", view_id=None)
        session.get(Task, rows[0]).label = "bee"  # type: ignore[union-attr]
        resolve_flags(session, PROJECT)
        withdrawn = withdraw(session, run)
        mark_retired(session, [f.id for f in withdrawn])  # as unflag does, in the same write
    assert {f.outcome for f in withdrawn} == {"relabeled", "withdrawn"}
    with store.write() as session:
        reopened = record_flags(session, run, _flags(rows))
    assert [f.task_id for f in reopened] == [11]  # the relabeled one stays closed
    assert reopened[0].outcome == "not pushed"


def test_a_push_that_began_and_never_reported_back_is_interrupted_not_unpushed(
    store: Store,
) -> None:
    run, rows = _setup(store, 2)
    with store.write() as session:
        flags = record_flags(session, run, _flags(rows))
        mark_push_started(session, [f.id for f in flags], review_field="f")
    with store.read() as session:
        assert {f.outcome for f in list_flags(session, run)} == {"push interrupted"}
        assert sorted(t for _f, _r, t in interrupted_pushes(session, PROJECT)) == [10, 11]
    with store.write() as session:
        mark_pushed(session, [flags[0].id], review_field="f", view_id=None)
        mark_retired(session, [flags[1].id])  # its task was gone from Label Studio
    with store.read() as session:
        outcomes = [f.outcome for f in list_flags(session, run)]
        assert sorted(outcomes) == ["not pushed", "pending"]
        assert interrupted_pushes(session, PROJECT) == []
