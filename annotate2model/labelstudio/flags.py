"""Flags in Label Studio: what `a2m flag` puts on a task, and what `a2m unflag` takes off again.

For a run, each flagged task gets
- a prediction with model version `a2m-run-<id>`, the suggested choice and the flag's score
  (the Data Manager sorts and filters on it), created for all tasks in one bulk request;
- a review note in its data under `a2m_review_run_<id>` (reason, run, suggested label, score):
  a column in the Data Manager, and what the run's tab filters on;
- a place in the saved Data Manager tab `a2m run <id>`, whose one filter is "the review field is
  not empty": it lists exactly the run's flagged tasks, and `/next?view=` obeys it;
- with `requeue`, its annotation converted to a draft: the task is unlabeled again, so it comes
  back in the labeling queue with the old answer pre-filled. No annotation is ever deleted.

Every step reads the tasks' current state first and only adds what is missing, so pushing twice,
or again after Label Studio died halfway, leaves one prediction, one field and one tab per task.
Unflag removes the run's predictions, its field and its tab, and turns a requeued draft that
nobody answered back into an annotation. Per-task requests run on a few threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.config import LabelingConfig, parse_label_config
from annotate2model.labelstudio.results import prediction
from annotate2model.progress import NullProgress, Progress

# Concurrent per-task requests (PATCH, convert, delete): Label Studio answers each in ~40 ms.
WORKERS = 8
# Predictions per bulk import request.
PREDICTION_CHUNK = 500

T = TypeVar("T")


def model_version(run_id: int) -> str:
    return f"a2m-run-{run_id}"


def review_field(run_id: int) -> str:
    return f"a2m_review_run_{run_id}"


def tab_title(run_id: int) -> str:
    return f"a2m run {run_id}"


def review_note(reason: str, run_id: int, suggested: str | None, score: float) -> str:
    """The text of the review field: what the run doubts, in one line."""
    suggestion = f", suggested {suggested}" if suggested else ""
    return f"{reason} (run {run_id}{suggestion}, score {score:.2f})"


@dataclass(frozen=True)
class PushItem:
    """One flag to put on one task."""

    flag_id: int
    task_id: int
    reason: str
    score: float
    suggested_label: str | None


@dataclass
class PushResult:
    """What a push did; filled in as it goes, so a push that fails halfway still tells what is
    in Label Studio (the caller records it before reporting the error)."""

    view_id: int | None = None
    predictions_added: int = 0
    fields_written: int = 0
    # Flag id -> (annotation id, draft id) of each requeued task (annotation id 0: unknown,
    # requeued by an earlier push that was cut short).
    requeued: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Flags whose task no longer exists in Label Studio.
    missing: list[int] = field(default_factory=list)
    # Flags that are wholly in Label Studio (prediction, field, and tab).
    done: list[int] = field(default_factory=list)
    seconds: float = 0.0


def push_flags(
    client: LabelStudioClient,
    project_id: int,
    run_id: int,
    items: Sequence[PushItem],
    *,
    requeue: bool = False,
    result: PushResult | None = None,
    progress: Progress | None = None,
    workers: int = WORKERS,
) -> PushResult:
    """Put the run's flags on their tasks (see the module docstring); idempotent."""
    started = time.monotonic()
    out = result if result is not None else PushResult()
    progress = progress or NullProgress()
    lock = threading.Lock()
    config = _config(client, project_id)
    version, key = model_version(run_id), review_field(run_id)
    tasks = _read_tasks(client, project_id, [i.task_id for i in items], progress)
    present = [i for i in items if i.task_id in tasks]
    out.missing = [i.flag_id for i in items if i.task_id not in tasks]

    # 1. Predictions: one bulk import of those the tasks do not hold yet.
    wanted = [
        {
            "task": i.task_id,
            **prediction(config, i.suggested_label, model_version=version, score=i.score),
        }
        for i in present
        if i.suggested_label is not None
        and i.suggested_label in config.labels
        and not _predictions_of(tasks[i.task_id], version)
    ]
    progress.begin("Adding predictions", total=len(wanted))
    for start in range(0, len(wanted), PREDICTION_CHUNK):
        chunk = wanted[start : start + PREDICTION_CHUNK]
        client.json(
            "POST",
            f"/api/projects/{project_id}/import/predictions",
            f"add the predictions of run {run_id}",
            json=chunk,
        )
        out.predictions_added += len(chunk)
        progress.advance(len(chunk))
    progress.end()

    # 2. The review field, on tasks whose data does not say it already.
    def write_field(item: PushItem) -> None:
        data = dict(tasks[item.task_id].get("data") or {})
        note = review_note(item.reason, run_id, item.suggested_label, item.score)
        if data.get(key) == note:
            return
        data[key] = note
        _patch_data(client, item.task_id, data)
        with lock:
            out.fields_written += 1

    _each(present, write_field, "Writing review fields", progress, workers)

    # 3. The tab listing exactly the tasks that carry the field.
    out.view_id = ensure_tab(client, project_id, run_id)

    # 4. Requeue: annotations become drafts (their answer pre-filled for the annotator).
    if requeue:

        def convert(item: PushItem) -> None:
            task = tasks[item.task_id]
            answers = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
            if not answers:
                drafts = task.get("drafts") or []
                if drafts:  # an earlier push converted it and was cut short before recording
                    with lock:
                        out.requeued[item.flag_id] = (0, int(drafts[-1]["id"]))
                return
            latest = max(answers, key=lambda a: str(a.get("updated_at") or ""))
            draft = client.json(
                "POST",
                f"/api/annotations/{int(latest['id'])}/convert-to-draft",
                f"requeue task {item.task_id}",
            )
            with lock:
                out.requeued[item.flag_id] = (int(latest["id"]), int(draft["id"]))

        _each(present, convert, "Requeueing", progress, workers)
    out.done = [i.flag_id for i in present]
    out.seconds = time.monotonic() - started
    return out


