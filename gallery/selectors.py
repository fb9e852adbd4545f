"""Reads from the catalog: the search space, similarity search, statuses."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

import numpy as np
from django.conf import settings
from django.db.models import Q, QuerySet
from PIL import Image as PILImage

from . import pipeline
from .catalog_index import PgVectorIndex, space_index
from .catalog_index import catalog_index as catalog_index  # re-exported for tests and commands
from .models import CatalogJob, DuplicateGroup, Embedding, Image, Reduction, Tag
from .services import ImageRejected, read_upload, reduction_load
from .vision.ann import TieredIndex
from .vision.backbones import BACKBONES, Availability, backbone_availability
from .vision.index import Hit, check_metric
from .vision.preprocess import ImageDecodeError


@dataclass(frozen=True)
class SearchHit:
    image: Image
    score: float
    rank: int


@dataclass(frozen=True)
class Space:
    """One consistent embedding space: a backbone and, when fitted, its active PCA."""

    backbone: str
    reduction: Reduction | None

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.backbone, self.reduction.pk if self.reduction else None)

    @property
    def label(self) -> str:
        if self.reduction is None:
            return f"{self.backbone}, raw {self.backbone_dim()}-d"
        return f"{self.backbone}, PCA-{self.reduction.dims} v{self.reduction.version}"

    def backbone_dim(self) -> int:
        from .vision.backbones import SPECS

        spec = SPECS.get(self.backbone)
        return spec.dim if spec else 0

    def project(self, embedding: np.ndarray) -> np.ndarray:
        if self.reduction is None:
            return np.asarray(embedding, dtype=np.float32)
        return reduction_load(self.reduction).transform(np.asarray(embedding)[None])[0]


def active_space() -> Space:
    backbone = pipeline.catalog_state().backbone
    return Space(backbone, Reduction.objects.filter(backbone=backbone, is_active=True).first())


def _hydrate(hits: Iterable[Hit]) -> list[SearchHit]:
    hits = list(hits)
    images = Image.objects.in_bulk([h.id for h in hits])
    return [SearchHit(images[h.id], h.score, rank) for rank, h in enumerate((h for h in hits if h.id in images), 1)]


def search_by_vector(
    *,
    embedding: np.ndarray,
    space: Space | None = None,
    limit: int = 20,
    metric: str = "cosine",
    exclude: int | None = None,
    tag: str = "",
) -> list[SearchHit]:
    """Nearest catalog images to a raw backbone embedding, in the active space,
    optionally only those carrying `tag`."""
    check_metric(metric)
    space = space or active_space()
    index = space_index(backbone=space.backbone, reduction=space.reduction)
    if index is None:
        return []
    query = space.project(embedding)
    if not tag:
        return _hydrate(index.search(query, k=limit, metric=metric, exclude=exclude))
    return _hydrate(_search_tagged(index, query, tag=tag, limit=limit, metric=metric, exclude=exclude))


def similar_to_image(*, image: Image, limit: int = 12, metric: str = "cosine", tag: str = "") -> list[SearchHit]:
    """ "More like this": the image's nearest neighbours, itself excluded."""
    space = active_space()
    embedding = Embedding.objects.filter(image=image, backbone=space.backbone).first()
    if embedding is None:
        return []
    return search_by_vector(embedding=embedding.as_array(), space=space, limit=limit, metric=metric, exclude=image.pk, tag=tag)


def query_decode(*, file: IO[bytes]) -> PILImage.Image:
    """Read and decode a query photo (upright RGB); raises ImageRejected with a message
    for the user."""
    data = read_upload(file)
    try:
        return pipeline.decode(data).image
    except ImageDecodeError as exc:
        raise ImageRejected(str(exc), code=exc.code) from None


def search_by_picture(*, picture: PILImage.Image, limit: int = 20, metric: str = "cosine", tag: str = "") -> list[SearchHit]:
    """Search with a decoded query photo that is embedded here and never stored.

    The space is read once, so the query is embedded with the backbone of the vectors
    it is compared with even when the catalog switches meanwhile."""
    check_metric(metric)
    space = active_space()
    embedding = pipeline.embed_images([picture], backbone=pipeline.backbone_named(space.backbone))[0]
    return search_by_vector(embedding=embedding, space=space, limit=limit, metric=metric, tag=tag)


def search_by_image(*, file: IO[bytes], limit: int = 20, metric: str = "cosine", tag: str = "") -> list[SearchHit]:
    """Search with an uploaded photo that is embedded here and never stored."""
    check_metric(metric)  # before reading the upload
    return search_by_picture(picture=query_decode(file=file), limit=limit, metric=metric, tag=tag)


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


# Why a listing came back empty, as codes the pages put in words.
EMPTY_CATALOG = "empty"  # nothing to list at all
EMPTY_TAG = "tag"  # there are images, but none carries the tag
EMPTY_NO_MATCH = "no_match"  # there are images, yet none was returned


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


