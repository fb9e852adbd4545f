"""The variants table re-ranks and scores as the product does, only faster."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import variants
from benchmarks.metrics import evaluate_rankings
from benchmarks.variants import Variant
from gallery.vision.index import Expansion, VectorIndex


def _clusters(classes: int = 6, per_class: int = 9, dim: int = 24, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    x = np.concatenate([c + 0.9 * rng.normal(size=(per_class, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(classes), per_class)
    return variants.unit_rows(x), y


@pytest.mark.parametrize(("dba_k", "qe_k"), [(0, 0), (5, 0), (0, 5), (5, 5), (10, 3)])
def test_reranked_scores_match_the_product_index(dba_k: int, qe_k: int) -> None:
    x, _ = _clusters()
    index = VectorIndex(x.shape[1], expansion=Expansion(dba_k=dba_k, qe_k=qe_k, alpha=3.0))
    index.add(np.arange(len(x)), x)
    fast = variants.reranked_scores(x, Variant(pca=0, dba_k=dba_k, qe_k=qe_k))
    for i in range(len(x)):
        scores, larger = index.scores(x[i], metric="cosine", exclude=i)
        assert larger
        others = np.arange(len(x)) != i
        np.testing.assert_allclose(fast[i, others], scores[others], atol=1e-5)


def test_loo_map_equals_the_evaluation_metric() -> None:
    x, y = _clusters(seed=3)
    scores = x @ x.T
    assert variants.loo_map(scores, y) == pytest.approx(evaluate_rankings(scores, y).map, abs=1e-9)
    perfect = (y[:, None] == y[None, :]).astype(np.float32)
    assert variants.loo_map(perfect, y) == pytest.approx(1.0)


def test_reranking_helps_on_clustered_photos_and_pooling_is_validated() -> None:
    x, y = _clusters(per_class=12, seed=5)
    plain = variants.loo_map(x @ x.T, y)
    reranked = variants.loo_map(variants.reranked_scores(x, Variant(pca=0)), y)
    assert reranked > plain
    maps = np.abs(np.random.default_rng(0).normal(size=(4, 3, 3, 8))).astype(np.float32)
    for pooling in variants.POOLINGS:
        assert np.allclose(np.linalg.norm(variants.pool(maps, pooling), axis=1), 1.0)
    np.testing.assert_allclose(variants.pool(maps, "gem1"), variants.pool(maps, "avg"), atol=1e-6)
    with pytest.raises(ValueError, match="unknown pooling"):
        variants.pool(maps, "median")


def test_few_per_class_keeps_every_class_and_at_most_n_photos() -> None:
    y = np.array(["a"] * 10 + ["b"] * 2 + ["c"] * 7)
    keep = variants.few_per_class(y, 4)
    counts = {label: int(np.sum(y[keep] == label)) for label in "abc"}
    assert counts == {"a": 4, "b": 2, "c": 4}
    assert list(keep) == sorted(keep)


def test_measure_scores_every_variant_on_both_catalogs() -> None:
    rng = np.random.default_rng(2)
    centres = np.abs(rng.normal(size=(4, 1, 1, 16)))
    maps = np.concatenate([np.abs(c + 0.4 * rng.normal(size=(8, 2, 2, 16))) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(4), 8)
    candidates = variants.standard_variants(Variant(pca=100))
    rows = variants.measure(maps, y, candidates, per_class=3)
    assert len(rows) == len(candidates)
    assert all(0.25 < r["map"] <= 1.0 and 0.0 < r["map_few"] <= 1.0 for r in rows)
    labels = [v.label for v in candidates]
    assert len(set(labels)) == len(labels)
    assert "gem3, PCA-100, DBA 5 + QE 5" in labels
