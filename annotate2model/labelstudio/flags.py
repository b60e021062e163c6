"""Flags in Label Studio: what `a2m flag` puts on a task, and what `a2m unflag` takes off again.

For a run, each flagged task gets
- a prediction with model version `a2m-run-<id>`, the suggested choice and the flag's score
  (the Data Manager sorts and filters on it), created for all tasks in one bulk request;
- a review note in its data under `a2m_review_run_<id>` (reason, run, suggested label): a column
  in the Data Manager and what the run's tab filters on, set with Label Studio's "add data field"
  Data Manager action, one request per distinct note (a PATCH per task costs its server ~0.3 s);
- a place in the saved Data Manager tab `a2m run <id>`, whose one filter is "the review field is
  not empty": it lists exactly the run's flagged tasks, and `/next?view=` obeys it;
- with `requeue`, its annotation converted to a draft: the task is unlabeled again, so it comes
  back in the labeling queue with the old answer pre-filled. No annotation is ever deleted.

Predictions are added only to tasks that do not hold the run's yet, the field is set (not added),
the tab is found by title and a requeued task has no annotation left to convert, so pushing twice,
or again after Label Studio died halfway, leaves one prediction, one field and one tab per task.
Unflag removes the run's predictions, its field (a PATCH per task: the key goes, not only its
value) and its tab, and turns a requeued draft that nobody answered back into an annotation.
Per-task requests run on a few threads.
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


def review_note(reason: str, run_id: int, suggested: str | None) -> str:
    """The text of the review field: what the run doubts, in one line (the score is the
    prediction's, where the Data Manager sorts on it)."""
    suggestion = f", suggested {suggested}" if suggested else ""
    return f"{reason} (run {run_id}{suggestion})"


def set_field(
    client: LabelStudioClient,
    project_id: int,
    task_ids: Sequence[int],
    key: str,
    value: str,
    *,
    workers: int = WORKERS,
) -> None:
    """data[key] = value on the tasks: Label Studio's "add data field" Data Manager action in
    one request per 1,000 tasks; one PATCH per task where the server refuses the action."""
    for start in range(0, len(task_ids), 1000):
        part = list(task_ids[start : start + 1000])
        response = client.request(
            "POST",
            "/api/dm/actions",
            params={"id": "add_data_field", "project": project_id},
            json={
                "selectedItems": {"all": False, "included": part},
                "value_name": key,
                "value_type": "String",
                "value": value,
            },
        )
        if response.status_code < 300:
            continue
        if response.status_code not in (400, 403, 404, 405):
            raise LabelStudioError(
                f"Label Studio at {client.url} refused to set the review field: HTTP "
                f"{response.status_code}."
            )

        def patch(task_id: int) -> None:
            task = client.json("GET", f"/api/tasks/{task_id}", f"read task {task_id}")
            _patch_data(client, task_id, {**(task.get("data") or {}), key: value})

        _each(part, patch, "Writing review fields", NullProgress(), workers)


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
    config = _config(client, project_id)
    version, key = model_version(run_id), review_field(run_id)
    live = _task_ids(client, project_id, progress)
    present = [i for i in items if i.task_id in live]
    out.missing = [i.flag_id for i in items if i.task_id not in live]

    # 1. Predictions: one bulk import of those the tasks do not hold yet.
    have = {task for task, _pid, _v in _predictions(client, project_id, version)}
    wanted = [
        {
            "task": i.task_id,
            **prediction(config, i.suggested_label, model_version=version, score=i.score),
        }
        for i in present
        if i.suggested_label is not None
        and i.suggested_label in config.labels
        and i.task_id not in have
    ]
    progress.begin("Adding predictions", total=len(wanted))
    for start in range(0, len(wanted), PREDICTION_CHUNK):
        chunk = wanted[start : start + PREDICTION_CHUNK]

        def missing(chunk: list[dict[str, Any]] = chunk) -> list[dict[str, Any]]:
            have = {t for t, _pid, _v in _predictions(client, project_id, version)}
            return [p for p in chunk if p["task"] not in have]

        added = _once_then_check(
            client,
            f"/api/projects/{project_id}/import/predictions",
            chunk,
            missing,
            f"add the predictions of run {run_id}",
        )
        out.predictions_added += added
        progress.advance(len(chunk))
    progress.end()

    # 2. The review field: one Data Manager action per distinct note (a PATCH per task costs
    # Label Studio about 0.3 s; the action sets a field on hundreds of tasks in one).
    groups: dict[str, list[int]] = {}
    for i in present:
        groups.setdefault(review_note(i.reason, run_id, i.suggested_label), []).append(i.task_id)
    progress.begin("Writing review fields", total=len(present))
    for note, task_ids in groups.items():
        set_field(client, project_id, task_ids, key, note, workers=workers)
        out.fields_written += len(task_ids)
        progress.advance(len(task_ids))
    progress.end()

    # 3. The tab listing exactly the tasks that carry the field.
    out.view_id = ensure_tab(client, project_id, run_id)

    # 4. Requeue: annotations become drafts (their answer pre-filled for the annotator). One at a
    # time: a conversion is not idempotent, and Label Studio's SQLite answers concurrent writes
    # with "database is locked" after committing part of them.
    if requeue:
        tasks = _read_tasks(client, project_id, [i.task_id for i in present], progress)
        progress.begin("Requeueing", total=len(present))
        for item in present:
            draft = _requeue(client, tasks.get(item.task_id))
            if draft is not None:
                out.requeued[item.flag_id] = draft
            progress.advance()
        progress.end()
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
    wanted = {i.task_id for i in items}
    # Predictions: where a task holds only the run's, one bulk action clears them; elsewhere
    # each of the run's is deleted alone, so no other model's prediction is touched.
    every = _predictions(client, project_id, None)
    ours = [(task, pid) for task, pid, v in every if v == version and task in wanted]
    others = {task for task, _pid, v in every if v != version}
    only_ours = sorted({task for task, _pid in ours if task not in others})
    if only_ours:
        client.json(
            "POST",
            "/api/dm/actions",
            f"remove the predictions of run {run_id}",
            params={"id": "delete_tasks_predictions", "project": project_id},
            json={"selectedItems": {"all": False, "included": only_ours}},
        )
        out.predictions_removed += sum(1 for task, _pid in ours if task not in others)
    singles = [pid for task, pid in ours if task in others]

    def delete(pid: int) -> None:
        response = client.request("DELETE", f"/api/predictions/{pid}/")
        if response.status_code not in (204, 404):
            raise LabelStudioError(
                f"Label Studio at {client.url} refused to remove prediction {pid}: HTTP "
                f"{response.status_code}."
            )
        with lock:
            out.predictions_removed += 1

    _each(singles, delete, "Removing predictions", progress, workers)
    tasks = _read_tasks(client, project_id, wanted, progress)
    present = [i for i in items if i.task_id in tasks]

    def clean(item: UnflagItem) -> None:
        task = tasks[item.task_id]
        data = dict(task.get("data") or {})
        if key in data:
            del data[key]
            _patch_data(client, item.task_id, data)
            with lock:
                out.fields_removed += 1

    _each(present, clean, "Removing review fields", progress, workers)
    # Requeued drafts nobody answered become annotations again, one at a time (not idempotent).
    for item in present:
        if item.draft_id is not None and _restore(client, tasks[item.task_id], item.draft_id):
            out.drafts_restored += 1
            out.restored.append(item.flag_id)
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


def _predictions(
    client: LabelStudioClient, project_id: int, version: str | None
) -> list[tuple[int, int, str]]:
    """(task id, prediction id, model version) of the project's predictions (of `version`)."""
    listed = client.json(
        "GET", "/api/predictions", "list the predictions", params={"project": project_id}
    )
    out = []
    for p in listed or []:
        v = str(p.get("model_version") or "")
        if version is None or v == version:
            out.append((int(p["task"]), int(p["id"]), v))
    return out


def _once_then_check(
    client: LabelStudioClient,
    path: str,
    body: list[dict[str, Any]],
    still_missing: Callable[[], list[dict[str, Any]]],
    doing: str,
) -> int:
    """POST `body` once; when that fails or its answer is lost, send only what `still_missing`
    says did not land (a blind retry could add it twice). Returns how many were added."""
    try:
        response = client.request("POST", path, json=body, attempts=1)
        if response.status_code < 300:
            return len(body)
    except LabelStudioError:
        pass
    rest = still_missing()
    if rest:
        client.json("POST", path, doing, json=rest)
    return len(rest)


def _requeue(client: LabelStudioClient, task: dict[str, Any] | None) -> tuple[int, int] | None:
    """Turn the task's latest answer into a draft: (annotation id, draft id); (0, draft id) when
    an earlier push already did; None when there is nothing to requeue."""
    if task is None:
        return None
    task_id = int(task["id"])
    answers = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not answers:
        drafts = task.get("drafts") or []
        return (0, int(drafts[-1]["id"])) if drafts else None
    latest = int(max(answers, key=lambda a: str(a.get("updated_at") or ""))["id"])
    path = f"/api/annotations/{latest}/convert-to-draft"
    try:
        response = client.request("POST", path, attempts=1)
        if response.status_code < 300:
            return latest, int(response.json()["id"])
    except LabelStudioError:
        pass
    # Failed, or only its answer was lost: look before trying again.
    now = client.json("GET", f"/api/tasks/{task_id}", f"read task {task_id}")
    if not any(int(a["id"]) == latest for a in now.get("annotations") or []):
        drafts = now.get("drafts") or []
        return (latest, int(drafts[-1]["id"])) if drafts else None
    draft = client.json("POST", path, f"requeue task {task_id}")
    return latest, int(draft["id"])


def _restore(client: LabelStudioClient, task: dict[str, Any], draft_id: int) -> bool:
    """Submit a requeued draft nobody answered as the task's annotation again."""
    if task.get("annotations"):
        return False
    draft = next((d for d in task.get("drafts") or [] if int(d["id"]) == draft_id), None)
    if draft is None:
        return False
    task_id = int(task["id"])
    path = f"/api/tasks/{task_id}/annotations"
    body = {
        "result": draft.get("result") or [],
        "draft_id": draft_id,
        "was_cancelled": False,
        "ground_truth": False,
    }
    try:
        response = client.request("POST", path, json=body, attempts=1)
        if response.status_code < 300:
            return True
    except LabelStudioError:
        pass
    now = client.json("GET", f"/api/tasks/{task_id}", f"read task {task_id}")
    if now.get("annotations"):
        return True
    client.json("POST", path, f"restore the annotation of task {task_id}", json=body)
    return True


def _task_ids(client: LabelStudioClient, project_id: int, progress: Progress) -> set[int]:
    """Every task id of the project (one light listing)."""
    progress.begin("Listing tasks")
    ids: set[int] = set()
    for _total, page in client.task_pages(project_id, ids_only=True):
        ids.update(int(t["id"]) for t in page)
        progress.advance(len(page))
    progress.end()
    return ids


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
