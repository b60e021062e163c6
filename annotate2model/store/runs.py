"""The run ledger: a row per training or ensemble, its per-image predictions, plain records."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.orm import Session

from annotate2model.errors import InputError, NotFoundError
from annotate2model.processes import running, start_time
from annotate2model.store import dialect
from annotate2model.store.models import Evaluation, Prediction, Run
from annotate2model.store.records import from_row

if TYPE_CHECKING:
    from annotate2model.store.db import Store

STATUSES = ("running", "succeeded", "failed", "interrupted")


@dataclass(frozen=True)
class RunRecord:
    id: int
    version: int
    kind: str
    status: str
    config: dict[str, Any]
    device: str | None
    started_at: datetime
    ended_at: datetime | None
    wall_seconds: float | None
    images_per_second: float | None
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    error: str | None
    artifact_dir: str | None
    pid: int | None


@dataclass(frozen=True)
class PredictionRecord:
    image_sha256: str
    split: str
    label: str
    predicted: str
    confidence: float
    probs: list[float] = field(default_factory=list)


def _record(row: Run) -> RunRecord:
    return from_row(
        RunRecord,
        row,
        config=json.loads(row.config_json),
        history=json.loads(row.history_json or "[]"),
        metrics=json.loads(row.metrics_json or "{}"),
    )


def create_run(
    session: Session, version: int, kind: str, config: dict[str, Any], device: str | None
) -> RunRecord:
    row = Run(
        version=version,
        kind=kind,
        status="running",
        config_json=json.dumps(config, sort_keys=True),
        device=device,
        started_at=datetime.now(UTC),
        history_json="[]",
        metrics_json="{}",
        pid=os.getpid(),
        host=socket.gethostname(),
        process_started=start_time(os.getpid()),
    )
    session.add(row)
    session.flush()
    return _record(row)


def _row(session: Session, run_id: int) -> Run:
    row = session.get(Run, run_id)
    if row is None:
        raise NotFoundError(f"there is no run {run_id}.", hint="`a2m runs` lists them.")
    return row


def record_history(session: Session, run_id: int, history: list[dict[str, Any]]) -> None:
    _row(session, run_id).history_json = json.dumps(history)


def finish_run(
    session: Session,
    run_id: int,
    status: str,
    *,
    metrics: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    images_per_second: float | None = None,
    artifact_dir: str | None = None,
    error: str | None = None,
) -> RunRecord:
    """Close a run with its final status; wall time is measured from its start."""
    if status not in STATUSES or status == "running":
        raise InputError(f"cannot finish a run as {status!r}.")
    row = _row(session, run_id)
    now = datetime.now(UTC)
    row.status = status
    row.ended_at = now
    row.wall_seconds = (now - row.started_at).total_seconds()
    row.pid = None
    row.process_started = None
    if metrics is not None:
        row.metrics_json = json.dumps(metrics)
    if history is not None:
        row.history_json = json.dumps(history)
    if images_per_second is not None:
        row.images_per_second = images_per_second
    if artifact_dir is not None:
        row.artifact_dir = artifact_dir
    row.error = error
    session.flush()
    return _record(row)


def hold_run_lock(session: Session, run_id: int) -> Connection | None:
    """Take run `run_id`'s liveness lock before `session` (the write that creates the row)
    commits, so that no reader ever sees the row without it (PostgreSQL; None on SQLite, where
    the pid and host judge). Give it back with `release_run_lock` once the row is closed."""
    return dialect.hold_liveness_lock(session, run_id)


def release_run_lock(conn: Connection | None, run_id: int) -> None:
    dialect.release_liveness_lock(conn, run_id)


def dead_runs(session: Session, *, local_store: bool) -> list[int]:
    """`running` rows whose training process is gone: killed -9, the machine restarted.

    PostgreSQL (a store several machines share): a run is dead when no process holds its
    liveness lock (`hold_run_lock`), whichever host it ran on.

    SQLite: a run is judged only on the host it runs on; there, its process is gone when no
    process has its pid, or the one that has it started at another time (the pid was reused). A
    row from before hosts were recorded is judged by its pid alone, and only in a store that
    lives on this machine (`local_store`); another host's run is left as it is.
    """
    rows = session.execute(
        select(Run.id, Run.pid, Run.host, Run.process_started).where(Run.status == "running")
    ).all()
    if dialect.has_liveness_locks(session):
        return [run_id for run_id, *_ in rows if dialect.liveness_lock_free(session, run_id)]
    here = socket.gethostname()
    dead = []
    for run_id, pid, host, started in rows:
        if pid is None or (host is None and not local_store) or (host not in (None, here)):
            continue
        if running(pid, started) is False:  # None: another user's process, which may be ours
            dead.append(run_id)
    return dead


def close_dead_runs(session: Session, *, local_store: bool = True) -> list[int]:
    """Mark the rows of `dead_runs` as failed, with the reason."""
    closed = dead_runs(session, local_store=local_store)
    for row in session.scalars(select(Run).where(Run.id.in_(closed))):
        row.status = "failed"
        row.ended_at = datetime.now(UTC)
        row.error = (
            f"the training process (pid {row.pid}"
            + (f" on {row.host}" if row.host and row.host != socket.gethostname() else "")
            + ") ended without closing the run"
        )
        row.pid = None
        row.process_started = None
    session.flush()
    return closed


def close_dead(store: Store) -> list[int]:
    """`close_dead_runs` in its own write, taken only when a read found a dead run (every command
    that opens the store calls this: a killed training shows as failed at once)."""
    local = store.settings.database_url.startswith("sqlite")
    with store.read() as session:
        if not dead_runs(session, local_store=local):
            return []
    with store.write() as session:
        return close_dead_runs(session, local_store=local)


def get_run(session: Session, run_id: int | str) -> RunRecord:
    try:
        number = int(str(run_id).lstrip("#"))
    except ValueError:
        raise InputError(
            f"{run_id!r} is not a run id (a number).", hint="`a2m runs` lists them."
        ) from None
    return _record(_row(session, number))


def list_runs(session: Session, version: int | None = None) -> list[RunRecord]:
    query = select(Run).order_by(Run.id)
    if version is not None:
        query = query.where(Run.version == version)
    return [_record(r) for r in session.scalars(query)]


def delete_unfinished(
    session: Session, statuses: Sequence[str] = ("failed", "interrupted")
) -> list[RunRecord]:
    """Delete runs that ended without a model (failed, interrupted) and their rows; the records
    of what was deleted are returned (the caller removes any folder they left)."""
    from annotate2model.store.models import Flag

    wanted = [s for s in statuses if s in ("failed", "interrupted")]
    rows = list(session.scalars(select(Run).where(Run.status.in_(wanted)).order_by(Run.id)))
    flagged = set(session.scalars(select(Flag.run_id).where(Flag.run_id.in_([r.id for r in rows]))))
    gone = [r for r in rows if r.id not in flagged]
    ids = [r.id for r in gone]
    if ids:
        session.execute(delete(Prediction).where(Prediction.run_id.in_(ids)))
        session.execute(delete(Evaluation).where(Evaluation.run_id.in_(ids)))
        session.execute(delete(Run).where(Run.id.in_(ids)))
    return [_record(r) for r in gone]


def write_predictions(
    session: Session, run_id: int, version: int, rows: Sequence[PredictionRecord]
) -> None:
    """Replace the run's predictions for the given (version, splits) with `rows`."""
    splits = sorted({r.split for r in rows})
    if splits:
        session.execute(
            delete(Prediction).where(
                Prediction.run_id == run_id,
                Prediction.version == version,
                Prediction.split.in_(splits),
            )
        )
    _insert_predictions(session, run_id, version, rows)


