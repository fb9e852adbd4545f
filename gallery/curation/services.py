"""Curation: titles and tags, bulk operations, catalog jobs (re-embed with another
backbone, refit PCA, near-duplicates) with their progress."""

from __future__ import annotations

import logging

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from PIL import Image as PILImage

from gallery.catalog import pipeline, tagcache
from gallery.catalog.models import LANE_BULK, Embedding, Image, Tag
from gallery.catalog.services import (
    embedding_add,
    image_fail,
    image_queue_embedding,
    images_delete,
    images_set_visibility,
    labels_store,
)
from gallery.curation.models import CatalogJob, DuplicateGroup
from gallery.errors import CurationError
from gallery.search import spacememo
from gallery.search.models import CatalogState, ReducedVector, Reduction
from gallery.search.services import _embedding_matrix, _project_into, pca_images_needed, reduction_fit, reduction_load
from gallery.tasking import task_named
from gallery.vector_field import vector_from
from gallery.vision.backbones import BACKBONES, BackboneUnavailable, backbone_availability
from gallery.vision.neardup import confirm_pairs, group_pairs, similar_pairs
from gallery.vision.preprocess import ImageDecodeError

log = logging.getLogger(__name__)


def tags_parse(*, text: str) -> list[str]:
    """Comma- or semicolon-separated tag names, trimmed, lower-cased, without repeats."""
    names: list[str] = []
    for part in text.replace(";", ",").split(","):
        name = " ".join(part.split()).lower()
        if len(name) > 64:
            raise CurationError(f"The tag “{name[:20]}…” is longer than 64 characters.", code="invalid_tags")
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
        raise CurationError("A title has at most 200 characters.", code="invalid_title")
    with transaction.atomic():
        Image.objects.filter(pk=image.pk).update(title=title.strip())
        image_set_tags(image=image, names=tags)
    image.refresh_from_db()
    return image


def images_add_tags(*, image_ids: list[int], names: list[str]) -> int:
    """Add the tags to each image (created when new); returns how many images gained one."""
    if not names:
        raise CurationError("Type at least one tag.", code="invalid_tags")
    with transaction.atomic():
        tags = [Tag.objects.get_or_create(name=name)[0] for name in names]
        links = Tag.images.through
        have = set(links.objects.filter(image_id__in=image_ids, tag__in=tags).values_list("image_id", "tag_id"))
        ids = list(Image.objects.filter(pk__in=image_ids).values_list("pk", flat=True))
        new = [links(image_id=pk, tag_id=tag.pk) for pk in ids for tag in tags if (pk, tag.pk) not in have]
        links.objects.bulk_create(new, ignore_conflicts=True)  # link rows: no signal
        if new:
            tagcache.changed()
    return len({link.image_id for link in new})


def images_promote_labels(*, image_ids: list[int], min_confidence: float) -> int:
    """Tag each image with the names of its labels at least `min_confidence` sure (for the
    catalog's backbone); returns how many images got a new tag."""
    from gallery.catalog.models import ImageLabel
    from gallery.vision.lexicon import lexicon

    names = lexicon().classes
    backbone = pipeline.catalog_state().backbone
    wanted: dict[int, set[str]] = {}
    rows = ImageLabel.objects.filter(image_id__in=image_ids, backbone=backbone, confidence__gte=min_confidence)
    for image_id, index in rows.values_list("image_id", "class_index"):
        wanted.setdefault(image_id, set()).add(names[index].name.lower()[:64])
    changed = 0
    with transaction.atomic():
        tags = {name: Tag.objects.get_or_create(name=name)[0] for name in set().union(*wanted.values())} if wanted else {}
        for image in Image.objects.filter(pk__in=list(wanted)).prefetch_related("tags"):
            have = {t.name for t in image.tags.all()}
            new = [tags[n] for n in sorted(wanted[image.pk] - have)]
            if new:
                image.tags.add(*new)
                changed += 1
    return changed


