"""The editors' admin: list, detail with similar images, edits, bulk actions, access."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from gallery import services
from gallery.models import CatalogJob, Embedding, Image, ReducedVector

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
            images.append(services.image_create(file=f, original_name=p.name, queue=False))
    services.images_embed_batch(image_id=images[0].pk)
    return [Image.objects.get(pk=im.pk) for im in images]


def _act(client: Client, action: str, images: list[Image]):  # type: ignore[no-untyped-def]
    return client.post(reverse(CHANGELIST), {"action": action, "_selected_action": [im.pk for im in images]}, follow=True)


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
    services.image_fail(image=catalog[0], reason="The file is damaged or truncated.")
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
        response = _act(editor, "delete_images", gone)
    assert "2 images deleted." in response.content.decode()
    assert not Image.objects.filter(pk__in=[im.pk for im in gone]).exists()
    assert not Embedding.objects.filter(image_id__in=[im.pk for im in gone]).exists()
    assert len(media_files()) == before - 6  # original, display copy and thumbnail each
    assert _gallery_ids(editor) == {im.pk for im in catalog[2:]}
    assert "delete_selected" not in editor.get(reverse(CHANGELIST)).content.decode()


def test_retry_failed_and_reembed_actions_queue_work_that_completes(
    editor: Client, catalog: list[Image], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    services.image_fail(image=catalog[0], reason="The database was locked.")
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
    from gallery import selectors

    return selectors.similar_to_image(image=image, limit=20)


def test_catalog_page_starts_a_refit_and_shows_its_progress(
    editor: Client, catalog: list[Image], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        response = editor.post(reverse("admin:gallery_image_catalog"), {"kind": "refit"}, follow=True)
    assert "Refit PCA #1 started." in response.content.decode()
    html = editor.get(reverse("admin:gallery_image_catalog")).content.decode()
    assert "Done" in html and f"{len(catalog)} / {len(catalog)}" in html
    assert ReducedVector.objects.count() == len(catalog)
    refused = editor.post(reverse("admin:gallery_image_catalog"), {"kind": "reembed", "backbone": "vgg16"}, follow=True)
    assert "Unknown backbone" in refused.content.decode()
    assert CatalogJob.objects.count() == 1
