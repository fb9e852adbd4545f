"""Reads for the curators: jobs, loadable backbones, refit readiness, near-duplicate groups."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from gallery.catalog import pipeline
from gallery.catalog.models import Embedding, Image
from gallery.curation.models import CatalogJob, DuplicateGroup
from gallery.vision.backbones import BACKBONES, Availability, backbone_availability


def catalog_jobs(*, limit: int = 10) -> list[CatalogJob]:
    return list(CatalogJob.objects.all()[:limit])


def backbone_choices() -> dict[str, Availability]:
    """Every backbone with whether its weights load on this machine (cheap, cached)."""
    weights = settings.IMAGESEARCH["RESNET50_WEIGHTS"] or None
    return {name: backbone_availability(name, resnet50_weights=weights) for name in BACKBONES}


def pca_refit_readiness() -> tuple[int, int]:
    """(ready images in the catalog's space, images a PCA fit needs)."""
    from gallery.search.services import pca_images_needed

    backbone = pipeline.catalog_state().backbone
    count = Embedding.objects.filter(backbone=backbone, image__status=Image.Status.READY).count()
    return count, pca_images_needed()


@dataclass(frozen=True)
class DuplicateGroupView:
    """A near-duplicate group for review: its members, the one suggested to keep and why."""

    group: DuplicateGroup
    images: list[Image]
    suggested: Image
    reason: str


def _keep_key(image: Image) -> tuple[int, int, object, int]:
    # Largest picture, then largest file, then the first upload: re-encoded copies are
    # usually smaller and newer than the original.
    return (-image.width * image.height, -image.size, image.created_at, image.pk)


def duplicate_suggestion(images: list[Image]) -> tuple[Image, str]:
    """The member to keep by default and the reason, e.g. "largest (1200×800), uploaded first"."""
    best = min(images, key=_keep_key)
    others = [im for im in images if im.pk != best.pk]
    pixels = best.width * best.height
    reasons = []
    if all(im.width * im.height < pixels for im in others):
        reasons.append(f"largest ({best.width}×{best.height})")
    else:
        same = [im for im in others if im.width * im.height == pixels]
        reasons.append(f"as large as any ({best.width}×{best.height})")
        if all(im.size < best.size for im in same):
            reasons.append("largest file")
    if all((best.created_at, best.pk) < (im.created_at, im.pk) for im in others):
        reasons.append("uploaded first")
    return best, ", ".join(reasons)


def duplicate_groups() -> list[DuplicateGroupView]:
    """The latest near-duplicate groups, best match first, each with the member to keep
    suggested; members are listed oldest first."""
    views = []
    for group in DuplicateGroup.objects.prefetch_related("images").select_related("job"):
        images = sorted(group.images.all(), key=lambda im: (im.created_at, im.pk))
        if not images:
            continue
        suggested, reason = duplicate_suggestion(images)
        views.append(DuplicateGroupView(group=group, images=images, suggested=suggested, reason=reason))
    return views


def images_without_keypoints() -> int:
    """Ready images whose keypoints are not stored for copy scans (uploaded before)."""
    from gallery.vision import localfeatures

    return Image.objects.filter(status=Image.Status.READY).exclude(copy_keypoints__version=localfeatures.VERSION).count()
