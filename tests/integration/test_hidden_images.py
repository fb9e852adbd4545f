"""Hidden means unreachable: a hidden image's pictures leave the public media, every
endpoint that takes ids answers only about what the caller may see, and odd ids are
unknown pages, never server errors."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from gallery.catalog import services as catalog_services
from gallery.catalog.models import Image
from gallery.copyright.models import CopyMatch, ProtectedWork
from tests.conftest import photo_bytes

pytestmark = pytest.mark.django_db


def _file(data: bytes, name: str = "photo.jpg") -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


@pytest.fixture
def owner() -> User:
    return User.objects.create_user("owner", password="pw-owner-123")


@pytest.fixture
def image(owner: User, django_capture_on_commit_callbacks) -> Image:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        return catalog_services.image_create(
            file=_file(photo_bytes(seed=7)), uploaded_by=owner, original_name="secret.jpg", queue=False
        )


def _as(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _body(response) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_a_hidden_images_pictures_leave_the_public_media_and_come_back(image, owner, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    public_display, public_thumb = image.display.url, image.thumbnail.url
    anonymous = _as(None)
    assert anonymous.get(public_display).status_code == 200 and anonymous.get(public_thumb).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        catalog_services.images_set_visibility(image_ids=[image.pk], visibility="hidden", reason="Hidden after copyright review.")
    image.refresh_from_db()
    # The old public addresses are dead for everyone.
    assert anonymous.get(public_display).status_code == 404 and anonymous.get(public_thumb).status_code == 404
    picture = image.display_url
    assert picture == reverse("gallery:picture", args=[image.pk, "display"])
    # Its uploader still sees it; other users, visitors and the staff flag alone do not.
    seen = _as(owner).get(picture)
    assert seen.status_code == 200 and _body(seen)[:2] == b"\xff\xd8"
    assert _as(owner).get(image.thumbnail_url).status_code == 200
    stranger = User.objects.create_user("stranger", password="pw-stranger-1")
    flag_only = User.objects.create_user("flag", password="pw-flag-1234", is_staff=True)
    for who in (None, stranger, flag_only):
        assert _as(who).get(picture).status_code == 404, who
        assert _as(who).get(reverse("gallery:detail", args=[image.pk])).status_code == 404, who
    editor = User.objects.create_user("editor", password="pw-editor-12", is_staff=True)
    editor.user_permissions.add(Permission.objects.get(codename="view_image"))
    assert _as(editor).get(picture).status_code == 200
    # Published again: back at its public address.
    with django_capture_on_commit_callbacks(execute=True):
        catalog_services.images_set_visibility(image_ids=[image.pk], visibility="published")
    assert anonymous.get(public_display).status_code == 200 and anonymous.get(public_thumb).status_code == 200


def test_reviewers_see_a_hidden_upload_that_is_in_a_copy_match(image, settings, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    reviewer = User.objects.create_user("reviewer", password="pw-reviewer-1")
    reviewer.groups.add(Group.objects.get_or_create(name=settings.IMAGESEARCH["COPYRIGHT_GROUP"])[0])
    with django_capture_on_commit_callbacks(execute=True):
        catalog_services.images_set_visibility(image_ids=[image.pk], visibility="hidden")
    image.refresh_from_db()
    assert _as(reviewer).get(image.display_url).status_code == 404  # not in any match
    work = ProtectedWork.objects.create(
        title="W", rights_holder="H", checksum="1" * 64, width=1, height=1, file="protected/w.jpg"
    )
    CopyMatch.objects.create(work=work, image=image, score=0.9, found_by="upload")
    assert _as(reviewer).get(image.display_url).status_code == 200


def test_an_interrupted_move_is_finished_by_the_sweep(image) -> None:  # type: ignore[no-untyped-def]
    public_display = image.display.url
    Image.objects.filter(pk=image.pk).update(visibility="hidden")  # the process died before moving the files
    assert _as(None).get(public_display).status_code == 200
    assert catalog_services.images_pictures_reconcile() == 2
    assert _as(None).get(public_display).status_code == 404
    assert catalog_services.images_pictures_reconcile() == 0


def test_a_duplicate_of_someone_elses_hidden_photo_names_nothing(image, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        catalog_services.images_set_visibility(image_ids=[image.pk], visibility="hidden")
    other = User.objects.create_user("other", password="pw-other-1234")
    page = _as(other).post(
        reverse("gallery:upload"), {"files": _file(photo_bytes(seed=7), "again.jpg")}, HTTP_ACCEPT="application/json"
    )
    error = page.json()["errors"][0]
    assert error["message"] == "This photo is already in the catalog." and "existing_url" not in error
    api = APIClient()
    api.force_authenticate(other)
    response = api.post("/api/v1/images/", {"file": _file(photo_bytes(seed=7), "again.jpg")}, format="multipart")
    body = response.json()
    assert (
        response.status_code == 409
        and "secret" not in str(body)
        and str(image.pk) not in str(body.get("error", {}).get("existing", ""))
    )
    # Its owner is told which photo it is.
    owner_page = _as(image.uploaded_by).post(
        reverse("gallery:upload"), {"files": _file(photo_bytes(seed=7), "again.jpg")}, HTTP_ACCEPT="application/json"
    )
    assert "secret.jpg" in owner_page.json()["errors"][0]["message"]


@pytest.mark.parametrize("ids", ["99999999999999999999999", "9223372036854775808", "²,³", "-1,0", "1" * 5000])
def test_ids_beyond_the_database_are_ignored_not_errors(image, owner, ids: str) -> None:  # type: ignore[no-untyped-def]
    client = _as(owner)
    assert client.get(reverse("gallery:status_json"), {"ids": ids}).status_code == 200
    assert client.get(reverse("gallery:upload_status"), {"ids": ids}).status_code == 200


def test_huge_ids_in_paths_are_unknown_pages(client) -> None:  # type: ignore[no-untyped-def]
    for path in (
        "/images/99999999999999999999999/",
        "/api/v1/images/99999999999999999999999/",
        "/copyright/matches/99999999999999999999/",
    ):
        assert client.get(path).status_code in (404, 302), path
    assert client.get("/images/9223372036854775807/").status_code == 404


def test_head_requests_answer_like_get(client, image) -> None:  # type: ignore[no-untyped-def]
    for path in ("/", f"/images/{image.pk}/", "/search/"):
        response = client.head(path)
        assert response.status_code == 200 and response.content == b"", path


def test_every_page_sends_a_content_security_policy_without_inline_scripts(client) -> None:  # type: ignore[no-untyped-def]
    for path in ("/", "/search/", "/accounts/login/", "/api/v1/docs/", "/admin/login/"):
        policy = client.get(path)["Content-Security-Policy"]
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
        assert directives["script-src"] == "'self'" and directives["frame-ancestors"] == "'none'", path
        assert directives["object-src"] == "'none'" and directives["default-src"] == "'self'", path
