"""Writes to the catalog: storing uploads, placing their pictures, queueing and embedding
them in batches, visibility and deletion, the change log."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import socket
import unicodedata
from dataclasses import dataclass, field
from datetime import timedelta
from typing import IO

import numpy as np
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Case, F, Max, Q, When
from django.utils import timezone
from PIL import Image as PILImage

from gallery.catalog import pipeline, tagcache
from gallery.catalog.models import LANE_INTERACTIVE, CatalogChange, Embedding, Image, ImageLabel
from gallery.errors import CatalogUnavailable, DuplicateImage, ImageRejected
from gallery.search.models import ReducedVector, Reduction
from gallery.search.services import reduction_load
from gallery.storage import private_storage, withheld_name
from gallery.tasking import task_named
from gallery.vector_field import vector_bytes
from gallery.vision.backbones import Backbone
from gallery.vision.preprocess import DecodedImage, ImageDecodeError, display_copy_bytes, thumbnail_bytes

log = logging.getLogger(__name__)


THUMBNAIL_SIZE = 400


_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}


def read_upload(file: IO[bytes], *, max_bytes: int | None = None) -> bytes:
    """Read an upload, refusing it before reading past the size limit."""
    limit = max_bytes if max_bytes is not None else settings.IMAGESEARCH["MAX_UPLOAD_BYTES"]
    size = getattr(file, "size", None)
    if size is not None and size > limit:
        raise ImageRejected(f"The file is {size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB.", code="too_large")
    data = file.read(limit + 1)
    if len(data) > limit:
        raise ImageRejected(f"The file is larger than the {limit / 1e6:.0f} MB limit.", code="too_large")
    if not data:
        raise ImageRejected("The file is empty.", code="empty_file")
    return data


def _thumbnail_bytes(image: PILImage.Image) -> bytes:
    return thumbnail_bytes(image, max_side=THUMBNAIL_SIZE, quality=85)


def original_name_clean(name: str) -> str:
    """The file name as the user knows it, for display only: no folders, no control or
    invisible characters, at most 255 characters. Stored files never use it."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and unicodedata.category(ch) not in ("Cf", "Co", "Cs"))
    name = name.strip().strip(".")
    return name[:255]


def _unsaved_image(
    *, data: bytes, checksum: str, decoded: DecodedImage, original_name: str, title: str, lane: str, queue: bool
) -> Image:
    """The Image row of a checked, decoded upload, not saved and without files yet."""
    return Image(
        title=title[:200],
        original_name=original_name_clean(original_name),
        checksum=checksum,
        size=len(data),
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
        lane=lane,
        queued_at=timezone.now() if queue else None,
    )


def _write_files(image: Image, *, data: bytes, display: bytes, thumb: bytes) -> None:
    """Store the original, the display copy and the thumbnail under the upload's checksum."""
    stem = f"{image.checksum[:2]}/{image.checksum}"
    image.file.save(f"{stem}.{_EXTENSIONS.get(image.format, 'img')}", ContentFile(data), save=False)
    image.display.save(f"{stem}.jpg", ContentFile(display), save=False)
    image.thumbnail.save(f"{stem}.jpg", ContentFile(thumb), save=False)


