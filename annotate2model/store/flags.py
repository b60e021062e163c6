"""Flags in the store: tasks a run sent back for review, what was pushed, and how each ended.

A flag is one (run, task): flagging a run again updates its open flags and adds none twice. It is
pending until a sync shows the task answered again after it was flagged: `relabeled` when its
label changed, `confirmed` when the same label came back, `labeled` for an uncertain (unlabeled)
task that got its first label. Unflagging withdraws the flags still pending; resolved ones stay
as they ended, so a run's flag precision (the share of its resolved flags that changed the label)
keeps counting them.

Verdicts are remembered: a doubt about an image and label a person confirmed on that task is
recorded `suppressed` (kept back, never pushed) unless the flagging asks to recheck them. A task
that waits in review for an earlier run's flag gets the new run's flag with the same starting
point (what counts as answered again is measured from the first flag), so one answer settles both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from annotate2model.store.models import Annotation, Flag, Task
from annotate2model.store.records import from_row

RELABELED = "relabeled"
CONFIRMED = "confirmed"
LABELED = "labeled"
WITHDRAWN = "withdrawn"
# A doubt about a label a person confirmed on that task: recorded, not sent.
SUPPRESSED = "suppressed"
# Outcomes that say whether the doubt was right (precision counts these).
JUDGED = (RELABELED, CONFIRMED)
# The outcome of an open flag whose push began and never reported back (see mark_push_started).
PUSH_INTERRUPTED = "push interrupted"


@dataclass(frozen=True)
class NewFlag:
    """A doubt placed on one task, as the review step hands it to the store."""

    task_row_id: int
    image_sha256: str
    reason: str
    score: float
    current_label: str | None
    suggested_label: str | None


@dataclass(frozen=True)
class FlagRecord:
    id: int
    run_id: int | None
    project_id: int | None
    # Label Studio's task id.
    task_id: int | None
    image_sha256: str
    reason: str
    score: float
    current_label: str | None
    suggested_label: str | None
    # The task's label as of the last sync.
    label_now: str | None
    created_at: datetime
    pushed_at: datetime | None
    resolved_at: datetime | None
    resolution: str | None
    review_field: str | None
    view_id: int | None
    requeued_annotation_id: int | None
    draft_id: int | None

    @property
    def outcome(self) -> str:
        """relabeled / confirmed / labeled / withdrawn / kept back (confirmed before), pending
        once pushed, push interrupted when a push began and never reported back (the process
        was killed: Label Studio may hold part of it), else not pushed."""
        if self.resolution == SUPPRESSED:
            return "kept back (confirmed before)"
        if self.resolution:
            return self.resolution
        if self.pushed_at:
            return "pending"
        return PUSH_INTERRUPTED if self.review_field else "not pushed"


def record_flags(
    session: Session,
    run_id: int,
    flags: Sequence[NewFlag],
    *,
    baselines: dict[int, str] | None = None,
) -> list[FlagRecord]:
    """Add the run's new flags and refresh its open ones (score, labels); a withdrawn or kept
    back flag opens again. Resolved flags are left as they ended and not returned. `baselines`:
    task row -> the answers an earlier run's pending flag of the task started from (its
    `answers_json`), taken over so that one answer settles both. Returns the open flags of
    `flags`, in their order."""
    now = datetime.now(UTC)
    existing = _existing(session, run_id, flags)
    answers = _answers(session, [f.task_row_id for f in flags])
    rows: list[Flag] = []
    for f in flags:
        row = existing.get(f.task_row_id)
        if row is not None and row.resolution in (RELABELED, CONFIRMED, LABELED):
            continue
        if row is not None and row.resolution in (WITHDRAWN, SUPPRESSED):
            row.resolution = None
            row.resolved_at = None
            row.pushed_at = None
            row.created_at = now
        row = _set_doubt(session, run_id, row, f, now)
        if row.pushed_at is None:
            # What counts as "answered again" is measured from when the flag (re)opened, or
            # from when the earlier flag that holds the task in review did.
            carried = (baselines or {}).get(f.task_row_id)
            row.answers_json = carried or json.dumps(answers.get(f.task_row_id, []))
        rows.append(row)
    session.flush()
    return _records(session, [r.id for r in rows])


def record_suppressed(session: Session, run_id: int, flags: Sequence[NewFlag]) -> int:
    """Record doubts kept back because a person confirmed the label (resolution `suppressed`,
    never pushed); a flag of the run already open or resolved for the task is left alone.
    Returns how many were recorded."""
    if not flags:
        return 0
    now = datetime.now(UTC)
    existing = _existing(session, run_id, flags)
    count = 0
    for f in flags:
        row = existing.get(f.task_row_id)
        if row is not None and row.resolution not in (WITHDRAWN, SUPPRESSED):
            continue
        row = _set_doubt(session, run_id, row, f, now)
        row.resolution = SUPPRESSED
        row.resolved_at = now
        row.pushed_at = None
        count += 1
    session.flush()
    return count


def _existing(session: Session, run_id: int, flags: Sequence[NewFlag]) -> dict[int | None, Flag]:
    """The run's flags on the tasks of `flags`, by task row."""
    tasks = [f.task_row_id for f in flags]
    rows = session.scalars(select(Flag).where(Flag.run_id == run_id, Flag.task_row_id.in_(tasks)))
    return {row.task_row_id: row for row in rows}


