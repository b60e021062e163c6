"""`a2m sync`: bring a Label Studio project into the store and version it when anything changed.

`sync_project` chains named steps, each a function with typed inputs and outputs:

1. `list_tasks`: a cheap listing of (task id, updated_at): of the tasks changed since the last
   sync when the project's task count shows that none was deleted, else of the whole project
   (a first sync, which wants every task, reads them in full at once: `read_all_tasks`, while
   the project itself is asked for).
2. `find_changes`: which tasks are new, changed, gone, or worth retrying (pure).
3. `fetch_changed_tasks`: only those, in full: by id (the Data Manager's `selectedItems`), or
   with one plain listing when they are most of the project. "In full" is the keys a sync reads
   (`TASK_FIELDS`), which Label Studio answers two to three times faster than whole tasks.
4. `download_images`: reuse what is stored for an unchanged URL; read, validate and write the rest
   to the blob store, concurrently. The images that need no request to Label Studio (its files
   on this disk, other hosts, `data:` URLs) start as each page of tasks arrives, so that they are
   read while the server lists the rest (`downloads.ImageReader`); a first sync's first page is
   small for that reason. An image that cannot be read (one file Label Studio fails to serve
   while its /health answers UP included) is its task's problem: the task is skipped with the
   reason, the version is made from the rest and names what it left out, and the next sync
   tries that image again.
5. `resolve_labels`: parse the answers (`results`), pick each task's label (`policies`), mark
   images labeled differently by two tasks, and work out the version rows and task changes (pure).
6. `commit`: image rows, task rows, annotation revisions, the watermark and the new version in one
   write transaction.

Which tasks changed is decided by comparing each task's own `updated_at` with the stored one.
The watermark is the server's clock (its Date header) when the last sync read the project: every
change committed after that has a later `updated_at`, so a sync lists only the tasks updated
after the watermark minus a margin (a handful, or none: 0.05 s where listing 2,000 ids takes over
a second). A deletion shows in no such filter, so the project's task count must equal the stored
live tasks plus the new ones, else the whole project is listed. (An earlier version fetched in
full every task updated after `newest updated_at - 2 s`, so a bulk import came back on every sync;
now those are only listed, and only until a sync more than the margin later.)

Blobs are written first and everything else commits in one transaction: a failure (or a kill)
before that commit leaves the store as it was, and the next sync redoes the same work and reaches
the same version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotate2model.errors import LabelStudioError, StoreError
from annotate2model.labelstudio.client import LabelStudioClient, ProjectInfo
from annotate2model.labelstudio.config import LabelingConfig, parse_label_config
from annotate2model.labelstudio.downloads import (
    IMAGE_PROBLEM,
    ImageReader,
    TaskImages,
    download_images,
)
from annotate2model.labelstudio.flags import retire_answered, settle_interrupted
from annotate2model.labelstudio.policies import POLICIES, Answer, Policy, resolve_label
from annotate2model.labelstudio.reading import (
    TASK_FIELDS,
    FetchedTasks,
    HeadStart,
    OnPage,
    read_all_tasks,
)
from annotate2model.labelstudio.results import ParsedAnnotation, parse_annotation
from annotate2model.progress import NullProgress, Progress
from annotate2model.settings import SplitFractions
from annotate2model.store.db import Store
from annotate2model.store.flags import resolve_flags
from annotate2model.store.images import StagedImage, record_images
from annotate2model.store.records import NewVersion, VersionItemRecord
from annotate2model.store.tasks import (
    AnnotationRecord,
    TaskRecord,
    load_sync_state,
    load_tasks,
    save_sync,
)
from annotate2model.store.versions import (
    create_version,
    diff_versions,
    latest_version,
    split_for,
)

if TYPE_CHECKING:
    from annotate2model.labelstudio.connection import LocalFiles

__all__ = [
    "POLICIES",
    "Policy",
    "SyncResult",
    "TaskImages",
    "commit",
    "download_images",
    "fetch_changed_tasks",
    "find_changes",
    "list_tasks",
    "resolve_labels",
    "sync_project",
]

CONFLICT_PROBLEM = "conflict:"

log = logging.getLogger(__name__)


@dataclass
class SyncResult:
    project_id: int
    version: NewVersion | None
    tasks_total: int = 0
    tasks_fetched: int = 0
    images_downloaded: int = 0
    added: int = 0
    removed: int = 0
    relabeled: int = 0
    labeled: int = 0
    unlabeled: int = 0
    deleted_tasks: int = 0
    # Flags this sync settled, by outcome (relabeled / confirmed / labeled).
    flags_resolved: dict[str, int] = field(default_factory=dict)
    # Tasks taken out of the review tab because their flags were settled.
    review_retired: int = 0
    # (task id, reason) for every live task that gives no row in the version.
    skipped: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        counts: Counter[str] = Counter(reason.split(":")[0] for _, reason in self.skipped)
        return dict(sorted(counts.items()))


def sync_project(
    store: Store,
    client: LabelStudioClient,
    project_id: int,
    *,
    policy: Policy = "latest",
    note: str = "",
    progress: Progress | None = None,
    workers: int = 8,
    local: LocalFiles | None = None,
    head: HeadStart | None = None,
) -> SyncResult:
    """Sync one project; raises LabelStudioError (writing nothing) when the server fails us.

    `note` goes with a new version; without one the version says the project and the policy.
    `head`: requests already sent for this project before the store was open (`a2m sync`);
    the caller closes it after this returns.
    """
    if head is not None and (head.project_id != project_id or head.client is not client):
        raise ValueError("the head start was made for another project or client")
    started = time.monotonic()
    if policy not in POLICIES:
        raise LabelStudioError(f"unknown policy {policy!r}; use latest, majority or ground-truth.")
    progress = progress or NullProgress()
    # The project (its labeling config and task count) is on its way while the store is read
    # and the tasks changed since the last sync are listed; on a first sync (nothing stored
    # for the project) every task is read in full meanwhile.
    stop = head.stop if head is not None else threading.Event()
    fetched: FetchedTasks | None = None
    with (
        ImageReader(
            store.blobs,
            client,
            max_pixels=store.settings.max_image_pixels,
            workers=workers,
            local=local,
        ) as reader,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        asked = head.project if head is not None else pool.submit(client.project, project_id)
        prefetch = _prefetcher(reader, asked, project_id, config_memo(store))
        try:
            with store.read() as session:
                stored = load_tasks(session, project_id)
                state = load_sync_state(session, project_id)
            first = state is None and not stored
            reading: Future[FetchedTasks] | None = None
            if head is not None and first:
                reading = head.take_reading(prefetch)
            elif head is not None:
                head.drop_reading()  # it guessed a first sync; the store says otherwise
            if reading is None and first:
                reading = pool.submit(
                    read_all_tasks, client, project_id, progress, stop=stop, on_page=prefetch
                )
            since = changes_since(state.watermark if state else None)
            changed: dict[int, str] | None = None
            failure: LabelStudioError | None = None
            if since is not None and state is not None and state.policy == policy:
                try:
                    changed = list_tasks(client, project_id, progress, updated_after=since)
                except LabelStudioError as exc:
                    failure = exc  # reported after the project's own error, if it has one
            project = asked.result()
            if failure is not None:
                raise failure
            if reading is not None:
                fetched = reading.result()
        except BaseException:
            stop.set()  # the full read stops after its current page
            if head is not None:
                head.drop_reading()  # before the image reader it feeds is closed
            raise
        config = parse_label_config(project.label_config, project_id, config_memo(store))
        relabel_all = state is None or state.labels != list(config.labels) or state.policy != policy
        remote = None
        if changed is not None and not relabel_all:
            remote = with_changes(stored, changed, project.task_count)
        if remote is None and not stored and fetched is None:
            # Nothing stored for this project yet: every task is wanted, and reading them all
            # in full also says which exist, without a listing of ids first.
            fetched = read_all_tasks(client, project_id, progress, on_page=prefetch)
        if fetched is not None:
            remote = {tid: str(t.get("updated_at") or "") for tid, t in fetched.tasks.items()}
        if remote is None:
            remote = list_tasks(client, project_id, progress)

        wanted = find_changes(remote, stored, relabel_all=relabel_all)
        if fetched is None:
            fetched = fetch_changed_tasks(
                client,
                project_id,
                wanted,
                len(remote),
                progress,
                on_page=lambda page: reader.prefetch(page, config, stored),
            )
        live = {tid: updated for tid, updated in remote.items() if tid not in fetched.gone}
        images = download_images(reader, fetched.tasks, stored, config, progress=progress)
    plan = resolve_labels(
        fetched.tasks,
        live,
        stored,
        images,
        config,
        policy,
        split=store.settings.split,
        watermark=state.watermark if state else None,
    )
    if project.server_time is not None:
        plan = replace(plan, watermark=project.server_time)
    # A flag push killed halfway: what reached Label Studio is pushed, and this sync settles it.
    try:
        settle_interrupted(store, client, project_id, progress)
    except LabelStudioError as exc:
        log.warning("flags whose push was cut short stay unsettled for now: %s", exc)
    outcome = commit(
        store,
        project_id,
        plan,
        images.staged,
        config,
        policy,
        note=(note or sync_note(project_id, policy)) + left_out_note(plan.skipped),
    )

    retired = 0
    if outcome.flags_resolved:
        # Answered tasks leave the review tab; should Label Studio refuse now, the next sync or
        # `a2m flag` takes them out (the store keeps them marked until then).
        try:
            retired = retire_answered(store, client, project_id, progress)
        except LabelStudioError as exc:
            log.warning("the answered tasks stay in the review tab for now: %s", exc)
    result = SyncResult(
        project_id=project_id,
        version=outcome.version,
        tasks_total=len(live),
        tasks_fetched=len(fetched.tasks),
        images_downloaded=len(images.staged),
        added=outcome.added,
        removed=outcome.removed,
        relabeled=outcome.relabeled,
        labeled=plan.labeled,
        unlabeled=plan.unlabeled,
        deleted_tasks=len(plan.deleted),
        flags_resolved=outcome.flags_resolved,
        review_retired=retired,
        skipped=plan.skipped,
    )
    result.seconds = time.monotonic() - started
    return result


# -- 1. list ------------------------------------------------------------------------------------


# A change committed after the last sync read the project has an `updated_at` later than the
# watermark minus this: the Date header's whole seconds, writes still committing as it read.
CHANGES_MARGIN_S = 5.0


def list_tasks(
    client: LabelStudioClient,
    project_id: int,
    progress: Progress,
    *,
    updated_after: str | None = None,
) -> dict[int, str]:
    """Task id -> `updated_at` (ids and times only) of every task, or of those updated after."""
    progress.begin("Listing tasks")
    remote: dict[int, str] = {}
    for _total, page in client.task_pages(project_id, ids_only=True, updated_after=updated_after):
        for task in page:
            remote[int(task["id"])] = str(task.get("updated_at") or "")
        progress.advance(len(page))
    progress.end()
    return remote


def changes_since(watermark: str | None) -> str | None:
    """The `updated_after` that finds every change since the sync that set `watermark`."""
    if not watermark:
        return None
    try:
        mark = datetime.fromisoformat(watermark.replace("Z", "+00:00"))
    except ValueError:
        return None
    if mark.tzinfo is None:
        mark = mark.replace(tzinfo=UTC)
    since = mark.astimezone(UTC) - timedelta(seconds=CHANGES_MARGIN_S)
    return since.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def with_changes(
    stored: Mapping[int, TaskRecord], changed: Mapping[int, str], task_count: int
) -> dict[int, str] | None:
    """Every task now (id -> updated_at) from the stored live ones and those changed since;
    None when the project's task count says that some stored task is gone (or the count moved
    while we read): deletions show in no filter, only a whole listing finds them."""
    live = {tid: rec.remote_updated_at or "" for tid, rec in stored.items() if not rec.deleted}
    new = sum(1 for tid in changed if tid not in live)
    if len(live) + new != task_count:
        return None
    return {**live, **changed}


# -- 2. find changes ----------------------------------------------------------------------------


def find_changes(
    remote: Mapping[int, str], stored: Mapping[int, TaskRecord], *, relabel_all: bool
) -> set[int]:
    """Ids to fetch in full: new, changed, back from deletion, or whose image failed last time.

    `relabel_all`: a label entered or left the config, or the policy changed, so every task is
    resolved again.
    """
    if relabel_all:
        return set(remote)
    return {
        tid
        for tid, updated in remote.items()
        if tid not in stored
        or stored[tid].remote_updated_at != updated
        or stored[tid].deleted
        or _retry_image(stored[tid])
    }


def config_memo(store: Store) -> Path:
    """Where what the SDK read of each labeling config is kept (config.parse_label_config)."""
    return store.settings.workspace.cache_dir / "label-configs"


def _retry_image(rec: TaskRecord) -> bool:
    return rec.image_sha256 is None and bool(rec.problem and rec.problem.startswith(IMAGE_PROBLEM))


# -- 3. fetch changed tasks ---------------------------------------------------------------------


def _prefetcher(
    reader: ImageReader, asked: Future[ProjectInfo], project_id: int, memo: Path
) -> OnPage:
    """What a first sync does with each page of tasks as it arrives: start reading the images
    that need no request to Label Studio (`ImageReader.prefetch`), once the project's labeling
    config says which data field holds them."""
    config: list[LabelingConfig] = []

    def prefetch(page: list[dict[str, Any]]) -> None:
        if not config:
            try:
                config.append(parse_label_config(asked.result().label_config, project_id, memo))
            except Exception as exc:  # the sync itself meets the same error and reports it
                log.debug("no image prefetch while tasks are listed: %s", exc)
                return
        reader.prefetch(page, config[0], {})

    return prefetch


def fetch_changed_tasks(
    client: LabelStudioClient,
    project_id: int,
    wanted: set[int],
    project_size: int,
    progress: Progress,
    *,
    on_page: OnPage | None = None,
) -> FetchedTasks:
    """The wanted tasks in full: by id when they are a few, else one plain listing."""
    fetched: dict[int, dict[str, Any]] = {}
    gone: set[int] = set()
    if not wanted:
        return FetchedTasks(fetched)
    progress.begin("Reading changed tasks", total=len(wanted))
    pages: Iterable[list[dict[str, Any]]]
    if len(wanted) * 2 > project_size:
        pages = (page for _total, page in client.task_pages(project_id, fields=TASK_FIELDS))
    else:
        pages = client.tasks_by_id(project_id, wanted, fields=TASK_FIELDS)
    for page in pages:
        if on_page is not None:
            on_page([task for task in page if int(task["id"]) in wanted])
        for task in page:
            tid = int(task["id"])
            if tid in wanted and tid not in fetched:
                fetched[tid] = task
                progress.advance()
    # Wanted tasks the answers left out: one by one (404: deleted since the id listing).
    for tid in sorted(wanted - set(fetched)):
        response = client.request("GET", f"/api/tasks/{tid}")
        if response.status_code == 404:
            gone.add(tid)
            continue
        if response.status_code >= 400:
            raise LabelStudioError(
                f"Label Studio answered HTTP {response.status_code} for task {tid}."
            )
        fetched[tid] = response.json()
        progress.advance()
    progress.end()
    return FetchedTasks(fetched, frozenset(gone))


# -- 4. download images: `downloads.download_images` -------------------------------------------


# -- 5. resolve labels --------------------------------------------------------------------------


@dataclass
class SyncPlan:
    """What the commit writes, worked out from the fetched tasks and the stored state."""

    # The version's rows (image, label, split), one per image.
    items: list[VersionItemRecord]
    # Task rows that differ from the stored ones (deleted tasks included).
    changes: list[TaskRecord]
    # Task id -> its current annotations, for every fetched task.
    annotations: dict[int, list[AnnotationRecord]]
    # Stored tasks that no longer exist in Label Studio.
    deleted: list[TaskRecord]
    # The newest `updated_at` seen (kept for reference); the previous one for an empty project.
    watermark: str | None
    labeled: int = 0
    unlabeled: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)


def resolve_labels(
    tasks: Mapping[int, Mapping[str, Any]],
    remote: Mapping[int, str],
    stored: Mapping[int, TaskRecord],
    images: TaskImages,
    config: LabelingConfig,
    policy: Policy,
    *,
    split: SplitFractions,
    watermark: str | None = None,
) -> SyncPlan:
    """Each fetched task's label under `policy`, then the whole project's rows, conflicts found.

    `remote` is every live task (id -> updated_at); unfetched ones keep their stored row.
    `watermark` is the previous one, kept when the project has no task.
    """
    annotations: dict[int, list[AnnotationRecord]] = {}
    current: dict[int, TaskRecord] = {
        tid: rec for tid, rec in stored.items() if tid in remote and tid not in tasks
    }
    for tid, task in tasks.items():
        parsed = [parse_annotation(a, config.from_name) for a in task.get("annotations") or []]
        annotations[tid] = [_record(p) for p in parsed]
        resolution = resolve_label(
            (_answer(p) for p in parsed), policy, config.labels, config.from_name
        )
        current[tid] = TaskRecord(
            task_id=tid,
            image_url=images.urls.get(tid),
            image_sha256=images.shas.get(tid),
            remote_updated_at=remote.get(tid) or str(task.get("updated_at") or ""),
            label=resolution.label,
            problem=images.problems.get(tid) or resolution.problem,
        )
    current = mark_conflicts(current)

    chosen: dict[str, str] = {}
    skipped: list[tuple[int, str]] = []
    unlabeled = 0
    for tid, rec in sorted(current.items()):
        if rec.problem:
            skipped.append((tid, rec.problem))
        elif rec.label is None:
            unlabeled += 1
        elif rec.image_sha256:
            chosen[rec.image_sha256] = rec.label
    items = [
        VersionItemRecord(sha, label, split_for(sha, split))
        for sha, label in sorted(chosen.items())
    ]
    deleted = [
        replace(rec, deleted=True)
        for tid, rec in stored.items()
        if tid not in remote and not rec.deleted
    ]
    changes = [rec for tid, rec in current.items() if stored.get(tid) != rec] + deleted
    return SyncPlan(
        items=items,
        changes=changes,
        annotations=annotations,
        deleted=deleted,
        watermark=max(remote.values(), default=watermark),
        labeled=sum(1 for r in current.values() if r.label and not r.problem),
        unlabeled=unlabeled,
        skipped=skipped,
    )


def _answer(p: ParsedAnnotation) -> Answer:
    return Answer(
        annotation_id=p.annotation_id,
        label=p.label,
        updated_at=p.updated_at,
        was_cancelled=p.was_cancelled,
        ground_truth=p.ground_truth,
        problem=p.choice.problem,
    )


def _record(p: ParsedAnnotation) -> AnnotationRecord:
    return AnnotationRecord(
        annotation_id=p.annotation_id,
        label=p.label,
        result_json=p.result_json,
        was_cancelled=p.was_cancelled,
        ground_truth=p.ground_truth,
        completed_by=p.completed_by,
        remote_created_at=p.created_at,
        remote_updated_at=p.updated_at,
    )


def mark_conflicts(tasks: Mapping[int, TaskRecord]) -> dict[int, TaskRecord]:
    """The same image under two tasks with different labels: both are left out, with the reason."""
    by_sha: dict[str, list[TaskRecord]] = {}
    for rec in tasks.values():
        if rec.image_sha256 and rec.label and not _is_own_problem(rec.problem):
            by_sha.setdefault(rec.image_sha256, []).append(rec)
    out = dict(tasks)
    for rec in tasks.values():
        if rec.problem and rec.problem.startswith(CONFLICT_PROBLEM):
            out[rec.task_id] = replace(rec, problem=None)
    for sha, group in by_sha.items():
        if len({r.label for r in group}) < 2:
            continue
        for rec in group:
            others = ", ".join(
                f"task {o.task_id} says {o.label!r}"
                for o in sorted(group, key=lambda r: r.task_id)
                if o.task_id != rec.task_id
            )
            out[rec.task_id] = replace(
                rec,
                problem=f"{CONFLICT_PROBLEM} image {sha[:12]} is labeled {rec.label!r} here "
                f"but {others}",
            )
    return out


def _is_own_problem(problem: str | None) -> bool:
    return bool(problem) and not str(problem).startswith(CONFLICT_PROBLEM)


# -- 6. commit ----------------------------------------------------------------------------------


# How each policy picks a task's label, for the version note ("(latest)" read as "the latest
# version").
POLICY_WORDS: dict[Policy, str] = {
    "latest": "latest annotation per task",
    "majority": "majority of a task's annotations (ties: the latest)",
    "ground-truth": "ground-truth annotation per task, else the latest",
}


def sync_note(project_id: int, policy: Policy) -> str:
    """A synced version's default note: where it came from and how its labels were picked."""
    return f"sync of Label Studio project {project_id}; labels: {POLICY_WORDS[policy]}"


