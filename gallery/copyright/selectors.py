"""Reads for copyright monitoring: the matcher's index of works, the review queue and
its navigation, the audit trail."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db.models import Q, QuerySet

from gallery.catalog import pipeline
from gallery.copyright.models import CopyMatch, ImageKeypoints, MatchDecision, ProtectedWork, WorkSignature
from gallery.vision import copydetect, localfeatures
from gallery.vision.backbones import Backbone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedCopyIndex:
    backbone: Backbone
    works: copydetect.CopyIndex


def _stored_signature(backbone: str, work_id: int) -> copydetect.WorkSignature:
    data = WorkSignature.objects.filter(work_id=work_id, backbone=backbone, version=copydetect.DESCRIPTOR_VERSION).values_list(
        "data", flat=True
    )[:1]
    return copydetect.WorkSignature.from_bytes(bytes(data[0]))


class _CopyIndexCache:
    """The protected works' signatures, loaded once per process and appended to as works
    are registered (new rows by primary key); a removed work triggers a reload.

    The searchable parts are saved under COPYRIGHT["INDEX_DIR"] (one folder per backbone
    and descriptor version, with the last row it holds): a new process maps them and
    reads only the rows added since. A candidate's full signature is read from the
    database when it is verified.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: str | None = None
        self._index = copydetect.CopyIndex()
        self._last_row = 0
        self._saved_works = 0

    def _folder(self, backbone: str) -> Path | None:
        root = settings.COPYRIGHT.get("INDEX_DIR") or ""
        return Path(root) / f"{backbone}-v{copydetect.DESCRIPTOR_VERSION}" if root else None

    def _fresh(self, backbone: str, rows: QuerySet[WorkSignature]) -> None:
        self._index = copydetect.CopyIndex(functools.partial(_stored_signature, backbone))
        self._last_row, self._saved_works = 0, 0
        folder = self._folder(backbone)
        if folder is None or not (folder / "last_row").exists():
            return
        try:
            last_row = int((folder / "last_row").read_text())
            index = copydetect.CopyIndex.load(folder, functools.partial(_stored_signature, backbone))
        except (OSError, ValueError) as exc:
            log.warning("could not load the saved copy index (%s); rebuilding it", exc)
            return
        # Saved from this database? Every work it holds is still registered, up to its last row.
        registered = set(rows.filter(pk__lte=last_row).values_list("work_id", flat=True))
        if set(index.ids) != registered:
            log.info("the saved copy index is out of date; rebuilding it")
            return
        self._index, self._last_row, self._saved_works = index, last_row, len(index)

    def _save(self, backbone: str) -> None:
        folder = self._folder(backbone)
        if folder is None or len(self._index) - self._saved_works < settings.COPYRIGHT["INDEX_SAVE_EVERY"]:
            return
        try:
            self._index.save(folder)
            (folder / "last_row").write_text(str(self._last_row))
        except OSError as exc:
            log.warning("could not save the copy index (%s)", exc)
            return
        self._saved_works = len(self._index)

    def get(self) -> LoadedCopyIndex:
        backbone = pipeline.copy_check_backbone()
        rows = WorkSignature.objects.filter(
            backbone=backbone.network, version=copydetect.DESCRIPTOR_VERSION, work__status=ProtectedWork.Status.READY
        )
        with self._lock:
            if self._key != backbone.network:
                self._key = backbone.network
                self._fresh(backbone.network, rows)
            self._add_since_last_row(rows)
            if len(self._index) != rows.count():
                self._index = copydetect.CopyIndex(functools.partial(_stored_signature, backbone.network))
                self._last_row, self._saved_works = 0, 0
                self._add_since_last_row(rows)
            self._save(backbone.network)
            return LoadedCopyIndex(backbone, self._index)

    def _add_since_last_row(self, rows: QuerySet[WorkSignature]) -> None:
        """Add the rows after the last one held, in order, read in chunks."""
        newer = rows.filter(pk__gt=self._last_row).order_by("pk").values_list("pk", "work_id", "data")
        for pk, work_id, data in newer.iterator(chunk_size=500):
            self._index.add(work_id, copydetect.WorkSignature.from_bytes(bytes(data)))
            self._last_row = pk

    def clear(self) -> None:
        with self._lock:
            self._key, self._index, self._last_row, self._saved_works = None, copydetect.CopyIndex(), 0, 0


copy_index = _CopyIndexCache()


def _stored_keypoints(up_to: int) -> Iterator[tuple[int, copydetect.Keypoints]]:
    """The stored keypoints of the rows up to this primary key."""
    rows = ImageKeypoints.objects.filter(version=localfeatures.VERSION, pk__lte=up_to).order_by("pk")
    rows = rows.values_list("image_id", "data")
    for image_id, data in rows.iterator(chunk_size=500):
        yield image_id, localfeatures.ImageKeys.from_bytes(bytes(data)).keypoints


def image_keys(*, image_ids: list[int]) -> dict[int, localfeatures.ImageKeys]:
    """The stored keypoints and hashes of these catalog images (those that have them)."""
    rows = ImageKeypoints.objects.filter(image_id__in=image_ids, version=localfeatures.VERSION).values_list("image_id", "data")
    return {image_id: localfeatures.ImageKeys.from_bytes(bytes(data)) for image_id, data in rows}


