"""Approximate nearest-neighbour search (faiss) and the tiered catalog index.

`ApproximateIndex` wraps a faiss HNSW (or IVF) index over unit vectors, so inner
product is cosine similarity. Catalog ids map to faiss labels by position; removals are
tombstones filtered during the graph walk (HNSW cannot delete), and a rebuild compacts.

`TieredIndex` is what the web process searches: an exact `VectorIndex` always (it serves
Euclidean and inner-product queries, large k and small catalogs exactly), plus an
approximate index for cosine queries once the catalog reaches `threshold` vectors. The
approximate index is (re)built on a background thread while the exact one keeps
answering; changes made meanwhile are replayed before the switch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from .index import Expansion, Hit, VectorIndex, check_metric, l2_rows, top_k_indices

ANN_KINDS = ("hnsw", "ivf")


@dataclass(frozen=True)
class AnnParams:
    """faiss parameters; the defaults are the ones the index benchmark chose."""

    kind: str = "hnsw"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    ivf_lists: int = 0  # 0: 4·√n, fixed when the index is built
    nprobe: int = 16


class ApproximateIndex:
    """faiss over unit vectors: cosine top-k, incremental adds, tombstone removals."""

    def __init__(self, dim: int, *, params: AnnParams | None = None):
        self.dim = dim
        self.params = params or AnnParams()
        if self.params.kind not in ANN_KINDS:
            raise ValueError(f"unknown index kind {self.params.kind!r}; choose one of {', '.join(ANN_KINDS)}")
        self._index: faiss.Index | None = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._size = 0
        self._dead: set[int] = set()
        self._position: dict[int, int] = {}
        self._selector: faiss.IDSelector | None = None
        self._selector_parts: tuple[object, ...] = ()

    def __len__(self) -> int:
        return self._size - len(self._dead)

    @property
    def lists(self) -> int:
        """IVF: the number of inverted lists (0 for HNSW or before the first add)."""
        return int(getattr(self._index, "nlist", 0))

    @property
    def tombstones(self) -> int:
        return len(self._dead)

    @property
    def nbytes(self) -> int:
        """Bytes held: the faiss index (vectors, graph or lists) and the id maps."""
        if self._index is None:
            return 0
        return int(faiss.serialize_index(self._index).nbytes + self._ids.nbytes + 100 * len(self._position))

    def _make(self, sample: np.ndarray) -> faiss.Index:
        p = self.params
        if p.kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(self.dim, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = p.ef_construction
            return hnsw
        lists = p.ivf_lists or max(16, int(4 * np.sqrt(max(len(sample), 1))))
        lists = min(lists, max(1, len(sample) // 39))  # faiss wants ≥ 39 training points per list
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, lists, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        train = sample if len(sample) <= 256 * lists else sample[rng.choice(len(sample), 256 * lists, replace=False)]
        index.train(train)
        return index

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        unit = np.ascontiguousarray(l2_rows(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)))
        if len(ids) != len(unit):
            raise ValueError("ids and vectors differ in length")
        if not len(ids):
            return
        for i in ids.tolist():  # a re-added id replaces its old entry
            old = self._position.get(i)
            if old is not None:
                self._dead.add(old)
        if self._index is None:
            self._index = self._make(unit)
        start = self._size
        if start + len(ids) > len(self._ids):
            self._ids = np.resize(self._ids, max(start + len(ids), 2 * len(self._ids), 1024))
        self._ids[start : start + len(ids)] = ids
        self._index.add(unit)
        self._size = start + len(ids)
        self._position.update(zip(ids.tolist(), range(start, self._size)))
        self._selector = None

    def remove(self, ids: np.ndarray) -> int:
        removed = 0
        for i in np.asarray(ids, dtype=np.int64).tolist():
            pos = self._position.pop(i, None)
            if pos is not None:
                self._dead.add(pos)
                removed += 1
        if removed:
            self._selector = None
        return removed

    def _search_params(self, k: int) -> faiss.SearchParameters:
        if self._selector is None and self._dead:
            batch = faiss.IDSelectorBatch(np.fromiter(self._dead, dtype=np.int64, count=len(self._dead)))
            self._selector = faiss.IDSelectorNot(batch)
            self._selector_parts = (batch,)  # faiss keeps a raw pointer; keep the object alive
        p = self.params
        if p.kind == "hnsw":
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = max(p.ef_search, k)
        else:
            params = faiss.SearchParametersIVF()
            params.nprobe = p.nprobe
        if self._dead:
            params.sel = self._selector
        return params

    def search_batch(self, queries: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, cosine similarities) of the k best per query; id -1 pads short rows."""
        q = np.ascontiguousarray(l2_rows(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)))
        if self._index is None or len(self) == 0:
            return np.full((len(q), k), -1, dtype=np.int64), np.zeros((len(q), k), dtype=np.float32)
        sims, labels = self._index.search(q, k, params=self._search_params(k))
        ids = np.where(labels >= 0, self._ids[np.maximum(labels, 0)], -1)
        return ids, sims

    def search(self, query: np.ndarray, *, k: int = 10, exclude: int | None = None) -> list[Hit]:
        extra = 1 if exclude is not None else 0
        ids, sims = self.search_batch(query, k=k + extra)
        hits = [Hit(int(i), float(s)) for i, s in zip(ids[0], sims[0]) if i >= 0 and i != exclude]
        return hits[:k]

    def live(self) -> np.ndarray:
        """Positions of the entries that are not tombstones."""
        mask = np.ones(self._size, dtype=bool)
        if self._dead:
            mask[np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))] = False
        return np.flatnonzero(mask)


