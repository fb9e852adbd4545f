"""Writes to the search spaces: fitting and loading PCA reductions."""

from __future__ import annotations

import logging

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from gallery.catalog.models import Embedding, Image
from gallery.search import spacememo
from gallery.search.models import ReducedVector, Reduction
from gallery.vector_field import vector_bytes, vector_from
from gallery.vision.reduction import FittedPCA, fit_pca

log = logging.getLogger(__name__)

# Fitted PCAs loaded in this process, by reduction id.
# By row and what the row is: a database restored under a running process may reuse an id.
_loaded: dict[tuple[int, str, int], FittedPCA] = {}


def reduction_load(reduction: Reduction) -> FittedPCA:
    """The reduction's arrays, decoded once per process (reductions never change)."""
    key = (reduction.pk, reduction.backbone, reduction.version)
    fitted = _loaded.get(key)
    if fitted is None:
        dims, d = reduction.dims, reduction.input_dim
        fitted = FittedPCA(
            mean=vector_from(reduction.mean).copy(),
            components=vector_from(reduction.components).reshape(dims, d).copy(),
            explained_variance=vector_from(reduction.explained_variance).copy(),
            whiten=reduction.whiten,
            explained_variance_ratio=reduction.explained_variance_ratio,
        )
        _loaded[key] = fitted
    return fitted


def pca_images_needed(*, dims: int | None = None) -> int:
    """How many ready images a PCA fit needs: the configured minimum, and at least one
    more than its dimensions (n images span at most n-1 of them)."""
    conf = settings.IMAGESEARCH
    return max(int(conf["PCA_MIN_IMAGES"]), int(dims or conf["PCA_DIMS"]) + 1, 2)


def reduction_needed(*, backbone: str) -> bool:
    """True once the catalog can support a PCA fit, and again whenever it has doubled."""
    count = Embedding.objects.filter(backbone=backbone, image__status=Image.Status.READY).count()
    if count < pca_images_needed():
        return False
    active = Reduction.objects.filter(backbone=backbone, is_active=True).first()
    return active is None or count >= 2 * active.fitted_on


def _embedding_matrix(backbone: str, *, exclude_reduction: Reduction | None = None) -> tuple[np.ndarray, np.ndarray]:
    rows = Embedding.objects.filter(backbone=backbone, image__status=Image.Status.READY)
    if exclude_reduction is not None:
        rows = rows.exclude(image__reduced_vectors__reduction=exclude_reduction)
    ids, vecs = [], []
    for image_id, blob in rows.values_list("image_id", "vector").iterator(chunk_size=2000):
        ids.append(image_id)
        vecs.append(vector_from(blob))
    if not vecs:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return np.asarray(ids, dtype=np.int64), np.stack(vecs)


def _project_into(reduction: Reduction, fitted: FittedPCA, ids: np.ndarray, x: np.ndarray) -> None:
    for start in range(0, len(ids), 5000):
        y = fitted.transform(x[start : start + 5000])
        ReducedVector.objects.bulk_create(
            [
                ReducedVector(image_id=int(i), reduction=reduction, vector=vector_bytes(v))
                for i, v in zip(ids[start : start + 5000], y, strict=True)
            ],
            ignore_conflicts=True,
        )


def reduction_fit(*, backbone: str, dims: int | None = None, whiten: bool | None = None) -> Reduction | None:
    """Fit a new PCA on the catalog, project every vector, then switch to it atomically.

    Search keeps answering from the previous reduction until the switch; images that
    become ready meanwhile are projected inside the switching transaction.
    """
    conf = settings.IMAGESEARCH
    dims = dims or conf["PCA_DIMS"]
    whiten = conf["PCA_WHITEN"] if whiten is None else whiten
    ids, x = _embedding_matrix(backbone)
    if len(ids) < pca_images_needed(dims=dims):
        return None  # never a PCA with fewer dimensions than configured
    fitted = fit_pca(x, dims=dims, whiten=whiten)
    try:
        with transaction.atomic():
            version = (Reduction.objects.filter(backbone=backbone).aggregate(v=Max("version"))["v"] or 0) + 1
            reduction = Reduction.objects.create(
                backbone=backbone,
                version=version,
                dims=fitted.dims,
                input_dim=fitted.input_dim,
                whiten=fitted.whiten,
                fitted_on=len(ids),
                mean=vector_bytes(fitted.mean),
                components=vector_bytes(fitted.components),
                explained_variance=vector_bytes(fitted.explained_variance),
                explained_variance_ratio=fitted.explained_variance_ratio,
            )
    except IntegrityError:
        log.info("another %s reduction fit is in progress; skipping", backbone)
        return None
    _project_into(reduction, fitted, ids, x)
    with transaction.atomic():
        current = Reduction.objects.select_for_update().filter(backbone=backbone, is_active=True).first()
        if current is not None and current.fitted_on >= reduction.fitted_on and current.version > reduction.version:
            reduction.delete()
            return current
        late_ids, late_x = _embedding_matrix(backbone, exclude_reduction=reduction)
        if len(late_ids):
            _project_into(reduction, fitted, late_ids, late_x)
        if current is not None:
            Reduction.objects.filter(pk=current.pk).update(is_active=False)
        Reduction.objects.filter(pk=reduction.pk).update(is_active=True, activated_at=timezone.now())
        spacememo.forget()
        ReducedVector.objects.filter(reduction__backbone=backbone).exclude(reduction=reduction).delete()
    reduction.refresh_from_db()
    log.info("activated %s (fitted on %d, %.1f%% variance kept)", reduction, len(ids), 100 * fitted.explained_variance_ratio)
    return reduction
