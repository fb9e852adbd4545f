"""Catalog models: images, their embeddings, fitted PCA reductions and reduced vectors."""

from __future__ import annotations

import numpy as np
from django.conf import settings
from django.db import models
from django.db.models.functions import Now

from .vector_field import VectorBytesField


class Image(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    file = models.FileField(upload_to="originals/", max_length=255)
    thumbnail = models.FileField(upload_to="thumbnails/", max_length=255, blank=True)
    title = models.CharField(max_length=200, blank=True)
    original_name = models.CharField(max_length=255, blank=True)
    checksum = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the uploaded bytes")
    size = models.PositiveBigIntegerField(help_text="bytes")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    format = models.CharField(max_length=10)

    class Visibility(models.TextChoices):
        PUBLISHED = "published", "Published"
        HIDDEN = "hidden", "Hidden"

    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True)
    visibility = models.CharField(max_length=10, choices=Visibility.choices, default=Visibility.PUBLISHED, db_index=True)
    status_reason = models.TextField(blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="when a worker took it")
    claimed_by = models.CharField(max_length=200, blank=True, help_text="the worker that took it")
    attempts = models.PositiveIntegerField(default=0)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self) -> str:
        return self.title or self.original_name or f"image {self.pk}"

    @property
    def display_title(self) -> str:
        return str(self)


class Embedding(models.Model):
    """One backbone's L2-normalised float32 feature vector of an image."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="embeddings")
    backbone = models.CharField(max_length=40, db_index=True)
    dim = models.PositiveIntegerField()
    vector = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "backbone"], name="one_embedding_per_backbone")]

    def __str__(self) -> str:
        return f"{self.backbone} embedding of image {self.image_id}"

    def as_array(self) -> np.ndarray:
        return np.frombuffer(bytes(self.vector), dtype=np.float32)


class Reduction(models.Model):
    """A fitted PCA for one backbone. Exactly one per backbone is active at a time."""

    backbone = models.CharField(max_length=40, db_index=True)
    version = models.PositiveIntegerField()
    dims = models.PositiveIntegerField()
    input_dim = models.PositiveIntegerField()
    whiten = models.BooleanField(default=False)
    fitted_on = models.PositiveIntegerField(help_text="number of embeddings it was fitted on")
    mean = models.BinaryField()
    components = models.BinaryField()
    explained_variance = models.BinaryField()
    explained_variance_ratio = models.FloatField(help_text="total variance kept")
    is_active = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["backbone", "version"], name="reduction_version_per_backbone"),
            models.UniqueConstraint(
                fields=["backbone"], condition=models.Q(is_active=True), name="one_active_reduction_per_backbone"
            ),
        ]
        ordering = ["backbone", "-version"]

    def __str__(self) -> str:
        return f"{self.backbone} PCA-{self.dims} v{self.version}"


class ReducedVector(models.Model):
    """An image's embedding projected by one Reduction."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="reduced_vectors")
    reduction = models.ForeignKey(Reduction, on_delete=models.CASCADE, related_name="vectors")
    # float32 bytes in Python; a pgvector column on PostgreSQL (HNSW-indexed per reduction).
    vector = VectorBytesField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "reduction"], name="one_vector_per_reduction")]

    def __str__(self) -> str:
        return f"image {self.image_id} in reduction {self.reduction_id}"


# ---- catalog curation ------------------------------------------------------


class Tag(models.Model):
    """A label editors put on images; the gallery and search can filter by it."""

    name = models.CharField(max_length=64, unique=True)
    images = models.ManyToManyField(Image, related_name="tags", blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class CatalogState(models.Model):
    """The catalog's search space, persisted so that every process agrees on it.

    `backbone` is the one search uses; `target_backbone` is set while a re-embed
    migration computes the next one. Created on first use from settings.
    """

    backbone = models.CharField(max_length=40)
    target_backbone = models.CharField(max_length=40, blank=True)
    switched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "catalog state"

    def __str__(self) -> str:
        return f"{self.backbone} → {self.target_backbone}" if self.target_backbone else self.backbone


class CatalogJob(models.Model):
    """A background job over the whole catalog, with progress an admin can watch."""

    class Kind(models.TextChoices):
        REEMBED = "reembed", "Re-embed with another backbone"
        REFIT = "refit", "Refit PCA"
        NEAR_DUPLICATES = "neardup", "Find near-duplicates"

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


# ---- scale: multi-process index consistency -----------------------------------


class CatalogChange(models.Model):
    """One entry per change that alters what search may return for an image: it became
    ready or stopped being ready, was hidden, published or deleted, or its vector changed.

    Written by database triggers (so bulk updates and deletes are caught too) and read by
    every process's in-memory index on each query, which re-reads only those images.
    """

    image_id = models.BigIntegerField()
    at = models.DateTimeField(db_default=Now(), db_index=True)

    class Meta:
        indexes = [models.Index(fields=["image_id"])]

    def __str__(self) -> str:
        return f"change {self.pk} of image {self.image_id}"
