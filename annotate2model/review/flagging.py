"""`a2m flag` and `a2m unflag`: a run's doubts found, recorded as flags and handed to Label Studio.

`find_doubts` gathers what the ranking needs from the store and the run (held-out predictions,
features of every labeled image, predictions for unlabeled tasks) and returns ranked `Doubt`s
with the `Evidence` for them (how many training labels cleanlab thinks are wrong, the run's
held-out accuracy, what precision its flags can be expected to have); `flag_run` maps them to the
project's tasks, keeps back what a person confirmed, records them (store/flags.py) and has
labelstudio/flags.py push them; `unflag_run` takes them back. Nothing here talks HTTP itself.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from annotate2model.errors import InputError, TrainingError
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.flags import (
    REASON_FIELD,
    REVIEW_TAB,
    PushItem,
    PushResult,
    UnflagItem,
    push_flags,
    retire_answered,
    settle_interrupted,
    tab_url,
    unflag_tasks,
)
from annotate2model.progress import NullProgress, Progress
from annotate2model.review.ranking import (
    REASONS,
    Doubt,
    Scored,
    label_issues,
    misclassified,
    out_of_fold_probs,
    ranked,
    uncertain,
)
from annotate2model.store import Store
from annotate2model.store import flags as store_flags
from annotate2model.store.runs import RunRecord, get_run, read_predictions
from annotate2model.store.tasks import load_tasks
from annotate2model.store.versions import version_items

if TYPE_CHECKING:
    from annotate2model.training.context import RunContext

HELD_OUT = ("val", "test")
# Which reason wins when one task is doubted for two (a task carries one flag per run).
PRIORITY = {"misclassified": 0, "label-issue": 1, "uncertain": 2}
# What a run doubts is a judgement of its features: a label a person confirmed after a flag is
# doubted again only by a run on other features (another backbone or weights, or a fine-tuned
# trunk) or with --recheck-confirmed. A run retrained on the same features keeps its old doubts
# (on bench/flag_quality.py's scenes, even at p(label) < 1e-6), which the person has answered.
# Below this held-out accuracy, `flag` warns that most flags will be the run's own errors: a run
# that errs on 10% of unseen images outnumbers wrong labels unless over 5% of labels are wrong.
ACCURACY_BAR = 0.90


@dataclass
class Evidence:
    """What the run's data say of its flags before they are sent."""

    # Training images, and how many of their labels cleanlab estimates are wrong (out-of-fold
    # probabilities on the run's features); None where the run has no features of its own.
    training_images: int = 0
    estimated_wrong: int | None = None
    # The run's accuracy on its own validation and test images.
    held_out_accuracy: float | None = None
    held_out_images: int = 0

    @property
    def noise_rate(self) -> float | None:
        if self.estimated_wrong is None or not self.training_images:
            return None
        return self.estimated_wrong / self.training_images

    @property
    def expected_precision(self) -> float | None:
        """The share of misclassified flags that can be expected to be wrong labels: the label
        noise rate over the held-out error rate (assuming the held-out images are as noisy as
        the training ones, and the run predicts the true class of a mislabeled image). Only for a
        run at ACCURACY_BAR or above: below it, cleanlab's estimate counts the run's own
        confusions as wrong labels (measured: 24.5% estimated on hymenoptera's clean labels with
        a 0.70 run, 4.6% on scenes_1200's with a 0.86 one)."""
        noise, accuracy = self.noise_rate, self.held_out_accuracy
        if noise is None or accuracy is None or accuracy < ACCURACY_BAR:
            return None
        return 1.0 if accuracy >= 1.0 else min(1.0, noise / (1.0 - accuracy))

    def warning(self) -> str | None:
        """One line when the run is too weak for its flags to be mostly wrong labels."""
        accuracy = self.held_out_accuracy
        if accuracy is None or accuracy >= ACCURACY_BAR:
            return None
        error = 1.0 - accuracy
        return (
            f"this run's held-out accuracy is {accuracy:.2f} (below {ACCURACY_BAR:.2f}): it errs "
            f"on {error:.0%} of the images it never saw, so unless more than {error / 2:.0%} of "
            "the labels are wrong, most of its flags will be its own errors, not wrong labels "
            "(cleanlab's estimate counts them too). More labels, a stronger backbone or "
            "fine-tuning would help."
        )


def parse_reasons(text: str) -> list[str]:
    """ "misclassified,label-issue" -> the reasons, checked (InputError names the known ones)."""
    reasons = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in reasons if r not in REASONS]
    if unknown or not reasons:
        raise InputError(
            f"unknown flag reason {', '.join(repr(r) for r in unknown) or '(none)'}; "
            f"choose from {', '.join(REASONS)}."
        )
    return list(dict.fromkeys(reasons))


