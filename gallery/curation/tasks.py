"""Curation tasks: catalog jobs, resumed after a crash."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import worker_ready

from gallery.curation import services as curation_services
from gallery.tasking import TRANSIENT, retry_later


@shared_task(bind=True, acks_late=True, max_retries=8, name="gallery.run_catalog_job")
def run_catalog_job(self: Any, job_id: int) -> str | None:
    """Re-embed, refit or near-duplicate job; resumes where a crashed run stopped."""
    try:
        job = curation_services.catalog_job_run(job_id=job_id)
    except TRANSIENT as exc:
        raise retry_later(self, exc) from exc
    return job.status if job else None


@worker_ready.connect
def _resume_catalog_jobs(sender: Any = None, **_: Any) -> None:
    """A restarted worker resumes the catalog jobs a crash interrupted."""
    from .models import CatalogJob

    for pk in CatalogJob.objects.filter(status__in=[CatalogJob.Status.QUEUED, CatalogJob.Status.RUNNING]).values_list(
        "pk", flat=True
    ):
        run_catalog_job.delay(pk)
