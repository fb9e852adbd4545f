"""Retrieval quality: average precision, precision/recall/F1 at k, precision-recall curves."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KS = (1, 5, 10, 20)
RECALL_LEVELS = np.linspace(0.0, 1.0, 21)


@dataclass(frozen=True)
class RetrievalScores:
    map: float
    precision_at: dict[int, float]
    recall_at: dict[int, float]
    f1_at: dict[int, float]
    queries: int
    pr_curve: np.ndarray = field(default_factory=lambda: np.zeros(0))  # interpolated precision at RECALL_LEVELS


def average_precision(relevant_sorted: np.ndarray, n_relevant: int) -> float:
    """AP of one ranked list given a boolean relevance vector in rank order."""
    if n_relevant == 0:
        return 0.0
    hits = np.cumsum(relevant_sorted)
    ranks = np.arange(1, len(relevant_sorted) + 1)
    return float(np.sum((hits / ranks) * relevant_sorted) / n_relevant)


def f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def interpolated_precision(relevant_sorted: np.ndarray, n_relevant: int, levels: np.ndarray = RECALL_LEVELS) -> np.ndarray:
    """Precision at each recall level, interpolated as the best precision at that recall or beyond."""
    if n_relevant == 0:
        return np.zeros(len(levels))
    hits = np.cumsum(relevant_sorted)
    precision = hits / np.arange(1, len(relevant_sorted) + 1)
    recall = hits / n_relevant
    best_after = np.maximum.accumulate(precision[::-1])[::-1]
    out = np.zeros(len(levels))
    for i, level in enumerate(levels):
        reached = np.flatnonzero(recall >= level - 1e-12)
        out[i] = best_after[reached[0]] if len(reached) else 0.0
    return out


def evaluate_ranked(relevance: list[np.ndarray], n_relevant: list[int], *, ks: tuple[int, ...] = KS) -> RetrievalScores:
    """Scores from ranked relevance lists (one boolean array per query, best first)."""
    aps = [average_precision(r, n) for r, n in zip(relevance, n_relevant, strict=True)]
    prec = {k: float(np.mean([r[:k].sum() / k for r in relevance])) for k in ks}
    rec = {k: float(np.mean([r[:k].sum() / n if n else 0.0 for r, n in zip(relevance, n_relevant, strict=True)])) for k in ks}
    f1s = {
        k: float(
            np.mean([f1(r[:k].sum() / k, r[:k].sum() / n if n else 0.0) for r, n in zip(relevance, n_relevant, strict=True)])
        )
        for k in ks
    }
    curve = np.mean([interpolated_precision(r, n) for r, n in zip(relevance, n_relevant, strict=True)], axis=0)
    return RetrievalScores(float(np.mean(aps)), prec, rec, f1s, len(relevance), curve)


def evaluate_rankings(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    db_labels: np.ndarray | None = None,
    ks: tuple[int, ...] = KS,
    larger_is_better: bool = True,
) -> RetrievalScores:
    """Score a (queries × database) matrix; relevant means the same label.

    Without db_labels the queries are the database itself (leave-one-out): row i ranks
    every item but i.
    """
    labels = np.asarray(labels)
    loo = db_labels is None
    db = labels if db_labels is None else np.asarray(db_labels)
    relevance, n_relevant = [], []
    for i in range(scores.shape[0]):
        s = np.array(scores[i], dtype=np.float64)
        if loo:
            s[i] = -np.inf if larger_is_better else np.inf
        order = np.argsort(-s if larger_is_better else s, kind="stable")
        if loo:
            order = order[: len(order) - 1]
        relevance.append(db[order] == labels[i])
        n_relevant.append(int(np.sum(db == labels[i])) - (1 if loo else 0))
    return evaluate_ranked(relevance, n_relevant, ks=ks)


def similarity_matrix(x: np.ndarray, *, metric: str, db: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Scores of every row of x against every row of db (default x itself); (scores, larger_is_better)."""
    x = np.asarray(x, dtype=np.float32)
    y = x if db is None else np.asarray(db, dtype=np.float32)
    if metric == "cosine":
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        yn = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return xn @ yn.T, True
    if metric == "inner_product":
        return x @ y.T, True
    d2 = np.einsum("ij,ij->i", x, x)[:, None] + np.einsum("ij,ij->i", y, y)[None, :] - 2 * (x @ y.T)
    return np.sqrt(np.maximum(d2, 0)), False
