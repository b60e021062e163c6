"""What a run needs from its surroundings, as one small object.

Trainers and the Predictor never see the store or the settings: the caller (the CLI through
`RunContext.from_store`, a server, a test) says where the caches and run folders are, which device
was asked for, and how to find an image's bytes and the name the user knows it by.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from annotate2model.imaging import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from annotate2model.store import Store
    from annotate2model.training.features.embeddings import EmbeddingCache


def short_hash_names(shas: Sequence[str]) -> dict[str, str]:
    return {sha: f"image {sha[:12]}" for sha in shas}


@dataclass(frozen=True)
class RunContext:
    # The device asked for: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.
    device: str
    # Folder of the embedding cache (features of frozen trunks, trunk copies).
    cache_dir: Path
    # Folder under which each run gets its own folder, named by run id.
    runs_dir: Path
    # The file holding an image's bytes, by SHA-256.
    blob_path: Callable[[str], Path]
    # Decompression-bomb limit for images opened here.
    max_pixels: int = DEFAULT_MAX_PIXELS
    # How the user knows images (a task, a path), for warnings; short hashes by default.
    image_names: Callable[[Sequence[str]], dict[str, str]] = field(default=short_hash_names)

    def run_dir(self, run_id: int) -> Path:
        return self.runs_dir / str(run_id)

    def embedding_cache(self) -> EmbeddingCache:
        from annotate2model.training.features.embeddings import EmbeddingCache

        return EmbeddingCache(self.cache_dir)

    @classmethod
    def from_store(cls, store: Store) -> RunContext:
        from annotate2model.store.images import image_names

        def names(shas: Sequence[str]) -> dict[str, str]:
            with store.read() as session:
                return image_names(session, shas)

        settings = store.settings
        return cls(
            device=settings.device,
            cache_dir=settings.workspace.cache_dir / "embeddings",
            runs_dir=settings.workspace.runs_dir,
            blob_path=store.blobs.path,
            max_pixels=settings.max_image_pixels,
            image_names=names,
        )
