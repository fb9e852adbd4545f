"""Search by words, by a region of a photo, and with filters: labels stored in the same
pass as the embedding, the backfill job, the selectors and the API with its errors."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image as PILImage
from rest_framework.test import APIClient

from gallery.catalog import services as catalog_services
from gallery.catalog.models import Image, ImageLabel, Tag
from gallery.errors import SearchRejected
from gallery.search import words as search_words
from gallery.search.selectors import Box, SearchFilters
from gallery.vision.lexicon import lexicon

pytestmark = pytest.mark.django_db

CALTECH = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "caltech101-subset30" / "images"
# Three photos each of: a dog breed, birds, fruit, vehicles and two other things.
CLASSES = ("dalmatian", "flamingo", "rooster", "strawberry", "airplanes", "Motorbikes", "accordion", "laptop")


def caltech(name: str, count: int = 3, start: int = 0) -> list[Path]:
    found = sorted((CALTECH / name).glob("*.jpg"))[start : start + count]
    if len(found) < count:
        pytest.fail(f"the evaluation set is missing at {CALTECH}")
    return found


def _add(path: Path, *, user: User | None = None) -> Image:
    with open(path, "rb") as f:
        return catalog_services.image_create(
            file=f, original_name=f"{path.parent.name}-{path.name}", queue=False, uploaded_by=user
        )


def _embed(images: list[Image]) -> None:
    while Image.objects.exclude(status=Image.Status.READY).exists():
        pending = Image.objects.exclude(status=Image.Status.READY).order_by("pk").first()
        assert pending is not None
        catalog_services.images_embed_batch(image_id=pending.pk)


@pytest.fixture
def uploader() -> User:
    return User.objects.create_user("ann", password="a long passphrase")


@pytest.fixture
def catalog(uploader: User) -> dict[str, list[Image]]:
    """Three photos of each class, the dalmatians uploaded by ann, the rest anonymously."""
    images = {name: [_add(p, user=uploader if name == "dalmatian" else None) for p in caltech(name)] for name in CLASSES}
    _embed([im for group in images.values() for im in group])
    return images


def _classes_of(hits: list, catalog: dict[str, list[Image]]) -> list[str]:  # type: ignore[type-arg]
    where = {im.pk: name for name, group in catalog.items() for im in group}
    return [where[h.image.pk] for h in hits]


def _file(path: Path | bytes, name: str = "query.jpg") -> io.BytesIO:
    f = io.BytesIO(path if isinstance(path, bytes) else path.read_bytes())
    f.name = name
    return f


# ---------------------------------------------------------------- labels


def test_the_worker_stores_each_images_top_labels_with_readable_names(catalog: dict[str, list[Image]]) -> None:
    names = lexicon().classes
    for image in catalog["accordion"] + catalog["strawberry"]:
        labels = list(ImageLabel.objects.filter(image=image).order_by("rank"))
        assert len(labels) == 10
        assert labels[0].confidence >= labels[-1].confidence
    top = {names[ImageLabel.objects.get(image=im, rank=0).class_index].name for im in catalog["accordion"]}
    assert top == {"accordion"}
    assert search_words.image_labels(image=catalog["strawberry"][0])[0][0] == "strawberry"


def test_the_backfill_labels_an_existing_catalog_and_can_be_run_again(catalog: dict[str, list[Image]]) -> None:
    ImageLabel.objects.all().delete()
    kept = catalog["flamingo"][0]
    assert not ImageLabel.objects.exists()
    call_command("label_catalog", "--foreground", "--batch-size", "5", stdout=io.StringIO())
    assert ImageLabel.objects.values("image").distinct().count() == Image.objects.count()
    before = list(ImageLabel.objects.filter(image=kept).values_list("class_index", "confidence"))
    out = io.StringIO()
    call_command("label_catalog", "--foreground", stdout=out)
    assert "Labelled 0 images" in out.getvalue()
    assert list(ImageLabel.objects.filter(image=kept).values_list("class_index", "confidence")) == before
    assert search_words.search_by_words(text="flamingo").hits[0].image in catalog["flamingo"]


# ---------------------------------------------------------------- words


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("accordion", {"accordion"}),
        ("strawberries", {"strawberry"}),
        ("dog", {"dalmatian"}),
        ("bird", {"flamingo", "rooster"}),
        ("fruit", {"strawberry"}),
    ],
)
def test_words_find_their_photos_first(catalog: dict[str, list[Image]], words: str, expected: set[str]) -> None:
    wanted = sum(len(catalog[c]) for c in expected)
    found = _classes_of(search_words.search_by_words(text=words, limit=wanted).hits, catalog)
    assert set(found) == expected, found


def test_a_broader_word_ranks_every_narrower_kind_above_the_rest(catalog: dict[str, list[Image]]) -> None:
    found = _classes_of(search_words.search_by_words(text="vehicle", limit=12).hits, catalog)
    assert set(found[:4]) <= {"airplanes", "Motorbikes"}, found


def test_unknown_and_empty_words_are_refused_with_a_clear_message(catalog: dict[str, list[Image]]) -> None:
    with pytest.raises(SearchRejected) as empty:
        search_words.search_by_words(text="   ")
    assert empty.value.code == "empty_query"
    with pytest.raises(SearchRejected) as unknown:
        search_words.search_by_words(text="flamngo qwxz")
    assert unknown.value.code == "unknown_words"
    assert "No photo is labelled" in str(unknown.value)
    with pytest.raises(SearchRejected) as long:
        search_words.search_by_words(text="bird " * 60)
    assert long.value.code == "query_too_long"


def test_words_the_search_does_not_know_are_reported_beside_the_results(catalog: dict[str, list[Image]]) -> None:
    found = search_words.search_by_words(text="flamingo standing in water", limit=3)
    assert found.understood == ["flamingo"]
    assert "standing" in found.query.unknown
    assert set(_classes_of(found.hits, catalog)) == {"flamingo"}


# ---------------------------------------------------------------- filters


def test_filters_combine_tags_dates_and_uploader(catalog: dict[str, list[Image]], uploader: User) -> None:
    red = Tag.objects.create(name="red")
    red.images.set([catalog["flamingo"][0], catalog["strawberry"][0], catalog["rooster"][1]])
    pink = Tag.objects.create(name="pink")
    pink.images.set([catalog["flamingo"][0], catalog["flamingo"][1]])
    both = search_words.search_by_words(text="bird", filters=SearchFilters(tags=("red", "pink"))).hits
    assert [h.image for h in both] == [catalog["flamingo"][0]]
    only_red = search_words.search_by_words(text="bird", filters=SearchFilters(tags=("red",))).hits
    assert {h.image.pk for h in only_red} == {catalog["flamingo"][0].pk, catalog["rooster"][1].pk}

    mine = search_words.search_by_words(text="animal", filters=SearchFilters(uploaded_by=uploader.pk), limit=20).hits
    assert {h.image.pk for h in mine} == {im.pk for im in catalog["dalmatian"]}

    old = catalog["rooster"][0]
    Image.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=30))
    today = timezone.now().date()
    recent = search_words.search_by_words(text="rooster", filters=SearchFilters(date_from=today - timedelta(days=1))).hits
    assert old.pk not in {h.image.pk for h in recent} and recent
    earlier = search_words.search_by_words(text="bird", filters=SearchFilters(date_to=today - timedelta(days=10))).hits
    assert [h.image.pk for h in earlier] == [old.pk]


def test_one_per_group_keeps_one_of_a_photos_copies(catalog: dict[str, list[Image]]) -> None:
    original = caltech("accordion", 1)[0]
    for quality, size in ((70, 0.9), (50, 0.8)):  # the same photo, smaller and re-encoded: other bytes
        with PILImage.open(original) as picture:
            out = io.BytesIO()
            picture.resize((int(picture.width * size), int(picture.height * size))).save(out, format="JPEG", quality=quality)
        catalog_services.image_create(
            file=_file(out.getvalue(), f"copy-{quality}.jpg"), original_name=f"copy-{quality}.jpg", queue=False
        )
    _embed([])
    plain = search_words.search_by_words(text="accordion", limit=5).hits
    grouped = search_words.search_by_words(text="accordion", limit=5, filters=SearchFilters(one_per_group=True)).hits
    assert len(plain) == 5 and len(grouped) == 3
    copies = [h for h in grouped if h.image.original_name.startswith("copy") or h.image.pk == catalog["accordion"][0].pk]
    assert len(copies) == 1


# ---------------------------------------------------------------- region


def _collage(paths: list[Path], side: int = 320) -> PILImage.Image:
    """A 2x2 collage: top left, top right, bottom left, bottom right."""
    canvas = PILImage.new("RGB", (2 * side, 2 * side), "white")
    for i, p in enumerate(paths):
        with PILImage.open(p) as picture:
            canvas.paste(picture.convert("RGB").resize((side, side)), ((i % 2) * side, (i // 2) * side))
    return canvas


def test_a_region_of_a_collage_finds_the_photo_in_it() -> None:
    from gallery.search.selectors import search_by_region

    catalog = {name: [_add(p) for p in caltech(name, 3, start=3)] for name in CLASSES}
    _embed([])
    collage = _collage([caltech(n, 1)[0] for n in ("accordion", "flamingo", "laptop", "strawberry")])
    where = {im.pk: name for name, group in catalog.items() for im in group}
    for box, name in (("0,0,0.5,0.5", "accordion"), ("0.5,0,1,0.5", "flamingo"), ("0.5,0.5,1,1", "strawberry")):
        hits = search_by_region(picture=collage, box=Box.parse(box), limit=3)
        assert [where[h.image.pk] for h in hits][:2] == [name, name], (box, [where[h.image.pk] for h in hits])


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("0,0,1", "invalid_box"),
        ("a,b,c,d", "invalid_box"),
        ("nan,0,1,1", "invalid_box"),
        ("0.5,0.5,0.2,0.9", "invalid_box"),
        ("-0.1,0,0.5,0.5", "box_outside_image"),
        ("0,0,1.5,1", "box_outside_image"),
    ],
)
def test_a_bad_box_is_refused(text: str, code: str) -> None:
    with pytest.raises(SearchRejected) as refused:
        Box.parse(text)
    assert refused.value.code == code


def test_a_box_too_small_to_search_with_is_refused() -> None:
    with pytest.raises(SearchRejected) as refused:
        Box.parse("0,0,0.01,0.01").crop(PILImage.new("RGB", (640, 480)))
    assert refused.value.code == "box_too_small"


# ---------------------------------------------------------------- API


def test_api_searches_by_words_with_get_and_post(catalog: dict[str, list[Image]]) -> None:
    api = APIClient()
    got = api.get("/api/v1/search/", {"q": "dogs", "limit": 3})
    assert got.status_code == 200, got.content
    body = got.json()
    assert body["query"]["understood"] == ["dog"]
    assert {r["image"]["id"] for r in body["results"]} == {im.pk for im in catalog["dalmatian"]}
    posted = api.post("/api/v1/search/", {"q": "flamingo", "limit": 2, "tags": ""}, format="json")
    assert posted.status_code == 200
    assert {r["image"]["id"] for r in posted.json()["results"]} <= {im.pk for im in catalog["flamingo"]}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"q": ""}, "empty_query"),
        ({"q": "zzyzx blorft"}, "unknown_words"),
        ({"q": "bird", "date_from": "2030-01-02", "date_to": "2030-01-01"}, "invalid_date"),
        ({"q": "bird", "date_from": "yesterday"}, "invalid_parameter"),
        ({"q": "bird", "limit": "1000"}, "invalid_parameter"),
        ({"q": "x" * 1001}, "invalid_parameter"),
    ],
)
def test_api_words_errors(catalog: dict[str, list[Image]], params: dict[str, str], code: str) -> None:
    got = APIClient().get("/api/v1/search/", params)
    assert got.status_code == 400
    assert got.json()["error"]["code"] == code
    assert got.json()["error"]["message"]


def test_api_unknown_words_come_with_suggestions(catalog: dict[str, list[Image]]) -> None:
    got = APIClient().get("/api/v1/search/", {"q": "flamngo"})
    assert got.status_code == 400
    assert "flamingo" in got.json()["error"]["suggestions"]


def test_api_mine_needs_a_signed_in_user(catalog: dict[str, list[Image]], uploader: User) -> None:
    api = APIClient()
    assert api.get("/api/v1/search/", {"q": "animal", "mine": "true"}).status_code == 401
    api.force_authenticate(uploader)
    got = api.get("/api/v1/search/", {"q": "animal", "mine": "true"})
    assert {r["image"]["id"] for r in got.json()["results"]} == {im.pk for im in catalog["dalmatian"]}


def test_api_searches_a_region_of_a_photo_and_of_a_catalog_image(catalog: dict[str, list[Image]]) -> None:
    api = APIClient()
    collage = _collage([caltech(n, 1, start=5)[0] for n in ("laptop", "accordion", "rooster", "airplanes")])
    out = io.BytesIO()
    collage.save(out, format="JPEG")
    got = api.post("/api/v1/search/", {"file": _file(out.getvalue()), "box": "0.5,0,1,0.5", "limit": 2}, format="multipart")
    assert got.status_code == 200, got.content
    assert got.json()["query"]["box"] == "0.5,0,1,0.5"
    assert {r["image"]["id"] for r in got.json()["results"]} <= {im.pk for im in catalog["accordion"]}

    image = catalog["flamingo"][0]
    region = api.post("/api/v1/search/", {"image_id": image.pk, "box": "0.1,0.1,0.9,0.9", "limit": 2}, format="json")
    assert region.status_code == 200
    assert {r["image"]["id"] for r in region.json()["results"]} <= {im.pk for im in catalog["flamingo"]}


@pytest.mark.parametrize(
    ("box", "code"), [("0,0,2,2", "box_outside_image"), ("1,2", "invalid_box"), ("0,0,0.001,0.001", "box_too_small")]
)
def test_api_refuses_a_bad_box(catalog: dict[str, list[Image]], box: str, code: str) -> None:
    api = APIClient()
    got = api.post("/api/v1/search/", {"file": _file(caltech("laptop", 1)[0]), "box": box}, format="multipart")
    assert got.status_code == 400
    assert got.json()["error"]["code"] == code
    by_image = api.post("/api/v1/search/", {"image_id": catalog["laptop"][0].pk, "box": box}, format="json")
    assert by_image.status_code == 400
    assert by_image.json()["error"]["code"] == code
    assert api.post("/api/v1/search/", {"q": "bird", "box": "0,0,1,1"}, format="json").status_code == 400


def test_api_suggests_words_as_one_types() -> None:
    api = APIClient()
    got = api.get("/api/v1/search/words/", {"prefix": "butter"})
    assert got.status_code == 200
    assert got.json()["words"][0] == "butterfly"
    assert "monarch butterfly" in got.json()["words"]
    assert api.get("/api/v1/search/words/", {"prefix": "zzzq"}).json()["words"] == []
    assert api.get("/api/v1/search/words/", {"prefix": "b" * 101}).status_code == 400
    assert api.get("/api/v1/search/words/", {"prefix": "b", "limit": "50"}).status_code == 400


# ---------------------------------------------------------------- curators


@pytest.fixture
def editor() -> Client:
    from django.contrib.auth.models import Permission

    user = User.objects.create_user("editor", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="gallery"))
    client = Client()
    client.force_login(user)
    return client


def test_curators_promote_labels_to_tags_in_bulk(editor: Client, catalog: dict[str, list[Image]]) -> None:
    chosen = catalog["accordion"] + catalog["strawberry"]
    data = {"action": "promote_labels", "_selected_action": [im.pk for im in chosen]}
    form = editor.post(reverse("admin:gallery_image_changelist"), data, follow=True).content.decode()
    assert "Promote labels of 6 images to tags" in form
    assert not Tag.objects.exists()  # nothing changes before the form is sent
    refused = editor.post(reverse("admin:gallery_image_changelist"), {**data, "post": "yes", "min_confidence": "0"}, follow=True)
    assert "Ensure this value is greater than or equal to 1" in refused.content.decode() and not Tag.objects.exists()
    done = editor.post(reverse("admin:gallery_image_changelist"), {**data, "post": "yes", "min_confidence": "50"}, follow=True)
    assert "6 images tagged with their labels at least 50% sure." in done.content.decode()
    assert set(Image.objects.filter(tags__name="accordion").values_list("pk", flat=True)) == {
        im.pk for im in catalog["accordion"]
    }
    assert set(Image.objects.filter(tags__name="strawberry").values_list("pk", flat=True)) == {
        im.pk for im in catalog["strawberry"]
    }
    again = editor.post(reverse("admin:gallery_image_changelist"), {**data, "post": "yes", "min_confidence": "50"}, follow=True)
    assert "0 images tagged" in again.content.decode()
    # The new tags filter words search at once.
    hits = search_words.search_by_words(text="fruit", filters=SearchFilters(tags=("strawberry",))).hits
    assert {h.image.pk for h in hits} == {im.pk for im in catalog["strawberry"]}


def test_the_catalog_page_starts_the_labels_job(
    editor: Client, catalog: dict[str, list[Image]], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    ImageLabel.objects.filter(image__in=catalog["laptop"]).delete()
    page = editor.get(reverse("admin:gallery_image_catalog")).content.decode()
    assert "Label images" in page
    with django_capture_on_commit_callbacks(execute=True):
        editor.post(reverse("admin:gallery_image_catalog"), {"kind": "labels"}, follow=True)
    assert ImageLabel.objects.filter(image__in=catalog["laptop"]).count() == 30
    assert search_words.search_by_words(text="laptop", limit=3).hits[0].image in catalog["laptop"]


def test_the_detail_page_shows_labels_that_link_to_words_search(client: Client, catalog: dict[str, list[Image]]) -> None:
    page = client.get(reverse("gallery:detail", args=[catalog["accordion"][0].pk])).content.decode()
    assert "Looks like:" in page and f"{reverse('gallery:search_words')}?q=accordion" in page
    words = client.get(reverse("gallery:search_words"), {"q": "accordion", "limit": 3})
    assert words.status_code == 200
    assert {h.image.pk for h in words.context["hits"]} == {im.pk for im in catalog["accordion"]}
    region = client.get(reverse("gallery:search_region", args=[catalog["accordion"][0].pk]), {"box": "0,0,2,1"})
    assert region.status_code == 400 and "outside the picture" in region.content.decode()
