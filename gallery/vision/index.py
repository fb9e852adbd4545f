"""Exact top-k similarity search over an in-memory float32 matrix.

Right up to ~100k vectors: one matrix-vector product and a partial sort. Scores are
"higher is more similar" for cosine and inner product; Euclidean reports the distance
(lower is more similar).

For cosine search the index can also apply two classic re-ranking steps that raise
category-level retrieval quality (measured in the evaluate command):
- database-side augmentation (DBA): each catalog vector is replaced by the
  similarity-weighted mean of its `dba_k` nearest catalog neighbours (itself included);
- α-query expansion (α-QE): the query is expanded with its `qe_k` best matches,
  weighted by similarity^α, and searched again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("cosine", "euclidean", "inner_product")


@dataclass(frozen=True)
class Hit:
    id: int
    score: float


@dataclass(frozen=True)
class Expansion:
    """Re-ranking settings for cosine search; zeros turn a step off."""

    dba_k: int = 0
    qe_k: int = 0
    alpha: float = 3.0
    dba_max_vectors: int = 200_000  # above this, DBA's all-pairs neighbour search is skipped

    @property
    def enabled(self) -> bool:
        return self.dba_k > 0 or self.qe_k > 0


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def l2_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def top_k_indices(scores: np.ndarray, k: int, *, largest: bool) -> np.ndarray:
    """Indices of the k best scores, best first, without sorting the whole array."""
    n = scores.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    keyed = -scores if largest else scores
    part = np.argpartition(keyed, k - 1)[:k] if k < n else np.arange(n)
    return part[np.argsort(keyed[part], kind="stable")]


def _row_top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest similarities (unordered) and their column indices."""
    k = min(k, sims.shape[1])
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.tile(np.arange(sims.shape[1]), (len(sims), 1))
    return np.take_along_axis(sims, idx, axis=1), idx


