"""A bounded prefetch: threads prepare the next items while the caller works on the current ones.

A bulk import uses it to read, decode and picture the next photos and write their files
while the network embeds the current batch: Pillow and TensorFlow both release the GIL,
so the two overlap. At most `depth` items are prepared ahead, so memory stays bounded
however many items there are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Generic, TypeVar

from gallery.catalog.pipeline import StageClock, clock_stage

T = TypeVar("T")
R = TypeVar("R")


class Prefetch(Generic[T, R]):
    """`work(item)` for every item, run by `threads` threads at most `depth` items ahead of
    the caller, yielded in the items' order; an exception of `work` is raised where its
    result would have been yielded. Use it as a context manager: on leaving, what was
    prepared and never yielded goes to `discard` (a prepared photo's files are deleted)."""

    def __init__(
        self,
        items: Iterable[T],
        work: Callable[[T], R],
        *,
        threads: int,
        depth: int,
        discard: Callable[[R], None] | None = None,
        clock: StageClock | None = None,
    ) -> None:
        self._items = iter(items)
        self._work = work
        self._threads = max(1, threads)
        self._depth = max(1, depth)
        self._discard = discard
        self._clock = clock
        self._pending: deque[Future[R]] = deque()
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> Prefetch[T, R]:
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="prefetch")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for future in self._pending:
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        while self._pending:
            future = self._pending.popleft()
            if self._discard is not None and not future.cancelled() and future.exception() is None:
                self._discard(future.result())

    def _top_up(self) -> None:
        assert self._pool is not None, "use Prefetch as a context manager"
        while len(self._pending) < self._depth:
            try:
                item = next(self._items)
            except StopIteration:
                return
            self._pending.append(self._pool.submit(self._work, item))

    def __iter__(self) -> Iterator[R]:
        self._top_up()
        while self._pending:
            future = self._pending[0]
            # The caller's wait for the next prepared item: the part that did not overlap.
            with clock_stage(self._clock, "waiting for prepared photos"):
                failed = future.exception() is not None
            self._pending.popleft()
            if not failed:
                self._top_up()
            yield future.result()

    def batches(self, size: int, *, first: int | None = None) -> Iterator[list[R]]:
        """The results in lists of `size` (the last one shorter), the first one of `first`:
        a smaller first batch gets the caller going before a whole batch is prepared."""
        batch: list[R] = []
        want = min(first or size, size)
        try:
            for result in self:
                batch.append(result)
                if len(batch) >= want:
                    ready, batch, want = batch, [], size
                    yield ready
        except BaseException:
            if self._discard is not None:  # gathered, never handed over
                for result in batch:
                    self._discard(result)
            raise
        if batch:
            yield batch
