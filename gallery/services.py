"""Writes to the catalog: storing uploads, embedding them, fitting PCA reductions."""

from __future__ import annotations

import hashlib
import io
import logging
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import IO

import numpy as np
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q
from django.utils import timezone
from PIL import Image as PILImage

from . import pipeline
from .models import Embedding, Image, ReducedVector, Reduction
from .vision.preprocess import ImageDecodeError
from .vision.reduction import FittedPCA, fit_pca

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 400
_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}


class ImageRejected(ValueError):
    """An upload that cannot enter the catalog; the message is meant for the user."""


class DuplicateImage(ImageRejected):
    def __init__(self, existing: Image):
        super().__init__(f"This photo is already in the catalog as “{existing.display_title}”.")
        self.existing = existing


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
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), PILImage.Resampling.LANCZOS)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=85, optimize=True)
    return out.getvalue()


def image_create(
    *, file: IO[bytes], uploaded_by: AbstractBaseUser | None = None, title: str = "", original_name: str = "", queue: bool = True
) -> Image:
    """Validate and store an upload as a pending Image; its embedding is queued on commit.

    Raises ImageRejected (or DuplicateImage) with a message for the user; nothing is
    stored in that case.
    """
    data = read_upload(file)
    checksum = hashlib.sha256(data).hexdigest()
    existing = Image.objects.filter(checksum=checksum).first()
    if existing is not None:
        raise DuplicateImage(existing)
    try:
        decoded = pipeline.decode(data)
    except ImageDecodeError as exc:
        raise ImageRejected(str(exc)) from None
    thumb = _thumbnail_bytes(decoded.image)
    name = (original_name or getattr(file, "name", "") or "")[:255]
    image = Image(
        title=title[:200],
        original_name=name,
        checksum=checksum,
        size=len(data),
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
        uploaded_by=uploaded_by if uploaded_by is not None and uploaded_by.is_authenticated else None,
    )
    stem = f"{checksum[:2]}/{checksum}"
    try:
        with transaction.atomic():
            image.file.save(f"{stem}.{_EXTENSIONS.get(decoded.format, 'img')}", ContentFile(data), save=False)
            image.thumbnail.save(f"{stem}.jpg", ContentFile(thumb), save=False)
            image.save()
            if queue:
                transaction.on_commit(lambda: image_queue_embedding(image_id=image.pk))
    except IntegrityError:
        _delete_files(image)
        existing = Image.objects.filter(checksum=checksum).first()
        if existing is None:
            raise
        raise DuplicateImage(existing) from None
    except BaseException:
        _delete_files(image)
        raise
    return image


def _delete_files(image: Image) -> None:
    for f in (image.file, image.thumbnail):
        if f and f.name:
            f.storage.delete(f.name)


def image_queue_embedding(*, image_id: int) -> bool:
    """Queue the embedding task; when the broker is down the image stays pending and the
    worker's periodic sweep picks it up later. Returns whether it was queued."""
    from .tasks import embed_image

    try:
        embed_image.apply_async(args=[image_id], retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2})
        return True
    except Exception as exc:  # broker unreachable
        log.warning("could not queue image %s (%s); the sweep will retry", image_id, exc)
        return False


def images_set_visibility(*, image_ids: list[int], visibility: str) -> int:
    """Publish or hide images; returns how many changed. Hidden images leave the public
    gallery and every search result."""
    if visibility not in Image.Visibility.values:
        raise ValueError(f"unknown visibility {visibility!r}")
    return Image.objects.filter(pk__in=image_ids).exclude(visibility=visibility).update(visibility=visibility)


# ---------------------------------------------------------------- embedding


@dataclass
class BatchOutcome:
    state: str  # claimed | done | busy | missing
    ready: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def _stale_before() -> timezone.datetime:
    return timezone.now() - timedelta(seconds=settings.IMAGESEARCH["STALE_PROCESSING_SECONDS"])


def worker_name() -> str:
    return f"{socket.gethostname()}"


def images_claim(*, image_id: int, batch_size: int, worker: str) -> tuple[str, list[Image]]:
    """Claim the image and up to batch_size-1 other waiting images for one forward pass."""
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
            .filter(waiting)
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


def images_embed_batch(*, image_id: int, worker: str | None = None) -> BatchOutcome:
    """Embed `image_id` together with other waiting images in one batch.

    Safe to run twice: a finished image is skipped, and vectors are upserted on the
    (image, backbone) unique constraint.
    """
    conf = settings.IMAGESEARCH
    state, images = images_claim(image_id=image_id, batch_size=conf["BATCH_SIZE"], worker=worker or worker_name())
    outcome = BatchOutcome(state=state)
    if state != "claimed":
        return outcome
    pending_ids = [im.pk for im in images]
    try:
        decoded: list[tuple[Image, PILImage.Image]] = []
        for image in images:
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
            backbone = pipeline.current_backbone()
            vectors = pipeline.embed_images([im for _, im in decoded])
            for (image, _), vector in zip(decoded, vectors, strict=True):
                embedding_store(image=image, backbone=backbone.name, vector=vector)
                outcome.ready.append(image.pk)
                pending_ids.remove(image.pk)
    except BaseException:
        images_release(image_ids=pending_ids)
        raise
    return outcome