def ensure_tab(client: LabelStudioClient, project_id: int, run_id: int) -> int:
    """The run's Data Manager tab (created once; its filter set again if someone changed it)."""
    data = {
        "title": tab_title(run_id),
        "filters": {
            "conjunction": "and",
            "items": [
                {
                    "filter": f"filter:tasks:data.{review_field(run_id)}",
                    "operator": "empty",
                    "type": "String",
                    "value": False,
                }
            ],
        },
        "ordering": ["-tasks:predictions_score"],
    }
    existing = find_tab(client, project_id, run_id)
    if existing is None:
        made = client.json(
            "POST",
            "/api/dm/views",
            f"create the tab of run {run_id}",
            json={"project": project_id, "data": data},
        )
        return int(made["id"])
    view_id, current = existing
    if current.get("filters") != data["filters"]:
        client.json(
            "PATCH",
            f"/api/dm/views/{view_id}",
            f"update the tab of run {run_id}",
            json={"project": project_id, "data": {**current, **data}},
        )
    return view_id


def find_tab(
    client: LabelStudioClient, project_id: int, run_id: int
) -> tuple[int, dict[str, Any]] | None:
    views = client.json(
        "GET", "/api/dm/views", "list the Data Manager tabs", params={"project": project_id}
    )
    for view in views or []:
        data = view.get("data") or {}
        if data.get("title") == tab_title(run_id):
            return int(view["id"]), dict(data)
    return None


@dataclass
class UnflagResult:
    predictions_removed: int = 0
    fields_removed: int = 0
    drafts_restored: int = 0
    tab_removed: bool = False
    # Flag ids whose requeued draft became an annotation again.
    restored: list[int] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class UnflagItem:
    flag_id: int
    task_id: int
    # The draft a requeue made (None: not requeued).
    draft_id: int | None