def image_create(
    *,
    file: IO[bytes],
    uploaded_by: AbstractBaseUser | None = None,
    title: str = "",
    original_name: str = "",
    queue: bool = True,
    lane: str = LANE_INTERACTIVE,
) -> Image:
    """Validate and store an upload as a pending Image; its embedding is queued on commit,
    on the lane's queue (uploads from people: interactive; imports: bulk).

    The original goes to private storage; browsers get a re-encoded, metadata-free display
    copy and thumbnail. Raises ImageRejected (or DuplicateImage) with a message for the
    user, or CatalogUnavailable when the database or the disk cannot take it; nothing is
    stored in any of these cases.
    """
    data = read_upload(file)
    checksum = hashlib.sha256(data).hexdigest()
    try:
        existing = Image.objects.filter(checksum=checksum).first()
    except OperationalError as exc:
        raise CatalogUnavailable(_BUSY) from exc
    if existing is not None:
        raise DuplicateImage(existing)
    try:
        decoded = pipeline.decode(data)
    except ImageDecodeError as exc:
        raise ImageRejected(str(exc), code=exc.code) from None
    thumb = _thumbnail_bytes(decoded.image)
    display = display_copy_bytes(decoded.image)
    image = _unsaved_image(
        data=data,
        checksum=checksum,
        decoded=decoded,
        original_name=original_name or getattr(file, "name", "") or "",
        title=title,
        lane=lane,
        queue=queue,
    )
    image.uploaded_by = uploaded_by if uploaded_by is not None and uploaded_by.is_authenticated else None
    try:
        with transaction.atomic():
            _write_files(image, data=data, display=display, thumb=thumb)
            image.save()
            if queue:
                transaction.on_commit(lambda: image_queue_embedding(image_id=image.pk, lane=image.lane))
    except IntegrityError:
        _delete_files(image)
        existing = Image.objects.filter(checksum=checksum).first()
        if existing is None:
            raise
        raise DuplicateImage(existing) from None
    except OperationalError as exc:
        _delete_files(image)
        log.warning("upload not stored, database unavailable: %s", exc)
        raise CatalogUnavailable(_BUSY) from exc
    except OSError as exc:
        _delete_files(image)
        raise _storage_failed(exc) from exc
    except BaseException:
        _delete_files(image)
        raise
    return image


_BUSY = "The catalog is busy right now; nothing was stored. Please try again in a moment."


