"""Predictor: a trained run loaded once, giving class probabilities for images.

A run folder (safetensors + model.json) is all it needs: no store is opened. Images may be files,
raw bytes, decoded Pillow images or uint8 RGB arrays; they are decoded and run in batches on the
chosen device. A probe's frozen-trunk features can come from (and go to) the embedding cache when
the caller gives each image a key (its SHA-256); `features` gives any run's trunk features the same
way (label issues are found on them). `forward` takes images a server has already decoded and
cropped. An ensemble is a Predictor made of Predictors. Everything in a2m that runs a trained model
runs it here: evaluate, predict, ensemble, compare, flag and serve (export writes the same network,
`export.ProbabilityModel`, to a file).

    predictor = Predictor.load(run_dir, device="auto")
    result = predictor.predict([Path("a.jpg"), open("b.png", "rb").read()])
    result.top(0, k=3)  # [("bees", 0.91), ("ants", 0.09)]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from annotate2model.errors import TrainingError
from annotate2model.imaging import DEFAULT_MAX_PIXELS
from annotate2model.progress import NullProgress, Progress
from annotate2model.training.config import eval_batch_size, resolve_workers
from annotate2model.training.features.device import pick_device, use_bf16
from annotate2model.training.features.embeddings import (
    EmbeddingCache,
    ExtractJob,
    Network,
    extract_features,
    forward_batches,
    model_key,
    torch_network,
)
from annotate2model.training.features.images import ImageSource, Preprocessing
from annotate2model.training.features.tensors import read_tensors
from annotate2model.training.fit.trainer import class_probabilities
from annotate2model.training.runs import artifacts
from annotate2model.training.runs.export import ProbabilityModel

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Features:
    """A run's trunk features for a list of images, row i for input i; a row of NaN where input i
    could not be read, and `errors[i]` says why."""

    rows: NDArray[np.float32]
    errors: dict[int, str] = field(default_factory=dict)


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
        self._crops_model: torch.nn.Module | None = None
        head = read_tensors(run_dir / artifacts.HEAD_FILE)
        self._weight = head["weight"].float()
        self._bias = head["bias"].float()
        key = card.get("embedding_key")
        identity = (card.get("config") or {}).get("weights_identity", "")
        if key and card.get("precision") == "bf16" and not self.bf16:
            # Features computed here in fp32 must not land under the bf16 features' key.
            key = model_key(card["architecture"], identity, self.prep, False)
        # Set for frozen trunks (probes): their features may be cached, keyed by content.
        self.embedding_key: str | None = key or None
        # Where `features` caches the trunk's features: a probe's are the backbone's own; a
        # fine-tuned trunk's are this run's alone.
        trunk_identity = identity if self.embedding_key else f"{identity}+run-{self.run_id}"
        self.features_key = self.embedding_key or model_key(
            card["architecture"], trunk_identity, self.prep, self.bf16
        )

    @staticmethod
    def load(
        run_dir: Path,
        device: str | torch.device = "auto",
        cache: EmbeddingCache | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        workers: int = -1,
    ) -> Predictor | EnsemblePredictor:
        """The run in `run_dir` (an ensemble's members are read from sibling run folders).
        `device` is decided here (`device.pick_device`), once for all members."""
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

    def _probabilities(self, outputs: NDArray[np.float32]) -> NDArray[np.float32]:
        """A probe's head (in fp32, as when it was trained) on trunk features, or a fine-tuned
        network's logits, to probabilities."""
        out = torch.from_numpy(outputs)
        logits = out @ self._weight.T + self._bias if self.embedding_key is not None else out
        probs: NDArray[np.float32] = class_probabilities(logits).numpy()
        return probs

    def features(
        self,
        images: Sequence[ImageSource],
        keys: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> Features:
        """The trunk's features (clean view, flattened) for `images`, in batches. With `keys`
        (one per image, e.g. its SHA-256) and a cache, cached features are reused and new ones
        stored under `features_key`."""
        return self._features(images, keys, progress or NullProgress(), "Extracting features")

    def _features(
        self,
        images: Sequence[ImageSource],
        keys: Sequence[str] | None,
        progress: Progress,
        title: str,
    ) -> Features:
        n = len(images)
        if keys is not None and len(keys) != n:
            raise ValueError("give one key per image")
        errors: dict[int, str] = {}
        vectors: dict[int, NDArray[Any]] = {}
        if n and self.cache is not None and keys is not None:
            names = list(keys)
            position: dict[str, list[int]] = {}
            for i, name in enumerate(names):
                position.setdefault(name, []).append(i)
            cache = self.cache
            found, stats = extract_features(
                cache,
                self.features_key,
                f"run {self.run_id} trunk ({self.card['architecture']})",
                [ExtractJob(k, src, 0) for k, src in zip(names, images, strict=True)],
                lambda: torch_network(self._trunk(), self.prep, self.device, self.bf16),
                self.prep,
                batch_size=self.batch_size,
                workers=self.workers,
                progress=progress,
                max_pixels=self.max_pixels,
            )
            for key, reason in stats.skipped:
                for i in position[key]:
                    errors[i] = reason
            vectors = {i: found[(names[i], 0)] for i in range(n) if i not in errors}
        elif n:
            progress.begin(title, total=n)
            trunk = lambda: torch_network(self._trunk(), self.prep, self.device, self.bf16)  # noqa: E731
            for batch in self._forward_images(images, trunk):
                for job, reason in batch.errors:
                    errors[int(job.sha256)] = reason
                for job, row in zip(batch.kept, batch.outputs, strict=True):
                    vectors[int(job.sha256)] = row
                progress.advance(len(batch.kept) + len(batch.errors))
            progress.end()
        dim = len(next(iter(vectors.values()))) if vectors else 0
        rows = np.full((n, dim), np.nan, dtype=np.float32)
        for i, vec in vectors.items():
            rows[i] = vec
        return Features(rows, errors)

    def _forward_images(self, images: Sequence[ImageSource], network: Callable[[], Network]) -> Any:
        jobs = [ExtractJob(str(i), src, 0) for i, src in enumerate(images)]
        return forward_batches(
            jobs, network, self.prep, self.batch_size, self.workers, max_pixels=self.max_pixels
        )

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
        if self.embedding_key is not None:
            # A probe: its head on the frozen trunk's features (cached when keys are given).
            features = self._features(images, keys, progress, "Predicting")
            good = [i for i in range(n) if i not in features.errors]
            if good:
                probs[good] = self._probabilities(features.rows[good])
            return Predictions(self.labels, probs, features.errors)
        if keys is not None and len(keys) != n:
            raise ValueError("give one key per image")
        errors: dict[int, str] = {}
        if n == 0:
            return Predictions(self.labels, probs, errors)
        progress.begin("Predicting", total=n)
        network = lambda: torch_network(self._network(), self.prep, self.device, self.bf16)  # noqa: E731
        for batch in self._forward_images(images, network):
            for job, reason in batch.errors:
                errors[int(job.sha256)] = reason
            if batch.kept:
                probs[[int(job.sha256) for job in batch.kept]] = self._probabilities(batch.outputs)
            progress.advance(len(batch.kept) + len(batch.errors))
        progress.end()
        return Predictions(self.labels, probs, errors)

    def forward(self, crops: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Probabilities (N, classes) for images already decoded and centre-cropped as `prep`
        says ((N, crop, crop, 3) uint8, as `images.load_image` gives them): what a server runs.
        The network is built on first use and kept; it runs in torch, eagerly."""
        model = self._probability_model()
        batch = torch.from_numpy(np.ascontiguousarray(crops))
        with torch.inference_mode():
            if self.device.type == "cuda":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            else:
                batch = batch.to(self.device)
            out = model(batch)
            return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    def _probability_model(self) -> torch.nn.Module:
        if self._crops_model is not None:
            return self._crops_model
        classifier = self._network()
        head: torch.nn.Module = classifier.head  # type: ignore[assignment]
        model = ProbabilityModel([(self._trunk(), head)], self.prep).eval()
        model.bf16_trunk = self.bf16
        with torch.inference_mode():
            model = model.to(self.device)
            if self.device.type != "mps":
                model = model.to(memory_format=torch.channels_last)
        served: torch.nn.Module = model
        self._crops_model = served
        return served


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
        self.device: torch.device = members[0].device

    @property
    def prep(self) -> Preprocessing:
        """The members' common image size (`forward` needs one)."""
        preps = {m.prep for m in self.members}
        if len(preps) != 1:
            raise TrainingError(
                "the ensemble's members take different image sizes; they cannot run as one network."
            )
        return preps.pop()

    def forward(self, crops: NDArray[np.uint8]) -> NDArray[np.float32]:
        """The members' `forward` probabilities, averaged."""
        probs: NDArray[np.float32] = np.mean(
            [m.forward(crops) for m in self.members], axis=0
        ).astype(np.float32)
        return probs

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