def _insert_predictions(
    session: Session, run_id: int, version: int, rows: Sequence[PredictionRecord]
) -> None:
    if rows:
        session.execute(
            insert(Prediction),
            [
                {
                    "run_id": run_id,
                    "version": version,
                    "image_sha256": r.image_sha256,
                    "split": r.split,
                    "label": r.label,
                    "predicted": r.predicted,
                    "confidence": r.confidence,
                    "probs_json": json.dumps([round(p, 6) for p in r.probs]),
                }
                for r in rows
            ],
        )


def add_predictions(
    session: Session, run_id: int, version: int, rows: Sequence[PredictionRecord]
) -> None:
    """Insert or replace the run's predictions of these images only (a comparison's images are a
    subset of a split: the split's other rows stay)."""
    shas = [r.image_sha256 for r in rows]
    for start in range(0, len(shas), 500):
        session.execute(
            delete(Prediction).where(
                Prediction.run_id == run_id,
                Prediction.version == version,
                Prediction.image_sha256.in_(shas[start : start + 500]),
            )
        )
    _insert_predictions(session, run_id, version, rows)


def read_predictions(
    session: Session, run_id: int, version: int | None = None, split: str | None = None
) -> list[PredictionRecord]:
    query = select(Prediction).where(Prediction.run_id == run_id)
    if version is not None:
        query = query.where(Prediction.version == version)
    if split is not None:
        query = query.where(Prediction.split == split)
    return [
        from_row(PredictionRecord, p, probs=json.loads(p.probs_json))
        for p in session.scalars(query.order_by(Prediction.split, Prediction.image_sha256))
    ]


# Evaluations: a run judged on a named set of images, kept so that judgements can be compared.


@dataclass(frozen=True)
class EvaluationRecord:
    id: int
    run_id: int
    version: int
    split: str
    n: int
    images_hash: str
    accuracy: float | None
    macro_f1: float | None
    metrics: dict[str, Any]
    source: str
    created_at: datetime


def images_hash(shas: Iterable[str]) -> str:
    """SHA-256 over the sorted image hashes: two judgements on equal hashes saw the same images."""
    digest = hashlib.sha256()
    for sha in sorted(set(shas)):
        digest.update(sha.encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


def record_evaluation(
    session: Session,
    run_id: int,
    version: int,
    split: str,
    shas: Sequence[str],
    metrics: dict[str, Any],
    source: str,
) -> EvaluationRecord:
    _row(session, run_id)
    digest = images_hash(shas)
    # The same judgement again (same run, images and result) is not a new fact: keep the first.
    for earlier in session.scalars(
        select(Evaluation).where(
            Evaluation.run_id == run_id,
            Evaluation.version == version,
            Evaluation.split == split,
            Evaluation.images_hash == digest,
            Evaluation.source == source,
        )
    ):
        if earlier.accuracy == metrics.get("accuracy") and earlier.macro_f1 == metrics.get(
            "macro_f1"
        ):
            return _evaluation(earlier)
    row = Evaluation(
        run_id=run_id,
        version=version,
        split=split,
        n=len(shas),
        images_hash=digest,
        accuracy=metrics.get("accuracy"),
        macro_f1=metrics.get("macro_f1"),
        metrics_json=json.dumps(metrics),
        source=source,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    session.flush()
    return _evaluation(row)


def _evaluation(row: Evaluation) -> EvaluationRecord:
    return from_row(EvaluationRecord, row, metrics=json.loads(row.metrics_json))


def list_evaluations(session: Session, run_id: int | None = None) -> list[EvaluationRecord]:
    query = select(Evaluation).order_by(Evaluation.id)
    if run_id is not None:
        query = query.where(Evaluation.run_id == run_id)
    return [_evaluation(r) for r in session.scalars(query)]
