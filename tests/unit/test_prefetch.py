"""The bounded prefetch behind bulk imports: order kept, never far ahead, nothing leaked."""

from __future__ import annotations

import threading
import time

import pytest

from gallery.catalog.pipeline import StageClock
from gallery.catalog.prefetch import Prefetch


def test_results_come_in_the_items_order_in_batches_with_a_smaller_first_one() -> None:
    def work(i: int) -> int:
        time.sleep(0.001 * (i % 3))  # finish out of order
        return i * i

    with Prefetch(range(20), work, threads=3, depth=5) as prefetch:
        batches = list(prefetch.batches(8, first=3))
    assert [len(b) for b in batches] == [3, 8, 8, 1]
    assert [x for b in batches for x in b] == [i * i for i in range(20)]


def test_it_never_prepares_more_than_depth_items_ahead_of_the_caller() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        return i

    taken = 0
    with Prefetch(range(100), work, threads=4, depth=6) as prefetch:
        for i in prefetch:
            time.sleep(0.002)  # a slow caller: the threads could run far ahead if nothing held them
            with lock:
                assert len(started) <= taken + 6 + 1
            taken += 1
            assert i == taken - 1
    assert taken == 100


def test_an_error_of_one_item_is_raised_in_its_place_and_what_was_prepared_ahead_is_discarded() -> None:
    discarded: list[int] = []
    clock = StageClock()

    def work(i: int) -> int:
        if i == 4:
            raise ValueError("item 4 is bad")
        return i

    got: list[int] = []
    prefetch = Prefetch(range(10), work, threads=2, depth=4, discard=discarded.append, clock=clock)
    with pytest.raises(ValueError, match="item 4"), prefetch:
        for batch in prefetch.batches(3):
            got.extend(batch)
    assert got == [0, 1, 2]  # the first batch was handed over
    # 3 was gathered for the next batch and never handed over; 5-8 were prepared ahead.
    assert 3 in discarded and set(discarded) <= {3, 5, 6, 7, 8} and not set(discarded) & set(got)
    assert "waiting for prepared photos" in clock.seconds


def test_leaving_early_discards_what_was_prepared_and_not_taken() -> None:
    prepared: list[int] = []
    discarded: list[int] = []

    def work(i: int) -> int:
        prepared.append(i)
        return i

    with Prefetch(range(50), work, threads=2, depth=5, discard=discarded.append) as prefetch:
        for i in prefetch:
            if i == 10:
                break
    # What had not started was cancelled; everything prepared and not taken was discarded.
    assert sorted(discarded) == sorted(set(prepared) - set(range(11))) and set(discarded) <= set(range(11, 16))
