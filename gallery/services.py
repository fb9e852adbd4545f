"""Writes to the catalog: storing uploads, embedding them, fitting PCA reductions."""

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

from . import pipeline
from .models import LANE_BULK, LANE_INTERACTIVE, CatalogChange, Embedding, Image, ReducedVector, Reduction
from .storage import private_storage, withheld_name
from .vision.preprocess import ImageDecodeError, display_copy_bytes
from .vision.reduction import FittedPCA, fit_pca

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 400
_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}


class ImageRejected(ValueError):
    """An upload that cannot enter the catalog; the message is meant for the user, the
    code (when set) for programs."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class CatalogUnavailable(RuntimeError):
    """The upload was fine but the server could not store it now (database busy, disk
    full); nothing was stored and the user may try again."""


class DuplicateImage(ImageRejected):
    """The same bytes are already in the catalog. The message names no image: pages and
    the API say which one only to those who may see it (`message_for`)."""

    def __init__(self, existing: Image):
        super().__init__("This photo is already in the catalog.")
        self.existing = existing

    def message_for(self, *, may_see: bool) -> str:
        return f"This photo is already in the catalog as “{self.existing.display_title}”." if may_see else str(self)


# ---------------------------------------------------------------- uploads


def read_upload(file: IO[bytes], *, max_bytes: int | None = None) -> bytes:
    """Read an upload, refusing it before reading past the size limit."""
    limit = max_bytes if max_bytes is not None else settings.IMAGESEARCH["MAX_UPLOAD_BYTES"]
    size = getattr(file, "size", None)
    if size is not None and size > limit:
        raise ImageRejected(f"The file is {size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB.")
    data = file.read(limit + 1)
    if len(data) > limit:
        raise ImageRejected(f"The file is larger than the {limit / 1e6:.0f} MB limit.")
    if not data:
        raise ImageRejected("The file is empty.")
    return data


def _thumbnail_bytes(image: PILImage.Image) -> bytes:
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), PILImage.Resampling.BICUBIC, reducing_gap=2.0)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=85)
    return out.getvalue()


def original_name_clean(name: str) -> str:
    """The file name as the user knows it, for display only: no folders, no control or
    invisible characters, at most 255 characters. Stored files never use it."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable() and unicodedata.category(ch) not in ("Cf", "Co", "Cs"))
    name = name.strip().strip(".")
    return name[:255]


