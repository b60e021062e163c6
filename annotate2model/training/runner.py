"""Orchestration of runs: record the run, train, judge, write artifacts, close the ledger row.

Ctrl-C leaves the run `interrupted`, any other exception leaves it `failed` with the reason; the
artifacts are written atomically, so neither leaves a corrupt file behind.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from annotate2model.errors import A2MError, InputError, InvalidImage, TrainingError
from annotate2model.progress import NullProgress, Progress
from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.store.records import VersionItemRecord
from annotate2model.store.runs import PredictionRecord, RunRecord
from annotate2model.training import artifacts
from annotate2model.training.backbones import (
    HEADS,
    build_classifier,
    build_trunk,
    freeze_batchnorm_of_frozen,
    load_state_dict,
    resolve_weights,
    set_trainable,
    trunk_state_from,
)
from annotate2model.training.config import RunConfig
from annotate2model.training.data import (
    ImageDataset,
    Preprocessing,
    VersionData,
    check_trainable,
    collate,
    load_image,
    load_version_data,
    to_input,
)
from annotate2model.training.device import device_name, pick_device, use_bf16
from annotate2model.training.embeddings import (
    EmbeddingCache,
    ExtractionStats,
    ExtractJob,
    extract,
    model_description,
    model_key,
)
from annotate2model.training.metrics import classification_metrics
from annotate2model.training.prefetch import EarlyDecode
from annotate2model.training.trainer import FeatureBatches, fit, make_loss, predict

SPLIT_ORDER = ("train", "val", "test")


@dataclass
class RunOutcome:
    """What `train` hands back: the closed ledger row plus what the cache did."""

    run: RunRecord
    extraction: ExtractionStats | None = None


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def embedding_cache(store: Store) -> EmbeddingCache:
    return EmbeddingCache(store.settings.workspace.cache_dir / "embeddings")


@contextlib.contextmanager
def _ledger(
    store: Store, version: int, kind: str, config: dict[str, Any], device: str
) -> Iterator[tuple[RunRecord, dict[str, Any]]]:
    """Create the run row; close it as interrupted or failed if the body does not finish it."""
    with store.write() as session:
        run = store_runs.create_run(session, version, kind, config, device)
    state: dict[str, Any] = {"history": []}
    try:
        yield run, state
    except KeyboardInterrupt:
        with store.write() as session:
            store_runs.finish_run(
                session,
                run.id,
                "interrupted",
                history=state["history"],
                error="interrupted by the user (Ctrl-C)",
            )
        raise
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, A2MError) else f"{type(exc).__name__}: {exc}"
        if _is_oom(exc):
            reason = _oom_message(config)
        with store.write() as session:
            store_runs.finish_run(session, run.id, "failed", history=state["history"], error=reason)
        if _is_oom(exc):
            raise TrainingError(reason) from None
        raise


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _oom_message(config: dict[str, Any]) -> str:
    batch = int(config.get("batch_size", 32))
    return (
        f"the device ran out of memory at batch size {batch}; try a smaller --batch-size "
        f"(e.g. {max(1, batch // 2)}) or a smaller --image-size."
    )


def _run_dir(store: Store, run_id: int) -> Path:
    return store.settings.workspace.runs_dir / str(run_id)


def train(
    store: Store,
    config: RunConfig,
    version_ref: int | str | None = None,
    progress: Progress | None = None,
    early: EarlyDecode | None = None,
) -> RunOutcome:
    """Train one configuration on one version and record it in the ledger.

    `early`: images already being decoded (`prefetch.start_early_decode`); closed here.
    """
    try:
        return _train(store, config, version_ref, progress or NullProgress(), early)
    finally:
        if early is not None:
            early.close()


def _train(
    store: Store,
    config: RunConfig,
    version_ref: int | str | None,
    progress: Progress,
    early: EarlyDecode | None,
) -> RunOutcome:
    data = load_version_data(store, version_ref)
    check_trainable(data)
    source = resolve_weights(config.backbone, config.weights, config.seed)
    device = pick_device(store.settings.device)
    bf16 = use_bf16(device, config.precision)
    ledger_config = {**asdict(config), "weights_identity": source.identity}
    with _ledger(store, data.version.number, "train", ledger_config, device_name(device)) as (
        run,
        state,
    ):
        started = time.perf_counter()
        run_dir = _run_dir(store, run.id)

        def on_epoch(history: list[dict[str, Any]]) -> None:
            state["history"] = list(history)
            with store.write() as session:
                store_runs.record_history(session, run.id, history)

        prep = Preprocessing(config.resize_size, config.image_size)
        if config.mode == "probe":
            result = _train_probe(
                store, config, data, source, prep, device, bf16, progress, on_epoch, early
            )
        else:
            result = _train_finetune(
                store, config, data, source, prep, device, bf16, progress, on_epoch
            )
        probs, history, trunk, head, extraction, throughput, skipped = result
        metrics, rows = _judge(data, probs, skipped)
        metrics["timing"] = {
            "seconds": time.perf_counter() - started,
            "extraction": asdict(extraction) if extraction else None,
        }
        card = {
            "kind": "classifier",
            "architecture": config.backbone,
            "feature_dim": HEADS[config.backbone][1],
            "labels": data.labels,
            "preprocessing": prep.as_dict(),
            "embedding_key": model_key(config.backbone, source.identity, prep, bf16)
            if config.mode == "probe"
            else None,
            "precision": "bf16" if bf16 else "fp32",
            "version": data.version.number,
            "run": run.id,
            "config": ledger_config,
            "metrics": {split: _summary(m) for split, m in metrics["splits"].items()},
        }
        progress.begin("Saving the model")
        artifacts.write_run_files(run_dir, card, head, trunk, history)
        with store.write() as session:
            store_runs.write_predictions(session, run.id, data.version.number, rows)
            done = store_runs.finish_run(
                session,
                run.id,
                "succeeded",
                metrics=metrics,
                history=history,
                images_per_second=throughput,
                artifact_dir=str(run_dir.relative_to(store.settings.workspace.root)),
            )
        progress.end()
        return RunOutcome(run=done, extraction=extraction)
    raise AssertionError("unreachable")  # pragma: no cover


TrainResult = tuple[
    dict[str, NDArray[Any]],
    list[dict[str, Any]],
    "dict[str, torch.Tensor] | Path",
    dict[str, torch.Tensor],
    ExtractionStats | None,
    float | None,
    set[str],
]


def _train_probe(
    store: Store,
    config: RunConfig,
    data: VersionData,
    source: Any,
    prep: Preprocessing,
    device: torch.device,
    bf16: bool,
    progress: Progress,
    on_epoch: Callable[[list[dict[str, Any]]], None],
    early: EarlyDecode | None = None,
) -> TrainResult:
    cache = embedding_cache(store)
    key = model_key(config.backbone, source.identity, prep, bf16)
    description = model_description(config.backbone, source.identity, prep, bf16)
    trunk_file = cache.trunk_path(source.identity, config.backbone)
    script_file = cache.script_path(config.backbone, source.identity, prep.crop)

    def trunk() -> nn.Module:
        # A warm workspace loads its TorchScript copy: no torchvision, no weights file to read.
        cached = cache.load_script(script_file)
        if cached is not None:
            if not trunk_file.is_file():
                cache.save_trunk(trunk_file, dict(cached.state_dict()))
            return cached
        model = build_trunk(config.backbone)
        state = _trunk_state(config, source, model, trunk_file, cache)
        model.load_state_dict(state, strict=True)
        cache.save_script(script_file, model, prep.crop)
        return model

    jobs = [
        ExtractJob(item.image_sha256, store.blobs.path(item.image_sha256), view)
        for split in SPLIT_ORDER
        for item in data.splits[split]
        for view in range(config.views if split == "train" else 1)
    ]
    try:
        features, stats = extract(
            cache,
            key,
            description,
            jobs,
            trunk,
            prep,
            device,
            bf16,
            batch_size=config.eval_batch_for(device.type),
            workers=config.workers if config.workers > 0 else default_workers(),
            seed=config.seed,
            rotation=config.rotation,
            progress=progress,
            early=early,
        )
    finally:
        cache.close()
    skipped = {sha for sha, _ in stats.skipped}
    for sha, reason in stats.skipped:
        progress.note(f"image {sha[:12]} skipped: {reason}")
    if not trunk_file.is_file():
        # Everything was cached but the trunk file went missing: rebuild it once.
        trunk()
    _check_after_skips(data, skipped)

    def matrix(split: str, views: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        targets = data.targets(split)
        for item, target in zip(data.splits[split], targets, strict=True):
            if item.image_sha256 in skipped:
                continue
            for view in range(views):
                vec = features.get((item.image_sha256, view))
                if vec is not None:
                    xs.append(vec)
                    ys.append(target)
        if not xs:
            return torch.empty(0, HEADS[config.backbone][1]), torch.empty(0, dtype=torch.long)
        return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.long)

    x_train, y_train = matrix("train", config.views)
    x_val, y_val = matrix("val", 1)
    # Standardise the features for the optimiser; folded back into the head afterwards so the
    # saved head works on raw trunk features.
    mean = x_train.mean(0)
    std = x_train.std(0).clamp_min(1e-3)
    torch.manual_seed(config.seed)
    dim = x_train.shape[1]
    head = nn.Linear(dim, len(data.labels))
    cpu = torch.device("cpu")
    train_batches = FeatureBatches(
        (x_train - mean) / std, y_train, config.batch_size, shuffle=True, seed=config.seed
    )
    val_batches = FeatureBatches((x_val - mean) / std, y_val, 4096, shuffle=False)
    loss_fn = make_loss(config, y_train.tolist(), len(data.labels), cpu)
    with _single_thread():
        history = fit(
            head,
            lambda _epoch: train_batches,
            lambda: val_batches,
            len(train_batches),
            config,
            loss_fn,
            cpu,
            False,
            progress,
            on_epoch,
            per_epoch_bars=False,
            plain_optimizer=True,
        )
    with torch.no_grad():
        weight = head.weight / std
        bias = head.bias - (head.weight * (mean / std)).sum(1)
    probs: dict[str, NDArray[Any]] = {}
    for split in SPLIT_ORDER:
        x, _ = matrix(split, 1)
        with torch.no_grad():
            probs[split] = torch.softmax(x @ weight.T + bias, dim=1).numpy()
    head_state = {"weight": weight.detach().clone(), "bias": bias.detach().clone()}
    return probs, history, trunk_file, head_state, stats, stats.images_per_second or None, skipped


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run tiny ops (a linear head on a few hundred rows) on one thread.

    Splitting 32x512 matmuls across threads costs more in synchronisation than it saves, and on a
    busy machine a descheduled worker thread stalls every step (measured: 0.01 s on one thread
    against 0.1-1.3 s on two for the same 80 steps).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _trunk_state(
    config: RunConfig,
    source: Any,
    model: nn.Module,
    trunk_file: Path,
    cache: EmbeddingCache,
) -> dict[str, torch.Tensor]:
    """The trunk's weights (from the weights source), saved once into the cache as safetensors."""
    state = load_state_dict(config.backbone, source)
    if state is None:
        torch.manual_seed(config.seed)
        trunk_state = build_trunk(config.backbone).state_dict()
    else:
        origin = str(source.path) if source.path else f"the {source.kind} weights"
        trunk_state = trunk_state_from(config.backbone, state, origin, model)
    if not trunk_file.is_file():
        cache.save_trunk(trunk_file, trunk_state)
    return trunk_state


