"""Catalog jobs (re-embed, refit, near-duplicates) and the near-duplicate groups they find."""

from __future__ import annotations

from django.db import models

from gallery.catalog.models import Image


class CatalogJob(models.Model):
    """A background job over the whole catalog, with progress an admin can watch."""

    class Kind(models.TextChoices):
        REEMBED = "reembed", "Re-embed with another backbone"
        REFIT = "refit", "Refit PCA"
        NEAR_DUPLICATES = "neardup", "Find near-duplicates"
        LABELS = "labels", "Label images for words search"
        KEYPOINTS = "keypoints", "Index keypoints for copy scans"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    backbone = models.CharField(max_length=40, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        target = f" {self.backbone}" if self.backbone else ""
        return f"{self.get_kind_display()}{target} #{self.pk}"

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else (100 if self.status == self.Status.DONE else 0)


class DuplicateGroup(models.Model):
    """Images a near-duplicate job found to be copies of one another."""

    job = models.ForeignKey(CatalogJob, on_delete=models.CASCADE, related_name="groups")
    images = models.ManyToManyField(Image, related_name="duplicate_groups")
    best_score = models.FloatField(help_text="highest similarity inside the group")

    class Meta:
        ordering = ["-best_score", "id"]

    def __str__(self) -> str:
        return f"near-duplicate group {self.pk}"
