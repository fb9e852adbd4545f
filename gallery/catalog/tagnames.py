"""Tag names for a page of image cards, in one query.

Django's prefetch of a many-to-many relation builds a queryset per image to hold its
result; for the ten to a hundred cards of a result page that cost more than the search.
Cards only show the names, so they are read as (image, name) rows and kept on each image.
"""

from __future__ import annotations

from collections.abc import Iterable

from gallery.catalog.models import Image, Tag


def attach(images: Iterable[Image]) -> None:
    """Set `image.tag_names` (sorted) on each of `images`."""
    by_id = {image.pk: image for image in images}
    for image in by_id.values():
        image.tag_names = []
    if not by_id:
        return
    rows = Tag.images.through.objects.filter(image_id__in=list(by_id)).order_by("tag__name").values_list("image_id", "tag__name")
    for image_id, name in rows:
        by_id[image_id].tag_names.append(name)


def names_of(image: Image) -> list[str]:
    """`image`'s tag names: those attached, else its (prefetched) tags."""
    names = getattr(image, "tag_names", None)
    return names if names is not None else [t.name for t in image.tags.all()]