def embedding_store(*, image: Image, backbone: str, vector: np.ndarray) -> Embedding:
    """Store the embedding, project it with the active reduction, mark the image ready."""
    vector = np.asarray(vector, dtype=np.float32)
    with transaction.atomic():
        embedding, _ = Embedding.objects.update_or_create(
            image=image, backbone=backbone, defaults={"dim": int(vector.shape[0]), "vector": vector.tobytes()}
        )
        reduction = Reduction.objects.select_for_update().filter(backbone=backbone, is_active=True).first()
        if reduction is not None:
            projected = reduction_load(reduction).transform(vector[None])[0]
            ReducedVector.objects.update_or_create(image=image, reduction=reduction, defaults={"vector": projected.tobytes()})
        Image.objects.filter(pk=image.pk).update(status=Image.Status.READY, status_reason="", claimed_at=None, claimed_by="")
    return embedding


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


def reduction_needed(*, backbone: str) -> bool:
    """True once the catalog can support a PCA fit, and again whenever it has doubled."""
    conf = settings.IMAGESEARCH
    count = Embedding.objects.filter(backbone=backbone, image__status=Image.Status.READY).count()
    if count < max(conf["PCA_MIN_IMAGES"], 2):
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
    if len(ids) < 2:
        return None
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


# ---------------------------------------------------------------- copyright monitoring
# Imported here rather than at the top so the section stays self-contained.
from .models import COPYRIGHT_STAFF_GROUP, CopyMatch, MatchDecision, ProtectedWork, WorkSignature  # noqa: E402
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


def _evidence_signals(evidence: copydetect.Evidence, *, exact: bool = False) -> dict[str, object]:
    return {
        "exact": exact,
        "cnn": round(evidence.cnn, 4),
        "cnn_view": evidence.cnn_view,
        "hash_distance": evidence.hash_distance,
        "inliers": evidence.inliers,
        "mirrored": evidence.mirrored,
        "fired": ["identical file (same checksum)"] if exact else evidence.fired(),
    }


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


def upload_match(*, image_id: int) -> list[CopyMatch]:
    """Check one ready upload against every protected work; record likely copies."""
    from .selectors import copy_index

    image = Image.objects.filter(pk=image_id, status=Image.Status.READY).first()
    if image is None or not ProtectedWork.objects.filter(status=ProtectedWork.Status.READY).exists():
        return []
    matches = [
        copy_match_record(
            work_id=w.pk, image_id=image.pk, score=1.0, signals=_evidence_signals(_NO_EVIDENCE, exact=True), found_by="upload"
        )
        for w in ProtectedWork.objects.filter(checksum=image.checksum)
    ]
    index = copy_index.get()
    try:
        with image.file.open("rb") as f:
            decoded = pipeline.decode(f.read()).image
    except (FileNotFoundError, ImageDecodeError):
        return matches
    query = copydetect.describe_query(index.backbone, decoded)
    for candidate in index.works.match(query):
        if candidate.score >= _threshold():
            matches.append(
                copy_match_record(
                    work_id=candidate.work_id,
                    image_id=image.pk,
                    score=candidate.score,
                    signals=_evidence_signals(candidate.evidence),
                    found_by="upload",
                )
            )
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
        copy_match_record(
            work_id=work.pk, image_id=im.pk, score=1.0, signals=_evidence_signals(_NO_EVIDENCE, exact=True), found_by="scan"
        )
        for im in Image.objects.filter(checksum=work.checksum)
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
            candidate = single.match(copydetect.describe_query(index.backbone, decoded))[0]
            if candidate.score >= _threshold():
                matches.append(
                    copy_match_record(
                        work_id=work.pk,
                        image_id=image.pk,
                        score=candidate.score,
                        signals=_evidence_signals(candidate.evidence),
                        found_by="scan",
                    )
                )
    ProtectedWork.objects.filter(pk=work.pk).update(scanned_at=timezone.now())
    return matches


def _best_probe(rows: list[tuple[int, bytes]], probes: np.ndarray) -> np.ndarray:
    x = np.stack([np.frombuffer(bytes(blob), dtype=np.float32) for _, blob in rows])
    return (x @ probes.T).max(axis=1)


class DecisionRejected(ValueError):
    """A review action that cannot be applied; the message is meant for the reviewer."""


def match_decide(
    *, match: CopyMatch, action: str, decided_by: AbstractBaseUser, note: str = "", hide_upload: bool = False
) -> MatchDecision:
    """Confirm (optionally hiding the upload), dismiss, or annotate a match; every call is
    recorded with who, when and why."""
    note = note.strip()
    if action not in MatchDecision.Action.values:
        raise DecisionRejected(f"Unknown action “{action}”.")
    if action == MatchDecision.Action.NOTE and not note:
        raise DecisionRejected("Write the note before saving it.")
    if hide_upload and action != MatchDecision.Action.CONFIRM:
        raise DecisionRejected("Only a confirmed copy can be hidden.")
    with transaction.atomic():
        match = CopyMatch.objects.select_for_update().get(pk=match.pk)
        if action == MatchDecision.Action.CONFIRM:
            match.status = CopyMatch.Status.CONFIRMED
        elif action == MatchDecision.Action.DISMISS:
            match.status = CopyMatch.Status.DISMISSED
        if action != MatchDecision.Action.NOTE:
            match.decided_at = timezone.now()
            match.save(update_fields=["status", "decided_at"])
        if hide_upload:
            images_set_visibility(image_ids=[match.image_id], visibility="hidden")
        return MatchDecision.objects.create(match=match, action=action, note=note, hid_upload=hide_upload, decided_by=decided_by)


def copyright_staff_group_ensure() -> None:
    from django.contrib.auth.models import Group

    Group.objects.get_or_create(name=COPYRIGHT_STAFF_GROUP)