def _check_after_skips(data: VersionData, skipped: set[str]) -> None:
    if not skipped:
        return
    kept = {
        split: [i for i in items if i.image_sha256 not in skipped]
        for split, items in data.splits.items()
    }
    check_trainable(VersionData(version=data.version, labels=data.labels, splits=kept))


def _image_batches(
    items: Sequence[VersionItemRecord],
    targets: list[int],
    store: Store,
    prep: Preprocessing,
    device: torch.device,
    batch_size: int,
    workers: int,
    augment: bool,
    rotation: float,
    seed: int,
    skipped: set[str],
    shuffle: bool,
    epoch: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    dataset = ImageDataset(
        [store.blobs.path(i.image_sha256) for i in items], targets, prep, augment, rotation, seed
    )
    dataset.epoch = epoch
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed + epoch),
    )
    for images, y, bad in loader:
        for index in bad:
            skipped.add(items[index].image_sha256)
        if images.shape[0]:
            yield to_input(images, prep, device), y


def _train_finetune(
    store: Store,
    config: RunConfig,
    data: VersionData,
    source: Any,
    prep: Preprocessing,
    device: torch.device,
    bf16: bool,
    progress: Progress,
    on_epoch: Callable[[list[dict[str, Any]]], None],
) -> TrainResult:
    state = load_state_dict(config.backbone, source)
    origin = str(source.path) if source.path else f"the {source.kind} weights"
    model = build_classifier(config.backbone, len(data.labels), None, config.seed)
    if state is not None:
        model.trunk.load_state_dict(
            trunk_state_from(config.backbone, state, origin, model.trunk), strict=True
        )
    set_trainable(model, config.backbone, config.mode, config.unfreeze)
    model = model.to(device)
    if device.type != "mps":
        model = model.to(memory_format=torch.channels_last)
    workers = config.workers if config.workers >= 0 else default_workers()
    skipped: set[str] = set()
    reported: set[str] = set()
    train_items = data.splits["train"]
    train_targets = data.targets("train")
    loss_fn = make_loss(config, train_targets, len(data.labels), device)
    steps = (len(train_items) + config.batch_size - 1) // config.batch_size

    def batches(split: str, augment: bool, shuffle: bool, epoch: int) -> Iterator[Any]:
        yield from _image_batches(
            data.splits[split],
            data.targets(split),
            store,
            prep,
            device,
            config.batch_size if split == "train" else config.eval_batch_for(device.type),
            workers,
            augment,
            config.rotation,
            config.seed,
            skipped,
            shuffle,
            epoch,
        )
        for sha in sorted(skipped - reported):
            progress.note(f"image {sha[:12]} skipped: it cannot be decoded")
            reported.add(sha)

    started = time.perf_counter()
    history = fit(
        model,
        lambda epoch: batches("train", config.augment_enabled, True, epoch),
        lambda: batches("val", False, False, 0),
        steps,
        config,
        loss_fn,
        device,
        bf16,
        progress,
        on_epoch,
        prepare=freeze_batchnorm_of_frozen,
    )
    seconds = time.perf_counter() - started
    seen = sum(int(row.get("train_images", 0)) for row in history)
    probs: dict[str, NDArray[Any]] = {}
    progress.begin("Predicting", total=None)
    for split in SPLIT_ORDER:
        logits = predict(model, batches(split, False, False, 0), device, bf16)
        probs[split] = torch.softmax(logits, dim=1).numpy() if logits.numel() else np.empty((0, 0))
    progress.end()
    _check_after_skips(data, skipped)
    model = model.to("cpu")
    head_state = {k: v for k, v in model.head.state_dict().items()}
    return probs, history, model.trunk.state_dict(), head_state, None, seen / seconds, skipped


