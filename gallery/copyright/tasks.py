"""Copyright tasks: checking uploads, describing works, scanning the catalog."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from gallery.copyright import services as copyright_services
from gallery.tasking import TRANSIENT, retry_later


@shared_task(bind=True, acks_late=True, max_retries=5, name="gallery.match_upload")
def match_upload(self: Any, image_id: int) -> int:
    """Check a ready upload against the protected works; returns how many matches it has."""
    try:
        return len(copyright_services.upload_match(image_id=image_id))
    except TRANSIENT as exc:
        raise retry_later(self, exc) from exc


@shared_task(bind=True, acks_late=True, max_retries=5, name="gallery.describe_protected_work")
def describe_protected_work(self: Any, work_id: int) -> str | None:
    try:
        work = copyright_services.protected_work_describe(work_id=work_id)
    except TRANSIENT as exc:
        raise retry_later(self, exc) from exc
    if work is not None and work.status == work.Status.READY:
        scan_catalog_for_work.delay(work_id)
    return work.status if work is not None else None


@shared_task(bind=True, acks_late=True, max_retries=5, name="gallery.scan_catalog_for_work")
def scan_catalog_for_work(self: Any, work_id: int) -> int:
    """Check the existing catalog for copies of a newly registered work."""
    try:
        return len(copyright_services.protected_work_scan_catalog(work_id=work_id))
    except TRANSIENT as exc:
        raise retry_later(self, exc) from exc
