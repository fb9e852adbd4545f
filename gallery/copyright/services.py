"""Copyright monitoring: registering protected works, matching uploads and scanning the
catalog, and the reviewers' decisions with their audit trail."""

from __future__ import annotations

import hashlib
import io
import logging
from functools import partial
from typing import IO

import numpy as np
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.utils import timezone
from PIL import Image as PILImage

from gallery.catalog import pipeline
from gallery.catalog.models import Embedding, Image
from gallery.catalog.services import _EXTENSIONS, images_set_visibility, read_upload
from gallery.copyright.models import CopyMatch, ImageKeypoints, MatchDecision, ProtectedWork, WorkSignature
from gallery.errors import DecisionRejected, ImageRejected, WorkRejected
from gallery.tasking import task_named
from gallery.vector_field import vector_from
from gallery.vision import copydetect, localfeatures
from gallery.vision.backbones import Backbone, network_of
from gallery.vision.preprocess import ImageDecodeError

log = logging.getLogger(__name__)


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
        raise WorkRejected("A protected work needs a title and a rights holder.", code="missing_fields")
    try:
        data = read_upload(file)
    except ImageRejected as exc:
        raise WorkRejected(str(exc), code=getattr(exc, "code", "")) from None
    checksum = hashlib.sha256(data).hexdigest()
    existing = ProtectedWork.objects.filter(checksum=checksum).first()
    if existing is not None:
        raise WorkRejected(f"This image is already registered as “{existing.title}”.", code="already_registered")
    try:
        decoded = pipeline.decode(data)
    except ImageDecodeError as exc:
        raise WorkRejected(str(exc), code=getattr(exc, "code", "")) from None
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
        raise WorkRejected("This image is already registered.", code="already_registered") from None
    return work


def protected_work_queue(*, work_id: int) -> None:
    describe_protected_work = task_named("gallery.describe_protected_work")

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
    backbone = pipeline.copy_check_backbone()
    row = WorkSignature.objects.filter(work=work, backbone=backbone.network, version=copydetect.DESCRIPTOR_VERSION).first()
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
            work=work, backbone=backbone.network, version=copydetect.DESCRIPTOR_VERSION, defaults={"data": signature.to_bytes()}
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


def image_keys_store(*, image_id: int, picture: PILImage.Image) -> bool:
    """Store a catalog image's keypoints for later scans (once; safe to run twice).
    Returns whether they were stored now."""
    if ImageKeypoints.objects.filter(image_id=image_id, version=localfeatures.VERSION).exists():
        return False
    keys = localfeatures.describe_image(picture)
    try:
        with transaction.atomic():
            _, created = ImageKeypoints.objects.update_or_create(
                image_id=image_id,
                defaults={"version": localfeatures.VERSION, "count": len(keys.keypoints), "data": keys.to_bytes()},
            )
    except IntegrityError:  # the image was deleted meanwhile, or another worker stored them
        return False
    return created


def upload_match(*, image_id: int) -> list[CopyMatch]:
    """Keep a ready upload's keypoints for later scans, then check it against every
    protected work; record likely copies."""
    from .selectors import copy_index

    image = Image.objects.filter(pk=image_id, status=Image.Status.READY).first()
    if image is None:
        return []
    try:
        with image.file.open("rb") as f:
            decoded = pipeline.decode(f.read()).image
    except (FileNotFoundError, ImageDecodeError):
        decoded = None
    if decoded is not None:
        image_keys_store(image_id=image.pk, picture=decoded)
    if not ProtectedWork.objects.filter(status=ProtectedWork.Status.READY).exists():
        return []
    matches = [
        _copy_match_exact(work_id=w.pk, image_id=image.pk, found_by="upload")
        for w in ProtectedWork.objects.filter(checksum=image.checksum)
    ]
    if decoded is None:
        return matches
    index = copy_index.get()
    query = index.works.describe(index.backbone, decoded)
    candidates = index.works.match(query)
    if candidates:  # the best one, looked at again on the part showing the work if it falls short
        best = candidates[0]
        candidates[0] = localfeatures.look_closer(
            index.works, index.backbone, decoded, best, threshold=_threshold(), work=lambda: _work_pixels(best.work_id)
        )
    for candidate in candidates:
        if match := _copy_match_if_likely(
            candidate=candidate, image_id=image.pk, found_by="upload", works=index.works, query=query
        ):
            matches.append(match)
    return matches


_NO_EVIDENCE = copydetect.Evidence(cnn=1.0, cnn_view="original", hash_distance=0, inliers=-1, mirrored=False)


