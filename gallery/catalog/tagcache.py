"""The tags in use, kept in the shared cache.

Every gallery and search page lists the tags carried by published images, but they change
only when an editor tags, untags, publishes, hides, renames or deletes. The list is cached
under a version that each such change moves on (`changed`), so no page shows a stale list
and nothing has to find and delete old entries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.core.cache import cache
from django.db import transaction

log = logging.getLogger(__name__)

_VERSION_KEY = "catalog:tags-in-use:version"
# A cached list outlives no change; this only bounds how long an unused one stays.
SECONDS = 3600


# This process's copy of the last list it saw, with its key: while the version stays, a page
# costs one read of the shared cache (the version), not two.
_last: tuple[str, list[str]] = ("", [])


def cached(compute: Callable[[], list[str]]) -> list[str]:
    """The tags in use: from this process's copy or the shared cache while the version has
    not moved, else `compute()`d and cached; computed every time when the cache cannot be
    reached."""
    global _last
    try:
        version = cache.get(_VERSION_KEY)
        if version is None:  # a fresh cache (or one restarted): a version never used before
            cache.add(_VERSION_KEY, time.time_ns(), None)
            version = cache.get(_VERSION_KEY)
        key = f"catalog:tags-in-use:{version}"
        seen_key, seen = _last
        if seen_key == key:
            return list(seen)
        tags = cache.get(key)
    except Exception as exc:  # the cache is unreachable: the database answers
        log.debug("tags in use read from the database (cache: %s)", exc)
        return compute()
    if tags is None:
        tags = compute()
        try:
            cache.set(key, tags, SECONDS)
        except Exception as exc:
            log.debug("tags in use not cached (%s)", exc)
    _last = (key, list(tags))
    return list(tags)


def changed() -> None:
    """Tags or published images changed: the next page reads the tags in use afresh. Moves
    the version now and again once the change is committed (a page that read the old rows
    in between cached them under the version moved first)."""
    _move()
    transaction.on_commit(_move)


def _move() -> None:
    try:
        cache.set(_VERSION_KEY, time.time_ns(), None)
    except Exception as exc:  # unreachable: the cached list expires on its own
        log.warning("could not mark the tags in use as changed (%s)", exc)
