"""Orchestration of runs: read the version, hand one TrainJob to a trainer, judge what it returns,
save the artifacts, and record it all through the ledger. Judging a finished run, predicting files
and ensembles go through the Predictor.

Ctrl-C leaves the run `interrupted`, any other exception leaves it `failed` with the reason; the
artifacts are written atomically, so neither leaves a corrupt file behind.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from numpy.typing import NDArray

from annotate2model.errors import InputError, TrainingError
from annotate2model.progress import NullProgress, Progress
from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.store.records import VersionItemRecord
from annotate2model.store.runs import PredictionRecord, RunRecord
from annotate2model.training import distributed
from annotate2model.training.config import HEADS, SPLITS, RunConfig, resolve_workers
from annotate2model.training.context import RunContext
from annotate2model.training.features.embeddings import EmbeddingCache, ExtractionStats
from annotate2model.training.features.images import Preprocessing
from annotate2model.training.features.weights import digest_memo, resolve_weights
from annotate2model.training.fit.jobs import TrainJob, TrainResult, report_skipped
from annotate2model.training.fit.preflight import check_run, small_split_warnings
from annotate2model.training.fit.probe import train_probe
from annotate2model.training.fit.version import VersionData, check_trainable
from annotate2model.training.fit.version import load_version_data as load_version_data
from annotate2model.training.runs import artifacts
from annotate2model.training.runs.ledger import Ledger, prediction_rows
from annotate2model.training.runs.metrics import (
    RunMetrics,
    SplitMetrics,
    Timing,
    classification_metrics,
)

if TYPE_CHECKING:
    from annotate2model.training.runs.predictor import EnsemblePredictor, Predictions, Predictor

__all__ = [
    "Evaluation",
    "RunOutcome",
    "ensemble",
    "evaluate_run",
    "predict_files",
    "train",
    "train_subset",
]


@dataclass
class RunOutcome:
    """What `train` hands back: the closed ledger row plus what the cache did."""

    run: RunRecord
    extraction: ExtractionStats | None = None


@dataclass(frozen=True)
class Evaluation:
    """A run judged on one split of a version."""

    run: int
    version: int
    split: str
    metrics: SplitMetrics

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "version": self.version,
            "split": self.split,
            **self.metrics.to_dict(),
        }


def train(
    store: Store,
    config: RunConfig,
    version_ref: int | str | None = None,
    progress: Progress | None = None,
    context: RunContext | None = None,
) -> RunOutcome:
    """Train one configuration on one version and record it in the ledger.

    `context`: where caches, run folders and images are (default: the store's workspace).
    Started by torchrun as one rank of several (distributed.py), every rank trains its share and
    rank 0 alone records the run; every rank returns rank 0's record.
    """
    ctx = context or RunContext.from_store(store)
    requested = distributed.start(ctx.device)
    with distributed.training():
        return _train(store, config, version_ref, progress, ctx, requested)


def _train(
    store: Store,
    config: RunConfig,
    version_ref: int | str | None,
    progress: Progress | None,
    ctx: RunContext,
    requested: str,
) -> RunOutcome:
    main = distributed.is_main()
    progress = (progress or NullProgress()) if main else NullProgress()
    data = load_version_data(store, version_ref)
    check_trainable(data)
    job, device_text = _job(ctx, config, data, requested, progress, check=True)
    distributed.per_rank_batch(config.batch_size)
    for warning in small_split_warnings(data):
        progress.note(warning)
    if not main:
        return _follow(job)
    processes = distributed.world_size()
    if processes > 1:
        device_text = f"{processes} processes; rank 0 on {device_text}"
    ledger = Ledger(store)
    # What `precision: auto` and `workers: -1` became on this machine, recorded with the run.
    ledger_config = {
        **asdict(config),
        "weights_identity": job.source.identity,
        "effective_precision": "bf16" if job.bf16 else "fp32",
        "effective_workers": resolve_workers(config.workers),
        "processes": processes,
    }
    with ledger.running(data.version.number, "train", ledger_config, device_text) as run:
        started = time.perf_counter()
        job = replace(job, on_epoch=lambda history: ledger.record_history(run, history))
        result = _run_trainer(job)
        splits, rows = judge(data.labels, result.kept, result.probs)
        metrics = RunMetrics(
            splits=splits,
            timing=Timing(
                seconds=time.perf_counter() - started,
                extraction=asdict(result.extraction) if result.extraction else None,
            ),
        )
        card = {
            "kind": "classifier",
            "architecture": config.backbone,
            "feature_dim": HEADS[config.backbone][1],
            "labels": data.labels,
            "preprocessing": job.prep.as_dict(),
            "embedding_key": result.embedding_key,
            "precision": "bf16" if job.bf16 else "fp32",
            "version": data.version.number,
            "run": run.id,
            "config": ledger_config,
            "metrics": {split: m.summary() for split, m in splits.items()},
        }
        progress.begin("Saving the model")
        run_dir = ctx.run_dir(run.id)
        artifacts.write_run_files(run_dir, card, result.head, result.trunk, result.history)
        run.history = result.history
        done = ledger.succeed(
            run,
            metrics,
            rows,
            artifact_dir=_relative(store, run_dir),
            images_per_second=result.images_per_second,
        )
        progress.end()
    _mirror_training(store, done, data, card, result.history, run_dir, progress)
    distributed.broadcast(done)
    return RunOutcome(run=done, extraction=result.extraction)


def _follow(job: TrainJob) -> RunOutcome:
    """A rank other than 0: train its share, record nothing, and hand back rank 0's record."""
    result = _run_trainer(job)
    done: RunRecord = distributed.broadcast(cast(RunRecord, None))
    return RunOutcome(run=done, extraction=result.extraction)


def _mirror_training(
    store: Store,
    run: RunRecord,
    data: VersionData,
    card: dict[str, Any],
    history: list[dict[str, Any]],
    run_dir: Path,
    progress: Progress,
) -> None:
    """The run in MLflow too, when the workspace tracks there (tracking.py); a warning if not."""
    from annotate2model import tracking

    tags = {
        "a2m.version": data.version.number,
        "a2m.version_hash": data.version.content_hash,
        "a2m.counts": json.dumps({split: len(items) for split, items in data.splits.items()}),
        "a2m.labels": json.dumps(data.labels),
    }

    def log(uri: str, experiment: str) -> None:
        progress.begin("Logging the run to MLflow")
        try:
            tracking.log_training(
                uri,
                experiment,
                run_id=run.id,
                config=card["config"],
                history=history,
                metrics={**card["metrics"], "wall_seconds": run.wall_seconds},
                tags=tags,
                run_dir=run_dir,
            )
        finally:
            progress.end()

    tracking.mirror(store.settings, f"run {run.id}", progress.note, log)


def _job(
    ctx: RunContext,
    config: RunConfig,
    data: VersionData,
    requested: str,
    progress: Progress,
    *,
    check: bool,
) -> tuple[TrainJob, str]:
    """The training job for `config` on `data`, and the ledger's device text. With `check`, what
    cannot work is refused first (before torch is imported, and before the run is recorded: no
    failed run is left behind)."""
    source = resolve_weights(
        config.backbone, config.weights, config.seed, digest_memo(ctx.cache_dir)
    )
    if check:
        check_run(config, source, ctx.cache_dir, progress)
    device, bf16, device_text = _torch_device(requested, config.precision)
    job = TrainJob(
        config=config,
        data=data,
        context=ctx,
        source=source,
        prep=Preprocessing(config.resize_size, config.image_size),
        device=device,
        bf16=bf16,
        progress=progress,
        on_epoch=lambda _history: None,
    )
    return job, device_text


def _torch_device(requested: str, precision: str) -> tuple[str, bool, str]:
    """(device, bf16, the ledger's device text) as torch picks them."""
    from annotate2model.training.features.device import device_name, pick_device, use_bf16

    device = pick_device(requested)
    return str(device), use_bf16(device, precision), device_name(device)


def _run_trainer(job: TrainJob) -> TrainResult:
    """The job's trainer (the probe, or fine-tuning), its device running out of memory and
    another rank stopping told as such."""
    try:
        if job.config.mode != "probe":
            from annotate2model.training.fit.finetune import train_finetune

            return train_finetune(job)
        return train_probe(job)
    except RuntimeError as exc:  # torch.OutOfMemoryError is one; anything else goes on up
        if _is_oom(exc):
            batch = job.config.batch_size
            raise TrainingError(
                _oom_message(job.config),
                hint=f"pass --batch-size {max(1, batch // 2)} or a smaller --image-size.",
            ) from None
        lost = distributed.peer_failure(exc)
        if lost is not None:
            raise lost from None
        raise


def train_subset(
    store: Store,
    config: RunConfig,
    version: int,
    train_items: Sequence[VersionItemRecord],
    val_items: Sequence[VersionItemRecord],
    judged: Sequence[VersionItemRecord],
    context: RunContext | None = None,
) -> tuple[list[str], list[str]]:
    """Train a configuration on chosen rows of a version and judge it on `judged`, with no run
    in the ledger and nothing saved (the points of a learning curve).

    Returns (true labels, predicted labels) of the judged images that could be read.
    """
    ctx = context or RunContext.from_store(store)
    full = load_version_data(store, version)
    data = full.with_splits(
        {"train": list(train_items), "val": list(val_items), "test": list(judged)}
    )
    check_trainable(data)
    job = _job(ctx, config, data, ctx.device, NullProgress(), check=False)[0]
    result = _run_trainer(job)
    kept = result.kept.get("test", [])
    probs = result.probs.get("test")
    if probs is None or not kept:
        raise TrainingError(f"none of the {len(judged)} images to judge on could be read.")
    predicted = [full.labels[int(k)] for k in np.argmax(probs, axis=1)]
    return [i.label for i in kept], predicted


def _relative(store: Store, run_dir: Path) -> str:
    root = store.settings.workspace.root
    return str(run_dir.relative_to(root)) if run_dir.is_relative_to(root) else str(run_dir)


def _is_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # no torch loaded, no torch error
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


def _oom_message(config: RunConfig) -> str:
    batch = config.batch_size
    return (
        f"the device ran out of memory at batch size {batch}; try a smaller batch size "
        f"(e.g. {max(1, batch // 2)}) or a smaller image size."
    )


def judge(
    labels: list[str],
    kept: dict[str, list[VersionItemRecord]],
    probs: dict[str, NDArray[Any]],
) -> tuple[dict[str, SplitMetrics], list[PredictionRecord]]:
    """Metrics per split and the per-image prediction rows of the images that were used."""
    index = {label: i for i, label in enumerate(labels)}
    splits: dict[str, SplitMetrics] = {}
    rows: list[PredictionRecord] = []
    for split in SPLITS:
        items = kept.get(split, [])
        p = probs.get(split)
        if not items or p is None or p.shape[0] != len(items):
            continue
        targets = np.array([index[i.label] for i in items])
        splits[split] = SplitMetrics.from_dict(classification_metrics(targets, p, labels))
        rows.extend(prediction_rows(items, p, labels))
    return splits, rows


# Judging a finished run (or ensemble) on any version, and predicting files.


def _get_run(store: Store, run_id: int | str) -> RunRecord:
    with store.read() as session:
        return store_runs.get_run(session, run_id)


def _usable(run: RunRecord) -> RunRecord:
    if run.artifact_dir is None or run.status != "succeeded":
        raise TrainingError(f"run {run.id} is {run.status} and has no model to use.")
    return run


def load_predictor(
    ctx: RunContext, run: RunRecord, cache: EmbeddingCache | None = None
) -> Predictor | EnsemblePredictor:
    """The Predictor of a succeeded run (its folder under the context's runs folder)."""
    from annotate2model.training.runs.predictor import Predictor

    _usable(run)
    return Predictor.load(ctx.run_dir(run.id), ctx.device, cache, ctx.max_pixels)


def _predict_items(
    ctx: RunContext,
    predictor: Predictor | EnsemblePredictor,
    items: Sequence[VersionItemRecord],
    progress: Progress,
) -> Predictions:
    shas = [i.image_sha256 for i in items]
    return predictor.predict([ctx.blob_path(s) for s in shas], keys=shas, progress=progress)


def evaluate_run(
    store: Store,
    run_id: int | str,
    version_ref: int | str | None = None,
    split: str = "val",
    progress: Progress | None = None,
    context: RunContext | None = None,
) -> Evaluation:
    """Judge a run on a split of any version (default: the run's own); predictions are stored."""
    progress = progress or NullProgress()
    ctx = context or RunContext.from_store(store)
    run = _usable(_get_run(store, run_id))
    data = load_version_data(store, version_ref if version_ref is not None else run.version)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose {', '.join(SPLITS)}.")
    items = data.splits.get(split, [])
    if not items:
        raise TrainingError(f"the {split} split of version {data.version.number} is empty.")
    with ctx.embedding_cache() as cache:
        predictor = load_predictor(ctx, run, cache)
        _check_learned(data.with_splits({split: items}), predictor.labels, f"run {run.id}")
        result = _predict_items(ctx, predictor, items, progress)
    skipped = {items[i].image_sha256: reason for i, reason in result.errors.items()}
    report_skipped(ctx, progress, skipped)
    ok = result.ok
    kept = [item for item, good in zip(items, ok, strict=True) if good]
    index = {label: n for n, label in enumerate(predictor.labels)}
    probs = result.probs[ok]
    targets = np.array([index[i.label] for i in kept])
    metrics = SplitMetrics.from_dict(classification_metrics(targets, probs, predictor.labels))
    ledger = Ledger(store)
    ledger.write_predictions(
        run.id, data.version.number, prediction_rows(kept, probs, predictor.labels)
    )
    ledger.record_evaluation(
        run.id,
        data.version.number,
        split,
        [i.image_sha256 for i in kept],
        {**metrics.summary(), **metrics.to_dict()},
        source="evaluate",
    )
    from annotate2model import tracking

    tracking.mirror(
        store.settings,
        f"the evaluation of run {run.id}",
        progress.note,
        lambda uri, experiment: tracking.log_evaluation(
            uri, experiment, run.id, f"evaluate.v{data.version.number}.{split}", metrics.summary()
        ),
    )
    return Evaluation(run=run.id, version=data.version.number, split=split, metrics=metrics)


def _check_learned(data: VersionData, labels: Sequence[str], who: str) -> None:
    """Refuse judging `who` on images of classes it never learned (they have no column)."""
    unknown = sorted({i.label for items in data.splits.values() for i in items} - set(labels))
    if unknown:
        raise TrainingError(
            f"version {data.version.number} has classes {who} never learned: {', '.join(unknown)}."
        )


def expand_inputs(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders as every visible file under them (sorted); missing paths stay, so
    that each is reported as a failed input rather than stopping the others."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                out.extend(Path(dirpath) / n for n in sorted(filenames) if not n.startswith("."))
        else:
            out.append(path)
    return out


def predict_files(
    store: Store,
    run_id: int | str,
    paths: Sequence[Path],
    top_k: int = 3,
    progress: Progress | None = None,
    context: RunContext | None = None,
) -> list[dict[str, Any]]:
    """Top-k labels with probabilities for image files and folders of them: one row per input
    file; a row with an `error` (and no labels) for each input that is missing or unreadable."""
    progress = progress or NullProgress()
    ctx = context or RunContext.from_store(store)
    run = _usable(_get_run(store, run_id))
    files = expand_inputs(paths)
    if not files:
        raise InputError("no image files to predict: the folders given are empty.")
    readable = [i for i, f in enumerate(files) if f.is_file()]
    predictor = load_predictor(ctx, run)
    result = predictor.predict([files[i] for i in readable], progress=progress)
    out: list[dict[str, Any]] = []
    where = dict(zip(readable, range(len(readable)), strict=True))
    for i, path in enumerate(files):
        row: dict[str, Any] = {"path": str(path)}
        j = where.get(i)
        if j is None:
            row.update(error="no such file" if not path.exists() else "not a file", top=[])
        elif j in result.errors:
            row.update(error=result.errors[j], top=[])
        else:
            top = result.top(j, min(top_k, len(predictor.labels)))
            row["top"] = [{"label": lab, "probability": p} for lab, p in top]
        out.append(row)
    return out


def ensemble(
    store: Store,
    run_ids: Sequence[int | str],
    version_ref: int | str | None = None,
    progress: Progress | None = None,
    context: RunContext | None = None,
) -> RunRecord:
    """Average members' probabilities on every split of a version; recorded as a run."""
    progress = progress or NullProgress()
    ctx = context or RunContext.from_store(store)
    if len(run_ids) < 2:
        raise InputError("an ensemble needs at least two runs.")
    members = [_get_run(store, r) for r in run_ids]
    twice = sorted({m.id for m in members if [n.id for n in members].count(m.id) > 1})
    if twice:
        raise InputError(
            f"run {', '.join(map(str, twice))} is given more than once; an ensemble averages "
            "different runs."
        )
    for m in members:
        if m.status != "succeeded" or m.artifact_dir is None:
            raise TrainingError(f"run {m.id} is {m.status}; only succeeded runs can be members.")
    with ctx.embedding_cache() as cache:
        from annotate2model.training.runs.predictor import EnsemblePredictor

        predictor = EnsemblePredictor([load_predictor(ctx, m, cache) for m in members])
        labels = predictor.labels
        data = load_version_data(
            store, version_ref if version_ref is not None else members[0].version
        )
        _check_learned(data, labels, f"runs {', '.join(str(m.id) for m in members)}")
        data = VersionData(version=data.version, labels=labels, splits=data.splits)
        config = {
            "members": [m.id for m in members],
            "backbones": [m.config.get("backbone") for m in members],
        }
        device = _torch_device(ctx.device, "fp32")[2]
        ledger = Ledger(store)
        with ledger.running(data.version.number, "ensemble", config, device) as run:
            probs: dict[str, NDArray[Any]] = {}
            for split in SPLITS:
                items = data.splits.get(split, [])
                if not items:
                    continue
                result = _predict_items(ctx, predictor, items, progress)
                if result.errors:
                    raise TrainingError(
                        f"{len(result.errors)} image(s) of the {split} split cannot be decoded."
                    )
                probs[split] = result.probs
            splits, rows = judge(labels, data.splits, probs)
            run_dir = ctx.run_dir(run.id)
            card = {
                "kind": "ensemble",
                "members": [m.id for m in members],
                "labels": labels,
                "version": data.version.number,
                "run": run.id,
                "config": config,
                "metrics": {split: m.summary() for split, m in splits.items()},
            }
            artifacts.write_run_files(run_dir, card, None, None, [])
            return ledger.succeed(
                run, RunMetrics(splits=splits), rows, artifact_dir=_relative(store, run_dir)
            )
