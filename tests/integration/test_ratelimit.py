"""One throttling policy for pages and API: shared windows, in-flight caps, sign-in back-off."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client, RequestFactory
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from gallery import ratelimit

pytestmark = pytest.mark.django_db

PASSWORD = "a long test password"


def _limits(settings: Any, **changes: Any) -> None:
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, **changes}


def _page_search(client: Client) -> int:
    return client.post(reverse("gallery:search"), {"metric": "cosine"}).status_code


def _api_search(client: APIClient) -> Any:
    return client.post("/api/v1/search/", {"metric": "cosine"})


def _api_client(address: str = "127.0.0.1", user: User | None = None) -> APIClient:
    client = APIClient(REMOTE_ADDR=address)
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def _assert_429(response: Any, code: str) -> int:
    assert response.status_code == 429
    wait = int(response["Retry-After"])
    assert wait >= 1
    if response["Content-Type"].startswith("application/json"):
        error = response.json()["error"]
        assert error["code"] == code and error["retry_after"] == wait
    else:
        assert "Too many" in response.content.decode()
    return wait


# ---------------------------------------------------------------- windows shared by pages and API


def test_anonymous_searches_on_the_page_and_the_api_share_one_budget(settings) -> None:  # type: ignore[no-untyped-def]
    _limits(settings, RATE_LIMITS={"search": "3/m", "upload": "0", "login": "0"})
    page, api = Client(), _api_client()
    # Invalid searches (no photo) still count: the budget is requests, not results.
    assert [_page_search(page), _api_search(api).status_code, _page_search(page)] == [400, 400, 400]
    _assert_429(_api_search(api), "rate_limited")
    _assert_429(page.post(reverse("gallery:search"), {"metric": "cosine"}), "rate_limited")
    # Someone at another address is not affected; browsing goes on.
    assert _api_search(_api_client("10.0.0.9")).status_code == 400
    assert page.get(reverse("gallery:index")).status_code == 200


def test_a_users_token_and_browser_share_one_budget_other_users_unaffected(settings) -> None:  # type: ignore[no-untyped-def]
    _limits(settings, RATE_LIMITS={"search": "2/m", "upload": "0", "login": "0"})
    ann, bob = User.objects.create_user("ann"), User.objects.create_user("bob")
    browser = Client()
    browser.force_login(ann)
    assert _page_search(browser) == 400
    assert _api_search(_api_client("10.0.0.1", ann)).status_code == 400  # elsewhere, same account
    _assert_429(_api_search(_api_client("10.0.0.2", ann)), "rate_limited")
    assert _page_search(browser) == 429
    # Another account at the very same address has its own budget.
    assert _api_search(_api_client("127.0.0.1", bob)).status_code == 400


def test_uploads_on_the_page_and_the_api_share_one_budget(settings) -> None:  # type: ignore[no-untyped-def]
    _limits(settings, RATE_LIMITS={"search": "0", "upload": "2/m", "login": "0"})
    ann = User.objects.create_user("ann")
    browser = Client()
    browser.force_login(ann)
    api = _api_client(user=ann)
    assert browser.post(reverse("gallery:upload"), {}).status_code == 400
    assert api.post("/api/v1/images/", {}).status_code == 400
    _assert_429(api.post("/api/v1/images/", {}), "rate_limited")
    assert browser.post(reverse("gallery:upload"), {}).status_code == 429
    # Reading the catalog is not an upload.
    assert api.get("/api/v1/images/").status_code == 200


# ---------------------------------------------------------------- requests in flight


def _hold_slot(scope: str, *, address: str = "127.0.0.1", user: User | None = None) -> Any:
    """A request of this client that is still running: it holds one slot until released."""
    request = RequestFactory().post("/", REMOTE_ADDR=address)
    request.user = user if user is not None else ratelimit_anonymous()
    return ratelimit.admit(request, scope=scope)


def ratelimit_anonymous() -> Any:
    from django.contrib.auth.models import AnonymousUser

    return AnonymousUser()


def test_a_client_with_a_search_running_is_refused_a_second_one_at_once(settings) -> None:  # type: ignore[no-untyped-def]
    _limits(settings, IN_FLIGHT={"search": 1, "upload": 0})
    release = _hold_slot("search")
    started = time.monotonic()
    _assert_429(_api_search(_api_client()), "too_many_in_flight")
    page = Client().post(reverse("gallery:search"), {"metric": "cosine"})
    _assert_429(page, "too_many_in_flight")
    assert "still running" in page.content.decode()
    assert time.monotonic() - started < 2  # refused at once, not queued
    assert _api_search(_api_client("10.0.0.9")).status_code == 400  # another client searches
    release()
    # Finished requests give their slot back: one after another they all pass.
    assert [_api_search(_api_client()).status_code for _ in range(3)] == [400, 400, 400]
    assert [_page_search(Client()) for _ in range(3)] == [400, 400, 400]


def test_uploads_in_flight_are_capped_per_user(settings) -> None:  # type: ignore[no-untyped-def]
    _limits(settings, IN_FLIGHT={"search": 0, "upload": 2})
    ann, bob = User.objects.create_user("ann"), User.objects.create_user("bob")
    holds = [_hold_slot("upload", user=ann), _hold_slot("upload", user=ann)]
    _assert_429(_api_client("10.0.0.5", ann).post("/api/v1/images/", {}), "too_many_in_flight")
    assert _api_client("127.0.0.1", bob).post("/api/v1/images/", {}).status_code == 400
    holds.pop()()
    assert _api_client("10.0.0.5", ann).post("/api/v1/images/", {}).status_code == 400


def test_a_slot_a_crashed_request_never_gave_back_frees_itself(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _limits(settings, IN_FLIGHT={"search": 1, "upload": 0}, IN_FLIGHT_TTL_SECONDS=30)
    clock = _FakeClock(monkeypatch)
    _hold_slot("search")  # never released
    _assert_429(_api_search(_api_client()), "too_many_in_flight")
    clock.advance(31)
    assert _api_search(_api_client()).status_code == 400


# ---------------------------------------------------------------- sign-in


class _FakeClock:
    """Wall time under the test's control: the back-off and the cache's expiry both read it."""

    def __init__(self, monkeypatch: Any):
        self.now = time.time()
        monkeypatch.setattr(time, "time", lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _page_login(username: str, password: str, address: str) -> Any:
    return Client(REMOTE_ADDR=address).post(reverse("login"), {"username": username, "password": password})


def _token(username: str, password: str, address: str) -> Any:
    return APIClient(REMOTE_ADDR=address).post("/api/v1/auth/token/", {"username": username, "password": password})


def _backoff(settings: Any, **policy: int) -> None:
    defaults = {
        "FREE_FAILURES_PER_ACCOUNT": 3,
        "FREE_FAILURES_PER_ADDRESS": 100,
        "BACKOFF_SECONDS": 2,
        "BACKOFF_MAX_SECONDS": 8,
        "FAILURE_MEMORY_SECONDS": 3600,
    }
    _limits(settings, SIGN_IN={**defaults, **policy})


def test_an_account_attacked_from_many_addresses_backs_off_doubling_to_the_cap(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _backoff(settings)
    User.objects.create_user("alice", password=PASSWORD)
    clock = _FakeClock(monkeypatch)
    addresses = (f"198.51.100.{i}" for i in range(1, 100))
    # Three free failures through both doors, each from a new address.
    assert _page_login("alice", "guess", next(addresses)).status_code == 200
    assert _token("alice", "guess", next(addresses)).status_code == 400
    assert _page_login("ALICE", "guess", next(addresses)).status_code == 200  # same account, any case
    waits = []
    for _ in range(4):
        assert _token("alice", "guess", next(addresses)).status_code == 400  # checked, wrong
        waits.append(_assert_429(_token("alice", "guess", next(addresses)), "sign_in_locked"))
        clock.advance(waits[-1])
    assert waits == [2, 4, 8, 8]
    # While locked even the right password is not checked; the page says when to retry.
    assert _token("alice", "guess", next(addresses)).status_code == 400
    _assert_429(_page_login("alice", PASSWORD, next(addresses)), "sign_in_locked")
    locked = _page_login("alice", PASSWORD, next(addresses))
    assert "failed sign-in" in locked.content.decode() and locked["Retry-After"] == "8"
    # The owner waits, signs in, and that clears the account's failures.
    clock.advance(8)
    assert _page_login("alice", PASSWORD, next(addresses)).status_code == 302
    assert [_token("alice", "guess", next(addresses)).status_code for _ in range(3)] == [400, 400, 400]
    assert _token("alice", PASSWORD, next(addresses)).status_code == 200  # a token success clears them too
    assert [_token("alice", "guess", next(addresses)).status_code for _ in range(3)] == [400, 400, 400]


def test_a_locked_account_does_not_reveal_whether_it_exists(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _backoff(settings)
    User.objects.create_user("alice", password=PASSWORD)
    _FakeClock(monkeypatch)

    def attack(username: str) -> list[tuple[int, str, str]]:
        out = []
        for i in range(6):
            response = _token(username, "guess", f"203.0.113.{i}")
            body = response.json()["error"]
            out.append((response.status_code, response.get("Retry-After", ""), body["code"] + body["message"]))
        return out

    assert attack("alice") == attack("nobody-by-this-name")


def test_an_address_rotating_usernames_is_stopped_and_others_sign_in(settings) -> None:  # type: ignore[no-untyped-def]
    _backoff(settings, FREE_FAILURES_PER_ACCOUNT=100, FREE_FAILURES_PER_ADDRESS=5)
    User.objects.create_user("alice", password=PASSWORD)
    attacker = "192.0.2.66"
    codes = [_token(f"user{i}", "guess", attacker).status_code for i in range(8)]
    assert codes[:5] == [400] * 5 and 429 in codes[5:7]
    _assert_429(_page_login("someone", "guess", attacker), "sign_in_locked")  # every door
    # The attacker's own good account does not reset the address's count.
    assert _page_login("alice", PASSWORD, attacker).status_code == 429
    # Alice, from her own address, is not affected.
    assert _page_login("alice", PASSWORD, "192.0.2.7").status_code == 302


def test_sign_in_attempts_count_per_address_and_per_account_in_a_window(settings) -> None:  # type: ignore[no-untyped-def]
    _limits(settings, RATE_LIMITS={"search": "0", "upload": "0", "login": "3/m"})
    User.objects.create_user("alice", password=PASSWORD)
    # Per address: three attempts at any names, then 429 for the API and the page alike.
    assert [_token(f"u{i}", "guess", "192.0.2.1").status_code for i in range(3)] == [400, 400, 400]
    _assert_429(_token("u9", "guess", "192.0.2.1"), "rate_limited")
    _assert_429(_page_login("u9", "guess", "192.0.2.1"), "rate_limited")
    # Per account: three attempts at one name from three addresses, then 429 anywhere.
    assert [_token("bob", "guess", f"192.0.2.{i}").status_code for i in range(10, 13)] == [400, 400, 400]
    _assert_429(_token("bob", "guess", "192.0.2.20"), "rate_limited")
    # Others are not affected.
    assert _token("alice", PASSWORD, "192.0.2.30").status_code == 200


def test_the_admin_sign_in_backs_off_too(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _backoff(settings)
    User.objects.create_superuser("root", password=PASSWORD)
    _FakeClock(monkeypatch)
    admin = Client(REMOTE_ADDR="192.0.2.44")
    codes = [admin.post("/admin/login/", {"username": "root", "password": "guess"}).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 200, 429]
    refused = admin.post("/admin/login/", {"username": "root", "password": PASSWORD})
    assert _assert_429(refused, "sign_in_locked") == 2
    assert admin.get("/admin/login/").status_code == 200  # the form itself still shows


def test_an_unreachable_counter_store_lets_requests_through(settings) -> None:  # type: ignore[no-untyped-def]
    _limits(settings, RATE_LIMITS={"search": "1/m", "upload": "0", "login": "1/m"}, IN_FLIGHT={"search": 1, "upload": 0})
    _backoff(settings)
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
            "OPTIONS": {"socket_connect_timeout": 1},
        }
    }
    assert [_api_search(_api_client()).status_code for _ in range(2)] == [400, 400]
    User.objects.create_user("alice", password=PASSWORD)
    assert _token("alice", "guess", "192.0.2.1").status_code == 400
    assert _token("alice", PASSWORD, "192.0.2.1").status_code == 200


def test_the_cache_is_the_brokers_redis_unless_one_is_named() -> None:
    from pathlib import Path

    from imagesearch.settings import cache_location

    sock = Path("/srv/var/redis/redis.sock")
    assert cache_location(cache_url="", broker_url="", embedded_socket=sock) == "unix:///srv/var/redis/redis.sock"
    assert cache_location(cache_url="", broker_url="redis://redis:6379/0", embedded_socket=sock) == "redis://redis:6379/0"
    assert cache_location(cache_url="redis://c:6379/1", broker_url="redis://b/0", embedded_socket=sock) == "redis://c:6379/1"
    assert cache_location(cache_url="", broker_url="memory://", embedded_socket=sock) == ""