def _storage_failed(exc: OSError) -> CatalogUnavailable:
    log.error("upload not stored, storage failed: %s", exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CatalogUnavailable("The server has no room for new photos right now; nothing was stored.")
    return CatalogUnavailable("The server could not store the photo; nothing was stored. Please try again.")


@dataclass
class PreparedUpload:
    """An upload checked, decoded and pictured, its files written, its row not saved yet."""

    image: Image
    # The decoded picture, kept only when no network input was made from it (memory: a
    # picture is up to 2048² pixels, its network input 224²).
    picture: PILImage.Image | None
    queue: bool = False
    # (backbone name, its input for the picture), made ahead of the forward pass.
    network_input: tuple[str, np.ndarray] | None = None


def upload_prepare(
    *,
    data: bytes,
    original_name: str = "",
    title: str = "",
    lane: str = LANE_INTERACTIVE,
    queue: bool = True,
    backbone: Backbone | None = None,
    clock: pipeline.StageClock | None = None,
) -> PreparedUpload:
    """The part of `image_create` that needs no database: check and decode the upload, make
    its display copy, thumbnail and (given a backbone) network input, write its files.
    Safe in a worker thread; `uploads_store` saves the rows. Raises ImageRejected, or
    CatalogUnavailable when the disk cannot take it; no file is left behind then."""
    read_upload(io.BytesIO(data))
    checksum = hashlib.sha256(data).hexdigest()
    with pipeline.clock_stage(clock, "decode"):
        try:
            decoded = pipeline.decode(data)
        except ImageDecodeError as exc:
            raise ImageRejected(str(exc), code=exc.code) from None
    with pipeline.clock_stage(clock, "display copy"):
        display = display_copy_bytes(decoded.image)
    with pipeline.clock_stage(clock, "thumbnail"):
        thumb = _thumbnail_bytes(decoded.image)
    network_input = None
    if backbone is not None:
        with pipeline.clock_stage(clock, "network input"):
            network_input = (backbone.name, pipeline.network_input(decoded.image, backbone=backbone))
    image = _unsaved_image(
        data=data,
        checksum=checksum,
        decoded=decoded,
        original_name=original_name,
        title=title,
        lane=lane,
        queue=queue,
    )
    with pipeline.clock_stage(clock, "file writes"):
        try:
            _write_files(image, data=data, display=display, thumb=thumb)
        except OSError as exc:
            _delete_files(image)
            raise _storage_failed(exc) from exc
        except BaseException:
            _delete_files(image)
            raise
    picture = decoded.image if network_input is None else None
    return PreparedUpload(image=image, picture=picture, queue=queue, network_input=network_input)


def upload_discard(*, upload: PreparedUpload) -> None:
    """Delete the files of a prepared upload whose row will not be saved."""
    _delete_files(upload.image)


def uploads_store(*, uploads: list[PreparedUpload], clock: pipeline.StageClock | None = None) -> list[Image | DuplicateImage]:
    """Save the rows of prepared uploads in one transaction (a bulk import's batch), each
    pending and, when asked, queued on commit. One whose bytes are already in the catalog
    gets a DuplicateImage in its place and its files go. Raises CatalogUnavailable when the
    database cannot take them; none is stored and no file is left behind then."""
    if not uploads:
        return []
    saved: set[int] = set()
    try:
        with pipeline.clock_stage(clock, "database writes"):
            try:
                with transaction.atomic():
                    Image.objects.bulk_create([u.image for u in uploads])
                    _queue_on_commit([u for u in uploads if u.queue])
                saved = {id(u) for u in uploads}
                return [u.image for u in uploads]
            except IntegrityError:
                for u in uploads:
                    u.image.pk, u.image._state.adding = None, True
            # A duplicate in the batch: store them one at a time to tell which.
            results: list[Image | DuplicateImage] = []
            for u in uploads:
                try:
                    with transaction.atomic():
                        u.image.save()
                        _queue_on_commit([u] if u.queue else [])
                    saved.add(id(u))
                    results.append(u.image)
                except IntegrityError:
                    _delete_files(u.image)
                    saved.add(id(u))  # its files are gone already
                    existing = Image.objects.filter(checksum=u.image.checksum).first()
                    if existing is None:
                        raise
                    results.append(DuplicateImage(existing))
            return results
    except OperationalError as exc:
        log.warning("uploads not stored, database unavailable: %s", exc)
        raise CatalogUnavailable(_BUSY) from exc
    finally:
        for u in uploads:
            if id(u) not in saved:
                _delete_files(u.image)


def _queue_on_commit(uploads: list[PreparedUpload]) -> None:
    for u in uploads:
        transaction.on_commit(lambda image=u.image: image_queue_embedding(image_id=image.pk, lane=image.lane))  # type: ignore[misc]


def _delete_files(image: Image) -> None:
    for f in (image.file, image.display, image.thumbnail):
        if f and f.name:
            try:
                f.storage.delete(f.name)
            except OSError as exc:
                log.error("could not delete %s: %s", f.name, exc)
    for f in (image.display, image.thumbnail):  # a hidden image's withheld copies
        if f and f.name:
            try:
                private_storage.delete(withheld_name(f.name))
            except OSError as exc:
                log.error("could not delete withheld %s: %s", f.name, exc)


def _move(name: str, source: Storage, target: Storage, target_name: str) -> bool:
    """Move one stored file between storages (copy, then delete); True when it moved."""
    if not source.exists(name):
        return False
    with source.open(name, "rb") as f:
        data = f.read()
    if target.exists(target_name):
        target.delete(target_name)
    saved = target.save(target_name, ContentFile(data))
    if saved != target_name:  # a storage that renamed it: keep the original where it was
        target.delete(saved)
        raise OSError(f"storage renamed {target_name} to {saved}")
    source.delete(name)
    return True


def image_pictures_place(*, image_ids: list[int]) -> int:
    """Put each image's display copy and thumbnail where its visibility says: in the public
    media when published, withheld in the private storage when hidden. Safe to run again
    (the periodic sweep does, after a crash between the change and the move); returns how
    many files moved."""
    moved = 0
    for image in Image.objects.filter(pk__in=image_ids).only("pk", "visibility", "display", "thumbnail"):
        for f in (image.display, image.thumbnail):
            if not (f and f.name):
                continue
            try:
                if image.visibility == Image.Visibility.HIDDEN:
                    moved += _move(f.name, f.storage, private_storage, withheld_name(f.name))
                else:
                    moved += _move(withheld_name(f.name), private_storage, f.storage, f.name)
            except OSError as exc:
                log.error("could not move the picture %s of image %s: %s", f.name, image.pk, exc)
    return moved


def images_pictures_reconcile(*, limit: int = 500) -> int:
    """Move the pictures of recently changed images whose files are not where their
    visibility says (an interrupted move); part of the periodic sweep."""
    ids = list(Image.objects.order_by("-updated_at").values_list("pk", flat=True)[:limit])
    return image_pictures_place(image_ids=ids)


def image_queue_embedding(*, image_id: int, lane: str) -> bool:
    """Queue the embedding task on the image's lane (the caller has set `queued_at` in the
    same write that made the image pending). When the broker is down the image stays pending
    with `queued_at` cleared, and the periodic sweep queues it soon. Returns whether it was queued."""
    embed_image = task_named("gallery.embed_image")

    try:
        embed_image.apply_async(args=[image_id], queue=lane, retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2})
        return True
    except Exception as exc:  # broker unreachable
        log.warning("could not queue image %s (%s); the sweep will retry", image_id, exc)
    try:
        Image.objects.filter(pk=image_id).update(queued_at=None)
    except OperationalError as exc:  # then the sweep finds it later, once its queueing looks old
        log.warning("could not mark image %s as not queued (%s)", image_id, exc)
    return False


