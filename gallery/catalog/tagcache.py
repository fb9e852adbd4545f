"""The tags in use, kept in the shared cache.

Every gallery and search page lists the tags carried by published images, but they change
only when an editor tags, untags, publishes, hides, renames or deletes. The list is cached
under a version that each such change moves on (`changed`), so no page shows a stale list
and nothing has to find and delete old entries.
"""

from __future__ import annotations

import logging
import time

from django.core.cache import cache
from django.db import transaction

log = logging.getLogger(__name__)

_VERSION_KEY = "catalog:tags-in-use:version"
# A cached list outlives no change; this only bounds how long an unused one stays.
SECONDS = 3600


def key() -> str:
    """The cache key of the current list (raises when the cache is unreachable)."""
    return f"catalog:tags-in-use:{cache.get(_VERSION_KEY, 0)}"


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
