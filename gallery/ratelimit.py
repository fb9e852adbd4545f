"""One throttling policy for the pages and the JSON API, counted on the shared cache (Redis
whenever one is configured or the broker is Redis), per signed-in user, else client address.

- A fixed window per scope (`search`, `upload`, `login`): requests per period.
- A cap on requests in flight per client for the expensive scopes (a search embeds a photo,
  an upload stores and queues one): extra ones are refused at once. The counter has a TTL,
  so a request that died without releasing its slot frees it later.
- Sign-in back-off per account (the username tried, existing or not) and per address: after
  a few failed passwords each further failure doubles the wait, up to a cap; a successful
  sign-in clears the account's failures. Failures are counted from Django's
  `user_login_failed` signal, so every password check that fails counts, whichever door.

Pages (`rate_limited`, `sign_in_limited`) render templates/429.html, the API (gallery/api.py)
answers its JSON error; both carry Retry-After and the same stable code from `Limited`.
If the counter store is unreachable, requests go through and a warning is logged.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypedDict

from django.conf import settings
from django.core.cache import BaseCache, caches
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

View = Callable[..., HttpResponse]
_PERIODS = {"s": 1, "m": 60, "h": 3600}


class _LimitsOffEnv(TypedDict):
    IMAGESEARCH_RATE_SEARCH: str
    IMAGESEARCH_RATE_UPLOAD: str
    IMAGESEARCH_RATE_LOGIN: str
    IMAGESEARCH_IN_FLIGHT_SEARCH: str
    IMAGESEARCH_IN_FLIGHT_UPLOAD: str


# The environment that turns every per-client limit off, for capacity runs (load test, benchmarks).
LIMITS_OFF_ENV: _LimitsOffEnv = {
    "IMAGESEARCH_RATE_SEARCH": "0",
    "IMAGESEARCH_RATE_UPLOAD": "0",
    "IMAGESEARCH_RATE_LOGIN": "0",
    "IMAGESEARCH_IN_FLIGHT_SEARCH": "0",
    "IMAGESEARCH_IN_FLIGHT_UPLOAD": "0",
}

# Stable refusal codes (the API's error code; the 429 page words each one).
RATE_LIMITED = "rate_limited"
TOO_MANY_IN_FLIGHT = "too_many_in_flight"
SIGN_IN_LOCKED = "sign_in_locked"


class Limited(Exception):
    """A refused request: a stable code and the seconds to wait before trying again."""

    def __init__(self, code: str, *, wait: int):
        super().__init__(code)
        self.code = code
        self.wait = max(1, wait)


def parse_rate(rate: str) -> tuple[int, int] | None:
    """ "30/m" → (30, 60); "" or "0" → None (no limit)."""
    rate = rate.strip()
    if not rate or rate == "0":
        return None
    count, _, period = rate.partition("/")
    return int(count), _PERIODS[period.strip()[:1] or "m"]


def client_key(request: HttpRequest, *, by_user: bool = True) -> str:
    """The client a request counts against: the signed-in user, else the address (the only
    place that decides the address). `by_user=False`: always the address."""
    if by_user and request.user.is_authenticated:
        return f"user:{request.user.pk}"
    if settings.IMAGESEARCH["TRUST_X_FORWARDED_FOR"]:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")[0].strip()
        if forwarded:
            return f"ip:{forwarded}"
    return f"ip:{request.META.get('REMOTE_ADDR', '')}"


# ---------------------------------------------------------------- the counter store


# What an unreachable counter store raises (Redis down, its socket gone).
STORE_ERRORS = (RedisError, OSError)


def _store() -> BaseCache:
    return caches[settings.IMAGESEARCH["RATE_LIMIT_CACHE"]]


def _count(key: str, *, timeout: int, amount: int = 1) -> int:
    """Add `amount` to a counter that lives `timeout` seconds from its first count; atomic on Redis."""
    store = _store()
    store.add(key, 0, timeout=timeout)
    try:
        return int(store.incr(key, amount))
    except ValueError:  # expired between add and incr
        store.set(key, amount, timeout=timeout)
        return amount


def _unavailable(what: str) -> None:
    log.warning("rate-limit store unavailable (%s): request let through", what, exc_info=True)


# ---------------------------------------------------------------- request windows


def rate_limit_hit(*, scope: str, key: str) -> int:
    """Count one request; returns the seconds to wait when over the limit, else 0."""
    limit = parse_rate(settings.IMAGESEARCH["RATE_LIMITS"].get(scope, ""))
    if limit is None:
        return 0
    count, period = limit
    now = time.time()
    window = int(now // period)
    try:
        used = _count(f"ratelimit:{scope}:{key}:{window}", timeout=period + 1)
    except STORE_ERRORS:
        _unavailable(scope)
        return 0
    if used > count:
        return int(period - now % period) + 1
    return 0


# ---------------------------------------------------------------- requests in flight


def _in_flight_take(*, scope: str, key: str) -> Callable[[], None]:
    """Take one of the client's in-flight slots for `scope`; returns its release."""
    cap = int(settings.IMAGESEARCH["IN_FLIGHT"].get(scope, 0))
    if cap <= 0:
        return _nothing
    cache_key = f"inflight:{scope}:{key}"
    try:
        taken = _count(cache_key, timeout=int(settings.IMAGESEARCH["IN_FLIGHT_TTL_SECONDS"]))
    except STORE_ERRORS:
        _unavailable(f"{scope} in flight")
        return _nothing

    def release() -> None:
        try:
            _store().decr(cache_key)
        except ValueError:  # the counter expired meanwhile: nothing to give back
            pass
        except STORE_ERRORS:
            _unavailable(f"{scope} in flight")

    if taken > cap:
        release()
        raise Limited(TOO_MANY_IN_FLIGHT, wait=1)
    return release


