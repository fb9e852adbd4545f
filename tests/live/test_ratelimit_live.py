"""The throttling policy on the real server: counters in the broker's Redis, clients told
apart by X-Forwarded-For, which the web server believes here from loopback, standing in
for the reverse proxy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from benchmarks.livestack import Stack, live_stack
from tests.conftest import photo_bytes

pytestmark = pytest.mark.slow

PASSWORD = "a long test password"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    var: Path = tmp_path_factory.mktemp("throttle") / "var"
    with live_stack(
        var, IMAGESEARCH_TRUSTED_PROXY="127.0.0.1", IMAGESEARCH_RATE_SEARCH="6/m", IMAGESEARCH_IN_FLIGHT_SEARCH="2"
    ) as running:
        running.create_user("alice", PASSWORD)
        running.create_user("root", PASSWORD, superuser=True)
        running.create_user("bob", PASSWORD)
        yield running


def _session(address: str) -> requests.Session:
    session = requests.Session()
    session.headers["X-Forwarded-For"] = address
    return session


def _csrf(session: requests.Session, url: str) -> str:
    session.get(url, timeout=10)
    return str(session.cookies["csrftoken"])


def test_sixty_wrong_passwords_on_the_token_endpoint_are_mostly_refused(stack: Stack) -> None:
    attacker = _session("203.0.113.5")
    answers = [
        attacker.post(stack.url + "/api/v1/auth/token/", data={"username": "alice", "password": f"guess{i}"}, timeout=30)
        for i in range(60)
    ]
    codes = [a.status_code for a in answers]
    assert set(codes) == {400, 429}
    checked = codes.count(400)
    assert codes.index(429) <= 10 and checked <= 10, codes
    for refused in (a for a in answers if a.status_code == 429):
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] in ("sign_in_locked", "rate_limited")
    # Another account, from another address, signs in as usual.
    token = _session("198.51.100.20").post(
        stack.url + "/api/v1/auth/token/", data={"username": "bob", "password": PASSWORD}, timeout=30
    )
    assert token.status_code == 200 and token.json()["token"]


def test_the_admin_sign_in_is_limited_too(stack: Stack) -> None:
    attacker = _session("203.0.113.9")
    codes = []
    for i in range(30):
        token = _csrf(attacker, stack.url + "/admin/login/")
        response = attacker.post(
            stack.url + "/admin/login/",
            data={"csrfmiddlewaretoken": token, "username": "root", "password": f"guess{i}", "next": "/admin/"},
            timeout=30,
        )
        codes.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1 and "Too many" in response.text
    assert codes.index(429) <= 10 and codes.count(200) <= 10, codes


def test_page_and_api_searches_share_one_budget_in_redis(stack: Stack) -> None:
    browser = _session("192.0.2.77")
    token = _csrf(browser, stack.url + "/search/")
    page = [browser.post(stack.url + "/search/", data={"csrfmiddlewaretoken": token}, timeout=30) for _ in range(3)]
    api = [browser.post(stack.url + "/api/v1/search/", data={"metric": "cosine"}, timeout=30) for _ in range(3)]
    assert [r.status_code for r in page + api] == [400] * 6  # no photo: refused, but counted
    over_api = browser.post(stack.url + "/api/v1/search/", data={"metric": "cosine"}, timeout=30)
    assert over_api.status_code == 429 and over_api.json()["error"]["code"] == "rate_limited"
    over_page = browser.post(stack.url + "/search/", data={"csrfmiddlewaretoken": token}, timeout=30)
    assert over_page.status_code == 429 and int(over_page.headers["Retry-After"]) >= 1
    # The counters live in the broker's Redis, where every web process sees them.
    keys = redis.Redis(host="127.0.0.1", port=stack.redis_port).keys("imagesearch:*ratelimit:search:ip:192.0.2.77:*")
    assert keys
    # Another address searches.
    assert _session("192.0.2.78").post(stack.url + "/api/v1/search/", data={}, timeout=30).status_code == 400


def test_a_burst_of_searches_by_photo_from_one_client_runs_two_at_a_time(stack: Stack) -> None:
    photo = photo_bytes(size=(640, 480))
    start = threading.Barrier(6)
    answers: list[Any] = []

    def search() -> None:
        session = _session("192.0.2.90")
        start.wait()
        answers.append(session.post(stack.url + "/api/v1/search/", files={"file": ("q.jpg", photo, "image/jpeg")}, timeout=120))

    threads = [threading.Thread(target=search) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(a.status_code for a in answers)
    refused = [a.json()["error"]["code"] for a in answers if a.status_code == 429]
    assert 200 in codes and "too_many_in_flight" in refused, codes
    assert all(a.headers["Retry-After"] == "1" for a in answers if a.status_code == 429)
