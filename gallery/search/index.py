"""The search index each web process keeps of the catalog, and pgvector's SQL search.

In memory (the default): a `TieredIndex` per space (exact, plus faiss HNSW above
IMAGESEARCH["ANN_THRESHOLD"] vectors). Every query first reads the catalog change log
(`CatalogChange`, written by database triggers) since the last entry it applied, and
re-reads just those images, so a change committed by any process is visible to every
process on its next query. Entries are re-read for IMAGESEARCH["INDEX_CHANGE_WINDOW_SECONDS"]
because on PostgreSQL a transaction may commit after a later-numbered one; a row-count
check every INDEX_RECHECK_SECONDS rebuilds an index that drifted anyway. Entries older than
IMAGESEARCH["CHANGE_LOG_RETENTION_SECONDS"] are pruned; the marker entry pruning leaves
makes an index that had not read that far reload in full.

On PostgreSQL with IMAGESEARCH["SEARCH_BACKEND"] = "pgvector", search is a SQL query
over the reduced vectors' pgvector column, with an HNSW index per PCA space; with
database-side augmentation on, the nearest candidates are re-ranked in Python with the
in-memory index's maths.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import connection
from django.db.models import Max, Q
from django.utils import timezone

from gallery.catalog.models import CatalogChange, Embedding, Image
from gallery.search.models import ReducedVector, Reduction
from gallery.vector_field import pgvector_literal, vector_from
from gallery.vision.ann import AnnParams, TieredIndex
from gallery.vision.index import Expansion, Hit, check_metric, l2_rows, top_k_indices


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


class CatalogIndex:
    """A process-wide in-memory index of one space, kept in step with the change log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, int | None] | None = None
        self._index: TieredIndex | None = None
        self._last_change = 0
        self._window: dict[int, float] = {}  # change ids applied recently, with when
        self._checked = 0.0

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
        self._window = dict.fromkeys(seen, self._checked)

    def _apply_changes(self, backbone: str, reduction: Reduction | None) -> bool:
        """Apply the entries not applied yet; False when some were pruned before this
        index read them (it must reload)."""
        window = settings.IMAGESEARCH["INDEX_CHANGE_WINDOW_SECONDS"]
        recent = timezone.now() - timedelta(seconds=window)
        rows = CatalogChange.objects.filter(Q(pk__gt=self._last_change) | Q(at__gte=recent)).values_list(
            "pk", "image_id", "pruned_through"
        )
        changes = []
        for pk, image_id, pruned_through in rows:
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


def _same(stored: np.ndarray | None, vector: np.ndarray) -> bool:
    return stored is not None and bool(np.array_equal(stored, vector))