def _worst(largest: bool) -> float:
    return -np.inf if largest else np.inf


class TieredIndex:
    """Exact search always; approximate cosine search once the catalog is large.

    Same interface as `VectorIndex` plus `remove`. Removed vectors are masked at once
    and compacted away by the next rebuild (when a tenth of the rows are dead).
    """

    def __init__(
        self,
        dim: int,
        *,
        expansion: Expansion | None = None,
        threshold: int = 200_000,
        params: AnnParams | None = None,
        background: bool = True,
        max_ann_k: int = 1000,
    ):
        self.dim = dim
        self.expansion = expansion or Expansion()
        self.threshold = threshold
        self.params = params or AnnParams()
        self.background = background
        self.max_ann_k = max_ann_k
        self._lock = threading.RLock()
        self._exact = VectorIndex(dim, expansion=self.expansion)
        self._dead = np.zeros(0, dtype=bool)
        self._position: dict[int, int] = {}
        self._ann: ApproximateIndex | None = None
        self._building: threading.Thread | None = None
        self._replay: list[tuple[str, np.ndarray, np.ndarray | None]] = []
        self.on_rebuilt: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._position)

    @property
    def ids(self) -> np.ndarray:
        return np.fromiter(self._position.keys(), dtype=np.int64, count=len(self._position))

    @property
    def approximate(self) -> bool:
        """Whether cosine queries are answered by the approximate index now."""
        return self._ann is not None

    @property
    def nbytes(self) -> int:
        return self._exact.nbytes + (self._ann.nbytes if self._ann is not None else 0) + self._dead.nbytes

    def __contains__(self, image_id: int) -> bool:
        return image_id in self._position

    def vector_of(self, image_id: int) -> np.ndarray | None:
        """The stored vector of an indexed id, or None."""
        with self._lock:
            pos = self._position.get(image_id)
            return None if pos is None else self._exact.vectors[pos].copy()

    # ------------------------------------------------------------ changes

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            self.remove(ids[np.fromiter((i in self._position for i in ids.tolist()), dtype=bool, count=len(ids))])
            start = len(self._exact)
            self._exact.add(ids, vectors)
            self._dead = np.concatenate([self._dead, np.zeros(len(ids), dtype=bool)])
            self._position.update(zip(ids.tolist(), range(start, start + len(ids))))
            if self._ann is not None:
                self._ann.add(ids, vectors)
            if self._building is not None:
                self._replay.append(("add", ids, vectors))
            self._maybe_rebuild()

    def remove(self, ids: np.ndarray) -> int:
        ids = np.asarray(ids, dtype=np.int64)
        with self._lock:
            positions = [p for p in (self._position.pop(i, None) for i in ids.tolist()) if p is not None]
            if not positions:
                return 0
            self._dead = self._dead.copy()
            self._dead[positions] = True
            if self._ann is not None:
                self._ann.remove(ids)
            if self._building is not None:
                self._replay.append(("remove", ids, None))
            self._maybe_rebuild()
            return len(positions)

    def _maybe_rebuild(self) -> None:
        if self._building is not None:
            return
        live, dead = len(self._position), int(self._dead.sum())
        if dead and self.expansion.dba_k > 0 and live <= self.expansion.dba_max_vectors:
            # Augmented vectors average over neighbours, removed ones included: recompute
            # now, so search stays exactly what a fresh index would answer.
            self.rebuild(wait=True)
            return
        wants_ann = live >= self.threshold
        stale_ann = self._ann is not None and self._ann.tombstones > 0.1 * max(live, 1)
        compact = dead > 0.1 * max(live, 1) and dead >= 64
        if (wants_ann and self._ann is None) or stale_ann or compact or (self._ann is not None and not wants_ann):
            self.rebuild(wait=not self.background)

    def rebuild(self, *, wait: bool = True) -> None:
        """Compact the exact index and (re)build the approximate one from the live rows:
        on a background thread, or here when `wait` (joining a build already running)."""
        with self._lock:
            thread = self._building
            if thread is None:
                order = np.array(sorted(self._position.values()), dtype=np.int64)
                ids = self._exact.ids[order].copy()
                vectors = self._exact.vectors[order].copy()
                self._replay = []
                if wait:
                    self._building = threading.current_thread()
                    self._build(ids, vectors)
                    return
                thread = threading.Thread(target=self._build, args=(ids, vectors), name="ann-rebuild", daemon=True)
                self._building = thread
                thread.start()
        if wait and thread is not threading.current_thread():
            thread.join()

    def _build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        try:
            exact = VectorIndex(self.dim, expansion=self.expansion)
            exact.add(ids, vectors)
            ann = None
            if len(ids) >= self.threshold:
                ann = ApproximateIndex(self.dim, params=self.params)
                block = 100_000
                for b in range(0, len(ids), block):
                    ann.add(ids[b : b + block], vectors[b : b + block])
            with self._lock:
                position = dict(zip(ids.tolist(), range(len(ids))))
                dead = np.zeros(len(ids), dtype=bool)
                self._exact, self._ann, self._dead, self._position = exact, ann, dead, position
                replay, self._replay, self._building = self._replay, [], None
                for op, op_ids, op_vectors in replay:
                    if op == "add" and op_vectors is not None:
                        self.add(op_ids, op_vectors)
                    else:
                        self.remove(op_ids)
        finally:
            with self._lock:
                if self._building is threading.current_thread():
                    self._building = None
        if self.on_rebuilt is not None:
            self.on_rebuilt()

    # ------------------------------------------------------------ search

    def search(self, query: np.ndarray, *, k: int = 10, metric: str = "cosine", exclude: int | None = None) -> list[Hit]:
        check_metric(metric)
        ann = self._ann
        if ann is not None and metric == "cosine" and k <= self.max_ann_k:
            with self._lock:  # faiss must not search while another thread adds
                return self._search_approximate(self._ann or ann, query, k=k, exclude=exclude)
        with self._lock:
            # Scored under the lock: an add grows the exact index and replaces its augmented
            # vectors in place, so a score taken meanwhile could mix two versions of it.
            exact, dead = self._exact, self._dead
            if len(exact) == 0:
                return []
            scores, largest = exact.scores(query, metric=metric, exclude=exclude, dead=dead)
            ids = exact.ids
        worst = _worst(largest)
        if dead.any():
            scores = np.where(dead[: len(scores)], worst, scores)
        if exclude is not None:
            scores = np.where(ids == exclude, worst, scores)
        order = top_k_indices(scores, k, largest=largest)
        return [Hit(int(ids[i]), float(scores[i])) for i in order if np.isfinite(scores[i])]

    def _search_approximate(self, ann: ApproximateIndex, query: np.ndarray, *, k: int, exclude: int | None) -> list[Hit]:
        q = l2_rows(np.asarray(query, dtype=np.float32).reshape(self.dim))
        qe_k = self.expansion.qe_k
        if qe_k > 0:  # α-query expansion on the approximate neighbours, as the exact path does
            first = ann.search(q, k=qe_k, exclude=exclude)
            exact, position = self._exact, self._position
            rows = [position[h.id] for h in first if h.id in position]
            if rows:
                weights = np.maximum(np.array([h.score for h in first if h.id in position], dtype=np.float32), 0.0)
                q = l2_rows(q + (weights**self.expansion.alpha) @ l2_rows(exact.vectors[rows]))
        return ann.search(q, k=k, exclude=exclude)
