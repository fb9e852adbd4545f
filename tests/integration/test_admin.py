"""The editors' admin: list, detail with similar images, edits, bulk actions, access."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from gallery.catalog import services as catalog_services
from gallery.catalog.models import Embedding, Image
from gallery.curation import services as curation_services
from gallery.curation.models import CatalogJob
from gallery.search import selectors as search_selectors
from gallery.search import services as search_services
from gallery.search.models import ReducedVector

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:gallery_image_changelist"


@pytest.fixture
def editor(client: Client) -> Client:
    """A staff member with the gallery's permissions (not a superuser)."""
    user = User.objects.create_user("editor", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="gallery"))
    client.force_login(user)
    return client


@pytest.fixture
def catalog(butterflies) -> list[Image]:  # type: ignore[no-untyped-def]
    """Two photos of each of three species, embedded."""
    paths: list[Path] = [p for group in list(butterflies.values())[:3] for p in group[:2]]
    images = []
    for p in paths:
        with open(p, "rb") as f:
            images.append(catalog_services.image_create(file=f, original_name=p.name, queue=False))
    catalog_services.images_embed_batch(image_id=images[0].pk)
    return [Image.objects.get(pk=im.pk) for im in images]


def _act(client: Client, action: str, images: list[Image], **extra: str):  # type: ignore[no-untyped-def]
    data = {"action": action, "_selected_action": [im.pk for im in images], **extra}
    return client.post(reverse(CHANGELIST), data, follow=True)


def _gallery_ids(client: Client, query: str = "") -> set[int]:
    page = client.get(reverse("gallery:index") + query)
    return {im.pk for im in page.context["page"].object_list}


def test_non_staff_are_refused_everywhere(client: Client, catalog: list[Image]) -> None:
    urls = [
        reverse(CHANGELIST),
        reverse("admin:gallery_image_change", args=[catalog[0].pk]),
        reverse("admin:gallery_image_near_duplicates"),
        reverse("admin:gallery_image_catalog"),
    ]
    for who in (None, User.objects.create_user("visitor", password="pw")):
        if who is not None:
            client.force_login(who)
        for url in urls:
            response = client.get(url)
            assert response.status_code == 302 and "/login/" in response["Location"], url
        response = client.post(reverse(CHANGELIST), {"action": "delete_images", "_selected_action": [catalog[0].pk]})
        assert response.status_code == 302 and "/login/" in response["Location"]
        response = client.post(reverse("admin:gallery_image_catalog"), {"kind": "refit"})
        assert response.status_code == 302 and "/login/" in response["Location"]
    assert Image.objects.count() == len(catalog)
    assert not CatalogJob.objects.exists()


def test_list_shows_thumbnails_status_reasons_and_filters(editor: Client, catalog: list[Image]) -> None:
    catalog_services.image_fail(image=catalog[0], reason="The file is damaged or truncated.")
    page = editor.get(reverse(CHANGELIST)).content.decode()
    assert page.count("/media/thumbnails/") == len(catalog)
    assert "The file is damaged or truncated." in page
    assert "efficientnet_lite0" in page
    failed = editor.get(reverse(CHANGELIST) + "?status__exact=failed")
    assert [im.pk for im in failed.context["cl"].result_list] == [catalog[0].pk]
    by_checksum = editor.get(reverse(CHANGELIST) + f"?q={catalog[3].checksum}")
    assert [im.pk for im in by_checksum.context["cl"].result_list] == [catalog[3].pk]
    by_backbone = editor.get(reverse(CHANGELIST) + "?backbone=resnet50")
    assert list(by_backbone.context["cl"].result_list) == []


def test_detail_page_has_a_large_preview_and_the_most_similar_images(editor: Client, catalog: list[Image]) -> None:
    page = editor.get(reverse("admin:gallery_image_change", args=[catalog[0].pk]))
    html = page.content.decode()
    assert catalog[0].display.url in html  # the metadata-free copy; the original is private
    sibling = catalog[1]  # the other photo of the same species
    similar_section = html.rsplit("Most similar", 1)[1]
    first_link = similar_section.split('href="', 1)[1].split('"', 1)[0]
    assert first_link == reverse("admin:gallery_image_change", args=[sibling.pk])


