"""Import a folder of photos into the catalog, embedding them in batches in this process.

Titles and tags can come from a CSV (`filename,title,tags`; tags separated by `;` or
`,`); `--dry-run` checks every file and the CSV and reports without storing anything.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from PIL import Image as PILImage
from tqdm import tqdm

from gallery.catalog import pipeline
from gallery.catalog import services as catalog_services
from gallery.catalog.models import LANE_BULK, Image
from gallery.catalog.prefetch import Prefetch
from gallery.copyright import services as copyright_services
from gallery.copyright.models import ProtectedWork
from gallery.curation import services as curation_services
from gallery.errors import CurationError, DuplicateImage, ImageRejected
from gallery.search import services as search_services
from gallery.vision.datasets import find_images
from gallery.vision.preprocess import ImageDecodeError

log = logging.getLogger(__name__)


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
        self._inputs: dict[int, tuple[str, np.ndarray]] = {}
        self._monitoring = ProtectedWork.objects.filter(status=ProtectedWork.Status.READY).exists()
        self._summary = {"imported": 0, "skipped": 0}
        self._rejected: list[tuple[Path, str]] = []
        self.clock = pipeline.StageClock()
        paths = find_images(root)
        conf = settings.IMAGESEARCH
        batch_size = conf["BATCH_SIZE"]
        embed = not opts["queue"] and not opts["dry_run"]
        # The network inputs are made ahead with the catalog's backbone (a batch embedded
        # after a switch of backbone makes them again).
        self._backbone = pipeline.catalog_backbone() if embed else None
        bar = tqdm(total=len(paths), unit="img", disable=opts["no_progress"], desc="import")
        if opts["dry_run"]:
            for start in range(0, len(paths), batch_size):
                self._check_chunk(paths[start : start + batch_size])
                bar.update(min(batch_size, len(paths) - start))
        else:
            # While one batch is embedded, threads prepare the next (decode, display copy,
            # thumbnail, network input, file writes): one batch ahead at most.
            threads = max(1, int(conf["DECODE_CONCURRENCY"]))
            prefetch = Prefetch(
                paths,
                self._prepare,
                threads=threads,
                depth=batch_size + threads,
                discard=self._discard,
                clock=self.clock,
            )
            with prefetch:
                for batch in prefetch.batches(batch_size, first=max(2 * threads, batch_size // 4)):
                    stored = self._store_batch(batch)
                    if embed and stored:
                        self._embed(stored)
                    bar.update(len(batch))
        bar.close()
        imported, dry = self._summary["imported"], opts["dry_run"]
        backbone = pipeline.catalog_state().backbone if imported and embed else None
        if backbone and search_services.reduction_needed(backbone=backbone):
            reduction = search_services.reduction_fit(backbone=backbone)
            if reduction:
                self.stdout.write(f"fitted {reduction} on {reduction.fitted_on} embeddings")
        if imported and embed and not self._monitoring:
            self._keypoints_later()
        for path, reason in self._rejected:
            self.stderr.write(f"rejected {path}: {reason}")
        verb = "would import" if dry else "imported"
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} {imported}, skipped {self._summary['skipped']} already in the catalog, rejected {len(self._rejected)}"
            )
            + (" (dry run: nothing was stored)" if dry else "")
        )

    def _keypoints_later(self) -> None:
        """Photos embedded here get no copy check while no work is registered, so their
        keypoints (for a work registered later) are stored by the workers' resumable job,
        outside the import's time."""
        try:
            job = curation_services.catalog_job_start(kind="keypoints")
        except Exception as exc:  # the broker is unreachable: say how to do it later
            log.warning("could not queue the keypoints job (%s)", exc)
            self.stdout.write("keypoints for copy scans not queued; run: python manage.py index_keypoints")
            return
        self.stdout.write(f"{job} queued: the workers store the new photos' keypoints for copy scans")

    def _check_chunk(self, paths: list[Path]) -> None:
        """A dry run: check each photo, store nothing."""
        for path in paths:
            data = path.read_bytes()
            checksum = hashlib.sha256(data).hexdigest()
            if checksum in self._known:
                self._summary["skipped"] += 1
                continue
            try:
                catalog_services.read_upload(io.BytesIO(data))
                pipeline.decode(data)
            except (ImageRejected, ImageDecodeError) as exc:
                self._rejected.append((path, str(exc)))
                continue
            self._known.add(checksum)
            self._summary["imported"] += 1

    def _prepare(self, path: Path) -> _Prepared:
        """Read, check, decode and picture one photo and write its files (in a prefetch
        thread: no database here)."""
        with self.clock.stage("read"):
            data = path.read_bytes()
            checksum = hashlib.sha256(data).hexdigest()
        if checksum in self._known:
            return _Prepared(path, checksum)
        try:
            upload = catalog_services.upload_prepare(
                data=data,
                original_name=path.name,
                title=self._title_and_tags(path)[0],
                lane=LANE_BULK,
                queue=self._opts["queue"],
                backbone=self._backbone,
                clock=self.clock,
            )
        except ImageRejected as exc:
            return _Prepared(path, checksum, rejected=str(exc))
        return _Prepared(path, checksum, upload=upload)

    def _discard(self, prepared: _Prepared) -> None:
        if prepared.upload is not None:
            catalog_services.upload_discard(upload=prepared.upload)

    def _title_and_tags(self, path: Path) -> tuple[str, list[str]]:
        relative = path.relative_to(self._root).as_posix()
        return self._metadata_by_name.get(relative) or self._metadata_by_name.get(path.name) or ("", [])

    def _store_batch(self, batch: list[_Prepared]) -> list[int]:
        """Save the rows of a batch of prepared photos in one transaction; returns the new images' ids."""
        fresh: list[_Prepared] = []
        for prepared in batch:
            if prepared.rejected:
                self._rejected.append((prepared.path, prepared.rejected))
            elif prepared.upload is None or prepared.checksum in self._known:  # known, or twice in the folder
                self._discard(prepared)
                self._summary["skipped"] += 1
            else:
                self._known.add(prepared.checksum)
                fresh.append(prepared)
        results = catalog_services.uploads_store(uploads=[p.upload for p in fresh if p.upload], clock=self.clock)
        stored = []
        for prepared, result in zip(fresh, results, strict=True):
            if isinstance(result, DuplicateImage):
                self._summary["skipped"] += 1
                continue
            tags = self._title_and_tags(prepared.path)[1]
            if tags:
                with self.clock.stage("database writes"):
                    curation_services.image_set_tags(image=result, names=tags)
            self._summary["imported"] += 1
            stored.append(result.pk)
            if prepared.upload is not None and not self._opts["queue"]:
                if prepared.upload.picture is not None:
                    self._decoded[result.pk] = prepared.upload.picture
                if prepared.upload.network_input is not None:
                    self._inputs[result.pk] = prepared.upload.network_input
        return stored

    def _embed(self, batch: list[int]) -> None:
        while batch:
            outcome = catalog_services.images_embed_batch(
                image_id=batch[0], predecoded=self._decoded, network_inputs=self._inputs, clock=self.clock
            )
            if self._monitoring:  # imported photos are checked against protected works like uploads
                with self.clock.stage("copyright checks"):
                    for pk in outcome.ready:
                        copyright_services.upload_match(image_id=pk)
            done = set(outcome.ready) | set(outcome.failed) | {batch[0]}
            batch[:] = [pk for pk in batch if pk not in done]
            for pk in done:
                self._decoded.pop(pk, None)
                self._inputs.pop(pk, None)


@dataclass
class _Prepared:
    """One photo of the folder, ready to store: already known, rejected with a reason, or
    an upload whose files are written."""

    path: Path
    checksum: str
    rejected: str = ""
    upload: catalog_services.PreparedUpload | None = None
