"""Links the pages draw on every request, reversed once per process.

Reversing a URL took about as long as drawing a result card. A link depends only on the
view's name, its arguments, the URL prefix and the URL configuration, so it is kept for the
4,096 most recently drawn.
"""

from __future__ import annotations

import functools

from django.urls import get_script_prefix, get_urlconf, reverse


def reverse_once(name: str, *args: object) -> str:
    """`reverse(name, args=args)`, from this process's copy once it has been drawn."""
    return _reversed(get_script_prefix(), get_urlconf(), name, args)


@functools.lru_cache(maxsize=4096)
def _reversed(_prefix: str, _urlconf: str | None, name: str, args: tuple[object, ...]) -> str:
    return reverse(name, args=list(args))