def _judge(
    data: VersionData, probs: dict[str, NDArray[Any]], skipped: set[str]
) -> tuple[dict[str, Any], list[PredictionRecord]]:
    """Metrics per split and the per-image prediction rows (skipped images left out)."""
    metrics: dict[str, Any] = {"splits": {}}
    rows: list[PredictionRecord] = []
    for split in SPLIT_ORDER:
        items = [i for i in data.splits[split] if i.image_sha256 not in skipped]
        p = probs.get(split)
        if not items or p is None or p.shape[0] != len(items):
            continue
        index = {label: i for i, label in enumerate(data.labels)}
        targets = np.array([index[i.label] for i in items])
        metrics["splits"][split] = classification_metrics(targets, p, data.labels)
        rows.extend(_prediction_rows(items, p, data.labels))
    val = metrics["splits"].get("val", {})
    metrics["accuracy"] = val.get("accuracy")
    metrics["val_accuracy"] = val.get("accuracy")
    metrics["test_accuracy"] = metrics["splits"].get("test", {}).get("accuracy")
    return metrics, rows


def _prediction_rows(
    items: Sequence[VersionItemRecord], probs: NDArray[Any], labels: list[str]
) -> list[PredictionRecord]:
    rows = []
    for item, p in zip(items, probs, strict=True):
        best = int(p.argmax())
        rows.append(
            PredictionRecord(
                image_sha256=item.image_sha256,
                split=item.split,
                label=item.label,
                predicted=labels[best],
                confidence=float(p[best]),
                probs=[float(v) for v in p],
            )
        )
    return rows


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in ("n", "accuracy", "loss") if k in m} | {
        "macro_f1": m.get("macro", {}).get("f1")
    }


