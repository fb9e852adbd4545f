"""Probes, metrics and request ids through the Django stack (the live tests run them with
real processes): who may read /metrics, what /readyz says when the broker is gone, the
request id in the response and in the log lines of the request's work."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from django.test import Client
from django.urls import reverse

from gallery.monitoring import health
from tests.conftest import photo_bytes

pytestmark = pytest.mark.django_db

REMOTE = "203.0.113.7"  # a documentation address: not loopback
TOKEN = "scrape-token-0123456789abcdef"


@pytest.fixture(autouse=True)
def _monitoring(settings):  # type: ignore[no-untyped-def]
    settings.MONITORING = {**settings.MONITORING, "METRICS_TOKEN": TOKEN, "READY_CACHE_SECONDS": 0}
    health.forget()
    yield
    health.forget()


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _scrape(client: Client) -> str:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", REMOTE_ADDR=REMOTE)
    assert response.status_code == 200
    return response.content.decode()


def _photo(seed: int, name: str = "p.jpg") -> io.BytesIO:
    f = io.BytesIO(photo_bytes(seed=seed, color=(40 * seed % 255, 120, 90)))
    f.name = name
    return f


def test_healthz_answers_without_touching_the_database(client, django_assert_num_queries) -> None:  # type: ignore[no-untyped-def]
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "alive"}
    assert client.post("/healthz").status_code == 405


def test_probes_answer_any_host_name_over_plain_http(client, settings) -> None:  # type: ignore[no-untyped-def]
    """A container's health check and a scraper use the internal name (web:8000) over HTTP,
    which the host check and the HTTPS redirect would refuse."""
    settings.ALLOWED_HOSTS = ["gallery.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/", HTTP_HOST="web:8000").status_code == 400  # pages: the host check holds
    assert client.get("/healthz", HTTP_HOST="web:8000").status_code == 200
    assert client.get("/readyz", HTTP_HOST="web:8000").status_code in (200, 503)
    scraped = client.get("/metrics", HTTP_HOST="web:8000", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", REMOTE_ADDR=REMOTE)
    assert scraped.status_code == 200


def test_readyz_names_the_broker_when_it_is_down_and_recovers(client, settings) -> None:  # type: ignore[no-untyped-def]
    health.warm_up()  # what the web server does in the background at start
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.content
    assert ready.json() == {"status": "ready", "checks": dict.fromkeys(health.CHECKS, "ok")}

    working = settings.CELERY_BROKER_URL
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    down = client.get("/readyz")
    assert down.status_code == 503
    body = down.json()
    assert body["failing"] == ["broker"] and body["checks"]["broker"] == "failed"
    assert "127.0.0.1" not in down.content.decode() and "Error" not in down.content.decode()  # no internals

    settings.CELERY_BROKER_URL = working
    assert client.get("/readyz").status_code == 200


def test_readyz_says_loading_until_the_index_is_loaded(client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    started: list[bool] = []
    monkeypatch.setattr(health, "start_warm_up", lambda: started.append(True))  # a warm-up still running
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["index"] == "loading" and "index" in response.json()["failing"]
    assert started  # the probe started the warm-up rather than loading in the request


def test_readyz_is_cached_so_a_flood_of_probes_is_cheap(client, settings, django_assert_max_num_queries) -> None:  # type: ignore[no-untyped-def]
    health.warm_up()
    settings.MONITORING = {**settings.MONITORING, "READY_CACHE_SECONDS": 60}
    assert client.get("/readyz").status_code == 200
    with django_assert_max_num_queries(0):
        for _ in range(20):
            assert client.get("/readyz").status_code == 200


def test_metrics_are_refused_to_anonymous_remote_clients(client, admin_user, settings) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/metrics", REMOTE_ADDR=REMOTE).status_code == 404
    assert client.get("/metrics", REMOTE_ADDR=REMOTE, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR=REMOTE, HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR=REMOTE, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200  # loopback
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200

    signed_in = Client(REMOTE_ADDR=REMOTE)
    signed_in.force_login(admin_user)  # staff
    assert signed_in.get("/metrics").status_code == 200
    ordinary = Client(REMOTE_ADDR=REMOTE)
    ordinary.force_login(type(admin_user).objects.create_user("ordinary", password="x" * 12))
    assert ordinary.get("/metrics").status_code == 404

    settings.MONITORING = {**settings.MONITORING, "METRICS_ALLOW_LOOPBACK": False, "METRICS_TOKEN": ""}
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 404
    # No token configured: no token opens it, not even an empty one.
    assert client.get("/metrics", REMOTE_ADDR=REMOTE, HTTP_AUTHORIZATION="Bearer ").status_code == 404
    assert client.get("/metrics", REMOTE_ADDR=REMOTE, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 403


def test_a_search_moves_the_route_stage_and_embedding_metrics(client, user_client, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    before = _scrape(client)
    with django_capture_on_commit_callbacks(execute=True):
        upload = user_client.post(reverse("gallery:upload"), {"files": [_photo(i, f"p{i}.jpg") for i in range(3)]})
    assert upload.status_code == 302
    search = client.post(reverse("gallery:search"), {"file": _photo(9), "metric": "cosine", "limit": 3})
    assert search.status_code == 200
    after = _scrape(client)

    def moved(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert moved("imagesearch_http_request_duration_seconds_count", route="gallery:search", method="POST") == 1
    assert moved("imagesearch_http_responses_total", route="gallery:search", method="POST", status="200") == 1
    assert moved("imagesearch_http_request_duration_seconds_count", route="gallery:upload", method="POST") == 1
    for stage in ("decode", "embed", "index", "hydrate"):
        assert moved("imagesearch_search_stage_seconds_count", stage=stage) == 1, stage
    # Three uploads embedded (eagerly, here) and one query photo.
    assert moved("imagesearch_embeddings_total", backbone="efficientnet_lite0") == 4
    assert moved("imagesearch_task_duration_seconds_count", task="gallery.embed_image", state="SUCCESS") >= 1
    assert _sample(after, "imagesearch_images", status="ready") == 3
    assert _sample(after, "imagesearch_images", status="failed") == 0
    assert _sample(after, "imagesearch_copy_matches_pending") == 0
    assert _sample(after, "imagesearch_broker_up") == 1
    assert {"interactive", "bulk"} <= set(re.findall(r'imagesearch_queue_depth\{lane="(\w+)"\}', after))
    assert _sample(after, "imagesearch_search_index_vectors") == 3
    # Routes are URL names, never paths: an unknown path is one "unmatched" series.
    client.get("/no/such/page/1")
    client.get("/no/such/page/2")
    text = _scrape(client)
    assert "/no/such" not in text
    assert _sample(text, "imagesearch_http_responses_total", route="unmatched", method="GET", status="404") >= 2


def test_a_scrape_reports_the_catalog_a_process_will_search_without_searching(
    client, user_client, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    # Several web processes share a port: the one a scrape reaches may not have served the
    # last search. Its index still counts what was published since it loaded.
    with django_capture_on_commit_callbacks(execute=True):
        user_client.post(reverse("gallery:upload"), {"files": [_photo(i, f"p{i}.jpg") for i in range(2)]})
    assert client.post(reverse("gallery:search"), {"file": _photo(9), "metric": "cosine", "limit": 3}).status_code == 200
    assert _sample(_scrape(client), "imagesearch_search_index_vectors") == 2
    with django_capture_on_commit_callbacks(execute=True):
        user_client.post(reverse("gallery:upload"), {"files": [_photo(i, f"q{i}.jpg") for i in range(3, 6)]})
    text = _scrape(client)
    assert _sample(text, "imagesearch_search_index_vectors") == 5
    assert _sample(text, "imagesearch_search_index_loaded") == 1


def test_request_id_comes_back_and_marks_the_requests_access_line(
    client, user_client, caplog, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/", HTTP_X_REQUEST_ID="trace-42.abc")
    assert response["X-Request-ID"] == "trace-42.abc"
    for bad in ("has space", "x" * 200, "new\nline", "<script>"):
        other = client.get("/", HTTP_X_REQUEST_ID=bad)["X-Request-ID"]
        assert other != bad and re.fullmatch(r"[0-9a-f]{32}", other)
    assert client.get("/")["X-Request-ID"] != client.get("/")["X-Request-ID"]

    caplog.set_level(logging.INFO)
    with django_capture_on_commit_callbacks(execute=True):
        upload = user_client.post(reverse("gallery:upload"), {"files": [_photo(3)]}, HTTP_X_REQUEST_ID="upload-7")
    assert upload.status_code == 302 and upload["X-Request-ID"] == "upload-7"
    access = [r for r in caplog.records if r.name == "imagesearch.access" and r.request_id == "upload-7"]  # type: ignore[attr-defined]
    assert len(access) == 1 and '"POST /upload/" 302' in access[0].getMessage()
    # (The live test follows the id through a real broker into a real worker's log.)


def test_json_log_lines_carry_the_request_id(client, capsys) -> None:  # type: ignore[no-untyped-def]
    from django.conf import settings as django_settings
    from pythonjsonlogger.json import JsonFormatter

    from gallery.monitoring.logs import RequestIdFilter

    conf = django_settings.LOGGING["formatters"]["json"]
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(conf["format"], rename_fields=conf["rename_fields"]))
    handler.addFilter(RequestIdFilter())
    access = logging.getLogger("imagesearch.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        client.get("/", HTTP_X_REQUEST_ID="json-1", REMOTE_ADDR=REMOTE)
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["request_id"] == "json-1" and line["logger"] == "imagesearch.access" and line["level"] == "INFO"
    assert '"GET /" 200' in line["message"] and line["message"].startswith(REMOTE)


def test_control_characters_in_a_path_do_not_reach_the_log(client, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="imagesearch.access")
    client.get("/images/%0aforged%20line/")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "imagesearch.access"]
    assert "\n" not in line and "%0Aforged%20line" in line
