"""Reads of the catalog: statuses, the gallery, a user's uploads, who may see what."""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO

from django.db.models import Q, QuerySet

from gallery.catalog import tagcache
from gallery.catalog.models import Image, Tag
from gallery.search.selectors import EMPTY_CATALOG, EMPTY_NO_MATCH, EMPTY_TAG


def image_statuses(*, ids: Iterable[int], user: object = None) -> list[dict[str, object]]:
    """Analysis statuses of the images among `ids` that `user` may open (a hidden image's
    status would tell a stranger that it exists)."""
    rows = images_visible_to(user=user).filter(pk__in=list(ids)).order_by("pk")
    return [{"id": im.pk, "status": im.status, "reason": im.status_reason} for im in rows]


def gallery_images(*, tag: str = ""):  # type: ignore[no-untyped-def]
    """What the public gallery lists: published images that did not fail (with `tag`)."""
    images = Image.objects.filter(visibility=Image.Visibility.PUBLISHED).exclude(status=Image.Status.FAILED)
    if tag:
        images = images.filter(tags__name=tag.strip().lower())
    return images.prefetch_related("tags").order_by("-created_at", "-id")


def uploads_of(*, user) -> QuerySet[Image]:  # type: ignore[no-untyped-def]
    """Every photo `user` uploaded, whatever its status or visibility, newest first."""
    return Image.objects.filter(uploaded_by=user).prefetch_related("tags").order_by("-created_at", "-id")


def empty_reason(*, tag: str = "", searchable: bool = False, exclude: int | None = None) -> str:
    """Why the public gallery (or, with `searchable`, a search) found nothing for `tag`.

    Searchable images are the published, ready ones; `exclude` leaves out the query image
    of "more like this"."""
    pool = gallery_images()
    if searchable:
        pool = pool.filter(status=Image.Status.READY)
    if exclude is not None:
        pool = pool.exclude(pk=exclude)
    if not pool.exists():
        return EMPTY_CATALOG
    if tag and not pool.filter(tags__name=tag.strip().lower()).exists():
        return EMPTY_TAG
    return EMPTY_NO_MATCH


def tags_in_use() -> list[str]:
    """Tags carried by at least one published image, for the gallery's filter (cached until
    they change: `tagcache`)."""
    return tagcache.cached(_tags_in_use_now)


def _tags_in_use_now() -> list[str]:
    return list(
        Tag.objects.filter(images__visibility=Image.Visibility.PUBLISHED)
        .values_list("name", flat=True)
        .distinct()
        .order_by("name")
    )


def user_sees_hidden_images(user) -> bool:  # type: ignore[no-untyped-def]
    """Staff who may view images in the admin (the permission, not the staff flag alone)."""
    return bool(getattr(user, "is_active", False) and getattr(user, "is_staff", False) and user.has_perm("gallery.view_image"))


def images_visible_to(*, user) -> QuerySet[Image]:  # type: ignore[no-untyped-def]
    """Images a user may open: published ones, their own uploads, everything for staff
    who may view images."""
    images = Image.objects.prefetch_related("tags")
    if user_sees_hidden_images(user):
        return images
    visible = Q(visibility=Image.Visibility.PUBLISHED)
    if getattr(user, "is_authenticated", False):
        visible |= Q(uploaded_by=user)
    return images.filter(visible)


def image_visible_to(*, user, image_id: int) -> bool:  # type: ignore[no-untyped-def]
    """Whether `user` may open the image `image_id` (see `images_visible_to`)."""
    return images_visible_to(user=user).filter(pk=image_id).exists()


def image_picture_visible(*, user, image: Image) -> bool:  # type: ignore[no-untyped-def]
    """Whether `user` may see the picture of `image`: whoever may open the image, and
    copyright reviewers for uploads that are in a copy match."""
    from gallery.access import user_is_copyright_reviewer

    if image_visible_to(user=user, image_id=image.pk):
        return True
    return user_is_copyright_reviewer(user) and image.copy_matches.exists()


def image_picture_open(*, image: Image, kind: str) -> IO[bytes] | None:
    """The display copy or thumbnail of an image, wherever it is now (withheld while the
    image is hidden, in the public media otherwise); None when neither has it."""
    from gallery.storage import picture_open

    return picture_open(image.display if kind == "display" else image.thumbnail)