def default_metric() -> str:
    return str(settings.IMAGESEARCH["DEFAULT_METRIC"])


# ---- catalog curation ------------------------------------------------------


def _search_tagged(
    index: TieredIndex | PgVectorIndex, query: np.ndarray, *, tag: str, limit: int, metric: str, exclude: int | None
) -> list[Hit]:
    """Top hits among the images carrying `tag`: a growing top-k of the whole index,
    filtered, until enough tagged images are found or the index is exhausted."""
    allowed = set(Tag.objects.filter(name=tag.strip().lower()).values_list("images__pk", flat=True))
    allowed.discard(None)
    if not allowed:
        return []
    k = max(4 * limit, 64)
    while True:
        hits = [h for h in index.search(query, k=k, metric=metric, exclude=exclude) if h.id in allowed]
        if len(hits) >= limit or k >= len(index):
            return hits[:limit]
        k *= 4


def tags_in_use() -> list[str]:
    """Tags carried by at least one published image, for the gallery's filter."""
    return list(
        Tag.objects.filter(images__visibility=Image.Visibility.PUBLISHED)
        .values_list("name", flat=True)
        .distinct()
        .order_by("name")
    )


def catalog_jobs(*, limit: int = 10) -> list[CatalogJob]:
    return list(CatalogJob.objects.all()[:limit])


def backbone_choices() -> dict[str, Availability]:
    """Every backbone with whether its weights load on this machine (cheap, cached)."""
    weights = settings.IMAGESEARCH["RESNET50_WEIGHTS"] or None
    return {name: backbone_availability(name, resnet50_weights=weights) for name in BACKBONES}


def pca_refit_readiness() -> tuple[int, int]:
    """(ready images in the catalog's space, images a PCA fit needs)."""
    from .services import pca_images_needed

    backbone = pipeline.catalog_state().backbone
    count = Embedding.objects.filter(backbone=backbone, image__status=Image.Status.READY).count()
    return count, pca_images_needed()


@dataclass(frozen=True)
class DuplicateGroupView:
    """A near-duplicate group for review: its members, the one suggested to keep and why."""

    group: DuplicateGroup
    images: list[Image]
    suggested: Image
    reason: str


def _keep_key(image: Image) -> tuple[int, int, object, int]:
    # Largest picture, then largest file, then the first upload: re-encoded copies are
    # usually smaller and newer than the original.
    return (-image.width * image.height, -image.size, image.created_at, image.pk)


def duplicate_suggestion(images: list[Image]) -> tuple[Image, str]:
    """The member to keep by default and the reason, e.g. "largest (1200×800), uploaded first"."""
    best = min(images, key=_keep_key)
    others = [im for im in images if im.pk != best.pk]
    pixels = best.width * best.height
    reasons = []
    if all(im.width * im.height < pixels for im in others):
        reasons.append(f"largest ({best.width}×{best.height})")
    else:
        same = [im for im in others if im.width * im.height == pixels]
        reasons.append(f"as large as any ({best.width}×{best.height})")
        if all(im.size < best.size for im in same):
            reasons.append("largest file")
    if all((best.created_at, best.pk) < (im.created_at, im.pk) for im in others):
        reasons.append("uploaded first")
    return best, ", ".join(reasons)


def duplicate_groups() -> list[DuplicateGroupView]:
    """The latest near-duplicate groups, best match first, each with the member to keep
    suggested; members are listed oldest first."""
    views = []
    for group in DuplicateGroup.objects.prefetch_related("images").select_related("job"):
        images = sorted(group.images.all(), key=lambda im: (im.created_at, im.pk))
        if not images:
            continue
        suggested, reason = duplicate_suggestion(images)
        views.append(DuplicateGroupView(group=group, images=images, suggested=suggested, reason=reason))
    return views


# ---------------------------------------------------------------- copyright monitoring

from .models import CopyMatch, MatchDecision, ProtectedWork, WorkSignature  # noqa: E402
from .vision import copydetect  # noqa: E402
from .vision.backbones import Backbone  # noqa: E402


@dataclass(frozen=True)
class LoadedCopyIndex:
    backbone: Backbone
    works: copydetect.CopyIndex