def image_create(
    *,
    file: IO[bytes],
    uploaded_by: AbstractBaseUser | None = None,
    title: str = "",
    original_name: str = "",
    queue: bool = True,
    lane: str = LANE_INTERACTIVE,
    decoded_sink: dict[int, PILImage.Image] | None = None,
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
    name = original_name_clean(original_name or getattr(file, "name", "") or "")
    image = Image(
        title=title[:200],
        original_name=name,
        checksum=checksum,
        size=len(data),
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
        uploaded_by=uploaded_by if uploaded_by is not None and uploaded_by.is_authenticated else None,
        lane=lane,
        queued_at=timezone.now() if queue else None,
    )
    stem = f"{checksum[:2]}/{checksum}"
    try:
        with transaction.atomic():
            image.file.save(f"{stem}.{_EXTENSIONS.get(decoded.format, 'img')}", ContentFile(data), save=False)
            image.display.save(f"{stem}.jpg", ContentFile(display), save=False)
            image.thumbnail.save(f"{stem}.jpg", ContentFile(thumb), save=False)
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
        log.error("upload not stored, storage failed: %s", exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CatalogUnavailable("The server has no room for new photos right now; nothing was stored.") from exc
        raise CatalogUnavailable("The server could not store the photo; nothing was stored. Please try again.") from exc
    except BaseException:
        _delete_files(image)
        raise
    if decoded_sink is not None:  # a bulk import embeds it next without decoding it again
        decoded_sink[image.pk] = decoded.image
    return image


_BUSY = "The catalog is busy right now; nothing was stored. Please try again in a moment."


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
    from .tasks import embed_image

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
    from .tasks import embed_image

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
    return changed


# ---------------------------------------------------------------- embedding


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
    *, image_id: int, worker: str | None = None, predecoded: dict[int, PILImage.Image] | None = None
) -> BatchOutcome:
    """Embed `image_id` together with other waiting images in one batch.

    Safe to run twice: a finished image is skipped, and vectors are upserted on the
    (image, backbone) unique constraint. `predecoded` holds pictures the caller has
    just decoded (a bulk import), which are not read back from storage.
    """
    conf = settings.IMAGESEARCH
    state, images = images_claim(image_id=image_id, batch_size=conf["BATCH_SIZE"], worker=worker or worker_name())
    outcome = BatchOutcome(state=state, lane=str(images[0].lane) if images else LANE_INTERACTIVE)
    if state != "claimed":
        return outcome
    pending_ids = [im.pk for im in images]
    try:
        decoded: list[tuple[Image, PILImage.Image]] = []
        for image in images:
            if predecoded is not None and image.pk in predecoded:
                decoded.append((image, predecoded.pop(image.pk)))
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
            for image in _catalog_embed(decoded=decoded):
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


def embeddings_store(*, items: list[tuple[Image, np.ndarray]], backbone: str) -> list[Embedding]:
    """Store a batch's embeddings in one transaction: upsert the vectors, project them with
    the active reduction, mark the images ready. Safe to repeat."""
    if not items:
        return []
    with transaction.atomic():
        # An image deleted while its batch was being embedded is left out; the rest of the
        # batch is stored (the lock keeps a delete from racing the inserts).
        alive = set(Image.objects.select_for_update().filter(pk__in=[im.pk for im, _ in items]).values_list("pk", flat=True))
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
                fresh.append(Embedding(image=image, backbone=backbone, dim=int(vector.shape[0]), vector=vector.tobytes()))
            else:
                row.dim, row.vector = int(vector.shape[0]), vector.tobytes()
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
                    ReducedVector(image_id=pk, reduction=reduction, vector=p.tobytes())
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


# ---------------------------------------------------------------- the catalog change log


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


# ---------------------------------------------------------------- PCA reductions

_loaded: dict[int, FittedPCA] = {}


def reduction_load(reduction: Reduction) -> FittedPCA:
    """The reduction's arrays, decoded once per process (reductions never change)."""
    fitted = _loaded.get(reduction.pk)
    if fitted is None:
        dims, d = reduction.dims, reduction.input_dim
        fitted = FittedPCA(
            mean=np.frombuffer(bytes(reduction.mean), dtype=np.float32).copy(),
            components=np.frombuffer(bytes(reduction.components), dtype=np.float32).reshape(dims, d).copy(),
            explained_variance=np.frombuffer(bytes(reduction.explained_variance), dtype=np.float32).copy(),
            whiten=reduction.whiten,
            explained_variance_ratio=reduction.explained_variance_ratio,
        )
        _loaded[reduction.pk] = fitted
    return fitted


def pca_images_needed(*, dims: int | None = None) -> int:
    """How many ready images a PCA fit needs: the configured minimum, and at least one
    more than its dimensions (n images span at most n-1 of them)."""
    conf = settings.IMAGESEARCH
    return max(int(conf["PCA_MIN_IMAGES"]), int(dims or conf["PCA_DIMS"]) + 1, 2)


def reduction_needed(*, backbone: str) -> bool:
    """True once the catalog can support a PCA fit, and again whenever it has doubled."""
    count = Embedding.objects.filter(backbone=backbone, image__status=Image.Status.READY).count()
    if count < pca_images_needed():
        return False
    active = Reduction.objects.filter(backbone=backbone, is_active=True).first()
    return active is None or count >= 2 * active.fitted_on


def _embedding_matrix(backbone: str, *, exclude_reduction: Reduction | None = None) -> tuple[np.ndarray, np.ndarray]:
    rows = Embedding.objects.filter(backbone=backbone, image__status=Image.Status.READY)
    if exclude_reduction is not None:
        rows = rows.exclude(image__reduced_vectors__reduction=exclude_reduction)
    ids, vecs = [], []
    for image_id, blob in rows.values_list("image_id", "vector").iterator(chunk_size=2000):
        ids.append(image_id)
        vecs.append(np.frombuffer(bytes(blob), dtype=np.float32))
    if not vecs:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return np.asarray(ids, dtype=np.int64), np.stack(vecs)


def _project_into(reduction: Reduction, fitted: FittedPCA, ids: np.ndarray, x: np.ndarray) -> None:
    for start in range(0, len(ids), 5000):
        y = fitted.transform(x[start : start + 5000])
        ReducedVector.objects.bulk_create(
            [
                ReducedVector(image_id=int(i), reduction=reduction, vector=v.tobytes())
                for i, v in zip(ids[start : start + 5000], y, strict=True)
            ],
            ignore_conflicts=True,
        )


def reduction_fit(*, backbone: str, dims: int | None = None, whiten: bool | None = None) -> Reduction | None:
    """Fit a new PCA on the catalog, project every vector, then switch to it atomically.

    Search keeps answering from the previous reduction until the switch; images that
    become ready meanwhile are projected inside the switching transaction.
    """
    conf = settings.IMAGESEARCH
    dims = dims or conf["PCA_DIMS"]
    whiten = conf["PCA_WHITEN"] if whiten is None else whiten
    ids, x = _embedding_matrix(backbone)
    if len(ids) < pca_images_needed(dims=dims):
        return None  # never a PCA with fewer dimensions than configured
    fitted = fit_pca(x, dims=dims, whiten=whiten)
    try:
        with transaction.atomic():
            version = (Reduction.objects.filter(backbone=backbone).aggregate(v=Max("version"))["v"] or 0) + 1
            reduction = Reduction.objects.create(
                backbone=backbone,
                version=version,
                dims=fitted.dims,
                input_dim=fitted.input_dim,
                whiten=fitted.whiten,
                fitted_on=len(ids),
                mean=fitted.mean.tobytes(),
                components=fitted.components.tobytes(),
                explained_variance=fitted.explained_variance.tobytes(),
                explained_variance_ratio=fitted.explained_variance_ratio,
            )
    except IntegrityError:
        log.info("another %s reduction fit is in progress; skipping", backbone)
        return None
    _project_into(reduction, fitted, ids, x)
    with transaction.atomic():
        current = Reduction.objects.select_for_update().filter(backbone=backbone, is_active=True).first()
        if current is not None and current.fitted_on >= reduction.fitted_on and current.version > reduction.version:
            reduction.delete()
            return current
        late_ids, late_x = _embedding_matrix(backbone, exclude_reduction=reduction)
        if len(late_ids):
            _project_into(reduction, fitted, late_ids, late_x)
        if current is not None:
            Reduction.objects.filter(pk=current.pk).update(is_active=False)
        Reduction.objects.filter(pk=reduction.pk).update(is_active=True, activated_at=timezone.now())
        ReducedVector.objects.filter(reduction__backbone=backbone).exclude(reduction=reduction).delete()
    reduction.refresh_from_db()
    log.info("activated %s (fitted on %d, %.1f%% variance kept)", reduction, len(ids), 100 * fitted.explained_variance_ratio)
    return reduction


# ---- catalog curation ------------------------------------------------------
# Titles and tags, bulk operations, the persisted search space and its migration to
# another backbone or PCA, and the near-duplicate job.

from .models import CatalogJob, CatalogState, DuplicateGroup, Tag  # noqa: E402
from .vision.backbones import BACKBONES, BackboneUnavailable, backbone_availability  # noqa: E402
from .vision.neardup import confirm_pairs, group_pairs, similar_pairs  # noqa: E402


class CurationError(ValueError):
    """A curation request that cannot be carried out; the message is meant for the editor."""


def _catalog_embed(*, decoded: list[tuple[Image, PILImage.Image]]) -> list[Image]:
    """Embed freshly claimed images for the catalog's backbone and, during a migration,
    for the target backbone too, so the switch finds nothing missing."""
    state = pipeline.catalog_state()
    pictures = [im for _, im in decoded]
    vectors = pipeline.embed_images(pictures, backbone=pipeline.backbone_named(state.backbone))
    stored = embeddings_store(
        items=[(image, vector) for (image, _), vector in zip(decoded, vectors, strict=True)], backbone=state.backbone
    )
    # Images deleted while they were embedded are gone; the rest of the batch goes on.
    alive = {e.image_id for e in stored}
    kept = [i for i, (image, _) in enumerate(decoded) if image.pk in alive]
    decoded, pictures = [decoded[i] for i in kept], [pictures[i] for i in kept]
    done = {state.backbone}
    while True:
        # A switch may happen while this batch was embedded: catch up with the new space.
        fresh = pipeline.catalog_state()
        missing = [b for b in (fresh.backbone, fresh.target_backbone) if b and b not in done]
        if not missing:
            break
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
            image=image, backbone=backbone, defaults={"dim": int(vector.shape[0]), "vector": vector.tobytes()}
        )
        reduction = Reduction.objects.filter(backbone=backbone, is_active=True).first()
        if reduction is not None:
            projected = reduction_load(reduction).transform(vector[None])[0]
            ReducedVector.objects.update_or_create(image=image, reduction=reduction, defaults={"vector": projected.tobytes()})
    return embedding


