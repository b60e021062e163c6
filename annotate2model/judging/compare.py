"""`a2m compare`: runs of several dataset versions judged on the SAME images.

Each version has its own val/test images, so the accuracies `a2m runs` lists are not comparable.
By default every run is judged on every image of the newest compared version that none of the
compared runs trained on or chose its epoch on (an ensemble counts its members' versions): more
than the test images all versions share, since a newer version's new test images are unseen by
every older run. `shared` asks for that intersection, `test_of` for one version's test split. Each
run gets a Wilson interval of its accuracy and consecutive runs McNemar's exact test.
Predictions already in the ledger are reused; the missing ones (an older run has not seen a newer
version's new test images) go through the Predictor once and are kept in the ledger, as is each
judgement, so a repeated comparison needs no torch. A judgement kept is also logged to the MLflow
run of each compared run that has one, when the workspace tracks runs there (tracking.py).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from annotate2model.errors import InputError, NotFoundError, TrainingError
from annotate2model.judging import stats
from annotate2model.judging.records import (
    CommonTestSet,
    CompareRow,
    Comparison,
    ImageChange,
    PairTest,
)
from annotate2model.progress import NullProgress, Progress
from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.store import versions as store_versions
from annotate2model.store.images import image_names
from annotate2model.store.records import VersionItemRecord
from annotate2model.store.runs import PredictionRecord, RunRecord
from annotate2model.training.context import RunContext

# Configuration keys whose difference makes a comparison about more than the data.
_MODEL_KEYS = (
    ("backbone", "backbone"),
    ("mode", "mode"),
    ("weights_identity", "pretrained weights"),
    ("image_size", "input size"),
)


@dataclass(frozen=True)
class _Answer:
    predicted: str
    confidence: float


def parse_ids(text: str | None, what: str) -> list[int] | None:
    """ "3,4,5" (or "v3,v4") -> [3, 4, 5]; None stays None."""
    if text is None:
        return None
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            out.append(int(part.lstrip("v#")))
        except ValueError:
            raise InputError(f"{part!r} is not a {what} number.") from None
    if not out:
        raise InputError(f"no {what} numbers given.")
    return out


def choose_runs(
    all_runs: Sequence[RunRecord],
    versions: Sequence[int] | None = None,
    runs: Sequence[int] | None = None,
) -> list[RunRecord]:
    """The runs to compare, ordered by (version, id).

    `runs`: exactly those. `versions`: the latest succeeded run of each. Neither: the latest
    succeeded run of every version that has one (or, with a single such version, all its runs).
    """
    by_id = {r.id: r for r in all_runs}
    succeeded = [r for r in all_runs if r.status == "succeeded" and r.artifact_dir]
    if runs:
        chosen = []
        for run_id in dict.fromkeys(runs):
            run = by_id.get(run_id)
            if run is None:
                raise NotFoundError(f"there is no run {run_id}.", hint="`a2m runs` lists them.")
            if run.status != "succeeded":
                raise TrainingError(f"run {run_id} is {run.status}; only succeeded runs compare.")
            chosen.append(run)
    elif versions:
        chosen = []
        for number in dict.fromkeys(versions):
            candidates = [r for r in succeeded if r.version == number]
            if not candidates:
                raise NotFoundError(
                    f"version {number} has no succeeded run to compare.",
                    hint=f"train one: `a2m train --version {number}`.",
                )
            chosen.append(max(candidates, key=lambda r: r.id))
    else:
        latest: dict[int, RunRecord] = {}
        for r in succeeded:
            if r.version not in latest or r.id > latest[r.version].id:
                latest[r.version] = r
        chosen = list(latest.values()) if len(latest) > 1 else succeeded
    if len(chosen) < 2:
        raise InputError(
            "a comparison needs at least two succeeded runs"
            + (f"; there is only run {chosen[0].id}." if chosen else "; there are none yet."),
            hint="train another dataset version (`a2m train --version N`), then compare.",
        )
    return sorted(chosen, key=lambda r: (r.version, r.id))


def _label(run: RunRecord) -> str:
    return f"run {run.id} (v{run.version})"


def learned_versions(run: RunRecord, by_id: dict[int, RunRecord]) -> set[int]:
    """The versions whose train and val images a run learned from or chose its epoch on: its own,
    or for an ensemble its members' (it trained nothing itself)."""
    if run.kind != "ensemble":
        return {run.version}
    out: set[int] = set()
    for member in run.config.get("members", []):
        found = by_id.get(int(member))
        if found is not None and found.id != run.id:
            out |= learned_versions(found, by_id)
    return out or {run.version}


def _no_run(n: int) -> str:
    """The two runs are "neither run"; three or more, "none of the 3 runs"."""
    return "neither run" if n == 2 else f"none of the {n} runs"