def images_requeue_waiting(*, min_age_seconds: int | None = None, only_lost: bool = True) -> int:
    """Queue the embedding task again for waiting images (pending, or claimed by a worker
    that went silent), each on its lane; returns how many were queued.

    With `only_lost` (the periodic sweep), only images whose task may have been lost: never
    queued (broker down at upload) and older than `min_age_seconds`, or queued longer ago
    than the lane's REQUEUE_AFTER_SECONDS while the lane has embedded nothing for as long.
    A lane that is moving needs no help, since each of its tasks also claims the oldest
    waiting images of the lane, so a bulk backlog is not queued a second time. Without it
    (a restarted worker, whose broker may have lost every queued task), all of them.
    """
    embed_image = task_named("gallery.embed_image")

    conf = settings.IMAGESEARCH
    if min_age_seconds is None:
        min_age_seconds = conf["SWEEP_MIN_AGE_SECONDS"]
    now = timezone.now()
    waiting = Q(status=Image.Status.PENDING) | Q(status=Image.Status.PROCESSING, claimed_at__lt=_stale_before())
    never_queued = Q(queued_at__isnull=True, created_at__lt=now - timedelta(seconds=min_age_seconds))
    count = 0
    for lane in Image.Lane.values:
        due = Q(created_at__lt=now - timedelta(seconds=min_age_seconds))
        if only_lost:
            quiet_since = now - timedelta(seconds=conf["REQUEUE_AFTER_SECONDS"][lane])
            due = never_queued
            if not Image.objects.filter(lane=lane, embedded_at__gte=quiet_since).exists():
                due |= Q(queued_at__lt=quiet_since)
        ids = list(Image.objects.filter(waiting, due, lane=lane).values_list("pk", flat=True))
        sent: list[int] = []
        try:
            for pk in ids:
                embed_image.apply_async(args=[pk], queue=lane)
                sent.append(pk)
        finally:
            for start in range(0, len(sent), 500):
                Image.objects.filter(pk__in=sent[start : start + 500]).update(queued_at=now)
        count += len(sent)
    return count


def images_set_visibility(*, image_ids: list[int], visibility: str, reason: str = "") -> int:
    """Publish or hide images; returns how many changed. Hidden images leave the public
    gallery and every search result; `reason` is what their uploader reads on "My uploads"."""
    if visibility not in Image.Visibility.values:
        raise ValueError(f"unknown visibility {visibility!r}")
    hidden = visibility == Image.Visibility.HIDDEN
    reason = (reason.strip()[:300] or "Hidden by the catalog's editors.") if hidden else ""
    with transaction.atomic():
        rows = Image.objects.filter(pk__in=image_ids).exclude(visibility=visibility)
        changed_ids = list(rows.values_list("pk", flat=True))
        changed = Image.objects.filter(pk__in=changed_ids).update(visibility=visibility, visibility_reason=reason)
        # The files follow once the change is committed (a rollback leaves them in place).
        transaction.on_commit(lambda: image_pictures_place(image_ids=changed_ids))
        if changed:  # an update sends no signal: the tags in use are renewed here
            tagcache.changed()
    return changed


@dataclass
class BatchOutcome:
    state: str  # claimed | done | busy | missing
    lane: str = LANE_INTERACTIVE
    ready: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def _stale_before() -> timezone.datetime:
    return timezone.now() - timedelta(seconds=settings.IMAGESEARCH["STALE_PROCESSING_SECONDS"])


def worker_name() -> str:
    return f"{socket.gethostname()}"


