"""Thin Celery tasks: each takes a key, reloads state and calls one service."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import OperationalError

from . import services
from .models import Image

log = logging.getLogger(__name__)

# Errors worth retrying: the database busy or briefly gone, storage hiccups.
TRANSIENT = (OperationalError, OSError, ConnectionError)


def _retry_later(task: Any, exc: Exception) -> Exception:
    """Retry a task after a transient error, backing off 1, 2, 4 … up to 60 s."""
    return task.retry(exc=exc, countdown=min(2**task.request.retries, 60))  # type: ignore[no-any-return]


@shared_task(bind=True, acks_late=True, max_retries=8, name="gallery.embed_image")
def embed_image(self: Any, image_id: int) -> dict[str, Any]:
    try:
        outcome = services.images_embed_batch(image_id=image_id, worker=self.request.hostname or None)
    except TRANSIENT as exc:
        raise _retry_later(self, exc) from exc
    if outcome.state == "busy":
        # Another worker holds it; look again once its claim could have gone stale.
        raise self.retry(countdown=settings.IMAGESEARCH["STALE_PROCESSING_SECONDS"] // 4 + 1, max_retries=None)
    for ready_id in outcome.ready:
        match_upload.apply_async(args=[ready_id], queue=outcome.lane)  # copyright check, on the same lane
    if outcome.ready:
        backbone = services.pipeline.catalog_state().backbone
        if services.reduction_needed(backbone=backbone):
            fit_reduction.delay(backbone)
    return {"state": outcome.state, "ready": outcome.ready, "failed": outcome.failed}


@shared_task(acks_late=True, name="gallery.fit_reduction")
def fit_reduction(backbone: str) -> int | None:
    if not services.reduction_needed(backbone=backbone):
        return None
    reduction = services.reduction_fit(backbone=backbone)
    return reduction.pk if reduction else None


@shared_task(name="gallery.sweep_waiting_images")
def sweep_waiting_images(min_age_seconds: int | None = None) -> int:
    """Queue images whose task may have been lost (broker down at upload, a lane that stopped
    moving, a crashed worker), each on its own lane. It runs on the interactive queue: it is
    quick, and a lost upload must not wait behind a bulk backlog to be found."""
    services.images_pictures_reconcile()
    return services.images_requeue_waiting(min_age_seconds=min_age_seconds)


@shared_task(name="gallery.prune_catalog_changes")
def prune_catalog_changes() -> int:
    """Delete catalog change-log entries older than the retention."""
    return services.catalog_changes_prune(older_than_seconds=settings.IMAGESEARCH["CHANGE_LOG_RETENTION_SECONDS"])


@worker_ready.connect
def _recover_on_start(sender: Any = None, **_: Any) -> None:
    """A restarted worker releases what its previous life had claimed, then queues all waiting images."""
    hostname = getattr(sender, "hostname", "") or ""
    released = Image.objects.filter(status=Image.Status.PROCESSING, claimed_by=hostname).update(
        status=Image.Status.PENDING, claimed_at=None, claimed_by=""
    )
    queued = services.images_requeue_waiting(min_age_seconds=0, only_lost=False)
    services.pipeline.catalog_backbone()  # build the network now, not on the first upload
    if released or queued:
        log.info("worker start: released %d stale claims, queued %d waiting images", released, queued)


# ---- catalog curation ------------------------------------------------------


@shared_task(bind=True, acks_late=True, max_retries=8, name="gallery.run_catalog_job")
def run_catalog_job(self: Any, job_id: int) -> str | None:
    """Re-embed, refit or near-duplicate job; resumes where a crashed run stopped."""
    try:
        job = services.catalog_job_run(job_id=job_id)
    except TRANSIENT as exc:
        raise _retry_later(self, exc) from exc
    return job.status if job else None


@worker_ready.connect
def _resume_catalog_jobs(sender: Any = None, **_: Any) -> None:
    """A restarted worker resumes the catalog jobs a crash interrupted."""
    from .models import CatalogJob

    for pk in CatalogJob.objects.filter(status__in=[CatalogJob.Status.QUEUED, CatalogJob.Status.RUNNING]).values_list(
        "pk", flat=True
    ):
        run_catalog_job.delay(pk)


# ---------------------------------------------------------------- copyright monitoring


@shared_task(bind=True, acks_late=True, max_retries=5, name="gallery.match_upload")
def match_upload(self: Any, image_id: int) -> int:
    """Check a ready upload against the protected works; returns how many matches it has."""
    try:
        return len(services.upload_match(image_id=image_id))
    except TRANSIENT as exc:
        raise _retry_later(self, exc) from exc


@shared_task(bind=True, acks_late=True, max_retries=5, name="gallery.describe_protected_work")
def describe_protected_work(self: Any, work_id: int) -> str | None:
    try:
        work = services.protected_work_describe(work_id=work_id)
    except TRANSIENT as exc:
        raise _retry_later(self, exc) from exc
    if work is not None and work.status == work.Status.READY:
        scan_catalog_for_work.delay(work_id)
    return work.status if work is not None else None


@shared_task(bind=True, acks_late=True, max_retries=5, name="gallery.scan_catalog_for_work")
def scan_catalog_for_work(self: Any, work_id: int) -> int:
    """Check the existing catalog for copies of a newly registered work."""
    try:
        return len(services.protected_work_scan_catalog(work_id=work_id))
    except TRANSIENT as exc:
        raise _retry_later(self, exc) from exc
