"""Near-duplicate groups among many vectors without an N×N similarity matrix.

The normalised matrix is compared with itself block by block (upper triangle only),
keeping just the pairs at or above the threshold, so memory stays at one block of
scores plus the vectors; pairs are then joined into groups with union-find. The
work grows with N² (one matrix product), the memory with N.

Global CNN embeddings rank same-species photos about as close as a re-encoded copy,
so candidate pairs can be confirmed with a perceptual hash of the pictures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DuplicateSet:
    members: list[int]  # row indices into the input matrix, ascending
    best_score: float


def normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def similar_pairs(
    x: np.ndarray, *, threshold: float, max_per_row: int = 10, block: int = 1024, chunk: int = 16384
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) whose cosine similarity is at least `threshold`, at most the
    `max_per_row` most similar later rows per row, so dense clusters of look-alikes
    cannot flood the result (the pairs stay below N × max_per_row).

    Scores are computed `block` rows against `chunk` columns at a time: memory is
    block × chunk floats (64 MB by default) whatever the number of rows.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError("threshold is a cosine similarity between -1 and 1")
    xn = normalise_rows(x)
    n = xn.shape[0]
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_s: list[np.ndarray] = []
    for r0 in range(0, n, block):
        rows = xn[r0 : r0 + block]
        row_idx = np.arange(r0, r0 + len(rows))[:, None]
        cand_j: list[np.ndarray] = []
        cand_s: list[np.ndarray] = []
        for c0 in range(r0, n, chunk):
            scores = rows @ xn[c0 : c0 + chunk].T
            cols = np.arange(c0, c0 + scores.shape[1])[None, :]
            scores[cols <= row_idx] = -np.inf  # upper triangle only
            k = min(max_per_row, scores.shape[1])
            top = (
                np.argpartition(-scores, k - 1, axis=1)[:, :k]
                if k < scores.shape[1]
                else np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
            )
            cand_j.append(top + c0)
            cand_s.append(np.take_along_axis(scores, top, axis=1))
        all_j, all_s = np.concatenate(cand_j, axis=1), np.concatenate(cand_s, axis=1)
        if all_j.shape[1] > max_per_row:
            best = np.argpartition(-all_s, max_per_row - 1, axis=1)[:, :max_per_row]
            all_j, all_s = np.take_along_axis(all_j, best, axis=1), np.take_along_axis(all_s, best, axis=1)
        ii, kk = np.nonzero(all_s >= threshold)
        if len(ii):
            found_i.append(ii + r0)
            found_j.append(all_j[ii, kk])
            found_s.append(all_s[ii, kk])
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    return (
        np.concatenate(found_i).astype(np.int64),
        np.concatenate(found_j).astype(np.int64),
        np.concatenate(found_s).astype(np.float32),
    )


def group_pairs(n: int, i: np.ndarray, j: np.ndarray, scores: np.ndarray) -> list[DuplicateSet]:
    """Connected components of the pair graph (union-find with path halving), largest
    similarity first; singletons are dropped."""
    parent = np.arange(n, dtype=np.int64)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return a

    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    best: dict[int, float] = {}
    for a, s in zip(i.tolist(), scores.tolist(), strict=True):
        root = find(a)
        best[root] = max(best.get(root, -1.0), float(s))
    touched = np.unique(np.concatenate([i, j])) if len(i) else np.zeros(0, dtype=np.int64)
    for a in touched.tolist():
        members.setdefault(find(a), []).append(a)
    groups = [DuplicateSet(sorted(m), best[root]) for root, m in members.items() if len(m) > 1]
    return sorted(groups, key=lambda g: (-g.best_score, g.members[0]))


def near_duplicate_groups(x: np.ndarray, *, threshold: float, max_per_row: int = 10) -> list[DuplicateSet]:
    """Groups of rows of `x` that are near-duplicates of one another."""
    i, j, s = similar_pairs(x, threshold=threshold, max_per_row=max_per_row)
    return group_pairs(len(x), i, j, s)


def confirm_pairs(
    i: np.ndarray, j: np.ndarray, scores: np.ndarray, *, hash_of: Callable[[int], int | None], max_distance: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the pairs whose 64-bit perceptual hashes differ in at most `max_distance`
    bits; `hash_of(row)` may return None for a picture it cannot read (pair dropped)."""
    cache: dict[int, int | None] = {}

    def cached(row: int) -> int | None:
        if row not in cache:
            cache[row] = hash_of(row)
        return cache[row]

    keep = np.zeros(len(i), dtype=bool)
    for n, (a, b) in enumerate(zip(i.tolist(), j.tolist(), strict=True)):
        ha, hb = cached(a), cached(b)
        keep[n] = ha is not None and hb is not None and (ha ^ hb).bit_count() <= max_distance
    return i[keep], j[keep], scores[keep]
