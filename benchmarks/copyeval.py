"""Scoring a copy detector on an attack suite: recall@1, micro-average precision (µAP)
and precision at a threshold, per transformation family and overall.

Each query contributes its top-1 prediction (work, score). µAP ranks all predictions of
the copy queries and of the distractor queries (which have no correct answer) by score
and averages precision over the copies, so a distractor scoring above a copy costs
precision and a copy whose top-1 is wrong counts as never found.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prediction:
    family: str  # "" for a distractor
    correct: bool
    score: float


@dataclass(frozen=True)
class FamilyScores:
    queries: int
    recall_at_1: float
    micro_ap: float
    precision_at_threshold: float
    recall_at_threshold: float


def micro_average_precision(scores: np.ndarray, correct: np.ndarray, positives: int) -> float:
    if positives == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    hits = correct[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / positives)


def precision_recall_at(scores: np.ndarray, correct: np.ndarray, positives: int, threshold: float) -> tuple[float, float]:
    kept = scores >= threshold
    found = int((kept & correct).sum())
    precision = found / int(kept.sum()) if kept.any() else 1.0
    return precision, (found / positives if positives else 0.0)


def score_family(predictions: list[Prediction], family: str | None, threshold: float) -> FamilyScores:
    """Scores of one family (None: all copies) against all distractors."""
    copies = [p for p in predictions if p.family and (family is None or p.family == family)]
    pool = copies + [p for p in predictions if not p.family]
    scores = np.array([p.score for p in pool], dtype=np.float64)
    correct = np.array([p.correct for p in pool], dtype=bool)
    precision, recall = precision_recall_at(scores, correct, len(copies), threshold)
    return FamilyScores(
        queries=len(copies),
        recall_at_1=float(np.mean([p.correct for p in copies])) if copies else 0.0,
        micro_ap=micro_average_precision(scores, correct, len(copies)),
        precision_at_threshold=precision,
        recall_at_threshold=recall,
    )


def choose_threshold(predictions: list[Prediction], *, min_precision: float = 0.99) -> float:
    """The lowest threshold whose precision over all queries stays at least `min_precision`."""
    scores = np.array([p.score for p in predictions], dtype=np.float64)
    correct = np.array([p.correct for p in predictions], dtype=bool)
    order = np.argsort(-scores, kind="stable")
    precision = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(precision >= min_precision)[0]
    if len(ok) == 0:
        return float(scores.max()) if len(scores) else 1.0
    return float(scores[order][ok[-1]])
