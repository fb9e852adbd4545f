"""A small fixed-window rate limiter on the shared cache, per signed-in user or client
address, for the expensive requests (search by photo, upload, sign-in attempts)."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

View = Callable[..., HttpResponse]
_PERIODS = {"s": 1, "m": 60, "h": 3600}


def parse_rate(rate: str) -> tuple[int, int] | None:
    """ "30/m" → (30, 60); "" or "0" → None (no limit)."""
    rate = rate.strip()
    if not rate or rate == "0":
        return None
    count, _, period = rate.partition("/")
    return int(count), _PERIODS[period.strip()[:1] or "m"]


def client_key(request: HttpRequest) -> str:
    if request.user.is_authenticated:
        return f"user:{request.user.pk}"
    if settings.IMAGESEARCH["TRUST_X_FORWARDED_FOR"]:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")[0].strip()
        if forwarded:
            return f"ip:{forwarded}"
    return f"ip:{request.META.get('REMOTE_ADDR', '')}"


def rate_limit_hit(*, scope: str, key: str) -> int:
    """Count one request; returns the seconds to wait when over the limit, else 0."""
    limit = parse_rate(settings.IMAGESEARCH["RATE_LIMITS"].get(scope, ""))
    if limit is None:
        return 0
    count, period = limit
    window = int(time.time() // period)
    cache = caches[settings.IMAGESEARCH["RATE_LIMIT_CACHE"]]
    cache_key = f"ratelimit:{scope}:{key}:{window}"
    cache.add(cache_key, 0, timeout=period + 1)
    try:
        used = cache.incr(cache_key)
    except ValueError:  # expired between add and incr
        cache.set(cache_key, 1, timeout=period + 1)
        used = 1
    if used > count:
        return int(period - time.time() % period) + 1
    return 0


def rate_limited(scope: str, *, methods: tuple[str, ...] = ("POST",)) -> Callable[[View], View]:
    """Answer 429 with a readable page once a client exceeds IMAGESEARCH["RATE_LIMITS"][scope]."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method in methods:
                wait = rate_limit_hit(scope=scope, key=client_key(request))
                if wait:
                    response = render(request, "429.html", {"wait": wait}, status=429)
                    response["Retry-After"] = str(wait)
                    return response
            return view(request, *args, **kwargs)

        return wrapped

    return decorate
