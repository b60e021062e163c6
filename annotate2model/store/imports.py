"""`import-folder`: an ImageFolder-style tree (class folders of images) becomes a version."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from annotate2model.errors import InputError, InvalidImage
from annotate2model.progress import NullProgress, Progress
from annotate2model.settings import SPLITS
from annotate2model.store.blobs import sha256_bytes
from annotate2model.store.db import Store
from annotate2model.store.images import StagedImage, known_images, record_images, stage_image
from annotate2model.store.records import NewVersion, VersionItemRecord
from annotate2model.store.versions import create_version, split_for

SplitSource = Literal["auto", "folders", "hash"]
SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}


@dataclass(frozen=True)
class FolderEntry:
    path: Path
    label: str
    split: str | None


@dataclass
class ImportResult:
    version: NewVersion | None
    files_seen: int = 0
    images_new: int = 0
    items: int = 0
    splits_from_folders: bool = False
    # (relative path, reason) for every file that was not ingested.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Identical bytes found under two paths with the same label: kept once.
    duplicates: list[tuple[str, str]] = field(default_factory=list)


def _visible(entries: Iterator[os.DirEntry[str]]) -> list[os.DirEntry[str]]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def scan_folder(
    root: Path, split_source: SplitSource = "auto"
) -> tuple[list[FolderEntry], list[tuple[str, str]], bool]:
    """List (file, label, given split) plus skipped files and whether splits were given."""
    if not root.exists():
        raise InputError(f"{root} does not exist.")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder.")
    try:
        with os.scandir(root) as it:
            top = _visible(it)
    except OSError as exc:
        raise InputError(f"cannot read {root}: {exc.strerror}.") from None
    top_dirs = [e for e in top if e.is_dir()]
    split_named = [e for e in top_dirs if e.name.lower() in SPLIT_ALIASES]
    if split_source == "folders" and not split_named:
        raise InputError(f"{root} has no train/, val/ or test/ folder to take splits from.")
    given = split_source != "hash" and bool(top_dirs) and len(split_named) == len(top_dirs)
    entries: list[FolderEntry] = []
    skipped: list[tuple[str, str]] = []
    roots = (
        [(Path(e.path), SPLIT_ALIASES[e.name.lower()]) for e in split_named]
        if given
        else [(root, None)]
    )
    for base, split in roots:
        with os.scandir(base) as it:
            for entry in _visible(it):
                rel = os.path.relpath(entry.path, root)
                if not entry.is_dir():
                    skipped.append((rel, "not inside a class folder"))
                    continue
                for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    for name in sorted(filenames):
                        if name.startswith("."):
                            continue
                        entries.append(FolderEntry(Path(dirpath) / name, entry.name.strip(), split))
    return entries, skipped, given


def import_folder(
    store: Store,
    root: Path,
    *,
    note: str = "",
    split_source: SplitSource = "auto",
    progress: Progress | None = None,
    workers: int = 4,
) -> ImportResult:
    """Ingest a folder of class folders and record it as a version (none when nothing changed).

    Each bad file is reported by name with its reason and the rest proceeds. Blobs are written
    before the rows that reference them, and the version commits in one transaction.
    """
    progress = progress or NullProgress()
    settings = store.settings
    entries, skipped, given = scan_folder(root, split_source)
    if not entries:
        raise InputError(
            f"no image files found in {root}; expected class folders of images "
            "(optionally under train/, val/, test/)."
        )
    result = ImportResult(version=None, files_seen=len(entries), splits_from_folders=given)
    result.skipped.extend(skipped)

    def read(entry: FolderEntry) -> tuple[FolderEntry, bytes, str] | tuple[FolderEntry, str]:
        """The file's bytes and their SHA-256 (hashed here: hashlib lets go of the GIL, so the
        workers hash on every core), or why it cannot be read."""
        try:
            data = entry.path.read_bytes()
        except OSError as exc:
            return entry, f"cannot read: {exc.strerror}"
        return entry, data, sha256_bytes(data)

    progress.begin(f"Reading {root.name or root}", total=len(entries))
    loaded: list[tuple[FolderEntry, bytes, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for got in pool.map(read, entries):
            if len(got) == 2:
                entry, error = got
                result.skipped.append((os.path.relpath(entry.path, root), error))
            else:
                loaded.append(got)
            progress.advance()
    progress.end()

    with store.read() as session:
        known = known_images(session, {sha for _, _, sha in loaded})

    def stage(item: tuple[FolderEntry, bytes, str]) -> StagedImage | str | None:
        entry, data, sha = item
        if sha in known:
            if not store.blobs.has(sha):
                store.blobs.put(data, sha)
            return None
        try:
            return stage_image(store.blobs, data, str(entry.path), settings.max_image_pixels)
        except InvalidImage as exc:
            return str(exc)

    progress.begin("Checking images", total=len(loaded))
    staged: list[StagedImage] = []
    chosen: dict[str, tuple[str, FolderEntry]] = {}
    conflicts: dict[str, list[str]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (entry, _data, sha), outcome in zip(loaded, pool.map(stage, loaded), strict=True):
            progress.advance()
            rel = os.path.relpath(entry.path, root)
            if isinstance(outcome, str):
                result.skipped.append((rel, outcome))
                continue
            if outcome is not None:
                staged.append(outcome)
            if sha in chosen:
                first_rel, first = chosen[sha]
                if (first.label, first.split) == (entry.label, entry.split):
                    result.duplicates.append((rel, first_rel))
                else:
                    conflicts.setdefault(sha, [first_rel]).append(rel)
                continue
            chosen[sha] = (rel, entry)
    progress.end()

    for sha, paths in conflicts.items():
        chosen.pop(sha, None)
        for rel in paths:
            others = ", ".join(p for p in paths if p != rel)
            result.skipped.append(
                (rel, f"same image as {others} under another label or split; left out")
            )
    for rel, reason in sorted(result.skipped):
        progress.note(f"skipped {rel}: {reason}")
    result.skipped.sort()

    items = [
        VersionItemRecord(
            image_sha256=sha,
            label=entry.label,
            split=entry.split if entry.split in SPLITS else split_for(sha, settings.split),
        )
        for sha, (_rel, entry) in chosen.items()
    ]
    if not items:
        raise InputError(
            f"none of the {len(entries)} files in {root} could be imported "
            f"(first problem: {result.skipped[0][0]}: {result.skipped[0][1]})."
        )
    with store.write() as session:
        result.images_new = record_images(session, staged)
        result.version = create_version(
            session,
            items,
            source="import-folder",
            note=note or f"import-folder {root}",
            fractions=settings.split,
        )
    result.items = len(items)
    return result
