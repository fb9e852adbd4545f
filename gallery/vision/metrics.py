"""Retrieval quality: average precision, precision@k, recall@k over a labelled set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RetrievalScores:
    map: float
    precision_at: dict[int, float]
    recall_at: dict[int, float]
    queries: int


def average_precision(relevant_sorted: np.ndarray, n_relevant: int) -> float:
    """AP of one ranked list given a boolean relevance vector in rank order."""
    if n_relevant == 0:
        return 0.0
    hits = np.cumsum(relevant_sorted)
    ranks = np.arange(1, len(relevant_sorted) + 1)
    return float(np.sum((hits / ranks) * relevant_sorted) / n_relevant)


def evaluate_rankings(
    scores: np.ndarray, labels: np.ndarray, *, ks: tuple[int, ...] = (1, 5, 10, 20), larger_is_better: bool = True
) -> RetrievalScores:
    """Leave-one-out evaluation: row i of the (q, n) score matrix ranks the database for query i.

    The query itself (diagonal) is excluded; relevant means the same label.
    """
    labels = np.asarray(labels)
    n = scores.shape[0]
    aps: list[float] = []
    prec: dict[int, list[float]] = {k: [] for k in ks}
    rec: dict[int, list[float]] = {k: [] for k in ks}
    for i in range(n):
        s = np.array(scores[i], dtype=np.float64)
        s[i] = -np.inf if larger_is_better else np.inf
        order = np.argsort(-s if larger_is_better else s, kind="stable")[: n - 1]
        relevant = labels[order] == labels[i]
        n_rel = int(np.sum(labels == labels[i])) - 1
        aps.append(average_precision(relevant, n_rel))
        for k in ks:
            top = relevant[:k]
            prec[k].append(float(top.sum()) / k)
            rec[k].append(float(top.sum()) / n_rel if n_rel else 0.0)
    return RetrievalScores(
        map=float(np.mean(aps)),
        precision_at={k: float(np.mean(v)) for k, v in prec.items()},
        recall_at={k: float(np.mean(v)) for k, v in rec.items()},
        queries=n,
    )


def similarity_matrix(x: np.ndarray, *, metric: str) -> tuple[np.ndarray, bool]:
    """All-pairs scores for evaluation; returns (scores, larger_is_better)."""
    x = np.asarray(x, dtype=np.float32)
    if metric == "cosine":
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return xn @ xn.T, True
    if metric == "inner_product":
        return x @ x.T, True
    sq = np.einsum("ij,ij->i", x, x)
    d2 = sq[:, None] + sq[None, :] - 2 * (x @ x.T)
    return np.sqrt(np.maximum(d2, 0)), False