def _nothing() -> None:
    return None


def admit(request: HttpRequest, *, scope: str) -> Callable[[], None]:
    """Count an expensive request against its scope's window and take an in-flight slot.
    Raises `Limited`; otherwise returns the release to call when the request is done."""
    key = client_key(request)
    wait = rate_limit_hit(scope=scope, key=key)
    if wait:
        raise Limited(RATE_LIMITED, wait=wait)
    return _in_flight_take(scope=scope, key=key)


# ---------------------------------------------------------------- sign-in


def _account(username: str) -> str:
    """The counter name of the account tried: normalised, hashed (never stores what was typed)."""
    return "account:" + hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]


def _sign_in_keys(request: HttpRequest, username: str) -> list[tuple[str, int]]:
    """The (key, failures allowed before back-off) pairs one attempt counts against."""
    policy = settings.IMAGESEARCH["SIGN_IN"]
    keys = [(client_key(request, by_user=False), int(policy["FREE_FAILURES_PER_ADDRESS"]))]
    if username.strip():
        keys.append((_account(username), int(policy["FREE_FAILURES_PER_ACCOUNT"])))
    return keys


def sign_in_check(request: HttpRequest, *, username: str) -> None:
    """Before a password is checked: refuse while the address or the account is backing off,
    then count the attempt against both windows. Raises `Limited`.

    The same answer for an account that does not exist: its failures lock it alike."""
    keys = [key for key, _ in _sign_in_keys(request, username)]
    try:
        locks = _store().get_many([f"signin:lock:{key}" for key in keys])
    except STORE_ERRORS:
        _unavailable("sign-in")
        locks = {}
    now = time.time()
    wait = max([math.ceil(float(until) - now) for until in locks.values()] + [0])
    if wait > 0:
        raise Limited(SIGN_IN_LOCKED, wait=wait)
    for key in keys:
        wait = rate_limit_hit(scope="login", key=key)
        if wait:
            raise Limited(RATE_LIMITED, wait=wait)


def backoff_seconds(*, failures: int, free: int) -> int:
    """0 for the first `free` failures, then base, 2×base, 4×base … up to the cap."""
    policy = settings.IMAGESEARCH["SIGN_IN"]
    base, cap = int(policy["BACKOFF_SECONDS"]), int(policy["BACKOFF_MAX_SECONDS"])
    if failures <= free or base <= 0:
        return 0
    return int(min(cap, base * 2 ** min(failures - free - 1, 32)))


def sign_in_failed(request: HttpRequest, *, username: str) -> None:
    """A wrong password (or unknown account): count it for the address and the account."""
    policy = settings.IMAGESEARCH["SIGN_IN"]
    if int(policy["BACKOFF_SECONDS"]) <= 0:
        return
    memory = int(policy["FAILURE_MEMORY_SECONDS"])
    try:
        store = _store()
        for key, free in _sign_in_keys(request, username):
            failures = _count(f"signin:failures:{key}", timeout=memory)
            store.touch(f"signin:failures:{key}", memory)  # forgotten `memory` after the last one
            lock = backoff_seconds(failures=failures, free=free)
            if lock:
                store.set(f"signin:lock:{key}", time.time() + lock, timeout=lock + 1)
    except STORE_ERRORS:
        _unavailable("sign-in")


def sign_in_succeeded(*, username: str) -> None:
    """The right password clears the account's failures (not the address's: one good account
    must not reset the count of an address guessing at others)."""
    if not username.strip():
        return
    key = _account(username)
    try:
        _store().delete_many([f"signin:failures:{key}", f"signin:lock:{key}"])
    except STORE_ERRORS:
        _unavailable("sign-in")


def _on_login_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any) -> None:
    if request is not None:
        sign_in_failed(request, username=str(credentials.get("username", "")))


def _on_logged_in(sender: Any, request: HttpRequest | None, user: Any, **_: Any) -> None:
    sign_in_succeeded(username=user.get_username())


def register_signal_handlers() -> None:
    """Every failed password check counts, whichever door it came through (called from apps.ready)."""
    from django.contrib.auth.signals import user_logged_in, user_login_failed

    user_login_failed.connect(_on_login_failed, dispatch_uid="gallery.ratelimit.login_failed")
    user_logged_in.connect(_on_logged_in, dispatch_uid="gallery.ratelimit.logged_in")


# ---------------------------------------------------------------- pages


def too_many_requests(request: HttpRequest, refusal: Limited) -> HttpResponse:
    """The 429 page: what happened and when to retry, in words and in Retry-After."""
    response = render(request, "429.html", {"wait": refusal.wait, "code": refusal.code}, status=429)
    response["Retry-After"] = str(refusal.wait)
    return response


def rate_limited(scope: str, *, methods: tuple[str, ...] = ("POST",)) -> Callable[[View], View]:
    """Answer 429 once a client exceeds IMAGESEARCH["RATE_LIMITS"][scope] or already has
    IMAGESEARCH["IN_FLIGHT"][scope] requests running."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return view(request, *args, **kwargs)
            try:
                release = admit(request, scope=scope)
            except Limited as refusal:
                return too_many_requests(request, refusal)
            try:
                return view(request, *args, **kwargs)
            finally:
                release()

        return wrapped

    return decorate


def sign_in_limited(view: View) -> View:
    """A sign-in page (the gallery's, the admin's): per-address and per-account windows and back-off."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST":
            try:
                sign_in_check(request, username=request.POST.get("username", ""))
            except Limited as refusal:
                return too_many_requests(request, refusal)
        return view(request, *args, **kwargs)

    return wrapped