def images_claim(*, image_id: int, batch_size: int, worker: str) -> tuple[str, list[Image]]:
    """Claim the image and up to batch_size-1 other waiting images of its lane for one
    forward pass (an upload never waits inside a bulk import's batch)."""
    with transaction.atomic():
        image = Image.objects.select_for_update().filter(pk=image_id).first()
        if image is None:
            return "missing", []
        if image.status in (Image.Status.READY, Image.Status.FAILED):
            return "done", []
        stale = _stale_before()
        if image.status == Image.Status.PROCESSING and image.claimed_at and image.claimed_at > stale:
            return "busy", []
        waiting = Q(status=Image.Status.PENDING) | Q(status=Image.Status.PROCESSING, claimed_at__lt=stale)
        others = list(
            Image.objects.select_for_update(skip_locked=True)
            .filter(waiting, lane=image.lane)
            .exclude(pk=image_id)
            .order_by("created_at", "id")
            .values_list("pk", flat=True)[: max(batch_size - 1, 0)]
        )
        ids = [image_id, *others]
        Image.objects.filter(pk__in=ids).update(
            status=Image.Status.PROCESSING, claimed_at=timezone.now(), claimed_by=worker, attempts=F("attempts") + 1
        )
        return "claimed", list(Image.objects.filter(pk__in=ids).order_by("created_at", "id"))


def images_release(*, image_ids: list[int]) -> None:
    """Give claimed images back to the queue (after a transient error)."""
    Image.objects.filter(pk__in=image_ids, status=Image.Status.PROCESSING).update(
        status=Image.Status.PENDING, claimed_at=None, claimed_by=""
    )


def image_fail(*, image: Image, reason: str) -> None:
    Image.objects.filter(pk=image.pk).update(
        status=Image.Status.FAILED, status_reason=reason[:2000], claimed_at=None, claimed_by=""
    )


def images_embed_batch(
    *,
    image_id: int,
    worker: str | None = None,
    predecoded: dict[int, PILImage.Image] | None = None,
    network_inputs: dict[int, tuple[str, np.ndarray]] | None = None,
    clock: pipeline.StageClock | None = None,
) -> BatchOutcome:
    """Embed `image_id` together with other waiting images in one batch.

    Safe to run twice: a finished image is skipped, and vectors are upserted on the
    (image, backbone) unique constraint. `predecoded` holds pictures the caller has
    just decoded (a bulk import), which are not read back from storage, and
    `network_inputs` backbone inputs it made ahead (used when the backbone matches; the
    picture is read back only when it does not).
    """
    conf = settings.IMAGESEARCH
    with pipeline.clock_stage(clock, "database writes"):
        state, images = images_claim(image_id=image_id, batch_size=conf["BATCH_SIZE"], worker=worker or worker_name())
    outcome = BatchOutcome(state=state, lane=str(images[0].lane) if images else LANE_INTERACTIVE)
    if state != "claimed":
        return outcome
    pending_ids = [im.pk for im in images]
    try:
        decoded: list[tuple[Image, PILImage.Image | None]] = []
        for image in images:
            if predecoded is not None and image.pk in predecoded:
                decoded.append((image, predecoded.pop(image.pk)))
                continue
            if network_inputs is not None and image.pk in network_inputs:
                decoded.append((image, None))
                continue
            try:
                with image.file.open("rb") as f:
                    data = f.read()
            except FileNotFoundError:
                image_fail(image=image, reason="The stored file is missing.")
                outcome.failed.append(image.pk)
                pending_ids.remove(image.pk)
                continue
            try:
                decoded.append((image, pipeline.decode(data).image))
            except ImageDecodeError as exc:
                image_fail(image=image, reason=str(exc))
                outcome.failed.append(image.pk)
                pending_ids.remove(image.pk)
        if decoded:
            inputs = {im.pk: network_inputs.pop(im.pk) for im, _ in decoded if network_inputs and im.pk in network_inputs}
            for image in _catalog_embed(decoded=decoded, network_inputs=inputs, clock=clock):
                outcome.ready.append(image.pk)
                pending_ids.remove(image.pk)
    except BaseException:
        images_release(image_ids=pending_ids)
        raise
    return outcome


def embedding_store(*, image: Image, backbone: str, vector: np.ndarray) -> Embedding | None:
    """Store the embedding, project it with the active reduction, mark the image ready
    (None when the image was deleted meanwhile)."""
    stored = embeddings_store(items=[(image, vector)], backbone=backbone)
    return stored[0] if stored else None


