"""Exact top-k search, PCA and retrieval metrics against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.metrics import average_precision, evaluate_rankings, similarity_matrix
from gallery.vision.index import VectorIndex
from gallery.vision.reduction import fit_pca


@pytest.fixture
def clustered() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 32)) * 3
    labels = rng.integers(0, 5, size=400)
    return (centres[labels] + rng.normal(size=(400, 32))).astype(np.float32), labels


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "inner_product"])
def test_top_k_matches_brute_force(clustered, metric: str) -> None:  # type: ignore[no-untyped-def]
    x, _ = clustered
    index = VectorIndex(32)
    index.add(np.arange(1000, 1250), x[:250])
    index.add(np.arange(1250, 1400), x[250:])  # grows by appending
    q = x[7] + 0.1
    hits = index.search(q, k=10, metric=metric)
    if metric == "cosine":
        ref = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
        order = np.argsort(-ref)
    elif metric == "inner_product":
        ref = x @ q
        order = np.argsort(-ref)
    else:
        ref = np.linalg.norm(x - q, axis=1)
        order = np.argsort(ref)
    assert [h.id for h in hits] == (order[:10] + 1000).tolist()
    np.testing.assert_allclose([h.score for h in hits], ref[order[:10]], rtol=1e-4, atol=1e-4)


def test_exclude_drops_the_query_itself(clustered) -> None:  # type: ignore[no-untyped-def]
    x, _ = clustered
    index = VectorIndex(32)
    index.add(np.arange(len(x)), x)
    hits = index.search(x[5], k=5, exclude=5)
    assert len(hits) == 5 and all(h.id != 5 for h in hits)
    assert index.search(x[5], k=1)[0].id == 5


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        VectorIndex(4).search(np.zeros(4), metric="manhattan")


def test_pca_keeps_neighbourhoods_and_matches_sklearn(clustered) -> None:  # type: ignore[no-untyped-def]
    from sklearn.decomposition import PCA

    x, labels = clustered
    fitted = fit_pca(x, dims=8)
    ref = PCA(n_components=8).fit(x).transform(x)
    y = fitted.transform(x)
    assert y.shape == (400, 8) and y.dtype == np.float32
    np.testing.assert_allclose(np.abs(y), np.abs(ref), atol=1e-3)  # equal up to component sign
    scores, larger = similarity_matrix(y, metric="cosine")
    assert evaluate_rankings(scores, labels, larger_is_better=larger).map > 0.9
    whitened = fit_pca(x, dims=8, whiten=True).transform(x)
    np.testing.assert_allclose(whitened.std(axis=0), 1.0, rtol=0.05)


def test_average_precision_by_hand() -> None:
    # relevant at ranks 1 and 3 of 2 relevant: (1/1 + 2/3) / 2
    assert average_precision(np.array([True, False, True, False]), 2) == pytest.approx((1 + 2 / 3) / 2)


def test_evaluation_scores_a_perfect_and_a_reversed_ranking() -> None:
    labels = np.array([0, 0, 1, 1])
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    scores, larger = similarity_matrix(x, metric="euclidean")
    good = evaluate_rankings(scores, labels, larger_is_better=larger, ks=(1,))
    assert good.map == 1.0 and good.precision_at[1] == 1.0
    bad = evaluate_rankings(-scores, labels, larger_is_better=larger, ks=(1,))
    assert bad.map < 0.6 and bad.precision_at[1] == 0.0


def _map_of(index: VectorIndex, x: np.ndarray, labels: np.ndarray) -> float:
    from benchmarks.metrics import average_precision

    aps = []
    for i in range(len(x)):
        hits = index.search(x[i], k=len(x) - 1, exclude=i)
        relevant = np.array([labels[h.id] == labels[i] for h in hits])
        aps.append(average_precision(relevant, int((labels == labels[i]).sum()) - 1))
    return float(np.mean(aps))


def test_incremental_augmentation_equals_a_full_build() -> None:
    from gallery.vision.index import Expansion

    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    settings = Expansion(dba_k=5, qe_k=5)
    whole = VectorIndex(16, expansion=settings)
    whole.add(np.arange(300), x)
    pieces = VectorIndex(16, expansion=settings)
    for start, stop in [(0, 1), (1, 40), (40, 41), (41, 299), (299, 300)]:
        pieces.add(np.arange(start, stop), x[start:stop])
    assert pieces._augmented is not None and whole._augmented is not None
    np.testing.assert_allclose(pieces._augmented, whole._augmented, atol=1e-5)
    for i in (0, 17, 299):
        assert [h.id for h in pieces.search(x[i], k=10)] == [h.id for h in whole.search(x[i], k=10)]


def test_expansion_raises_category_retrieval_quality() -> None:
    """Overlapping classes: DBA and α-QE pull each class together."""
    from gallery.vision.index import Expansion

    rng = np.random.default_rng(11)
    centres = rng.normal(size=(8, 24))
    labels = rng.integers(0, 8, size=320)
    x = (centres[labels] + 1.3 * rng.normal(size=(320, 24))).astype(np.float32)
    plain, expanded = VectorIndex(24), VectorIndex(24, expansion=Expansion(dba_k=5, qe_k=5, alpha=3))
    plain.add(np.arange(320), x)
    expanded.add(np.arange(320), x)
    before, after = _map_of(plain, x, labels), _map_of(expanded, x, labels)
    assert after > before + 0.03, (before, after)
    # other metrics are never re-ranked
    assert [h.id for h in expanded.search(x[0], k=5, metric="euclidean")] == [
        h.id for h in plain.search(x[0], k=5, metric="euclidean")
    ]


def test_precision_recall_f1_at_k_by_hand() -> None:
    from benchmarks.metrics import evaluate_ranked, interpolated_precision

    # one query, 3 relevant items in the database, ranking: R N R N N R
    ranking = np.array([True, False, True, False, False, True])
    scores = evaluate_ranked([ranking], [3], ks=(1, 5))
    assert scores.precision_at == {1: 1.0, 5: pytest.approx(2 / 5)}
    assert scores.recall_at == {1: pytest.approx(1 / 3), 5: pytest.approx(2 / 3)}
    assert scores.f1_at[1] == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))
    assert scores.f1_at[5] == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))
    assert scores.map == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    curve = interpolated_precision(ranking, 3, levels=np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(curve, [1.0, 2 / 3, 0.5])


def test_split_rankings_use_database_labels() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])
    result = evaluate_rankings(scores, np.array(["a", "b"]), db_labels=np.array(["a", "b", "a"]), ks=(1, 2))
    assert result.precision_at[1] == 1.0
    assert result.recall_at[2] == pytest.approx((1.0 + 1.0) / 2)
    assert result.map == pytest.approx(1.0)
