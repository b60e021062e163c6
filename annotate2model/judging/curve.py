"""`a2m curve`: is more annotation still worth it?

The same configuration is trained on nested, class-stratified subsets of a version's training
split and every model is judged on the same test images. Subsets are stable: within a repeat,
each class's images are ordered by a hash of (repeat, image) and a fraction takes the first ones,
so a smaller subset is always inside a larger one. For a probe the features come from the
embedding cache, so a curve costs little more than training heads. Nothing enters the run ledger
(the points are not runs); the curve is kept in its own table for reports.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, replace

import numpy as np

from annotate2model.errors import InputError, TrainingError
from annotate2model.judging import stats
from annotate2model.judging.records import CurvePoint, CurveSummary, Interval, LearningCurve
from annotate2model.progress import NullProgress, Progress
from annotate2model.store import Store
from annotate2model.store import curves as store_curves
from annotate2model.store import runs as store_runs
from annotate2model.store import versions as store_versions
from annotate2model.store.records import VersionItemRecord
from annotate2model.store.runs import RunRecord
from annotate2model.training.config import RunConfig
from annotate2model.training.context import RunContext

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
DEFAULT_REPEATS = 3


def parse_fractions(text: str | None) -> list[float]:
    if text is None:
        return list(DEFAULT_FRACTIONS)
    try:
        values = sorted({float(p) for p in text.replace(" ", "").split(",") if p})
    except ValueError:
        raise InputError(f"fractions must be numbers between 0 and 1, got {text!r}.") from None
    if not values or values[0] <= 0 or values[-1] > 1:
        raise InputError(f"fractions must be above 0 and at most 1, got {text!r}.")
    return values


def nested_subsets(
    items: Sequence[VersionItemRecord], fractions: Sequence[float], repeat: int
) -> dict[float, list[VersionItemRecord]]:
    """Class-stratified subsets, nested (each inside the next larger) and stable by hash.

    Every class keeps at least one image, and round(fraction x its count) otherwise.
    """
    by_class: dict[str, list[VersionItemRecord]] = {}
    for item in items:
        by_class.setdefault(item.label, []).append(item)
    for members in by_class.values():
        members.sort(key=lambda i: hashlib.sha256(f"{repeat}:{i.image_sha256}".encode()).digest())
    out: dict[float, list[VersionItemRecord]] = {}
    for fraction in sorted(fractions):
        chosen: list[VersionItemRecord] = []
        for members in by_class.values():
            take = max(1, min(len(members), round(fraction * len(members))))
            chosen.extend(members[:take])
        out[fraction] = sorted(chosen, key=lambda i: i.image_sha256)
    return out


def curve_config(store: Store, version: int, run_id: int | str | None) -> RunConfig:
    """The configuration a curve trains: the given run's, else the latest succeeded training run
    of the version (or of any version), else the defaults."""
    with store.read() as session:
        if run_id is not None:
            run: RunRecord | None = store_runs.get_run(session, run_id)
        else:
            runs = [
                r
                for r in store_runs.list_runs(session)
                if r.status == "succeeded" and r.kind == "train"
            ]
            own = [r for r in runs if r.version == version]
            run = max(own or runs, key=lambda r: r.id, default=None)
    if run is None:
        return RunConfig()
    if run.kind != "train":
        raise InputError(f"run {run.id} is an ensemble; a curve trains one configuration.")
    return RunConfig.from_dict(run.config)


def learning_curve(
    store: Store,
    version_ref: int | str | None = None,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    repeats: int = DEFAULT_REPEATS,
    config: RunConfig | None = None,
    run_id: int | str | None = None,
    context: RunContext | None = None,
    progress: Progress | None = None,
) -> LearningCurve:
    """Train on nested subsets, judge each model on the version's test split (val when the
    version has no test split), summarise and keep the curve."""
    from annotate2model.training.runs.runner import train_subset

    progress = progress or NullProgress()
    if repeats < 1:
        raise InputError("repeats must be at least 1.")
    started = time.perf_counter()
    with store.read() as session:
        version = store_versions.get_version(session, version_ref)
        items = store_versions.version_items(session, version.number)
    config = config or curve_config(store, version.number, run_id)
    train = [i for i in items if i.split == "train"]
    judged_split = "test" if any(i.split == "test" for i in items) else "val"
    judged = [i for i in items if i.split == judged_split]
    if not judged:
        raise TrainingError(
            f"version {version.number} has neither test nor validation images to judge on."
        )
    if len({i.label for i in train}) < 2:
        raise TrainingError(f"version {version.number} has fewer than two classes to train.")
    description = f"version {version.number}'s {judged_split} split ({len(judged)} images)"
    val = [i for i in items if i.split == "val"] if judged_split == "test" else judged
    ctx = context or RunContext.from_store(store)
    points: list[CurvePoint] = []
    # Right/wrong per judged image of every model, by fraction: the bootstrap of the last gain.
    answers: dict[float, list[list[bool]]] = {}
    total = len(fractions) * repeats
    progress.begin("Learning curve", total=total)
    for repeat in range(repeats):
        for fraction, subset in nested_subsets(train, fractions, repeat).items():
            progress.advance(
                0, status=f"{len(subset)} training images ({fraction:.0%}), repeat {repeat + 1}"
            )
            truth, predicted = train_subset(
                store,
                config.replace(seed=config.seed + repeat),
                version.number,
                subset,
                val,
                judged,
                context=ctx,
            )
            correct = [t == p for t, p in zip(truth, predicted, strict=True)]
            answers.setdefault(fraction, []).append(correct)
            points.append(
                CurvePoint(
                    fraction=fraction,
                    repeat=repeat,
                    train_images=len(subset),
                    accuracy=float(np.mean(correct)),
                    macro_f1=stats.macro_f1(truth, predicted),
                )
            )
            progress.advance(1)
    progress.end()
    summary = summarise(points)
    steps = sorted(answers)
    gain = gain_interval(answers[steps[-2]], answers[steps[-1]]) if len(steps) > 1 else None
    verdict, per_point = judge_curve(summary, gain)
    curve = LearningCurve(
        id=None,
        version=version.number,
        test_description=description,
        test_n=len(judged),
        config=asdict(config),
        points=points,
        summary=summary,
        verdict=verdict,
        images_per_point=per_point,
        seconds=time.perf_counter() - started,
    )
    return _keep(store, curve, [i.image_sha256 for i in judged])


def summarise(points: Sequence[CurvePoint]) -> list[CurveSummary]:
    out = []
    for fraction in sorted({p.fraction for p in points}):
        rows = [p for p in points if p.fraction == fraction]
        acc = np.array([p.accuracy for p in rows])
        out.append(
            CurveSummary(
                fraction=fraction,
                train_images=round(float(np.mean([p.train_images for p in rows]))),
                mean=float(acc.mean()),
                std=float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                low=float(acc.min()),
                high=float(acc.max()),
            )
        )
    return out


def gain_interval(previous: Sequence[Sequence[bool]], last: Sequence[Sequence[bool]]) -> Interval:
    """Bootstrap interval, over the judged images, of the accuracy gained between two points.

    Each argument holds one row per repeat of right/wrong per judged image (the same images, in
    the same order); an image's gain is its share of right answers at the last point less that at
    the previous one, so the mean gain is exactly the difference of the points' mean accuracies.
    """
    before = np.asarray(previous, dtype=np.float64).mean(axis=0)
    after = np.asarray(last, dtype=np.float64).mean(axis=0)
    return stats.bootstrap_interval(after - before)


def judge_curve(
    summary: Sequence[CurveSummary], gain: Interval | None = None
) -> tuple[str, int | None]:
    """One line on whether accuracy still rises with more images, read from the last step.

    The step counts as a rise only when its gain exceeds its own spread: the spread of the
    repeats at either point, and `gain`, the bootstrap interval of the gain over the judged
    images, must lie above zero. Only then does the line say roughly how many more labeled images
    the next point of accuracy would take (accuracy taken to grow linearly in log(images), at
    the rate of that step). A gain inside the spread is "cannot tell yet", with no figure.
    """
    if len(summary) < 2:
        return "one point only: no trend to read.", None
    last, previous = summary[-1], summary[-2]
    n_last, n_prev = last.train_images, max(previous.train_images, 1)
    diff = last.mean - previous.mean
    spread = max(last.std, previous.std)
    noise = [f"repeats {spread * 100:.1f}"] if spread > 0 else []
    if gain is not None and not math.isnan(gain.low):
        noise.append(f"{gain.level:.0%} interval {gain.low * 100:+.1f} to {gain.high * 100:+.1f}")
    step = f"{n_prev} -> {n_last} training images changed accuracy by {diff * 100:+.1f} points" + (
        f" (spread: {', '.join(noise)})" if noise else ""
    )
    if n_last <= n_prev:
        return f"Cannot tell yet: the last two points train on {n_last} images each.", None
    if 1.0 - last.mean <= 0.01:
        return f"The curve is at its top: {step}; accuracy is already {last.mean:.1%}.", None
    doublings = math.log2(n_last / n_prev)
    # Without repeats or a bootstrap there is no spread to measure the gain against.
    measured = spread > 0 or (gain is not None and not math.isnan(gain.low))
    beyond_spread = measured and diff > spread and (gain is None or gain.low > 0)
    if beyond_spread:
        per_doubling = diff / doublings
        more = max(1, round(n_last * 2.0 ** (0.01 / per_doubling) - n_last))
        # Flattening: under one point of accuracy per doubling of the training images.
        head = "The curve is flattening" if per_doubling < 0.01 else "The curve is still rising"
        tail = f"the next point of accuracy would take roughly {more} more labeled images."
        return f"{head}: {step}; {tail}", more
    high = max(diff + spread, gain.high if gain is not None else diff)
    if measured and high / doublings < 0.01:
        return (
            f"The curve has flattened: {step}; even the top of the spread is under one point per "
            "doubling, so more images of the same kind may not help; look at the flagged labels "
            "instead.",
            None,
        )
    return (
        f"Cannot tell yet whether more images help: {step}, within its spread. More repeats "
        "(--repeats) or more test images would tell.",
        None,
    )


def _keep(store: Store, curve: LearningCurve, judged: Sequence[str]) -> LearningCurve:
    from annotate2model.training.runs.ledger import signals_held

    payload = {
        "test": curve.test_description,
        "points": [asdict(p) for p in curve.points],
        "verdict": curve.verdict,
        "images_per_point": curve.images_per_point,
    }
    with signals_held(), store.write() as session:
        new_id = store_curves.save_curve(
            session,
            curve.version,
            curve.config,
            curve.test_n,
            store_runs.images_hash(judged),
            payload,
            curve.seconds,
        )
    return replace(curve, id=new_id)


def latest_curve(store: Store, version: int) -> LearningCurve | None:
    """The newest curve kept for a version, or None."""
    with store.read() as session:
        row = store_curves.latest_curve(session, version)
    if row is None:
        return None
    data = row.payload
    points = [CurvePoint(**p) for p in data.get("points", [])]
    return LearningCurve(
        id=row.id,
        version=row.version,
        test_description=str(data.get("test", "")),
        test_n=row.test_n,
        config=row.config,
        points=points,
        summary=summarise(points),
        verdict=str(data.get("verdict", "")),
        images_per_point=data.get("images_per_point"),
        seconds=row.seconds or 0.0,
    )
