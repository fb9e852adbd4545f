"""Search: the active space, top-k by vector, by catalog image and by query photo."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import IO

import numpy as np
from django.conf import settings
from django.db.models import Subquery
from PIL import Image as PILImage

from gallery.catalog import pipeline, tagnames
from gallery.catalog.models import Embedding, Image
from gallery.catalog.services import read_upload
from gallery.errors import ImageRejected, SearchRejected
from gallery.monitoring.metrics import stage
from gallery.search import spacememo
from gallery.search.index import PgVectorIndex, space_index
from gallery.search.index import catalog_index as catalog_index  # re-exported for tests and commands
from gallery.search.models import CatalogState, ReducedVector, Reduction
from gallery.search.services import reduction_load
from gallery.storage import picture_open
from gallery.vector_field import vector_from
from gallery.vision.ann import TieredIndex
from gallery.vision.backbones import SPECS
from gallery.vision.index import Hit, check_metric
from gallery.vision.phash import hamming, phash
from gallery.vision.preprocess import ImageDecodeError


@dataclass(frozen=True)
class SearchHit:
    image: Image
    score: float
    rank: int


@dataclass(frozen=True)
class SearchFilters:
    """What every search can be narrowed to: images carrying all of `tags`, uploaded
    within the dates (inclusive), by one user; and at most one photo of each
    near-duplicate group."""

    tags: tuple[str, ...] = ()
    date_from: date | None = None
    date_to: date | None = None
    uploaded_by: int | None = None
    one_per_group: bool = False

    @property
    def narrows(self) -> bool:
        return bool(self.tags) or self.date_from is not None or self.date_to is not None or self.uploaded_by is not None

    def with_tag(self, tag: str) -> SearchFilters:
        tag = tag.strip().lower()
        if not tag or tag in self.tags:
            return self
        return SearchFilters((*self.tags, tag), self.date_from, self.date_to, self.uploaded_by, self.one_per_group)

    def allowed_ids(self) -> set[int] | None:
        """The searchable images these filters allow; None when they allow every image."""
        if not self.narrows:
            return None
        images = Image.objects.filter(status=Image.Status.READY, visibility=Image.Visibility.PUBLISHED)
        for tag in self.tags:
            images = images.filter(tags__name=tag)
        if self.date_from is not None:
            images = images.filter(created_at__date__gte=self.date_from)
        if self.date_to is not None:
            images = images.filter(created_at__date__lte=self.date_to)
        if self.uploaded_by is not None:
            images = images.filter(uploaded_by_id=self.uploaded_by)
        return set(images.values_list("pk", flat=True))


NO_FILTERS = SearchFilters()


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
        from gallery.vision.backbones import SPECS

        spec = SPECS.get(self.backbone)
        return spec.dim if spec else 0

    def project(self, embedding: np.ndarray) -> np.ndarray:
        if self.reduction is None:
            return np.asarray(embedding, dtype=np.float32)
        return reduction_load(self.reduction).transform(np.asarray(embedding)[None])[0]


def active_space() -> Space:
    """The catalog's space, from this process's copy (`spacememo`)."""
    return spacememo.cached(_active_space_now)


def _active_space_now() -> Space:
    # One query while a PCA is active: the catalog's backbone and its active PCA together;
    # the PCA's arrays (half a megabyte) are read only when this process first loads them.
    catalog_backbone = CatalogState.objects.filter(pk=1).values("backbone")[:1]
    reduction = (
        Reduction.objects.filter(backbone=Subquery(catalog_backbone), is_active=True)
        .defer("mean", "components", "explained_variance")
        .first()
    )
    if reduction is not None:
        return Space(reduction.backbone, reduction)
    return Space(pipeline.catalog_state().backbone, None)


def _hydrate(hits: Iterable[Hit]) -> list[SearchHit]:
    hits = list(hits)
    with stage("hydrate"):
        images = Image.objects.in_bulk([h.id for h in hits])
        tagnames.attach(images.values())
    return [SearchHit(images[h.id], h.score, rank) for rank, h in enumerate((h for h in hits if h.id in images), 1)]


def search_by_vector(
    *,
    embedding: np.ndarray,
    space: Space | None = None,
    limit: int = 20,
    metric: str = "cosine",
    exclude: int | None = None,
    tag: str = "",
    filters: SearchFilters = NO_FILTERS,
) -> list[SearchHit]:
    """Nearest catalog images to a raw backbone embedding, in the active space,
    narrowed by `filters` (and `tag`)."""
    check_metric(metric)
    space = space or active_space()
    filters = filters.with_tag(tag)
    with stage("index"):
        index = space_index(backbone=space.backbone, reduction=space.reduction)
        if index is None:
            return []
        query = space.project(embedding)
        if not filters.narrows and not filters.one_per_group:
            hits = index.search(query, k=limit, metric=metric, exclude=exclude)
        else:
            wanted = 3 * limit if filters.one_per_group else limit
            hits = _search_within(index, query, allowed=filters.allowed_ids(), limit=wanted, metric=metric, exclude=exclude)
            if filters.one_per_group:
                hits = one_per_group(hits, space=space)[:limit]
    return _hydrate(hits)


def similar_to_image(
    *, image: Image, limit: int = 12, metric: str = "cosine", tag: str = "", filters: SearchFilters = NO_FILTERS
) -> list[SearchHit]:
    """ "More like this": the image's nearest neighbours, itself excluded."""
    space = active_space()
    embedding = Embedding.objects.filter(image=image, backbone=space.backbone).first()
    if embedding is None:
        return []
    return search_by_vector(
        embedding=embedding.as_array(), space=space, limit=limit, metric=metric, exclude=image.pk, tag=tag, filters=filters
    )


