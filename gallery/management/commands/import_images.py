"""Import a folder of photos into the catalog, embedding them in batches in this process."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from gallery import services
from gallery.models import Image
from gallery.vision.datasets import find_images


class Command(BaseCommand):
    help = "Import every photo under DIR (recursively); files already in the catalog are skipped by checksum."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("directory", type=Path)
        parser.add_argument("--queue", action="store_true", help="leave embedding to the Celery workers")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        root: Path = opts["directory"]
        if not root.is_dir():
            raise CommandError(f"{root} is not a directory")
        paths = find_images(root)
        known = set(Image.objects.values_list("checksum", flat=True))
        imported, skipped, rejected = 0, 0, []
        batch: list[int] = []
        batch_size = settings.IMAGESEARCH["BATCH_SIZE"]
        bar = tqdm(paths, unit="img", disable=opts["no_progress"], desc="import")
        for path in bar:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() in known:
                skipped += 1
                continue
            try:
                with open(path, "rb") as f:
                    image = services.image_create(file=f, original_name=path.name, queue=opts["queue"])
            except services.DuplicateImage:
                skipped += 1
                continue
            except services.ImageRejected as exc:
                rejected.append((path, str(exc)))
                continue
            known.add(image.checksum)
            imported += 1
            if not opts["queue"]:
                batch.append(image.pk)
                if len(batch) >= batch_size:
                    self._embed(batch)
        if batch:
            self._embed(batch)
        backbone = services.pipeline.current_backbone().name if imported and not opts["queue"] else None
        if backbone and services.reduction_needed(backbone=backbone):
            reduction = services.reduction_fit(backbone=backbone)
            if reduction:
                self.stdout.write(f"fitted {reduction} on {reduction.fitted_on} embeddings")
        for path, reason in rejected:
            self.stderr.write(f"rejected {path}: {reason}")
        self.stdout.write(
            self.style.SUCCESS(f"imported {imported}, skipped {skipped} already in the catalog, rejected {len(rejected)}")
        )

    @staticmethod
    def _embed(batch: list[int]) -> None:
        while batch:
            outcome = services.images_embed_batch(image_id=batch[0])
            done = set(outcome.ready) | set(outcome.failed) | {batch[0]}
            batch[:] = [pk for pk in batch if pk not in done]
