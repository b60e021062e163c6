"""`a2m sync`: bring a Label Studio project into the store and version it when anything changed.

Incremental: a cheap listing of (task id, updated_at) says which tasks are new, changed or gone;
only those are fetched in full: by id (the Data Manager's `selectedItems`), or with one plain
listing when they are most of the project. Comparing each task's own `updated_at` with the stored
one needs no clock arithmetic. (An earlier version filtered on `updated_at > watermark - 2 s`, so
every task touched in the 2 s before the last sync, e.g. a bulk import, came back in full on every
later sync.) The watermark, the newest `updated_at` seen, is still recorded for reference.

Image bytes are read concurrently, validated and written to the blob store first; then task rows,
annotation revisions, the watermark and the new version commit in one write transaction. A
failure (or a kill) before that commit leaves the store as it was, and the next sync redoes the
same work and reaches the same version.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote_to_bytes

from annotate2model.errors import InvalidImage, LabelStudioError, StoreError
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.config import LabelingConfig, parse_label_config
from annotate2model.progress import NullProgress, Progress
from annotate2model.store.db import Store
from annotate2model.store.images import StagedImage, known_images, record_images, stage_image
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

Policy = Literal["latest", "majority", "ground-truth"]
POLICIES: tuple[str, ...] = ("latest", "majority", "ground-truth")
IMAGE_PROBLEM = "image: "


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
    progress: Progress | None = None,
    workers: int = 8,
) -> SyncResult:
    """Sync one project; raises LabelStudioError (writing nothing) when the server fails us."""
    started = time.monotonic()
    if policy not in POLICIES:
        raise LabelStudioError(f"unknown policy {policy!r}; use latest, majority or ground-truth.")
    progress = progress or NullProgress()
    settings = store.settings
    project = client.project(project_id)
    config = parse_label_config(project.label_config, project_id)
    with store.read() as session:
        stored = load_tasks(session, project_id)
        state = load_sync_state(session, project_id)
    labels_changed = state is None or state.labels != list(config.labels) or state.policy != policy

    # 1. Which tasks exist now, and which changed since they were stored.
    progress.begin("Listing tasks")
    remote: dict[int, str] = {}
    for _total, page in client.task_pages(project_id, ids_only=True):
        for task in page:
            remote[int(task["id"])] = str(task.get("updated_at") or "")
        progress.advance(len(page))
    progress.end()
    wanted = {
        tid
        for tid, updated in remote.items()
        if tid not in stored
        or stored[tid].remote_updated_at != updated
        or stored[tid].deleted
        or _retry_image(stored[tid])
    }
    if labels_changed:
        # A label entered or left the config, or the policy changed: re-resolve every task.
        wanted = set(remote)

    # 2. Fetch the wanted tasks in full: by id when they are a few, else one plain listing.
    fetched: dict[int, dict[str, Any]] = {}
    if wanted:
        progress.begin("Reading changed tasks", total=len(wanted))
        pages: Iterable[list[dict[str, Any]]]
        if len(wanted) * 2 > len(remote):
            pages = (page for _total, page in client.task_pages(project_id))
        else:
            pages = client.tasks_by_id(project_id, wanted)
        for page in pages:
            for task in page:
                tid = int(task["id"])
                if tid in wanted and tid not in fetched:
                    fetched[tid] = task
                    progress.advance()
        # Wanted tasks the answers left out: one by one (404: deleted since the id listing).
        for tid in sorted(wanted - set(fetched)):
            response = client.request("GET", f"/api/tasks/{tid}")
            if response.status_code == 404:
                remote.pop(tid, None)  # deleted while we were reading
                continue
            if response.status_code >= 400:
                raise LabelStudioError(
                    f"Label Studio answered HTTP {response.status_code} for task {tid}."
                )
            fetched[tid] = response.json()
            progress.advance()
        progress.end()

    # 3. Images: reuse what is stored for an unchanged URL, download the rest concurrently.
    urls: dict[int, str | None] = {tid: _image_url(task, config) for tid, task in fetched.items()}
    shas: dict[int, str | None] = {}
    problems: dict[int, str] = {}
    to_download: dict[str, list[int]] = {}
    for tid, url in urls.items():
        old = stored.get(tid)
        if url is None:
            problems[tid] = f"{IMAGE_PROBLEM}the task has no {config.image_field!r} field"
            shas[tid] = None
        elif old is not None and old.image_url == url and old.image_sha256:
            shas[tid] = old.image_sha256
        else:
            to_download.setdefault(url, []).append(tid)
    staged: list[StagedImage] = []
    if to_download:
        progress.begin("Downloading images", total=len(to_download))

        def fetch(url: str) -> tuple[str, StagedImage | None, str | None]:
            try:
                data = _read_image(client, url)
            except _ImageUnavailable as exc:
                return url, None, str(exc)
            try:
                return (
                    url,
                    stage_image(store.blobs, data, url[:500], settings.max_image_pixels),
                    None,
                )
            except InvalidImage as exc:
                return url, None, str(exc)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for url, image, error in pool.map(fetch, list(to_download)):
                for tid in to_download[url]:
                    if image is None:
                        shas[tid] = None
                        problems[tid] = f"{IMAGE_PROBLEM}{error}"
                    else:
                        shas[tid] = image.sha256
                if image is not None:
                    staged.append(image)
                progress.advance()
        progress.end()

    # 4. Labels of the fetched tasks; then the whole project's rows, with conflicts found.
    annotations: dict[int, list[AnnotationRecord]] = {}
    current: dict[int, TaskRecord] = {
        tid: rec for tid, rec in stored.items() if tid in remote and tid not in fetched
    }
    for tid, task in fetched.items():
        records = [_annotation(a, config) for a in task.get("annotations") or []]
        annotations[tid] = records
        label, reason = resolve_label(records, policy, config)
        image_problem = problems.get(tid)
        current[tid] = TaskRecord(
            task_id=tid,
            image_url=urls[tid],
            image_sha256=shas.get(tid),
            remote_updated_at=remote.get(tid) or str(task.get("updated_at") or ""),
            label=label,
            problem=image_problem or reason,
        )
    current = _mark_conflicts(current)

    # 5. Version rows and the changes to write.
    result = SyncResult(project_id=project_id, version=None, tasks_total=len(remote))
    result.tasks_fetched = len(fetched)
    result.images_downloaded = len(staged)
    chosen: dict[str, str] = {}
    for tid, rec in sorted(current.items()):
        if rec.problem:
            result.skipped.append((tid, rec.problem))
        elif rec.label is None:
            result.unlabeled += 1
        elif rec.image_sha256:
            chosen[rec.image_sha256] = rec.label
    result.labeled = sum(1 for r in current.values() if r.label and not r.problem)
    items = [
        VersionItemRecord(sha, label, split_for(sha, settings.split))
        for sha, label in sorted(chosen.items())
    ]
    deleted = [
        TaskRecord(
            task_id=rec.task_id,
            image_url=rec.image_url,
            image_sha256=rec.image_sha256,
            remote_updated_at=rec.remote_updated_at,
            label=rec.label,
            problem=rec.problem,
            deleted=True,
        )
        for tid, rec in stored.items()
        if tid not in remote and not rec.deleted
    ]
    result.deleted_tasks = len(deleted)
    changes = [rec for tid, rec in current.items() if stored.get(tid) != rec] + deleted
    watermark = max(remote.values(), default=state.watermark if state else None)

    with store.write() as session:
        known = known_images(session, {s.sha256 for s in staged})
        record_images(session, [s for s in staged if s.sha256 not in known])
        missing = {sha for sha in chosen if not store.blobs.has(sha)}
        if missing:
            raise StoreError(
                f"{len(missing)} image blob(s) vanished during the sync; run it again."
            )
        # An empty project on an empty store is not a change: no empty version 1.
        outcome = (
            create_version(
                session,
                items,
                source="sync",
                note=f"sync of Label Studio project {project_id} ({policy})",
                fractions=settings.split,
            )
            if items or latest_version(session) is not None
            else None
        )
        if outcome is not None and outcome.created:
            if outcome.version.parent is None:
                result.added = len(items)
            else:
                diff = diff_versions(session, outcome.version.parent, outcome.version.number)
                result.added, result.removed, result.relabeled = (
                    len(diff.added),
                    len(diff.removed),
                    len(diff.relabeled),
                )
        save_sync(
            session,
            project_id,
            changes,
            annotations,
            watermark=watermark,
            labels=list(config.labels),
            policy=policy,
            version=outcome.version.number if outcome else None,
        )
    result.version = outcome
    result.seconds = time.monotonic() - started
    return result


def resolve_label(
    annotations: Iterable[AnnotationRecord], policy: Policy, config: LabelingConfig
) -> tuple[str | None, str | None]:
    """(label, problem) of one task: cancelled ones ignored, the policy picks among the rest.

    latest: the most recently updated annotation. majority: the most frequent label, a tie going
    to the latest of the tied. ground-truth: the latest annotation flagged ground truth, else the
    latest. Label Studio flags every annotation imported inline (POST .../import with
    "annotations") as ground truth unless the import says `"ground_truth": false`, so under
    ground-truth such an import beats later answers from annotators; `a2m collect` imports folder
    labels with the flag off.
    """
    items = list(annotations)
    if not items:
        return None, None
    usable = [a for a in items if not a.was_cancelled and a.label is not None]
    if not usable:
        if all(a.was_cancelled for a in items):
            return None, "skipped: every annotation was cancelled"
        return None, None
    latest_first = sorted(
        usable, key=lambda a: (a.remote_updated_at, a.annotation_id), reverse=True
    )
    if policy == "ground-truth":
        truth = [a for a in latest_first if a.ground_truth]
        label = (truth or latest_first)[0].label
    elif policy == "majority":
        counts = Counter(a.label for a in usable)
        top = max(counts.values())
        tied = {lab for lab, n in counts.items() if n == top}
        # A tie goes to the most recent of the tied labels.
        label = next(a.label for a in latest_first if a.label in tied)
    else:
        label = latest_first[0].label
    if label not in config.labels:
        return None, f"label outside config: {label!r} is not a choice of {config.from_name!r}"
    return label, None


def _mark_conflicts(tasks: dict[int, TaskRecord]) -> dict[int, TaskRecord]:
    """The same image under two tasks with different labels: both are left out, with the reason."""
    by_sha: dict[str, list[TaskRecord]] = {}
    for rec in tasks.values():
        if rec.image_sha256 and rec.label and not _is_own_problem(rec.problem):
            by_sha.setdefault(rec.image_sha256, []).append(rec)
    out = dict(tasks)
    for rec in tasks.values():
        if rec.problem and rec.problem.startswith("conflict:"):
            out[rec.task_id] = _with_problem(rec, None)
    for sha, group in by_sha.items():
        if len({r.label for r in group}) < 2:
            continue
        for rec in group:
            others = ", ".join(
                f"task {o.task_id} says {o.label!r}"
                for o in sorted(group, key=lambda r: r.task_id)
                if o.task_id != rec.task_id
            )
            out[rec.task_id] = _with_problem(
                rec, f"conflict: image {sha[:12]} is labeled {rec.label!r} here but {others}"
            )
    return out


def _is_own_problem(problem: str | None) -> bool:
    return bool(problem) and not str(problem).startswith("conflict:")


def _with_problem(rec: TaskRecord, problem: str | None) -> TaskRecord:
    return TaskRecord(
        task_id=rec.task_id,
        image_url=rec.image_url,
        image_sha256=rec.image_sha256,
        remote_updated_at=rec.remote_updated_at,
        label=rec.label,
        problem=problem,
        deleted=rec.deleted,
    )


def _retry_image(rec: TaskRecord) -> bool:
    return rec.image_sha256 is None and bool(rec.problem and rec.problem.startswith(IMAGE_PROBLEM))


def _annotation(raw: dict[str, Any], config: LabelingConfig) -> AnnotationRecord:
    result = raw.get("result") or []
    label: str | None = None
    for region in result:
        if region.get("from_name") == config.from_name:
            choices = (region.get("value") or {}).get("choices") or []
            if choices:
                label = str(choices[0])
                break
    updated = str(raw.get("updated_at") or raw.get("created_at") or "")
    completed_by = raw.get("completed_by")
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("id")
    return AnnotationRecord(
        annotation_id=int(raw["id"]),
        label=label,
        result_json=json.dumps(result, sort_keys=True),
        was_cancelled=bool(raw.get("was_cancelled")),
        ground_truth=bool(raw.get("ground_truth")),
        completed_by=int(completed_by) if isinstance(completed_by, int) else None,
        remote_created_at=str(raw.get("created_at") or "") or None,
        remote_updated_at=updated,
    )


def _image_url(task: dict[str, Any], config: LabelingConfig) -> str | None:
    value = (task.get("data") or {}).get(config.image_field)
    return str(value) if value else None


class _ImageUnavailable(Exception):
    """One image could not be read; recorded against its task, the sync goes on."""


def _read_image(client: LabelStudioClient, url: str) -> bytes:
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        try:
            if header.endswith(";base64"):
                return base64.b64decode(payload, validate=False)
            return unquote_to_bytes(payload)
        except (binascii.Error, ValueError):
            raise _ImageUnavailable("the data: URL is not valid base64") from None
    if url.startswith("/"):
        # Served by Label Studio itself: an unreachable server aborts the sync (no partial read).
        response = client.request("GET", url)
        if response.status_code >= 400:
            raise _ImageUnavailable(f"Label Studio answered HTTP {response.status_code} for {url}")
        return response.content
    if url.startswith(("http://", "https://")):
        try:
            return client.get_external(url)
        except LabelStudioError as exc:
            raise _ImageUnavailable(str(exc)) from None
    raise _ImageUnavailable(f"unsupported image URL {url[:80]!r}")
