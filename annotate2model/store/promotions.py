"""The decisions of `a2m serve --auto-train`: which self-trained run was served, which was not,
and why (models.Promotion)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from annotate2model.store.models import Promotion
from annotate2model.store.records import from_row


@dataclass(frozen=True)
class PromotionRecord:
    id: int
    version: int
    # The run trained (None: the training failed before a run was recorded).
    run: int | None
    # The run served when it was judged.
    served: int | None
    promoted: bool
    reason: str
    decided_at: datetime
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """ "served (over run 3)", or "not served: <reason>"."""
        if self.promoted:
            return "served" + (f" (over run {self.served})" if self.served is not None else "")
        return f"not served: {self.reason}"


def _record(row: Promotion) -> PromotionRecord:
    return from_row(
        PromotionRecord,
        row,
        run=row.run_id,
        served=row.served_run_id,
        details=json.loads(row.details_json or "{}"),
    )


def record_decision(
    session: Session,
    *,
    version: int,
    run: int | None,
    served: int | None,
    promoted: bool,
    reason: str,
    details: dict[str, Any] | None = None,
) -> PromotionRecord:
    row = Promotion(
        version=version,
        run_id=run,
        served_run_id=served,
        promoted=promoted,
        reason=reason,
        details_json=json.dumps(details or {}, sort_keys=True),
        decided_at=datetime.now(UTC),
    )
    session.add(row)
    session.flush()
    return _record(row)


def list_decisions(session: Session) -> list[PromotionRecord]:
    """Every decision, oldest first."""
    rows = session.scalars(select(Promotion).order_by(Promotion.id))
    return [_record(r) for r in rows]


def by_run(decisions: list[PromotionRecord]) -> dict[int, PromotionRecord]:
    """The newest decision about each run."""
    return {d.run: d for d in decisions if d.run is not None}


def last_promoted(decisions: list[PromotionRecord]) -> PromotionRecord | None:
    """The newest decision that served its run."""
    return next((d for d in reversed(decisions) if d.promoted), None)
