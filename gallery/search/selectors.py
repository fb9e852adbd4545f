"""Search: the active space, top-k by vector, by catalog image and by query photo."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

import numpy as np
from django.conf import settings
from PIL import Image as PILImage

from gallery.catalog import pipeline
from gallery.catalog.models import Embedding, Image, Tag
from gallery.catalog.services import read_upload
from gallery.errors import ImageRejected
from gallery.monitoring.metrics import stage
from gallery.search.index import PgVectorIndex, space_index
from gallery.search.index import catalog_index as catalog_index  # re-exported for tests and commands
from gallery.search.models import Reduction
from gallery.search.services import reduction_load
from gallery.vision.ann import TieredIndex
from gallery.vision.index import Hit, check_metric
from gallery.vision.preprocess import ImageDecodeError


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
        from gallery.vision.backbones import SPECS

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
    with stage("hydrate"):
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
    with stage("index"):
        index = space_index(backbone=space.backbone, reduction=space.reduction)
        if index is None:
            return []
        query = space.project(embedding)
        if not tag:
            hits = index.search(query, k=limit, metric=metric, exclude=exclude)
        else:
            hits = _search_tagged(index, query, tag=tag, limit=limit, metric=metric, exclude=exclude)
    return _hydrate(hits)


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
        with stage("decode"):
            return pipeline.decode(data).image
    except ImageDecodeError as exc:
        raise ImageRejected(str(exc), code=exc.code) from None


def search_by_picture(*, picture: PILImage.Image, limit: int = 20, metric: str = "cosine", tag: str = "") -> list[SearchHit]:
    """Search with a decoded query photo that is embedded here and never stored.

    The space is read once, so the query is embedded with the backbone of the vectors
    it is compared with even when the catalog switches meanwhile."""
    check_metric(metric)
    space = active_space()
    with stage("embed"):
        embedding = pipeline.embed_images([picture], backbone=pipeline.backbone_named(space.backbone))[0]
    return search_by_vector(embedding=embedding, space=space, limit=limit, metric=metric, tag=tag)


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
