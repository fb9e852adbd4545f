"""A tag filter combines with similarity search: "similar to this, tagged poster"."""

from __future__ import annotations

import pytest
from django.urls import reverse

from gallery.catalog import services as catalog_services
from gallery.catalog.models import Image
from gallery.curation import services as curation_services
from gallery.search import selectors as search_selectors

pytestmark = pytest.mark.django_db


def test_similar_to_this_tagged_poster(client, butterflies) -> None:  # type: ignore[no-untyped-def]
    paths = [p for group in list(butterflies.values())[:4] for p in group[:3]]  # 12 photos, 4 species
    images = []
    for p in paths:
        with open(p, "rb") as f:
            images.append(catalog_services.image_create(file=f, original_name=p.name, queue=False))
    catalog_services.images_embed_batch(image_id=images[0].pk)
    query, sibling, far, hidden = images[0], images[2], images[10], images[1]
    for image in (sibling, far, hidden):
        curation_services.image_set_tags(image=image, names=["poster"])
    catalog_services.images_set_visibility(image_ids=[hidden.pk], visibility="hidden")

    hits = search_selectors.similar_to_image(image=query, tag="poster")
    assert [h.image.pk for h in hits] == [sibling.pk, far.pk]  # same species first; hidden never
    untagged = search_selectors.similar_to_image(image=query)
    assert len(untagged) == 10 and hidden.pk not in {h.image.pk for h in untagged}

    page = client.get(reverse("gallery:detail", args=[query.pk]) + "?tag=poster")
    assert [h.image.pk for h in page.context["similar"]] == [sibling.pk, far.pk]
    assert {im.pk for im in client.get(reverse("gallery:index") + "?tag=Poster").context["page"].object_list} == {
        sibling.pk,
        far.pk,
    }
    assert search_selectors.similar_to_image(image=query, tag="no such tag") == []
    assert Image.objects.get(pk=sibling.pk).tags.get().name == "poster"


def test_the_filters_list_of_tags_follows_every_change_and_is_read_once(client, butterflies, django_assert_num_queries) -> None:  # type: ignore[no-untyped-def]
    """Every page reads the tags in use; they come from the cache until an editor tags,
    untags, hides, publishes, renames or deletes, and then the next page shows the change."""
    from django.core.cache import cache

    from gallery.catalog import selectors as catalog_selectors
    from gallery.catalog.models import Tag

    images = []
    for p in butterflies["001"][:3]:
        with open(p, "rb") as f:
            images.append(catalog_services.image_create(file=f, original_name=p.name, queue=False))
    first, second, third = images

    def shown() -> list[str]:
        return list(client.get(reverse("gallery:search")).context["tags"])

    assert shown() == []
    curation_services.image_set_tags(image=first, names=["poster", "wing"])
    curation_services.image_set_tags(image=second, names=["wing"])
    assert shown() == ["poster", "wing"]
    with django_assert_num_queries(0):
        assert catalog_selectors.tags_in_use() == ["poster", "wing"]

    catalog_services.images_set_visibility(image_ids=[first.pk], visibility="hidden")
    assert shown() == ["wing"]
    catalog_services.images_set_visibility(image_ids=[first.pk], visibility="published")
    assert shown() == ["poster", "wing"]
    curation_services.images_remove_tags(image_ids=[first.pk], names=["poster"])
    assert shown() == ["wing"]
    curation_services.images_add_tags(image_ids=[third.pk], names=["poster"])  # a tag that exists, unused
    assert shown() == ["poster", "wing"]
    curation_services.image_set_tags(image=third, names=["moth"])
    assert shown() == ["moth", "wing"]
    tag = Tag.objects.get(name="moth")
    tag.name = "night moth"
    tag.save()
    assert shown() == ["night moth", "wing"]
    tag.delete()
    assert shown() == ["wing"]
    # A change the signals miss (a bulk update) shows once the shared cache starts afresh
    # (restarted, flushed): no process keeps its own copy of an old list.
    Tag.objects.filter(name="wing").update(name="wings")
    assert shown() == ["wing"]
    cache.clear()
    assert shown() == ["wings"]
    for image in (first, second):
        image.delete()
    assert shown() == []


def test_a_page_of_cards_reads_its_tags_in_one_query(make_photo, django_assert_num_queries) -> None:  # type: ignore[no-untyped-def]
    from django.core.files.uploadedfile import SimpleUploadedFile

    from gallery.catalog import tagnames

    images = [
        catalog_services.image_create(
            file=SimpleUploadedFile(f"p{i}.jpg", make_photo(seed=i), "image/jpeg"), original_name=f"p{i}.jpg", queue=False
        )
        for i in range(6)
    ]
    curation_services.image_set_tags(image=images[0], names=["wings", "Spring show", "a&b"])
    curation_services.image_set_tags(image=images[3], names=["wings"])
    fresh = list(Image.objects.filter(pk__in=[im.pk for im in images]).order_by("pk"))
    with django_assert_num_queries(1):
        tagnames.attach(fresh)
    assert [im.tag_names for im in fresh] == [["Spring show", "a&b", "wings"], [], [], ["wings"], [], []]
    # The same names as the tags themselves give, for an image without them attached.
    assert tagnames.names_of(Image.objects.get(pk=images[0].pk)) == fresh[0].tag_names
