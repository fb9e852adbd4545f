"""Near-duplicate groups among many vectors without an N×N similarity matrix.

The normalised matrix is compared with itself block by block (upper triangle only),
keeping just the pairs at or above the threshold, so memory stays at one block of
scores plus the vectors; pairs are then joined into groups with union-find. This exact
path grows with N²; above a size bound an inverted-file index finds each image's
nearest neighbours instead, which grows with about N·√N.

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


def _keep_best_per_row(
    i: np.ndarray, j: np.ndarray, s: np.ndarray, max_per_row: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most `max_per_row` pairs per first index, the most similar ones."""
    if len(i) == 0:
        return i, j, s
    order = np.lexsort((-s, i))
    i, j, s = i[order], j[order], s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(i)) + 1]
    rank = np.arange(len(i)) - np.repeat(starts, np.diff(np.r_[starts, len(i)]))
    keep = rank < max_per_row
    return i[keep], j[keep], s[keep]


def similar_pairs(
    x: np.ndarray,
    *,
    threshold: float,
    max_per_row: int = 10,
    block: int = 1024,
    chunk: int = 16384,
    approximate_above: int = 200_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) whose cosine similarity is at least `threshold`, at most the
    `max_per_row` most similar later rows per row, so dense clusters of look-alikes
    cannot flood the result (the pairs stay below N × max_per_row).

    Up to `approximate_above` rows the search is exact: scores are computed `block`
    rows against `chunk` columns at a time (64 MB of scores by default whatever N) and
    thresholded before anything is sorted. Above it, an inverted-file index (faiss)
    finds each row's nearest neighbours without comparing every pair.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError("threshold is a cosine similarity between -1 and 1")
    xn = normalise_rows(x)
    n = xn.shape[0]
    if n > approximate_above:
        return _similar_pairs_ivf(xn, threshold=threshold, max_per_row=max_per_row)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_s: list[np.ndarray] = []
    for r0 in range(0, n, block):
        rows = xn[r0 : r0 + block]
        for c0 in range(r0, n, chunk):
            scores = rows @ xn[c0 : c0 + chunk].T
            ii, jj = np.nonzero(scores >= threshold)
            keep = jj + c0 > ii + r0  # upper triangle only
            ii, jj = ii[keep], jj[keep]
            found_i.append(ii + r0)
            found_j.append(jj + c0)
            found_s.append(scores[ii, jj])
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    return _keep_best_per_row(
        np.concatenate(found_i).astype(np.int64),
        np.concatenate(found_j).astype(np.int64),
        np.concatenate(found_s).astype(np.float32),
        max_per_row,
    )


def _similar_pairs_ivf(xn: np.ndarray, *, threshold: float, max_per_row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate pairs for very large catalogs: IVF over inner product, each row's
    nearest neighbours, thresholded. Near-duplicates sit far closer than the cell size,
    so they share an inverted list and are found."""
    import faiss

    n, d = xn.shape
    nlist = int(min(max(4 * np.sqrt(n), 256), 16384))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    index.train(xn[rng.choice(n, size=min(n, 64 * nlist), replace=False)])
    index.add(xn)
    index.nprobe = 8
    found_i, found_j, found_s = [], [], []
    k = max_per_row + 1
    for r0 in range(0, n, 65536):
        sims, nbrs = index.search(xn[r0 : r0 + 65536], k)
        rows = np.arange(r0, r0 + len(sims))[:, None].repeat(k, axis=1)
        keep = (nbrs > rows) & (sims >= threshold)  # each pair once, from its smaller index
        found_i.append(rows[keep])
        found_j.append(nbrs[keep])
        found_s.append(sims[keep])
    return _keep_best_per_row(
        np.concatenate(found_i).astype(np.int64),
        np.concatenate(found_j).astype(np.int64),
        np.concatenate(found_s).astype(np.float32),
        max_per_row,
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
