"""This process's copy of the catalog's active space (its backbone and active PCA).

The space changes only when a PCA is activated or the catalog switches backbone, yet every
search reads it. A search takes this process's copy, at most RECHECK_SECONDS old: another
process sees a switch that much later, the process that made it at once (`forget`). Until
then it searches the space it had, whose index and PCA it still holds: consistent, one
switch behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import transaction

T = TypeVar("T")

RECHECK_SECONDS = 1.0
_seen: tuple[float, Any] | None = None


def cached(read: Callable[[], T]) -> T:
    """The space as `read()` last returned it, read again once RECHECK_SECONDS have passed."""
    global _seen
    seen, now = _seen, time.monotonic()
    if seen is not None and now - seen[0] < RECHECK_SECONDS:
        return seen[1]  # type: ignore[no-any-return]
    space = read()
    _seen = (now, space)
    return space


def forget() -> None:
    """The space changed (or will, with the transaction): read it afresh, now and once the
    change is committed (a search in between read the old rows)."""
    clear()
    transaction.on_commit(clear)


def clear() -> None:
    """Drop this process's copy."""
    global _seen
    _seen = None