def test_title_and_tags_are_edited_in_admin_and_shown_in_the_gallery(editor: Client, catalog: list[Image]) -> None:
    url = reverse("admin:gallery_image_change", args=[catalog[0].pk])
    response = editor.post(
        url, {"title": "Monarch on thistle", "tags_text": "Poster, monarch ,poster", "visibility": "published"}
    )
    assert response.status_code == 302
    image = Image.objects.get(pk=catalog[0].pk)
    assert image.title == "Monarch on thistle"
    assert sorted(image.tags.values_list("name", flat=True)) == ["monarch", "poster"]
    public = Client()
    html = public.get(reverse("gallery:index")).content.decode()
    assert "Monarch on thistle" in html and "?tag=poster" in html
    assert _gallery_ids(public, "?tag=poster") == {image.pk}
    too_long = editor.post(url, {"title": "x", "tags_text": "y" * 80, "visibility": "published"})
    assert too_long.status_code == 200 and "longer than 64" in too_long.content.decode()
    assert Image.objects.get(pk=image.pk).title == "Monarch on thistle"


def test_hide_and_publish_actions_report_counts_and_change_the_gallery(editor: Client, catalog: list[Image]) -> None:
    response = _act(editor, "hide", catalog[:2])
    assert "2 images hidden." in response.content.decode()
    assert set(Image.objects.filter(visibility="hidden").values_list("pk", flat=True)) == {catalog[0].pk, catalog[1].pk}
    assert _gallery_ids(editor) == {im.pk for im in catalog[2:]}
    response = _act(editor, "hide", catalog[:3])
    assert "1 image hidden." in response.content.decode()  # two were hidden already
    response = _act(editor, "publish", catalog[:3])
    assert "3 images published." in response.content.decode()
    assert _gallery_ids(editor) == {im.pk for im in catalog}


def test_delete_action_removes_files_vectors_and_gallery_entries(
    editor: Client, catalog: list[Image], media_files, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    gone = catalog[:2]
    before = len(media_files())
    with django_capture_on_commit_callbacks(execute=True):
        confirm = _act(editor, "delete_images", gone)
    # Nothing goes before the editor confirms: a page lists what will be removed.
    html = confirm.content.decode()
    assert "Delete 2 images?" in html and "Yes, delete 2 images" in html
    assert all(im.thumbnail.url in html for im in gone) and catalog[2].thumbnail.url not in html
    assert "thumbnail" in html and "embeddings" in html
    assert Image.objects.count() == len(catalog) and len(media_files()) == before
    with django_capture_on_commit_callbacks(execute=True):
        response = _act(editor, "delete_images", gone, post="yes")
    assert "2 images deleted." in response.content.decode()
    assert not Image.objects.filter(pk__in=[im.pk for im in gone]).exists()
    assert not Embedding.objects.filter(image_id__in=[im.pk for im in gone]).exists()
    assert len(media_files()) == before - 6  # original, display copy and thumbnail each
    assert _gallery_ids(editor) == {im.pk for im in catalog[2:]}
    assert "delete_selected" not in editor.get(reverse(CHANGELIST)).content.decode()


def test_retry_failed_and_reembed_actions_queue_work_that_completes(
    editor: Client, catalog: list[Image], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    catalog_services.image_fail(image=catalog[0], reason="The database was locked.")
    assert catalog[0].pk not in {h.image.pk for h in services_similar(catalog[1])}
    with django_capture_on_commit_callbacks(execute=True):
        response = _act(editor, "retry_failed", catalog[:3])  # only one of them failed
    assert "1 image queued again." in response.content.decode()
    assert Image.objects.get(pk=catalog[0].pk).status == Image.Status.READY
    assert catalog[0].pk in {h.image.pk for h in services_similar(catalog[1])}
    Embedding.objects.filter(image=catalog[2]).delete()  # a vector lost or made by an old model
    with django_capture_on_commit_callbacks(execute=True):
        response = _act(editor, "reembed", [catalog[2]])
    assert "1 image queued for embedding." in response.content.decode()
    assert Embedding.objects.filter(image=catalog[2]).count() == 1
    assert Image.objects.get(pk=catalog[2].pk).status == Image.Status.READY


def services_similar(image: Image):  # type: ignore[no-untyped-def]
    return search_selectors.similar_to_image(image=image, limit=20)


def test_catalog_page_starts_a_refit_and_shows_its_progress(
    editor: Client, catalog: list[Image], django_capture_on_commit_callbacks, settings
) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "PCA_MIN_IMAGES": 6, "PCA_DIMS": 4}
    with django_capture_on_commit_callbacks(execute=True):
        response = editor.post(reverse("admin:gallery_image_catalog"), {"kind": "refit"}, follow=True)
    assert "Refit PCA #1 started." in response.content.decode()
    html = editor.get(reverse("admin:gallery_image_catalog")).content.decode()
    assert "Done" in html and f"{len(catalog)} / {len(catalog)}" in html
    assert ReducedVector.objects.count() == len(catalog)
    refused = editor.post(reverse("admin:gallery_image_catalog"), {"kind": "reembed", "backbone": "vgg16"}, follow=True)
    assert "Unknown backbone" in refused.content.decode()
    assert CatalogJob.objects.count() == 1


def test_delete_confirmation_cancel_and_refusals_delete_nothing(
    client: Client, editor: Client, catalog: list[Image], media_files
) -> None:  # type: ignore[no-untyped-def]
    before = len(media_files())
    page = _act(editor, "delete_images", catalog[:1]).content.decode()
    cancel = page.split("No, take me back", 1)[0].rsplit('href="', 1)[1].split('"', 1)[0]
    assert editor.get(cancel).status_code == 200 and cancel.startswith(reverse(CHANGELIST))
    # An editor who may change but not delete images never reaches the page.
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__in=["view_image", "change_image"]))
    client.force_login(viewer)
    assert "delete_images" not in client.get(reverse(CHANGELIST)).content.decode()
    response = _act(client, "delete_images", catalog, post="yes")
    assert response.status_code == 200 and "No action selected" in response.content.decode()
    assert Image.objects.count() == len(catalog) and len(media_files()) == before