# A query photo is decoded no larger than its uses need: the results page's preview (this
# many pixels on the long side) and the network input (the largest short side any
# backbone resizes to). A 12-megapixel phone photo then decodes at a quarter of its size
# (~55 instead of ~265 ms); a photo already that small is decoded as it is.
QUERY_PREVIEW_SIDE = 640
QUERY_SHORT_SIDE = max(spec.resize_short for spec in SPECS.values())


def query_decode(*, file: IO[bytes], box: Box | None = None) -> PILImage.Image:
    """Read and decode a query photo (upright RGB), large enough for its preview and the
    network input, of the `box` when one is given; raises ImageRejected with a message for
    the user."""
    data = read_upload(file)
    # A region must itself be that large: the smaller the box, the larger the picture
    # (never above the working size every photo is decoded at).
    part = min(box.right - box.left, box.bottom - box.top) if box is not None else 1.0
    enough = (QUERY_PREVIEW_SIDE / part, QUERY_SHORT_SIDE / part)
    try:
        with stage("decode"):
            return pipeline.decode(data, enough=enough).image
    except ImageDecodeError as exc:
        raise ImageRejected(str(exc), code=exc.code) from None


def search_by_picture(
    *,
    picture: PILImage.Image,
    limit: int = 20,
    metric: str = "cosine",
    tag: str = "",
    filters: SearchFilters = NO_FILTERS,
    space: Space | None = None,
) -> list[SearchHit]:
    """Search with a decoded query photo that is embedded here and never stored.

    The space is read once (or given by the caller, who read it), so the query is embedded
    with the backbone of the vectors it is compared with even when the catalog switches
    meanwhile."""
    check_metric(metric)
    space = space or active_space()
    with stage("embed"):
        embedding = pipeline.embed_query(picture, backbone=pipeline.backbone_named(space.backbone))
    return search_by_vector(embedding=embedding, space=space, limit=limit, metric=metric, tag=tag, filters=filters)


def search_by_image(*, file: IO[bytes], limit: int = 20, metric: str = "cosine", tag: str = "") -> list[SearchHit]:
    """Search with an uploaded photo that is embedded here and never stored."""
    check_metric(metric)  # before reading the upload
    return search_by_picture(picture=query_decode(file=file), limit=limit, metric=metric, tag=tag)


# Why a listing came back empty, as codes the pages put in words.
EMPTY_CATALOG = "empty"  # nothing to list at all


EMPTY_TAG = "tag"  # there are images, but none carries the tag


EMPTY_NO_MATCH = "no_match"  # there are images, yet none was returned


def default_metric() -> str:
    return str(settings.IMAGESEARCH["DEFAULT_METRIC"])


def _search_within(
    index: TieredIndex | PgVectorIndex,
    query: np.ndarray,
    *,
    allowed: set[int] | None,
    limit: int,
    metric: str,
    exclude: int | None,
) -> list[Hit]:
    """Top hits among the `allowed` images (all when None): a growing top-k of the whole
    index, filtered, until enough allowed images are found or the index is exhausted."""
    if allowed is None:
        return index.search(query, k=limit, metric=metric, exclude=exclude)
    if not allowed:
        return []
    k = max(4 * limit, 64)
    while True:
        hits = [h for h in index.search(query, k=k, metric=metric, exclude=exclude) if h.id in allowed]
        if len(hits) >= limit or k >= len(index):
            return hits[:limit]
        k *= 4


def space_vectors(space: Space, ids: list[int]) -> dict[int, np.ndarray]:
    """The stored vectors of these images in a search space."""
    if space.reduction is not None:
        rows = ReducedVector.objects.filter(reduction=space.reduction, image_id__in=ids)
    else:
        rows = Embedding.objects.filter(backbone=space.backbone, image_id__in=ids)  # type: ignore[assignment]
    return {int(i): vector_from(v) for i, v in rows.values_list("image_id", "vector")}


