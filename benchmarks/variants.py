"""Retrieval variants measured side by side, to choose defaults on several sets at once.

Every variant starts from the same feature maps (one forward pass per photo) and is
scored by leave-one-out mAP, on the whole set and on a subsample of a few photos per
class (re-ranking that pulls in many neighbours helps big classes and hurts small ones;
a default must not hurt a catalog of few photos per subject).

The re-ranking maths is the product's (`gallery.vision.index.VectorIndex`: DBA over each
catalog vector's nearest neighbours, itself included, then α-query expansion over the
augmented vectors) written over whole matrices so that a variant over 3,000 photos takes
a second; `tests/unit/test_variants.py` checks it against the index itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gallery.vision.backbones import gem_pool
from gallery.vision.reduction import fit_pca

DEFAULT_POOLING = "gem3"  # a Variant's pooling when none is given; evaluate uses the product's


def product_pooling(gem_p: float, centre: bool = False) -> str:
    """The variant name of the product's pooling with GeM exponent `gem_p` (and the centre region)."""
    return f"gem{gem_p:g}" + (CENTRE if centre else "")


CENTRE = "+centre"
# avg, max, gem<p> (whole map); gem<p>+centre (the product's: the whole map's unit vector
# plus the centre region's); rmac<p>: regional GeM over R-MAC's square regions at three
# scales (about 40% overlap) plus the whole map, each region's unit vector summed.
POOLINGS = ("avg", "gem2", "gem3", "max", "gem2+centre", "gem3+centre", "rmac2")


@dataclass(frozen=True)
class Variant:
    """One way of turning feature maps into rankings."""

    pooling: str = DEFAULT_POOLING
    pca: int = 100
    dba_k: int = 5
    qe_k: int = 5
    alpha: float = 3.0
    # Neighbours kept only if at least this fraction of the best neighbour's similarity
    # (None: the first k whatever their similarity).
    relative_floor: float | None = None

    @property
    def label(self) -> str:
        rerank = "no re-ranking" if not (self.dba_k or self.qe_k) else f"DBA {self.dba_k} + QE {self.qe_k}"
        if (self.dba_k or self.qe_k) and self.alpha != 3.0:
            rerank += f", α {self.alpha:g}"
        floor = f", neighbours ≥ {self.relative_floor:g} × best" if self.relative_floor else ""
        return f"{self.pooling}, PCA-{self.pca}, {rerank}{floor}"


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pool(maps: np.ndarray, pooling: str) -> np.ndarray:
    """(n, h, w, c) activations → (n, c) unit descriptors: avg, max or gem<p>."""
    x = np.maximum(np.asarray(maps, dtype=np.float32), 1e-6)
    if pooling == "avg":
        return unit_rows(x.mean(axis=(1, 2)))
    if pooling == "max":
        return unit_rows(x.max(axis=(1, 2)))
    if pooling.startswith("gem"):
        p, centre = pooling[3:].removesuffix(CENTRE), pooling.endswith(CENTRE)
        return unit_rows(gem_pool(x, float(p), centre))
    if pooling.startswith("rmac"):
        q = float(pooling[4:])
        total = np.zeros((x.shape[0], x.shape[3]), dtype=np.float32)
        for top, bottom, left, right in rmac_regions(x.shape[1], x.shape[2]):
            total += unit_rows(gem_pool(x[:, top:bottom, left:right], q))
        return unit_rows(total)
    raise ValueError(f"unknown pooling {pooling!r}")