class _CatalogKeypointCache:
    """The catalog's keypoint index, loaded once per process (the worker that scans for
    old copies) and appended to with the rows stored since, by primary key.

    Saved under COPYRIGHT["INDEX_DIR"] with the last row it holds, so a new process reads
    the file and only the rows added since; saved again every INDEX_SAVE_EVERY images.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._index: localfeatures.CatalogKeypointIndex | None = None
        self._last_row = 0
        self._unsaved = 0  # rows added since the last save (or the load)

    def _folder(self) -> Path | None:
        root = settings.COPYRIGHT.get("INDEX_DIR") or ""
        return Path(root) / f"catalog-keypoints-v{localfeatures.VERSION}" if root else None

    def _load(self) -> None:
        self._index, self._last_row, self._unsaved = localfeatures.CatalogKeypointIndex(self._added), 0, 0
        folder = self._folder()
        if folder is None or not (folder / "meta.json").exists():
            return
        try:
            index, last_row = localfeatures.CatalogKeypointIndex.load(folder, self._added)
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("could not load the saved keypoint index (%s); rebuilding it", exc)
            return
        newest = ImageKeypoints.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        if newest < last_row:
            log.info("the saved keypoint index is from another catalog; rebuilding it")
            return
        self._index, self._last_row = index, last_row

    def _added(self) -> Iterator[tuple[int, copydetect.Keypoints]]:
        """What the index holds: the stored rows up to the last one added."""
        return _stored_keypoints(self._last_row)

    def get(self) -> localfeatures.CatalogKeypointIndex:
        with self._lock:
            if self._index is None:
                self._load()
            assert self._index is not None
            rows = ImageKeypoints.objects.filter(version=localfeatures.VERSION).order_by("pk")
            while batch := list(rows.filter(pk__gt=self._last_row).values_list("pk", "image_id", "data")[:2000]):
                self._index.add([(i, localfeatures.ImageKeys.from_bytes(bytes(d)).keypoints) for _, i, d in batch])
                self._last_row = batch[-1][0]
                self._unsaved += len(batch)
            self._save()
            return self._index

    def _save(self) -> None:
        folder = self._folder()
        assert self._index is not None
        if folder is None or not self._index.trained:
            return  # small: rebuilt from the stored rows in a moment
        if self._unsaved < settings.COPYRIGHT["INDEX_SAVE_EVERY"]:
            return
        try:
            self._index.save(folder, last_row=self._last_row)
        except OSError as exc:
            log.warning("could not save the keypoint index (%s)", exc)
            return
        self._unsaved = 0

    def clear(self) -> None:
        with self._lock:
            self._index, self._last_row, self._unsaved = None, 0, 0


catalog_keypoints = _CatalogKeypointCache()


# Each queue order is a keyset: (field, descending) pairs ending in the primary key.
MATCH_ORDERS: dict[str, tuple[tuple[str, bool], ...]] = {
    "newest": (("created_at", True), ("id", True)),
    "score": (("score", True), ("created_at", True), ("id", True)),
}


def _ordering(order: str) -> list[str]:
    return [("-" if desc else "") + name for name, desc in MATCH_ORDERS.get(order, MATCH_ORDERS["newest"])]


def copy_matches(*, status: str = "", rights_holder: str = "", order: str = "newest") -> QuerySet[CopyMatch]:
    """The review queue: filtered by status and rights holder, newest or highest score first."""
    rows = CopyMatch.objects.select_related("work", "image")
    if status:
        rows = rows.filter(status=status)
    if rights_holder:
        rows = rows.filter(work__rights_holder=rights_holder)
    return rows.order_by(*_ordering(order))


@dataclass(frozen=True)
class QueueNeighbours:
    previous: int | None
    next: int | None
    pending: int


def pending_neighbours(*, match: CopyMatch, rights_holder: str = "", order: str = "newest") -> QueueNeighbours:
    """The pending matches just before and after `match` in the queue's order and filter
    (whatever the status of `match` itself), and how many are pending in all."""
    keys = MATCH_ORDERS.get(order, MATCH_ORDERS["newest"])
    pending = copy_matches(status=str(CopyMatch.Status.PENDING), rights_holder=rights_holder, order=order).exclude(pk=match.pk)

    def beyond(after: bool) -> Q:
        # Rows after `match` in the order (or before it): a lexicographic keyset comparison.
        condition = Q(pk__in=[])
        for i, (name, desc) in enumerate(keys):
            lookup = "lt" if desc == after else "gt"
            step = Q(**{f"{name}__{lookup}": getattr(match, name)})
            for earlier, _ in keys[:i]:
                step &= Q(**{earlier: getattr(match, earlier)})
            condition |= step
        return condition

    following = pending.filter(beyond(True)).values_list("pk", flat=True).first()
    reverse = ["-" + f if not f.startswith("-") else f[1:] for f in _ordering(order)]
    preceding = pending.filter(beyond(False)).order_by(*reverse).values_list("pk", flat=True).first()
    total = copy_matches(status=str(CopyMatch.Status.PENDING), rights_holder=rights_holder).count()
    return QueueNeighbours(previous=preceding, next=following, pending=total)


def match_history(*, match: CopyMatch) -> QuerySet[MatchDecision]:
    return match.decisions.select_related("decided_by").order_by("created_at", "id")


def decisions_audit() -> QuerySet[MatchDecision]:
    """Every review decision ever taken, newest first, including those whose match was
    deleted with its work or upload (they keep a snapshot)."""
    return (
        MatchDecision.objects.select_related("decided_by", "match")
        .defer("work_thumbnail", "image_thumbnail")
        .order_by("-created_at", "-id")
    )


def rights_holders() -> list[str]:
    return list(ProtectedWork.objects.order_by("rights_holder").values_list("rights_holder", flat=True).distinct())


def protected_works() -> QuerySet[ProtectedWork]:
    return ProtectedWork.objects.select_related("registered_by").order_by("-created_at", "-id")