def images_remove_tags(*, image_ids: list[int], names: list[str]) -> int:
    """Remove the tags from each image; returns how many images lost one."""
    if not names:
        raise CurationError("Type at least one tag.", code="invalid_tags")
    links = Tag.images.through
    with transaction.atomic():
        found = links.objects.filter(image_id__in=image_ids, tag__name__in=names)
        changed = len(set(found.values_list("image_id", flat=True)))
        found.delete()  # link rows: no signal, so the tags in use are renewed here
        if changed:
            tagcache.changed()
    return changed


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


def catalog_job_start(*, kind: str, backbone: str = "", queue: bool = True) -> CatalogJob:
    """Create (or return the unfinished) job of this kind and queue it on commit.

    A re-embed is checked before anything changes: the backbone must exist, load on
    this machine and differ from the catalog's; one migration runs at a time.
    """
    if kind not in CatalogJob.Kind.values:
        raise CurationError(f"unknown job {kind!r}", code="unknown_job")
    open_jobs = CatalogJob.objects.filter(kind=kind, status__in=[CatalogJob.Status.QUEUED, CatalogJob.Status.RUNNING])
    if kind == CatalogJob.Kind.REFIT:
        _refit_check(backbone=pipeline.catalog_state().backbone)
    if kind == CatalogJob.Kind.LABELS:
        _labels_check()
    if kind == CatalogJob.Kind.REEMBED:
        if backbone not in BACKBONES:
            raise CurationError(
                f"unknown backbone {backbone[:40]!r}; choose one of {', '.join(BACKBONES)}", code="unknown_backbone"
            )
        # The chosen network with the configured pooling: with a new exponent, a re-embed
        # to the catalog's own network is a migration too.
        backbone = pipeline.configured_name(backbone)
        _backbone_check(backbone)
        state = pipeline.catalog_state()
        other = open_jobs.exclude(backbone=backbone).first()
        if other is not None:
            raise CurationError(f"A migration to {other.backbone} is in progress (job {other.pk}).", code="migration_running")
        if state.backbone == backbone and not open_jobs.exists():
            raise CurationError(f"The catalog already uses {backbone}.", code="already_in_use")
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
        raise CurationError(f"{name} cannot be used on this machine. {found.reason} {found.install}", code="backbone_unavailable")
    try:
        pipeline.backbone_named(name)
    except BackboneUnavailable:
        log.warning("backbone %s could not be loaded", name, exc_info=True)
        raise CurationError(
            f"{name} cannot be used on this machine: its weights could not be loaded. {found.install}",
            code="backbone_unavailable",
        ) from None


def _refit_check(*, backbone: str) -> int:
    """Refuse a refit the catalog is too small for (it would fit fewer dimensions than
    configured); returns how many images the fit will use."""
    count = Embedding.objects.filter(backbone=backbone, image__status=Image.Status.READY).count()
    needed = pca_images_needed()
    if count < needed:
        raise CurationError(
            f"Refitting PCA needs at least {needed} ready images; the catalog has {count}. "
            f"Search uses the raw {backbone} embeddings until then.",
            code="too_few_images",
        )
    return count


def catalog_job_queue(*, job_id: int) -> None:
    run_catalog_job = task_named("gallery.run_catalog_job")

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
        elif job.kind == CatalogJob.Kind.LABELS:
            message = _labels(job, batch_size=batch_size or settings.IMAGESEARCH["BATCH_SIZE"])
        elif job.kind == CatalogJob.Kind.KEYPOINTS:
            message = _keypoints(job, batch_size=batch_size or settings.IMAGESEARCH["BATCH_SIZE"])
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
        spacememo.forget()
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


def _labels_check() -> str:
    """Refuse labelling when the catalog's backbone has no ImageNet classifier here."""
    name = pipeline.catalog_state().backbone
    if not pipeline.backbone_named(name).labels_available:
        raise CurationError(
            f"{name} was loaded without its ImageNet classifier, so images cannot be labelled; "
            "words search needs a backbone with its classifier (EfficientNet-Lite0, 1 or 2).",
            code="labels_unavailable",
        )
    return name


