"""The run ledger's one writer: runs, their status, history, metrics and prediction rows.

Trainers compute and return; only this module writes what they found (under multi-process
training, only rank 0 will call it). A ledger write is not cut in half by Ctrl-C: the signal is
held back until the write's transaction has finished, then acted on.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from annotate2model.errors import A2MError
from annotate2model.store import Store
from annotate2model.store import runs as store_runs
from annotate2model.store.records import VersionItemRecord
from annotate2model.store.runs import EvaluationRecord, PredictionRecord, RunRecord
from annotate2model.training.runs.metrics import RunMetrics

INTERRUPTED = "interrupted by the user (Ctrl-C)"


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the body runs; deliver them when it is done.

    A KeyboardInterrupt raised inside a database transaction can leave its connection holding
    SQLite's write lock, and the next write then waits out the whole busy timeout.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(received):
            sig = signal.Signals(signum)
            if previous[sig] not in (signal.SIG_IGN, None):
                signal.raise_signal(sig)


@dataclass
class OpenRun:
    """A run being trained: its row, and the history recorded so far."""

    record: RunRecord
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> int:
        return self.record.id


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store

    @contextlib.contextmanager
    def running(
        self, version: int, kind: str, config: dict[str, Any], device: str
    ) -> Iterator[OpenRun]:
        """Create the run row; close it as interrupted or failed if the body does not finish it
        (a typed error's message, or the exception's type and text, is kept as the reason)."""
        created: list[OpenRun] = []
        lock = None
        try:
            # A signal held during the creating write is delivered as it ends: the row exists
            # by then, and is closed below like any other interrupted run.
            with signals_held(), self.store.write() as session:
                created.append(
                    OpenRun(store_runs.create_run(session, version, kind, config, device))
                )
                # Held until the run is closed: other machines sharing the store see it alive.
                lock = store_runs.hold_run_lock(session, created[0].id)
            yield created[0]
        except KeyboardInterrupt as exc:
            if created:
                self._close(created[0], "interrupted", str(exc) or INTERRUPTED)
            raise
        except BaseException as exc:
            if created:
                reason = str(exc) if isinstance(exc, A2MError) else f"{type(exc).__name__}: {exc}"
                self._close(created[0], "failed", reason)
            raise
        finally:
            if created:
                store_runs.release_run_lock(lock, created[0].id)

    def _close(self, run: OpenRun, status: str, reason: str) -> None:
        with signals_held(), self.store.write() as session:
            row = store_runs.get_run(session, run.id)
            if row.status == "running":
                store_runs.finish_run(session, run.id, status, history=run.history, error=reason)

    def record_history(self, run: OpenRun, history: list[dict[str, Any]]) -> None:
        run.history = list(history)
        with signals_held(), self.store.write() as session:
            store_runs.record_history(session, run.id, run.history)

    def succeed(
        self,
        run: OpenRun,
        metrics: RunMetrics,
        predictions: Sequence[PredictionRecord],
        artifact_dir: str,
        images_per_second: float | None = None,
    ) -> RunRecord:
        """Close the run as succeeded, with its metrics and per-image predictions, in one write."""
        with signals_held(), self.store.write() as session:
            store_runs.write_predictions(session, run.id, run.record.version, predictions)
            return store_runs.finish_run(
                session,
                run.id,
                "succeeded",
                metrics=metrics.to_dict(),
                history=run.history,
                images_per_second=images_per_second,
                artifact_dir=artifact_dir,
            )

    def write_predictions(
        self, run_id: int, version: int, predictions: Sequence[PredictionRecord]
    ) -> None:
        """A finished run judged again (on another version or split): its rows replace the old."""
        with signals_held(), self.store.write() as session:
            store_runs.write_predictions(session, run_id, version, predictions)

    def add_predictions(
        self, run_id: int, version: int, predictions: Sequence[PredictionRecord]
    ) -> None:
        """Rows for some images of a version (a comparison's common test images); others stay."""
        with signals_held(), self.store.write() as session:
            store_runs.add_predictions(session, run_id, version, predictions)

    def record_evaluation(
        self,
        run_id: int,
        version: int,
        split: str,
        shas: Sequence[str],
        metrics: dict[str, Any],
        source: str,
    ) -> EvaluationRecord:
        """Keep a judgement: which run, on which images (by hash), with what result, when."""
        with signals_held(), self.store.write() as session:
            return store_runs.record_evaluation(
                session, run_id, version, split, shas, metrics, source
            )

    def delete_unfinished(self, runs_dir: Path) -> list[int]:
        """Delete failed and interrupted runs, their rows and whatever folder they left."""
        with signals_held(), self.store.write() as session:
            gone = store_runs.delete_unfinished(session)
        for run in gone:
            folder = runs_dir / str(run.id)
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
        return [run.id for run in gone]

    def close_dead_runs(self) -> list[int]:
        """Close `running` rows whose process is gone (store/runs.py's dead_runs says which)."""
        with signals_held():
            return store_runs.close_dead(self.store)


def prediction_rows(
    items: Sequence[VersionItemRecord], probs: NDArray[Any], labels: list[str]
) -> list[PredictionRecord]:
    """One ledger row per judged image: its label, the predicted label and every probability."""
    rows = []
    for item, p in zip(items, probs, strict=True):
        best = int(np.argmax(p))
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