def unlabeled_images(
    store: Store, project_id: int, skip: Collection[int] = ()
) -> dict[str, list[int]]:
    """The project's live tasks with an image and no label (as the store knows them; `skip`: task
    ids left out): image sha256 -> its task ids, in task id order."""
    with store.read() as session:
        tasks = load_tasks(session, project_id)
    by_sha: dict[str, list[int]] = {}
    for t in sorted(tasks.values(), key=lambda t: t.task_id):
        wanted = t.label is None and not t.deleted and not t.problem and t.task_id not in skip
        if t.image_sha256 and wanted:
            by_sha.setdefault(t.image_sha256, []).append(t.task_id)
    return by_sha


def _run(store: Store, run_ref: int | str) -> RunRecord:
    with store.read() as session:
        run = get_run(session, run_ref)
    if run.status != "succeeded" or run.artifact_dir is None:
        raise TrainingError(f"run {run.id} is {run.status} and has no model to judge with.")
    return run


def find_doubts(
    store: Store,
    run_ref: int | str,
    reasons: Sequence[str] = REASONS,
    *,
    project_id: int | None = None,
    folds: int = 5,
    seed: int = 0,
    progress: Progress | None = None,
    context: RunContext | None = None,
    evidence: Evidence | None = None,
    reserve: list[Doubt] | None = None,
) -> list[Doubt]:
    """Every doubt of the run for the given reasons, most doubtful first. `project_id`: where
    the unlabeled tasks are (needed for `uncertain`). `evidence` is filled in on the way: the
    held-out accuracy always, the estimate of wrong training labels when the run has features
    of its own. `reserve` receives the other training images as label-issue doubts, most
    doubtful first: what `flag_run` sends in place of doubts a person already answered."""
    from annotate2model.training.context import RunContext
    from annotate2model.training.runs import artifacts

    progress = progress or NullProgress()
    evidence = evidence if evidence is not None else Evidence()
    ctx = context or RunContext.from_store(store)
    run = _run(store, run_ref)
    card = artifacts.read_card(ctx.run_dir(run.id))
    labels: list[str] = list(card["labels"])
    doubts: list[Doubt] = []
    with store.read() as session:
        held_out = [
            Scored(p.image_sha256, p.label, p.probs)
            for p in read_predictions(session, run.id, run.version)
            if p.split in HELD_OUT
        ]
    index = {name: i for i, name in enumerate(labels)}
    judged = [r for r in held_out if r.label in index and len(r.probs) == len(labels)]
    if judged:
        right = sum(int(np.argmax(r.probs)) == index[str(r.label)] for r in judged)
        evidence.held_out_accuracy = right / len(judged)
        evidence.held_out_images = len(judged)
    if "misclassified" in reasons:
        doubts += misclassified(held_out, labels)
    if {"misclassified", "label-issue"} & set(reasons) and card.get("kind") == "classifier":
        issues, rest = _label_issues(store, ctx, run, labels, folds, seed, progress, evidence)
        if "label-issue" in reasons:
            doubts += issues
            if reserve is not None:
                reserve += rest
    elif "label-issue" in reasons:
        raise TrainingError(
            f"run {run.id} is an ensemble: label issues need the features of one network; "
            "flag one of its members."
        )
    if "uncertain" in reasons:
        if project_id is None:
            raise InputError("finding uncertain tasks needs a Label Studio project.")
        doubts += _uncertain(store, ctx, run, labels, project_id, progress)
    return ranked(doubts)


