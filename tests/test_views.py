"""The browser flows: upload, live status, gallery, more-like-this, search by photo."""

from __future__ import annotations

import io

import pytest
from django.urls import reverse

from gallery import services
from gallery.models import Image

from .conftest import photo_bytes

pytestmark = pytest.mark.django_db


def _file(data: bytes, name: str) -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


def _catalog(paths) -> list[Image]:  # type: ignore[no-untyped-def]
    images = []
    for p in paths:
        with open(p, "rb") as f:
            images.append(services.image_create(file=f, original_name=p.name, queue=False))
    services.images_embed_batch(image_id=images[0].pk)
    return images


def test_multi_file_upload_goes_from_pending_to_ready(user_client, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    files = [_file(photo_bytes(seed=i, color=(50 * i, 100, 150)), f"photo{i}.jpg") for i in range(3)]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = user_client.post(reverse("gallery:upload"), {"files": files, "title": "Holiday"})
    assert response.status_code == 302
    ids = [im.pk for im in Image.objects.order_by("pk")]
    assert len(ids) == 3 and response["Location"].endswith("ids=" + ",".join(map(str, ids)))
    page = user_client.get(response["Location"])
    assert page.content.decode().count("Pending") == 3
    assert "updates by itself" in page.content.decode()
    status = user_client.get(reverse("gallery:status_json"), {"ids": ",".join(map(str, ids))}).json()
    assert {row["status"] for row in status["images"]} == {"pending"}
    for callback in callbacks:
        callback()
    status = user_client.get(reverse("gallery:status_json"), {"ids": ",".join(map(str, ids))}).json()
    assert {row["status"] for row in status["images"]} == {"ready"}
    assert user_client.get(response["Location"]).content.decode().count(">Ready<") == 3
    assert set(Image.objects.values_list("title", flat=True)) == {"Holiday"}


@pytest.mark.parametrize(
    ("data", "name", "message"),
    [
        (b"", "empty.jpg", "empty"),
        (b"just some notes\n" * 20, "notes.jpg", "not an image"),
        (photo_bytes()[:800], "cut.jpg", "damaged or truncated"),
        (photo_bytes(size=(1600, 1200)), "big.jpg", "limit is"),
    ],
    ids=["empty", "text-as-jpg", "truncated", "too-many-pixels"],
)
def test_bad_uploads_get_a_clear_message_and_store_nothing(user_client, settings, media_files, data, name, message) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "MAX_PIXELS": 1_000_000}
    response = user_client.post(reverse("gallery:upload"), {"files": [_file(data, name)]})
    assert response.status_code == 400
    body = response.content.decode()
    assert name in body and message in body
    assert Image.objects.count() == 0 and media_files() == []


def test_file_over_the_size_limit_is_refused(user_client, settings, media_files) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "MAX_UPLOAD_BYTES": 2_000}
    response = user_client.post(reverse("gallery:upload"), {"files": [_file(photo_bytes(), "large.jpg")]})
    assert response.status_code == 400 and "limit" in response.content.decode()
    assert Image.objects.count() == 0 and media_files() == []


