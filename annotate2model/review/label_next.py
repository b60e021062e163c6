"""`a2m label-next`: the project's unlabeled tasks in the order that a label would teach the run
most, into Label Studio's "a2m: label next" tab, each with the run's guess pre-filled.

The run's features and probabilities come from its Predictor, as `a2m flag` gets them (the probe's
from the embedding cache); the order is review/ordering.py's; labelstudio/label_next.py puts it in
Label Studio. Nothing here talks HTTP itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from annotate2model.errors import TrainingError
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.flags import tab_url
from annotate2model.labelstudio.label_next import (
    NEXT_TAB,
    NextItem,
    NextPush,
    push_next,
    review_held,
)
from annotate2model.progress import NullProgress, Progress
from annotate2model.review.flagging import _check_synced, _run, unlabeled_images
from annotate2model.review.ordering import Uncertainty, label_next_order
from annotate2model.store import Store
from annotate2model.store.runs import RunRecord, list_runs

if TYPE_CHECKING:
    from annotate2model.training.context import RunContext


@dataclass
class NextOrder:
    """The order for one run: task ids (first first) and the run's guess for each."""

    task_ids: list[int]
    guesses: list[str]
    # Uncertainty (1 - margin, or entropy) of each, in the same order.
    uncertainty: list[float]
    # Images the run could not read (their tasks are left out), by sha256.
    unreadable: dict[str, str] = field(default_factory=dict)
    # Whether the diversity step ran (an ensemble has no features of its own).
    diverse: bool = True


@dataclass
class NextOutcome:
    run: int
    project: int
    # Unlabeled tasks the store knows; those ordered into the tab (at most --limit).
    unlabeled: int
    ordered: int
    # Unlabeled tasks left to the review tab, where a flag already shows them.
    in_review: int
    unreadable: int
    diverse: bool
    method: str
    push: NextPush = field(default_factory=NextPush)
    tab: str = NEXT_TAB
    url: str = ""
    # The first tasks of the order (task ids).
    first: list[int] = field(default_factory=list)


def latest_run(store: Store) -> RunRecord:
    """The newest succeeded run (TrainingError when there is none)."""
    with store.read() as session:
        runs = [r for r in list_runs(session) if r.status == "succeeded" and r.artifact_dir]
    if not runs:
        raise TrainingError(
            "no trained run yet: the order needs a model's predictions.",
            hint="train one first: `a2m train` (or `a2m loop`).",
        )
    return max(runs, key=lambda r: r.id)


def next_order(
    store: Store,
    run_ref: int | str,
    project_id: int,
    *,
    skip: set[int] | None = None,
    method: Uncertainty = "margin",
    progress: Progress | None = None,
    context: RunContext | None = None,
) -> NextOrder:
    """The project's unlabeled tasks (as the store knows them; `skip`: task ids left out) in the
    order to label them, by run `run_ref`'s predictions and features."""
    from annotate2model.training.context import RunContext
    from annotate2model.training.runs.predictor import Predictor
    from annotate2model.training.runs.runner import load_predictor

    progress = progress or NullProgress()
    ctx = context or RunContext.from_store(store)
    run = _run(store, run_ref)
    by_sha = unlabeled_images(store, project_id, skip or ())
    shas = sorted(by_sha)
    if not shas:
        return NextOrder([], [], [])
    with ctx.embedding_cache() as cache:
        predictor = load_predictor(ctx, run, cache)
        paths = [ctx.blob_path(s) for s in shas]
        features = None
        if isinstance(predictor, Predictor):
            found = predictor.features(paths, keys=shas, progress=progress)
            features = found.rows
        result = predictor.predict(paths, keys=shas, progress=progress)
    unreadable = {shas[i]: reason for i, reason in result.errors.items()}
    good = [i for i in range(len(shas)) if i not in result.errors]
    if not good:
        return NextOrder([], [], [], unreadable, features is not None)
    probs = np.asarray(result.probs)[good]
    feats = features[good] if features is not None else None
    progress.begin("Ordering")
    order = label_next_order(probs, feats, method=method)
    progress.end()
    from annotate2model.review.ordering import uncertainty

    scores = uncertainty(probs, method)
    labels = list(result.labels)
    out = NextOrder([], [], [], unreadable, feats is not None)
    for k in order:
        sha = shas[good[int(k)]]
        for task_id in by_sha[sha]:
            out.task_ids.append(task_id)
            out.guesses.append(labels[int(np.argmax(probs[int(k)]))])
            out.uncertainty.append(float(scores[int(k)]))
    return out


def label_next(
    store: Store,
    client: LabelStudioClient,
    project_id: int,
    run_ref: int | str | None = None,
    *,
    limit: int | None = None,
    method: Uncertainty = "margin",
    progress: Progress | None = None,
    context: RunContext | None = None,
) -> NextOutcome:
    """Order the unlabeled tasks by the run (the newest by default) and put the order in Label
    Studio's label-next tab (`limit`: the first N only). Label Studio is asked first: a dead
    server fails before any work. Run again, the tab is updated and the last order's predictions
    replaced."""
    progress = progress or NullProgress()
    client.check()
    run = latest_run(store) if run_ref is None else _run(store, run_ref)
    _check_synced(store, client, project_id)
    held = review_held(client, project_id)
    unlabeled = {i for ids in unlabeled_images(store, project_id).values() for i in ids}
    order = next_order(
        store, run.id, project_id, skip=held, method=method, progress=progress, context=context
    )
    count = len(order.task_ids) if limit is None else min(limit, len(order.task_ids))
    items = [NextItem(order.task_ids[i], i, order.guesses[i]) for i in range(count)]
    push = push_next(client, project_id, items, progress=progress)
    return NextOutcome(
        run=run.id,
        project=project_id,
        unlabeled=len(unlabeled),
        ordered=count,
        in_review=len(unlabeled & held),
        unreadable=len(order.unreadable),
        diverse=order.diverse,
        method=method,
        push=push,
        url=tab_url(client, project_id, push.view_id),
        first=order.task_ids[: min(count, 10)],
    )