class _CopyIndexCache:
    """The protected works' signatures, loaded once per process and appended to as works
    are registered (new rows by primary key); a removed work triggers a reload."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: str | None = None
        self._index = copydetect.CopyIndex()
        self._last_row = 0

    def get(self) -> LoadedCopyIndex:
        backbone = pipeline.current_backbone()
        rows = WorkSignature.objects.filter(
            backbone=backbone.name, version=copydetect.DESCRIPTOR_VERSION, work__status=ProtectedWork.Status.READY
        )
        with self._lock:
            if self._key != backbone.name:
                self._key, self._index, self._last_row = backbone.name, copydetect.CopyIndex(), 0
            for pk, work_id, data in rows.filter(pk__gt=self._last_row).order_by("pk").values_list("pk", "work_id", "data"):
                self._index.add(work_id, copydetect.WorkSignature.from_bytes(bytes(data)))
                self._last_row = pk
            if len(self._index) != rows.count():
                self._index, self._last_row = copydetect.CopyIndex(), 0
                for pk, work_id, data in rows.order_by("pk").values_list("pk", "work_id", "data"):
                    self._index.add(work_id, copydetect.WorkSignature.from_bytes(bytes(data)))
                    self._last_row = pk
            return LoadedCopyIndex(backbone, self._index)

    def clear(self) -> None:
        with self._lock:
            self._key, self._index, self._last_row = None, copydetect.CopyIndex(), 0


copy_index = _CopyIndexCache()


# Each queue order is a keyset: (field, descending) pairs ending in the primary key.
MATCH_ORDERS: dict[str, tuple[tuple[str, bool], ...]] = {
    "newest": (("created_at", True), ("id", True)),
    "score": (("score", True), ("created_at", True), ("id", True)),
}


def _ordering(order: str) -> list[str]:
    return [("-" if desc else "") + name for name, desc in MATCH_ORDERS.get(order, MATCH_ORDERS["newest"])]


def copy_matches(*, status: str = "", rights_holder: str = "", order: str = "newest") -> QuerySet[CopyMatch]:
    """The review queue: filtered by status and rights holder, newest or highest score first."""
    rows = CopyMatch.objects.select_related("work", "image")
    if status:
        rows = rows.filter(status=status)
    if rights_holder:
        rows = rows.filter(work__rights_holder=rights_holder)
    return rows.order_by(*_ordering(order))


@dataclass(frozen=True)
class QueueNeighbours:
    previous: int | None
    next: int | None
    pending: int


def pending_neighbours(*, match: CopyMatch, rights_holder: str = "", order: str = "newest") -> QueueNeighbours:
    """The pending matches just before and after `match` in the queue's order and filter
    (whatever the status of `match` itself), and how many are pending in all."""
    keys = MATCH_ORDERS.get(order, MATCH_ORDERS["newest"])
    pending = copy_matches(status=str(CopyMatch.Status.PENDING), rights_holder=rights_holder, order=order).exclude(pk=match.pk)

    def beyond(after: bool) -> Q:
        # Rows after `match` in the order (or before it): a lexicographic keyset comparison.
        condition = Q(pk__in=[])
        for i, (name, desc) in enumerate(keys):
            lookup = "lt" if desc == after else "gt"
            step = Q(**{f"{name}__{lookup}": getattr(match, name)})
            for earlier, _ in keys[:i]:
                step &= Q(**{earlier: getattr(match, earlier)})
            condition |= step
        return condition

    following = pending.filter(beyond(True)).values_list("pk", flat=True).first()
    reverse = ["-" + f if not f.startswith("-") else f[1:] for f in _ordering(order)]
    preceding = pending.filter(beyond(False)).order_by(*reverse).values_list("pk", flat=True).first()
    total = copy_matches(status=str(CopyMatch.Status.PENDING), rights_holder=rights_holder).count()
    return QueueNeighbours(previous=preceding, next=following, pending=total)


def match_history(*, match: CopyMatch) -> QuerySet[MatchDecision]:
    return match.decisions.select_related("decided_by").order_by("created_at", "id")


def decisions_audit() -> QuerySet[MatchDecision]:
    """Every review decision ever taken, newest first, including those whose match was
    deleted with its work or upload (they keep a snapshot)."""
    return (
        MatchDecision.objects.select_related("decided_by", "match")
        .defer("work_thumbnail", "image_thumbnail")
        .order_by("-created_at", "-id")
    )


def rights_holders() -> list[str]:
    return list(ProtectedWork.objects.order_by("rights_holder").values_list("rights_holder", flat=True).distinct())


def protected_works() -> QuerySet[ProtectedWork]:
    return ProtectedWork.objects.select_related("registered_by").order_by("-created_at", "-id")


# ---- JSON API


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


def image_picture_visible(*, user, image: Image) -> bool:  # type: ignore[no-untyped-def]
    """Whether `user` may see the picture of `image`: whoever may open the image, and
    copyright reviewers for uploads that are in a copy match."""
    from .access import user_is_copyright_reviewer

    if images_visible_to(user=user).filter(pk=image.pk).exists():
        return True
    return user_is_copyright_reviewer(user) and image.copy_matches.exists()


def image_picture_open(*, image: Image, kind: str) -> IO[bytes] | None:
    """The display copy or thumbnail of an image, wherever it is now (withheld while the
    image is hidden, in the public media otherwise); None when neither has it."""
    from .storage import private_storage, withheld_name

    f = image.display if kind == "display" else image.thumbnail
    if not (f and f.name):
        return None
    for storage, name in ((private_storage, withheld_name(f.name)), (f.storage, f.name)):
        try:
            return storage.open(name, "rb")
        except FileNotFoundError:
            continue
    return None
