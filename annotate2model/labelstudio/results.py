"""Label Studio result JSON for image classification, built and parsed in this one place.

An annotation or a prediction carries `result: [{from_name, to_name, type: "choices",
value: {choices: [label]}}]`; a prediction adds `model_version` and `score`. collect builds
annotations and predictions here, sync parses what the server answers here, and flag-back writes
its predictions through `prediction`. Pure: no I/O, no SDK.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from annotate2model.labelstudio.config import LabelingConfig

CHOICES = "choices"


def choice_result(config: LabelingConfig, label: str) -> list[dict[str, Any]]:
    """The `result` list that chooses `label` in the config's Choices control."""
    return [
        {
            "from_name": config.from_name,
            "to_name": config.to_name,
            "type": CHOICES,
            "value": {CHOICES: [label]},
        }
    ]


def annotation(config: LabelingConfig, label: str, *, ground_truth: bool = False) -> dict[str, Any]:
    """An annotation to import with a task.

    `ground_truth` is always sent: Label Studio makes an imported annotation ground truth unless
    the import says otherwise (tasks/serializers.py: `annotation.pop('ground_truth', True)`).
    """
    return {"result": choice_result(config, label), "ground_truth": ground_truth}


def prediction(
    config: LabelingConfig, label: str, *, model_version: str, score: float | None = None
) -> dict[str, Any]:
    """A prediction (to import with a task, or to POST for one) that suggests `label`.

    Label Studio's Data Manager sorts and filters on the prediction-level `score`.
    """
    out: dict[str, Any] = {"result": choice_result(config, label), "model_version": model_version}
    if score is not None:
        out["score"] = float(score)
    return out


@dataclass(frozen=True)
class Choice:
    """What one result list says for the config's Choices control."""

    # Every choice found for the control, in order (several only from a malformed result).
    choices: tuple[str, ...] = ()

    @property
    def label(self) -> str | None:
        """The chosen label; None when there is none or several."""
        return self.choices[0] if len(self.choices) == 1 else None

    @property
    def problem(self) -> str | None:
        if len(self.choices) > 1:
            return (
                "several choices (" + ", ".join(repr(c) for c in self.choices) + ") in one answer"
            )
        return None


def read_choice(result: object, from_name: str) -> Choice:
    """The choices a result list makes in control `from_name`; malformed parts are ignored."""
    if not isinstance(result, list):
        return Choice()
    found: list[str] = []
    for region in result:
        if not isinstance(region, Mapping) or region.get("from_name") != from_name:
            continue
        value = region.get("value")
        choices = value.get(CHOICES) if isinstance(value, Mapping) else None
        if not isinstance(choices, list):
            continue
        for choice in choices:
            if isinstance(choice, str | int | float) and not isinstance(choice, bool):
                text = str(choice)
                if text not in found:
                    found.append(text)
    return Choice(tuple(found))


@dataclass(frozen=True)
class ParsedAnnotation:
    """One annotation as Label Studio answers it, reduced to what a classifier needs."""

    annotation_id: int
    choice: Choice
    # The raw result, canonical JSON (kept as the annotation's history).
    result_json: str
    # A skipped task: Label Studio answers `result: []` and `was_cancelled: true`.
    was_cancelled: bool
    ground_truth: bool
    completed_by: int | None
    created_at: str | None
    # The annotation's own update time (its creation time when it was never updated).
    updated_at: str

    @property
    def label(self) -> str | None:
        return self.choice.label


def parse_annotation(raw: Mapping[str, Any], from_name: str) -> ParsedAnnotation:
    """An annotation of a task answer; `from_name` is the config's Choices control."""
    result = raw.get("result")
    result_list = result if isinstance(result, list) else []
    completed_by = raw.get("completed_by")
    if isinstance(completed_by, Mapping):
        completed_by = completed_by.get("id")
    created = str(raw.get("created_at") or "") or None
    return ParsedAnnotation(
        annotation_id=int(raw["id"]),
        choice=read_choice(result, from_name),
        result_json=json.dumps(result_list, sort_keys=True),
        was_cancelled=bool(raw.get("was_cancelled")),
        ground_truth=bool(raw.get("ground_truth")),
        completed_by=(
            completed_by
            if isinstance(completed_by, int) and not isinstance(completed_by, bool)
            else None
        ),
        created_at=created,
        updated_at=str(raw.get("updated_at") or created or ""),
    )