def test_bulk_tags_are_added_and_removed_through_a_form_with_counts(editor: Client, catalog: list[Image]) -> None:
    curation_services.image_set_tags(image=catalog[0], names=["poster"])
    form = _act(editor, "add_tags", catalog[:3]).content.decode()
    assert "Add tags to 3 images" in form and all(im.thumbnail.url in form for im in catalog[:3])
    assert not Image.objects.filter(tags__name="monarch").exists()  # nothing changes before the form is sent
    bad = _act(editor, "add_tags", catalog[:3], post="yes", tags="x" * 70).content.decode()
    assert "longer than 64 characters" in bad and "Add tags to 3 images" in bad
    empty = _act(editor, "add_tags", catalog[:3], post="yes", tags=" , ;").content.decode()
    assert "Type at least one tag." in empty
    first = _act(editor, "add_tags", catalog[:3], post="yes", tags="poster").content.decode()
    assert "2 images tagged poster." in first  # the first image had it already
    done = _act(editor, "add_tags", catalog[:3], post="yes", tags="Monarch, poster").content.decode()
    assert "3 images tagged monarch, poster." in done
    again = _act(editor, "add_tags", catalog[:3], post="yes", tags="poster").content.decode()
    assert "0 images tagged poster." in again
    tagged = {im.pk for im in Image.objects.filter(tags__name="poster")}
    assert tagged == {im.pk for im in catalog[:3]}
    assert _gallery_ids(Client(), "?tag=monarch") == {im.pk for im in catalog[:3]}
    removed = _act(editor, "remove_tags", catalog[1:], post="yes", tags="monarch").content.decode()
    assert "2 images no longer tagged monarch." in removed
    assert set(Image.objects.filter(tags__name="monarch").values_list("pk", flat=True)) == {catalog[0].pk}
    # The list shows the tags in a column that wraps instead of clipping them.
    listing = editor.get(reverse(CHANGELIST)).content.decode()
    assert 'class="tag-list"' in listing and "white-space:normal" in listing and "monarch, poster" in listing


def test_refit_is_refused_below_the_minimum_and_never_fits_fewer_dimensions(
    editor: Client, catalog: list[Image], settings
) -> None:  # type: ignore[no-untyped-def]
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from gallery.models import Reduction

    page = editor.get(reverse("admin:gallery_image_catalog")).content.decode()
    assert "at least 12 ready images; it has 6" in page and ">Refit PCA</button>" not in page
    refused = editor.post(reverse("admin:gallery_image_catalog"), {"kind": "refit"}, follow=True).content.decode()
    assert "Refitting PCA needs at least 12 ready images; the catalog has 6." in refused
    with pytest.raises(CommandError, match="needs at least 12 ready images; the catalog has 6"):
        call_command("refit", foreground=True)
    assert not CatalogJob.objects.exists()
    # More dimensions than the catalog can give are refused as well (6 images span 5).
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "PCA_MIN_IMAGES": 2, "PCA_DIMS": 8}
    assert "at least 9 ready images; it has 6" in editor.get(reverse("admin:gallery_image_catalog")).content.decode()
    assert search_services.reduction_fit(backbone="efficientnet_lite0") is None
    assert not Reduction.objects.exists()