def _thumbnail_hash(image_id: int) -> int | None:
    image = Image.objects.filter(pk=image_id).only("thumbnail").first()
    stream = picture_open(image.thumbnail) if image is not None else None
    if stream is None:
        return None
    try:
        with stream, PILImage.open(stream) as picture:
            return phash(picture.convert("RGB"))
    except (OSError, ValueError):
        return None


def one_per_group(hits: list[Hit], *, space: Space) -> list[Hit]:
    """Keep the best hit of each near-duplicate group: a hit is dropped when an earlier
    kept one is as close as the near-duplicate job's rule (vector similarity at least
    IMAGESEARCH_NEAR_DUPLICATE_THRESHOLD, confirmed by the thumbnails' perceptual hashes)."""
    conf = settings.IMAGESEARCH
    threshold = float(conf.get("NEAR_DUPLICATE_THRESHOLD", 0.8))
    max_distance = int(conf.get("NEAR_DUPLICATE_MAX_HASH_DISTANCE", 10))
    vectors = space_vectors(space, [h.id for h in hits])
    hashes: dict[int, int | None] = {}

    def hash_of(image_id: int) -> int | None:
        if image_id not in hashes:
            hashes[image_id] = _thumbnail_hash(image_id)
        return hashes[image_id]

    kept: list[Hit] = []
    for hit in hits:
        v = vectors.get(hit.id)
        duplicate = False
        if v is not None:
            v = v / max(float(np.linalg.norm(v)), 1e-12)
            for other in kept:
                w = vectors.get(other.id)
                if w is None or float(v @ (w / max(float(np.linalg.norm(w)), 1e-12))) < threshold:
                    continue
                a, b = hash_of(hit.id), hash_of(other.id)
                if a is not None and b is not None and int(hamming(np.array([a], dtype=np.uint64), b)[0]) <= max_distance:
                    duplicate = True
                    break
        if not duplicate:
            kept.append(hit)
    return kept


# ---- search by a region of a photo


@dataclass(frozen=True)
class Box:
    """A rectangle of a picture as fractions of its width and height, left/top first."""

    left: float
    top: float
    right: float
    bottom: float

    # A region smaller than this many pixels a side says too little to search with.
    MIN_PIXELS = 24

    @classmethod
    def parse(cls, text: str) -> Box:
        """ "left,top,right,bottom" fractions between 0 and 1 ("0.5,0,1,0.5": the top right quarter)."""
        parts = [p.strip() for p in str(text)[:200].split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 4 or not all(np.isfinite(values)):
            raise SearchRejected(
                "The box must be four numbers, left,top,right,bottom, as fractions of the picture (0 to 1).",
                code="invalid_box",
            )
        left, top, right, bottom = values
        if min(values) < 0 or max(values) > 1:
            raise SearchRejected("The box lies partly outside the picture: use fractions from 0 to 1.", code="box_outside_image")
        if right <= left or bottom <= top:
            raise SearchRejected(
                "The box must have its right edge after its left and its bottom below its top.", code="invalid_box"
            )
        return cls(left, top, right, bottom)

    def __str__(self) -> str:
        return ",".join(f"{v:.4f}".rstrip("0").rstrip(".") or "0" for v in (self.left, self.top, self.right, self.bottom))

    def crop(self, picture: PILImage.Image) -> PILImage.Image:
        w, h = picture.size
        box = (round(self.left * w), round(self.top * h), round(self.right * w), round(self.bottom * h))
        if box[2] - box[0] < self.MIN_PIXELS or box[3] - box[1] < self.MIN_PIXELS:
            raise SearchRejected(
                f"The box is {box[2] - box[0]}×{box[3] - box[1]} pixels of this picture; draw one at least "
                f"{self.MIN_PIXELS} pixels a side.",
                code="box_too_small",
            )
        return picture.crop(box)


def image_picture(*, image: Image) -> PILImage.Image:
    """A catalog image's display copy, decoded (upright RGB), for searching a region of it."""
    stream = picture_open(image.display)
    if stream is None:
        raise SearchRejected("This image's picture is not available.", code="image_not_ready")
    with stream:
        data = stream.read()
    try:
        return pipeline.decode(data).image
    except ImageDecodeError as exc:
        raise SearchRejected(str(exc), code=exc.code) from None


def search_by_region(
    *, picture: PILImage.Image, box: Box, limit: int = 20, metric: str = "cosine", filters: SearchFilters = NO_FILTERS
) -> list[SearchHit]:
    """Search with only the boxed region of a picture, embedded as a query photo."""
    return search_by_picture(picture=box.crop(picture), limit=limit, metric=metric, filters=filters)