# ---- titles and tags


def tags_parse(*, text: str) -> list[str]:
    """Comma- or semicolon-separated tag names, trimmed, lower-cased, without repeats."""
    names: list[str] = []
    for part in text.replace(";", ",").split(","):
        name = " ".join(part.split()).lower()
        if len(name) > 64:
            raise CurationError(f"The tag “{name[:20]}…” is longer than 64 characters.")
        if name and name not in names:
            names.append(name)
    return names


def image_set_tags(*, image: Image, names: list[str]) -> None:
    """Replace an image's tags with `names` (created when new)."""
    with transaction.atomic():
        tags = [Tag.objects.get_or_create(name=name)[0] for name in names]
        image.tags.set(tags)


def image_update(*, image: Image, title: str, tags: list[str]) -> Image:
    if len(title) > 200:
        raise CurationError("A title has at most 200 characters.")
    with transaction.atomic():
        Image.objects.filter(pk=image.pk).update(title=title.strip())
        image_set_tags(image=image, names=tags)
    image.refresh_from_db()
    return image


# ---- bulk operations (each returns how many images changed)


def images_add_tags(*, image_ids: list[int], names: list[str]) -> int:
    """Add the tags to each image (created when new); returns how many images gained one."""
    if not names:
        raise CurationError("Type at least one tag.")
    with transaction.atomic():
        tags = [Tag.objects.get_or_create(name=name)[0] for name in names]
        links = Tag.images.through
        have = set(links.objects.filter(image_id__in=image_ids, tag__in=tags).values_list("image_id", "tag_id"))
        ids = list(Image.objects.filter(pk__in=image_ids).values_list("pk", flat=True))
        new = [links(image_id=pk, tag_id=tag.pk) for pk in ids for tag in tags if (pk, tag.pk) not in have]
        links.objects.bulk_create(new, ignore_conflicts=True)
    return len({link.image_id for link in new})


def images_remove_tags(*, image_ids: list[int], names: list[str]) -> int:
    """Remove the tags from each image; returns how many images lost one."""
    if not names:
        raise CurationError("Type at least one tag.")
    links = Tag.images.through
    with transaction.atomic():
        found = links.objects.filter(image_id__in=image_ids, tag__name__in=names)
        changed = len(set(found.values_list("image_id", flat=True)))
        found.delete()
    return changed


def images_delete(*, image_ids: list[int]) -> int:
    """Delete images with their files, embeddings and reduced vectors."""
    images = list(Image.objects.filter(pk__in=image_ids))
    with transaction.atomic():
        Image.objects.filter(pk__in=[im.pk for im in images]).delete()
        for image in images:
            transaction.on_commit(lambda image=image: _delete_files(image))  # type: ignore[misc]
    return len(images)


def _images_requeue(queryset) -> int:  # type: ignore[no-untyped-def]
    with transaction.atomic():
        ids = list(queryset.select_for_update().values_list("pk", flat=True))
        Image.objects.filter(pk__in=ids).update(
            status=Image.Status.PENDING,
            status_reason="",
            claimed_at=None,
            claimed_by="",
            attempts=0,
            lane=LANE_BULK,
            queued_at=timezone.now(),
        )
        for pk in ids:
            transaction.on_commit(lambda pk=pk: image_queue_embedding(image_id=pk, lane=LANE_BULK))  # type: ignore[misc]
    return len(ids)


def images_reembed(*, image_ids: list[int]) -> int:
    """Compute the selected images' embeddings again (a worker picks them up)."""
    return _images_requeue(Image.objects.filter(pk__in=image_ids).exclude(status=Image.Status.PROCESSING))


def images_retry_failed(*, image_ids: list[int]) -> int:
    """Give failed images another try; images that did not fail are left alone."""
    return _images_requeue(Image.objects.filter(pk__in=image_ids, status=Image.Status.FAILED))


# ---- catalog jobs: re-embed, refit, near-duplicates


