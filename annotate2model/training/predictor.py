"""Predictor: a trained run loaded once, giving class probabilities for images.

A run folder (safetensors + model.json) is all it needs: no store is opened. Images may be files,
raw bytes, decoded Pillow images or uint8 RGB arrays; they are decoded and run in batches on the
chosen device. A probe's frozen-trunk features can come from (and go to) the embedding cache when
the caller gives each image a key (its SHA-256). An ensemble is a Predictor made of Predictors.

    predictor = Predictor.load(run_dir, device="auto")
    result = predictor.predict([Path("a.jpg"), open("b.png", "rb").read()])
    result.top(0, k=3)  # [("bees", 0.91), ("ants", 0.09)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from annotate2model.errors import TrainingError
from annotate2model.imaging import DEFAULT_MAX_PIXELS
from annotate2model.progress import NullProgress, Progress
from annotate2model.training import artifacts
from annotate2model.training.config import eval_batch_size, resolve_workers
from annotate2model.training.data import Preprocessing
from annotate2model.training.device import pick_device, use_bf16
from annotate2model.training.embeddings import (
    EmbeddingCache,
    ExtractJob,
    extract,
    forward_images,
    model_key,
)
from annotate2model.training.images import ImageSource


@dataclass(frozen=True)
class Predictions:
    """Probabilities for a list of images, row i for input i; a row of NaN where input i could
    not be read, and `errors[i]` says why."""

    labels: list[str]
    probs: NDArray[np.float32]
    errors: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    @property
    def ok(self) -> NDArray[np.bool_]:
        return np.asarray(~np.isnan(self.probs).any(axis=1), dtype=np.bool_)

    def top(self, index: int, k: int = 5) -> list[tuple[str, float]]:
        """The `k` likeliest labels of input `index` with their probabilities (empty on error)."""
        if index in self.errors:
            return []
        p = self.probs[index]
        order = np.argsort(-p, kind="stable")[: max(1, k)]
        return [(self.labels[i], float(p[i])) for i in order]


class _RunModel:
    """What both kinds of predictor know of the run they were loaded from."""

    card: dict[str, Any]
    labels: list[str]

    @property
    def run_id(self) -> int | None:
        run = self.card.get("run")
        return int(run) if run is not None else None


class Predictor(_RunModel):
    """One trained classifier (a probe or a fine-tuned run), loaded once."""

    def __init__(
        self,
        run_dir: Path,
        card: dict[str, Any],
        device: torch.device,
        cache: EmbeddingCache | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        workers: int = -1,
    ) -> None:
        self.run_dir = run_dir
        self.card = card
        self.device = device
        self.labels: list[str] = list(card["labels"])
        self.prep = Preprocessing(card["preprocessing"]["resize"], card["preprocessing"]["crop"])
        self.bf16 = card.get("precision") == "bf16" and use_bf16(device, "auto")
        self.cache = cache
        self.max_pixels = max_pixels
        self.workers = resolve_workers(workers)
        self._model: torch.nn.Module | None = None
        head = artifacts.read_tensors(run_dir / artifacts.HEAD_FILE)
        self._weight = head["weight"].float()
        self._bias = head["bias"].float()
        key = card.get("embedding_key")
        if key and card.get("precision") == "bf16" and not self.bf16:
            # Features computed here in fp32 must not land under the bf16 features' key.
            identity = card["config"]["weights_identity"]
            key = model_key(card["architecture"], identity, self.prep, False)
        # Set for frozen trunks (probes): their features may be cached, keyed by content.
        self.embedding_key: str | None = key or None

    @staticmethod
    def load(
        run_dir: Path,
        device: str | torch.device = "auto",
        cache: EmbeddingCache | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        workers: int = -1,
    ) -> Predictor | EnsemblePredictor:
        """The run in `run_dir` (an ensemble's members are read from sibling run folders)."""
        card = artifacts.read_card(run_dir)
        dev = device if isinstance(device, torch.device) else pick_device(device)
        if card.get("kind") == "ensemble":
            members = [
                Predictor.load(run_dir.parent / str(m), dev, cache, max_pixels, workers)
                for m in card["members"]
            ]
            return EnsemblePredictor(members, card)
        if card.get("kind") != "classifier":
            raise TrainingError(f"{run_dir} holds a {card.get('kind')}, not a classifier.")
        return Predictor(run_dir, card, dev, cache, max_pixels, workers)

    @property
    def batch_size(self) -> int:
        return eval_batch_size(self.device.type)

    def _network(self) -> torch.nn.Module:
        """The whole classifier, or the trunk alone when features go through the cache; built
        once (on first use) and kept."""
        if self._model is None:
            model, _ = artifacts.load_classifier(self.run_dir)
            self._model = model
        return self._model

    def _trunk(self) -> torch.nn.Module:
        model = self._network()
        trunk: torch.nn.Module = model.trunk  # type: ignore[assignment]
        return trunk

    def predict(
        self,
        images: Sequence[ImageSource],
        keys: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> Predictions:
        """Class probabilities for `images`, in batches. `keys` (one per image, e.g. its
        SHA-256) let a probe reuse cached features and store new ones."""
        progress = progress or NullProgress()
        n = len(images)
        probs = np.full((n, len(self.labels)), np.nan, dtype=np.float32)
        errors: dict[int, str] = {}
        if n == 0:
            return Predictions(self.labels, probs, errors)
        if keys is not None and len(keys) != n:
            raise ValueError("give one key per image")
        names = list(keys) if keys is not None else [f"#{i}" for i in range(n)]
        position: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            position.setdefault(name, []).append(i)
        if self.embedding_key and self.cache is not None and keys is not None:
            features, stats = extract(
                self.cache,
                self.embedding_key,
                f"run {self.run_id} trunk ({self.card['architecture']})",
                [ExtractJob(k, src, 0) for k, src in zip(names, images, strict=True)],
                self._trunk,
                self.prep,
                self.device,
                self.bf16,
                batch_size=self.batch_size,
                workers=self.workers,
                progress=progress,
                max_pixels=self.max_pixels,
            )
            for key, reason in stats.skipped:
                for i in position[key]:
                    errors[i] = reason
            good = [i for i in range(n) if i not in errors]
            if good:
                x = torch.from_numpy(np.stack([features[(names[i], 0)] for i in good]))
                probs[good] = torch.softmax(x @ self._weight.T + self._bias, dim=1).numpy()
            return Predictions(self.labels, probs, errors)
        jobs = [ExtractJob(str(i), src, 0) for i, src in enumerate(images)]
        # A probe's head runs in fp32 on the trunk's features, as when it was trained.
        frozen = self.embedding_key is not None
        progress.begin("Predicting", total=n)
        for batch in forward_images(
            jobs,
            self._trunk if frozen else self._network,
            self.prep,
            self.device,
            self.bf16,
            self.batch_size,
            self.workers,
            max_pixels=self.max_pixels,
        ):
            for job, reason in batch.errors:
                errors[int(job.sha256)] = reason
            if batch.kept:
                rows = [int(job.sha256) for job in batch.kept]
                out = torch.from_numpy(batch.outputs)
                logits = out @ self._weight.T + self._bias if frozen else out
                probs[rows] = torch.softmax(logits, dim=1).numpy()
            progress.advance(len(batch.kept) + len(batch.errors))
        progress.end()
        return Predictions(self.labels, probs, errors)


class EnsemblePredictor(_RunModel):
    """Members' probabilities averaged; an image is usable only if every member could read it."""

    def __init__(
        self, members: Sequence[Predictor | EnsemblePredictor], card: dict[str, Any] | None = None
    ) -> None:
        if len(members) < 2:
            raise TrainingError("an ensemble needs at least two members.")
        label_sets = {tuple(m.labels) for m in members}
        if len(label_sets) != 1:
            raise TrainingError(
                "the runs were trained on different label sets; they cannot be averaged."
            )
        self.members = list(members)
        self.labels: list[str] = list(members[0].labels)
        self.card = card or {"kind": "ensemble", "labels": self.labels}

    def predict(
        self,
        images: Sequence[ImageSource],
        keys: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> Predictions:
        parts = [m.predict(images, keys, progress) for m in self.members]
        errors: dict[int, str] = {}
        for part in parts:
            for i, reason in part.errors.items():
                errors.setdefault(i, reason)
        probs = np.mean([p.probs for p in parts], axis=0).astype(np.float32)
        if errors:
            probs[sorted(errors)] = np.nan
        return Predictions(self.labels, probs, errors)
