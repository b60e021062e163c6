"""Label Studio tasks in the store: current task rows, annotation history, the sync watermark.

`labelstudio/sync.py` reads the current state with `load_tasks` / `load_sync_state`, works out
what changed, and hands everything back to `save_sync` inside the same write transaction that
creates the dataset version, so a killed sync leaves either the old state or the whole new one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from annotate2model.store.dialect import insert_or_ignore
from annotate2model.store.models import Annotation, SyncState, Task
from annotate2model.store.records import from_row


@dataclass(frozen=True)
class AnnotationRecord:
    """One revision of one Label Studio annotation."""

    annotation_id: int
    label: str | None
    result_json: str
    was_cancelled: bool
    ground_truth: bool
    completed_by: int | None
    remote_created_at: str | None
    remote_updated_at: str


@dataclass(frozen=True)
class TaskRecord:
    """A task as the store holds it (and as a sync wants it to be)."""

    task_id: int
    image_url: str | None
    image_sha256: str | None
    remote_updated_at: str | None
    label: str | None
    problem: str | None
    deleted: bool = False


@dataclass(frozen=True)
class SyncStateRecord:
    project_id: int
    watermark: str | None
    last_synced_at: datetime | None
    last_version: int | None
    labels: list[str] | None
    # The label policy of the last sync: a different one re-resolves every task.
    policy: str | None = None


def load_tasks(session: Session, project_id: int) -> dict[int, TaskRecord]:
    """Every task row of a project (deleted ones too), by Label Studio task id."""
    rows = session.execute(
        select(
            Task.task_id,
            Task.image_url,
            Task.image_sha256,
            Task.remote_updated_at,
            Task.label,
            Task.problem,
            Task.deleted_at,
        ).where(Task.project_id == project_id)
    )
    return {r.task_id: from_row(TaskRecord, r, deleted=r.deleted_at is not None) for r in rows}


def load_sync_state(session: Session, project_id: int) -> SyncStateRecord | None:
    row = session.get(SyncState, project_id)
    if row is None:
        return None
    saved = json.loads(row.labels_json) if row.labels_json else None
    if isinstance(saved, dict):
        labels, policy = saved.get("labels"), saved.get("policy")
    else:
        labels, policy = saved, None
    return SyncStateRecord(
        project_id=row.project_id,
        watermark=row.watermark,
        last_synced_at=row.last_synced_at,
        last_version=row.last_version,
        labels=labels,
        policy=policy,
    )


def project_image_hashes(session: Session, project_id: int) -> set[str]:
    """SHA-256 of every image a live task of the project points at (as of the last sync)."""
    rows = session.scalars(
        select(Task.image_sha256).where(
            Task.project_id == project_id,
            Task.deleted_at.is_(None),
            Task.image_sha256.is_not(None),
        )
    )
    return {sha for sha in rows if sha}


def save_sync(
    session: Session,
    project_id: int,
    tasks: Iterable[TaskRecord],
    annotations: dict[int, list[AnnotationRecord]],
    *,
    watermark: str | None,
    labels: list[str],
    policy: str,
    version: int | None,
) -> None:
    """Upsert changed task rows, append annotation revisions, and move the watermark.

    `tasks` holds only rows that differ from the stored ones; `annotations` maps the task ids that
    were fetched to their current annotations (an annotation missing there is marked deleted).
    """
    now = datetime.now(UTC)
    existing = dict(
        session.execute(select(Task.task_id, Task.id).where(Task.project_id == project_id)).all()
    )
    new_rows: list[dict[str, object]] = []
    changed_rows: list[dict[str, object]] = []
    for t in tasks:
        values: dict[str, object] = {
            "image_url": t.image_url,
            "image_sha256": t.image_sha256,
            "remote_updated_at": t.remote_updated_at,
            "label": t.label,
            "problem": t.problem,
            "synced_at": now,
        }
        row_id = existing.get(t.task_id)
        if row_id is None:
            new_rows.append(
                {
                    "project_id": project_id,
                    "task_id": t.task_id,
                    "deleted_at": now if t.deleted else None,
                    **values,
                }
            )
        else:
            changed_rows.append({"id": row_id, **values})
            # Keep the first deletion time; clear it if the task came back.
            if not t.deleted:
                changed_rows[-1]["deleted_at"] = None
            else:
                session.execute(
                    update(Task)
                    .where(Task.id == row_id, Task.deleted_at.is_(None))
                    .values(deleted_at=now)
                )
    if new_rows:
        session.execute(insert(Task), new_rows)
    if changed_rows:
        # Bulk UPDATE by primary key; rows differ in which keys they carry, so group by shape.
        shapes: dict[tuple[str, ...], list[dict[str, object]]] = {}
        for row in changed_rows:
            shapes.setdefault(tuple(sorted(row)), []).append(row)
        for rows in shapes.values():
            session.execute(update(Task), rows)
    if annotations:
        _save_annotations(session, project_id, annotations, now)
    state = session.get(SyncState, project_id)
    if state is None:
        state = SyncState(project_id=project_id)
        session.add(state)
    state.watermark = watermark
    state.last_synced_at = now
    if version is not None:
        state.last_version = version
    state.labels_json = json.dumps({"labels": labels, "policy": policy})


def _save_annotations(
    session: Session,
    project_id: int,
    annotations: dict[int, list[AnnotationRecord]],
    now: datetime,
) -> None:
    row_ids = dict(
        session.execute(
            select(Task.task_id, Task.id).where(
                Task.project_id == project_id, Task.task_id.in_(list(annotations))
            )
        ).all()
    )
    rows = [
        {**asdict(a), "project_id": project_id, "task_row_id": row_ids[task_id], "seen_at": now}
        for task_id, items in annotations.items()
        for a in items
        if task_id in row_ids
    ]
    insert_or_ignore(session, Annotation, rows)
    live = {(row_ids[t], a.annotation_id) for t, items in annotations.items() for a in items}
    fetched_rows = [row_ids[t] for t in annotations if t in row_ids]
    for start in range(0, len(fetched_rows), 500):
        chunk = fetched_rows[start : start + 500]
        stored = session.execute(
            select(Annotation.id, Annotation.task_row_id, Annotation.annotation_id).where(
                Annotation.task_row_id.in_(chunk), Annotation.deleted_at.is_(None)
            )
        )
        gone = [r.id for r in stored if (r.task_row_id, r.annotation_id) not in live]
        if gone:
            session.execute(
                update(Annotation).where(Annotation.id.in_(gone)).values(deleted_at=now)
            )