def catalog_job_start(*, kind: str, backbone: str = "", queue: bool = True) -> CatalogJob:
    """Create (or return the unfinished) job of this kind and queue it on commit.

    A re-embed is checked before anything changes: the backbone must exist, load on
    this machine and differ from the catalog's; one migration runs at a time.
    """
    if kind not in CatalogJob.Kind.values:
        raise CurationError(f"unknown job {kind!r}")
    open_jobs = CatalogJob.objects.filter(kind=kind, status__in=[CatalogJob.Status.QUEUED, CatalogJob.Status.RUNNING])
    if kind == CatalogJob.Kind.REFIT:
        _refit_check(backbone=pipeline.catalog_state().backbone)
    if kind == CatalogJob.Kind.REEMBED:
        if backbone not in BACKBONES:
            raise CurationError(f"unknown backbone {backbone[:40]!r}; choose one of {', '.join(BACKBONES)}")
        _backbone_check(backbone)
        state = pipeline.catalog_state()
        other = open_jobs.exclude(backbone=backbone).first()
        if other is not None:
            raise CurationError(f"A migration to {other.backbone} is in progress (job {other.pk}).")
        if state.backbone == backbone and not open_jobs.exists():
            raise CurationError(f"The catalog already uses {backbone}.")
        open_jobs = open_jobs.filter(backbone=backbone)
    with transaction.atomic():
        job = open_jobs.first()
        if job is None:
            job = CatalogJob.objects.create(kind=kind, backbone=backbone)
        if kind == CatalogJob.Kind.REEMBED:
            CatalogState.objects.filter(pk=1).update(target_backbone=backbone)
        if queue:
            transaction.on_commit(lambda: catalog_job_queue(job_id=job.pk))
    return job


def _backbone_check(name: str) -> None:
    """Refuse a backbone whose weights are not installed here, saying how to install them;
    one whose file is present but cannot be loaded is refused without the library's text."""
    found = backbone_availability(name, resnet50_weights=settings.IMAGESEARCH["RESNET50_WEIGHTS"] or None)
    if not found.available:
        raise CurationError(f"{name} cannot be used on this machine. {found.reason} {found.install}")
    try:
        pipeline.backbone_named(name)
    except BackboneUnavailable:
        log.warning("backbone %s could not be loaded", name, exc_info=True)
        raise CurationError(f"{name} cannot be used on this machine: its weights could not be loaded. {found.install}") from None


def _refit_check(*, backbone: str) -> int:
    """Refuse a refit the catalog is too small for (it would fit fewer dimensions than
    configured); returns how many images the fit will use."""
    count = Embedding.objects.filter(backbone=backbone, image__status=Image.Status.READY).count()
    needed = pca_images_needed()
    if count < needed:
        raise CurationError(
            f"Refitting PCA needs at least {needed} ready images; the catalog has {count}. "
            f"Search uses the raw {backbone} embeddings until then."
        )
    return count


def catalog_job_queue(*, job_id: int) -> None:
    from .tasks import run_catalog_job

    run_catalog_job.delay(job_id)


def _job_update(job: CatalogJob, **fields: object) -> None:
    for name, value in fields.items():
        setattr(job, name, value)
    CatalogJob.objects.filter(pk=job.pk).update(**fields, updated_at=timezone.now())


def catalog_job_run(*, job_id: int, batch_size: int | None = None) -> CatalogJob | None:
    """Run (or resume) a catalog job to the end; safe to run twice."""
    job = CatalogJob.objects.filter(pk=job_id).first()
    if job is None or job.status in (CatalogJob.Status.DONE, CatalogJob.Status.FAILED):
        return job
    _job_update(job, status=CatalogJob.Status.RUNNING, started_at=job.started_at or timezone.now())
    try:
        if job.kind == CatalogJob.Kind.REEMBED:
            message = _reembed(job, batch_size=batch_size or settings.IMAGESEARCH["BATCH_SIZE"])
        elif job.kind == CatalogJob.Kind.REFIT:
            message = _refit(job)
        else:
            message = _near_duplicates(job)
    except (CurationError, BackboneUnavailable) as exc:
        _job_update(job, status=CatalogJob.Status.FAILED, message=str(exc), finished_at=timezone.now())
        return job
    _job_update(job, status=CatalogJob.Status.DONE, message=message, finished_at=timezone.now())
    return job


def _ready_images():  # type: ignore[no-untyped-def]
    return Image.objects.filter(status=Image.Status.READY)


def _reembed(job: CatalogJob, *, batch_size: int) -> str:
    """Embed every ready image with the target backbone, batch by batch (the progress is
    simply which images still lack that embedding, so a crash loses at most one batch),
    fit its PCA, then switch the catalog in one transaction and remove the old vectors."""
    target = job.backbone
    state = pipeline.catalog_state()
    if state.backbone == target and not state.target_backbone:
        return f"The catalog uses {target}."
    if state.target_backbone != target:
        CatalogState.objects.filter(pk=1).update(target_backbone=target)
    backbone = pipeline.backbone_named(target)
    started = timezone.now()
    embedded = 0
    while True:
        missing = list(_ready_images().exclude(embeddings__backbone=target).order_by("pk")[:batch_size])
        total = _ready_images().count()
        _job_update(job, total=total, done=total - _ready_images().exclude(embeddings__backbone=target).count())
        if not missing:
            if _reembed_switch(target=target):
                break
            continue
        pictures, kept = [], []
        for image in missing:
            try:
                with image.file.open("rb") as f:
                    pictures.append(pipeline.decode(f.read()).image)
                kept.append(image)
            except (FileNotFoundError, ImageDecodeError) as exc:
                image_fail(image=image, reason=str(exc) or "The stored file is missing.")
        vectors = pipeline.embed_images(pictures, backbone=backbone) if pictures else np.zeros((0, backbone.dim), np.float32)
        for image, vector in zip(kept, vectors, strict=True):
            embedding_add(image=image, backbone=target, vector=vector)
        embedded += len(kept)
    old = _remove_other_spaces(keep=target)
    seconds = (timezone.now() - started).total_seconds()
    return f"Switched to {target}: embedded {embedded} images in {seconds:.1f} s; removed {old} old vectors."


