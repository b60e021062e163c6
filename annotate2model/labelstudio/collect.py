"""`a2m collect`: put a folder of images into the project as tasks, skipping images it holds.

Images go in as Local Files references when the server can read the folder (our own `studio up`
server, which serves files from `files_root`), else as uploads. Every task carries the image's
SHA-256 in `data.sha256`, so a later collect recognises what the project already holds.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from annotate2model.errors import InputError, InvalidImage
from annotate2model.imaging import probe_image
from annotate2model.labelstudio import results
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.config import LabelingConfig, parse_label_config
from annotate2model.progress import NullProgress, Progress
from annotate2model.store.blobs import sha256_bytes

LabelsAs = Literal["annotations", "predictions"]
IMPORT_BATCH = 500
PREDICTION_MODEL = "a2m-folders"


@dataclass
class CollectResult:
    project_id: int
    # "local-files" or "upload".
    mode: str
    files_seen: int = 0
    tasks_created: int = 0
    labeled: int = 0
    already_in_project: int = 0
    # (relative path, reason) for each file that did not become a task.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # With labels from folders: images at the top of the folder (no folder names a label),
    # added unlabeled.
    outside_label_folders: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _File:
    rel: str
    path: Path
    sha256: str
    label: str | None


def collect_folder(
    client: LabelStudioClient,
    project_id: int,
    folder: Path,
    *,
    known_hashes: set[str] | None = None,
    labels_from_folders: bool = False,
    labels_as: LabelsAs = "annotations",
    files_root: Path | None = None,
    max_pixels: int = 178_956_970,
    progress: Progress | None = None,
    workers: int = 4,
) -> CollectResult:
    """Create one task per new image of `folder` (recursively).

    `known_hashes` are images the store already saw in this project; the project's own
    `data.sha256` fields are added to them. `files_root` is the Local Files document root of the
    server when it can see this machine's files (None: upload the bytes).
    """
    progress = progress or NullProgress()
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder.")
    project = client.project(project_id)
    config = parse_label_config(project.label_config, project_id)
    known = set(known_hashes or ())
    for _total, page in client.task_pages(project_id, include="id,data"):
        for task in page:
            sha = (task.get("data") or {}).get("sha256")
            if isinstance(sha, str):
                known.add(sha)

    paths = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not paths:
        raise InputError(f"{folder} holds no files.")
    # Label Studio takes a Local Files storage only strictly below its document root.
    use_local = (
        files_root is not None
        and folder.is_relative_to(files_root.resolve())
        and folder.resolve() != files_root.resolve()
    )
    result = CollectResult(project_id=project_id, mode="local-files" if use_local else "upload")
    result.files_seen = len(paths)

    def check(path: Path) -> _File | tuple[str, str]:
        rel = path.relative_to(folder).as_posix()
        try:
            data = path.read_bytes()
            probe_image(data, max_pixels)
        except OSError as exc:
            return rel, f"cannot read: {exc.strerror}"
        except InvalidImage as exc:
            return rel, str(exc)
        parts = path.relative_to(folder).parts
        label = parts[0].strip() if labels_from_folders and len(parts) > 1 else None
        return _File(rel=rel, path=path, sha256=sha256_bytes(data), label=label)

    progress.begin(f"Checking {folder.name}", total=len(paths))
    files: list[_File] = []
    seen: set[str] = set()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for outcome in pool.map(check, paths):
            progress.advance()
            if isinstance(outcome, tuple):
                result.skipped.append(outcome)
            elif outcome.sha256 in known:
                result.already_in_project += 1
            elif outcome.sha256 in seen:
                result.skipped.append((outcome.rel, "same image as another file in this folder"))
            else:
                seen.add(outcome.sha256)
                files.append(outcome)
    progress.end()
    for f in files:
        if f.label is not None and f.label not in config.labels:
            result.skipped.append(
                (f.rel, f"folder label {f.label!r} is not in the labeling config; added unlabeled")
            )
    if labels_from_folders:
        result.outside_label_folders = sorted(f.rel for f in files if "/" not in f.rel)
    if not files:
        return result

    if use_local:
        assert files_root is not None
        if not any(
            folder.is_relative_to(Path(p).resolve()) for p in client.local_storages(project_id)
        ):
            # Refused (a server that cannot see this folder): upload instead.
            use_local = client.add_local_storage(project_id, str(folder))
            result.mode = "local-files" if use_local else "upload"
    if use_local:
        assert files_root is not None
        urls = {f.sha256: _local_url(f.path, files_root) for f in files}
    else:
        progress.begin("Uploading images", total=len(files))

        def upload(f: _File) -> tuple[str, str]:
            return f.sha256, client.upload_file(project_id, f.path.name, f.path.read_bytes())

        urls = {}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for sha, url in pool.map(upload, files):
                urls[sha] = url
                progress.advance()
        progress.end()

    progress.begin("Creating tasks", total=len(files))
    for start in range(0, len(files), IMPORT_BATCH):
        batch = files[start : start + IMPORT_BATCH]
        tasks = [_task(f, urls[f.sha256], config, labels_as) for f in batch]
        ids = client.import_tasks(project_id, tasks)
        result.tasks_created += len(ids) or len(batch)
        result.labeled += sum(1 for f in batch if f.label in config.labels)
        progress.advance(len(batch))
    progress.end()
    result.skipped.sort()
    return result


def _task(f: _File, url: str, config: LabelingConfig, labels_as: LabelsAs) -> dict[str, Any]:
    task: dict[str, Any] = {"data": {config.image_field: url, "sha256": f.sha256}}
    if f.label is not None and f.label in config.labels:
        if labels_as == "predictions":
            task["predictions"] = [
                results.prediction(config, f.label, model_version=PREDICTION_MODEL)
            ]
        else:
            # A folder name is a starting point, not a reviewed answer: not ground truth.
            task["annotations"] = [results.annotation(config, f.label, ground_truth=False)]
    return task


def _local_url(path: Path, files_root: Path) -> str:
    rel = os.path.relpath(path.resolve(), files_root.resolve())
    return "/data/local-files/?d=" + quote(Path(rel).as_posix())
