"""What operations record: the backups taken of this install."""

from __future__ import annotations

from django.db import models


class BackupRecord(models.Model):
    """One finished backup (or the backup an install was restored from), so the operations
    page on any web host can say when the last one was taken, where, and how large it is.

    The directory's manifest is the backup's own description; this row only points at it.
    """

    class Kind(models.TextChoices):
        BACKUP = "backup", "Backup"
        RESTORE = "restore", "Restored from"

    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.BACKUP)
    directory = models.CharField(max_length=1000)
    taken_at = models.DateTimeField(help_text="when the database snapshot was taken")
    size = models.PositiveBigIntegerField(help_text="bytes: the database dump and every file")
    files = models.PositiveIntegerField()
    missing = models.PositiveIntegerField(default=0, help_text="files the snapshot named that were gone")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.directory} ({self.taken_at:%Y-%m-%d %H:%M})"