def _labels(job: CatalogJob, *, batch_size: int) -> str:
    """Label every ready image that has no labels for the catalog's backbone, batch by
    batch (the progress is which images still lack labels, so a crash loses at most one
    batch). The stored vectors are left as they are."""
    name = _labels_check()
    backbone = pipeline.backbone_named(name)
    started = timezone.now()
    labelled, skipped = 0, set[int]()
    while True:
        waiting = _ready_images().exclude(labels__backbone=name).exclude(pk__in=skipped)
        total = _ready_images().count()
        _job_update(job, backbone=name, total=total, done=total - waiting.count())
        batch = list(waiting.order_by("pk")[:batch_size])
        if not batch:
            break
        pictures, kept = [], []
        for image in batch:
            try:
                with image.file.open("rb") as f:
                    pictures.append(pipeline.decode(f.read()).image)
                kept.append(image.pk)
            except (FileNotFoundError, ImageDecodeError):
                skipped.add(image.pk)  # searchable as before; its file cannot be read again
        if pictures:
            _, probabilities = pipeline.embed_and_label_images(pictures, backbone=backbone)
            if probabilities is None:
                raise CurationError(f"{name} returned no class probabilities.", code="labels_unavailable")
            labelled += labels_store(items=list(zip(kept, probabilities, strict=True)), backbone=name)
    seconds = (timezone.now() - started).total_seconds()
    unreadable = f"; {len(skipped)} could not be read" if skipped else ""
    return f"Labelled {labelled} images with {name} in {seconds:.1f} s{unreadable}."


def _keypoints(job: CatalogJob, *, batch_size: int) -> str:
    """Store the keypoints of every ready image that has none (images uploaded before
    copy scans used them), batch by batch: the progress is which images still lack them,
    so a crash loses at most one batch."""
    from gallery.copyright.services import image_keys_store
    from gallery.vision import localfeatures

    started = timezone.now()
    stored, skipped = 0, set[int]()
    while True:
        waiting = _ready_images().exclude(copy_keypoints__version=localfeatures.VERSION).exclude(pk__in=skipped)
        total = _ready_images().count()
        _job_update(job, total=total, done=total - waiting.count())
        batch = list(waiting.order_by("pk")[:batch_size])
        if not batch:
            break
        for image in batch:
            try:
                with image.file.open("rb") as f:
                    picture = pipeline.decode(f.read()).image
            except (FileNotFoundError, ImageDecodeError):
                skipped.add(image.pk)  # its file cannot be read again; searchable as before
                continue
            stored += image_keys_store(image_id=image.pk, picture=picture)
    seconds = (timezone.now() - started).total_seconds()
    unreadable = f"; {len(skipped)} could not be read" if skipped else ""
    return f"Stored the keypoints of {stored} images in {seconds:.1f} s{unreadable}."


def _refit(job: CatalogJob) -> str:
    backbone = pipeline.catalog_state().backbone
    total = _refit_check(backbone=backbone)  # images may have been deleted since the start
    _job_update(job, backbone=backbone, total=total)
    reduction = reduction_fit(backbone=backbone)
    if reduction is None:
        raise CurationError("Another PCA fit was in progress; this one was skipped.", code="fit_skipped")
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
        vecs.append(vector_from(blob))
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
        raise CurationError("The image to keep is not in this group.", code="not_in_group")
    others = [pk for pk in members if pk != keep_id]
    if action == "hide":
        changed = images_set_visibility(image_ids=others, visibility=str(Image.Visibility.HIDDEN))
    elif action == "delete":
        changed = images_delete(image_ids=others)
    else:
        raise CurationError(f"unknown action {action!r}; choose hide or delete", code="unknown_action")
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
