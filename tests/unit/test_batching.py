"""Concurrent query photos share forward passes and each caller gets its own row."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gallery.vision.batching import MicroBatcher


def _slow_forward(sizes: list[int]):  # type: ignore[no-untyped-def]
    def forward(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        time.sleep(0.03)  # a pass long enough for other callers to queue behind it
        return batch.reshape(len(batch), -1).astype(np.float32).sum(axis=1, keepdims=True) * np.ones((1, 3), np.float32)

    return forward


def _photo(i: int) -> np.ndarray:
    return np.full((4, 4, 3), i, dtype=np.uint8)


def test_a_lone_photo_is_embedded_at_once() -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(_slow_forward(sizes), window=0.5)
    started = time.perf_counter()
    row = batcher(_photo(2))
    assert time.perf_counter() - started < 0.4  # no window wait when idle
    assert row.tolist() == [96.0, 96.0, 96.0] and sizes == [1]


def test_concurrent_callers_share_passes_and_get_their_own_rows() -> None:
    sizes: list[int] = []
    batcher = MicroBatcher(_slow_forward(sizes), max_batch=8, window=0.005)
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(40)

    def search(i: int) -> None:
        barrier.wait()
        results[i] = batcher(_photo(i))

    threads = [threading.Thread(target=search, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == list(range(40))
    for i, row in results.items():
        assert row.tolist() == [48.0 * i] * 3
    assert sum(sizes) == 40 and max(sizes) <= 8
    assert len(sizes) < 40 / 2  # shared passes, not one per photo
    assert batcher.passes == len(sizes) and batcher.photos == 40


def test_a_failing_pass_fails_its_callers_only_and_the_next_pass_runs() -> None:
    calls = [0]

    def forward(batch: np.ndarray) -> np.ndarray:
        calls[0] += 1
        if calls[0] == 1:
            raise MemoryError("out of memory")
        return np.ones((len(batch), 2), np.float32)

    batcher = MicroBatcher(forward)
    with pytest.raises(MemoryError, match="out of memory"):
        batcher(_photo(1))
    assert batcher(_photo(1)).tolist() == [1.0, 1.0]

    wrong = MicroBatcher(lambda batch: np.ones((len(batch) + 1, 2), np.float32))
    with pytest.raises(RuntimeError, match="rows"):
        wrong(_photo(1))
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(forward, max_batch=0)
