"""Requests that arrive together run as one forward pass.

One thread per model runs the forward passes. Each request hands over its decoded images and waits;
while a pass runs, new requests queue up, and the next pass takes all of them (whole requests, up
to `max_batch` images). Nothing waits on purpose for company: a lone request runs at once, so a
single client sees one forward pass of latency, and many clients fill the batches by themselves.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from annotate2model.serve.models import ServedModel


@dataclass
class _Request:
    images: NDArray[np.uint8]
    future: Future[NDArray[np.float32]] = field(default_factory=Future)


@dataclass
class BatchStats:
    """What the batcher has done: forward passes, images, and the largest pass."""

    batches: int = 0
    images: int = 0
    largest: int = 0


class Batcher:
    """The forward passes of one model, on a thread of their own."""

    def __init__(self, model: ServedModel, max_batch: int) -> None:
        self.model = model
        self.max_batch = max(1, max_batch)
        self.stats = BatchStats()
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._running = True
            self._thread = threading.Thread(
                target=self._loop, name=f"a2m-batcher-{self.model.run_id}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        while self._queue:
            self._queue.popleft().future.set_exception(RuntimeError("the server is stopping"))

    def submit(self, images: NDArray[np.uint8]) -> Future[NDArray[np.float32]]:
        """Probabilities for `images` (N, crop, crop, 3), once a forward pass has run them."""
        request = _Request(images)
        with self._cond:
            if not self._running and self._thread is not None:
                raise RuntimeError("the server is stopping")
            self._queue.append(request)
            self._cond.notify()
        return request.future

    def _take(self) -> list[_Request]:
        """Whole queued requests, up to max_batch images (at least one request)."""
        taken = [self._queue.popleft()]
        count = len(taken[0].images)
        while self._queue and count + len(self._queue[0].images) <= self.max_batch:
            request = self._queue.popleft()
            count += len(request.images)
            taken.append(request)
        return taken

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._queue:
                    self._cond.wait()
                if not self._running:
                    return
                taken = self._take()
            self._run(taken)

    def _run(self, taken: list[_Request]) -> None:
        live = [r for r in taken if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            images = np.concatenate([r.images for r in live]) if len(live) > 1 else live[0].images
            probs = self._forward(images)
        except BaseException as exc:  # handed to the waiting requests, which answer 500
            for r in live:
                r.future.set_exception(exc)
            return
        start = 0
        for r in live:
            r.future.set_result(probs[start : start + len(r.images)])
            start += len(r.images)

    def _forward(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        # A request larger than max_batch runs in slices of max_batch.
        parts = [
            self.model.forward(images[i : i + self.max_batch])
            for i in range(0, len(images), self.max_batch)
        ]
        self.stats.batches += len(parts)
        self.stats.images += len(images)
        self.stats.largest = max(self.stats.largest, min(len(images), self.max_batch))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
