"""The pgvector backend (PostgreSQL, IMAGESEARCH_SEARCH_BACKEND=pgvector): search is a SQL
query over the reduced vectors' pgvector column, with an HNSW index per PCA space; with
database-side augmentation on, the nearest candidates are re-ranked in Python with the
memory backend's maths.
"""

from __future__ import annotations

import time

import numpy as np
from django.conf import settings
from django.db import connection

from gallery.catalog.models import Image
from gallery.search.models import Reduction
from gallery.vector_field import pgvector_literal, vector_from
from gallery.vision.index import Expansion, Hit, check_metric, l2_rows, top_k_indices

from .memory import _public_rows, search_expansion


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
