"""Fine-tuning: the backbone's last blocks train with the head. Computes and returns; never writes
the ledger. The recipe (docs/finetune.md):

1. The linear probe first (`train_probe` with the probe's defaults, on the embedding cache): the
   head starts from its solution, and its validation loss and accuracy are the mark to beat.
2. The frozen part of the trunk (every block before the first one that trains) runs once per
   image and view: the clean view of every image, and `views - 1` seeded augmented views of each
   training image. Its outputs stay in memory, and only the unfrozen blocks and the head run in
   the epochs (one view drawn per training image and epoch).
3. The unfrozen blocks train at `lr * block_lr_scale`, the head at `lr`, after a warm-up, with
   batch-norm statistics frozen; the epoch that is best on validation is kept, and the probe's
   solution when no epoch beats it, so that fine-tuning never does worse on validation than the
   probe it started from.

With `--unfreeze all` nothing is frozen: the images are decoded and augmented every epoch instead.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from annotate2model.store.records import VersionItemRecord
from annotate2model.training import distributed
from annotate2model.training.config import HEADS, SPLITS
from annotate2model.training.features.backbones import (
    Classifier,
    build_trunk,
    freeze_batchnorm,
    freeze_batchnorm_of_frozen,
    load_state_dict,
    set_trainable,
    split_trunk,
    trunk_state_from,
)
from annotate2model.training.features.data import ImageDataset, collate, to_input
from annotate2model.training.features.embeddings import (
    ExtractionStats,
    ExtractJob,
    forward_batches,
    model_description,
    model_key,
    torch_network,
    trunk_path,
)
from annotate2model.training.features.tensors import Tensors, write_tensors
from annotate2model.training.fit.jobs import History, TrainJob, TrainResult, kept_items
from annotate2model.training.fit.probe import fit_probe_head, train_probe
from annotate2model.training.fit.trainer import (
    Batches,
    ParamGroups,
    class_probabilities,
    evaluate,
    fit,
    make_loss,
    predict,
)
from annotate2model.training.fit.version import check_trainable

# The frozen part's outputs are kept in memory as float32 up to this size, as float16 up to twice
# it; beyond that the images are decoded every epoch (ResNet-18 with layer4 unfrozen: 200 KB per
# image and view at 224 px, so 4 GiB holds about 20,000 of them).
PREFIX_BYTES = 4 << 30


@dataclass
class PrefixOutputs:
    """The frozen blocks' outputs, one flattened row per (image sha256, view) in `rows`."""

    outputs: torch.Tensor
    rows: dict[tuple[str, int], int]
    # One image's output shape, e.g. (256, 14, 14) for ResNet-18's layer3 at 224 px.
    shape: tuple[int, ...]
    views: int
    seconds: float