def test_good_and_bad_files_together(user_client, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    existing = services.image_create(file=_file(photo_bytes(seed=9), "old.jpg"), queue=False)
    files = [_file(photo_bytes(seed=1), "good.jpg"), _file(b"nope", "bad.png"), _file(photo_bytes(seed=9), "dupe.jpg")]
    response = user_client.post(reverse("gallery:upload"), {"files": files}, follow=True)
    body = response.content.decode()
    assert response.status_code == 200
    assert "bad.png" in body and "dupe.jpg" in body and "already in the catalog" in body
    assert reverse("gallery:detail", args=[existing.pk]) in body
    assert Image.objects.count() == 2


def test_no_file_chosen(user_client) -> None:  # type: ignore[no-untyped-def]
    response = user_client.post(reverse("gallery:upload"), {})
    assert response.status_code == 400 and "Choose at least one photo" in response.content.decode()


def test_gallery_is_paginated(client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "GALLERY_PAGE_SIZE": 2}
    for i in range(3):
        services.image_create(file=_file(photo_bytes(seed=i), f"p{i}.jpg"), title=f"picture {i}", queue=False)
    first = client.get(reverse("gallery:index")).content.decode()
    second = client.get(reverse("gallery:index"), {"page": 2}).content.decode()
    assert "picture 2" in first and "picture 1" in first and "picture 0" not in first
    assert "picture 0" in second and "Page 2 of 2" in second
    assert client.get(reverse("gallery:index"), {"page": "junk"}).status_code == 200


def test_more_like_this_ranks_the_same_species_first(client, butterflies) -> None:  # type: ignore[no-untyped-def]
    monarchs, others = butterflies["001"][:4], butterflies["005"][:4]
    images = _catalog(monarchs + others)
    response = client.get(reverse("gallery:detail", args=[images[0].pk]))
    similar = response.context["similar"]
    assert len(similar) == 7 and images[0] not in [h.image for h in similar]
    assert [h.image.original_name[:3] for h in similar[:3]] == ["001"] * 3
    assert similar[0].score >= similar[-1].score
    euclid = client.get(reverse("gallery:detail", args=[images[0].pk]), {"metric": "euclidean"}).context["similar"]
    assert euclid[0].score <= euclid[-1].score  # distances ascend
    assert euclid[0].image.original_name.startswith("001")


def test_search_by_photo_ranks_without_adding_it(client, butterflies, media_files) -> None:  # type: ignore[no-untyped-def]
    _catalog(butterflies["001"][:4] + butterflies["005"][:4] + butterflies["008"][:4])
    before = (Image.objects.count(), media_files())
    query = butterflies["005"][10]
    for metric in ("cosine", "euclidean", "inner_product"):
        with open(query, "rb") as f:
            response = client.post(reverse("gallery:search"), {"file": f, "metric": metric, "limit": 5})
        assert response.status_code == 200
        hits = response.context["hits"]
        assert len(hits) == 5 and hits[0].image.original_name.startswith("005"), metric
        assert "data:image/jpeg;base64," in response.content.decode()
    assert (Image.objects.count(), media_files()) == before


def test_search_rejects_bad_input(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post(reverse("gallery:search"), {"file": _file(b"text", "x.jpg"), "metric": "cosine", "limit": 5})
    assert response.status_code == 400 and "not an image" in response.content.decode()
    response = client.post(reverse("gallery:search"), {"file": _file(photo_bytes(), "x.jpg"), "metric": "hamming", "limit": 5})
    assert response.status_code == 400


def test_empty_catalog_search_says_so(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post(reverse("gallery:search"), {"file": _file(photo_bytes(), "q.jpg"), "metric": "cosine", "limit": 5})
    assert response.status_code == 200 and "no searchable images" in response.content.decode()


def test_hidden_images_leave_the_gallery_and_search(client, butterflies, admin_client) -> None:  # type: ignore[no-untyped-def]
    images = _catalog(butterflies["002"][:3])
    assert services.images_set_visibility(image_ids=[images[1].pk], visibility="hidden") == 1
    assert services.images_set_visibility(image_ids=[images[1].pk], visibility="hidden") == 0
    gallery = client.get(reverse("gallery:index")).content.decode()
    assert images[1].display_title not in gallery and images[0].display_title in gallery
    similar = client.get(reverse("gallery:detail", args=[images[0].pk])).context["similar"]
    assert [h.image for h in similar] == [images[2]]
    assert client.get(reverse("gallery:detail", args=[images[1].pk])).status_code == 404
    assert admin_client.get(reverse("gallery:detail", args=[images[1].pk])).status_code == 200


def test_upload_answers_json_to_the_page_script(user_client) -> None:  # type: ignore[no-untyped-def]
    """The upload page's script sends one file per request and shows each outcome in place."""
    client = user_client
    data = photo_bytes(seed=11)
    ok = client.post(reverse("gallery:upload"), {"files": [_file(data, "one.jpg")]}, HTTP_ACCEPT="application/json")
    assert ok.status_code == 201
    image = Image.objects.get()
    [row] = ok.json()["images"]
    assert row["id"] == image.pk and row["status"] == "pending" and row["page_url"] == f"/images/{image.pk}/"
    again = client.post(reverse("gallery:upload"), {"files": [_file(data, "copy.jpg")]}, HTTP_ACCEPT="application/json")
    assert again.status_code == 400
    [error] = again.json()["errors"]
    assert error["code"] == "duplicate" and error["name"] == "copy.jpg" and error["existing_url"] == f"/images/{image.pk}/"
    nothing = client.post(reverse("gallery:upload"), {}, HTTP_ACCEPT="application/json")
    assert nothing.status_code == 400 and nothing.json()["errors"][0]["message"] == "Choose at least one photo."