def _all_versions(n: int) -> str:
    """Two versions are "both versions"; three or more, "all 3 versions"."""
    return "both versions" if n == 2 else f"all {n} versions"


def compare(
    store: Store,
    *,
    versions: Sequence[int] | None = None,
    runs: Sequence[int] | None = None,
    test_of: int | str | None = None,
    shared: bool = False,
    context: RunContext | None = None,
    progress: Progress | None = None,
    record: bool = True,
) -> Comparison:
    """Judge the chosen runs on the same images; `record` keeps each judgement in the ledger.

    The images: those of the newest compared version that no compared run trained on or chose
    its epoch on; with `shared`, the test images all compared versions share; with `test_of`,
    that version's test split.
    """
    if shared and test_of is not None:
        raise InputError("give test_of or shared, not both.")
    progress = progress or NullProgress()
    with store.read() as session:
        all_runs = store_runs.list_runs(session)
        chosen = choose_runs(all_runs, versions, runs)
        by_id = {r.id: r for r in all_runs}
        learned = {r.id: learned_versions(r, by_id) for r in chosen}
        numbers = sorted({r.version for r in chosen})
        items = {
            n: store_versions.version_items(session, n)
            for n in sorted(set(numbers).union(*learned.values()))
        }
        pinned = test_of is not None
        if pinned:
            truth_version = store_versions.get_version(session, test_of).number
            if truth_version not in items:
                items[truth_version] = store_versions.version_items(session, truth_version)
        else:
            truth_version = max(numbers)
        stored = {r.id: store_runs.read_predictions(session, r.id) for r in chosen}
    warnings: list[str] = []
    # Test images; where the versions have none (splits taken from train/ and val/ folders), the
    # validation images, said out loud: the runs chose their epoch on them.
    split = "test"
    if not any(i.split == "test" for n in numbers for i in items[n]) and not (
        pinned and any(i.split == "test" for i in items[truth_version])
    ):
        split = "val"
        warnings.append(
            "the compared versions have no test split: the runs are judged on validation images, "
            "which they also used to pick their best epoch."
        )
    kind = "pinned" if pinned else "shared" if shared or split == "val" else "unseen"
    truth_items = {i.image_sha256: i for i in items[truth_version] if i.split == split}
    if kind == "pinned":
        common = sorted(truth_items)
        where = f"version {truth_version}'s {split} split"
        if not common:
            raise TrainingError(f"version {truth_version} has no {split} images to judge on.")
    elif kind == "unseen":
        seen = {
            i.image_sha256
            for run in chosen
            for n in learned[run.id]
            for i in items[n]
            if i.split in ("train", "val")
        }
        truth_items = {i.image_sha256: i for i in items[truth_version]}
        common = sorted(set(truth_items) - seen)
        where = f"the images {_no_run(len(chosen))} trained on or chose its epoch on"
        if not common:
            raise TrainingError(
                f"every image of version {truth_version} was trained on or used to choose an "
                "epoch by one of the compared runs.",
                hint="judge them all on one version's test split: `a2m compare --test-of V`.",
            )
    else:
        in_all = set(truth_items)
        for n in numbers:
            in_all &= {i.image_sha256 for i in items[n] if i.split == split}
        common = sorted(in_all)
        where = (
            f"the {split} images {_all_versions(len(numbers))} share"
            if len(numbers) > 1
            else f"version {truth_version}'s {split} split"
        )
        if not common:
            raise TrainingError(
                "the compared versions share no test image"
                + ("" if truth_items else f" (version {truth_version} has no test split)")
                + ".",
                hint="judge them all on one version's test split: `a2m compare --test-of V`.",
            )
    warnings.extend(_relabeled(common, items, truth_version))
    warnings.extend(_leaks(chosen, learned, common, items, split))
    answers = _answers(store, chosen, common, truth_version, truth_items, stored, context, progress)
    unreadable = {sha for got in answers.values() for sha in common if sha not in got}
    if unreadable:
        warnings.append(
            f"{len(unreadable)} judged image(s) could not be read by every run and are left out."
        )
        common = [sha for sha in common if sha not in unreadable]
    if not common:
        raise TrainingError("no image could be judged by every run.")
    with store.read() as session:
        names = image_names(session, common)
    truth = [truth_items[sha].label for sha in common]
    test_set = CommonTestSet(
        description=f"{where} ({len(common)} images, labels of version {truth_version})",
        split=split,
        version=truth_version,
        pinned=pinned,
        kind=kind,
        images=list(common),
        labels=truth,
        names=[names.get(sha, sha[:12]) for sha in common],
    )
    if len(common) < stats.SMALL_TEST_SET:
        warnings.append(
            f"only {len(common)} judged images: the intervals are wide and small differences "
            "mean little."
        )
    warnings.extend(_config_differences(chosen))
    rows: list[CompareRow] = []
    predicted: dict[int, list[str]] = {}
    confidence: dict[int, list[float]] = {}
    for run in chosen:
        got = [answers[run.id][sha] for sha in common]
        predicted[run.id] = [a.predicted for a in got]
        confidence[run.id] = [a.confidence for a in got]
        rows.append(_row(run, items[run.version], truth, predicted[run.id]))
        unknown = sorted(set(truth) - set(_run_labels(run, stored[run.id])))
        if unknown:
            warnings.append(
                f"{_label(run)} never learned {', '.join(unknown)}: those images count as wrong."
            )
    pairs = [
        _pair(before, after, test_set, truth, predicted)
        for before, after in itertools.pairwise(chosen)
    ]
    comparison = Comparison(
        test_set=test_set,
        rows=rows,
        pairs=pairs,
        warnings=warnings,
        predicted=predicted,
        confidence=confidence,
    )
    if record:
        _record(store, comparison)
        _mirror(store, comparison, progress)
    return comparison