def protected_work_scan_catalog(*, work_id: int) -> list[CopyMatch]:
    """Check the existing catalog for copies of a newly registered work.

    Candidates: the catalog images most of the work's keypoints (also of the work shrunk,
    as a small paste shows it) vote for (crops, small pastes, collages), and the nearest
    by stored embedding to the work's views and windows. Each is screened on its stored
    keypoints and hash (no decoding); those that pass, the few nearest by embedding and
    the image the votes single out (if any) are described and verified in full, as an
    upload is.
    """
    from .selectors import catalog_keypoints, copy_index, image_keys

    work = ProtectedWork.objects.filter(pk=work_id, status=ProtectedWork.Status.READY).first()
    if work is None:
        return []
    index = copy_index.get()
    if work.pk not in index.works:
        return []
    signature = index.works.signature(work.pk)
    conf = settings.COPYRIGHT
    pixels = _work_for_scan(work)
    small = localfeatures.small_work_keypoints(pixels, signature)
    voted, votes = catalog_keypoints.get().vote(signature.keypoints, signature.mirrored_keypoints, *(small or ()))
    nearest = _nearest_by_embedding(_stored_vectors_name(index.backbone), signature)
    always = set(nearest[: conf["SCAN_ALWAYS_VERIFIED"]])
    if (most_voted := localfeatures.dominant(voted, votes)) is not None:
        always.add(most_voted)
    candidates = list(dict.fromkeys([*voted[: conf["SCAN_VOTED"]].tolist(), *nearest]))
    matches = [
        _copy_match_exact(work_id=work.pk, image_id=im.pk, found_by="scan") for im in Image.objects.filter(checksum=work.checksum)
    ]
    stored = image_keys(image_ids=candidates)
    checks = []
    for image in Image.objects.filter(pk__in=candidates, status=Image.Status.READY).order_by("pk"):
        keys, screened = stored.get(image.pk), None
        if keys is not None:
            worth, screened = localfeatures.screen(keys, signature, min_inliers=conf["SCAN_SCREEN_INLIERS"], small=small)
            if not worth and image.pk not in always:
                continue
        checks.append(
            localfeatures.FullCheck(
                image.pk, partial(_decoded_or_none, image), screened, None if keys is None else keys.keypoints
            )
        )
    single = copydetect.CopyIndex()
    single.add(work.pk, signature)
    checked = localfeatures.check_all_in_full(
        work.pk,
        signature,
        index.backbone,
        checks,
        threshold=_threshold(),
        threads=conf["SCAN_THREADS"],
        work=pixels,
    )
    for image_id, candidate, query in checked:
        if match := _copy_match_if_likely(candidate=candidate, image_id=image_id, found_by="scan", works=single, query=query):
            matches.append(match)
    ProtectedWork.objects.filter(pk=work.pk).update(scanned_at=timezone.now())
    return matches


def _decoded_or_none(image: Image | ProtectedWork, *, enough: tuple[float, float] | None = None) -> PILImage.Image | None:
    """A catalog image's or a work's original, decoded (`enough` as for `pipeline.decode`);
    None when its file is gone or unreadable."""
    try:
        with image.file.open("rb") as f:
            return pipeline.decode(f.read(), enough=enough).image
    except (FileNotFoundError, ImageDecodeError):
        return None


def _work_pixels(work_id: int) -> PILImage.Image | None:
    """A registered work's original, decoded as a scan reads it; None when it is gone."""
    work = ProtectedWork.objects.filter(pk=work_id).first()
    return None if work is None else _work_for_scan(work)


def _work_for_scan(work: ProtectedWork) -> PILImage.Image | None:
    """A work's original, decoded no larger than its keypoints are found at (a scan
    shrinks it from there); None when its file is gone or unreadable."""
    return _decoded_or_none(work, enough=(copydetect.SIFT_LONG_SIDE, 0))


def _stored_vectors_name(backbone: Backbone) -> str:
    """The name the catalog's vectors of this network are stored under: the catalog's own
    (its pooling may be another than the settings'), else the configured one."""
    searched = pipeline.catalog_state().backbone
    return searched if network_of(searched) == backbone.network else backbone.name


def _nearest_by_embedding(backbone: str, signature: copydetect.WorkSignature) -> list[int]:
    """The SCAN_CANDIDATES catalog images whose stored embeddings come nearest to any of
    the work's views and windows, nearest first."""
    probes = np.concatenate([signature.globals, signature.regions])
    ids, best = [], []
    rows = Embedding.objects.filter(backbone=backbone, image__status=Image.Status.READY)
    chunk: list[tuple[int, bytes]] = []
    for row in [*rows.values_list("image_id", "vector").iterator(chunk_size=2000), None]:
        if row is not None:
            chunk.append(row)
        if chunk and (row is None or len(chunk) == 2000):
            ids.append(np.array([r[0] for r in chunk], dtype=np.int64))
            best.append(_best_probe(chunk, probes))
            chunk = []
    if not ids:
        return []
    all_ids, all_best = np.concatenate(ids), np.concatenate(best)
    return all_ids[np.argsort(-all_best, kind="stable")[: settings.COPYRIGHT["SCAN_CANDIDATES"]]].tolist()


def _best_probe(rows: list[tuple[int, bytes]], probes: np.ndarray) -> np.ndarray:
    x = np.stack([vector_from(blob) for _, blob in rows])
    return (x @ probes.T).max(axis=1)


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
