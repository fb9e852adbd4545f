"""Past one machine, by simulation: a compressed catalog index over many millions of
vectors that never all sit in memory at once.

Vectors are drawn chunk by chunk from a Gaussian mixture (fitted by the caller to real
PCA vectors); each chunk is added to the index and folded into the exact top-k of the
queries, then dropped. The index is an inverted file whose lists hold either 8-bit
scalar-quantised vectors (IVF-SQ8: a byte a dimension, near-exact distances) or
product-quantised residuals (IVF-PQ) whose shortlist is re-ranked with 8-bit vectors;
either way a fraction of the 512 bytes of a float32 128-d vector.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import faiss
import numpy as np
from sklearn.mixture import GaussianMixture

from gallery.vision.index import l2_rows


def sample_mixture(mixture: GaussianMixture, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, d) float32 draws from a fitted full-covariance mixture (its own `sample` restarts
    its random state on every call, so chunks drawn with it would repeat)."""
    counts = rng.multinomial(n, mixture.weights_)
    parts = []
    for mean, cov, count in zip(mixture.means_, mixture.covariances_, counts, strict=True):
        if count:
            chol = np.linalg.cholesky(cov)
            parts.append(mean + rng.standard_normal((int(count), len(mean))) @ chol.T)
    x = np.concatenate(parts).astype(np.float32)
    return x[rng.permutation(len(x))]


def chunks(mixture: GaussianMixture, n: int, size: int, seed: int) -> Iterator[np.ndarray]:
    """n unit vectors in chunks of `size`, the same for the same seed."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, size):
        yield np.ascontiguousarray(l2_rows(sample_mixture(mixture, min(size, n - start), rng)))


class TopK:
    """The exact top-k (inner product) of a few queries, folded over chunks of a catalog."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries, self.k = np.ascontiguousarray(queries, dtype=np.float32), k
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)

    def fold(self, chunk: np.ndarray, first_id: int) -> None:
        flat = faiss.IndexFlatIP(chunk.shape[1])
        flat.add(chunk)
        scores, ids = flat.search(self.queries, self.k)
        both_scores = np.concatenate([self.scores, scores], axis=1)
        both_ids = np.concatenate([self.ids, np.where(ids >= 0, ids + first_id, -1)], axis=1)
        best = np.argsort(-both_scores, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(both_scores, best, axis=1)
        self.ids = np.take_along_axis(both_ids, best, axis=1)


CODES = ("sq8", "pq")


@dataclass(frozen=True)
class CompressedParams:
    lists: int = 4096
    codes: str = "sq8"  # sq8: 8-bit vectors in the lists; pq: PQ codes re-ranked with 8-bit vectors
    pq_bytes: int = 32  # sub-quantisers of 8 bits (codes "pq")
    train_size: int = 200_000

    @property
    def spec(self) -> str:
        """The faiss factory string of the index."""
        if self.codes == "sq8":
            return f"IVF{self.lists},SQ8"
        return f"IVF{self.lists},PQ{self.pq_bytes},Refine(SQ8)"


def make_compressed(dim: int, params: CompressedParams) -> faiss.Index:
    if params.codes not in CODES:
        raise ValueError(f"codes must be one of {', '.join(CODES)}")
    index = faiss.index_factory(dim, params.spec, faiss.METRIC_INNER_PRODUCT)
    ivf_of(index).cp.niter = 10
    return index


def ivf_of(index: faiss.Index) -> faiss.IndexIVF:
    base = faiss.downcast_index(index.base_index) if isinstance(index, faiss.IndexRefine) else index
    return cast(faiss.IndexIVF, faiss.downcast_index(faiss.extract_index_ivf(base)))


def compressed_bytes(index: faiss.Index) -> int:
    """What the index holds in memory: the codes and ids of every list, the coarse
    centroids, the quantiser's tables and, with re-ranking, its 8-bit codes."""
    ivf = ivf_of(index)
    codes = int(ivf.ntotal) * (int(ivf.code_size) + 8)  # each list keeps codes and 64-bit ids
    centroids = ivf.nlist * ivf.d * 4
    pq = ivf.d * 256 * 4 if isinstance(ivf, faiss.IndexIVFPQ) else 2 * ivf.d * 4  # PQ tables, or SQ ranges
    refine = 0
    if isinstance(index, faiss.IndexRefine):
        refine = int(index.refine_index.ntotal) * int(index.refine_index.sa_code_size())
    return int(codes + centroids + pq + refine)


def set_search(index: faiss.Index, *, nprobe: int, k_factor: float) -> None:
    ivf_of(index).nprobe = nprobe
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = k_factor


@dataclass(frozen=True)
class Built:
    index: faiss.Index
    truth: np.ndarray  # (queries, k) exact ids
    train_s: float
    add_s: float  # adding every chunk (drawing and exact search excluded)
    total_s: float


def build_streaming(
    mixture: GaussianMixture,
    *,
    n: int,
    queries: np.ndarray,
    k: int,
    params: CompressedParams,
    chunk: int = 250_000,
    seed: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Built:
    """Train on a sample, then add n vectors chunk by chunk while the exact top-k of the
    queries is computed over the same chunks."""
    started = time.perf_counter()
    dim = queries.shape[1]
    index = make_compressed(dim, params)
    sample = next(chunks(mixture, min(params.train_size, max(n, 1)), params.train_size, seed + 1000))
    t0 = time.perf_counter()
    index.train(sample)
    train_s = time.perf_counter() - t0
    del sample
    truth = TopK(queries, k)
    add_s = 0.0
    first = 0
    for part in chunks(mixture, n, chunk, seed):
        t0 = time.perf_counter()
        index.add(part)
        add_s += time.perf_counter() - t0
        truth.fold(part, first)
        first += len(part)
        if progress is not None:
            progress(first)
    return Built(index, truth.ids, train_s, add_s, time.perf_counter() - started)


def search_one_by_one(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    """Each query alone, as a web process serves them: (found ids, seconds per query)."""
    found = np.full((len(queries), k), -1, dtype=np.int64)
    times = []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        _, ids = index.search(q[None], k)
        times.append(time.perf_counter() - t0)
        found[i] = ids[0]
    return found, times
