"""`a2m loop`: one iteration of the loop the tool exists for.

Sync the project; when that made a new dataset version (or the newest version has no run yet),
train it with the last configuration (or the one given); compare the new run with the previous
version's run on the test images both versions share; flag the new run's doubts. What changed is
returned as one record: the sync (images, labels, flags it resolved), the run, the comparison and
the flags, with where the flagged tasks wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from annotate2model.errors import A2MError
from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.sync import SyncResult, sync_project
from annotate2model.progress import NullProgress, Progress
from annotate2model.review.flagging import FlagOutcome, flag_run
from annotate2model.store import Store
from annotate2model.store.flags import flag_precision
from annotate2model.store.runs import RunRecord, list_runs

if TYPE_CHECKING:
    from annotate2model.judging.records import Comparison
    from annotate2model.labelstudio.connection import LocalFiles
    from annotate2model.training.config import RunConfig

# Keys the ledger adds to a run's configuration (what `auto` became): not part of a new config.
_LEDGER_KEYS = ("weights_identity", "effective_precision", "effective_workers")


@dataclass
class LoopOutcome:
    sync: SyncResult
    # The version the loop worked on (None: the project has nothing labeled yet).
    version: int | None
    # The run trained by this iteration (None: nothing new to train).
    run: RunRecord | None = None
    # The previous version's latest run, compared with the new one.
    previous: RunRecord | None = None
    comparison: Comparison | None = None
    # Why no comparison could be made (a first version, no shared test image...).
    comparison_note: str | None = None
    flags: FlagOutcome | None = None
    # Run id -> (resolved, relabeled) of the runs whose flags this sync resolved.
    precision: dict[int, tuple[int, int]] = field(default_factory=dict)


def last_config(runs: Sequence[RunRecord]) -> RunConfig | None:
    """The configuration of the latest succeeded training run, as it was asked for."""
    from annotate2model.training.config import RunConfig

    trained = [r for r in runs if r.kind == "train" and r.status == "succeeded"]
    if not trained:
        return None
    config = {k: v for k, v in trained[-1].config.items() if k not in _LEDGER_KEYS}
    return RunConfig.from_dict(config)


def run_loop(
    store: Store,
    client: LabelStudioClient,
    project_id: int,
    *,
    config: RunConfig | None = None,
    reasons: Sequence[str] = ("misclassified", "label-issue"),
    max_count: int | None = None,
    requeue: bool = False,
    recheck_confirmed: bool = False,
    progress: Progress | None = None,
    local: LocalFiles | None = None,
) -> LoopOutcome:
    """Sync, train a new version, compare it with the previous one, flag (see the module)."""
    from annotate2model.training.config import RunConfig
    from annotate2model.training.runs.runner import train

    progress = progress or NullProgress()
    synced = sync_project(store, client, project_id, progress=progress, local=local)
    if synced.version is None:
        return LoopOutcome(sync=synced, version=None)
    number = synced.version.version.number
    with store.read() as session:
        runs = list_runs(session)
        touched = {r.id for r in runs}
        precision = flag_precision(session, touched) if synced.flags_resolved else {}
    outcome = LoopOutcome(sync=synced, version=number, precision=precision)
    has_run = any(r.version == number and r.status == "succeeded" for r in runs)
    if not synced.version.created and has_run:
        return outcome  # nothing new to learn from
    chosen = config or last_config(runs) or RunConfig()
    previous = [
        r for r in runs if r.status == "succeeded" and r.kind == "train" and r.version < number
    ]
    outcome.run = train(store, chosen, number, progress=progress).run
    if previous:
        outcome.previous = max(previous, key=lambda r: (r.version, r.id))
        from annotate2model.judging.compare import compare

        try:
            outcome.comparison = compare(
                store, runs=[outcome.previous.id, outcome.run.id], progress=progress
            )
        except A2MError as exc:
            outcome.comparison_note = exc.message
    else:
        outcome.comparison_note = "the first trained version: nothing to compare with yet."
    outcome.flags = flag_run(
        store,
        client,
        project_id,
        outcome.run.id,
        reasons=reasons,
        max_count=max_count,
        requeue=requeue,
        recheck_confirmed=recheck_confirmed,
        progress=progress,
    )
    return outcome
