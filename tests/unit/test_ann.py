"""The approximate (faiss) index and the tiered index that switches to it."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.vision.ann import AnnParams, ApproximateIndex, TieredIndex
from gallery.vision.index import Expansion, VectorIndex


def clustered(n: int, dim: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, dim)) * 2
    return (centres[rng.integers(0, 12, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_top10_agrees_with_exact_search(kind: str) -> None:
    x, q = clustered(5000), clustered(100, seed=1)
    ids = np.arange(10_000, 15_000)
    exact = VectorIndex(24)
    exact.add(ids, x)
    ann = ApproximateIndex(24, params=AnnParams(kind=kind, ef_search=128, nprobe=32))
    ann.add(ids[:2000], x[:2000])
    ann.add(ids[2000:], x[2000:])  # grows incrementally
    truth = [[h.id for h in exact.search(v, k=10)] for v in q]
    found = [[h.id for h in ann.search(v, k=10)] for v in q]
    assert recall(found, truth) >= 0.9
    hit = ann.search(q[0], k=1)[0]
    assert hit.score == pytest.approx(exact.search(q[0], k=1)[0].score, abs=1e-4)  # cosine, like exact


def test_removed_images_never_come_back_from_the_approximate_index() -> None:
    x = clustered(3000)
    ann = ApproximateIndex(24)
    ann.add(np.arange(3000), x)
    gone = [h.id for h in ann.search(x[5], k=20)]
    assert 5 in gone
    assert ann.remove(np.array(gone)) == 20
    assert len(ann) == 2980
    assert not set(gone) & {h.id for h in ann.search(x[5], k=50)}
    ann.add(np.array([5]), x[5:6])  # published again
    assert ann.search(x[5], k=1)[0].id == 5


def test_tiered_index_is_exact_below_the_threshold_and_approximate_above() -> None:
    x = clustered(1200)
    index = TieredIndex(24, threshold=1000, background=False)
    index.add(np.arange(900), x[:900])
    assert not index.approximate
    exact = VectorIndex(24)
    exact.add(np.arange(900), x[:900])
    assert [h.id for h in index.search(x[3], k=10)] == [h.id for h in exact.search(x[3], k=10)]
    index.add(np.arange(900, 1200), x[900:])
    assert index.approximate and len(index) == 1200
    assert index.search(x[1100], k=1)[0].id == 1100
    # Euclidean and inner product stay exact on the same index.
    exact.add(np.arange(900, 1200), x[900:])
    for metric in ("euclidean", "inner_product"):
        assert [h.id for h in index.search(x[7], k=10, metric=metric)] == [h.id for h in exact.search(x[7], k=10, metric=metric)]
    index.remove(np.arange(300))  # a quarter removed: compacted and rebuilt
    assert len(index) == 900 and not index.approximate
    assert all(h.id >= 300 for h in index.search(x[3], k=20))


def test_exclude_and_query_expansion_work_on_the_approximate_path() -> None:
    x = clustered(1500)
    expansion = Expansion(qe_k=5, alpha=3.0)
    index = TieredIndex(24, expansion=expansion, threshold=1000, background=False)
    index.add(np.arange(1500), x)
    assert index.approximate
    hits = index.search(x[42], k=10, exclude=42)
    assert len(hits) == 10 and 42 not in {h.id for h in hits}
    exact = VectorIndex(24, expansion=expansion)
    exact.add(np.arange(1500), x)
    assert recall([[h.id for h in hits]], [[h.id for h in exact.search(x[42], k=10, exclude=42)]]) >= 0.8


def test_background_rebuild_keeps_answering_and_replays_changes_made_meanwhile() -> None:
    x = clustered(2500)
    index = TieredIndex(24, threshold=2000, background=True)
    index.add(np.arange(1900), x[:1900])
    index.add(np.arange(1900, 2400), x[1900:2400])  # crosses the threshold: built on a thread
    assert index.search(x[10], k=1)[0].id == 10  # answered (exactly) while the build runs
    index.remove(np.array([10]))
    index.add(np.arange(2400, 2500), x[2400:])
    index.rebuild(wait=True)  # joins the running build
    assert index.approximate and len(index) == 2499
    assert 10 not in {h.id for h in index.search(x[10], k=20)}
    assert index.search(x[2450], k=1)[0].id == 2450


def test_searches_while_photos_are_added_never_fail_and_see_whole_versions() -> None:
    """Uploads land in the index while visitors search (DBA and query expansion on): every
    search answers, from the index before or after an add, never a mix of both."""
    import threading

    x = clustered(1200, seed=4)
    index = TieredIndex(24, expansion=Expansion(dba_k=5, qe_k=5, alpha=3.0), threshold=10**9)
    index.add(np.arange(400), x[:400])
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        rng = np.random.default_rng()
        while not stop.is_set():
            try:
                hits = index.search(x[int(rng.integers(0, 1200))], k=10, exclude=None)
                assert len(hits) == 10 and len({h.id for h in hits}) == 10
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)
                return

    threads = [threading.Thread(target=search) for _ in range(4)]
    for t in threads:
        t.start()
    for start in range(400, 1200, 8):
        index.add(np.arange(start, start + 8), x[start : start + 8])
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(index) == 1200
