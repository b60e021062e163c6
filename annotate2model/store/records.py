"""Plain records the store hands to other packages (never ORM objects)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")


def from_row(cls: type[R], row: object, **given: Any) -> R:
    """A record of `cls` from a row (an ORM object or a result row) that has an attribute of the
    same name for each of its fields but those in `given` (renamed, read from JSON...)."""
    copied = {f.name: getattr(row, f.name) for f in fields(cls) if f.name not in given}
    return cls(**copied, **given)


@dataclass(frozen=True, order=True, slots=True)
class VersionItemRecord:
    """One row of a dataset version (slots: a version can hold millions)."""

    image_sha256: str
    label: str
    split: str


@dataclass(frozen=True)
class VersionRecord:
    number: int
    parent: int | None
    content_hash: str
    created_at: datetime
    note: str
    source: str
    item_count: int
    split_fractions: dict[str, float]


@dataclass(frozen=True)
class VersionSummary:
    """What `a2m show` prints: the version plus its class counts per split."""

    version: VersionRecord
    labels: list[str]
    # counts[label][split] = number of images.
    counts: dict[str, dict[str, int]]
    split_totals: dict[str, int]


@dataclass(frozen=True)
class RelabeledRow:
    image_sha256: str
    old_label: str
    new_label: str
    split: str


@dataclass(frozen=True)
class VersionDiff:
    old: int
    new: int
    added: list[VersionItemRecord] = field(default_factory=list)
    removed: list[VersionItemRecord] = field(default_factory=list)
    relabeled: list[RelabeledRow] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "added": len(self.added),
            "removed": len(self.removed),
            "relabeled": len(self.relabeled),
        }


@dataclass(frozen=True)
class NewVersion:
    """The outcome of asking for a version: the new one, or the unchanged latest."""

    version: VersionRecord
    created: bool
