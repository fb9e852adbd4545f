"""What reembed, refit and find_duplicates share: start a catalog job, then either
leave it to the workers or run it here, and report."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gallery.curation import services as curation_services
from gallery.errors import CurationError


class CatalogJobCommand(BaseCommand):
    kind = ""
    batched = False  # the job works in batches of --batch-size images

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--foreground", action="store_true", help="run in this process instead of the workers")
        if self.batched:
            parser.add_argument("--batch-size", type=int, default=None)

    def start(self, *, backbone: str = "", foreground: bool = False, batch_size: int | None = None) -> None:
        try:
            job = curation_services.catalog_job_start(kind=self.kind, backbone=backbone, queue=not foreground)
        except CurationError as exc:
            raise CommandError(str(exc)) from None
        if not foreground:
            self.stdout.write(f"{job} queued; the admin's catalog page shows its progress.")
            return
        self.stdout.write(f"{job} running here")
        done = curation_services.catalog_job_run(job_id=job.pk, batch_size=batch_size)
        if done is None or done.status != done.Status.DONE:
            raise CommandError(f"{job} failed: {done.message if done else 'it was removed'}")
        self.stdout.write(self.style.SUCCESS(done.message))