def _label_issues(
    store: Store,
    ctx: RunContext,
    run: RunRecord,
    labels: list[str],
    folds: int,
    seed: int,
    progress: Progress,
    evidence: Evidence,
) -> tuple[list[Doubt], list[Doubt]]:
    """k-fold probabilities on the run's own features of every labeled image of its version;
    the training images among them may be flagged. Returns cleanlab's label issues, and the
    other training images as doubts (score 1 - p(given label)), both most doubtful first; how
    many training labels cleanlab estimates are wrong goes into `evidence`."""
    from cleanlab.count import num_label_issues

    with store.read() as session:
        items = [i for i in version_items(session, run.version) if i.label in labels]
    shas = [i.image_sha256 for i in items]
    features = run_features(ctx, run, shas, progress)
    kept = [i for i in items if i.image_sha256 in features]
    if not kept:
        return [], []
    index = {name: n for n, name in enumerate(labels)}
    x = np.stack([features[i.image_sha256] for i in kept])
    y = np.array([index[i.label] for i in kept], dtype=np.int64)
    progress.begin("Finding label issues")
    probs = out_of_fold_probs(x, y, len(labels), folds=folds, seed=seed)
    train = np.array([i.split == "train" for i in kept])
    evidence.training_images = int(train.sum())
    if train.any() and len(np.unique(y[train])) > 1:
        evidence.estimated_wrong = int(num_label_issues(labels=y[train], pred_probs=probs[train]))
    found = label_issues(
        [i.image_sha256 for i in kept],
        [i.label for i in kept],
        probs,
        labels,
        eligible={i.image_sha256 for i in kept if i.split == "train"},
    )
    progress.end()
    chosen = {d.image_sha256 for d in found}
    rest = [
        Doubt(
            image_sha256=item.image_sha256,
            reason="label-issue",
            score=float(min(1.0, max(0.0, 1.0 - probs[n, y[n]]))),
            current_label=item.label,
            suggested_label=labels[int(np.argmax(probs[n]))],
        )
        for n, item in enumerate(kept)
        if train[n] and item.image_sha256 not in chosen and int(np.argmax(probs[n])) != y[n]
    ]
    return found, ranked(rest)


def run_features(
    ctx: RunContext, run: RunRecord, shas: Sequence[str], progress: Progress
) -> dict[str, Any]:
    """sha -> the run's trunk features, from its Predictor (`Predictor.features`): a probe's
    from the embedding cache, computing only what is missing; a fine-tuned run's through its own
    trunk, cached under its own key."""
    from annotate2model.training.runs.predictor import Predictor
    from annotate2model.training.runs.runner import load_predictor

    with ctx.embedding_cache() as cache:
        predictor = load_predictor(ctx, run, cache)
        if not isinstance(predictor, Predictor):
            raise TrainingError(f"run {run.id} is an ensemble: it has no features of its own.")
        found = predictor.features([ctx.blob_path(s) for s in shas], keys=shas, progress=progress)
    for i, reason in sorted(found.errors.items()):
        progress.note(f"image {shas[i][:12]} left out: {reason}")
    return {sha: found.rows[i] for i, sha in enumerate(shas) if i not in found.errors}


def _uncertain(
    store: Store,
    ctx: RunContext,
    run: RunRecord,
    labels: list[str],
    project_id: int,
    progress: Progress,
) -> list[Doubt]:
    from annotate2model.training.runs.runner import load_predictor

    shas = sorted(unlabeled_images(store, project_id))
    if not shas:
        return []
    with ctx.embedding_cache() as cache:
        predictor = load_predictor(ctx, run, cache)
        result = predictor.predict([ctx.blob_path(s) for s in shas], keys=shas, progress=progress)
    rows = [
        Scored(sha, None, [float(v) for v in result.probs[i]])
        for i, sha in enumerate(shas)
        if i not in result.errors
    ]
    return uncertain(rows, labels)


@dataclass
class FlagOutcome:
    """What `flag_run` did."""

    run: int
    project: int
    # Flags found per reason (after the cut), and those placed on tasks.
    found: dict[str, int]
    flagged: int
    # Doubted images with no live task in the project that still carries the doubted label
    # (imported from a folder, deleted, or relabeled since the run).
    without_task: int
    # Doubts kept back because a person confirmed that label on that task after a flag from a
    # run on the same features.
    kept_back: int = 0
    # Flagged tasks that already waited in review for an earlier run's flag: still one entry
    # there, now with this run's score.
    carried: int = 0
    # Tasks whose flags were answered since the last push, taken out of the review tab first.
    retired: int = 0
    evidence: Evidence = field(default_factory=Evidence)
    push: PushResult = field(default_factory=PushResult)
    tab: str = ""
    url: str = ""


