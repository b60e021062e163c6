"""A version's rows as a run sees them: grouped by split, with the label map, checked for
trainability."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from annotate2model.errors import TrainingError
from annotate2model.store import Store
from annotate2model.store import versions as store_versions
from annotate2model.store.records import VersionItemRecord, VersionRecord


@dataclass(frozen=True)
class VersionData:
    """A version's rows grouped by split, with the label map (sorted labels)."""

    version: VersionRecord
    labels: list[str]
    splits: dict[str, list[VersionItemRecord]]

    def targets(self, split: str) -> list[int]:
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[item.label] for item in self.splits[split]]

    def with_splits(self, splits: dict[str, list[VersionItemRecord]]) -> VersionData:
        """The same version and label map over other rows (the images left after skipping)."""
        return VersionData(version=self.version, labels=self.labels, splits=splits)


def load_version_data(store: Store, ref: int | str | None) -> VersionData:
    with store.read() as session:
        version = store_versions.get_version(session, ref)
        items = store_versions.version_items(session, version.number)
    splits: dict[str, list[VersionItemRecord]] = {"train": [], "val": [], "test": []}
    for item in items:
        splits.setdefault(item.split, []).append(item)
    labels = sorted({item.label for item in items})
    return VersionData(version=version, labels=labels, splits=splits)


def check_trainable(data: VersionData) -> None:
    """One clear message for each version that cannot train a classifier."""
    v = data.version.number
    if len(data.labels) < 2:
        found = f"only {data.labels[0]!r}" if data.labels else "none"
        raise TrainingError(
            f"version {v} has {len(data.labels)} class ({found}); a classifier needs at least two."
        )
    for split in ("train", "val"):
        if not data.splits[split]:
            raise TrainingError(
                f"the {split} split of version {v} is empty; add images or change the split "
                "fractions in a2m.toml."
            )
    counts = Counter(item.label for item in data.splits["train"])
    empty = [label for label in data.labels if counts[label] == 0]
    if empty:
        raise TrainingError(
            f"class {', '.join(repr(e) for e in empty)} of version {v} has no training images; "
            "add some or remove the class."
        )