def _reembed_switch(*, target: str) -> bool:
    """Fit the target's PCA when the catalog is large enough, then switch atomically.
    Returns False when images became ready meanwhile without a target embedding."""
    count = Embedding.objects.filter(backbone=target, image__status=Image.Status.READY).count()
    active = Reduction.objects.filter(backbone=target, is_active=True).first()
    if count >= pca_images_needed() and (active is None or active.fitted_on * 2 <= count):
        reduction_fit(backbone=target)
    with transaction.atomic():
        state = CatalogState.objects.select_for_update().get(pk=1)
        if _ready_images().exclude(embeddings__backbone=target).exists():
            return False
        reduction = Reduction.objects.filter(backbone=target, is_active=True).first()
        if reduction is not None:
            late_ids, late_x = _embedding_matrix(target, exclude_reduction=reduction)
            if len(late_ids):
                _project_into(reduction, reduction_load(reduction), late_ids, late_x)
        state.backbone, state.target_backbone, state.switched_at = target, "", timezone.now()
        state.save()
    log.info("catalog switched to %s", target)
    return True


def _remove_other_spaces(*, keep: str) -> int:
    """Delete embeddings and reductions of every backbone but `keep`, in chunks."""
    removed = 0
    while True:
        ids = list(Embedding.objects.exclude(backbone=keep).values_list("pk", flat=True)[:5000])
        if not ids:
            break
        removed += Embedding.objects.filter(pk__in=ids).delete()[1].get("gallery.Embedding", 0)
    Reduction.objects.exclude(backbone=keep).delete()
    return removed


def _refit(job: CatalogJob) -> str:
    backbone = pipeline.catalog_state().backbone
    total = _refit_check(backbone=backbone)  # images may have been deleted since the start
    _job_update(job, backbone=backbone, total=total)
    reduction = reduction_fit(backbone=backbone)
    if reduction is None:
        raise CurationError("Another PCA fit was in progress; this one was skipped.")
    _job_update(job, done=total)
    return f"Activated {reduction} ({100 * reduction.explained_variance_ratio:.1f}% of the variance kept)."


def catalog_vectors() -> tuple[np.ndarray, np.ndarray]:
    """Ids and vectors of the catalog's ready images in its current search space."""
    backbone = pipeline.catalog_state().backbone
    reduction = Reduction.objects.filter(backbone=backbone, is_active=True).first()
    rows = (
        ReducedVector.objects.filter(reduction=reduction, image__status=Image.Status.READY)
        if reduction is not None
        else Embedding.objects.filter(backbone=backbone, image__status=Image.Status.READY)
    )
    ids, vecs = [], []
    for image_id, blob in rows.order_by("image_id").values_list("image_id", "vector").iterator(chunk_size=5000):
        ids.append(image_id)
        vecs.append(np.frombuffer(bytes(blob), dtype=np.float32))
    if not vecs:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 1), dtype=np.float32)
    return np.asarray(ids, dtype=np.int64), np.stack(vecs)


def _near_duplicates(job: CatalogJob) -> str:
    """Group the catalog's near-duplicates from a snapshot of its vectors; uploads that
    arrive meanwhile are simply left for the next run."""
    conf = settings.IMAGESEARCH
    threshold = float(conf.get("NEAR_DUPLICATE_THRESHOLD", 0.8))
    max_distance = int(conf.get("NEAR_DUPLICATE_MAX_HASH_DISTANCE", 10))
    ids, x = catalog_vectors()
    _job_update(job, backbone=pipeline.catalog_state().backbone, total=len(ids))
    i, j, scores = similar_pairs(x, threshold=threshold) if len(ids) > 1 else (ids, ids, np.zeros(0, np.float32))
    i, j, scores = confirm_pairs(i, j, scores, hash_of=lambda row: _picture_hash(int(ids[row])), max_distance=max_distance)
    groups = group_pairs(len(ids), i, j, scores)
    found = 0
    with transaction.atomic():
        DuplicateGroup.objects.exclude(job=job).delete()
        DuplicateGroup.objects.filter(job=job).delete()
        existing = set(Image.objects.filter(pk__in=ids.tolist()).values_list("pk", flat=True))
        for group in groups:
            members = [int(ids[i]) for i in group.members if int(ids[i]) in existing]
            if len(members) > 1:
                DuplicateGroup.objects.create(job=job, best_score=group.best_score).images.set(members)
                found += 1
    _job_update(job, done=len(ids))
    plural = "group" if found == 1 else "groups"
    return f"{found} {plural} of near-duplicates among {len(ids)} images (similarity ≥ {threshold:.2f})."


def duplicate_group_resolve(*, group: DuplicateGroup, keep_id: int, action: str) -> int:
    """Keep one image of a group and hide or delete the others; returns how many changed."""
    members = list(group.images.values_list("pk", flat=True))
    if keep_id not in members:
        raise CurationError("The image to keep is not in this group.")
    others = [pk for pk in members if pk != keep_id]
    if action == "hide":
        changed = images_set_visibility(image_ids=others, visibility=str(Image.Visibility.HIDDEN))
    elif action == "delete":
        changed = images_delete(image_ids=others)
    else:
        raise CurationError(f"unknown action {action!r}; choose hide or delete")
    group.delete()
    return changed


def _picture_hash(image_id: int) -> int | None:
    """64-bit perceptual hash of an image's thumbnail (None when it cannot be read)."""
    import imagehash

    image = Image.objects.filter(pk=image_id).only("thumbnail", "file").first()
    if image is None:
        return None
    stored = image.thumbnail or image.file
    try:
        with stored.open("rb") as f, PILImage.open(f) as picture:
            return int(str(imagehash.phash(picture.convert("RGB"))), 16)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- copyright monitoring
# Imported here rather than at the top so the section stays self-contained.
from .models import CopyMatch, MatchDecision, ProtectedWork, WorkSignature  # noqa: E402
from .vision import copydetect  # noqa: E402


class WorkRejected(ValueError):
    """A protected work that cannot be registered; the message is meant for the user."""