def embeddings_store(
    *, items: list[tuple[Image, np.ndarray]], backbone: str, probabilities: np.ndarray | None = None
) -> list[Embedding]:
    """Store a batch's embeddings in one transaction: upsert the vectors (and the labels,
    given the class probabilities of the same forward pass), project them with the active
    reduction, mark the images ready. Safe to repeat."""
    if not items:
        return []
    with transaction.atomic():
        # An image deleted while its batch was being embedded is left out; the rest of the
        # batch is stored (the lock keeps a delete from racing the inserts).
        alive = set(Image.objects.select_for_update().filter(pk__in=[im.pk for im, _ in items]).values_list("pk", flat=True))
        if probabilities is not None:
            labels_store(
                items=[(image.pk, p) for (image, _), p in zip(items, probabilities, strict=True) if image.pk in alive],
                backbone=backbone,
            )
        items = [(image, v) for image, v in items if image.pk in alive]
        if not items:
            return []
        vectors = np.stack([np.asarray(v, dtype=np.float32) for _, v in items])
        ids = [image.pk for image, _ in items]
        existing = {e.image_id: e for e in Embedding.objects.filter(image_id__in=ids, backbone=backbone)}
        fresh, changed = [], []
        for (image, _), vector in zip(items, vectors, strict=True):
            row = existing.get(image.pk)
            if row is None:
                fresh.append(Embedding(image=image, backbone=backbone, dim=int(vector.shape[0]), vector=vector_bytes(vector)))
            else:
                row.dim, row.vector = int(vector.shape[0]), vector_bytes(vector)
                changed.append(row)
        Embedding.objects.bulk_create(fresh)
        if changed:
            Embedding.objects.bulk_update(changed, ["dim", "vector"])
        reduction = Reduction.objects.select_for_update().filter(backbone=backbone, is_active=True).first()
        if reduction is not None:
            projected = reduction_load(reduction).transform(vectors)
            ReducedVector.objects.filter(reduction=reduction, image_id__in=ids).delete()
            ReducedVector.objects.bulk_create(
                [
                    ReducedVector(image_id=pk, reduction=reduction, vector=vector_bytes(p))
                    for pk, p in zip(ids, projected, strict=True)
                ]
            )
        Image.objects.filter(pk__in=ids).update(
            status=Image.Status.READY,
            status_reason="",
            # A worker's batch records who embedded it; a re-embed job (nothing claimed) keeps the record.
            embedded_by=Case(When(claimed_by="", then=F("embedded_by")), default=F("claimed_by")),
            embedded_at=timezone.now(),
            claimed_at=None,
            claimed_by="",
        )
    by_image = {e.image_id: e for e in Embedding.objects.filter(image_id__in=ids, backbone=backbone)}
    return [by_image[pk] for pk in ids]


def labels_store(*, items: list[tuple[int, np.ndarray]], backbone: str) -> int:
    """Replace the images' labels by their top IMAGESEARCH_LABELS_PER_IMAGE classes from
    class probabilities; returns how many images were labelled. Safe to repeat."""
    if not items:
        return 0
    top = int(settings.IMAGESEARCH["LABELS_PER_IMAGE"])
    rows = []
    for image_id, probs in items:
        probs = np.asarray(probs, dtype=np.float32)
        for rank, index in enumerate(np.argsort(-probs, kind="stable")[:top]):
            rows.append(
                ImageLabel(
                    image_id=image_id, backbone=backbone, rank=rank, class_index=int(index), confidence=float(probs[index])
                )
            )
    with transaction.atomic():
        ImageLabel.objects.filter(image_id__in=[pk for pk, _ in items], backbone=backbone).delete()
        ImageLabel.objects.bulk_create(rows)
    return len(items)


def catalog_changes_prune(*, older_than_seconds: int) -> int:
    """Delete change-log entries older than the retention; returns how many went.

    A marker entry records the last deleted id, so an index that had not read that far
    (a process idle for longer than the retention) sees the marker and reloads in full.
    """
    horizon = timezone.now() - timedelta(seconds=older_than_seconds)
    with transaction.atomic():
        through = CatalogChange.objects.filter(at__lt=horizon).aggregate(last=Max("pk"))["last"]
        if through is None:
            return 0
        deleted, _ = CatalogChange.objects.filter(pk__lte=through).delete()
        CatalogChange.objects.create(image_id=0, pruned_through=through)
    return deleted