def test_catalog_page_offers_only_backbones_that_load_here(editor: Client, catalog: list[Image], settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    page = editor.get(reverse("admin:gallery_image_catalog")).content.decode()
    assert "<option>resnet50</option>" not in page and "Start re-embedding" in page
    assert "<option>efficientnet_lite1</option>" in page and "<option>efficientnet_lite2</option>" in page
    unavailable = page.split('class="unavailable-backbones"', 1)[1].split("</ul>", 1)[0]
    assert "resnet50" in unavailable and "IMAGESEARCH_RESNET50_WEIGHTS" in unavailable
    refused = editor.post(reverse("admin:gallery_image_catalog"), {"kind": "reembed", "backbone": "resnet50"}, follow=True)
    text = refused.content.decode()
    assert "esnet50 cannot be used on this machine" in text and "IMAGESEARCH_RESNET50_WEIGHTS" in text
    assert "URL fetch failure" not in text and "http" not in text.split("esnet50 cannot be used", 1)[1].split("</li>", 1)[0]
    # A weights file that exists but is not one: refused without the library's message.
    broken = tmp_path / "resnet50.h5"
    broken.write_bytes(b"not weights")
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "RESNET50_WEIGHTS": str(broken)}
    page = editor.get(reverse("admin:gallery_image_catalog")).content.decode()
    assert "<option>resnet50</option>" in page
    refused = editor.post(reverse("admin:gallery_image_catalog"), {"kind": "reembed", "backbone": "resnet50"}, follow=True)
    message = refused.content.decode().split("esnet50 cannot be used on this machine", 1)[1].split("</li>", 1)[0]
    assert "its weights could not be loaded" in message and "Traceback" not in message and "h5py" not in message
    assert not CatalogJob.objects.exists()
    from gallery.catalog import pipeline

    assert pipeline.catalog_state().target_backbone == ""


def test_catalog_page_offers_the_catalogs_own_network_when_the_pooling_setting_differs(
    editor: Client, catalog: list[Image], settings
) -> None:  # type: ignore[no-untyped-def]
    page = editor.get(reverse("admin:gallery_image_catalog")).content.decode()
    assert "GeM pooling, p = 3" in page and "<option>efficientnet_lite0</option>" not in page
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "GEM_P": 2.0}
    page = editor.get(reverse("admin:gallery_image_catalog")).content.decode()
    assert "GeM pooling, p = 3" in page and "GeM, p = 2 (IMAGESEARCH_GEM_P)" in page
    assert "<option>efficientnet_lite0</option>" in page
    assert "over the whole map (IMAGESEARCH_CENTRE_REGION)" in page
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "CENTRE_REGION": True}  # the product's default pooling
    page = editor.get(reverse("admin:gallery_image_catalog")).content.decode()
    assert "over the whole map and its centre (IMAGESEARCH_CENTRE_REGION)" in page
    assert "<option>efficientnet_lite0</option>" in page
    started = editor.post(
        reverse("admin:gallery_image_catalog"), {"kind": "reembed", "backbone": "efficientnet_lite0"}, follow=True
    )
    assert "started" in started.content.decode()
    job = CatalogJob.objects.get()
    assert job.backbone == "efficientnet_lite0-gem2-centre"


def test_scores_are_shown_with_three_decimals(editor: Client, catalog: list[Image], settings) -> None:  # type: ignore[no-untyped-def]
    from gallery.models import CopyMatch, MatchDecision, ProtectedWork

    work = ProtectedWork.objects.create(file="protected/w.jpg", title="Work", rights_holder="Studio", checksum="c" * 64, width=10, height=10)  # fmt: skip
    match = CopyMatch.objects.create(work=work, image=catalog[0], score=0.8765432109876543, found_by="upload check")
    MatchDecision.objects.create(match=match, action="note", score=0.8765432109876543)
    listing = editor.get(reverse("admin:gallery_copymatch_changelist")).content.decode()
    detail = editor.get(reverse("admin:gallery_copymatch_change", args=[match.pk])).content.decode()
    for html in (listing, detail):
        assert "0.877" in html and "0.8765432" not in html
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "PCA_MIN_IMAGES": 6}
    assert search_services.reduction_fit(backbone="efficientnet_lite0", dims=4) is not None
    reductions = editor.get(reverse("admin:gallery_reduction_changelist")).content.decode()
    assert re.search(r">\d{1,3}\.\d%<", reductions)