def protected_work_register(
    *,
    file: IO[bytes],
    title: str,
    rights_holder: str,
    reference: str = "",
    note: str = "",
    registered_by: AbstractBaseUser | None = None,
    queue: bool = True,
) -> ProtectedWork:
    """Store a protected work; its signature is computed and the catalog scanned on commit."""
    title, rights_holder = title.strip(), rights_holder.strip()
    if not title or not rights_holder:
        raise WorkRejected("A protected work needs a title and a rights holder.")
    try:
        data = read_upload(file)
    except ImageRejected as exc:
        raise WorkRejected(str(exc)) from None
    checksum = hashlib.sha256(data).hexdigest()
    existing = ProtectedWork.objects.filter(checksum=checksum).first()
    if existing is not None:
        raise WorkRejected(f"This image is already registered as “{existing.title}”.")
    try:
        decoded = pipeline.decode(data)
    except ImageDecodeError as exc:
        raise WorkRejected(str(exc)) from None
    work = ProtectedWork(
        title=title[:200],
        rights_holder=rights_holder[:200],
        reference=reference.strip()[:200],
        note=note.strip(),
        checksum=checksum,
        width=decoded.width,
        height=decoded.height,
        registered_by=registered_by if registered_by is not None and registered_by.is_authenticated else None,
    )
    try:
        with transaction.atomic():
            work.file.save(f"{checksum[:2]}/{checksum}.{_EXTENSIONS.get(decoded.format, 'img')}", ContentFile(data), save=False)
            work.save()
            if queue:
                transaction.on_commit(lambda: protected_work_queue(work_id=work.pk))
    except IntegrityError:
        if work.file and work.file.name:
            work.file.storage.delete(work.file.name)
        raise WorkRejected("This image is already registered.") from None
    return work


def protected_work_queue(*, work_id: int) -> None:
    from .tasks import describe_protected_work

    try:
        describe_protected_work.apply_async(args=[work_id], retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2})
    except Exception as exc:  # broker unreachable: the work stays pending, visibly
        log.warning("could not queue protected work %s (%s)", work_id, exc)


def protected_work_describe(*, work_id: int) -> ProtectedWork | None:
    """Compute and store the work's signature (once per backbone and descriptor version)
    and add it to this process's index. Safe to run twice."""

    work = ProtectedWork.objects.filter(pk=work_id).first()
    if work is None:
        return None
    backbone = pipeline.current_backbone()
    row = WorkSignature.objects.filter(work=work, backbone=backbone.name, version=copydetect.DESCRIPTOR_VERSION).first()
    if row is None:
        try:
            with work.file.open("rb") as f:
                image = pipeline.decode(f.read()).image
        except (FileNotFoundError, ImageDecodeError) as exc:
            reason = "The stored file is missing." if isinstance(exc, FileNotFoundError) else str(exc)
            ProtectedWork.objects.filter(pk=work.pk).update(status=ProtectedWork.Status.FAILED, status_reason=reason)
            work.refresh_from_db()
            return work
        signature = copydetect.describe_work(backbone, image)
        row, _ = WorkSignature.objects.get_or_create(
            work=work, backbone=backbone.name, version=copydetect.DESCRIPTOR_VERSION, defaults={"data": signature.to_bytes()}
        )
    ProtectedWork.objects.filter(pk=work.pk).update(status=ProtectedWork.Status.READY, status_reason="")
    work.refresh_from_db()
    return work


# The match page draws at most this many keypoint correspondences.
EVIDENCE_PAIRS = 60


def _fractions(points: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 3), round(float(y), 3)] for x, y in np.clip(points, 0.0, 1.0)]


def _box(points: np.ndarray) -> list[float]:
    """[x0, y0, x1, y1] around fractional points."""
    x0, y0 = np.clip(points.min(axis=0), 0.0, 1.0)
    x1, y1 = np.clip(points.max(axis=0), 0.0, 1.0)
    return [round(float(v), 3) for v in (x0, y0, x1, y1)]


def _geometry_signals(geometry: copydetect.Geometry, *, mirrored: bool) -> dict[str, object] | None:
    """Where the upload and the work agree, as fractions of each image's width and height,
    so the page can draw it over any displayed size."""
    if geometry.inliers < 3 or geometry.transform is None:
        return None
    upload_scale, work_scale = np.array(geometry.query_size), np.array(geometry.work_size)
    on_work, on_upload = geometry.region_on_work() / work_scale, geometry.region_on_upload() / upload_scale
    if len(on_work) < 3 or len(on_upload) < 3:
        return None
    upload_xy, work_xy = geometry.fractions()
    pick = np.unique(np.linspace(0, geometry.inliers - 1, min(EVIDENCE_PAIRS, geometry.inliers)).round().astype(int))
    return {
        "work_region": _fractions(on_work),
        "upload_region": _fractions(on_upload),
        "work_box": _box(on_work),
        "upload_box": _box(on_upload),
        "work_found": round(geometry.work_found, 3),
        "upload_covered": round(geometry.upload_covered, 3),
        "inlier_share_of_work": round(geometry.work_share, 3),
        "agreeing_matches": round(geometry.inlier_ratio, 3),
        "support": round(geometry.support, 3),
        "mirrored": mirrored,
        "pairs": [
            [*u, *w] for u, w in zip(_fractions(upload_xy[pick]), _fractions(work_xy[pick]), strict=True)
        ],  # [upload x, upload y, work x, work y]
    }


def _evidence_signals(evidence: copydetect.Evidence, *, exact: bool = False) -> dict[str, object]:
    signals: dict[str, object] = {
        "exact": exact,
        "cnn": round(evidence.cnn, 4),
        "cnn_view": evidence.cnn_view,
        "hash_distance": evidence.hash_distance,
        "inliers": evidence.inliers,
        "mirrored": evidence.mirrored,
        "fired": ["identical file (same checksum)"] if exact else evidence.fired(),
    }
    if evidence.geometry is not None and not exact:
        geometry = _geometry_signals(evidence.geometry, mirrored=evidence.mirrored)
        if geometry is not None:
            signals["geometry"] = geometry
    return signals


def copy_match_record(*, work_id: int, image_id: int, score: float, signals: dict[str, object], found_by: str) -> CopyMatch:
    """Create the match once; an existing pair (pending, confirmed or dismissed) is never
    raised again, only its score kept at the best seen while it is pending."""
    match, created = CopyMatch.objects.get_or_create(
        work_id=work_id, image_id=image_id, defaults={"score": score, "signals": signals, "found_by": found_by}
    )
    if not created and match.status == CopyMatch.Status.PENDING and score > match.score:
        CopyMatch.objects.filter(pk=match.pk).update(score=score, signals=signals)
        match.refresh_from_db()
    return match


