"""Catalog writes: storing uploads, batched idempotent embedding, PCA fit and switch."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from gallery.catalog import services as catalog_services
from gallery.catalog import tasks as catalog_tasks
from gallery.catalog.models import LANE_BULK, LANE_INTERACTIVE, Embedding, Image, ImageLabel
from gallery.curation import services as curation_services
from gallery.errors import DuplicateImage, ImageRejected
from gallery.search import selectors as search_selectors
from gallery.search import services as search_services
from gallery.search.models import ReducedVector, Reduction
from tests.conftest import photo_bytes

pytestmark = pytest.mark.django_db


def _upload(data: bytes, name: str = "photo.jpg", **kw):  # type: ignore[no-untyped-def]
    f = io.BytesIO(data)
    f.name = name
    return catalog_services.image_create(file=f, original_name=name, **kw)


def _upload_path(path, **kw):  # type: ignore[no-untyped-def]
    return _upload(path.read_bytes(), path.name, **kw)


def test_upload_is_stored_pending_then_embedded_on_commit(make_photo, media_files, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        image = _upload(make_photo())
    assert image.status == Image.Status.PENDING
    assert len(media_files()) == 3  # private original, display copy, thumbnail
    assert image.file.name.endswith(f"{image.checksum}.jpg")  # a server-made name
    assert len(callbacks) == 1
    callbacks[0]()  # the queued task runs eagerly
    image.refresh_from_db()
    assert image.status == Image.Status.READY
    emb = Embedding.objects.get(image=image)
    assert emb.backbone == "efficientnet_lite0" and emb.dim == 1280
    assert np.linalg.norm(emb.as_array()) == pytest.approx(1.0, abs=1e-5)


def _commented_jpeg(comment: bytes) -> bytes:
    from PIL import Image as PILImage

    exif = PILImage.Exif()
    exif[0x010F] = "Camera maker"
    out = io.BytesIO()
    PILImage.open(io.BytesIO(photo_bytes(seed=5))).save(out, format="JPEG", quality=92, exif=exif, comment=comment)
    return out.getvalue()


def test_public_copies_carry_nothing_of_the_uploaded_file_but_its_pixels(settings) -> None:  # type: ignore[no-untyped-def]
    image = _upload(_commented_jpeg(b"home address"), queue=False)
    for public in (image.display, image.thumbnail):
        data = public.read()
        assert data[:2] == b"\xff\xd8" and b"home address" not in data and b"Camera maker" not in data
    with image.file.open("rb") as original:  # the private original is kept as sent
        assert b"home address" in original.read()


def test_public_copies_made_before_are_rewritten_without_the_uploads_comment(media_files) -> None:  # type: ignore[no-untyped-def]
    import importlib

    from django.apps import apps
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from PIL import Image as PILImage

    from gallery.storage import private_storage, withheld_name

    cleaning = importlib.import_module("gallery.migrations.0013_public_copies_without_metadata")
    shown, hidden = _upload(photo_bytes(seed=6), queue=False), _upload(photo_bytes(seed=7), queue=False)
    old = {}
    for image, storage in ((shown, default_storage), (hidden, private_storage)):
        for field in ("display", "thumbnail"):  # as such copies were written: the upload's comment inside
            with PILImage.open(getattr(image, field)) as copy:
                out = io.BytesIO()
                copy.save(out, format="JPEG", quality=90, comment=b"home address")
            name = f"{field}/old-{image.pk}.jpg"
            stored = withheld_name(name) if storage is private_storage else name
            assert storage.save(stored, ContentFile(out.getvalue())) == stored
            old[image.pk, field] = (storage, stored, out.getvalue())
        # The hidden image's copies are withheld in the private storage under its names.
        Image.objects.filter(pk=image.pk).update(display=f"display/old-{image.pk}.jpg", thumbnail=f"thumbnail/old-{image.pk}.jpg")
    Image.objects.filter(pk=hidden.pk).update(visibility=Image.Visibility.HIDDEN)

    cleaning.rewrite_public_copies_without_metadata(apps, None)

    for (pk, field), (storage, stored, before) in old.items():
        name = getattr(Image.objects.get(pk=pk), field).name
        now = withheld_name(name) if storage is private_storage else name
        assert now != stored and not storage.exists(stored)  # a new URL; the old file gone
        with storage.open(now, "rb") as f:
            data = f.read()
        assert b"home address" not in data
        with PILImage.open(io.BytesIO(data)) as cleaned, PILImage.open(io.BytesIO(before)) as was:
            assert np.array_equal(np.asarray(cleaned), np.asarray(was))  # the same picture
    files = media_files()
    cleaning.rewrite_public_copies_without_metadata(apps, None)  # again: nothing left to do
    assert media_files() == files
    # Published again, the hidden image shows its clean copy.
    Image.objects.filter(pk=hidden.pk).update(visibility=Image.Visibility.PUBLISHED)
    assert catalog_services.image_pictures_place(image_ids=[hidden.pk]) == 2
    assert b"home address" not in Image.objects.get(pk=hidden.pk).display.read()


def test_duplicate_upload_is_refused_and_stores_nothing(make_photo, media_files) -> None:  # type: ignore[no-untyped-def]
    first = _upload(make_photo(), queue=False)
    before = media_files()
    with pytest.raises(DuplicateImage) as exc:
        _upload(make_photo(), name="again.jpg", queue=False)
    assert exc.value.existing == first
    assert Image.objects.count() == 1 and media_files() == before


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (photo_bytes()[:700], "damaged or truncated"), (b"hello world" * 10, "not an image")],
)
def test_rejected_upload_leaves_nothing_behind(data: bytes, message: str, media_files) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageRejected, match=message):
        _upload(data)
    assert Image.objects.count() == 0 and media_files() == []


def test_size_and_pixel_limits(settings, make_photo, media_files) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "MAX_UPLOAD_BYTES": 1000}
    with pytest.raises(ImageRejected, match="limit"):
        _upload(make_photo())
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "MAX_UPLOAD_BYTES": 10_000_000, "MAX_PIXELS": 10_000}
    with pytest.raises(ImageRejected, match="megapixels"):
        _upload(make_photo(size=(200, 100)))
    assert Image.objects.count() == 0 and media_files() == []


def test_waiting_uploads_are_embedded_in_one_batch_and_reruns_change_nothing(make_photo) -> None:  # type: ignore[no-untyped-def]
    images = [_upload(make_photo(seed=i, color=(40 * i, 90, 200 - 30 * i)), f"p{i}.jpg", queue=False) for i in range(5)]
    outcome = catalog_services.images_embed_batch(image_id=images[2].pk)
    assert sorted(outcome.ready) == sorted(im.pk for im in images)
    assert set(Image.objects.values_list("status", flat=True)) == {Image.Status.READY}
    vectors = {e.image_id: bytes(e.vector) for e in Embedding.objects.all()}
    for image in images:  # every queued task still runs; each finds its image done
        assert catalog_tasks.embed_image.delay(image.pk).get()["state"] == "done"
    assert Embedding.objects.count() == 5
    assert {e.image_id: bytes(e.vector) for e in Embedding.objects.all()} == vectors


def test_a_corrupt_file_fails_with_a_reason_and_the_batch_goes_on(make_photo) -> None:  # type: ignore[no-untyped-def]
    good = _upload(make_photo(seed=1), "good.jpg", queue=False)
    bad = _upload(make_photo(seed=2), "bad.jpg", queue=False)
    with bad.file.open("wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated on disk")
    outcome = catalog_services.images_embed_batch(image_id=bad.pk)
    assert outcome.ready == [good.pk] and outcome.failed == [bad.pk]
    bad.refresh_from_db()
    assert bad.status == Image.Status.FAILED and "damaged or truncated" in bad.status_reason
    assert not Embedding.objects.filter(image=bad).exists()


def test_a_stale_claim_is_recovered_and_a_fresh_one_is_left_alone(make_photo) -> None:  # type: ignore[no-untyped-def]
    image = _upload(make_photo(), queue=False)
    Image.objects.filter(pk=image.pk).update(status=Image.Status.PROCESSING, claimed_at=timezone.now(), claimed_by="other")
    assert catalog_services.images_embed_batch(image_id=image.pk).state == "busy"
    Image.objects.filter(pk=image.pk).update(claimed_at=timezone.now() - timedelta(hours=1))
    assert catalog_services.images_embed_batch(image_id=image.pk).ready == [image.pk]


def test_sweep_requeues_images_that_were_never_queued(make_photo) -> None:  # type: ignore[no-untyped-def]
    image = _upload(make_photo(), queue=False)  # as if the broker was down at upload
    Image.objects.filter(pk=image.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    assert catalog_tasks.sweep_waiting_images.delay().get() == 1
    image.refresh_from_db()
    assert image.status == Image.Status.READY


def _sent_tasks(monkeypatch) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    """Embedding tasks handed to the broker, as (image id, queue)."""
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(catalog_tasks.embed_image, "apply_async", lambda args, queue, **kw: sent.append((args[0], queue)))
    return sent


def _waiting(n: int, *, lane: str, queued_ago: timedelta | None, prefix: str) -> list[int]:
    """n pending rows, uploaded an hour ago, as a large import leaves them (no files needed:
    nothing here embeds them)."""
    queued_at = timezone.now() - queued_ago if queued_ago is not None else None
    rows = [
        Image(checksum=f"{prefix}{i:060d}", size=1, width=1, height=1, format="JPEG", lane=lane, queued_at=queued_at)
        for i in range(n)
    ]
    ids = [im.pk for im in Image.objects.bulk_create(rows)]
    Image.objects.filter(pk__in=ids).update(created_at=timezone.now() - timedelta(hours=1))
    return ids


def test_sweep_during_a_bulk_backlog_requeues_only_the_image_whose_task_was_lost(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sent = _sent_tasks(monkeypatch)
    _waiting(3000, lane=LANE_BULK, queued_ago=timedelta(minutes=2), prefix="a")  # still in the bulk queue
    (lost,) = _waiting(1, lane=LANE_BULK, queued_ago=timedelta(hours=1), prefix="b")
    assert catalog_tasks.sweep_waiting_images.delay().get() == 1
    assert sent == [(lost, LANE_BULK)]
    sent.clear()
    assert catalog_tasks.sweep_waiting_images.delay().get() == 0  # it was just queued again
    assert sent == []


def test_sweep_leaves_a_moving_lane_alone_and_finds_a_lost_upload_at_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sent = _sent_tasks(monkeypatch)
    # A bulk import queued an hour ago is still being embedded: its tasks are on their way,
    # and each claims the oldest waiting images of the lane, so nothing is queued twice.
    backlog = _waiting(500, lane=LANE_BULK, queued_ago=timedelta(hours=1), prefix="a")
    Image.objects.filter(pk=backlog[0]).update(status=Image.Status.READY, embedded_at=timezone.now())
    upload = _waiting(1, lane=LANE_INTERACTIVE, queued_ago=None, prefix="b")  # broker down at upload
    assert catalog_tasks.sweep_waiting_images.delay().get() == 1
    assert sent == [(upload[0], LANE_INTERACTIVE)]
    # The lane stops moving (the last tasks were lost): every waiting image is queued again, once.
    sent.clear()
    Image.objects.filter(pk=backlog[0]).update(embedded_at=timezone.now() - timedelta(hours=1))
    assert catalog_tasks.sweep_waiting_images.delay().get() == 499
    assert {lane for _, lane in sent} == {LANE_BULK}
    assert catalog_tasks.sweep_waiting_images.delay().get() == 0  # and the next sweep does not repeat them


def test_a_restarted_worker_requeues_every_waiting_image(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sent = _sent_tasks(monkeypatch)
    backlog = _waiting(50, lane=LANE_BULK, queued_ago=timedelta(seconds=5), prefix="a")
    catalog_tasks._recover_on_start(sender=None)  # its broker may have lost every queued task
    assert sorted(pk for pk, _ in sent) == backlog


def test_pca_is_fitted_automatically_then_refitted_when_the_catalog_doubles(
    butterflies, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    photos = [p for group in butterflies.values() for p in group[:3]]  # 30 photos, 10 species
    with django_capture_on_commit_callbacks(execute=True):
        for path in photos[:11]:
            _upload_path(path)
    assert not Reduction.objects.exists()  # below PCA_MIN_IMAGES (12 in tests)
    with django_capture_on_commit_callbacks(execute=True):
        _upload_path(photos[11])
    first = Reduction.objects.get(is_active=True)
    assert (first.version, first.fitted_on, first.dims) == (1, 12, 8)
    assert ReducedVector.objects.filter(reduction=first).count() == 12
    with django_capture_on_commit_callbacks(execute=True):
        for path in photos[12:23]:
            _upload_path(path)
    assert Reduction.objects.get(is_active=True) == first  # 23 < 2 × 12
    assert ReducedVector.objects.filter(reduction=first).count() == 23  # new images projected
    with django_capture_on_commit_callbacks(execute=True):
        _upload_path(photos[23])
    second = Reduction.objects.get(is_active=True)
    assert (second.version, second.fitted_on) == (2, 24)
    assert not ReducedVector.objects.filter(reduction=first).exists()
    assert ReducedVector.objects.filter(reduction=second).count() == 24
    assert search_selectors.active_space().reduction == second


def test_search_never_mixes_backbones(make_photo) -> None:  # type: ignore[no-untyped-def]
    image = _upload(make_photo(seed=1), queue=False)
    catalog_services.images_embed_batch(image_id=image.pk)
    other = _upload(make_photo(seed=2), "other.jpg", queue=False)
    catalog_services.embedding_store(image=other, backbone="resnet50", vector=np.ones(2048, np.float32) / np.sqrt(2048))
    hits = search_selectors.search_by_vector(embedding=Embedding.objects.get(image=image).as_array())
    assert [h.image for h in hits] == [image]


def test_an_upload_is_never_batched_with_a_waiting_bulk_import_and_the_worker_is_recorded(make_photo) -> None:  # type: ignore[no-untyped-def]
    bulk = [_upload(make_photo(seed=i), f"b{i}.jpg", queue=False, lane="bulk") for i in range(4)]
    upload = _upload(make_photo(seed=9, color=(20, 200, 40)), "mine.jpg", queue=False)
    assert upload.lane == "interactive"
    outcome = catalog_services.images_embed_batch(image_id=upload.pk, worker="w1@host")
    assert outcome.ready == [upload.pk] and outcome.lane == "interactive"
    assert set(Image.objects.filter(lane="bulk").values_list("status", flat=True)) == {Image.Status.PENDING}
    outcome = catalog_services.images_embed_batch(image_id=bulk[1].pk, worker="w2@host")
    assert sorted(outcome.ready) == sorted(im.pk for im in bulk) and outcome.lane == "bulk"
    rows = dict(Image.objects.values_list("pk", "embedded_by"))
    assert rows == {upload.pk: "w1@host", **{im.pk: "w2@host" for im in bulk}}
    assert set(Image.objects.values_list("attempts", flat=True)) == {1}


def test_reembedding_goes_to_the_bulk_lane(make_photo, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    image = _upload(make_photo(), queue=False)
    catalog_services.images_embed_batch(image_id=image.pk, worker="w1@host")
    with django_capture_on_commit_callbacks(execute=True):
        assert curation_services.images_reembed(image_ids=[image.pk]) == 1
    image.refresh_from_db()
    assert image.lane == "bulk" and image.status == Image.Status.READY


def test_an_image_deleted_while_its_batch_is_embedded_does_not_fail_the_batch(make_photo, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from gallery.catalog import pipeline

    first, second, third = (_upload(make_photo(seed=s), f"p{s}.jpg") for s in (41, 42, 43))

    def embed_while_deleting(pictures, *, backbone):  # type: ignore[no-untyped-def]
        catalog_services.images_delete(image_ids=[second.pk])  # an editor deletes it mid-batch
        vectors = np.random.default_rng(0).normal(size=(len(pictures), backbone.dim)).astype(np.float32)
        probabilities = np.full((len(pictures), 1000), 1e-3, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), probabilities

    monkeypatch.setattr(pipeline, "embed_and_label_images", embed_while_deleting)
    outcome = catalog_services.images_embed_batch(image_id=first.pk, worker="test")
    assert sorted(outcome.ready) == sorted([first.pk, third.pk])
    assert list(Image.objects.order_by("pk").values_list("pk", "status")) == [(first.pk, "ready"), (third.pk, "ready")]
    assert not Embedding.objects.filter(image_id=second.pk).exists()
    assert not ImageLabel.objects.filter(image_id=second.pk).exists()
    assert ImageLabel.objects.filter(image_id=third.pk).count() == 10


def test_a_pca_activated_elsewhere_is_searched_within_a_second_and_here_at_once(
    butterflies, monkeypatch, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    """Searches read this process's copy of the space: another process's switch shows up
    once the copy is a second old; a switch made by this process shows up at once."""
    from gallery.search import spacememo

    photos = [p for group in butterflies.values() for p in group[:2]][:12]
    with django_capture_on_commit_callbacks(execute=True):
        for path in photos:
            _upload_path(path)
    first = Reduction.objects.get(is_active=True)
    clock = [1000.0]
    monkeypatch.setattr(spacememo.time, "monotonic", lambda: clock[0])
    spacememo.forget()
    assert search_selectors.active_space().reduction == first
    # Another process activates a new PCA (rows changed, nothing said to this process).
    other = Reduction.objects.create(
        backbone=first.backbone, version=first.version + 1, dims=first.dims, input_dim=first.input_dim,
        mean=first.mean, components=first.components, explained_variance=first.explained_variance,
        fitted_on=first.fitted_on, explained_variance_ratio=first.explained_variance_ratio,
    )  # fmt: skip
    Reduction.objects.filter(pk=first.pk).update(is_active=False)
    Reduction.objects.filter(pk=other.pk).update(is_active=True)
    clock[0] += 0.9
    assert search_selectors.active_space().reduction == first  # the copy, still under a second old
    clock[0] += 0.2
    assert search_selectors.active_space().reduction == other
    # This process refits: its next search uses the new PCA at once.
    refit = search_services.reduction_fit(backbone=first.backbone)
    assert refit is not None and refit not in (first, other)
    assert search_selectors.active_space().reduction == refit