class VectorIndex:
    """Ids and vectors of one embedding space; grows by appending."""

    def __init__(self, dim: int, *, expansion: Expansion | None = None):
        self.dim = dim
        self.expansion = expansion or Expansion()
        self._ids = np.zeros(0, dtype=np.int64)
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._sq_norms = np.zeros(0, dtype=np.float32)
        self._size = 0
        # DBA state: neighbour lists and the augmented unit vectors. Unit vectors are
        # derived from the stored ones and their norms, never kept as a second copy.
        self._nbr_idx = np.zeros((0, 0), dtype=np.int64)
        self._nbr_sim = np.zeros((0, 0), dtype=np.float32)
        self._augmented: np.ndarray | None = None

    def __len__(self) -> int:
        return self._size

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self._size]

    @property
    def vectors(self) -> np.ndarray:
        """The indexed vectors as added (a view; do not modify)."""
        return self._vectors[: self._size]

    @property
    def nbytes(self) -> int:
        extra = self._nbr_idx.nbytes + self._nbr_sim.nbytes
        extra += self._augmented.nbytes if self._augmented is not None else 0
        return int(self._ids.nbytes + self._vectors.nbytes + self._sq_norms.nbytes + extra)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(ids) != len(vectors):
            raise ValueError("ids and vectors differ in length")
        start, need = self._size, self._size + len(ids)
        if need > len(self._ids):
            # grow by an eighth: at most 12.5% slack, copies amortised
            cap = max(need + need // 8, 1024)
            self._ids = np.resize(self._ids, cap)
            grown = np.zeros((cap, self.dim), dtype=np.float32)
            grown[: self._size] = self._vectors[: self._size]
            self._vectors = grown
            self._sq_norms = np.resize(self._sq_norms, cap)
        self._ids[start:need] = ids
        self._vectors[start:need] = vectors
        self._sq_norms[start:need] = np.einsum("ij,ij->i", vectors, vectors)
        self._size = need
        if self.expansion.dba_k > 0:
            self._dba_append(start)

    # ------------------------------------------------------------ DBA maintenance

    def _unit_rows(self, start: int, stop: int) -> np.ndarray:
        norms = np.sqrt(np.maximum(self._sq_norms[start:stop], 1e-24))
        return self._vectors[start:stop] / norms[:, None]

    def _dba_active(self) -> bool:
        return self.expansion.dba_k > 0 and self._augmented is not None

    def _dba_append(self, start: int) -> None:
        """Bring neighbour lists and augmented vectors up to date after an append."""
        n, k = self._size, self.expansion.dba_k
        if n > self.expansion.dba_max_vectors:
            self._augmented = None
            return
        unit = self._unit_rows(0, n)
        kk = min(k, n)
        old_idx, old_sim = self._nbr_idx, self._nbr_sim
        nbr_idx = np.zeros((n, kk), dtype=np.int64)
        nbr_sim = np.full((n, kk), -np.inf, dtype=np.float32)
        if start:
            width = old_idx.shape[1]
            nbr_idx[:start, :width] = old_idx[:start]
            nbr_sim[:start, :width] = old_sim[:start]
        changed = np.zeros(n, dtype=bool)
        changed[start:] = True
        block = 2048
        for b0 in range(start, n, block):  # new rows against everything
            sims = unit[b0 : b0 + block] @ unit.T
            top_sim, top_idx = _row_top_k(sims, kk)
            nbr_sim[b0 : b0 + block], nbr_idx[b0 : b0 + block] = top_sim, top_idx
        if start:
            new = unit[start:n]
            for b0 in range(0, start, block):  # old rows: do the new vectors enter their lists?
                sims = unit[b0 : min(b0 + block, start)] @ new.T
                merged_sim = np.concatenate([nbr_sim[b0 : b0 + len(sims)], sims], axis=1)
                merged_idx = np.concatenate(
                    [nbr_idx[b0 : b0 + len(sims)], np.arange(start, n)[None].repeat(len(sims), 0)], axis=1
                )
                top_sim, pos = _row_top_k(merged_sim, kk)
                top_idx = np.take_along_axis(merged_idx, pos, axis=1)
                moved = (pos >= nbr_sim.shape[1]).any(axis=1) | (nbr_sim[b0 : b0 + len(sims)] == -np.inf).any(axis=1)
                nbr_sim[b0 : b0 + len(sims)], nbr_idx[b0 : b0 + len(sims)] = top_sim, top_idx
                changed[b0 : b0 + len(sims)] |= moved
        self._nbr_idx, self._nbr_sim = nbr_idx, nbr_sim
        augmented = np.zeros((n, self.dim), dtype=np.float32)
        if self._augmented is not None and start:
            augmented[: min(start, len(self._augmented))] = self._augmented[: min(start, len(self._augmented))]
        rows = np.flatnonzero(changed)
        weights = np.maximum(nbr_sim[rows], 0.0) ** self.expansion.alpha
        augmented[rows] = l2_rows(np.einsum("rk,rkd->rd", weights, unit[nbr_idx[rows]]))
        self._augmented = augmented

    # ------------------------------------------------------------ search

    def search(self, query: np.ndarray, *, k: int = 10, metric: str = "cosine", exclude: int | None = None) -> list[Hit]:
        if self._size == 0:
            check_metric(metric)
            return []
        scores, largest = self.scores(query, metric=metric, exclude=exclude)
        return self._hits(scores, k, largest=largest, exclude=exclude)

    def scores(
        self, query: np.ndarray, *, metric: str = "cosine", exclude: int | None = None, dead: np.ndarray | None = None
    ) -> tuple[np.ndarray, bool]:
        """The final-stage score of every indexed vector, and whether larger is better.
        `dead` marks rows that must not take part (removed, awaiting compaction)."""
        check_metric(metric)
        q = np.asarray(query, dtype=np.float32).reshape(self.dim)
        if metric == "cosine" and self.expansion.enabled:
            return self._expanded_scores(q, exclude=exclude, dead=dead), True
        x = self._vectors[: self._size]
        dots = x @ q
        if metric == "cosine":
            norms = np.sqrt(self._sq_norms[: self._size]) * max(float(np.linalg.norm(q)), 1e-12)
            return dots / np.maximum(norms, 1e-12), True
        if metric == "inner_product":
            return dots, True
        sq = self._sq_norms[: self._size] - 2.0 * dots + float(q @ q)
        return np.sqrt(np.maximum(sq, 0.0)), False

    def _hits(self, scores: np.ndarray, k: int, *, largest: bool, exclude: int | None) -> list[Hit]:
        extra = 1 if exclude is not None else 0
        order = top_k_indices(scores, k + extra, largest=largest)
        hits = [Hit(int(self._ids[i]), float(scores[i])) for i in order if self._ids[i] != exclude]
        return hits[:k]

    def _expanded_scores(self, q: np.ndarray, *, exclude: int | None, dead: np.ndarray | None = None) -> np.ndarray:
        q = l2_rows(q)
        augmented = self._augmented if self._dba_active() else None
        if augmented is not None:
            db = augmented
            scores = db @ q
        else:
            db = self._vectors[: self._size]
            inv_norms = 1.0 / np.sqrt(np.maximum(self._sq_norms[: self._size], 1e-24))
            scores = (db @ q) * inv_norms
        qe_k = self.expansion.qe_k
        if qe_k > 0:
            if exclude is not None:
                scores = np.where(self._ids[: self._size] == exclude, -np.inf, scores)
            if dead is not None and dead.any():
                scores = np.where(dead[: self._size], -np.inf, scores)
            top = top_k_indices(scores, qe_k, largest=True)
            weights = np.maximum(scores[top], 0.0) ** self.expansion.alpha
            if augmented is not None:
                q = l2_rows(q + weights @ db[top])
                scores = db @ q
            else:
                q = l2_rows(q + (weights * inv_norms[top]) @ db[top])
                scores = (db @ q) * inv_norms
        return scores
