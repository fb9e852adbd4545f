"""The JSON API under /api/v1/: every endpoint, its errors, and its OpenAPI schema."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from gallery.catalog import services as catalog_services
from gallery.catalog.models import Image, Tag
from tests.conftest import photo_bytes

pytestmark = pytest.mark.django_db


def _file(data: bytes, name: str) -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


def _catalog(paths: list[Path], **tags: list[str]) -> list[Image]:
    images = []
    for p in paths:
        with open(p, "rb") as f:
            images.append(catalog_services.image_create(file=f, original_name=p.name, queue=False))
    catalog_services.images_embed_batch(image_id=images[0].pk)
    for name, members in tags.items():
        tag = Tag.objects.create(name=name)
        tag.images.set([im for im in images if im.original_name[:3] in members])
    return images


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def user() -> User:
    return User.objects.create_user("ann", password="a long passphrase")


@pytest.fixture
def authed(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def catalog(butterflies: dict[str, list[Path]]) -> list[Image]:
    """Three species, four photos each, all ready; species 001 and 004 carry tags."""
    return _catalog([p for s in ("001", "004", "009") for p in butterflies[s][:4]], orange=["001"], blue=["004", "009"])


def _error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


# ---------------------------------------------------------------- search


def test_search_by_photo_ranks_the_same_species_first(api: APIClient, catalog: list[Image], butterflies) -> None:  # type: ignore[no-untyped-def]
    query = butterflies["004"][-1]
    response = api.post("/api/v1/search/", {"file": _file(query.read_bytes(), query.name), "limit": 4}, format="multipart")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["metric"] == "cosine" and body["higher_is_better"] is True and body["query"]["name"] == query.name
    assert body["count"] == 4 and [r["rank"] for r in body["results"]] == [1, 2, 3, 4]
    assert [r["image"]["original_name"][:3] for r in body["results"]] == ["004"] * 4
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    first = body["results"][0]["image"]
    assert first["status"] == "ready" and first["thumbnail_url"].startswith("http://testserver/media/")
    assert Image.objects.count() == len(catalog)  # the query photo is not stored


def test_search_with_tag_min_score_and_euclidean(api: APIClient, catalog: list[Image], butterflies) -> None:  # type: ignore[no-untyped-def]
    data = butterflies["009"][-1].read_bytes()
    tagged = api.post("/api/v1/search/", {"file": _file(data, "q.jpg"), "tag": "Orange"}, format="multipart").json()
    assert {r["image"]["original_name"][:3] for r in tagged["results"]} == {"001"}

    everything = api.post("/api/v1/search/", {"file": _file(data, "q.jpg")}, format="multipart").json()
    cut = everything["results"][2]["score"]
    kept = api.post("/api/v1/search/", {"file": _file(data, "q.jpg"), "min_score": cut}, format="multipart").json()
    assert kept["count"] == 3 and all(r["score"] >= cut for r in kept["results"])

    far = api.post("/api/v1/search/", {"file": _file(data, "q.jpg"), "metric": "euclidean"}, format="multipart").json()
    assert far["higher_is_better"] is False
    distances = [r["score"] for r in far["results"]]
    assert distances == sorted(distances) and far["results"][0]["image"]["original_name"].startswith("009")
    near = api.post(
        "/api/v1/search/", {"file": _file(data, "q.jpg"), "metric": "euclidean", "max_distance": distances[1]}, format="multipart"
    ).json()
    assert [r["score"] for r in near["results"]] == distances[:2]


def test_more_like_this_by_id_url_and_get(api: APIClient, catalog: list[Image]) -> None:
    image = catalog[5]  # species 004
    by_id = api.post("/api/v1/search/", {"image_id": image.pk, "limit": 3}, format="json").json()
    assert by_id["query"]["image"]["id"] == image.pk and by_id["query"]["name"] == ""
    ids = [r["image"]["id"] for r in by_id["results"]]
    assert image.pk not in ids and {Image.objects.get(pk=i).original_name[:3] for i in ids} == {"004"}
    for url in (f"http://testserver/images/{image.pk}/", f"/api/v1/images/{image.pk}/", image.display_url, image.thumbnail.url):
        by_url = api.post("/api/v1/search/", {"image_url": url, "limit": 3}, format="json").json()
        assert [r["image"]["id"] for r in by_url["results"]] == ids, url
    by_get = api.get(f"/api/v1/images/{image.pk}/similar/", {"limit": 3, "metric": "inner_product"}).json()
    assert by_get["metric"] == "inner_product" and len(by_get["results"]) == 3


@pytest.mark.parametrize(
    ("data", "name", "status", "code"),
    [
        (b"", "empty.jpg", 400, "empty_file"),
        (b"just some notes\n" * 20, "notes.jpg", 400, "not_an_image"),
        (photo_bytes()[:800], "cut.jpg", 400, "not_an_image"),
        (photo_bytes(size=(1600, 1200)), "big.jpg", 400, "too_many_pixels"),
        (photo_bytes(size=(999, 999), fmt="BMP"), "heavy.bmp", 413, "too_large"),
    ],
    ids=["empty", "text-as-jpg", "truncated", "too-many-pixels", "too-many-bytes"],
)
def test_search_with_a_bad_photo_says_why(api: APIClient, settings, data: bytes, name: str, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "MAX_PIXELS": 1_000_000, "MAX_UPLOAD_BYTES": 2_000_000}
    response = api.post("/api/v1/search/", {"file": _file(data, name)}, format="multipart")
    assert response.status_code == status
    error = _error(response)
    assert error["code"] == code and error["message"]


@pytest.mark.parametrize(
    ("data", "code", "field"),
    [
        ({"limit": 5}, "missing_file", "file"),
        ({"image_id": 1, "metric": "manhattan"}, "unknown_metric", "metric"),
        ({"image_id": 1, "limit": 0}, "invalid_parameter", "limit"),
        ({"image_id": 1, "limit": "many"}, "invalid_parameter", "limit"),
        ({"image_id": 1, "metric": "euclidean", "min_score": 0.5}, "invalid_parameter", "min_score"),
        ({"image_id": 1, "image_url": "/images/1/"}, "invalid_parameter", "image_url"),
    ],
    ids=[
        "nothing-to-search-with",
        "unknown-metric",
        "limit-zero",
        "limit-not-a-number",
        "min-score-with-distance",
        "two-queries",
    ],
)
def test_search_parameters_are_checked(api: APIClient, data: dict[str, Any], code: str, field: str) -> None:
    response = api.post("/api/v1/search/", data, format="json")
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == code and field in error["fields"] and error["message"].startswith(field)


def test_search_by_unknown_hidden_or_waiting_image(api: APIClient, catalog: list[Image]) -> None:
    assert _error(api.post("/api/v1/search/", {"image_id": 999999}, format="json"))["code"] == "not_found"
    catalog_services.images_set_visibility(image_ids=[catalog[0].pk], visibility="hidden")
    response = api.get(f"/api/v1/images/{catalog[0].pk}/similar/")
    assert response.status_code == 404 and _error(response)["code"] == "not_found"
    elsewhere = api.post("/api/v1/search/", {"image_url": "https://example.com/cat.jpg"}, format="json")
    assert elsewhere.status_code == 400 and _error(elsewhere)["code"] == "unknown_image_url"
    waiting = catalog_services.image_create(file=_file(photo_bytes(seed=5), "new.jpg"), queue=False)
    response = api.get(f"/api/v1/images/{waiting.pk}/similar/")
    assert response.status_code == 409 and _error(response)["code"] == "image_not_ready"


def test_search_on_an_empty_catalog_finds_nothing(api: APIClient) -> None:
    response = api.post("/api/v1/search/", {"file": _file(photo_bytes(), "q.jpg")}, format="multipart")
    assert response.status_code == 200 and response.json()["results"] == []


# ---------------------------------------------------------------- upload and status


def test_upload_with_a_token_returns_the_status_url(authed: APIClient, user: User, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = authed.post(
            "/api/v1/images/", {"file": _file(photo_bytes(seed=1), "red.jpg"), "title": "Red"}, format="multipart"
        )
    assert response.status_code == 202, response.content
    body = response.json()
    image = Image.objects.get()
    assert body["id"] == image.pk and image.uploaded_by == user and image.title == "Red"
    assert body["status"] == "pending" and response["Location"] == body["status_url"]
    assert authed.get(body["status_url"]).json() == {"id": image.pk, "status": "pending", "reason": "", "done": False}
    for callback in callbacks:
        callback()
    assert authed.get(body["status_url"]).json()["status"] == "ready"
    assert authed.get(body["status_url"]).json()["done"] is True


def test_upload_with_a_session(client, user: User) -> None:  # type: ignore[no-untyped-def]
    client.force_login(user)
    response = client.post("/api/v1/images/", {"file": _file(photo_bytes(seed=2), "b.jpg")})
    assert response.status_code == 202 and Image.objects.get().uploaded_by == user


def test_upload_errors(api: APIClient, authed: APIClient, settings, media_files) -> None:  # type: ignore[no-untyped-def]
    anonymous = api.post("/api/v1/images/", {"file": _file(photo_bytes(), "a.jpg")}, format="multipart")
    assert anonymous.status_code == 401 and _error(anonymous)["code"] == "not_authenticated"
    assert anonymous["WWW-Authenticate"] == "Token"
    wrong = APIClient()
    wrong.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    bad_token = wrong.post("/api/v1/images/", {"file": _file(photo_bytes(), "a.jpg")}, format="multipart")
    assert bad_token.status_code == 401 and _error(bad_token)["code"] == "authentication_failed"

    missing = authed.post("/api/v1/images/", {"title": "no file"}, format="multipart")
    assert missing.status_code == 400 and _error(missing)["code"] == "missing_file"
    not_image = authed.post("/api/v1/images/", {"file": _file(b"%PDF-1.4 hello", "doc.pdf")}, format="multipart")
    assert not_image.status_code == 400 and _error(not_image)["code"] == "not_an_image"
    as_json = authed.post("/api/v1/images/", {"file": "not a file"}, format="json")
    assert as_json.status_code == 400 and _error(as_json)["code"] == "invalid_parameter"
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "MAX_UPLOAD_BYTES": 2_000}
    large = authed.post("/api/v1/images/", {"file": _file(photo_bytes(), "large.jpg")}, format="multipart")
    assert large.status_code == 413 and _error(large)["code"] == "too_large"
    assert Image.objects.count() == 0 and media_files() == []


def test_duplicate_upload_points_at_the_existing_image(authed: APIClient) -> None:
    data = photo_bytes(seed=7)
    first = authed.post("/api/v1/images/", {"file": _file(data, "one.jpg")}, format="multipart").json()
    again = authed.post("/api/v1/images/", {"file": _file(data, "copy.jpg")}, format="multipart")
    assert again.status_code == 409
    error = _error(again)
    assert error["code"] == "duplicate" and "already in the catalog" in error["message"]
    assert error["existing"] == {"id": first["id"], "url": first["url"], "page_url": first["page_url"]}


def test_token_endpoint(api: APIClient, user: User) -> None:
    token = api.post("/api/v1/auth/token/", {"username": "ann", "password": "a long passphrase"}, format="json").json()["token"]
    assert Token.objects.get(user=user).key == token
    wrong = api.post("/api/v1/auth/token/", {"username": "ann", "password": "guess"}, format="json")
    assert wrong.status_code == 400 and _error(wrong)["code"] == "invalid_credentials"


# ---------------------------------------------------------------- list and detail


def test_list_is_paginated_published_only_and_filters_by_tag(api: APIClient, catalog: list[Image]) -> None:
    catalog_services.images_set_visibility(image_ids=[catalog[0].pk], visibility="hidden")
    page = api.get("/api/v1/images/", {"page_size": 5}).json()
    assert page["count"] == len(catalog) - 1 and len(page["results"]) == 5 and page["previous"] is None
    seen = [r["id"] for r in page["results"]]
    while page["next"]:
        page = api.get(page["next"]).json()
        seen += [r["id"] for r in page["results"]]
    assert sorted(seen) == sorted(im.pk for im in catalog[1:])
    orange = api.get("/api/v1/images/", {"tag": "orange"}).json()
    assert {r["original_name"][:3] for r in orange["results"]} == {"001"} and orange["count"] == 3
    assert all(r["tags"] == ["orange"] for r in orange["results"])
    beyond = api.get("/api/v1/images/", {"page": 99})
    assert beyond.status_code == 404 and _error(beyond)["code"] == "not_found"


def test_detail_hides_unpublished_images_from_the_public(api: APIClient, catalog: list[Image], user: User) -> None:
    image = catalog[0]
    body = api.get(f"/api/v1/images/{image.pk}/").json()
    assert body["id"] == image.pk and body["page_url"] == f"http://testserver/images/{image.pk}/"
    assert api.get(body["file_url"]).status_code == 200
    catalog_services.images_set_visibility(image_ids=[image.pk], visibility="hidden")
    for path in (f"/api/v1/images/{image.pk}/", f"/api/v1/images/{image.pk}/status/"):
        response = api.get(path)
        assert response.status_code == 404 and _error(response)["code"] == "not_found"
    # The staff flag alone is not enough: staff who may view images in the admin see it.
    flag_only = APIClient()
    flag_only.force_authenticate(User.objects.create_user("flag", is_staff=True))
    assert flag_only.get(f"/api/v1/images/{image.pk}/").status_code == 404
    editor = User.objects.create_user("ed", is_staff=True)
    editor.user_permissions.add(Permission.objects.get(codename="view_image"))
    staff = APIClient()
    staff.force_authenticate(editor)
    assert staff.get(f"/api/v1/images/{image.pk}/").status_code == 200


def test_unknown_paths_and_methods_answer_in_json(api: APIClient) -> None:
    missing = api.get("/api/v1/nothing/here/")
    assert missing.status_code == 404 and _error(missing)["code"] == "not_found"
    wrong_method = api.delete("/api/v1/search/")
    assert wrong_method.status_code == 405 and _error(wrong_method)["code"] == "method_not_allowed"
    wrong_type = api.post("/api/v1/search/", b"<xml/>", content_type="application/xml")
    assert wrong_type.status_code == 415 and _error(wrong_type)["code"] == "unsupported_media_type"
    bad_json = api.post("/api/v1/search/", b"{not json", content_type="application/json")
    assert bad_json.status_code == 400 and _error(bad_json)["code"] == "parse_error"


# ---------------------------------------------------------------- schema and docs


def test_schema_describes_every_endpoint(api: APIClient) -> None:
    response = api.get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert set(schema["paths"]) == {
        "/api/v1/auth/token/",
        "/api/v1/images/",
        "/api/v1/images/{id}/",
        "/api/v1/images/{id}/similar/",
        "/api/v1/images/{id}/status/",
        "/api/v1/search/",
        "/api/v1/search/words/",
    }
    assert {"get", "post"} <= set(schema["paths"]["/api/v1/search/"])
    upload = schema["paths"]["/api/v1/images/"]["post"]
    assert {"202", "400", "401", "409", "413"} <= set(upload["responses"])
    assert {"tokenAuth", "cookieAuth"} <= set(schema["components"]["securitySchemes"])


def test_docs_page_uses_local_assets(client) -> None:  # type: ignore[no-untyped-def]
    html = client.get("/api/v1/docs/").content.decode()
    assert "swagger-ui" in html and "/static/drf_spectacular_sidecar/" in html
    assert "cdn" not in html.lower() and "https://" not in html


def test_untitled_uploads_carry_the_same_title_as_their_page(api: APIClient, client) -> None:  # type: ignore[no-untyped-def]
    untitled = catalog_services.image_create(
        file=_file(photo_bytes(seed=21), "meadow.jpg"), original_name="meadow.jpg", queue=False
    )
    titled = catalog_services.image_create(
        file=_file(photo_bytes(seed=22), "x.jpg"), original_name="x.jpg", title="Blue morning", queue=False
    )
    rows = {r["id"]: r for r in api.get("/api/v1/images/").json()["results"]}
    assert (rows[untitled.pk]["title"], rows[untitled.pk]["given_title"], rows[untitled.pk]["original_name"]) == (
        "meadow.jpg",
        "",
        "meadow.jpg",
    )
    assert (rows[titled.pk]["title"], rows[titled.pk]["given_title"]) == ("Blue morning", "Blue morning")
    for image in (untitled, titled):
        page = client.get(rows[image.pk]["page_url"]).content.decode()
        assert f"<h1>{rows[image.pk]['title']}</h1>" in page
    schema = api.get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()
    fields = schema["components"]["schemas"]["Image"]["properties"]
    assert "uploaded file's name" in fields["title"]["description"] and "empty when none" in fields["given_title"]["description"]


def test_redoc_page_names_no_other_site(api: APIClient) -> None:
    response = api.get("/api/v1/redoc/")
    body = response.content.decode()
    assert response.status_code == 200 and "fonts.googleapis.com" not in body and "fonts.gstatic.com" not in body
    assert "default-src 'self'" in response["Content-Security-Policy"]
    schema = api.get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()
    assert not [p for p in schema["paths"] if "redoc" in p or "docs" in p]


def test_every_refusal_carries_a_stable_code_not_inferred_from_its_message() -> None:
    """Pages and the API map codes; a reworded message changes no code."""
    from gallery.api.views import rejection_code
    from gallery.errors import ApplicationError, ImageRejected

    assert rejection_code(ImageRejected("Die Datei ist leer.", code="empty_file")) == "empty_file"
    assert rejection_code(ImageRejected("The file is empty.")) == "not_an_image"  # the message is never read
    assert issubclass(ImageRejected, ApplicationError)
