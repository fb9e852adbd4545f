"""Exact top-k similarity search over an in-memory float32 matrix.

Right up to ~100k vectors: one matrix-vector product and a partial sort. Scores are
"higher is more similar" for cosine and inner product; Euclidean reports the distance
(lower is more similar).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("cosine", "euclidean", "inner_product")


@dataclass(frozen=True)
class Hit:
    id: int
    score: float


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def top_k_indices(scores: np.ndarray, k: int, *, largest: bool) -> np.ndarray:
    """Indices of the k best scores, best first, without sorting the whole array."""
    n = scores.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    keyed = -scores if largest else scores
    part = np.argpartition(keyed, k - 1)[:k] if k < n else np.arange(n)
    return part[np.argsort(keyed[part], kind="stable")]


class VectorIndex:
    """Ids and vectors of one embedding space; grows by appending."""

    def __init__(self, dim: int):
        self.dim = dim
        self._ids = np.zeros(0, dtype=np.int64)
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._sq_norms = np.zeros(0, dtype=np.float32)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self._size]

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(ids) != len(vectors):
            raise ValueError("ids and vectors differ in length")
        need = self._size + len(ids)
        if need > len(self._ids):
            cap = max(need, 2 * len(self._ids), 1024)
            self._ids = np.resize(self._ids, cap)
            grown = np.zeros((cap, self.dim), dtype=np.float32)
            grown[: self._size] = self._vectors[: self._size]
            self._vectors = grown
            self._sq_norms = np.resize(self._sq_norms, cap)
        self._ids[self._size : need] = ids
        self._vectors[self._size : need] = vectors
        self._sq_norms[self._size : need] = np.einsum("ij,ij->i", vectors, vectors)
        self._size = need

    def search(self, query: np.ndarray, *, k: int = 10, metric: str = "cosine", exclude: int | None = None) -> list[Hit]:
        check_metric(metric)
        if self._size == 0:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(self.dim)
        x = self._vectors[: self._size]
        dots = x @ q
        if metric == "cosine":
            norms = np.sqrt(self._sq_norms[: self._size]) * max(float(np.linalg.norm(q)), 1e-12)
            scores = dots / np.maximum(norms, 1e-12)
            largest = True
        elif metric == "inner_product":
            scores = dots
            largest = True
        else:
            sq = self._sq_norms[: self._size] - 2.0 * dots + float(q @ q)
            scores = np.sqrt(np.maximum(sq, 0.0))
            largest = False
        extra = 1 if exclude is not None else 0
        order = top_k_indices(scores, k + extra, largest=largest)
        hits = [Hit(int(self._ids[i]), float(scores[i])) for i in order if self._ids[i] != exclude]
        return hits[:k]
