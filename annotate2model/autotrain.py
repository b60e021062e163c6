"""`a2m serve RUN --auto-train`: Label Studio's events retrain, and a new run is served only when
it is not worse than the one served.

One worker thread beside the web server (not a second process: a promotion swaps the model the
server answers with, in memory, and a training killed with the server leaves its run to the next
start). An event (the ML backend's `/webhook`: Label Studio sends every event of the project
there) only wakes the worker and returns. The worker then, one pass at a time:

1. syncs the project (incrementally), retrying with backoff while Label Studio is down;
2. counts the labels new or changed since the served run's version, and the flags people settled
   since it was trained: when at least `every` labels (or any settled flag) wait, and the newest
   version was never tried, it trains that version with the last configuration (the latest
   succeeded training's, as `a2m loop` does);
3. judges the new run against the served one as `a2m compare` does, on the images neither trained
   on or chose its epoch on, and serves it unless it is worse: McNemar's test finds it worse
   (p < 0.05), or its accuracy falls below the served run's 95% interval;
4. after a promotion, refreshes the flags (remembered verdicts hold) and the "a2m: label next"
   order with the new run.

Every decision, a failed training included, goes into the ledger (`store/promotions.py`): `a2m
runs` and `/v1/model` show it, and a version with a decision is not trained again by itself.
Events that arrive while a pass runs are gathered into one more pass: a burst of events gives one
training. Nothing here stops the server: an error is logged, shown at `/v1/model`, and the old
model keeps answering.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from annotate2model.errors import A2MError, LabelStudioError
from annotate2model.settings import Settings

if TYPE_CHECKING:
    from annotate2model.judging.records import Comparison
    from annotate2model.labelstudio.client import LabelStudioClient
    from annotate2model.serve.models import ServedModel
    from annotate2model.store import Store
    from annotate2model.store.runs import RunRecord

log = logging.getLogger("annotate2model.serve.autotrain")

# The default threshold: 10% of the served version's images, at least 5 and at most 50 labels.
EVERY_SHARE = 0.10
EVERY_MIN = 5
EVERY_MAX = 50
# Events closer together than this are one burst: the pass starts once they pause.
SETTLE_SECONDS = 2.0
# A pass also runs this often without an event (a webhook Label Studio failed to send).
POLL_SECONDS = 600.0
# Seconds between tries while Label Studio cannot be reached (the last repeats).
RETRY_SECONDS = (2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
# Seconds between the log lines of a long step.
PROGRESS_SECONDS = 15.0
# McNemar's p below which a run that broke more images than it fixed is worse.
ALPHA = 0.05
# What a promotion flags again (as `a2m loop` does by default).
REFRESH_REASONS = ("misclassified", "label-issue")


def default_every(served_images: int) -> int:
    """Labels that start a training when `--every` is not given."""
    return max(EVERY_MIN, min(EVERY_MAX, math.ceil(EVERY_SHARE * served_images)))


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


def judge_promotion(comparison: Comparison, served: int, new: int) -> Verdict:
    """Whether run `new` may replace run `served`, from their comparison on the same images."""
    rows = {r.run: r for r in comparison.rows}
    old, now = rows[served], rows[new]
    pair = next(p for p in comparison.pairs if {p.before, p.after} == {served, new})
    fixed, broken = (pair.fixed, pair.broken) if pair.after == new else (pair.broken, pair.fixed)
    n = len(comparison.test_set.images)
    details = {
        "images": n,
        "judged_on": comparison.test_set.description,
        "accuracy": now.accuracy,
        "interval": [now.interval.low, now.interval.high],
        "served_accuracy": old.accuracy,
        "served_interval": [old.interval.low, old.interval.high],
        "fixed": fixed,
        "broken": broken,
        "p_value": pair.p_value,
    }
    figures = (
        f"accuracy {now.accuracy:.3f} [{now.interval.low:.3f}, {now.interval.high:.3f}] against "
        f"{old.accuracy:.3f} [{old.interval.low:.3f}, {old.interval.high:.3f}], {fixed} image(s) "
        f"fixed, {broken} broken, McNemar p = {pair.p_value:.3g}"
    )
    where = f"on {n} images neither run trained on"
    if broken > fixed and pair.p_value < ALPHA:
        return Verdict(False, f"worse than run {served} {where}: {figures}", details)
    if now.accuracy < old.interval.low:
        return Verdict(
            False,
            f"its accuracy is below run {served}'s 95% interval {where}: {figures}",
            details,
        )
    return Verdict(True, f"not worse than run {served} {where}: {figures}", details)


class _LogProgress:
    """Progress as log lines: a step as it starts and ends, and every note."""

    def __init__(self, trainer: AutoTrainer) -> None:
        self.trainer = trainer
        self.step = ""
        self.started = self.shown = 0.0
        self.done = 0.0
        self.total: float | None = None

    def begin(self, description: str, total: float | None = None) -> None:
        self.step, self.total, self.done = description, total, 0.0
        self.started = self.shown = time.monotonic()
        self.trainer.detail = description
        log.info("%s", description)

    def advance(self, amount: float = 1.0, status: str | None = None) -> None:
        self.done += amount
        now = time.monotonic()
        if now - self.shown >= PROGRESS_SECONDS:
            self.shown = now
            of = f" of {self.total:g}" if self.total else ""
            self.trainer.detail = f"{self.step}: {self.done:g}{of}"
            log.info("%s", self.trainer.detail)

    def end(self) -> None:
        if self.step:
            log.info("%s: done in %.1f s", self.step, time.monotonic() - self.started)
        self.step = ""

    def note(self, message: str) -> None:
        log.info("%s", message)


class AutoTrainer:
    """The worker behind `--auto-train` (see the module). Thread-safe: `notify` and `status` are
    called from the server's event loop, the passes run on the worker's thread."""

    def __init__(
        self,
        settings: Settings,
        project_id: int,
        served_run: int,
        *,
        load_model: Callable[[int], ServedModel],
        every: int | None = None,
        settle_seconds: float = SETTLE_SECONDS,
        poll_seconds: float = POLL_SECONDS,
        refresh_reasons: Sequence[str] = REFRESH_REASONS,
    ) -> None:
        self.settings = settings
        self.project_id = project_id
        self.served = served_run
        self.load_model = load_model
        self.every = every
        self.settle_seconds = settle_seconds
        self.poll_seconds = poll_seconds
        self.refresh_reasons = tuple(refresh_reasons)
        self.state = "starting"
        self.detail = ""
        self.events = 0
        self.passes = 0
        self.trainings = 0
        self.pending: int | None = None
        self.threshold: int | None = every
        self.last_event: datetime | None = None
        self.last_decision: dict[str, Any] | None = None
        self.last_error: str | None = None
        self._promote: Callable[[ServedModel], None] | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # The server's side.

    def notify(self, action: str, project: int | None) -> bool:
        if project is not None and project != self.project_id:
            return False
        self.events += 1
        self.last_event = datetime.now(UTC)
        log.debug("event %s", action or "(no action)")
        self._wake.set()
        return True

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "detail": self.detail,
            "project": self.project_id,
            "served_run": self.served,
            "every": self.threshold,
            "pending_labels": self.pending,
            "events": self.events,
            "passes": self.passes,
            "trainings": self.trainings,
            "last_event": self.last_event.isoformat() if self.last_event else None,
            "last_decision": self.last_decision,
            "last_error": self.last_error,
        }

    def start(self, promote: Callable[[ServedModel], None]) -> None:
        """Start the worker; its first pass runs at once (a training the last server was killed
        in, or labels that arrived while it was down, are seen without waiting for an event)."""
        self._promote = promote
        self._wake.set()
        self._thread = threading.Thread(target=self._loop, name="a2m-auto-train", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current step. A training under way is not waited for: its run is
        marked failed by the next command (and trained again by the next start if still due)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                log.warning(
                    "stopping during %s: the next start marks its run failed and trains again "
                    "if still due",
                    self.state,
                )

    # The worker's side.

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self.state = "idle"
            self.detail = ""
            self._wake.wait(self.poll_seconds)
            # A burst of events is one pass: wait until they pause.
            while self._wake.is_set() and not self._stopping.is_set():
                self._wake.clear()
                self._stopping.wait(self.settle_seconds)
            if self._stopping.is_set():
                return
            self.passes += 1
            try:
                self.run_pass()
            except Exception as exc:
                # Anything unforeseen is logged whole; the server and the served model stay.
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("auto-train pass failed", exc_info=exc)

    def run_pass(self) -> None:
        """One pass (see the module): sync, and train, judge and promote when due."""
        from annotate2model.labelstudio.connection import open_client
        from annotate2model.store import Store
        from annotate2model.store.runs import close_dead

        store = Store.open(self.settings)
        try:
            close_dead(store)
            with open_client(self.settings) as client:
                if not self._sync(store, client):
                    return
                self._maybe_train(store, client)
        finally:
            store.close()

    def _sync(self, store: Store, client: LabelStudioClient) -> bool:
        from annotate2model.labelstudio.connection import local_files
        from annotate2model.labelstudio.sync import sync_project

        tries = 0
        while not self._stopping.is_set():
            self.state = "syncing"
            try:
                result = sync_project(
                    store,
                    client,
                    self.project_id,
                    progress=_LogProgress(self),
                    local=local_files(self.settings),
                )
            except LabelStudioError as exc:
                wait = RETRY_SECONDS[min(tries, len(RETRY_SECONDS) - 1)]
                tries += 1
                self.last_error = f"sync: {exc.message}"
                self.state = "waiting for Label Studio"
                self.detail = f"try {tries} failed; next in {wait:g} s"
                log.warning("sync failed (try %d, next in %g s): %s", tries, wait, exc.message)
                if self._stopping.wait(wait):
                    return False
                continue
            if tries:
                self.last_error = None
                log.info("Label Studio answers again")
            if result.version is not None and result.version.created:
                log.info("sync made version %d", result.version.version.number)
            return True
        return False

    def _maybe_train(self, store: Store, client: LabelStudioClient) -> None:
        from annotate2model.loop import last_config
        from annotate2model.store import promotions
        from annotate2model.store.flags import settled_since
        from annotate2model.store.runs import get_run, list_runs
        from annotate2model.store.versions import diff_versions, get_version, latest_version

        with store.read() as session:
            served = get_run(session, self.served)
            newest = latest_version(session)
            runs = list_runs(session)
            tried = {d.version for d in promotions.list_decisions(session)}
            if newest is None or newest.number == served.version:
                self.pending = 0
                return
            diff = diff_versions(session, served.version, newest.number)
            served_images = get_version(session, served.version).item_count
            settled = settled_since(session, self.project_id, served.started_at)
        self.pending = len(diff.added) + len(diff.relabeled) + len(diff.removed)
        self.threshold = self.every or default_every(served_images)
        if newest.number in tried:
            log.info("version %d was judged already: waiting for new labels", newest.number)
            return
        if self.pending < self.threshold and not settled:
            log.info(
                "%d label(s) new or changed since run %d's version %d: training at %d",
                self.pending,
                served.id,
                served.version,
                self.threshold,
            )
            return
        config = last_config(runs)
        if config is None:
            from annotate2model.training.config import RunConfig

            config = RunConfig()
        self._train_and_judge(store, client, served, newest.number, config, settled)

    def _train_and_judge(
        self,
        store: Store,
        client: LabelStudioClient,
        served: RunRecord,
        version: int,
        config: Any,
        settled: int,
    ) -> None:
        from annotate2model.judging.compare import compare
        from annotate2model.store.runs import list_runs
        from annotate2model.training.runs.runner import train

        why = f"{self.pending} label(s) new or changed" + (
            f", {settled} flag(s) settled" if settled else ""
        )
        log.info("training version %d (%s) with the last configuration", version, why)
        self.state = "training"
        self.trainings += 1
        with store.read() as session:
            known = {r.id for r in list_runs(session, version)}
        try:
            run = train(store, config, version, progress=_LogProgress(self)).run
        except Exception as exc:
            message = exc.message if isinstance(exc, A2MError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, A2MError):
                log.error("training version %d failed", version, exc_info=exc)
            with store.read() as session:
                failed = [r.id for r in list_runs(session, version) if r.id not in known]
            self.last_error = f"training version {version} failed: {message}"
            self._decide(
                store,
                version,
                failed[-1] if failed else None,
                served.id,
                Verdict(False, f"the training failed: {message}"),
            )
            log.error("%s; run %d stays served", self.last_error, served.id)
            return
        self.state = "judging"
        try:
            comparison = compare(store, runs=[served.id, run.id], progress=_LogProgress(self))
            verdict = judge_promotion(comparison, served.id, run.id)
        except A2MError as exc:
            verdict = Verdict(
                False, f"it could not be judged against run {served.id}: {exc.message}"
            )
        self._decide(store, version, run.id, served.id, verdict)
        if not verdict.promoted:
            log.warning("run %d is kept, not served: %s", run.id, verdict.reason)
            return
        self.state = "promoting"
        model = self.load_model(run.id)
        if self._promote is not None:
            self._promote(model)
        self.served = run.id
        self.last_error = None
        log.info(
            "run %d is served now (model version %s): %s",
            run.id,
            model.model_version,
            verdict.reason,
        )
        self._refresh(store, client, run.id)

    def _decide(
        self, store: Store, version: int, run: int | None, served: int, verdict: Verdict
    ) -> None:
        from annotate2model.store import promotions

        with store.write() as session:
            record = promotions.record_decision(
                session,
                version=version,
                run=run,
                served=served,
                promoted=verdict.promoted,
                reason=verdict.reason,
                details=verdict.details,
            )
        self.last_decision = {
            "version": record.version,
            "run": record.run,
            "served_run": record.served,
            "promoted": record.promoted,
            "reason": record.reason,
            "details": record.details,
            "decided_at": record.decided_at.isoformat(),
        }

    def _refresh(self, store: Store, client: LabelStudioClient, run: int) -> None:
        """The flags and the label-next order, from the run just promoted. A failure here is
        logged: the promotion stands."""
        from annotate2model.review.flagging import flag_run
        from annotate2model.review.label_next import label_next

        self.state = "refreshing flags"
        try:
            flagged = flag_run(
                store,
                client,
                self.project_id,
                run,
                reasons=self.refresh_reasons,
                progress=_LogProgress(self),
            )
            log.info(
                "flags of run %d: %d task(s) in review, %d kept back (confirmed before)",
                run,
                flagged.flagged,
                flagged.kept_back,
            )
        except A2MError as exc:
            self.last_error = f"flags of run {run}: {exc.message}"
            log.warning("%s", self.last_error)
        self.state = "refreshing the label-next order"
        try:
            ordered = label_next(store, client, self.project_id, run, progress=_LogProgress(self))
            log.info("label-next order of run %d: %d task(s)", run, ordered.ordered)
        except A2MError as exc:
            self.last_error = f"label-next order of run {run}: {exc.message}"
            log.warning("%s", self.last_error)