def _set_doubt(
    session: Session, run_id: int, row: Flag | None, flag: NewFlag, now: datetime
) -> Flag:
    """`row`, or the run's new flag on the task when None, holding `flag`'s doubt."""
    if row is None:
        row = Flag(run_id=run_id, task_row_id=flag.task_row_id, created_at=now)
        session.add(row)
    row.image_sha256 = flag.image_sha256
    row.reason = flag.reason
    row.score = flag.score
    row.current_label = flag.current_label
    row.suggested_label = flag.suggested_label
    return row


def confirmed_before(
    session: Session, task_rows: Sequence[int]
) -> dict[tuple[int, str, str], set[int]]:
    """(task row, image, label) that a person confirmed -> the runs whose flags they overruled:
    a flag on the task doubted that label of that image, and the task was answered again with
    the same label."""
    out: dict[tuple[int, str, str], set[int]] = {}
    for start in range(0, len(task_rows), 500):
        chunk = list(task_rows[start : start + 500])
        rows = session.execute(
            select(Flag.task_row_id, Flag.image_sha256, Flag.current_label, Flag.run_id).where(
                Flag.task_row_id.in_(chunk), Flag.resolution == CONFIRMED
            )
        )
        for task, sha, label, run in rows:
            if task and label:
                out.setdefault((task, sha, label), set()).update([run] if run else [])
    return out


def pending_elsewhere(session: Session, run_id: int, task_rows: Sequence[int]) -> dict[int, str]:
    """Task row -> the starting answers (`answers_json`) of a pushed, still pending flag of
    another run on it: the task already waits in review."""
    out: dict[int, str] = {}
    for start in range(0, len(task_rows), 500):
        chunk = list(task_rows[start : start + 500])
        rows = session.execute(
            select(Flag.task_row_id, Flag.answers_json)
            .where(
                Flag.task_row_id.in_(chunk),
                Flag.run_id != run_id,
                Flag.resolution.is_(None),
                Flag.pushed_at.is_not(None),
            )
            .order_by(Flag.created_at)
        )
        for task, answers in rows:
            if task is not None:
                out.setdefault(task, answers or "[]")
    return out


def settled_since(session: Session, project_id: int, since: datetime) -> int:
    """The project's flags a person settled (relabeled or confirmed) after `since`."""
    count = session.scalar(
        select(func.count(Flag.id))
        .join(Task, Task.id == Flag.task_row_id)
        .where(
            Task.project_id == project_id,
            Flag.resolution.in_(JUDGED),
            Flag.resolved_at > since,
        )
    )
    return int(count or 0)


def answered_in_review(session: Session, project_id: int, field: str) -> list[tuple[int, int]]:
    """(flag id, Label Studio task id) of the project's flags that ended (settled, withdrawn)
    but are still marked under `field` in Label Studio, on tasks that no pending flag holds
    there: what the review tab should no longer list."""
    marked = session.execute(
        select(Flag.id, Flag.task_row_id, Flag.resolution, Task.task_id)
        .join(Task, Task.id == Flag.task_row_id)
        .where(Task.project_id == project_id, Flag.review_field == field)
    ).all()
    # An open flag holds its task, pushed or with its push interrupted (it may be in the tab).
    held = {row for _id, row, resolution, _t in marked if resolution is None}
    return [
        (flag_id, task_id)
        for flag_id, row, resolution, task_id in marked
        if resolution is not None and row not in held and task_id is not None
    ]