def _threshold() -> float:
    return float(settings.COPYRIGHT["THRESHOLD"])


def _copy_match_exact(*, work_id: int, image_id: int, found_by: str) -> CopyMatch:
    """Record a file identical to a work (same checksum): a match at once."""
    signals = _evidence_signals(_NO_EVIDENCE, exact=True)
    return copy_match_record(work_id=work_id, image_id=image_id, score=1.0, signals=signals, found_by=found_by)


def _copy_match_if_likely(
    *,
    candidate: copydetect.Candidate,
    image_id: int,
    found_by: str,
    works: copydetect.CopyIndex,
    query: copydetect.QuerySignature,
) -> CopyMatch | None:
    """Record the candidate as a match when its score reaches the threshold, with the
    geometry the review page draws."""
    if candidate.score < _threshold():
        return None
    return copy_match_record(
        work_id=candidate.work_id,
        image_id=image_id,
        score=candidate.score,
        signals=_evidence_signals(works.with_geometry(query, candidate)),
        found_by=found_by,
    )


def upload_match(*, image_id: int) -> list[CopyMatch]:
    """Check one ready upload against every protected work; record likely copies."""
    from .selectors import copy_index

    image = Image.objects.filter(pk=image_id, status=Image.Status.READY).first()
    if image is None or not ProtectedWork.objects.filter(status=ProtectedWork.Status.READY).exists():
        return []
    matches = [
        _copy_match_exact(work_id=w.pk, image_id=image.pk, found_by="upload")
        for w in ProtectedWork.objects.filter(checksum=image.checksum)
    ]
    index = copy_index.get()
    try:
        with image.file.open("rb") as f:
            decoded = pipeline.decode(f.read()).image
    except (FileNotFoundError, ImageDecodeError):
        return matches
    query = index.works.describe(index.backbone, decoded)
    for candidate in index.works.match(query):
        if match := _copy_match_if_likely(
            candidate=candidate, image_id=image.pk, found_by="upload", works=index.works, query=query
        ):
            matches.append(match)
    return matches


_NO_EVIDENCE = copydetect.Evidence(cnn=1.0, cnn_view="original", hash_distance=0, inliers=-1, mirrored=False)


def protected_work_scan_catalog(*, work_id: int) -> list[CopyMatch]:
    """Check the existing catalog for copies of a newly registered work.

    The stored embeddings of the catalog rank it against the work's views and windows;
    the nearest SCAN_CANDIDATES images (and any with the same checksum) are then
    described and verified in full.
    """
    from .selectors import copy_index

    work = ProtectedWork.objects.filter(pk=work_id, status=ProtectedWork.Status.READY).first()
    if work is None:
        return []
    index = copy_index.get()
    if work.pk not in index.works:
        return []
    signature = index.works.signature(work.pk)
    probes = np.concatenate([signature.globals, signature.regions])
    ids, best = [], []
    rows = Embedding.objects.filter(backbone=index.backbone.name, image__status=Image.Status.READY)
    chunk: list[tuple[int, bytes]] = []
    for row in [*rows.values_list("image_id", "vector").iterator(chunk_size=2000), None]:
        if row is not None:
            chunk.append(row)
        if chunk and (row is None or len(chunk) == 2000):
            ids.append(np.array([r[0] for r in chunk], dtype=np.int64))
            best.append(_best_probe(chunk, probes))
            chunk = []
    matches = [
        _copy_match_exact(work_id=work.pk, image_id=im.pk, found_by="scan") for im in Image.objects.filter(checksum=work.checksum)
    ]
    if ids:
        all_ids, all_best = np.concatenate(ids), np.concatenate(best)
        nearest = all_ids[np.argsort(-all_best, kind="stable")[: settings.COPYRIGHT["SCAN_CANDIDATES"]]]
        single = copydetect.CopyIndex()
        single.add(work.pk, signature)
        for image in Image.objects.filter(pk__in=nearest.tolist()):
            try:
                with image.file.open("rb") as f:
                    decoded = pipeline.decode(f.read()).image
            except (FileNotFoundError, ImageDecodeError):
                continue
            query = single.describe(index.backbone, decoded)
            candidate = single.match(query)[0]
            if match := _copy_match_if_likely(candidate=candidate, image_id=image.pk, found_by="scan", works=single, query=query):
                matches.append(match)
    ProtectedWork.objects.filter(pk=work.pk).update(scanned_at=timezone.now())
    return matches


def _best_probe(rows: list[tuple[int, bytes]], probes: np.ndarray) -> np.ndarray:
    x = np.stack([np.frombuffer(bytes(blob), dtype=np.float32) for _, blob in rows])
    return (x @ probes.T).max(axis=1)