def flag_run(
    store: Store,
    client: LabelStudioClient,
    project_id: int,
    run_ref: int | str,
    *,
    reasons: Sequence[str] = ("misclassified", "label-issue"),
    max_count: int | None = None,
    min_score: float = 0.0,
    requeue: bool = False,
    recheck_confirmed: bool = False,
    progress: Progress | None = None,
    context: RunContext | None = None,
    on_evidence: Callable[[Evidence], None] | None = None,
) -> FlagOutcome:
    """Find the run's doubts, record them as flags on the project's tasks and push them.

    Label Studio is asked first (a dead server or a rejected token fails before any work).
    A doubt about a label a person confirmed on that task after a flag from a run on the same
    features is kept back (`recheck_confirmed`: all are sent). `on_evidence` sees what the data
    say of the flags (estimated wrong labels, held-out accuracy) before they are sent."""
    progress = progress or NullProgress()
    client.check()
    run = _run(store, run_ref)
    if "uncertain" in reasons:
        _check_synced(store, client, project_id)
    settle_interrupted(store, client, project_id, progress)
    retired = retire_answered(store, client, project_id, progress)
    evidence = Evidence()
    reserve: list[Doubt] = []
    doubts = find_doubts(
        store,
        run.id,
        reasons,
        project_id=project_id,
        progress=progress,
        context=context,
        evidence=evidence,
        reserve=reserve,
    )
    if on_evidence is not None:
        on_evidence(evidence)
    doubts = ranked(doubts, max_count=None, min_score=min_score)
    placed = _on_tasks(store, project_id, doubts)
    spare = _on_tasks(store, project_id, ranked(reserve, min_score=min_score))
    without_task = len({d.image_sha256 for d in doubts}) - len({f.image_sha256 for f in placed})
    rows = [f.task_row_id for f in [*placed, *spare]]
    with store.read() as session:
        confirmed = store_flags.confirmed_before(session, rows)
        waiting = store_flags.pending_elsewhere(session, run.id, rows)
        views = {
            rid: _features_of(get_run(session, rid)) for rid in {run.id}.union(*confirmed.values())
        }

    def overruled(f: store_flags.NewFlag) -> bool:
        key = (f.task_row_id, f.image_sha256, f.current_label or "")
        if recheck_confirmed or key not in confirmed:
            return False
        return any(views[rid] == views[run.id] for rid in confirmed[key])

    kept_back = [f for f in placed if overruled(f)]
    held = {f.task_row_id for f in kept_back}
    chosen = [f for f in placed if f.task_row_id not in held]
    chosen = _cap_label_issues(chosen, spare, evidence, overruled)
    new = chosen[:max_count] if max_count is not None else chosen
    found: dict[str, int] = {}
    for f in new:
        found[f.reason] = found.get(f.reason, 0) + 1
    with store.write() as session:
        records = store_flags.record_flags(session, run.id, new, baselines=waiting)
        store_flags.record_suppressed(session, run.id, kept_back)
        # Before the first write to Label Studio: a push killed halfway is known as such.
        store_flags.mark_push_started(
            session, [r.id for r in records if r.task_id is not None], review_field=REASON_FIELD
        )
    items = [
        PushItem(r.id, r.task_id, r.reason, r.score, r.suggested_label, r.current_label)
        for r in records
        if r.task_id is not None
    ]
    outcome = FlagOutcome(
        run=run.id,
        project=project_id,
        found=found,
        flagged=len(items),
        without_task=without_task,
        kept_back=len(kept_back),
        carried=sum(1 for f in new if f.task_row_id in waiting),
        retired=retired,
        evidence=evidence,
    )
    if not items:  # nothing to push: no empty tab either
        outcome.flagged = 0
        return outcome
    # Known requeues of an earlier push are not requeued twice.
    requeued_before = {r.id for r in records if r.draft_id is not None}
    result = outcome.push
    try:
        push_flags(
            client,
            project_id,
            run.id,
            items,
            requeue=requeue,
            result=result,
            progress=progress,
        )
    finally:
        # Whatever reached Label Studio is recorded, also when the push failed halfway.
        with store.write() as session:
            if result.requeued:
                fresh = {k: v for k, v in result.requeued.items() if k not in requeued_before}
                store_flags.mark_requeued(session, fresh)
            if result.done:
                store_flags.mark_pushed(
                    session, result.done, review_field=REASON_FIELD, view_id=result.view_id
                )
            # Their tasks are gone from Label Studio: nothing of theirs can be there.
            store_flags.mark_retired(session, result.missing)
    outcome.tab = REVIEW_TAB
    outcome.url = tab_url(client, project_id, result.view_id)
    return outcome


def _features_of(run: RunRecord) -> tuple[str, ...]:
    """What a run's doubts are a judgement of: a frozen backbone's features (architecture,
    weights, input size), or a fine-tuned run's own trunk."""
    config = run.config
    if config.get("mode") == "finetune":
        return ("run", str(run.id))
    return (
        str(config.get("backbone")),
        str(config.get("weights_identity") or config.get("weights")),
        str(config.get("image_size")),
    )