def mark_retired(session: Session, flag_ids: Iterable[int]) -> None:
    """Nothing of these flags is left in Label Studio any more."""
    for row in _rows(session, flag_ids):
        row.review_field = None
        row.view_id = None
    session.flush()


def mark_push_started(session: Session, flag_ids: Iterable[int], *, review_field: str) -> None:
    """A push of these flags is about to begin: until `mark_pushed`, Label Studio may hold any
    part of it (under `review_field`), and `a2m unflag` takes them back like pushed ones."""
    for row in _rows(session, flag_ids):
        if row.pushed_at is None:
            row.review_field = review_field
    session.flush()


def interrupted_pushes(session: Session, project_id: int) -> list[tuple[int, int, int]]:
    """(flag id, run id, task id) of the project's open flags whose push began and never
    reported back."""
    rows = session.execute(
        select(Flag.id, Flag.run_id, Task.task_id)
        .join(Task, Task.id == Flag.task_row_id)
        .where(
            Task.project_id == project_id,
            Flag.resolution.is_(None),
            Flag.pushed_at.is_(None),
            Flag.review_field.is_not(None),
        )
    ).all()
    return [(f, r, t) for f, r, t in rows if r is not None and t is not None]


def mark_pushed(
    session: Session,
    flag_ids: Iterable[int],
    *,
    review_field: str,
    view_id: int | None,
    requeued: dict[int, tuple[int, int]] | None = None,
) -> None:
    """The flags are in Label Studio now; `requeued`: flag id -> (annotation id, draft id)."""
    now = datetime.now(UTC)
    for row in _rows(session, flag_ids):
        if row.pushed_at is None:
            row.pushed_at = now
        row.review_field = review_field
        row.view_id = view_id
    if requeued:
        mark_requeued(session, requeued)
    session.flush()


def mark_requeued(session: Session, requeued: dict[int, tuple[int, int]]) -> None:
    """Flag id -> (annotation id, draft id): the task's annotation was turned into that draft
    (annotation id 0 when a push cut short did it and only the draft is known)."""
    for row in _rows(session, requeued):
        annotation_id, draft_id = requeued[row.id]
        row.requeued_annotation_id = annotation_id or row.requeued_annotation_id
        row.draft_id = draft_id
    session.flush()


def withdraw(session: Session, run_id: int) -> list[FlagRecord]:
    """Close the run's pending flags as withdrawn (unflag); returns every flag of the run that
    was pushed, withdrawn now or resolved before, for the caller to take out of Label Studio."""
    now = datetime.now(UTC)
    rows = list(session.scalars(select(Flag).where(Flag.run_id == run_id)))
    for row in rows:
        if row.resolution is None:
            row.resolution = WITHDRAWN
            row.resolved_at = now
    session.flush()
    return _records(session, [r.id for r in rows])


def clear_requeue(session: Session, flag_ids: Iterable[int]) -> None:
    """The draft went back to being an annotation (unflag): nothing is requeued any more."""
    for row in _rows(session, flag_ids):
        row.requeued_annotation_id = None
        row.draft_id = None
    session.flush()


def list_flags(
    session: Session, run_id: int | None = None, project_id: int | None = None
) -> list[FlagRecord]:
    """Flags of one run (or all), most doubtful first within each run."""
    query = select(Flag.id)
    if run_id is not None:
        query = query.where(Flag.run_id == run_id)
    if project_id is not None:
        query = query.join(Task, Task.id == Flag.task_row_id).where(Task.project_id == project_id)
    ids = list(session.scalars(query.order_by(Flag.run_id, Flag.score.desc(), Flag.id)))
    return _records(session, ids)


