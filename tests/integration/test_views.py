"""The browser flows: upload, live status, gallery, more-like-this, search by photo."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from gallery.catalog import services as catalog_services
from gallery.catalog.models import Image, Tag
from gallery.curation import services as curation_services
from tests.conftest import photo_bytes

pytestmark = pytest.mark.django_db


def _file(data: bytes, name: str) -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


def _catalog(paths) -> list[Image]:  # type: ignore[no-untyped-def]
    images = []
    for p in paths:
        with open(p, "rb") as f:
            images.append(catalog_services.image_create(file=f, original_name=p.name, queue=False))
    catalog_services.images_embed_batch(image_id=images[0].pk)
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
    existing = catalog_services.image_create(file=_file(photo_bytes(seed=9), "old.jpg"), queue=False)
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
        catalog_services.image_create(file=_file(photo_bytes(seed=i), f"p{i}.jpg"), title=f"picture {i}", queue=False)
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
        # The preview is sent once; the compare view takes it from the page's picture.
        assert response.content.decode().count("data:image/jpeg;base64,") == 1
    assert (Image.objects.count(), media_files()) == before


def _preview(response) -> bytes:  # type: ignore[no-untyped-def]
    page = response.content.decode()
    start = page.index("data:image/jpeg;base64,") + len("data:image/jpeg;base64,")
    return base64.b64decode(page[start : page.index('"', start)])


def test_the_query_preview_shows_the_photo_upright_and_without_its_metadata(client, butterflies) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image as PILImage

    _catalog(butterflies["001"][:3] + butterflies["005"][:3])
    photo = PILImage.open(butterflies["005"][10]).convert("RGB")
    exif = PILImage.Exif()
    exif[0x010F] = "Camera maker"
    for orientation, shown_size in ((1, photo.size), (6, photo.size[::-1])):
        exif[0x0112] = orientation
        sent = io.BytesIO()
        photo.save(sent, format="JPEG", quality=90, exif=exif, comment=b"taken at home")
        response = client.post(
            reverse("gallery:search"), {"file": _file(sent.getvalue(), "mine.jpg"), "metric": "cosine", "limit": 5}
        )
        assert response.status_code == 200
        preview = _preview(response)
        assert b"Camera maker" not in preview and b"taken at home" not in preview
        with PILImage.open(io.BytesIO(preview)) as shown:
            assert shown.size == shown_size and not shown.getexif().get(0x0112)
            if orientation == 1:  # a web-sized upright JPEG is shown as it was sent, not encoded again
                assert np.array_equal(np.asarray(shown), np.asarray(PILImage.open(sent)))


def test_a_phone_sized_photo_finds_itself_and_its_region(client, butterflies) -> None:  # type: ignore[no-untyped-def]
    # Queries are decoded no larger than the preview and the network need, catalog photos
    # at the working size: the same big photo must still find itself first.
    from PIL import Image as PILImage

    def big(path, size=(4032, 3024)) -> bytes:  # type: ignore[no-untyped-def]
        with PILImage.open(path) as im:
            out = io.BytesIO()
            im.convert("RGB").resize(size, PILImage.Resampling.LANCZOS).save(out, "JPEG", quality=90)
            return out.getvalue()

    photo = big(butterflies["005"][10])
    images = _catalog(butterflies["001"][:3] + butterflies["008"][:3])
    own = catalog_services.image_create(file=_file(photo, "phone.jpg"), original_name="phone.jpg", queue=False)
    catalog_services.images_embed_batch(image_id=own.pk)
    assert len(images) == 6
    response = client.post(reverse("gallery:search"), {"file": _file(photo, "phone.jpg"), "metric": "cosine", "limit": 3})
    assert response.status_code == 200
    hits = response.context["hits"]
    assert hits[0].image.pk == own.pk and hits[0].score > 0.99
    preview = response.context["query_preview"].split(",", 1)[1]
    with PILImage.open(io.BytesIO(base64.b64decode(preview))) as shown:
        assert shown.size == (640, 480)
    # A region of it, small enough that it needs more of the photo's pixels than the whole does.
    region = client.post(
        reverse("gallery:search"),
        {"file": _file(photo, "phone.jpg"), "metric": "cosine", "limit": 3, "box": "0.3,0.3,0.5,0.5"},
    )
    assert region.status_code == 200 and region.context["region"]
    assert len(region.context["hits"]) == 3
    preview = region.context["query_preview"].split(",", 1)[1]
    with PILImage.open(io.BytesIO(base64.b64decode(preview))) as shown:
        assert shown.size == (403, 302)  # a fifth of the photo at the working size (2016: half of 4032), not of its preview


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
    assert catalog_services.images_set_visibility(image_ids=[images[1].pk], visibility="hidden") == 1
    assert catalog_services.images_set_visibility(image_ids=[images[1].pk], visibility="hidden") == 0
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


# ---------------------------------------------------------------- my uploads, hidden photos


def _mine(user, n: int) -> list[Image]:  # type: ignore[no-untyped-def]
    return [
        catalog_services.image_create(file=_file(photo_bytes(seed=100 + i), f"mine{i}.jpg"), uploaded_by=user, queue=False)
        for i in range(n)
    ]


def test_my_uploads_lists_every_own_photo_with_status_and_visibility(user_client, user, django_user_model, settings) -> None:  # type: ignore[no-untyped-def]
    pending, failed, ready, hidden = _mine(user, 4)
    stranger = django_user_model.objects.create_user("stranger", password="x" * 12)
    catalog_services.image_create(file=_file(photo_bytes(seed=7), "theirs.jpg"), uploaded_by=stranger, queue=False)
    Image.objects.filter(pk=failed.pk).update(status=Image.Status.FAILED, status_reason="The picture could not be decoded.")
    Image.objects.filter(pk__in=[ready.pk, hidden.pk]).update(status=Image.Status.READY)
    catalog_services.images_set_visibility(
        image_ids=[hidden.pk], visibility="hidden", reason="Hidden after copyright review: matches “Sunset” by Ann"
    )
    response = user_client.get(reverse("gallery:my_uploads"))
    assert response.status_code == 200
    body = response.content.decode()
    assert [im.pk for im in response.context["page"].object_list] == [hidden.pk, ready.pk, failed.pk, pending.pk]
    assert "theirs.jpg" not in body
    assert body.count(">Pending<") == 1 and body.count(">Failed<") == 1 and body.count(">Ready<") == 2
    assert "Analysis failed: The picture could not be decoded." in body
    assert ">Hidden after copyright review: matches “Sunset” by Ann<" in body
    assert body.count(">Hidden<") == 1 and body.count(">Published<") == 3

    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "GALLERY_PAGE_SIZE": 3}
    first = user_client.get(reverse("gallery:my_uploads")).content.decode()
    second = user_client.get(reverse("gallery:my_uploads"), {"page": 2}).content.decode()
    assert "mine3.jpg" in first and "mine0.jpg" not in first and "Page 1 of 2" in first
    assert "mine0.jpg" in second and "mine3.jpg" not in second
    assert user_client.get(reverse("gallery:my_uploads"), {"page": "junk"}).status_code == 200


def test_my_uploads_is_in_the_navigation_and_needs_an_account(user_client) -> None:  # type: ignore[no-untyped-def]
    client = Client()
    link = f'href="{reverse("gallery:my_uploads")}"'
    assert link in user_client.get(reverse("gallery:index")).content.decode()
    assert "You have not uploaded any photos yet." in user_client.get(reverse("gallery:my_uploads")).content.decode()
    assert link not in client.get(reverse("gallery:index")).content.decode()
    anonymous = client.get(reverse("gallery:my_uploads"))
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("login"))


def test_owner_sees_why_their_photo_is_hidden_and_nobody_else_sees_it(user_client, user, django_user_model) -> None:  # type: ignore[no-untyped-def]
    client = Client()
    [photo] = _mine(user, 1)
    url = reverse("gallery:detail", args=[photo.pk])
    assert "hidden from the public gallery" not in user_client.get(url).content.decode()
    catalog_services.images_set_visibility(
        image_ids=[photo.pk], visibility="hidden", reason="Hidden after copyright review: a copy"
    )
    owner = user_client.get(url)
    assert owner.status_code == 200
    assert "This photo is hidden from the public gallery: Hidden after copyright review: a copy" in owner.content.decode()
    assert client.get(url).status_code == 404
    other = django_user_model.objects.create_user("other", password="x" * 12)
    client.force_login(other)
    assert client.get(url).status_code == 404
    # Nor do the status endpoint and the upload-status page give it away.
    ids = {"ids": str(photo.pk)}
    assert client.get(reverse("gallery:status_json"), ids).json() == {"images": []}
    assert "mine0.jpg" not in client.get(reverse("gallery:upload_status"), ids).content.decode()
    assert [row["id"] for row in user_client.get(reverse("gallery:status_json"), ids).json()["images"]] == [photo.pk]


# ---------------------------------------------------------------- empty states say why


def test_gallery_with_an_unknown_tag_says_no_image_has_it(client) -> None:  # type: ignore[no-untyped-def]
    empty = client.get(reverse("gallery:index"), {"tag": "nonexistent"}).content.decode()
    assert "The catalog is empty." in empty
    catalog_services.image_create(file=_file(photo_bytes(), "p.jpg"), queue=False)
    body = client.get(reverse("gallery:index"), {"tag": "nonexistent"}).content.decode()
    assert "The catalog is empty" not in body
    assert "No images are tagged “nonexistent”." in body and f'<a href="{reverse("gallery:index")}">Show all images</a>' in body


def test_search_and_similar_with_an_unknown_tag_say_no_image_has_it(client, butterflies) -> None:  # type: ignore[no-untyped-def]
    images = _catalog(butterflies["003"][:3])
    curation_services.image_set_tags(image=images[1], names=["poster"])
    with open(butterflies["003"][5], "rb") as f:
        response = client.post(reverse("gallery:search"), {"file": f, "metric": "cosine", "limit": 5, "tag": "nonexistent"})
    body = response.content.decode()
    assert response.status_code == 200 and "no searchable images yet" not in body
    assert "No searchable images are tagged “nonexistent”." in body and "tags in use: poster" in body
    detail = client.get(reverse("gallery:detail", args=[images[0].pk]), {"tag": "nonexistent"}).content.decode()
    assert "No other images yet" not in detail and "No other images are tagged “nonexistent”." in detail
    assert "Show similar images with any tag" in detail


def test_search_while_photos_are_still_analysed_says_nothing_is_searchable_yet(client) -> None:  # type: ignore[no-untyped-def]
    catalog_services.image_create(file=_file(photo_bytes(seed=3), "waiting.jpg"), queue=False)
    response = client.post(
        reverse("gallery:search"), {"file": _file(photo_bytes(), "q.jpg"), "metric": "cosine", "limit": 5, "tag": "x"}
    )
    assert "The catalog has no searchable images yet." in response.content.decode()


def test_search_page_reads_the_database_a_fixed_number_of_times(client, butterflies) -> None:  # type: ignore[no-untyped-def]
    """Tags of every hit come in one query: twelve results cost what three do."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    images = _catalog(butterflies["001"][:6] + butterflies["005"][:6])
    tag = Tag.objects.create(name="wings")
    for image in images:
        image.tags.add(tag)
    counts = []
    for limit in (3, 12, 3):
        with open(butterflies["005"][10], "rb") as f, CaptureQueriesContext(connection) as ctx:
            response = client.post(reverse("gallery:search"), {"file": f, "metric": "cosine", "limit": limit})
        assert response.status_code == 200 and len(response.context["hits"]) == limit
        assert response.content.decode().count(">wings</a>") == limit
        counts.append(len(ctx.captured_queries))
    assert counts[1] == counts[2]