class StandardisedHead(nn.Module):
    """A linear head on standardised features ((x - mean) / std, as the probe trains it), so that
    fine-tuning steps it with the conditioning it was found with; `folded()` gives the plain
    Linear on raw features that the artifact holds."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    @classmethod
    def from_raw(cls, head: Tensors, mean: torch.Tensor, std: torch.Tensor) -> StandardisedHead:
        """The same function as the raw-feature head `head` (weight, bias), standardised."""
        weight = torch.as_tensor(head["weight"]).float()
        bias = torch.as_tensor(head["bias"]).float()
        return cls(weight * std, bias + (weight * mean).sum(1), mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear((x - self.mean) / self.std)
        return out

    def folded(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            w, b = self.linear.weight.float(), self.linear.bias.float()
            std, mean = self.std.float(), self.mean.float()
            weight = w / std
            bias = b - (weight * mean).sum(1)
        return {"weight": weight.cpu().clone(), "bias": bias.cpu().clone()}


def train_finetune(job: TrainJob) -> TrainResult:
    config = job.config
    # Random weights come from the seed, as the probe's (their features share its cache).
    torch.manual_seed(config.seed)
    trunk = build_trunk(config.backbone)
    state = load_state_dict(config.backbone, job.source)
    if state is not None:
        origin = str(job.source.path) if job.source.path else f"the {job.source.kind} weights"
        trunk.load_state_dict(trunk_state_from(config.backbone, state, origin, trunk))
    prefix, rest = split_trunk(config.backbone, trunk, config.unfreeze)
    stage = _Stage(job, trunk, rest)
    if len(prefix) > 0 and stage.prefix_fits(prefix):
        return stage.on_prefix_outputs(prefix)
    return stage.on_images()


class _PrefixAndFeatures(nn.Module):
    """The frozen blocks' output, flattened, then the trunk's features computed from it by the
    blocks as loaded: one pass gives what fine-tuning trains on and what the probe needs."""

    def __init__(self, prefix: nn.Module, rest: nn.Module) -> None:
        super().__init__()
        self.prefix = prefix
        self.rest = rest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.prefix(x)
        return torch.cat([inner.flatten(1), self.rest(inner).flatten(1)], 1)


def _start_head(job: TrainJob, probe: TrainResult | None) -> nn.Module:
    """The probe's head (standardised by the training features' statistics), else a new one."""
    config, data = job.config, job.data
    if probe is None:
        torch.manual_seed(config.seed)
        return nn.Linear(HEADS[config.backbone][1], len(data.labels))
    assert probe.embedding_key is not None
    shas = [item.image_sha256 for item in probe.kept["train"]]
    with job.context.embedding_cache() as cache:
        found = cache.get(probe.embedding_key, shas, 0)
    x = torch.from_numpy(np.stack([found[sha] for sha in shas if sha in found]))
    return StandardisedHead.from_raw(probe.head, x.mean(0), x.std(0).clamp_min(1e-3))


class _Stage:
    """The fine-tuning stage, on the frozen part's outputs or on decoded images."""

    def __init__(self, job: TrainJob, trunk: nn.Module, rest: nn.Module) -> None:
        self.job = job
        self.config = job.config
        self.trunk = trunk
        self.rest = rest
        self.head: nn.Module = nn.Identity()
        self.model = Classifier(trunk, self.head)
        self.kept = kept_items(job.data, {})
        self.skipped: dict[str, str] = {}
        self.probe: TrainResult | None = None
        self.probe_seconds = 0.0
        self.index = {label: i for i, label in enumerate(job.data.labels)}
        self.half = False
        self.shape: tuple[int, ...] = ()
        self.width = 0

    def set_head(self, head: nn.Module) -> None:
        self.head = head
        self.model = Classifier(self.trunk, head)
        set_trainable(self.model, self.config.backbone, "finetune", self.config.unfreeze)

    # What the blocks train with.

    def groups(self) -> ParamGroups:
        blocks = [p for p in self.model.trunk.parameters() if p.requires_grad]
        head = [p for p in self.head.parameters() if p.requires_grad]
        return [(blocks, self.config.block_lr_scale), (head, 1.0)]

    def prepare(self) -> Any:
        # Statistics of pretrained weights stay; a network from random weights needs its own.
        return freeze_batchnorm if self.job.source.kind != "none" else freeze_batchnorm_of_frozen

    def start(self, net: nn.Module, val: Batches) -> dict[str, float] | None:
        if self.probe is None:
            return None
        metrics = evaluate(net, val, nn.CrossEntropyLoss(), self.job.torch_device, self.job.bf16)
        return {"val_loss": metrics["loss"], "val_accuracy": metrics["accuracy"]}

    def fit(
        self,
        net: nn.Module,
        train_batches: Callable[[int], Batches],
        val_batches: Callable[[], Batches],
        steps: int,
        loss_fn: nn.Module,
    ) -> tuple[nn.Module, History, float]:
        """Train `net` on the device from the probe's mark (when there is one); the network,
        its history and the seconds its epochs took."""
        job = self.job
        net = net.to(job.torch_device)
        if job.device_type != "mps":
            net = net.to(memory_format=torch.channels_last)
        # Wrapped before anything is judged: every rank then starts from rank 0's weights.
        net = distributed.parallel(net, job.torch_device)
        start = self.start(net, val_batches())
        history = fit(
            net,
            train_batches,
            val_batches,
            steps,
            self.config,
            loss_fn,
            job.torch_device,
            job.bf16,
            job.progress,
            job.on_epoch,
            prepare=self.prepare(),
            params=self.groups(),
            start=start,
        )
        seconds = sum(float(row.get("seconds", 0.0)) for row in history if row.get("epoch"))
        return distributed.unwrap(net), history, seconds

    def finish(
        self,
        history: History,
        net: nn.Module,
        batches: Any,
        seconds: float,
    ) -> TrainResult:
        """The kept weights' predictions, or the probe's result when the probe was kept."""
        if self.probe is not None and history:
            start = history[0]
            start.update(
                {
                    "stage": "probe",
                    # The regularisation the probe's head kept (head.py's grid).
                    "probe_C": next(
                        (row.get("C") for row in self.probe.history if row.get("kept")), None
                    ),
                    "seconds": self.probe_seconds,
                }
            )
            probe_train = self.probe.history[-1] if self.probe.history else {}
            for key in ("train_loss", "train_accuracy"):
                if key in probe_train:
                    start[key] = probe_train[key]
            self.job.on_epoch(history)
        seen = sum(int(row.get("train_images", 0)) for row in history if row.get("epoch"))
        ips = seen / seconds if seconds > 0 else None
        if self.probe is not None and history and history[0].get("kept"):
            return dataclasses.replace(self.probe, history=history, images_per_second=ips)
        job = self.job
        probs: dict[str, NDArray[Any]] = {}
        job.progress.begin("Predicting", total=None)
        for split in SPLITS:
            logits = self.gathered(split, predict(net, batches(split), job.torch_device, job.bf16))
            probs[split] = (
                class_probabilities(logits).numpy() if logits.numel() else np.empty((0, 0))
            )
        job.progress.end()
        kept = kept_items(job.data, self.skipped)
        check_trainable(job.data.with_splits(kept))
        model = self.model.to("cpu")
        head = self.head.folded() if isinstance(self.head, StandardisedHead) else None
        return TrainResult(
            probs=probs,
            kept=kept,
            history=history,
            trunk={k: v.detach().clone() for k, v in model.trunk.state_dict().items()},
            head=head if head is not None else dict(self.head.state_dict()),
            images_per_second=ips,
            skipped=self.skipped,
            extraction=self.probe.extraction if self.probe is not None else None,
        )

    # Several processes (distributed.py): each judges its share of a split.

    def share(self, split: str) -> list[int]:
        """The positions in `kept[split]` this rank judges."""
        return distributed.shard(range(len(self.kept[split])))

    def gathered(self, split: str, logits: torch.Tensor) -> torch.Tensor:
        """Every rank's logits for its share of `kept[split]`, in the split's order (on every
        rank; skipped images found on any rank leave `kept` on all of them)."""
        if distributed.world_size() == 1:
            return logits
        base = self.kept[split]
        mine = [p for p in self.share(split) if base[p].image_sha256 not in self.skipped]
        parts = distributed.gather((mine, logits.numpy(), self.skipped))
        for _, _, skipped in parts:
            for sha, reason in skipped.items():
                self.skipped.setdefault(sha, reason)
        positions = [p for ps, _, _ in parts for p in ps]
        rows = [row for _, rs, _ in parts for row in rs]
        if not rows:
            return torch.empty(0)
        order = np.argsort(positions, kind="stable")
        return torch.from_numpy(np.stack([rows[i] for i in order]))

    def share_skipped(self) -> None:
        """Images any rank could not decode are skipped by all (their lists stay alike)."""
        if distributed.world_size() > 1:
            for skipped in distributed.gather(self.skipped):
                for sha, reason in skipped.items():
                    self.skipped.setdefault(sha, reason)

    # Fine-tuning on the frozen part's outputs, computed once.

    def prefix_fits(self, prefix: nn.Module) -> bool:
        crop = self.job.prep.crop
        with torch.inference_mode():
            self.shape = tuple(prefix.eval()(torch.zeros(1, 3, crop, crop)).shape[1:])
        self.width = math.prod(self.shape)
        rows = sum(len(items) for items in self.kept.values()) + (self.config.views - 1) * len(
            self.kept["train"]
        )
        size = rows * self.width * 4
        self.half = size > PREFIX_BYTES
        return size <= 2 * PREFIX_BYTES

    def on_prefix_outputs(self, prefix: nn.Module) -> TrainResult:
        outputs = self.run_prefix(prefix)
        if self.probe is None:
            torch.manual_seed(self.config.seed)
            self.set_head(nn.Linear(HEADS[self.config.backbone][1], len(self.job.data.labels)))
        return self.train_on(outputs)

    def network(self, prefix: nn.Module) -> nn.Module:
        """The frozen blocks with the trunk's features after them, in eval mode."""
        return _PrefixAndFeatures(prefix, copy.deepcopy(self.rest)).eval()

    def run_prefix(self, prefix: nn.Module) -> PrefixOutputs:
        """One pass over the images: the frozen blocks' outputs for the clean view of every image
        and the augmented views of the training images, and the trunk's features of the clean
        views (into the embedding cache) from which the probe stage starts the head.
        Undecodable images join `skipped`."""
        job, config = self.job, self.config
        probe_stage = config.head_init == "probe"
        views = config.views if config.augment else 1
        jobs = [
            ExtractJob(item.image_sha256, job.blob(item), 0)
            for split in SPLITS
            for item in self.kept[split]
        ] + [
            ExtractJob(item.image_sha256, job.blob(item), view)
            for view in range(1, views)
            for item in self.kept["train"]
        ]
        # One row per job, at the job's position; under several processes each rank fills its
        # share and the rows are summed over the ranks (the others' rows are zeros).
        outputs = torch.zeros(
            (len(jobs), self.width), dtype=torch.float16 if self.half else torch.float32
        )
        position = {(j.sha256, j.view): at for at, j in enumerate(jobs)}
        mine = distributed.shard(jobs)
        rows: dict[tuple[str, int], int] = {}
        features: dict[tuple[str, int], NDArray[Any]] = {}
        key = model_key(config.backbone, job.source.identity, job.prep, job.bf16)
        description = model_description(config.backbone, job.source.identity, job.prep, job.bf16)
        clean = [j.sha256 for j in jobs if j.view == 0]
        with job.context.embedding_cache() as cache:
            for sha, vec in cache.get(key, clean, 0).items():
                features[(sha, 0)] = vec
        stats = ExtractionStats(requested=len(clean), cached=len(features))
        new_features: list[tuple[str, int, NDArray[Any]]] = []
        started = time.perf_counter()
        job.progress.begin("Running the frozen blocks", total=len(mine))
        try:
            for batch in forward_batches(
                mine,
                lambda: torch_network(self.network(prefix), job.prep, job.torch_device, job.bf16),
                job.prep,
                job.eval_batch,
                job.workers,
                config.seed,
                config.rotation,
                max_pixels=job.context.max_pixels,
            ):
                for bad, reason in batch.errors:
                    if bad.sha256 not in self.skipped:
                        self.skipped[bad.sha256] = reason
                        stats.skipped.append((bad.sha256, reason))
                if batch.kept:
                    at = torch.tensor([position[(d.sha256, d.view)] for d in batch.kept])
                    outputs[at] = torch.from_numpy(batch.outputs[:, : self.width]).to(outputs.dtype)
                    for i, done in enumerate(batch.kept):
                        rows[(done.sha256, done.view)] = int(at[i])
                        if done.view == 0 and (done.sha256, 0) not in features:
                            vec = batch.outputs[i, self.width :].copy()
                            features[(done.sha256, 0)] = vec
                            new_features.append((done.sha256, 0, vec))
                job.progress.advance(len(batch.kept) + len(batch.errors))
            stats.computed = len(new_features)
            stats.seconds = time.perf_counter() - started
            if distributed.world_size() > 1:
                self.merge_shares(outputs, rows, features, new_features, stats)
            if distributed.machine_leader():
                with job.context.embedding_cache() as cache:
                    cache.put(key, description, new_features)
        finally:
            job.progress.end()
        job.report_skipped(self.skipped)
        self.kept = kept_items(job.data, self.skipped)
        check_trainable(job.data.with_splits(self.kept))
        if probe_stage:
            self.fit_probe(features, key, stats)
        return PrefixOutputs(outputs, rows, self.shape, views, stats.seconds)

    def merge_shares(
        self,
        outputs: torch.Tensor,
        rows: dict[tuple[str, int], int],
        features: dict[tuple[str, int], NDArray[Any]],
        new_features: list[tuple[str, int, NDArray[Any]]],
        stats: ExtractionStats,
    ) -> None:
        """Every rank's share of the frozen blocks' outputs, rows, features and skipped images,
        on every rank (`new_features` becomes the whole run's)."""
        distributed.add_tensor(outputs)
        shares = distributed.gather((rows, new_features, self.skipped, stats.seconds))
        new_features.clear()
        for share_rows, share_features, skipped, _ in shares:
            rows.update(share_rows)
            for sha, view, vec in share_features:
                features[(sha, view)] = vec
                new_features.append((sha, view, vec))
            for sha, reason in skipped.items():
                if sha not in self.skipped:
                    self.skipped[sha] = reason
                    stats.skipped.append((sha, reason))
        stats.computed = len(new_features)
        stats.seconds = max(seconds for *_, seconds in shares)

    def fit_probe(
        self,
        features: dict[tuple[str, int], NDArray[Any]],
        key: str,
        stats: ExtractionStats,
    ) -> None:
        """The probe stage on the clean views' features: its head starts the fine-tuning."""
        job = self.job
        started = time.perf_counter()
        stage_job = dataclasses.replace(
            job, config=self.config.probe_stage(), on_epoch=lambda _h: None
        )
        probe, probs = fit_probe_head(stage_job, features, self.kept)
        self.probe_seconds = time.perf_counter() - started
        trunk_file = trunk_path(job.context.cache_dir, job.source.identity, self.config.backbone)
        if not trunk_file.is_file() and distributed.machine_leader():
            # The weights as loaded: what a kept probe's artifact links to.
            write_tensors(trunk_file, self.trunk.state_dict(), mode=None)
        self.probe = TrainResult(
            probs=probs,
            kept=self.kept,
            history=probe.history,
            trunk=trunk_file,
            head={"weight": probe.weight, "bias": probe.bias},
            images_per_second=None,
            skipped=dict(self.skipped),
            extraction=stats,
            embedding_key=key,
        )
        mean, std = torch.from_numpy(probe.mean), torch.from_numpy(probe.std)
        self.set_head(StandardisedHead.from_raw(self.probe.head, mean, std))

    def train_on(self, prefix: PrefixOutputs) -> TrainResult:
        """Train the unfrozen blocks and the head on the frozen blocks' outputs."""
        job, config = self.job, self.config
        device = job.torch_device
        outputs, rows, shape, views = prefix.outputs, prefix.rows, prefix.shape, prefix.views
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            # On the device when they take under half its free memory (batches are then
            # gathered there), else batches gathered on the host and copied from pinned memory.
            on_device = outputs.nbytes < free // 2
            outputs = outputs.to(device) if on_device else outputs

        def targets(split: str) -> torch.Tensor:
            return torch.tensor([self.index[i.label] for i in self.kept[split]], dtype=torch.long)

        def clean(split: str) -> torch.Tensor:
            return torch.tensor(
                [rows[(i.image_sha256, 0)] for i in self.kept[split]], dtype=torch.long
            )

        train_rows = torch.tensor(
            [
                [rows.get((i.image_sha256, v), rows[(i.image_sha256, 0)]) for v in range(views)]
                for i in self.kept["train"]
            ],
            dtype=torch.long,
        ).reshape(-1, views)
        y_train = targets("train")
        n = train_rows.shape[0]
        per_rank = distributed.per_rank_batch(config.batch_size)
        sampler = _sampler(n, config.seed)

        def to_device(index: torch.Tensor) -> torch.Tensor:
            picked = outputs[index.to(outputs.device)]
            if device.type == "cuda" and picked.device.type == "cpu":
                picked = picked.pin_memory()
            x = picked.to(device, non_blocking=True).float().view(-1, *shape)
            return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

        def train_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            # This rank's rows of the epoch's order; the view and flip of every row are drawn
            # alike on every rank, so that N ranks see what one process sees.
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), dtype=torch.long)
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            chosen = torch.randint(0, views, (n,), generator=generator)
            flips = torch.rand(n, generator=generator) < 0.5
            for at in range(0, order.shape[0], per_rank):
                idx = order[at : at + per_rank]
                x = to_device(train_rows[idx, chosen[idx]])
                if config.augment and x.dim() == 4:
                    # A flipped image's feature map is, near enough, the flipped feature map: a
                    # free augmentation on top of the computed views.
                    flip = flips[idx].to(x.device)
                    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                yield x, y_train[idx]

        def batches(split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            share = torch.tensor(self.share(split), dtype=torch.long)
            index, y = clean(split)[share], targets(split)[share]
            for at in range(0, index.shape[0], job.eval_batch):
                yield to_device(index[at : at + job.eval_batch]), y[at : at + job.eval_batch]

        loss_fn = make_loss(config, y_train.tolist(), len(job.data.labels), device)
        steps = math.ceil(len(sampler) / per_rank)
        net, history, seconds = self.fit(
            nn.Sequential(self.rest, self.head),
            train_batches,
            lambda: batches("val"),
            steps,
            loss_fn,
        )
        if self.probe is not None:
            history[0]["frozen_blocks_seconds"] = prefix.seconds
        return self.finish(history, net, batches, seconds)

    # Fine-tuning on decoded images (nothing frozen, or too many outputs to keep).

    def on_images(self) -> TrainResult:
        job, config = self.job, self.config
        device = job.torch_device
        if config.head_init == "probe":
            started = time.perf_counter()
            stage_job = dataclasses.replace(
                job, config=config.probe_stage(), on_epoch=lambda _h: None
            )
            self.probe = train_probe(stage_job)
            self.probe_seconds = time.perf_counter() - started
            self.skipped = dict(self.probe.skipped)
            self.kept = kept_items(job.data, self.skipped)
        self.set_head(_start_head(job, self.probe))
        reported: set[str] = set()
        loss_fn = make_loss(
            config,
            [self.index[i.label] for i in self.kept["train"]],
            len(job.data.labels),
            device,
        )
        per_rank = distributed.per_rank_batch(config.batch_size)
        steps = math.ceil(math.ceil(len(self.kept["train"]) / distributed.world_size()) / per_rank)

        passes: dict[tuple[str, bool], _ImagePasses] = {}

        def batches(
            split: str, augment: bool = False, shuffle: bool = False, epoch: int = 0
        ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            self.share_skipped()
            self.kept = kept_items(job.data, self.skipped)
            items = self.kept[split]
            if shuffle:
                sampler = _sampler(len(items), config.seed)
                sampler.set_epoch(epoch)
                order = list(sampler)
            else:
                order = self.share(split)
            if (split, augment) not in passes:
                size = per_rank if split == "train" else job.eval_batch
                passes[split, augment] = _ImagePasses(job, split, size, augment)
            yield from passes[split, augment].run([items[i] for i in order], epoch, self.skipped)
            job.report_skipped(self.skipped, reported)

        try:
            model, history, seconds = self.fit(
                self.model,
                lambda epoch: batches("train", config.augment_enabled, True, epoch),
                lambda: batches("val"),
                steps,
                loss_fn,
            )
            return self.finish(history, model, batches, seconds)
        finally:
            passes.clear()  # their decoding workers stop


def _sampler(n: int, seed: int) -> torch.utils.data.DistributedSampler[int]:
    """This rank's share of `n` training rows in a seeded order per epoch (`set_epoch`): torch's
    DistributedSampler, one process being a world of one."""
    return torch.utils.data.DistributedSampler(
        range(n),  # type: ignore[arg-type]
        num_replicas=distributed.world_size(),
        rank=distributed.rank(),
        shuffle=True,
        seed=seed,
    )


def _worker_start() -> dict[str, Any]:
    """How a rank of several starts its decoding workers (DataLoader arguments): spawned, each a
    fresh interpreter (a second or two of imports per worker, once per training). Forking the
    rank copies whatever lock one of its process group's threads (gloo, NCCL) holds at that
    instant, and a worker can wait on it for ever (a CI run's 2-process `--unfreeze all`
    fine-tune hung so). One process forks, as torch does by default."""
    if distributed.world_size() == 1:
        return {}
    return {
        "multiprocessing_context": multiprocessing.get_context("spawn"),
        "worker_init_fn": functools.partial(_leave_if_orphaned, os.getpid()),
    }


def _leave_if_orphaned(rank_pid: int, _worker: int) -> None:
    """A spawned worker whose rank died while it was starting leaves: torch's own watch takes
    the parent it finds when its loop starts, by then init, and would wait for ever."""
    if os.getppid() != rank_pid:
        os._exit(0)


class _ImagePasses:
    """Decoded batches of one split, pass after pass, from one DataLoader whose workers live for
    the whole training (`persistent_workers`): a pass sets the keys it reads, (epoch, position in
    the split), and the workers need nothing else, so they start once per training, not once
    per epoch."""

    def __init__(self, job: TrainJob, split: str, batch_size: int, augment: bool) -> None:
        self.job = job
        self.items = job.data.splits.get(split, [])
        self.position = {item.image_sha256: i for i, item in enumerate(self.items)}
        self.keys: list[tuple[int, int]] = []
        index = {label: i for i, label in enumerate(job.data.labels)}
        dataset = ImageDataset(
            [job.blob(i) for i in self.items],
            [index[i.label] for i in self.items],
            job.prep,
            augment,
            job.config.rotation,
            job.config.seed,
        )
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.keys,  # read afresh by every pass
            num_workers=job.workers,
            collate_fn=collate,
            pin_memory=job.device_type == "cuda",
            persistent_workers=job.workers > 0,
            **(_worker_start() if job.workers else {}),
        )

    def run(
        self, items: Sequence[VersionItemRecord], epoch: int, skipped: dict[str, str]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`items`, in that order, decoded (augmented with `epoch`'s draws when augmenting) on
        the device; images that cannot be decoded are added to `skipped`."""
        self.keys[:] = [(epoch, self.position[item.image_sha256]) for item in items]
        for images, y, bad in self.loader:
            for position, reason in bad:
                skipped.setdefault(self.items[position].image_sha256, reason)
            if images.shape[0]:
                yield to_input(images, self.job.prep, self.job.torch_device), y