class DecisionRejected(ValueError):
    """A review action that cannot be applied. `code` is stable (pages and the API map it);
    the message is meant for the reviewer."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


# Which actions each status allows: a decision moves a pending match; a decided one is
# only reopened (its own audit entry) or annotated.
_ALLOWED = {
    CopyMatch.Status.PENDING: {MatchDecision.Action.CONFIRM, MatchDecision.Action.DISMISS, MatchDecision.Action.NOTE},
    CopyMatch.Status.CONFIRMED: {MatchDecision.Action.REOPEN, MatchDecision.Action.NOTE},
    CopyMatch.Status.DISMISSED: {MatchDecision.Action.REOPEN, MatchDecision.Action.NOTE},
}
_NEXT_STATUS = {
    MatchDecision.Action.CONFIRM: CopyMatch.Status.CONFIRMED,
    MatchDecision.Action.DISMISS: CopyMatch.Status.DISMISSED,
    MatchDecision.Action.REOPEN: CopyMatch.Status.PENDING,
}
SNAPSHOT_SIDE = 160


def _snapshot_thumbnail(f: object) -> bytes:
    """A small JPEG of a stored picture for the audit trail ('' when it cannot be read).
    Decoded like any upload: within the per-decode memory budget."""
    try:
        with f.open("rb") as stream:  # type: ignore[attr-defined]
            picture = pipeline.decode(stream.read()).image.convert("RGB")
        picture.thumbnail((SNAPSHOT_SIDE, SNAPSHOT_SIDE))
        out = io.BytesIO()
        picture.save(out, format="JPEG", quality=80)
        return out.getvalue()
    except (OSError, ValueError, AttributeError, ImageDecodeError):
        return b""


def _hidden_by_this_match(match: CopyMatch) -> bool:
    """Whether the upload's current hiding came from a confirmation of this match (and no
    other confirmed match hid it too), so that dismissing the match may publish it again."""
    last = match.decisions.exclude(action=MatchDecision.Action.NOTE).order_by("-created_at", "-id").first()
    if last is None or last.action != MatchDecision.Action.REOPEN:
        return False
    hid_here = match.decisions.filter(hid_upload=True).exists()
    hid_elsewhere = MatchDecision.objects.filter(
        match__image_id=match.image_id, match__status=CopyMatch.Status.CONFIRMED, hid_upload=True
    ).exclude(match=match)
    return hid_here and not hid_elsewhere.exists()


def match_decide(
    *,
    match_id: int,
    action: str,
    decided_by: AbstractBaseUser,
    seen_status: str = "",
    note: str = "",
    hide_upload: bool = False,
) -> MatchDecision:
    """Confirm (optionally hiding the upload), dismiss, reopen or annotate a match.

    A state transition taken under a row lock from the status the reviewer saw: when
    someone else decided meanwhile, nothing changes and the reviewer is told. Every call
    is recorded with who, when, why and a snapshot of both pictures.
    """
    note = note.strip()
    if action not in MatchDecision.Action.values:
        raise DecisionRejected(f"Unknown action “{action}”.", code="unknown_action")
    if action in (MatchDecision.Action.NOTE, MatchDecision.Action.REOPEN) and not note:
        verb = "reopening the match" if action == MatchDecision.Action.REOPEN else "saving it"
        raise DecisionRejected(f"Write the note before {verb}.", code="note_required")
    if hide_upload and action != MatchDecision.Action.CONFIRM:
        raise DecisionRejected("Only a confirmed copy can be hidden.", code="hide_needs_confirm")
    with transaction.atomic():
        match = CopyMatch.objects.select_for_update().select_related("work", "image").filter(pk=match_id).first()
        if match is None:
            raise DecisionRejected("This match no longer exists (its work or upload was deleted).", code="gone")
        if seen_status and seen_status != match.status:
            last = match.decisions.exclude(action=MatchDecision.Action.NOTE).select_related("decided_by").last()
            who = f" by {last.decided_by}" if last is not None and last.decided_by is not None else ""
            raise DecisionRejected(
                f"This match was changed while you were looking at it: it is now {match.get_status_display().lower()}{who}. "
                "Nothing was saved; review it again below.",
                code="stale",
            )
        if action not in _ALLOWED[CopyMatch.Status(match.status)]:
            raise DecisionRejected(
                f"A {match.get_status_display().lower()} match cannot be {MatchDecision.Action(action).label.lower()}; reopen it first.",
                code="not_allowed",
            )
        published = False
        if action == MatchDecision.Action.DISMISS and match.image.visibility == Image.Visibility.HIDDEN:
            published = _hidden_by_this_match(match)
        if action in _NEXT_STATUS:
            match.status = _NEXT_STATUS[MatchDecision.Action(action)]
            match.decided_at = timezone.now() if match.status != CopyMatch.Status.PENDING else None
            match.save(update_fields=["status", "decided_at"])
        if hide_upload:
            reason = f"Hidden after copyright review: a copy of “{match.work.title}” ({match.work.rights_holder})."
            images_set_visibility(image_ids=[match.image_id], visibility=str(Image.Visibility.HIDDEN), reason=reason)
        if published:
            images_set_visibility(image_ids=[match.image_id], visibility=str(Image.Visibility.PUBLISHED))
        return MatchDecision.objects.create(
            match=match,
            action=action,
            status_before=seen_status or "",
            note=note,
            hid_upload=hide_upload,
            published_upload=published,
            decided_by=decided_by,
            work_title=match.work.title,
            rights_holder=match.work.rights_holder,
            work_checksum=match.work.checksum,
            image_title=match.image.display_title[:255],
            image_checksum=match.image.checksum,
            score=match.score,
            work_thumbnail=_snapshot_thumbnail(match.work.file),
            image_thumbnail=_snapshot_thumbnail(match.image.thumbnail or match.image.display),
        )


def matches_dismiss(*, match_ids: list[int], decided_by: AbstractBaseUser, note: str = "") -> int:
    """Dismiss several pending matches at once (from the queue); returns how many were
    dismissed. Matches someone else decided meanwhile are left as they are."""
    count = 0
    for match_id in match_ids:
        try:
            match_decide(match_id=match_id, action="dismiss", decided_by=decided_by, seen_status="pending", note=note)
        except DecisionRejected:
            continue
        count += 1
    return count


def protected_work_delete(*, work_id: int) -> bool:
    """Delete a protected work with its signatures, matches and private original. Review
    decisions stay, with their snapshot of what was decided."""
    work = ProtectedWork.objects.filter(pk=work_id).first()
    if work is None:
        return False
    name = work.file.name
    storage = work.file.storage
    with transaction.atomic():
        work.delete()
        if name:
            transaction.on_commit(lambda: storage.delete(name))
    return True


def copyright_group_ensure() -> None:
    """The group of copyright reviewers named by the setting exists (after migrations)."""
    from django.contrib.auth.models import Group

    Group.objects.get_or_create(name=settings.IMAGESEARCH["COPYRIGHT_GROUP"])