def _check_synced(store: Store, client: LabelStudioClient, project_id: int) -> None:
    """Uncertain flags are chosen among the tasks the store knows: refuse when Label Studio
    holds tasks the last sync has not seen, saying how many."""
    from annotate2model.labelstudio.flags import live_task_ids

    with store.read() as session:
        known = {t.task_id for t in load_tasks(session, project_id).values()}
    unseen = live_task_ids(client, project_id) - known
    if unseen:
        raise InputError(
            f"{len(unseen)} task(s) of project {project_id} came to Label Studio after the last "
            "sync, and uncertain flags are chosen among the synced ones.",
            hint="run `a2m sync` first (`a2m loop` does both).",
        )


def _cap_label_issues(
    chosen: list[store_flags.NewFlag],
    spare: Sequence[store_flags.NewFlag],
    evidence: Evidence,
    overruled: Callable[[store_flags.NewFlag], bool],
) -> list[store_flags.NewFlag]:
    """As many label-issue flags as cleanlab estimates training labels are wrong: the least
    doubtful beyond that go, and where doubts a person already answered were kept back, the
    next most doubtful training images (`spare`, on their tasks) take their places."""
    estimate = evidence.estimated_wrong
    if estimate is None:
        return chosen
    issues = [f for f in chosen if f.reason == "label-issue"]
    others = [f for f in chosen if f.reason != "label-issue"]
    if len(issues) < estimate:
        taken = {f.task_row_id for f in chosen}
        extra = [f for f in spare if f.task_row_id not in taken and not overruled(f)]
        issues += extra[: estimate - len(issues)]
    issues = sorted(issues, key=lambda f: (-f.score, f.task_row_id))[:estimate]
    return sorted([*others, *issues], key=lambda f: (-f.score, f.task_row_id))


def _on_tasks(store: Store, project_id: int, doubts: Sequence[Doubt]) -> list[store_flags.NewFlag]:
    """Each doubt on the live tasks of the project that show its image with the label doubted
    (a task relabeled since the run was trained is not flagged); one flag per task, the reason
    of highest priority winning."""
    from sqlalchemy import select

    from annotate2model.store.models import Task

    with store.read() as session:
        rows = session.execute(
            select(Task.id, Task.image_sha256, Task.label).where(
                Task.project_id == project_id,
                Task.deleted_at.is_(None),
                Task.image_sha256.is_not(None),
            )
        ).all()
    by_sha: dict[str, list[tuple[int, str | None]]] = {}
    for row_id, sha, label in rows:
        if sha:
            by_sha.setdefault(sha, []).append((row_id, label))
    chosen: dict[int, store_flags.NewFlag] = {}
    for d in doubts:
        for row_id, label in by_sha.get(d.image_sha256, []):
            if label != d.current_label:
                continue
            old = chosen.get(row_id)
            if old is not None and PRIORITY[old.reason] <= PRIORITY[d.reason]:
                continue
            chosen[row_id] = store_flags.NewFlag(
                task_row_id=row_id,
                image_sha256=d.image_sha256,
                reason=d.reason,
                score=d.score,
                current_label=d.current_label,
                suggested_label=d.suggested_label,
            )
    return sorted(chosen.values(), key=lambda f: (-f.score, f.task_row_id))


@dataclass
class UnflagOutcome:
    run: int
    withdrawn: int
    predictions_removed: int
    fields_removed: int
    drafts_restored: int
    tab_removed: bool


def unflag_run(
    store: Store,
    client: LabelStudioClient,
    project_id: int,
    run_ref: int | str,
    *,
    progress: Progress | None = None,
) -> UnflagOutcome:
    """Take the run's flags out of Label Studio; pending flags become withdrawn. A task another
    run's pending flag holds stays in the review tab; with no flag pending in the project, the
    tab goes."""
    client.check()
    with store.read() as session:
        run = get_run(session, run_ref)
        every = store_flags.list_flags(session, None, project_id)
    records = [r for r in every if r.run_id == run.id]
    others = [r for r in every if r.run_id != run.id and r.outcome == "pending"]
    pending = sum(1 for r in records if r.outcome == "pending")
    items = [
        UnflagItem(r.id, r.task_id, r.draft_id, r.review_field)
        for r in records
        if r.task_id is not None and r.review_field is not None
    ]
    result = unflag_tasks(
        client,
        project_id,
        run.id,
        items,
        keep={r.task_id for r in others if r.task_id is not None},
        drop_tab=not others,
        progress=progress,
    )
    with store.write() as session:
        store_flags.withdraw(session, run.id)
        store_flags.clear_requeue(session, result.restored)
        store_flags.mark_retired(session, [i.flag_id for i in items])
    return UnflagOutcome(
        run=run.id,
        withdrawn=pending,
        predictions_removed=result.predictions_removed,
        fields_removed=result.fields_removed,
        drafts_restored=result.drafts_restored,
        tab_removed=result.tab_removed,
    )