def _run_labels(run: RunRecord, stored: Sequence[PredictionRecord]) -> list[str]:
    """The classes a run can predict: its version's labels (what it was trained on)."""
    labels = run.config.get("labels")
    if isinstance(labels, list):
        return [str(x) for x in labels]
    return sorted({p.label for p in stored} | {p.predicted for p in stored})


def _answers(
    store: Store,
    chosen: Sequence[RunRecord],
    common: Sequence[str],
    truth_version: int,
    truth_items: dict[str, VersionItemRecord],
    stored: dict[int, list[PredictionRecord]],
    context: RunContext | None,
    progress: Progress,
) -> dict[int, dict[str, _Answer]]:
    """Run -> image -> answer: from the ledger where the run already judged the image (the
    prediction of an image does not depend on the version it was judged in), else predicted now."""
    wanted = set(common)
    answers: dict[int, dict[str, _Answer]] = {}
    missing: dict[int, list[str]] = {}
    for run in chosen:
        got = {
            p.image_sha256: _Answer(p.predicted, p.confidence)
            for p in stored[run.id]
            if p.image_sha256 in wanted
        }
        answers[run.id] = got
        todo = [sha for sha in common if sha not in got]
        if todo:
            missing[run.id] = todo
    if missing:
        ctx = context or RunContext.from_store(store)
        for run in chosen:
            if run.id in missing:
                answers[run.id].update(
                    _predict(store, ctx, run, missing[run.id], truth_version, truth_items, progress)
                )
    return answers


def _predict(
    store: Store,
    ctx: RunContext,
    run: RunRecord,
    shas: list[str],
    truth_version: int,
    truth_items: dict[str, VersionItemRecord],
    progress: Progress,
) -> dict[str, _Answer]:
    """Predict images a run has never judged (through the Predictor); kept in the ledger."""
    from annotate2model.training.runs.ledger import Ledger, prediction_rows
    from annotate2model.training.runs.runner import load_predictor

    with ctx.embedding_cache() as cache:
        predictor = load_predictor(ctx, run, cache)
        progress.begin(f"Judging run {run.id} on {len(shas)} images", total=len(shas))
        result = predictor.predict([ctx.blob_path(s) for s in shas], keys=shas, progress=progress)
        progress.end()
    # Every common image is a row of the truth version: its rows are the ledger's rows.
    ok = result.ok
    read = [truth_items[sha] for sha, good in zip(shas, ok, strict=True) if good]
    rows = prediction_rows(read, result.probs[ok], predictor.labels)
    if rows:
        Ledger(store).add_predictions(run.id, truth_version, rows)
    return {r.image_sha256: _Answer(r.predicted, r.confidence) for r in rows}


def _row(
    run: RunRecord,
    version_items: Sequence[VersionItemRecord],
    truth: Sequence[str],
    predicted: Sequence[str],
) -> CompareRow:
    counts = Counter(i.split for i in version_items)
    balance = Counter(i.label for i in version_items if i.split == "train")
    correct = [t == p for t, p in zip(truth, predicted, strict=True)]
    c = run.config
    val = run.metrics.get("val_accuracy")
    return CompareRow(
        run=run.id,
        version=run.version,
        counts={s: counts.get(s, 0) for s in ("train", "val", "test")},
        balance=dict(sorted(balance.items())),
        backbone=str(c.get("backbone") or "ensemble"),
        mode=str(c.get("mode") or run.kind),
        weights=str(c.get("weights") or ""),
        val_accuracy=float(val) if isinstance(val, int | float) else None,
        accuracy=sum(correct) / len(correct),
        interval=stats.accuracy_interval(correct),
        macro_f1=stats.macro_f1(truth, predicted),
        per_class=stats.per_class_accuracy(truth, predicted),
        wall_seconds=run.wall_seconds,
        images_per_second=run.images_per_second,
        device=run.device,
        kind=run.kind,
    )


