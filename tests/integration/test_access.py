"""Who may open what: every URL the product routes, tried as anonymous, as an ordinary
user, as staff and as a copyright reviewer; CSRF on every form; rate limits; production
security settings; originals never served."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from gallery.catalog import services as catalog_services
from gallery.catalog.models import Image
from tests.conftest import ROOT, photo_bytes

pytestmark = pytest.mark.django_db

# Routes anyone may open; every other route must refuse anonymous visitors.
PUBLIC = {
    "",
    "search/",
    "search/words/",
    "images/<id:pk>/",
    "images/<id:pk>/region/",  # answers 404 to whoever may not see the image
    "images/<id:pk>/picture/<str:kind>/",  # answers 404 to whoever may not see the picture
    "images/status/",
    "accounts/login/",
    "accounts/logout/",
    "admin/login/",
    "admin/logout/",
    "media/(?P<path>.*)",  # display copies and thumbnails only; originals live elsewhere
    "healthz",  # check names and ok/failed, nothing more
    "readyz",
}
# The metrics token, loopback clients and staff (tests/integration/test_monitoring.py).
MONITORING = {"metrics"}
SIGNED_IN = {"upload/", "uploads/", "my-uploads/"}  # any account (unless anonymous uploads are allowed)
STAFF_PAGES = {"operations/"}  # staff outside the admin: other accounts get 403


def _routes(patterns=None, prefix: str = "") -> list[str]:  # type: ignore[no-untyped-def]
    found: list[str] = []
    for p in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(p.pattern).lstrip("^").rstrip("$").replace("\\Z", "")
        if isinstance(p, URLResolver):
            found += _routes(p.url_patterns, route)
        elif isinstance(p, URLPattern):
            found.append(route)
    return found


def _sample(route: str, image: Image) -> str:
    values = {"pk": str(image.pk), "object_id": str(image.pk), "app_label": "gallery", "path": image.display.name}

    def value(m: re.Match[str]) -> str:
        return values.get(m.group("name"), "1")

    path = re.sub(r"<(?:\w+:)?(?P<name>\w+)>", value, route)
    path = re.sub(r"\(\?P<(?P<name>\w+)>[^)]*\)", value, path)
    return "/" + path.replace("^", "").replace("$", "")


def _kind(route: str) -> str:
    if route in PUBLIC:
        return "public"
    if route.startswith("api/v1/"):
        # API reads are public like the gallery; uploads need a token (tests/test_api.py)
        return "public"
    if route in SIGNED_IN:
        return "signed-in"
    if route in MONITORING:
        return "monitoring"
    if route.startswith("admin/"):
        return "staff"
    if route in STAFF_PAGES:
        return "staff-page"
    if route.startswith("copyright/"):
        return "copyright"
    return "unclassified"


def _to_login(response) -> bool:  # type: ignore[no-untyped-def]
    return response.status_code == 302 and "login" in response["Location"]


@pytest.fixture
def image() -> Image:
    f = io.BytesIO(photo_bytes())
    return catalog_services.image_create(file=f, original_name="p.jpg", queue=False)


@pytest.fixture
def roles(django_user_model) -> dict[str, Client]:  # type: ignore[no-untyped-def]
    ordinary = django_user_model.objects.create_user("ordinary", password="x" * 12)
    staff = django_user_model.objects.create_user("staff", password="x" * 12, is_staff=True)
    staff.user_permissions.set(Permission.objects.all())
    reviewer = django_user_model.objects.create_user("reviewer", password="x" * 12)
    reviewer.groups.add(Group.objects.get_or_create(name=settings.IMAGESEARCH["COPYRIGHT_GROUP"])[0])
    clients = {"anonymous": Client()}
    for name, user in (("user", ordinary), ("staff", staff), ("reviewer", reviewer)):
        clients[name] = Client()
        clients[name].force_login(user)
    return clients


def test_every_route_is_classified() -> None:
    routes = _routes()
    assert "upload/" in routes and any(r.startswith("admin/") for r in routes)
    assert [r for r in routes if _kind(r) == "unclassified"] == []


def test_every_protected_route_refuses_who_may_not_open_it(roles, image) -> None:  # type: ignore[no-untyped-def]
    tried = 0
    for route in _routes():
        kind = _kind(route)
        if kind in ("public", "monitoring"):
            continue
        url = _sample(route, image)
        anonymous = roles["anonymous"].get(url)
        assert _to_login(anonymous), (url, anonymous.status_code)
        user = roles["user"].get(url)
        staff = roles["staff"].get(url)
        if kind == "signed-in":
            assert user.status_code == 200 and staff.status_code == 200, url
        elif kind == "staff":
            assert _to_login(user), (url, user.status_code)
            assert not _to_login(staff) and staff.status_code < 500, (url, staff.status_code)
        elif kind == "staff-page":
            assert user.status_code == 403 and staff.status_code == 200, (url, user.status_code, staff.status_code)
        elif kind == "copyright":
            assert user.status_code == 403 and staff.status_code == 403, url
            reviewer = roles["reviewer"].get(url)
            assert reviewer.status_code < 400 or reviewer.status_code in (404, 405), (url, reviewer.status_code)
        tried += 1
    assert tried > 20


def test_public_pages_open_for_anonymous_visitors(roles, image) -> None:  # type: ignore[no-untyped-def]
    anonymous = roles["anonymous"]
    for name, args in (("gallery:index", []), ("gallery:search", []), ("gallery:detail", [image.pk]), ("login", [])):
        assert anonymous.get(reverse(name, args=args)).status_code == 200, name
    assert anonymous.get(image.display.url).status_code == 200
    assert "sign in" in anonymous.get(reverse("gallery:index")).content.decode().lower()


def test_originals_are_never_served(client, image, settings) -> None:  # type: ignore[no-untyped-def]
    assert Path(settings.PRIVATE_MEDIA_ROOT, image.file.name).is_file()
    assert not Path(settings.MEDIA_ROOT, image.file.name).exists()
    for url in (f"/media/{image.file.name}", f"/media/../private/{image.file.name}", f"/media/%2e%2e/private/{image.file.name}"):
        assert client.get(url).status_code in (400, 404), url
    with pytest.raises(ValueError):
        image.file.url  # noqa: B018


def test_anonymous_uploads_need_the_setting(client, settings) -> None:  # type: ignore[no-untyped-def]
    f = io.BytesIO(photo_bytes())
    f.name = "anon.jpg"
    response = client.post(reverse("gallery:upload"), {"files": [f]})
    assert _to_login(response) and Image.objects.count() == 0
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "ALLOW_ANONYMOUS_UPLOADS": True}
    f.seek(0)
    assert client.post(reverse("gallery:upload"), {"files": [f]}).status_code == 302
    assert Image.objects.get().uploaded_by is None


def test_sign_in_page_lets_a_person_in(client, django_user_model) -> None:  # type: ignore[no-untyped-def]
    django_user_model.objects.create_user("ann", password="correct horse battery")
    page = client.get(reverse("login"), {"next": "/upload/"})
    assert page.status_code == 200 and "csrfmiddlewaretoken" in page.content.decode()
    bad = client.post(reverse("login"), {"username": "ann", "password": "wrong", "next": "/upload/"})
    assert bad.status_code == 200 and "did not match" in bad.content.decode()
    good = client.post(reverse("login"), {"username": "ann", "password": "correct horse battery", "next": "/upload/"})
    assert good.status_code == 302 and good["Location"] == "/upload/"
    assert client.get("/upload/").status_code == 200


def test_forms_without_a_csrf_token_are_refused(django_user_model) -> None:  # type: ignore[no-untyped-def]
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(django_user_model.objects.create_user("csrf", password="x" * 12))
    f = io.BytesIO(photo_bytes())
    f.name = "p.jpg"
    assert browser.post(reverse("gallery:upload"), {"files": [f]}).status_code == 403
    f.seek(0)
    assert browser.post(reverse("gallery:search"), {"file": f, "metric": "cosine", "limit": 5}).status_code == 403
    assert browser.post(reverse("logout")).status_code == 403
    assert Image.objects.count() == 0


def test_every_post_form_carries_a_csrf_token() -> None:
    forms = 0
    for template in (ROOT / "templates").rglob("*.html"):
        for form in re.findall(r"<form[^>]*method=\"post\".*?</form>", template.read_text(), flags=re.S | re.I):
            forms += 1
            assert "{% csrf_token %}" in form, template
    assert forms >= 4


def test_search_and_upload_are_rate_limited(client, user_client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "RATE_LIMITS": {"search": "3/m", "upload": "2/m", "login": "2/m"}}
    codes = [client.post(reverse("gallery:search"), {"metric": "cosine"}).status_code for _ in range(4)]
    assert codes == [400, 400, 400, 429]
    limited = client.post(reverse("gallery:search"), {"metric": "cosine"})
    assert "Too many requests" in limited.content.decode() and int(limited["Retry-After"]) > 0
    assert client.get(reverse("gallery:index")).status_code == 200  # browsing goes on
    assert [user_client.post(reverse("gallery:upload"), {}).status_code for _ in range(3)] == [400, 400, 429]
    logins = [Client().post(reverse("login"), {"username": "x", "password": "y"}).status_code for _ in range(3)]
    assert logins == [200, 200, 429]


def _production_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "IMAGESEARCH_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="imagesearch.settings",
        IMAGESEARCH_ENV="production",
        DJANGO_SECRET_KEY="a-production-secret-" + "k" * 50,
        DJANGO_ALLOWED_HOSTS="gallery.example.com",
        IMAGESEARCH_BACKBONE="efficientnet_lite0",
        **extra,
    )
    return env


def test_deploy_checks_pass_with_production_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=_production_env(IMAGESEARCH_VAR_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = _production_env(IMAGESEARCH_VAR_DIR=str(tmp_path))
    del env["DJANGO_SECRET_KEY"]
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0 and "DJANGO_SECRET_KEY must be set" in result.stderr
