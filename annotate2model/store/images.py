"""Images in the store: validated once, bytes in the blob store, one row per SHA-256."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from annotate2model.imaging import ImageInfo, probe_image
from annotate2model.store.blobs import BlobStore, sha256_bytes
from annotate2model.store.dialect import insert_or_ignore
from annotate2model.store.models import Image


@dataclass(frozen=True)
class StagedImage:
    """An image whose bytes are safely in the blob store, ready for its row."""

    sha256: str
    info: ImageInfo
    size_bytes: int
    origin: str


def stage_image(blobs: BlobStore, data: bytes, origin: str, max_pixels: int) -> StagedImage:
    """Validate and store bytes (raises InvalidImage); the row is written later by `record_images`.

    Bytes go to disk before any row points at them, so a crash never leaves a row without a blob.
    """
    info = probe_image(data, max_pixels)
    digest = blobs.put(data, sha256_bytes(data))
    return StagedImage(sha256=digest, info=info, size_bytes=len(data), origin=origin)


def record_images(session: Session, staged: Iterable[StagedImage]) -> int:
    """Insert rows for staged images not yet known; returns how many were new."""
    now = datetime.now(UTC)
    rows = {
        s.sha256: {
            "sha256": s.sha256,
            **asdict(s.info),
            "size_bytes": s.size_bytes,
            "origin": s.origin,
            "created_at": now,
        }
        for s in staged
    }
    if not rows:
        return 0
    existing = known_images(session, rows)
    new = [row for sha, row in rows.items() if sha not in existing]
    insert_or_ignore(session, Image, new)
    return len(new)


def known_images(session: Session, shas: Iterable[str]) -> set[str]:
    """Which of these hashes already have a row."""
    wanted = list(shas)
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        found.update(session.scalars(select(Image.sha256).where(Image.sha256.in_(chunk))))
    return found


# Label Studio stores an upload as `<8 hex digits>-<the uploaded name>`.
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(?=.)")


def file_name(where: str | None) -> str | None:
    """The file name in an import path or a Label Studio image URL (of any of its four kinds)."""
    if not where or where.startswith("data:"):
        return None
    parts = urlsplit(where)
    uploaded = parts.path.startswith("/data/upload/")
    if parts.path == "/data/local-files/":  # Local Files storage: ?d=images/x.png
        path = (parse_qs(parts.query).get("d") or [""])[0]
    elif uploaded or parts.scheme in ("http", "https", "s3", "gs"):
        path = unquote(parts.path)
    else:
        path = where  # a file's path, a Windows one included
    name = PurePosixPath(path.replace("\\", "/")).name
    return (_UPLOAD_PREFIX.sub("", name) if uploaded else name) or None


def image_names(session: Session, shas: Iterable[str]) -> dict[str, str]:
    """How the user knows each image, for messages: its Label Studio task(s) and where it came
    from (a path or URL); the short hash only when the store knows nothing else."""
    from annotate2model.store.versions import image_sources

    wanted = sorted(set(shas))
    sources = image_sources(session, wanted)
    out = {}
    for sha in wanted:
        source = sources.get(sha)
        parts = [f"task {t} of project {p}" for p, t in source.tasks] if source else []
        if source is not None and source.origin:
            origin = source.origin
            # A Label Studio URL is long and says little: its file name is what a person knows.
            url = "://" in origin or origin.startswith("/data/")
            parts.append((file_name(origin) or origin) if url else origin)
        out[sha] = ", ".join(parts) or f"image {sha[:12]}"
    return out
