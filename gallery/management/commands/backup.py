"""`manage.py backup DIR`: the database and every file it names, consistent while the
product runs, with a checksummed manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gallery.errors import BackupRejected
from gallery.operations import services


class Command(BaseCommand):
    help = "Back up the database, public media, private originals and protected works into DIR (new or empty)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("directory", type=Path)

    def handle(self, *args: Any, directory: Path, **options: Any) -> None:
        try:
            report = services.backup_create(directory=directory)
        except BackupRejected as exc:
            raise CommandError(f"{exc} [{exc.code}]") from exc
        self.stdout.write(
            f"Backed up the database and {report.files} files ({report.size / 1e6:.1f} MB) into {report.directory}; "
            f"snapshot taken {report.taken_at:%Y-%m-%d %H:%M:%S} UTC."
        )
        if report.missing:
            self.stderr.write(
                self.style.WARNING(
                    f"{len(report.missing)} files named by the database were gone (deleted while the backup ran, "
                    f"or lost before): {', '.join(report.missing[:20])}"
                )
            )
