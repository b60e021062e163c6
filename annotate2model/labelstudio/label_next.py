"""The standing Data Manager tab "a2m: label next": the unlabeled tasks in the order that a label
would teach the model most (review/ordering.py), each with the model's guess pre-filled.

How it is made in Label Studio Community (checked against 1.23.2 in
tests/labelstudio/test_ls_label_next.py):

- each ordered task gets one prediction: the model's guess as the choice, with model version
  `a2m-review`, the one model version every a2m prediction carries, and a `score` that encodes the
  place in the order (the first of n tasks 1.0, the last 1/n). Label Studio shows (on the
  labeling screen) and sorts (the score column) only the predictions of the project's model
  version, so label-next and the review tab share it: a second version would hide one of them;
- the tab filters to tasks without annotations, with a score, and not waiting in the review tab
  (`a2m_reason` empty: a flagged task is shown there, with its own prediction), and orders by
  score, highest first. The labeling stream opened from the tab (`/api/projects/ID/next?view=`)
  follows the tab's filters and order;
- a refresh replaces the predictions of the last one (those of version `a2m-review` on tasks the
  review tab does not hold), so predictions never pile up, and updates the tab in place.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.flags import (
    IN_REVIEW,
    REVIEW_VERSION,
    _config,
    _import_predictions,
    _predictions,
    _remove_review_predictions,
    _use_review_version,
    ensure_view,
    hidden_columns,
)
from annotate2model.labelstudio.results import prediction
from annotate2model.progress import NullProgress, Progress

NEXT_TAB = "a2m: label next"


@dataclass(frozen=True)
class NextItem:
    """One task in the order: its place (0 first) and the model's guess."""

    task_id: int
    rank: int
    guess: str


@dataclass
class NextPush:
    view_id: int | None = None
    predictions_added: int = 0
    # Predictions of an earlier label-next that were replaced (or whose task left the order).
    predictions_removed: int = 0
    seconds: float = 0.0


def rank_score(rank: int, total: int) -> float:
    """The score that puts place `rank` (0 first) of `total` in order: 1.0 down to 1/total."""
    return round(1.0 - rank / max(total, 1), 6)


def review_held(client: LabelStudioClient, project_id: int) -> set[int]:
    """The tasks that wait in the review tab (a review reason set): not label-next's to touch."""
    pages = client.task_pages(project_id, include="id", page_size=1000, filters=[IN_REVIEW])
    return {int(t["id"]) for _total, page in pages for t in page}


def push_next(
    client: LabelStudioClient,
    project_id: int,
    items: Sequence[NextItem],
    *,
    progress: Progress | None = None,
) -> NextPush:
    """Replace label-next's predictions with `items`' and make sure of the tab; idempotent."""
    started = time.monotonic()
    progress = progress or NullProgress()
    out = NextPush()
    config = _config(client, project_id)
    held = review_held(client, project_id)
    # 1. The last order's predictions go: a2m's on every task the review tab does not hold.
    old = sorted(
        {task for task, _pid, _v in _predictions(client, project_id, REVIEW_VERSION)} - held
    )
    if old:
        progress.begin("Removing the last order's predictions")
        out.predictions_removed = _remove_review_predictions(client, project_id, old, progress)
        progress.end()
    # 2. The new ones, in bulk.
    total = len(items)
    rows = [
        {
            "task": i.task_id,
            **prediction(
                config, i.guess, model_version=REVIEW_VERSION, score=rank_score(i.rank, total)
            ),
        }
        for i in items
        if i.task_id not in held and i.guess in config.labels
    ]
    progress.begin("Adding predictions", total=len(rows))
    out.predictions_added = _import_predictions(
        client, project_id, rows, "add the label-next predictions", progress
    )
    progress.end()
    # 3. The tab, and the project's model version that makes the scores count.
    out.view_id = ensure_next_tab(client, project_id, config.image_field)
    if rows:
        _use_review_version(client, project_id)
    out.seconds = time.monotonic() - started
    return out


def next_tab_data(image_field: str, hidden: Sequence[str] = ()) -> dict[str, Any]:
    """The tab's filters, order and columns."""
    return {
        "title": NEXT_TAB,
        "type": "list",
        "target": "tasks",
        "filters": {
            "conjunction": "and",
            "items": [
                {
                    "filter": "filter:tasks:total_annotations",
                    "operator": "equal",
                    "type": "Number",
                    "value": 0,
                },
                {
                    "filter": "filter:tasks:predictions_score",
                    "operator": "empty",
                    "type": "Number",
                    "value": False,
                },
                {**IN_REVIEW, "value": True},  # not waiting in the review tab
            ],
        },
        "ordering": ["-tasks:predictions_score"],
        "hiddenColumns": {"explore": list(hidden), "labeling": list(hidden)},
    }


def ensure_next_tab(client: LabelStudioClient, project_id: int, image_field: str) -> int:
    """The project's label-next tab, made once; its filters, order and columns set again when
    someone changed them. Shows the id, the image, the score and the model's guess."""
    shown = [
        "tasks:id",
        f"tasks:data.{image_field}",
        "tasks:predictions_score",
        "tasks:predictions_results",
    ]
    data = next_tab_data(image_field, hidden_columns(client, project_id, shown))
    return ensure_view(client, project_id, data, "the label-next tab")