# Judging a finished run (or ensemble) on any version, and predicting files.


def _member_probs(
    store: Store,
    run: RunRecord,
    jobs: Sequence[tuple[str, Path]],
    progress: Progress,
) -> tuple[NDArray[Any], list[str], set[str]]:
    """Probabilities of one trained run for (sha-or-name, path) images; skipped keys returned."""
    if run.artifact_dir is None or run.status != "succeeded":
        raise TrainingError(f"run {run.id} is {run.status} and has no model to use.")
    run_dir = store.settings.workspace.root / run.artifact_dir
    card = artifacts.read_card(run_dir)
    if card["kind"] == "ensemble":
        members = [_get_run(store, m) for m in card["members"]]
        parts = [_member_probs(store, m, jobs, progress) for m in members]
        skipped_any: set[str] = set().union(*(p[2] for p in parts))
        keep = [i for i, (key, _) in enumerate(jobs) if key not in skipped_any]
        stacks = []
        for p, _, s in parts:
            kept_keys = [k for k, _ in jobs if k not in s]
            pos = {k: i for i, k in enumerate(kept_keys)}
            stacks.append(p[[pos[jobs[i][0]] for i in keep]])
        return np.mean(stacks, axis=0), card["labels"], skipped_any
    device = pick_device(store.settings.device)
    prep = Preprocessing(card["preprocessing"]["resize"], card["preprocessing"]["crop"])
    bf16 = card.get("precision") == "bf16" and use_bf16(device, "auto")
    head_state = artifacts.read_tensors(run_dir / artifacts.HEAD_FILE)
    weight, bias = head_state["weight"].float(), head_state["bias"].float()
    skipped: set[str] = set()
    key = card.get("embedding_key")
    if key and card.get("precision") == "bf16" and not bf16:
        # Features computed here in fp32 must not land under the bf16 features' key.
        identity = card["config"]["weights_identity"]
        key = model_key(card["architecture"], identity, prep, False)
    if key:
        # A frozen trunk: its features may be cached already (keyed by content, not by run).
        cache = embedding_cache(store)
        description = f"run {run.id} trunk ({card['architecture']})"

        def trunk() -> nn.Module:
            model = build_trunk(card["architecture"])
            model.load_state_dict(artifacts.read_tensors(run_dir / artifacts.TRUNK_FILE))
            return model

        try:
            features, stats = extract(
                cache,
                key,
                description,
                [ExtractJob(k, path, 0) for k, path in jobs],
                trunk,
                prep,
                device,
                bf16,
                batch_size=32 if device.type == "cpu" else 128,
                workers=default_workers(),
                progress=progress,
            )
        finally:
            cache.close()
        skipped = {sha for sha, _ in stats.skipped}
        xs = [features[(k, 0)] for k, _ in jobs if k not in skipped]
        x = torch.from_numpy(np.stack(xs)) if xs else torch.empty(0, weight.shape[1])
        return torch.softmax(x @ weight.T + bias, dim=1).numpy(), card["labels"], skipped
    model, _ = artifacts.load_classifier(run_dir)
    model = model.to(device)
    outputs = []
    progress.begin("Predicting", total=len(jobs))
    for start in range(0, len(jobs), 32):
        arrays = []
        for k, path in jobs[start : start + 32]:
            try:
                arrays.append(load_image(path, prep))
            except InvalidImage as exc:
                skipped.add(k)
                progress.note(f"image {k[:40]} skipped: {exc}")
        if arrays:
            logits = predict(
                model, [(to_input(np.stack(arrays), prep, device), torch.empty(0))], device, bf16
            )
            outputs.append(torch.softmax(logits, dim=1).numpy())
        progress.advance(len(jobs[start : start + 32]))
    progress.end()
    probs = np.concatenate(outputs) if outputs else np.empty((0, len(card["labels"])))
    return probs, card["labels"], skipped


