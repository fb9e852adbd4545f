"""PCA reduction of embeddings (scikit-learn), serialisable as plain arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA


@dataclass(frozen=True)
class FittedPCA:
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d)
    explained_variance: np.ndarray  # (k,)
    whiten: bool
    explained_variance_ratio: float

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[1])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project (n, d) or (d,) vectors; float32 out."""
        x = np.asarray(x, dtype=np.float32)
        y = (x - self.mean) @ self.components.T
        if self.whiten:
            y = y / np.sqrt(np.maximum(self.explained_variance, 1e-12))
        return y.astype(np.float32)


def fit_pca(x: np.ndarray, *, dims: int, whiten: bool = False, seed: int = 0) -> FittedPCA:
    """Fit PCA on (n, d) vectors; dims is capped by what n and d allow."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("PCA needs at least two vectors")
    k = int(min(dims, x.shape[0] - 1, x.shape[1]))
    pca = PCA(n_components=k, whiten=False, svd_solver="auto", random_state=seed)
    pca.fit(x)
    return FittedPCA(
        mean=pca.mean_.astype(np.float32),
        components=pca.components_.astype(np.float32),
        explained_variance=pca.explained_variance_.astype(np.float32),
        whiten=whiten,
        explained_variance_ratio=float(pca.explained_variance_ratio_.sum()),
    )
