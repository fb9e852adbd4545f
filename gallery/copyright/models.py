"""Copyright monitoring: protected works, their matcher signatures, suspected copies among
the uploads and the reviewers' decisions."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from gallery.catalog.models import Image
from gallery.storage import get_private_storage


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


class ImageKeypoints(models.Model):
    """A catalog image's SIFT keypoints and pHash, kept so that a work registered later
    finds the copies already in the catalog without decoding every image again."""

    image = models.OneToOneField(Image, on_delete=models.CASCADE, related_name="copy_keypoints")
    version = models.PositiveIntegerField()
    count = models.PositiveIntegerField(help_text="how many keypoints")
    data = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "image keypoints"

    def __str__(self) -> str:
        return f"{self.count} keypoints of image {self.image_id}"
