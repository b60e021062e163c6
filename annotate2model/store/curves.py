"""Learning curves kept for reports: one row per `a2m curve`, points as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from annotate2model.store.models import Curve
from annotate2model.store.records import from_row


@dataclass(frozen=True)
class CurveRecord:
    id: int
    version: int
    config: dict[str, Any]
    test_n: int
    images_hash: str
    # What the curve module wrote: the points, the test set's description, the verdict.
    payload: dict[str, Any]
    seconds: float | None
    created_at: datetime


def save_curve(
    session: Session,
    version: int,
    config: dict[str, Any],
    test_n: int,
    images_hash: str,
    payload: dict[str, Any],
    seconds: float | None,
) -> int:
    row = Curve(
        version=version,
        config_json=json.dumps(config, sort_keys=True),
        test_n=test_n,
        images_hash=images_hash,
        points_json=json.dumps(payload),
        seconds=seconds,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    session.flush()
    return row.id


def latest_curve(session: Session, version: int) -> CurveRecord | None:
    row = session.scalars(
        select(Curve).where(Curve.version == version).order_by(Curve.id.desc())
    ).first()
    if row is None:
        return None
    return from_row(
        CurveRecord, row, config=json.loads(row.config_json), payload=json.loads(row.points_json)
    )