def left_out_note(skipped: list[tuple[int, str]]) -> str:
    """What a synced version's note adds about the live tasks that give it no row, so that
    `a2m versions` does not pass a version short of a task for the whole project: the task
    and why when it is one, how many of each reason when they are several."""
    if not skipped:
        return ""
    if len(skipped) == 1:
        task_id, reason = skipped[0]
        return f"; 1 task left out (task {task_id}, {reason})"
    counts = Counter(reason.split(":")[0] for _, reason in skipped)
    kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items()))
    return f"; {len(skipped)} tasks left out ({kinds}; a2m sync lists them)"


@dataclass(frozen=True)
class CommitOutcome:
    # The version now current (new or unchanged); None: nothing labeled yet on an empty store.
    version: NewVersion | None
    added: int = 0
    removed: int = 0
    relabeled: int = 0
    flags_resolved: dict[str, int] = field(default_factory=dict)


def commit(
    store: Store,
    project_id: int,
    plan: SyncPlan,
    staged: list[StagedImage],
    config: LabelingConfig,
    policy: Policy,
    *,
    note: str,
) -> CommitOutcome:
    """Image rows, task rows, annotation revisions, the watermark and the version: one transaction.

    Every blob the version needs must already be in the blob store (the download step put them
    there); one that vanished fails the whole commit.
    """
    settings = store.settings
    added = removed = relabeled = 0
    with store.write() as session:
        record_images(session, staged)
        missing = {
            item.image_sha256 for item in plan.items if not store.blobs.has(item.image_sha256)
        }
        if missing:
            raise StoreError(
                f"{len(missing)} image blob(s) vanished during the sync; run it again."
            )
        # An empty project on an empty store is not a change: no empty version 1.
        outcome = (
            create_version(
                session,
                plan.items,
                source="sync",
                note=note,
                fractions=settings.split,
            )
            if plan.items or latest_version(session) is not None
            else None
        )
        if outcome is not None and outcome.created:
            if outcome.version.parent is None:
                added = len(plan.items)
            else:
                diff = diff_versions(session, outcome.version.parent, outcome.version.number)
                added, removed, relabeled = len(diff.added), len(diff.removed), len(diff.relabeled)
        save_sync(
            session,
            project_id,
            plan.changes,
            plan.annotations,
            watermark=plan.watermark,
            labels=list(config.labels),
            policy=policy,
            version=outcome.version.number if outcome else None,
        )
        # Flags pushed to these tasks are settled by the answers just written (a2m flag).
        resolved = resolve_flags(session, project_id)
    return CommitOutcome(
        version=outcome,
        added=added,
        removed=removed,
        relabeled=relabeled,
        flags_resolved=resolved,
    )