def rmac_regions(h: int, w: int, scales: int = 3) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) cells of the whole map and of R-MAC's square regions:
    at scale l, side 2·min(h, w)/(l + 1) rounded up, l placements along the shorter
    side and l + 1 along the longer one (one each way on a square map's first scale)."""
    out = [(0, h, 0, w)]
    for scale in range(1, scales + 1):
        side = min(h, w, int(np.ceil(2 * min(h, w) / (scale + 1))))
        down = scale + (1 if h > w else 0)
        across = scale + (1 if w > h else 0)
        tops = sorted(set(np.linspace(0, h - side, down).round().astype(int).tolist()))
        lefts = sorted(set(np.linspace(0, w - side, across).round().astype(int).tolist()))
        out += [(t, t + side, v, v + side) for t in tops for v in lefts]
    return out


def project(x: np.ndarray, dims: int) -> np.ndarray:
    """PCA fitted on the set itself (as a catalog fits its own), unit rows out."""
    if not dims:
        return unit_rows(x)
    return unit_rows(fit_pca(x, dims=dims).transform(x))


def _top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    sims = np.take_along_axis(scores, part, 1)
    order = np.argsort(-sims, axis=1, kind="stable")
    return np.take_along_axis(part, order, 1), np.take_along_axis(sims, order, 1)


def reranked_scores(x: np.ndarray, variant: Variant) -> np.ndarray:
    """(n, n) leave-one-out scores of every unit row against the catalog of all rows,
    re-ranked as the product's index does."""
    x = unit_rows(x)
    n = len(x)
    base = x @ x.T
    if variant.dba_k:
        idx, sims = _top(base, variant.dba_k)  # the first is the row itself
        weights = np.maximum(sims, 0.0) ** variant.alpha
        if variant.relative_floor is not None and idx.shape[1] > 1:
            keep = sims >= variant.relative_floor * sims[:, 1:2]
            keep[:, 0] = True
            weights = weights * keep
        catalog = unit_rows(np.einsum("nk,nkd->nd", weights, x[idx]))
    else:
        catalog = x
    scores = x @ catalog.T
    if variant.qe_k:
        others = scores.copy()
        others[np.arange(n), np.arange(n)] = -np.inf
        idx, sims = _top(others, variant.qe_k)
        weights = np.maximum(sims, 0.0) ** variant.alpha
        if variant.relative_floor is not None:
            weights = weights * (sims >= variant.relative_floor * sims[:, :1])
        expanded = unit_rows(x + np.einsum("nk,nkd->nd", weights, catalog[idx]))
        scores = expanded @ catalog.T
    return scores


def loo_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out mAP of an (n, n) score matrix (row i ranks every item but i);
    queries whose class has no other member are left out."""
    labels = np.asarray(labels)
    s = np.array(scores, dtype=np.float64)
    n = len(s)
    s[np.arange(n), np.arange(n)] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, : n - 1]
    relevant = labels[order] == labels[:, None]
    count = relevant.sum(axis=1)
    precision = np.cumsum(relevant, axis=1) / np.arange(1, n)
    ap = (precision * relevant).sum(axis=1) / np.maximum(count, 1)
    return float(ap[count > 0].mean())


def few_per_class(labels: np.ndarray, per_class: int, *, seed: int = 0) -> np.ndarray:
    """Sorted row indices keeping at most `per_class` photos of every class, at random."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    keep: list[int] = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        keep += rng.permutation(rows)[:per_class].tolist()
    return np.array(sorted(keep), dtype=np.int64)


def standard_variants(default: Variant) -> list[Variant]:
    """The product default and what the field uses around it: pooling, PCA size,
    re-ranking depth, and neighbourhoods that adapt to how alike the neighbours are."""
    base = default
    out = [Variant(base.pooling, 100, 0, 0), base]
    out += [Variant(p, base.pca, base.dba_k, base.qe_k, base.alpha) for p in POOLINGS if p != base.pooling]
    out += [Variant(base.pooling, d, base.dba_k, base.qe_k, base.alpha) for d in (64, 128, 256) if d != base.pca]
    out += [Variant(base.pooling, base.pca, k, k, base.alpha) for k in (10, 20) if k != base.dba_k]
    out += [
        Variant(base.pooling, base.pca, base.dba_k, 10, base.alpha),
        Variant(base.pooling, base.pca, 10, 10, base.alpha, relative_floor=0.9),
        Variant(base.pooling, base.pca, 20, 20, base.alpha, relative_floor=0.8),
        Variant(base.pooling, base.pca, 10, 10, 6.0),
    ]
    return list(dict.fromkeys(out))


def measure(
    maps: np.ndarray, labels: np.ndarray, variants: list[Variant], *, per_class: int = 4, pca_min_images: int = 200
) -> list[dict[str, float]]:
    """mAP of every variant on the whole set and on `per_class` photos per class; PCA
    only where the set holds `pca_min_images` photos, as in the product."""
    labels = np.asarray(labels)
    few = few_per_class(labels, per_class)
    pooled: dict[str, np.ndarray] = {}
    rows = []
    for variant in variants:
        if variant.pooling not in pooled:
            pooled[variant.pooling] = pool(maps, variant.pooling)
        x = pooled[variant.pooling]
        dims = variant.pca if len(x) >= pca_min_images else 0
        whole = loo_map(reranked_scores(project(x, dims), variant), labels)
        dims_few = variant.pca if len(few) >= pca_min_images else 0
        small = loo_map(reranked_scores(project(x[few], dims_few), variant), labels[few])
        rows.append({"map": whole, "map_few": small})
    return rows
