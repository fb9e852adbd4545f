"""Import a folder of photos into the catalog, embedding them in batches in this process.

Titles and tags can come from a CSV (`filename,title,tags`; tags separated by `;` or
`,`); `--dry-run` checks every file and the CSV and reports without storing anything.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from PIL import Image as PILImage
from tqdm import tqdm

from gallery import services
from gallery.models import Image
from gallery.vision.datasets import find_images
from gallery.vision.preprocess import ImageDecodeError


class Command(BaseCommand):
    help = "Import every photo under DIR (recursively); files already in the catalog are skipped by checksum."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("directory", type=Path)
        parser.add_argument("--queue", action="store_true", help="leave embedding to the Celery workers")
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument("--csv", type=Path, help="CSV with a filename column (relative to DIR or a bare name)")
        parser.add_argument("--title-column", default="title")
        parser.add_argument("--tags-column", default="tags", help="one or more columns, comma-separated")
        parser.add_argument("--dry-run", action="store_true", help="check and report; store nothing")

    def _metadata(self, opts: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
        """Title and tags per file name (both the path relative to DIR and the bare name)."""
        if not opts["csv"]:
            return {}
        if not opts["csv"].is_file():
            raise CommandError(f"{opts['csv']} is not a file")
        with open(opts["csv"], newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            tag_columns = [c.strip() for c in opts["tags_column"].split(",") if c.strip()]
            if "filename" not in columns:
                raise CommandError(f"{opts['csv']} has no 'filename' column (columns: {', '.join(columns)})")
            unknown = [c for c in tag_columns if c not in columns]
            if unknown:
                raise CommandError(f"{opts['csv']} has no column {', '.join(unknown)}")
            found: dict[str, tuple[str, list[str]]] = {}
            for row in reader:
                try:
                    tags = [t for c in tag_columns for t in services.tags_parse(text=row.get(c) or "")]
                except services.CurationError as exc:
                    raise CommandError(f"{opts['csv']}: {row['filename']}: {exc}") from None
                entry = ((row.get(opts["title_column"]) or "").strip()[:200], list(dict.fromkeys(tags)))
                name = row["filename"].strip().replace("\\", "/")
                found[name] = entry
                found.setdefault(Path(name).name, entry)
            return found

    def handle(self, *args: Any, **opts: Any) -> None:
        root: Path = opts["directory"]
        if not root.is_dir():
            raise CommandError(f"{root} is not a directory")
        metadata = self._metadata(opts)
        dry = opts["dry_run"]
        self._decoded: dict[int, PILImage.Image] = {} if not opts["queue"] else None  # type: ignore[assignment]
        paths = find_images(root)
        known = set(Image.objects.values_list("checksum", flat=True))
        imported, skipped, rejected = 0, 0, []
        batch: list[int] = []
        batch_size = settings.IMAGESEARCH["BATCH_SIZE"]
        bar = tqdm(paths, unit="img", disable=opts["no_progress"], desc="import")
        for path in bar:
            data = path.read_bytes()
            checksum = hashlib.sha256(data).hexdigest()
            if checksum in known:
                skipped += 1
                continue
            relative = path.relative_to(root).as_posix()
            title, tags = metadata.get(relative) or metadata.get(path.name) or ("", [])
            if dry:
                try:
                    services.read_upload(io.BytesIO(data))
                    services.pipeline.decode(data)
                except (services.ImageRejected, ImageDecodeError) as exc:
                    rejected.append((path, str(exc)))
                    continue
                known.add(checksum)
                imported += 1
                continue
            upload = io.BytesIO(data)
            upload.name = path.name
            try:
                image = services.image_create(
                    file=upload, original_name=path.name, title=title, queue=opts["queue"], decoded_sink=self._decoded
                )
            except services.DuplicateImage:
                skipped += 1
                continue
            except services.ImageRejected as exc:
                rejected.append((path, str(exc)))
                continue
            if tags:
                services.image_set_tags(image=image, names=tags)
            known.add(image.checksum)
            imported += 1
            if not opts["queue"]:
                batch.append(image.pk)
                if len(batch) >= batch_size:
                    self._embed(batch)
        if batch:
            self._embed(batch)
        backbone = services.pipeline.catalog_state().backbone if imported and not opts["queue"] and not dry else None
        if backbone and services.reduction_needed(backbone=backbone):
            reduction = services.reduction_fit(backbone=backbone)
            if reduction:
                self.stdout.write(f"fitted {reduction} on {reduction.fitted_on} embeddings")
        for path, reason in rejected:
            self.stderr.write(f"rejected {path}: {reason}")
        verb = "would import" if dry else "imported"
        self.stdout.write(
            self.style.SUCCESS(f"{verb} {imported}, skipped {skipped} already in the catalog, rejected {len(rejected)}")
            + (" (dry run: nothing was stored)" if dry else "")
        )

    def _embed(self, batch: list[int]) -> None:
        while batch:
            outcome = services.images_embed_batch(image_id=batch[0], predecoded=self._decoded)
            done = set(outcome.ready) | set(outcome.failed) | {batch[0]}
            batch[:] = [pk for pk in batch if pk not in done]