def resolve_flags(session: Session, project_id: int) -> dict[str, int]:
    """Settle the project's pending pushed flags from the task rows and answers the sync just
    wrote (same transaction); returns how many ended each way."""
    now = datetime.now(UTC)
    pending = list(
        session.scalars(
            select(Flag)
            .join(Task, Task.id == Flag.task_row_id)
            .where(
                Task.project_id == project_id,
                Flag.resolution.is_(None),
                Flag.pushed_at.is_not(None),
            )
        )
    )
    counts: dict[str, int] = {}
    if not pending:
        return counts
    task_rows = [f.task_row_id for f in pending if f.task_row_id is not None]
    labels = dict(session.execute(select(Task.id, Task.label).where(Task.id.in_(task_rows))).all())
    answers = _answers(session, task_rows, live_answers_only=True)
    for flag in pending:
        assert flag.task_row_id is not None
        label = labels.get(flag.task_row_id)
        before = {tuple(a) for a in json.loads(flag.answers_json or "[]")}
        answered_again = any(tuple(a) not in before for a in answers.get(flag.task_row_id, []))
        outcome = _outcome(flag, label, answered_again)
        if outcome is None:
            continue
        flag.resolution = outcome
        flag.resolved_at = now
        counts[outcome] = counts.get(outcome, 0) + 1
    session.flush()
    return counts


def _outcome(flag: Flag, label: str | None, answered_again: bool) -> str | None:
    if label is None:
        return None  # requeued and not answered yet, or skipped
    if flag.current_label is None:
        return LABELED
    if label != flag.current_label:
        return RELABELED
    return CONFIRMED if answered_again else None


def flag_precision(session: Session, run_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
    """Run id -> (resolved, relabeled): flags judged by a later answer, and those that changed
    the label. Runs without any judged flag are absent."""
    ids = list(run_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(Flag.run_id, Flag.resolution, func.count())
        .where(Flag.run_id.in_(ids), Flag.resolution.in_(JUDGED))
        .group_by(Flag.run_id, Flag.resolution)
    )
    out: dict[int, tuple[int, int]] = {}
    for run_id, resolution, count in rows:
        if run_id is None:
            continue
        resolved, relabeled = out.get(run_id, (0, 0))
        out[run_id] = (resolved + count, relabeled + (count if resolution == RELABELED else 0))
    return out


def suppressed_counts(session: Session, run_ids: Iterable[int]) -> dict[int, int]:
    """Run id -> how many of its doubts were kept back because a person had confirmed them."""
    ids = list(run_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(Flag.run_id, func.count())
        .where(Flag.run_id.in_(ids), Flag.resolution == SUPPRESSED)
        .group_by(Flag.run_id)
    )
    return {int(run): int(n) for run, n in rows if run is not None}


def _answers(
    session: Session, task_rows: Sequence[int], *, live_answers_only: bool = False
) -> dict[int, list[list[object]]]:
    """Task row -> its annotation revisions as [annotation id, updated_at] (skips left out when
    `live_answers_only`: a skipped task was not looked at again in the sense that matters)."""
    out: dict[int, list[list[object]]] = {}
    for start in range(0, len(task_rows), 500):
        chunk = list(task_rows[start : start + 500])
        query = select(
            Annotation.task_row_id, Annotation.annotation_id, Annotation.remote_updated_at
        ).where(Annotation.task_row_id.in_(chunk))
        if live_answers_only:
            query = query.where(
                Annotation.deleted_at.is_(None), Annotation.was_cancelled.is_(False)
            )
        for task_row, annotation_id, updated in session.execute(query):
            out.setdefault(task_row, []).append([annotation_id, updated])
    return out


def _rows(session: Session, flag_ids: Iterable[int]) -> list[Flag]:
    ids = list(flag_ids)
    rows: list[Flag] = []
    for start in range(0, len(ids), 500):
        rows.extend(session.scalars(select(Flag).where(Flag.id.in_(ids[start : start + 500]))))
    return rows


def _records(session: Session, flag_ids: Sequence[int]) -> list[FlagRecord]:
    """Records in the order of `flag_ids`, with each task's ids and current label."""
    found: dict[int, FlagRecord] = {}
    for start in range(0, len(flag_ids), 500):
        chunk = list(flag_ids[start : start + 500])
        rows = session.execute(
            select(Flag, Task.project_id, Task.task_id, Task.label)
            .outerjoin(Task, Task.id == Flag.task_row_id)
            .where(Flag.id.in_(chunk))
        )
        for flag, project, task, label in rows:
            found[flag.id] = from_row(
                FlagRecord, flag, project_id=project, task_id=task, label_now=label
            )
    return [found[i] for i in flag_ids if i in found]
