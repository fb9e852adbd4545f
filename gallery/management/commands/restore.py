"""`manage.py restore DIR`: every checksum verified first, then the database and the files
into an empty install; search answers from the restored vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gallery.errors import BackupRejected
from gallery.operations import services


class Command(BaseCommand):
    help = (
        "Restore a backup made by `backup` into this install. Verifies every checksum first and changes nothing "
        "when one fails; refuses an install that already holds images, works or files unless --force. Stop the "
        "web server and workers first."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("directory", type=Path)
        parser.add_argument("--force", action="store_true", help="replace what this install holds")
        parser.add_argument("--verify-only", action="store_true", help="check the backup's checksums and stop")

    def handle(self, *args: Any, directory: Path, force: bool, verify_only: bool, **options: Any) -> None:
        try:
            if verify_only:
                manifest = services.backup_verify(directory=directory)
                self.stdout.write(f"{directory}: the database dump and {len(manifest['files'])} files match the manifest.")
                return
            report = services.backup_restore(directory=directory, force=force)
        except BackupRejected as exc:
            raise CommandError(f"{exc} [{exc.code}] Nothing was changed.") from exc
        self.stdout.write(
            f"Restored the backup of {report.taken_at} from {report.directory}: {report.images} images, "
            f"{report.protected_works} protected works, {report.files} files ({report.size / 1e6:.1f} MB)."
        )