def _pair(
    before: RunRecord,
    after: RunRecord,
    test_set: CommonTestSet,
    truth: Sequence[str],
    predicted: dict[int, list[str]],
) -> PairTest:
    a, b = predicted[before.id], predicted[after.id]
    changes = []
    fixed = broken = 0
    for i, label in enumerate(truth):
        was, now = a[i] == label, b[i] == label
        if was == now:
            continue
        if now:
            fixed += 1
        else:
            broken += 1
        changes.append(
            ImageChange(
                image_sha256=test_set.images[i],
                name=test_set.names[i],
                label=label,
                before=a[i],
                after=b[i],
            )
        )
    p = stats.mcnemar_p(fixed, broken)
    acc_a = stats.per_class_accuracy(truth, a)
    acc_b = stats.per_class_accuracy(truth, b)
    return PairTest(
        before=before.id,
        after=after.id,
        fixed=fixed,
        broken=broken,
        p_value=p,
        n=len(truth),
        sentence=stats.pair_sentence(
            _label(before),
            _label(after),
            fixed,
            broken,
            len(truth),
            p,
            images=(
                "images none of the runs trained on"
                if test_set.kind == "unseen"
                else f"common {test_set.split} images"
            ),
        ),
        per_class_delta={c: acc_b[c] - acc_a[c] for c in acc_a},
        # Fixed first, then broken; each group by name.
        changes=sorted(changes, key=lambda c: (c.after != c.label, c.name)),
    )


def _relabeled(
    common: Sequence[str], items: dict[int, list[VersionItemRecord]], truth_version: int
) -> list[str]:
    truth = {i.image_sha256: i.label for i in items[truth_version]}
    changed = set()
    for rows in items.values():
        for i in rows:
            if i.image_sha256 in truth and i.label != truth[i.image_sha256]:
                changed.add(i.image_sha256)
    changed &= set(common)
    if not changed:
        return []
    return [
        f"{len(changed)} common test image(s) carry other labels in other versions; all runs are "
        f"judged by version {truth_version}'s labels."
    ]


def _leaks(
    chosen: Sequence[RunRecord],
    learned: dict[int, set[int]],
    common: Sequence[str],
    items: dict[int, list[VersionItemRecord]],
    split: str,
) -> list[str]:
    """Runs that trained on (or chose their epoch on) some of the judged images."""
    out = []
    wanted = set(common)
    # Judged on val (no test split anywhere): choosing the epoch on them is said elsewhere.
    learned_from = {"train", "val"} - {split}
    for run in chosen:
        seen = {
            i.image_sha256: i.split
            for n in sorted(learned[run.id])
            for i in items[n]
            if i.image_sha256 in wanted and i.split in learned_from
        }
        trained = sum(1 for s in seen.values() if s == "train")
        if seen:
            out.append(
                f"{_label(run)} saw {len(seen)} of the judged images during training "
                f"({trained} in its training split): its score on them is optimistic."
            )
    return out


def _config_differences(chosen: Sequence[RunRecord]) -> list[str]:
    """Model settings that differ between the runs, among the runs whose configuration has them
    (an ensemble's holds its members, not a backbone or an input size)."""
    out = []
    for key, words in _MODEL_KEYS:
        values: dict[str, list[int]] = {}
        for run in chosen:
            if key in run.config:
                values.setdefault(str(run.config[key]), []).append(run.id)
        if len(values) > 1:
            detail = "; ".join(
                f"{value} (run{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))})"
                for value, ids in values.items()
            )
            out.append(
                f"the runs differ in {words}: {detail}. The comparison mixes data and model."
            )
    return out


def _mirror(store: Store, comparison: Comparison, progress: Progress) -> None:
    """The judgement in MLflow too, on each compared run's MLflow run (tracking.py), when the
    workspace tracks there: MLflow missing or down is one warning."""
    from annotate2model import tracking

    tracking.mirror(
        store.settings,
        f"the comparison of runs {', '.join(str(r.run) for r in comparison.rows)}",
        progress.note,
        lambda uri, experiment: tracking.log_comparison(uri, experiment, comparison),
    )


def _record(store: Store, comparison: Comparison) -> None:
    from annotate2model.training.runs.ledger import Ledger

    ledger = Ledger(store)
    test_set = comparison.test_set
    for row in comparison.rows:
        metrics: dict[str, Any] = {
            "accuracy": row.accuracy,
            "macro_f1": row.macro_f1,
            "interval": [row.interval.low, row.interval.high],
            "per_class": row.per_class,
            "compared_with": [r.run for r in comparison.rows if r.run != row.run],
            "test_set": test_set.description,
        }
        ledger.record_evaluation(
            row.run, test_set.version, "common", test_set.images, metrics, source="compare"
        )
