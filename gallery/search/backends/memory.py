"""The memory backend (the default): the search index each web process keeps of the catalog.

A `TieredIndex` per space (exact, plus faiss HNSW above IMAGESEARCH["ANN_THRESHOLD"]
vectors). Every query first reads the catalog change log (`CatalogChange`, written by
database triggers) since the last entry it applied, and re-reads just those images, so a
change committed by any process is visible to every process on its next query. Entries
are re-read for IMAGESEARCH["INDEX_CHANGE_WINDOW_SECONDS"] because on PostgreSQL a
transaction may commit after a later-numbered one; a row-count check every
INDEX_RECHECK_SECONDS rebuilds an index that drifted anyway. Entries older than
IMAGESEARCH["CHANGE_LOG_RETENTION_SECONDS"] are pruned; the marker entry pruning leaves
makes an index that had not read that far reload in full.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import numpy as np
from django.conf import settings
from django.db import connection
from django.db.models import Max
from django.utils import timezone

from gallery.catalog.models import CatalogChange, Embedding, Image
from gallery.monitoring.metrics import index_rebuilds
from gallery.search.models import ReducedVector, Reduction
from gallery.vector_field import vector_from
from gallery.vision.ann import AnnParams, TieredIndex
from gallery.vision.index import Expansion


def search_expansion() -> Expansion:
    conf = settings.IMAGESEARCH
    return Expansion(dba_k=conf["DBA_K"], qe_k=conf["QE_K"], alpha=conf["QE_ALPHA"], dba_max_vectors=conf["DBA_MAX_VECTORS"])


def ann_params() -> AnnParams:
    conf = settings.IMAGESEARCH
    return AnnParams(
        kind=conf["ANN_KIND"],
        hnsw_m=conf["ANN_HNSW_M"],
        ef_construction=conf["ANN_EF_CONSTRUCTION"],
        ef_search=conf["ANN_EF_SEARCH"],
    )


def _public_rows(backbone: str, reduction: Reduction | None):  # type: ignore[no-untyped-def]
    public = {"image__status": Image.Status.READY, "image__visibility": Image.Visibility.PUBLISHED}
    if reduction is not None:
        return ReducedVector.objects.filter(reduction=reduction, **public)
    return Embedding.objects.filter(backbone=backbone, **public)


def _matrix(rows: list[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    return ids, np.stack([vector_from(r[1]) for r in rows])


def _changes_since(last: int, recent: datetime) -> list[tuple[int, int, int | None]]:
    """The change log's entries after `last` or at `recent` and later, as (id, image id,
    pruned through). Every search reads them: the statement is written once here instead of
    built by the ORM each time (a third of a search's time in the database layer)."""
    quote = connection.ops.quote_name
    table = quote(CatalogChange._meta.db_table)
    sql = (
        f"SELECT {quote('id')}, {quote('image_id')}, {quote('pruned_through')} FROM {table} "
        f"WHERE {quote('id')} > %s OR {quote('at')} >= %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [last, connection.ops.adapt_datetimefield_value(recent)])
        return [(int(pk), int(image_id), None if pruned is None else int(pruned)) for pk, image_id, pruned in cursor.fetchall()]


def _same(stored: np.ndarray | None, vector: np.ndarray) -> bool:
    return stored is not None and bool(np.array_equal(stored, vector))


class CatalogIndex:
    """A process-wide in-memory index of one space, kept in step with the change log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, int | None] | None = None
        self._index: TieredIndex | None = None
        self._last_change = 0
        self._window: dict[int, float] = {}  # change ids applied recently, with when
        self._checked = 0.0

    @property
    def loaded(self) -> bool:
        """Whether the index has been loaded at least once in this process."""
        return self._key is not None

    def size(self) -> int:
        """Vectors in the index now."""
        index = self._index  # read without the lock: a scrape never waits for a rebuild
        return len(index) if index is not None else 0

    def catch_up(self) -> None:
        """Apply the change log's new entries to the loaded index, unless a search or a
        rebuild holds it now. For a metrics scrape: a process that has served no search
        since the catalog changed reports the catalog it will search, not the one it
        loaded. Never waits for the lock and never rebuilds: an index that must reload
        does so on its next search."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._key is None:
                return
            backbone, reduction_pk = self._key
            reduction = None
            if reduction_pk is not None:
                reduction = Reduction.objects.filter(pk=reduction_pk).first()
                if reduction is None:
                    return
            self._apply_changes(backbone, reduction)
        finally:
            self._lock.release()

    def clear(self) -> None:
        with self._lock:
            self._key, self._index, self._last_change, self._window, self._checked = None, None, 0, {}, 0.0

    def get(self, *, backbone: str, reduction: Reduction | None) -> TieredIndex | None:
        key = (backbone, reduction.pk if reduction else None)
        with self._lock:
            now = time.monotonic()
            if self._key != key:
                self._rebuild(key, backbone, reduction)
            elif not self._apply_changes(backbone, reduction):
                self._rebuild(key, backbone, reduction)  # entries it never read were pruned
            elif now - self._checked > settings.IMAGESEARCH["INDEX_RECHECK_SECONDS"]:
                if (len(self._index) if self._index else 0) != _public_rows(backbone, reduction).count():
                    self._rebuild(key, backbone, reduction)
                self._checked = now
            return self._index if self._index is not None and len(self._index) else None

    def _new_index(self, dim: int) -> TieredIndex:
        conf = settings.IMAGESEARCH
        return TieredIndex(
            dim,
            expansion=search_expansion(),
            threshold=conf["ANN_THRESHOLD"],
            params=ann_params(),
            background=conf["ANN_BACKGROUND"],
        )

    def _rebuild(self, key: tuple[str, int | None], backbone: str, reduction: Reduction | None) -> None:
        last = CatalogChange.objects.aggregate(last=Max("pk"))["last"] or 0
        recent = timezone.now() - timedelta(seconds=settings.IMAGESEARCH["INDEX_CHANGE_WINDOW_SECONDS"])
        seen = CatalogChange.objects.filter(pk__lte=last, at__gte=recent).values_list("pk", flat=True)
        rows = list(_public_rows(backbone, reduction).order_by("pk").values_list("image_id", "vector"))
        index = None
        if rows:
            ids, vectors = _matrix(rows)
            index = self._new_index(vectors.shape[1])
            index.add(ids, vectors)
        self._checked = time.monotonic()
        self._key, self._index, self._last_change = key, index, last
        index_rebuilds.inc()
        self._window = dict.fromkeys(seen, self._checked)

    def _apply_changes(self, backbone: str, reduction: Reduction | None) -> bool:
        """Apply the entries not applied yet; False when some were pruned before this
        index read them (it must reload)."""
        window = settings.IMAGESEARCH["INDEX_CHANGE_WINDOW_SECONDS"]
        recent = timezone.now() - timedelta(seconds=window)
        changes = []
        for pk, image_id, pruned_through in _changes_since(self._last_change, recent):
            if pruned_through is not None:
                if pruned_through > self._last_change:
                    return False
            elif pk not in self._window:
                changes.append((pk, image_id))
        now = time.monotonic()
        self._window = {pk: t for pk, t in self._window.items() if now - t < 2 * window}
        if not changes:
            return True
        self._window.update((pk, now) for pk, _ in changes)
        self._last_change = max(self._last_change, *(pk for pk, _ in changes))
        touched = np.unique(np.array([image_id for _, image_id in changes], dtype=np.int64))
        rows = list(_public_rows(backbone, reduction).filter(image_id__in=touched.tolist()).values_list("image_id", "vector"))
        current = {int(i): vector_from(v) for i, v in rows}
        index = self._index
        if index is not None:
            # Only what actually changed: a logged change can leave this space as it was
            # (another backbone's vector, a status round trip).
            gone = [i for i in touched.tolist() if i in index and i not in current]
            current = {i: v for i, v in current.items() if not _same(index.vector_of(i), v)}
            index.remove(np.array(gone + list(current), dtype=np.int64))
        if current:
            ids = np.fromiter(current.keys(), dtype=np.int64, count=len(current))
            vectors = np.stack(list(current.values()))
            if self._index is None:
                self._index = self._new_index(vectors.shape[1])
            self._index.add(ids, vectors)
        return True


catalog_index = CatalogIndex()
