"""The index search uses for a space, by IMAGESEARCH_SEARCH_BACKEND: the memory backend
(every web process's own index, the default) or pgvector (PostgreSQL)."""

from __future__ import annotations

from django.conf import settings
from django.db import connection

from gallery.search.backends.memory import CatalogIndex, ann_params, catalog_index, search_expansion
from gallery.search.backends.pgvector import PgVectorIndex
from gallery.search.models import Reduction
from gallery.vision.ann import TieredIndex

__all__ = ["CatalogIndex", "PgVectorIndex", "ann_params", "catalog_index", "search_expansion", "space_index"]


def space_index(*, backbone: str, reduction: Reduction | None) -> TieredIndex | PgVectorIndex | None:
    """The index search uses for a space: pgvector when configured on PostgreSQL and the
    space is a PCA space, else this process's in-memory index."""
    if reduction is not None and settings.IMAGESEARCH["SEARCH_BACKEND"] == "pgvector" and connection.vendor == "postgresql":
        return PgVectorIndex(reduction)
    return catalog_index.get(backbone=backbone, reduction=reduction)
