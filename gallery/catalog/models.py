"""The catalog: images (with their processing and visibility), their embeddings, tags,
and the change log every process's search index reads."""

from __future__ import annotations

import functools

import numpy as np
from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage
from django.db import models
from django.db.models.fields.files import FieldFile
from django.db.models.functions import Now
from django.urls import reverse

from gallery.storage import get_private_storage
from gallery.vector_field import vector_from

# Each lane is a Celery queue of the same name; workers take interactive work first.
LANE_INTERACTIVE = "interactive"


LANE_BULK = "bulk"


def _public_url(f: FieldFile) -> str:
    """A published picture's URL. A file system's URL for a name depends only on the name
    and MEDIA_URL, so it is kept for the pictures drawn lately (a page of cards asked for two
    per image); another storage (signed, expiring URLs) is asked every time."""
    if isinstance(f.storage, FileSystemStorage):
        return _file_system_url(f.storage, settings.MEDIA_URL, f.name)
    return f.url


@functools.lru_cache(maxsize=8192)
def _file_system_url(storage: Storage, _media_url: str, name: str) -> str:
    return storage.url(name)


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

    # Set on the images of a page of cards (catalog.tagnames): their tags' names, sorted.
    tag_names: list[str]

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
        return _public_url(f)

    @property
    def thumbnail_url(self) -> str:
        if not self.thumbnail:
            return ""
        if self.visibility == self.Visibility.HIDDEN:
            return reverse("gallery:picture", args=[self.pk, "thumbnail"])
        return _public_url(self.thumbnail)

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
        return vector_from(self.vector)


class Tag(models.Model):
    """A label editors put on images; the gallery and search can filter by it."""

    name = models.CharField(max_length=64, unique=True)
    images = models.ManyToManyField(Image, related_name="tags", blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


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


class ImageLabel(models.Model):
    """One of an image's top ImageNet classes by the backbone's own classifier, with its
    confidence (softmax probability); written in the same forward pass as the embedding.
    Words search sums these over the classes a word means."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="labels")
    backbone = models.CharField(max_length=40)
    rank = models.PositiveSmallIntegerField()
    class_index = models.PositiveSmallIntegerField()
    confidence = models.FloatField()

    class Meta:
        ordering = ["image", "backbone", "rank"]
        constraints = [models.UniqueConstraint(fields=["image", "backbone", "rank"], name="one_label_per_rank")]
        indexes = [models.Index(fields=["backbone", "class_index"])]

    def __str__(self) -> str:
        return f"label {self.class_index} ({self.confidence:.2f}) of image {self.image_id}"
