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

from gallery.catalog import pipeline
from gallery.catalog import services as catalog_services
from gallery.catalog.models import LANE_BULK, Image
from gallery.copyright import services as copyright_services
from gallery.copyright.models import ProtectedWork
from gallery.curation import services as curation_services
from gallery.errors import CurationError, DuplicateImage, ImageRejected
from gallery.search import services as search_services
from gallery.vision.datasets import find_images
from gallery.vision.preprocess import ImageDecodeError


class Command(BaseCommand):
    help = "Import every photo under DIR (recursively); files already in the catalog are skipped by checksum."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("directory", type=Path)
        parser.add_argument(
            "--queue", action="store_true", help="leave embedding to the Celery workers (on the bulk lane, behind uploads)"
        )
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
                    tags = [t for c in tag_columns for t in curation_services.tags_parse(text=row.get(c) or "")]
                except CurationError as exc:
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
        self._root, self._opts = root, opts
        self._metadata_by_name = self._metadata(opts)
        self._known = set(Image.objects.values_list("checksum", flat=True))
        self._decoded: dict[int, PILImage.Image] = {}
        self._monitoring = ProtectedWork.objects.filter(status=ProtectedWork.Status.READY).exists()
        self._summary = {"imported": 0, "skipped": 0}
        self._rejected: list[tuple[Path, str]] = []
        paths = find_images(root)
        batch_size = settings.IMAGESEARCH["BATCH_SIZE"]
        chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        embed = not opts["queue"] and not opts["dry_run"]
        bar = tqdm(total=len(paths), unit="img", disable=opts["no_progress"], desc="import")
        for chunk in chunks:
            stored = self._store_chunk(chunk)
            if embed and stored:
                self._embed(stored)
            bar.update(len(chunk))
        bar.close()
        imported, dry = self._summary["imported"], opts["dry_run"]
        backbone = pipeline.catalog_state().backbone if imported and embed else None
        if backbone and search_services.reduction_needed(backbone=backbone):
            reduction = search_services.reduction_fit(backbone=backbone)
            if reduction:
                self.stdout.write(f"fitted {reduction} on {reduction.fitted_on} embeddings")
        for path, reason in self._rejected:
            self.stderr.write(f"rejected {path}: {reason}")
        verb = "would import" if dry else "imported"
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} {imported}, skipped {self._summary['skipped']} already in the catalog, rejected {len(self._rejected)}"
            )
            + (" (dry run: nothing was stored)" if dry else "")
        )

    def _store_chunk(self, paths: list[Path]) -> list[int]:
        """Store (or, in a dry run, only check) each photo; returns the new images' ids."""
        opts, stored = self._opts, []
        for path in paths:
            data = path.read_bytes()
            checksum = hashlib.sha256(data).hexdigest()
            if checksum in self._known:
                self._summary["skipped"] += 1
                continue
            relative = path.relative_to(self._root).as_posix()
            title, tags = self._metadata_by_name.get(relative) or self._metadata_by_name.get(path.name) or ("", [])
            if opts["dry_run"]:
                try:
                    catalog_services.read_upload(io.BytesIO(data))
                    pipeline.decode(data)
                except (ImageRejected, ImageDecodeError) as exc:
                    self._rejected.append((path, str(exc)))
                    continue
                self._known.add(checksum)
                self._summary["imported"] += 1
                continue
            upload = io.BytesIO(data)
            upload.name = path.name
            try:
                image = catalog_services.image_create(
                    file=upload,
                    original_name=path.name,
                    title=title,
                    queue=opts["queue"],
                    lane=LANE_BULK,
                    decoded_sink=None if opts["queue"] else self._decoded,
                )
            except DuplicateImage:
                self._summary["skipped"] += 1
                continue
            except ImageRejected as exc:
                self._rejected.append((path, str(exc)))
                continue
            if tags:
                curation_services.image_set_tags(image=image, names=tags)
            self._known.add(image.checksum)
            self._summary["imported"] += 1
            stored.append(image.pk)
        return stored

    def _embed(self, batch: list[int]) -> None:
        while batch:
            outcome = catalog_services.images_embed_batch(image_id=batch[0], predecoded=self._decoded)
            if self._monitoring:  # imported photos are checked against protected works like uploads
                for pk in outcome.ready:
                    copyright_services.upload_match(image_id=pk)
            done = set(outcome.ready) | set(outcome.failed) | {batch[0]}
            batch[:] = [pk for pk in batch if pk not in done]
