"""Every hostile or awkward upload of the corpus through the browser upload form (and the
refused ones through search by photo): a clear message and a 4xx, or the stated result."""

from __future__ import annotations

import html

import numpy as np
import pytest
from django.urls import reverse

from gallery.catalog import services as catalog_services
from gallery.catalog.models import Embedding, Image
from tests.support.hostile_uploads import CORPUS, HostileUpload, multipart, oriented_jpeg

pytestmark = pytest.mark.django_db


def test_the_corpus_holds_at_least_thirty_kinds() -> None:
    assert len({c.kind for c in CORPUS}) >= 30
    assert {c.outcome for c in CORPUS} == {"refused", "accepted"}


@pytest.mark.parametrize("case", CORPUS, ids=str)
def test_upload_form(case: HostileUpload, user_client, media_files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    body, content_type = multipart(case.parts(), fields={"title": ""})
    response = user_client.post(reverse("gallery:upload"), data=body, content_type=content_type)
    if case.outcome == "refused":
        assert 400 <= response.status_code < 500, response.status_code
        assert case.message in html.unescape(response.content.decode())
        assert Image.objects.count() == 0 and media_files() == []
    else:
        assert response.status_code == 302, html.unescape(response.content.decode())[-1500:]
        image = Image.objects.get()
        assert case.check is not None
        case.check(image)
        stored = media_files()
        assert len(stored) == 3 and all(p.is_relative_to(tmp_path) for p in stored)
        assert all(image.checksum in p.name for p in stored)  # server-made names only
        page = user_client.get(reverse("gallery:detail", args=[image.pk])).content.decode()
        assert "<img src=x" not in page  # names are escaped wherever shown


@pytest.mark.parametrize("case", [c for c in CORPUS if c.outcome == "refused" and len(c.parts()) == 1], ids=str)
def test_search_form_refuses(case: HostileUpload, client) -> None:  # type: ignore[no-untyped-def]
    ((name, data),) = case.parts()
    body, content_type = multipart([(name, data)], field="file", fields={"metric": "cosine", "limit": "5"})
    response = client.post(reverse("gallery:search"), data=body, content_type=content_type)
    assert response.status_code == 400
    # The search form names its one field differently from the upload form.
    message = {"Choose at least one photo": "This field is required", "The file is empty.": "The submitted file is empty."}.get(
        case.message, case.message
    )
    assert message in html.unescape(response.content.decode())


def test_every_exif_orientation_is_embedded_upright(make_photo) -> None:  # type: ignore[no-untyped-def]
    import io

    images = []
    for o in range(1, 9):
        f = io.BytesIO(oriented_jpeg(o))
        images.append(catalog_services.image_create(file=f, original_name=f"o{o}.jpg", queue=False))
    f = io.BytesIO(make_photo(seed=5, color=(30, 200, 30)))
    other = catalog_services.image_create(file=f, original_name="green.jpg", queue=False)
    catalog_services.images_embed_batch(image_id=images[0].pk)
    vectors = {e.image_id: e.as_array() for e in Embedding.objects.all()}
    assert len(vectors) == 9
    reference = vectors[images[0].pk]
    for image in images[1:]:
        assert float(np.dot(reference, vectors[image.pk])) > 0.97, image.original_name
    assert float(np.dot(reference, vectors[other.pk])) < 0.9


@pytest.mark.parametrize("case", [c for c in CORPUS if len(c.parts()) == 1], ids=str)
def test_json_api_upload(case: HostileUpload, django_user_model, media_files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same corpus through POST /api/v1/images/: a JSON error with a stable code, or the stated result."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    user = django_user_model.objects.create_user("api-uploader", password="a long passphrase")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    body, content_type = multipart(case.parts(), field="file")
    response = client.generic("POST", "/api/v1/images/", body, content_type=content_type)
    if case.outcome == "refused":
        assert 400 <= response.status_code < 500, response.status_code
        error = response.json()["error"]
        assert error["code"] and error["message"]
        assert Image.objects.count() == 0 and media_files() == []
    else:
        assert response.status_code == 202, response.content[:500]
        image = Image.objects.get()
        assert case.check is not None
        case.check(image)
        assert all(image.checksum in p.name for p in media_files())
