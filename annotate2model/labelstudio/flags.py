"""Flags in Label Studio: what `a2m flag` puts on a task, what a sync takes off once a person has
answered it, and what `a2m unflag` takes back.

Every pending flag of a project waits in one standing Data Manager tab, `a2m review`. A flagged
task gets
- a prediction with model version `a2m-review`: the suggested choice and the flag's score. The
  project's model version is set to it (unless the project uses another model's), so that Label
  Studio's score column shows and sorts, and the labeling screen shows the suggestion;
- four data fields, the columns a reviewer reads: `a2m_label` (the label doubted), `a2m_suggested`,
  `a2m_reason` (misclassified, label-issue, uncertain) and `a2m_run` (the newest run that doubts
  it), set with Label Studio's "add data field" Data Manager action: one request per distinct
  value, however many tasks;
- with `requeue`, its annotation converted to a draft: the task is unlabeled again, so it comes
  back in the labeling queue with the old answer pre-filled. No annotation is ever deleted.

The tab lists the tasks whose reason is not empty, highest score first, and shows the image, the
label, the suggested label, the reason, the score and the run. A task doubted again while
it waits keeps its one prediction, with the newest run's score. Once a sync has settled a flag,
`retire_answered` empties the task's fields and removes its prediction: it leaves the tab.

Pushing twice, or again after Label Studio died halfway, leaves one prediction, one pair of fields
and one tab. Writes are sent one at a time: Label Studio on SQLite answers concurrent writes with
"database is locked" (and may have committed part of them). Flags pushed before the standing tab
(a tab `a2m run N`, a field `a2m_review_run_N`, model version `a2m-run-N`) are still taken back by
`a2m unflag N`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from annotate2model.errors import LabelStudioError
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.config import LabelingConfig, parse_label_config
from annotate2model.labelstudio.results import prediction
from annotate2model.progress import NullProgress, Progress
from annotate2model.store import Store
from annotate2model.store import flags as store_flags

# Predictions per bulk import request.
PREDICTION_CHUNK = 500

REVIEW_TAB = "a2m review"
REVIEW_VERSION = "a2m-review"
REASON_FIELD = "a2m_reason"
RUN_FIELD = "a2m_run"
# The label the run doubted and the one it suggests, as plain text (Label Studio shows results
# as JSON).
LABEL_FIELD = "a2m_label"
SUGGESTED_FIELD = "a2m_suggested"
REVIEW_FIELDS = (LABEL_FIELD, SUGGESTED_FIELD, REASON_FIELD, RUN_FIELD)
# The Data Manager filter item of a task waiting in review: a review reason set.
IN_REVIEW: dict[str, Any] = {
    "filter": f"filter:tasks:data.{REASON_FIELD}",
    "operator": "empty",
    "type": "String",
    "value": False,
}

T = TypeVar("T")


# Where flags pushed before the standing tab live (one model version, field and tab per run).


def model_version(run_id: int) -> str:
    return f"a2m-run-{run_id}"


def review_field(run_id: int) -> str:
    return f"a2m_review_run_{run_id}"


def tab_title(run_id: int) -> str:
    return f"a2m run {run_id}"


def set_field(
    client: LabelStudioClient,
    project_id: int,
    task_ids: Sequence[int],
    key: str,
    value: str,
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

        _each(part, patch, "Writing review fields", NullProgress())


@dataclass(frozen=True)
class PushItem:
    """One flag to put on one task."""

    flag_id: int
    task_id: int
    reason: str
    score: float
    suggested_label: str | None
    # The label the run doubted (None: an unlabeled task).
    current_label: str | None = None


@dataclass
class PushResult:
    """What a push did; filled in as it goes, so a push that fails halfway still tells what is
    in Label Studio (the caller records it before reporting the error)."""

    view_id: int | None = None
    predictions_added: int = 0
    # Tasks that already held a review prediction (doubted again): its score and suggestion now
    # the newest run's.
    predictions_updated: int = 0
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
) -> PushResult:
    """Put run `run_id`'s flags on their tasks, in the review tab (see the module docstring);
    idempotent."""
    started = time.monotonic()
    out = result if result is not None else PushResult()
    progress = progress or NullProgress()
    config = _config(client, project_id)
    live = _task_ids(client, project_id, progress)
    present = [i for i in items if i.task_id in live]
    out.missing = [i.flag_id for i in items if i.task_id not in live]

    # 1. Predictions: one bulk import of those the tasks do not hold yet; a task that holds one
    # (doubted again) gets the newest score and suggestion.
    have = {task: pid for task, pid, _v in _predictions(client, project_id, REVIEW_VERSION)}
    suggested = [
        i for i in present if i.suggested_label is not None and i.suggested_label in config.labels
    ]

    def body(i: PushItem) -> dict[str, Any]:
        assert i.suggested_label is not None
        return prediction(config, i.suggested_label, model_version=REVIEW_VERSION, score=i.score)

    wanted = [{"task": i.task_id, **body(i)} for i in suggested if i.task_id not in have]
    progress.begin("Adding predictions", total=len(wanted))
    out.predictions_added += _import_predictions(
        client, project_id, wanted, f"add the predictions of run {run_id}", progress
    )
    progress.end()
    # Doubted again: the old review prediction goes (one action for the tasks that hold no other
    # model's prediction) and the new one comes in bulk, so a thousand cost two requests.
    again = [i for i in suggested if i.task_id in have]
    if again:
        _remove_review_predictions(client, project_id, [i.task_id for i in again], progress)
        fresh = [{"task": i.task_id, **body(i)} for i in again]
        _import_predictions(
            client, project_id, fresh, f"update the predictions of run {run_id}", NullProgress()
        )
        out.predictions_updated += len(again)

    # 2. The fields: one Data Manager action per distinct value (a PATCH per task costs Label
    # Studio about 0.3 s; the action sets a field on a thousand tasks in one).
    values: dict[tuple[str, str], list[int]] = {}
    for i in present:
        for key, value in (
            (LABEL_FIELD, i.current_label or "-"),
            (SUGGESTED_FIELD, i.suggested_label or "-"),
            (RUN_FIELD, str(run_id)),
            # Last: the tab lists a task once its reason is set, with its other columns filled.
            (REASON_FIELD, i.reason),
        ):
            values.setdefault((key, value), []).append(i.task_id)
    order = (LABEL_FIELD, SUGGESTED_FIELD, RUN_FIELD, REASON_FIELD)
    progress.begin("Writing review fields", total=len(values))
    for (key, value), ids in sorted(values.items(), key=lambda kv: order.index(kv[0][0])):
        set_field(client, project_id, ids, key, value)
        progress.advance()
    progress.end()
    out.fields_written += len(present)

    # 3. The tab, and the project's model version that makes the score column work.
    out.view_id = ensure_review_tab(client, project_id, config)
    if wanted or again:
        _use_review_version(client, project_id)

    # 4. Requeue: annotations become drafts (their answer pre-filled for the annotator). One at a
    # time: a conversion is not idempotent.
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


def tab_url(client: LabelStudioClient, project_id: int, view_id: int | None) -> str:
    """Where a person opens the review tab (or any tab of the project's Data Manager)."""
    tab = f"?tab={view_id}" if view_id is not None else ""
    return f"{client.url}/projects/{project_id}/data{tab}"


def ensure_review_tab(
    client: LabelStudioClient, project_id: int, config: LabelingConfig | None = None
) -> int:
    """The project's review tab (made once; its filter, order and columns set again when someone
    changed them): the tasks with a review reason, highest score first, showing the image, the
    current and suggested labels, the reason, the score and the run."""
    config = config or _config(client, project_id)
    shown = [
        f"tasks:data.{config.image_field}",
        "tasks:predictions_score",
        *(f"tasks:data.{key}" for key in REVIEW_FIELDS),
    ]
    hidden = hidden_columns(client, project_id, shown)
    data = {
        "title": REVIEW_TAB,
        "type": "list",
        "target": "tasks",
        "filters": {"conjunction": "and", "items": [IN_REVIEW]},
        "ordering": ["-tasks:predictions_score"],
        "hiddenColumns": {"explore": hidden, "labeling": hidden},
    }
    return ensure_view(client, project_id, data, "the review tab")


def hidden_columns(client: LabelStudioClient, project_id: int, shown: list[str]) -> list[str]:
    """The project's task columns in the Data Manager other than `shown`: what a tab hides."""
    listed = client.json(
        "GET", "/api/dm/columns", "list the Data Manager columns", params={"project": project_id}
    )
    columns = [
        "tasks:" + (f"{c['parent']}." if c.get("parent") else "") + str(c["id"])
        for c in (listed or {}).get("columns", [])
        if c.get("target", "tasks") == "tasks"
    ]
    return [c for c in columns if c not in shown]


def ensure_view(client: LabelStudioClient, project_id: int, data: dict[str, Any], what: str) -> int:
    """The Data Manager tab titled `data["title"]`: made once, and its settings set again when
    someone changed them (what else they set stays)."""
    existing = _find_view(client, project_id, str(data["title"]))
    if existing is None:
        made = client.json(
            "POST",
            "/api/dm/views",
            f"create {what}",
            json={"project": project_id, "data": data},
        )
        return int(made["id"])
    view_id, current = existing
    if any(current.get(k) != v for k, v in data.items()):
        client.json(
            "PATCH",
            f"/api/dm/views/{view_id}",
            f"update {what}",
            json={"project": project_id, "data": {**current, **data}},
        )
    return view_id


def _use_review_version(client: LabelStudioClient, project_id: int) -> None:
    """The project's model version becomes the review predictions' (Label Studio shows and sorts
    on the scores of that version only), unless it names another model's."""
    project = client.json("GET", f"/api/projects/{project_id}", f"read project {project_id}")
    current = str(project.get("model_version") or "")
    if current and not current.startswith("a2m") and not _our_backend(client, project_id, current):
        return
    if current != REVIEW_VERSION:
        client.json(
            "PATCH",
            f"/api/projects/{project_id}",
            "set the project's model version",
            json={"model_version": REVIEW_VERSION},
        )


def _our_backend(client: LabelStudioClient, project_id: int, title: str) -> bool:
    """Whether `title` names an `a2m serve` registered as the project's ML backend (Label
    Studio makes the first backend's title the project's model version; its own model version,
    from the server's /setup, is a2m-run-N)."""
    found = client.json("GET", f"/api/ml?project={project_id}", "list the project's ML backends")
    return any(
        isinstance(b, dict)
        and b.get("title") == title
        and str(b.get("model_version") or "").startswith("a2m")
        for b in (found if isinstance(found, list) else [])
    )


def retire(
    client: LabelStudioClient,
    project_id: int,
    task_ids: Sequence[int],
    *,
    progress: Progress | None = None,
) -> int:
    """Take tasks out of the review tab: their fields emptied (one action per field) and their
    review prediction removed. Returns how many predictions went. Idempotent."""
    progress = progress or NullProgress()
    wanted = sorted(set(task_ids))
    if not wanted:
        return 0
    for key in (
        REASON_FIELD,
        LABEL_FIELD,
        SUGGESTED_FIELD,
        RUN_FIELD,
    ):  # reason first: out of the tab
        set_field(client, project_id, wanted, key, "")
    return _remove_review_predictions(client, project_id, wanted, progress)


def _remove_review_predictions(
    client: LabelStudioClient, project_id: int, task_ids: Sequence[int], progress: Progress
) -> int:
    """The review predictions of the tasks: one Data Manager action for the tasks that hold no
    other prediction, one DELETE per prediction elsewhere (no other model's is touched).
    Returns how many went."""
    wanted = set(task_ids)
    every = _predictions(client, project_id, None)
    ours = [(task, pid) for task, pid, v in every if v == REVIEW_VERSION and task in wanted]
    others = {task for task, _pid, v in every if v != REVIEW_VERSION}
    only_ours = sorted({task for task, _pid in ours if task not in others})
    for start in range(0, len(only_ours), 1000):
        client.json(
            "POST",
            "/api/dm/actions",
            "remove review predictions",
            params={"id": "delete_tasks_predictions", "project": project_id},
            json={"selectedItems": {"all": False, "included": only_ours[start : start + 1000]}},
        )
    singles = [pid for task, pid in ours if task in others]
    _each(singles, partial(_delete_prediction, client), "Removing predictions", progress)
    return len(ours)


def retire_answered(
    store: Store, client: LabelStudioClient, project_id: int, progress: Progress | None = None
) -> int:
    """Take the tasks whose flags a sync settled (or unflag withdrew) out of the review tab,
    unless another pending flag holds them there; the store then knows nothing of theirs is left
    in Label Studio. Returns how many tasks left the tab."""
    with store.read() as session:
        ended = store_flags.answered_in_review(session, project_id, REASON_FIELD)
    if not ended:
        return 0
    tasks = sorted({task for _flag, task in ended})
    retire(client, project_id, tasks, progress=progress)
    with store.write() as session:
        store_flags.mark_retired(session, [flag for flag, _task in ended])
    return len(tasks)


def settle_interrupted(
    store: Store, client: LabelStudioClient, project_id: int, progress: Progress | None = None
) -> int:
    """Flags whose push was cut short (the process killed) and reached their task anyway are
    pushed: the task's reason and run fields, written last, name the flag's run; the tab and the
    project's model version are made sure of. The others stay "push interrupted" until `a2m flag`
    pushes them again or `a2m unflag` takes them back. Returns how many became pushed."""
    with store.read() as session:
        cut = store_flags.interrupted_pushes(session, project_id)
    if not cut:
        return 0
    tasks = _read_tasks(client, project_id, [task for _f, _r, task in cut], NullProgress())

    def reached(run_id: int, task_id: int) -> bool:
        data = tasks.get(task_id, {}).get("data") or {}
        return bool(data.get(REASON_FIELD)) and str(data.get(RUN_FIELD)) == str(run_id)

    done = [flag for flag, run, task in cut if reached(run, task)]
    if done:
        # The push's last steps, which the cut may have left undone (both are idempotent).
        view_id = ensure_review_tab(client, project_id, _config(client, project_id))
        _use_review_version(client, project_id)
        with store.write() as session:
            store_flags.mark_pushed(session, done, review_field=REASON_FIELD, view_id=view_id)
    return len(done)


def _find_view(
    client: LabelStudioClient, project_id: int, title: str
) -> tuple[int, dict[str, Any]] | None:
    views = client.json(
        "GET", "/api/dm/views", "list the Data Manager tabs", params={"project": project_id}
    )
    for view in views or []:
        data = view.get("data") or {}
        if data.get("title") == title:
            return int(view["id"]), dict(data)
    return None


def _delete_view(client: LabelStudioClient, project_id: int, title: str) -> bool:
    found = _find_view(client, project_id, title)
    if found is None:
        return False
    response = client.request("DELETE", f"/api/dm/views/{found[0]}")
    if response.status_code not in (204, 404):
        client.json("DELETE", f"/api/dm/views/{found[0]}", f"remove the tab {title}")
    return True


def _delete_prediction(client: LabelStudioClient, pid: int) -> None:
    response = client.request("DELETE", f"/api/predictions/{pid}/")
    if response.status_code not in (204, 404):
        raise LabelStudioError(
            f"Label Studio at {client.url} refused to remove prediction {pid}: HTTP "
            f"{response.status_code}."
        )


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
    # The data field the flag was pushed under: REASON_FIELD (the review tab), or the run's own
    # field for a flag pushed before the review tab; None: never pushed.
    field: str | None = REASON_FIELD


def unflag_tasks(
    client: LabelStudioClient,
    project_id: int,
    run_id: int,
    items: Sequence[UnflagItem],
    *,
    keep: Iterable[int] = (),
    drop_tab: bool = False,
    progress: Progress | None = None,
) -> UnflagResult:
    """Take run `run_id`'s flags out of Label Studio. Its tasks leave the review tab, but those
    another pending flag still holds there (`keep`: their task ids); a requeued draft nobody
    answered becomes an annotation again (its result as it is now); a flag pushed before the
    review tab loses the run's own prediction, field and tab. `drop_tab`: no flag of the project
    is pending any more, and the review tab goes too. Idempotent."""
    started = time.monotonic()
    out = UnflagResult()
    progress = progress or NullProgress()
    kept = set(keep)
    leaving = sorted({i.task_id for i in items if i.field == REASON_FIELD} - kept)
    out.predictions_removed += retire(client, project_id, leaving, progress=progress)
    out.fields_removed += len(leaving)
    legacy = sorted({i.task_id for i in items if i.field == review_field(run_id)})
    if legacy:
        ours = [
            pid
            for task, pid, _v in _predictions(client, project_id, model_version(run_id))
            if task in set(legacy)
        ]
        delete = partial(_delete_prediction, client)
        _each(ours, delete, "Removing predictions", progress)
        out.predictions_removed += len(ours)
    requeued = [i for i in items if i.draft_id is not None]
    tasks = _read_tasks(client, project_id, legacy + [i.task_id for i in requeued], progress)
    key = review_field(run_id)
    with_field = [t for t in legacy if key in (tasks.get(t, {}).get("data") or {})]

    def clean(task_id: int) -> None:
        data = dict(tasks[task_id].get("data") or {})
        del data[key]
        _patch_data(client, task_id, data)

    _each(with_field, clean, "Removing review fields", progress)
    out.fields_removed += len(with_field)
    # Requeued drafts nobody answered become annotations again, one at a time (not idempotent).
    for item in requeued:
        task = tasks.get(item.task_id)
        if task is not None and item.draft_id is not None and _restore(client, task, item.draft_id):
            out.drafts_restored += 1
            out.restored.append(item.flag_id)
    out.tab_removed = _delete_view(client, project_id, tab_title(run_id))
    if drop_tab:
        out.tab_removed = _delete_view(client, project_id, REVIEW_TAB) or out.tab_removed
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


def _import_predictions(
    client: LabelStudioClient,
    project_id: int,
    rows: Sequence[dict[str, Any]],
    doing: str,
    progress: Progress,
) -> int:
    """Review predictions ({"task": id, ...}) in bulk requests, each sent once and then only
    what did not land; returns how many were added."""
    added = 0
    for start in range(0, len(rows), PREDICTION_CHUNK):
        chunk = list(rows[start : start + PREDICTION_CHUNK])

        def missing(chunk: list[dict[str, Any]] = chunk) -> list[dict[str, Any]]:
            have = {t for t, _pid, _v in _predictions(client, project_id, REVIEW_VERSION)}
            return [p for p in chunk if p["task"] not in have]

        added += _once_then_check(
            client, f"/api/projects/{project_id}/import/predictions", chunk, missing, doing
        )
        progress.advance(len(chunk))
    return added


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


def live_task_ids(client: LabelStudioClient, project_id: int) -> set[int]:
    """Every task id of the project (one light listing)."""
    return _task_ids(client, project_id, NullProgress())


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


def _each(items: Sequence[T], work: Callable[[T], None], what: str, progress: Progress) -> None:
    """`work` on every item; the first failure stops the rest and is raised.

    Per-task writes (PATCH, convert, delete) go one at a time. Label Studio answers each in
    ~40 ms; on SQLite, concurrent ones fill its log with "database is locked"."""
    progress.begin(what, total=len(items))
    try:
        for item in items:
            work(item)
            progress.advance()
    finally:
        progress.end()