class PgVectorIndex:
    """Search as SQL over one PCA space's pgvector column (PostgreSQL only).

    Cosine uses the space's HNSW index (created on first use). Without database-side
    augmentation (DBA), α-query expansion runs as a second query. With DBA, the
    IMAGESEARCH["PGVECTOR_RERANK_CANDIDATES"] nearest images by plain cosine are fetched with
    each one's DBA_K nearest neighbours, their augmented vectors computed as the in-memory
    index computes them, and the candidates ranked by augmented similarity (then expanded
    with α-QE): the in-memory ranking whenever its top-k lies among those candidates.
    """

    _indexed: set[int] = set()
    _sizes: dict[int, tuple[float, int]] = {}  # reduction id -> (when counted, searchable rows)
    OPERATORS = {"cosine": "<=>", "euclidean": "<->", "inner_product": "<#>"}

    def __init__(self, reduction: Reduction):
        self.reduction = reduction
        self.dims = int(reduction.dims)

    @classmethod
    def ensure_index(cls, reduction: Reduction) -> str:
        name = f"gallery_rv_hnsw_{int(reduction.pk)}"
        if reduction.pk not in cls._indexed:
            with connection.cursor() as cur:
                if connection.in_atomic_block:  # deferred foreign-key checks would block CREATE INDEX
                    cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cur.execute(
                    f"CREATE INDEX IF NOT EXISTS {name} ON gallery_reducedvector "
                    f"USING hnsw ((vector::vector({int(reduction.dims)})) vector_cosine_ops) WHERE reduction_id = {int(reduction.pk)}"
                )
            cls._indexed.add(reduction.pk)
        return name

    def __len__(self) -> int:
        return int(_public_rows(self.reduction.backbone, self.reduction).count())

    def _size(self) -> int:
        """The searchable row count, recounted every INDEX_RECHECK_SECONDS (it only decides
        whether augmentation applies, as DBA_MAX_VECTORS does in memory)."""
        now = time.monotonic()
        counted = self._sizes.get(self.reduction.pk)
        if counted is None or now - counted[0] > settings.IMAGESEARCH["INDEX_RECHECK_SECONDS"]:
            counted = (now, len(self))
            self._sizes[self.reduction.pk] = counted
        return counted[1]

    def _neighbours(self, ids: list[int], *, k: int) -> dict[int, list[tuple[int, np.ndarray]]]:
        """Each candidate's k nearest searchable images (itself included) with their vectors."""
        d = self.dims
        sql = (
            "SELECT c.id, n.image_id, n.vector FROM unnest(%s::bigint[]) AS c(id) "
            "JOIN gallery_reducedvector cv ON cv.image_id = c.id AND cv.reduction_id = %s "
            "CROSS JOIN LATERAL ("
            f"  SELECT rv.image_id, rv.vector, rv.vector::vector({d}) <=> cv.vector::vector({d}) AS distance"
            "  FROM gallery_reducedvector rv JOIN gallery_image im ON im.id = rv.image_id"
            "  WHERE rv.reduction_id = %s AND im.status = %s AND im.visibility = %s"
            f"  ORDER BY rv.vector::vector({d}) <=> cv.vector::vector({d}) LIMIT %s"
            ") n ORDER BY c.id, n.distance"
        )
        params = [ids, self.reduction.pk, self.reduction.pk, Image.Status.READY, Image.Visibility.PUBLISHED, k]
        found: dict[int, list[tuple[int, np.ndarray]]] = {}
        with connection.cursor() as cur:
            cur.execute(f"SET hnsw.ef_search = {max(int(settings.IMAGESEARCH['PGVECTOR_EF_SEARCH']), k)}")
            cur.execute(sql, params)
            for cid, nid, vector in cur.fetchall():
                found.setdefault(int(cid), []).append((int(nid), vector_from(vector)))
        return found

    def _augmented_search(self, q: np.ndarray, *, k: int, exclude: int | None, expansion: Expansion) -> list[Hit]:
        """DBA (and α-QE) over the nearest candidates, with VectorIndex's maths."""
        pool = max(k, expansion.qe_k, int(settings.IMAGESEARCH["PGVECTOR_RERANK_CANDIDATES"]))
        candidates = self._query(q, k=pool, metric="cosine", exclude=exclude)
        if not candidates:
            return []
        ids = [int(r[0]) for r in candidates]
        neighbours = self._neighbours(ids, k=expansion.dba_k)
        kept, rows = [], []
        for image_id in ids:
            near = neighbours.get(image_id, [])
            own = next((v for i, v in near if i == image_id), None)
            if own is None:  # it left the catalog between the two queries
                continue
            unit = l2_rows(np.stack([v for _, v in near]))
            weights = np.maximum(unit @ l2_rows(own), 0.0) ** expansion.alpha
            kept.append(image_id)
            rows.append(l2_rows(weights @ unit))
        if not kept:
            return []
        augmented = np.stack(rows)
        scores = augmented @ q
        if expansion.qe_k > 0:
            top = top_k_indices(scores, expansion.qe_k, largest=True)
            weights = np.maximum(scores[top], 0.0) ** expansion.alpha
            scores = augmented @ l2_rows(q + weights @ augmented[top])
        return [Hit(kept[i], float(scores[i])) for i in top_k_indices(scores, k, largest=True)]

    def _query(self, q: np.ndarray, *, k: int, metric: str, exclude: int | None, with_vectors: bool = False) -> list[tuple]:
        op = self.OPERATORS[metric]
        d = self.dims
        extra = ", rv.vector" if with_vectors else ""
        sql = (
            f"SELECT rv.image_id, rv.vector::vector({d}) {op} %s::vector({d}) AS distance{extra} "
            "FROM gallery_reducedvector rv JOIN gallery_image im ON im.id = rv.image_id "
            "WHERE rv.reduction_id = %s AND im.status = %s AND im.visibility = %s AND rv.image_id <> %s "
            f"ORDER BY rv.vector::vector({d}) {op} %s::vector({d}) LIMIT %s"
        )
        literal = pgvector_literal(q)
        params = [literal, self.reduction.pk, Image.Status.READY, Image.Visibility.PUBLISHED, exclude or -1, literal, k]
        with connection.cursor() as cur:
            cur.execute(f"SET hnsw.ef_search = {max(int(settings.IMAGESEARCH['PGVECTOR_EF_SEARCH']), k)}")
            cur.execute(sql, params)
            return list(cur.fetchall())

    def search(self, query: np.ndarray, *, k: int = 10, metric: str = "cosine", exclude: int | None = None) -> list[Hit]:
        check_metric(metric)
        q = np.asarray(query, dtype=np.float32).reshape(self.dims)
        if metric == "cosine":
            self.ensure_index(self.reduction)
            expansion = search_expansion()
            q = l2_rows(q)
            if expansion.dba_k > 0 and self._size() <= expansion.dba_max_vectors:
                return self._augmented_search(q, k=k, exclude=exclude, expansion=expansion)
            if expansion.qe_k > 0:
                first = self._query(q, k=expansion.qe_k, metric=metric, exclude=exclude, with_vectors=True)
                if first:
                    weights = np.maximum(1.0 - np.array([r[1] for r in first], dtype=np.float32), 0.0) ** expansion.alpha
                    vectors = l2_rows(np.stack([vector_from(r[2]) for r in first]))
                    q = l2_rows(q + weights @ vectors)
            return [Hit(int(r[0]), 1.0 - float(r[1])) for r in self._query(q, k=k, metric=metric, exclude=exclude)]
        rows = self._query(q, k=k, metric=metric, exclude=exclude)
        if metric == "inner_product":  # pgvector's <#> is the negative inner product
            return [Hit(int(r[0]), -float(r[1])) for r in rows]
        return [Hit(int(r[0]), float(r[1])) for r in rows]


catalog_index = CatalogIndex()


def space_index(*, backbone: str, reduction: Reduction | None) -> TieredIndex | PgVectorIndex | None:
    """The index search uses for a space: pgvector when configured on PostgreSQL and the
    space is a PCA space, else this process's in-memory index."""
    if reduction is not None and settings.IMAGESEARCH["SEARCH_BACKEND"] == "pgvector" and connection.vendor == "postgresql":
        return PgVectorIndex(reduction)
    return catalog_index.get(backbone=backbone, reduction=reduction)