def _pictures(decoded: list[tuple[Image, PILImage.Image | None]]) -> list[tuple[Image, PILImage.Image | None]]:
    """The batch with every picture, reading back from storage those the caller did not
    keep (it had made their network inputs)."""
    out: list[tuple[Image, PILImage.Image | None]] = []
    for image, picture in decoded:
        if picture is None:
            with image.file.open("rb") as f:
                picture = pipeline.decode(f.read()).image
        out.append((image, picture))
    return out


def _catalog_embed(
    *,
    decoded: list[tuple[Image, PILImage.Image | None]],
    network_inputs: dict[int, tuple[str, np.ndarray]] | None = None,
    clock: pipeline.StageClock | None = None,
) -> list[Image]:
    """Embed freshly claimed images for the catalog's backbone and, during a migration,
    for the target backbone too, so the switch finds nothing missing."""
    state = pipeline.catalog_state()
    backbone = pipeline.backbone_named(state.backbone)
    made = [(network_inputs or {}).get(image.pk) for image, _ in decoded]
    # Labels come from the same forward pass as the vectors.
    if all(m is not None and m[0] == backbone.name for m in made):
        with pipeline.clock_stage(clock, "forward pass"):
            vectors, probabilities = pipeline.embed_and_label_inputs(np.stack([m[1] for m in made if m]), backbone=backbone)
    else:  # inputs not made ahead (a worker's batch), or for a backbone the catalog left meanwhile
        with pipeline.clock_stage(clock, "network input and forward pass"):
            decoded = _pictures(decoded)
            pictures = [p for _, p in decoded if p is not None]
            vectors, probabilities = pipeline.embed_and_label_images(pictures, backbone=backbone)
    with pipeline.clock_stage(clock, "database writes"):
        stored = embeddings_store(
            items=[(image, vector) for (image, _), vector in zip(decoded, vectors, strict=True)],
            backbone=state.backbone,
            probabilities=probabilities,
        )
    # Images deleted while they were embedded are gone; the rest of the batch goes on.
    alive = {e.image_id for e in stored}
    kept = [i for i, (image, _) in enumerate(decoded) if image.pk in alive]
    decoded = [decoded[i] for i in kept]
    done = {state.backbone}
    while True:
        # A switch may happen while this batch was embedded: catch up with the new space.
        fresh = pipeline.catalog_state()
        missing = [b for b in (fresh.backbone, fresh.target_backbone) if b and b not in done]
        if not missing:
            break
        decoded = _pictures(decoded)
        pictures = [p for _, p in decoded if p is not None]
        for name in missing:
            extra = pipeline.embed_images(pictures, backbone=pipeline.backbone_named(name))
            for (image, _), vector in zip(decoded, extra, strict=True):
                embedding_add(image=image, backbone=name, vector=vector)
            done.add(name)
    return [image for image, _ in decoded]


def embedding_add(*, image: Image, backbone: str, vector: np.ndarray) -> Embedding | None:
    """Store an embedding (and its projection by the backbone's active PCA) without
    touching the image's status: used for a backbone the catalog is migrating to."""
    vector = np.asarray(vector, dtype=np.float32)
    with transaction.atomic():
        if not Image.objects.select_for_update().filter(pk=image.pk).exists():
            return None  # deleted while it was embedded
        embedding, _ = Embedding.objects.update_or_create(
            image=image, backbone=backbone, defaults={"dim": int(vector.shape[0]), "vector": vector_bytes(vector)}
        )
        reduction = Reduction.objects.filter(backbone=backbone, is_active=True).first()
        if reduction is not None:
            projected = reduction_load(reduction).transform(vector[None])[0]
            ReducedVector.objects.update_or_create(image=image, reduction=reduction, defaults={"vector": vector_bytes(projected)})
    return embedding


def images_delete(*, image_ids: list[int]) -> int:
    """Delete images with their files, embeddings and reduced vectors."""
    images = list(Image.objects.filter(pk__in=image_ids))
    with transaction.atomic():
        Image.objects.filter(pk__in=[im.pk for im in images]).delete()
        for image in images:
            transaction.on_commit(lambda image=image: _delete_files(image))  # type: ignore[misc]
    return len(images)
