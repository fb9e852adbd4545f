"""Search tasks: fitting PCA once the catalog is large enough."""

from __future__ import annotations

from celery import shared_task

from gallery.search import services as search_services


@shared_task(acks_late=True, name="gallery.fit_reduction")
def fit_reduction(backbone: str) -> int | None:
    if not search_services.reduction_needed(backbone=backbone):
        return None
    reduction = search_services.reduction_fit(backbone=backbone)
    return reduction.pk if reduction else None
