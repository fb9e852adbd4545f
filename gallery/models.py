"""Catalog models: images, their embeddings, fitted PCA reductions and reduced vectors."""

from __future__ import annotations

import numpy as np
from django.conf import settings
from django.db import models
from django.db.models.functions import Now
from django.urls import reverse

from .storage import get_private_storage
from .vector_field import VectorBytesField

# Each lane is a Celery queue of the same name; workers take interactive work first.
LANE_INTERACTIVE = "interactive"
LANE_BULK = "bulk"


class Image(models.Model):
    class Lane(models.TextChoices):
        INTERACTIVE = LANE_INTERACTIVE, "Interactive (uploads)"
        BULK = LANE_BULK, "Bulk (imports, re-embedding)"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    # The upload as sent, metadata included: private, never served.
    file = models.FileField(upload_to="originals/", max_length=255, storage=get_private_storage)
    # What browsers get: re-encoded, upright, without EXIF/GPS metadata.
    display = models.FileField(upload_to="display/", max_length=255, blank=True)
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
    # Why a hidden image is hidden, in words its uploader can read ("My uploads" shows it).
    visibility_reason = models.CharField(max_length=300, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="when a worker took it")
    claimed_by = models.CharField(max_length=200, blank=True, help_text="the worker that took it")
    attempts = models.PositiveIntegerField(default=0, help_text="how many times a worker claimed it")
    lane = models.CharField(max_length=12, choices=Lane.choices, default=Lane.INTERACTIVE)
    queued_at = models.DateTimeField(null=True, blank=True, help_text="when its embedding task was last sent")
    embedded_by = models.CharField(max_length=200, blank=True, help_text="the worker that embedded it")
    embedded_at = models.DateTimeField(null=True, blank=True)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            models.Index(fields=["status", "lane", "created_at"]),
            # The sweep asks whether a lane has embedded anything lately.
            models.Index(fields=["lane", "embedded_at"]),
        ]

    def __str__(self) -> str:
        return self.title or self.original_name or f"image {self.pk}"

    @property
    def display_url(self) -> str:
        """The picture browsers get: the metadata-free display copy (the original stays
        private). A hidden image's files are withheld from the public media; its pictures
        are served through a view that checks who asks."""
        f = self.display or self.thumbnail
        if not f:
            return ""
        if self.visibility == self.Visibility.HIDDEN:
            return reverse("gallery:picture", args=[self.pk, "display" if self.display else "thumbnail"])
        return f.url

    @property
    def thumbnail_url(self) -> str:
        if not self.thumbnail:
            return ""
        if self.visibility == self.Visibility.HIDDEN:
            return reverse("gallery:picture", args=[self.pk, "thumbnail"])
        return self.thumbnail.url

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


# ---------------------------------------------------------------- copyright monitoring


class ProtectedWork(models.Model):
    """An image whose copies staff want to find among uploads. Not part of the public gallery."""

    class Status(models.TextChoices):
        PENDING = "pending", "Being analysed"
        READY = "ready", "Monitored"
        FAILED = "failed", "Failed"

    # Private: a protected original is shown to copyright staff only (a view checks who asks).
    file = models.FileField(upload_to="protected/", max_length=255, storage=get_private_storage)
    title = models.CharField(max_length=200)
    rights_holder = models.CharField(max_length=200, db_index=True)
    reference = models.CharField(max_length=200, blank=True, help_text="licence, catalogue number or URL")
    note = models.TextField(blank=True)
    checksum = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the registered bytes")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    status_reason = models.TextField(blank=True)
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    scanned_at = models.DateTimeField(null=True, blank=True, help_text="when the existing catalog was checked")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.title} ({self.rights_holder})"


class WorkSignature(models.Model):
    """The matcher's persistent index entry for a work: descriptors, hashes, keypoints."""

    work = models.ForeignKey(ProtectedWork, on_delete=models.CASCADE, related_name="signatures")
    backbone = models.CharField(max_length=40)
    version = models.PositiveIntegerField()
    data = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["work", "backbone", "version"], name="one_signature_per_work")]

    def __str__(self) -> str:
        return f"{self.backbone} v{self.version} signature of work {self.work_id}"


class CopyMatch(models.Model):
    """A suspected copy of a protected work among the uploads, waiting for or after review."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        CONFIRMED = "confirmed", "Confirmed"
        DISMISSED = "dismissed", "Dismissed"

    work = models.ForeignKey(ProtectedWork, on_delete=models.CASCADE, related_name="matches")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="copy_matches")
    score = models.FloatField(db_index=True)
    signals = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    found_by = models.CharField(max_length=20, help_text="upload check or catalog scan")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "copy matches"
        constraints = [models.UniqueConstraint(fields=["work", "image"], name="one_match_per_pair")]

    def __str__(self) -> str:
        return f"image {self.image_id} vs work {self.work_id} ({self.score:.2f})"


class MatchDecision(models.Model):
    """One reviewer action on a match: who, when, what and why.

    A decision outlives its match: when the work or the upload is deleted the match goes,
    the decision stays with a snapshot of what was decided on (titles, checksums and
    small thumbnails of both pictures), so the audit trail is complete.
    """

    class Action(models.TextChoices):
        CONFIRM = "confirm", "Confirmed"
        DISMISS = "dismiss", "Dismissed"
        NOTE = "note", "Note"
        REOPEN = "reopen", "Reopened"

    match = models.ForeignKey(CopyMatch, null=True, blank=True, on_delete=models.SET_NULL, related_name="decisions")
    action = models.CharField(max_length=10, choices=Action.choices)
    status_before = models.CharField(max_length=10, blank=True, help_text="the match's status the reviewer saw")
    hid_upload = models.BooleanField(default=False)
    published_upload = models.BooleanField(default=False, help_text="a dismissal put the upload back in the gallery")
    note = models.TextField(blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # The snapshot: what was decided on, kept when the work or the upload is deleted.
    work_title = models.CharField(max_length=200, blank=True)
    rights_holder = models.CharField(max_length=200, blank=True)
    work_checksum = models.CharField(max_length=64, blank=True)
    image_title = models.CharField(max_length=255, blank=True)
    image_checksum = models.CharField(max_length=64, blank=True)
    score = models.FloatField(null=True, blank=True)
    work_thumbnail = models.BinaryField(blank=True, default=b"")
    image_thumbnail = models.BinaryField(blank=True, default=b"")

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.get_action_display()}: {self.image_title} vs {self.work_title}"


# ---- scale: multi-process index consistency -----------------------------------


class CatalogChange(models.Model):
    """One entry per change that alters what search may return for an image: it became
    ready or stopped being ready, was hidden, published or deleted, or its vector changed.

    Written by database triggers (so bulk updates and deletes are caught too) and read by
    every process's in-memory index on each query, which re-reads only those images.
    """

    image_id = models.BigIntegerField()
    at = models.DateTimeField(db_default=Now(), db_index=True)
    # Set on the marker entry that pruning leaves: every entry up to this id was deleted,
    # so an index that had not read that far must reload instead of applying changes.
    pruned_through = models.BigIntegerField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["image_id"])]

    def __str__(self) -> str:
        return f"change {self.pk} of image {self.image_id}"