def unflag_tasks(
    client: LabelStudioClient,
    project_id: int,
    run_id: int,
    items: Sequence[UnflagItem],
    *,
    progress: Progress | None = None,
    workers: int = WORKERS,
) -> UnflagResult:
    """Take the run's predictions, review field and tab off the tasks; a requeued draft that was
    not answered becomes an annotation again (its result as it is now). Idempotent."""
    started = time.monotonic()
    out = UnflagResult()
    progress = progress or NullProgress()
    lock = threading.Lock()
    version, key = model_version(run_id), review_field(run_id)
    tasks = _read_tasks(client, project_id, [i.task_id for i in items], progress)
    present = [i for i in items if i.task_id in tasks]

    def clean(item: UnflagItem) -> None:
        task = tasks[item.task_id]
        for pred in _predictions_of(task, version):
            response = client.request("DELETE", f"/api/predictions/{int(pred['id'])}/")
            if response.status_code not in (204, 404):
                client.json("DELETE", f"/api/predictions/{int(pred['id'])}/", "remove a prediction")
            with lock:
                out.predictions_removed += 1
        data = dict(task.get("data") or {})
        if key in data:
            del data[key]
            _patch_data(client, item.task_id, data)
            with lock:
                out.fields_removed += 1
        if item.draft_id is not None and not task.get("annotations"):
            draft = next(
                (d for d in task.get("drafts") or [] if int(d["id"]) == item.draft_id), None
            )
            if draft is not None:
                client.json(
                    "POST",
                    f"/api/tasks/{item.task_id}/annotations",
                    f"restore the annotation of task {item.task_id}",
                    json={
                        "result": draft.get("result") or [],
                        "draft_id": item.draft_id,
                        "was_cancelled": False,
                        "ground_truth": False,
                    },
                )
                with lock:
                    out.drafts_restored += 1
                    out.restored.append(item.flag_id)

    _each(present, clean, "Removing flags", progress, workers)
    tab = find_tab(client, project_id, run_id)
    if tab is not None:
        response = client.request("DELETE", f"/api/dm/views/{tab[0]}")
        if response.status_code not in (204, 404):
            client.json("DELETE", f"/api/dm/views/{tab[0]}", f"remove the tab of run {run_id}")
        out.tab_removed = True
    out.seconds = time.monotonic() - started
    return out


# -- helpers ------------------------------------------------------------------------------------


def _config(client: LabelStudioClient, project_id: int) -> LabelingConfig:
    project = client.project(project_id)
    return parse_label_config(project.label_config, project_id)


def _read_tasks(
    client: LabelStudioClient, project_id: int, task_ids: Iterable[int], progress: Progress
) -> dict[int, dict[str, Any]]:
    """The tasks in full (data, annotations, drafts, predictions); deleted ones are absent."""
    wanted = sorted(set(task_ids))
    progress.begin("Reading the flagged tasks", total=len(wanted))
    tasks: dict[int, dict[str, Any]] = {}
    for page in client.tasks_by_id(project_id, wanted):
        for task in page:
            tasks[int(task["id"])] = task
        progress.advance(len(page))
    progress.end()
    return tasks


def _predictions_of(task: dict[str, Any], version: str) -> list[dict[str, Any]]:
    return [p for p in task.get("predictions") or [] if p.get("model_version") == version]


def _patch_data(client: LabelStudioClient, task_id: int, data: dict[str, Any]) -> None:
    response = client.request("PATCH", f"/api/tasks/{task_id}", json={"data": data})
    if response.status_code == 404:
        return  # deleted meanwhile: nothing of ours is left on it
    if response.status_code >= 400:
        raise LabelStudioError(
            f"Label Studio at {client.url} refused to update task {task_id}: HTTP "
            f"{response.status_code}."
        )


def _each(
    items: Sequence[T],
    work: Callable[[T], None],
    what: str,
    progress: Progress,
    workers: int,
) -> None:
    """`work` on every item on a few threads; the first failure stops the rest and is raised."""
    progress.begin(what, total=len(items))
    if not items:
        progress.end()
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            for future in futures:
                future.result()
                progress.advance()
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            progress.end()
