"""Query photos that arrive together are embedded together.

One forward pass over 8 photos costs far less than 8 passes over one (the network's
weights are read once, the matrix products are larger), so a web process under load
answers more searches per second when concurrent requests share a pass.

No background thread: the first caller that finds no pass running becomes the leader,
takes every photo waiting (up to `max_batch`), runs the pass and hands each caller its
row; callers arriving meanwhile wait for the next pass, which the first of them leads.
An idle process embeds a lone photo at once. Only under load (the previous pass held
several photos) does a leader wait up to `window` seconds for more to arrive, since then
more are on their way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class _Job:
    photo: np.ndarray
    done: bool = False
    result: np.ndarray | None = None
    error: BaseException | None = None


class MicroBatcher:
    """Runs `forward((n, h, w, 3) uint8) -> (n, d)` over photos submitted by many threads."""

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 16, window: float = 0.004):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._forward = forward
        self.max_batch = max_batch
        self.window = max(0.0, window)
        self._cond = threading.Condition()
        self._waiting: list[_Job] = []
        self._running = False
        self._last_batch = 0
        # Counters for tests and metrics: passes run and photos embedded.
        self.passes = 0
        self.photos = 0

    def __call__(self, photo: np.ndarray) -> np.ndarray:
        """The forward pass's row for one preprocessed photo (h, w, 3); raises what the
        pass raised."""
        job = _Job(np.asarray(photo))
        with self._cond:
            self._waiting.append(job)
            while not job.done:
                if not self._running and self._waiting and self._waiting[0] is job:
                    self._lead()
                else:
                    self._cond.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _lead(self) -> None:
        """Called holding the lock: run one pass over the photos waiting."""
        self._running = True
        try:
            if self.window and self._last_batch > 1 and len(self._waiting) < self.max_batch:
                deadline = time.monotonic() + self.window
                while len(self._waiting) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch = self._waiting[: self.max_batch]
            del self._waiting[: len(batch)]
            self._cond.release()
            try:
                try:
                    rows = np.asarray(self._forward(np.stack([job.photo for job in batch])))
                    if len(rows) != len(batch):
                        raise RuntimeError(f"the forward pass returned {len(rows)} rows for {len(batch)} photos")
                    for job, row in zip(batch, rows, strict=True):
                        job.result = row
                except BaseException as exc:  # every caller of the pass gets its error
                    for job in batch:
                        job.error = exc
            finally:
                self._cond.acquire()
            for job in batch:
                job.done = True
            self._last_batch = len(batch)
            self.passes += 1
            self.photos += len(batch)
        finally:
            self._running = False
            self._cond.notify_all()