def _get_run(store: Store, run_id: int | str) -> RunRecord:
    with store.read() as session:
        return store_runs.get_run(session, run_id)


def evaluate_run(
    store: Store,
    run_id: int | str,
    version_ref: int | str | None = None,
    split: str = "val",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Judge a run on a split of any version (default: the run's own); predictions are stored."""
    progress = progress or NullProgress()
    run = _get_run(store, run_id)
    data = load_version_data(store, version_ref if version_ref is not None else run.version)
    if split not in data.splits:
        raise InputError(f"unknown split {split!r}; choose train, val or test.")
    items = data.splits[split]
    if not items:
        raise TrainingError(f"the {split} split of version {data.version.number} is empty.")
    jobs = [(i.image_sha256, store.blobs.path(i.image_sha256)) for i in items]
    probs, labels, skipped = _member_probs(store, run, jobs, progress)
    for sha in sorted(skipped):
        progress.note(f"image {sha[:12]} skipped: it cannot be decoded")
    kept = [i for i in items if i.image_sha256 not in skipped]
    index = {label: n for n, label in enumerate(labels)}
    unknown = sorted({i.label for i in kept if i.label not in index})
    if unknown:
        raise TrainingError(
            f"version {data.version.number} has classes run {run.id} never learned: "
            f"{', '.join(unknown)}."
        )
    targets = np.array([index[i.label] for i in kept])
    metrics = classification_metrics(targets, probs, labels)
    rows = _prediction_rows(kept, probs, labels)
    with store.write() as session:
        store_runs.write_predictions(session, run.id, data.version.number, rows)
    return {"run": run.id, "version": data.version.number, "split": split, **metrics}


def predict_files(
    store: Store,
    run_id: int | str,
    paths: Sequence[Path],
    top_k: int = 3,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Top-k labels with probabilities for image files; unreadable files say why."""
    progress = progress or NullProgress()
    run = _get_run(store, run_id)
    jobs = []
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path} is not a file.")
        jobs.append((str(path), path))
    probs, labels, skipped = _member_probs(store, run, jobs, progress)
    out: list[dict[str, Any]] = []
    row = 0
    for key, _ in jobs:
        if key in skipped:
            out.append({"path": key, "error": "not a readable image", "top": []})
            continue
        p = probs[row]
        row += 1
        order = np.argsort(-p)[: max(1, top_k)]
        out.append(
            {"path": key, "top": [{"label": labels[i], "probability": float(p[i])} for i in order]}
        )
    return out


def ensemble(
    store: Store,
    run_ids: Sequence[int | str],
    version_ref: int | str | None = None,
    progress: Progress | None = None,
) -> RunRecord:
    """Average members' probabilities on every split of a version; recorded as a run."""
    progress = progress or NullProgress()
    if len(run_ids) < 2:
        raise InputError("an ensemble needs at least two runs.")
    members = [_get_run(store, r) for r in run_ids]
    for m in members:
        if m.status != "succeeded" or m.artifact_dir is None:
            raise TrainingError(f"run {m.id} is {m.status}; only succeeded runs can be members.")
    label_sets = {
        tuple(artifacts.read_card(store.settings.workspace.root / str(m.artifact_dir))["labels"])
        for m in members
    }
    if len(label_sets) != 1:
        raise TrainingError(
            "the runs were trained on different label sets; they cannot be averaged."
        )
    labels = list(label_sets.pop())
    data = load_version_data(store, version_ref if version_ref is not None else members[0].version)
    config = {
        "members": [m.id for m in members],
        "backbones": [m.config.get("backbone") for m in members],
    }
    device = device_name(pick_device(store.settings.device))
    with _ledger(store, data.version.number, "ensemble", config, device) as (run, _state):
        data = VersionData(version=data.version, labels=labels, splits=data.splits)
        probs: dict[str, NDArray[Any]] = {}
        skipped: set[str] = set()
        for split in SPLIT_ORDER:
            items = data.splits[split]
            if not items:
                continue
            jobs = [(i.image_sha256, store.blobs.path(i.image_sha256)) for i in items]
            parts = [_member_probs(store, m, jobs, progress) for m in members]
            bad = set().union(*(p[2] for p in parts))
            if bad:
                raise TrainingError(f"{len(bad)} image(s) of the {split} split cannot be decoded.")
            probs[split] = np.mean([p[0] for p in parts], axis=0)
        metrics, rows = _judge(data, probs, skipped)
        run_dir = _run_dir(store, run.id)
        card = {
            "kind": "ensemble",
            "members": [m.id for m in members],
            "labels": labels,
            "version": data.version.number,
            "run": run.id,
            "config": config,
            "metrics": {split: _summary(m) for split, m in metrics["splits"].items()},
        }
        artifacts.write_run_files(run_dir, card, None, None, [])
        with store.write() as session:
            store_runs.write_predictions(session, run.id, data.version.number, rows)
            return store_runs.finish_run(
                session,
                run.id,
                "succeeded",
                metrics=metrics,
                artifact_dir=str(run_dir.relative_to(store.settings.workspace.root)),
            )
    raise AssertionError("unreachable")  # pragma: no cover
