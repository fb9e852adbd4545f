"""Catalog tasks: embedding uploads in batches, the periodic sweep, change-log pruning."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from gallery.catalog import pipeline
from gallery.catalog import services as catalog_services
from gallery.catalog.models import Image
from gallery.catalog.signals import images_ready
from gallery.search import services as search_services
from gallery.search.tasks import fit_reduction
from gallery.tasking import TRANSIENT, retry_later

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, max_retries=8, name="gallery.embed_image")
def embed_image(self: Any, image_id: int) -> dict[str, Any]:
    try:
        outcome = catalog_services.images_embed_batch(image_id=image_id, worker=self.request.hostname or None)
    except TRANSIENT as exc:
        raise retry_later(self, exc) from exc
    if outcome.state == "busy":
        # Another worker holds it; look again once its claim could have gone stale.
        raise self.retry(countdown=settings.IMAGESEARCH["STALE_PROCESSING_SECONDS"] // 4 + 1, max_retries=None)
    if outcome.ready:
        images_ready.send(sender=embed_image, image_ids=list(outcome.ready), lane=outcome.lane)
        backbone = pipeline.catalog_state().backbone
        if search_services.reduction_needed(backbone=backbone):
            fit_reduction.delay(backbone)
    return {"state": outcome.state, "ready": outcome.ready, "failed": outcome.failed}


@shared_task(name="gallery.sweep_waiting_images")
def sweep_waiting_images(min_age_seconds: int | None = None) -> int:
    """Queue images whose task may have been lost (broker down at upload, a lane that stopped
    moving, a crashed worker), each on its own lane. It runs on the interactive queue: it is
    quick, and a lost upload must not wait behind a bulk backlog to be found."""
    catalog_services.images_pictures_reconcile()
    return catalog_services.images_requeue_waiting(min_age_seconds=min_age_seconds)


@shared_task(name="gallery.prune_catalog_changes")
def prune_catalog_changes() -> int:
    """Delete catalog change-log entries older than the retention."""
    return catalog_services.catalog_changes_prune(older_than_seconds=settings.IMAGESEARCH["CHANGE_LOG_RETENTION_SECONDS"])


@worker_ready.connect
def _recover_on_start(sender: Any = None, **_: Any) -> None:
    """A restarted worker releases what its previous life had claimed, then queues all waiting images."""
    hostname = getattr(sender, "hostname", "") or ""
    released = Image.objects.filter(status=Image.Status.PROCESSING, claimed_by=hostname).update(
        status=Image.Status.PENDING, claimed_at=None, claimed_by=""
    )
    queued = catalog_services.images_requeue_waiting(min_age_seconds=0, only_lost=False)
    # Build the network and its catalog runtime's conversion now, not on the first upload.
    pipeline.embedding_backbone(pipeline.catalog_backbone())
    if released or queued:
        log.info("worker start: released %d stale claims, queued %d waiting images", released, queued)
