"""import_images with titles and tags from a CSV, a dry run and a summary with reasons; the
overlapped import stores what the workers would, and a failure mid-import stores no half image."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError

from gallery.catalog import pipeline
from gallery.catalog import services as catalog_services
from gallery.catalog.models import Embedding, Image, ImageLabel, Tag
from gallery.errors import CatalogUnavailable
from tests.conftest import DATASET, photo_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def folder(tmp_path, butterflies):  # type: ignore[no-untyped-def]
    root = tmp_path / "import"
    (root / "images").mkdir(parents=True)
    for group in list(butterflies.values())[:3]:
        for path in group[:2]:
            shutil.copy(path, root / "images" / path.name)
    (root / "images" / "broken.jpg").write_bytes(photo_bytes()[:500])
    return root


def test_dry_run_reports_and_stores_nothing_then_the_import_applies_the_csv(folder, capsys, media_files) -> None:  # type: ignore[no-untyped-def]
    args = [str(folder), "--no-progress", "--csv", str(DATASET / "labels.csv"), "--title-column", "common_name"]
    args += ["--tags-column", "latin_name"]
    call_command("import_images", *args, "--dry-run")
    out = capsys.readouterr()
    assert "would import 6, skipped 0 already in the catalog, rejected 1 (dry run" in out.out
    assert "broken.jpg" in out.err and "damaged or truncated" in out.err
    assert Image.objects.count() == 0 and not Tag.objects.exists() and media_files() == []

    call_command("import_images", *args)
    assert "imported 6, skipped 0 already in the catalog, rejected 1" in capsys.readouterr().out
    monarch = Image.objects.get(original_name="0010001.jpg")
    assert monarch.title == "Monarch" and list(monarch.tags.values_list("name", flat=True)) == ["danaus plexippus"]
    assert Image.objects.filter(status=Image.Status.READY).count() == 6
    assert Tag.objects.get(name="danaus plexippus").images.count() == 2

    call_command("import_images", *args)
    assert "imported 0, skipped 6 already in the catalog, rejected 1" in capsys.readouterr().out


def test_a_csv_without_the_named_columns_is_refused_before_anything_is_stored(folder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\n0010001.jpg,x\n")
    with pytest.raises(CommandError, match="no 'filename' column"):
        call_command("import_images", str(folder), "--no-progress", "--csv", str(bad))
    with pytest.raises(CommandError, match="no column species"):
        call_command(
            "import_images", str(folder), "--no-progress", "--csv", str(DATASET / "labels.csv"), "--tags-column", "species"
        )
    assert Image.objects.count() == 0


@pytest.fixture
def photos(tmp_path, butterflies):  # type: ignore[no-untyped-def]
    """Twelve photos of six species and, in the middle of the folder's order, a damaged one."""
    root = tmp_path / "photos"
    root.mkdir()
    chosen = [p for group in list(butterflies.values())[:6] for p in group[:2]]
    for i, path in enumerate(chosen):
        shutil.copy(path, root / f"{i:02d}-{path.name}")
    (root / "05-broken.jpg").write_bytes(photo_bytes()[:500])
    return root


@pytest.fixture
def small_batches(settings):  # type: ignore[no-untyped-def]
    """Batches of four, so an import of twelve photos overlaps several of them."""
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "BATCH_SIZE": 4, "PCA_MIN_IMAGES": 1000}


def _embed_waiting() -> None:
    """What workers do with the waiting images (after a restart, the sweep queues them)."""
    while waiting := Image.objects.filter(status=Image.Status.PENDING).order_by("pk").first():
        catalog_services.images_embed_batch(image_id=waiting.pk, worker="restarted")


def test_the_overlapped_import_stores_what_the_workers_would_and_a_damaged_photo_only_fails_itself(  # type: ignore[no-untyped-def]
    photos, small_batches, capsys, media_files
) -> None:
    call_command("import_images", str(photos), "--no-progress")
    out = capsys.readouterr()
    assert "imported 12, skipped 0 already in the catalog, rejected 1" in out.out
    assert "05-broken.jpg" in out.err and "damaged or truncated" in out.err
    assert Image.objects.filter(status=Image.Status.READY).count() == 12 == Image.objects.count()
    assert len(media_files()) == 3 * 12  # original, display copy and thumbnail of each; nothing of the damaged one
    imported = {e.image_id: e.as_array() for e in Embedding.objects.all()}
    labels = {(r.image_id, r.rank): r.class_index for r in ImageLabel.objects.filter(rank__lt=3)}

    # The same photos embedded the workers' way: read back from storage, decoded, preprocessed
    # and embedded in the worker's batches, one stage after the other.
    Embedding.objects.all().delete()
    ImageLabel.objects.all().delete()
    Image.objects.update(status=Image.Status.PENDING)
    _embed_waiting()
    again = {e.image_id: e.as_array() for e in Embedding.objects.all()}
    assert sorted(again) == sorted(imported)
    for pk, vector in imported.items():
        np.testing.assert_allclose(vector, again[pk], atol=1e-5)
    assert {(r.image_id, r.rank): r.class_index for r in ImageLabel.objects.filter(rank__lt=3)} == labels


def test_a_database_failure_mid_import_stores_no_half_image_and_the_import_finishes_when_run_again(  # type: ignore[no-untyped-def]
    photos, small_batches, monkeypatch, capsys, media_files
) -> None:
    bulk_create, calls = Image.objects.bulk_create, []

    def locked_on_the_third_batch(objs, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise OperationalError("database is locked")
        return bulk_create(objs, *args, **kwargs)

    monkeypatch.setattr(Image.objects, "bulk_create", locked_on_the_third_batch)
    with pytest.raises(CatalogUnavailable):
        call_command("import_images", str(photos), "--no-progress")
    # The first two batches (the second with the damaged photo) are complete.
    assert Image.objects.count() == 7 == Image.objects.filter(status=Image.Status.READY).count()
    # Neither the failed batch nor the photos prepared ahead of it left a file behind.
    assert len(media_files()) == 3 * 7

    monkeypatch.setattr(Image.objects, "bulk_create", bulk_create)
    call_command("import_images", str(photos), "--no-progress")
    assert "imported 5, skipped 7 already in the catalog, rejected 1" in capsys.readouterr().out.splitlines()[-1]
    assert Image.objects.filter(status=Image.Status.READY).count() == 12 and len(media_files()) == 3 * 12


def test_a_crash_in_the_forward_pass_mid_import_leaves_the_batch_waiting_for_the_workers(  # type: ignore[no-untyped-def]
    photos, small_batches, monkeypatch, media_files
) -> None:
    embed, calls = pipeline.embed_and_label_inputs, []

    def crashes_on_the_second_batch(inputs, *, backbone):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the worker died")
        return embed(inputs, backbone=backbone)

    monkeypatch.setattr(pipeline, "embed_and_label_inputs", crashes_on_the_second_batch)
    with pytest.raises(RuntimeError, match="the worker died"):
        call_command("import_images", str(photos), "--no-progress")
    statuses = list(Image.objects.values_list("status", flat=True))
    assert sorted(statuses) == ["pending"] * 3 + ["ready"] * 4  # the crashed batch went back to waiting
    assert len(media_files()) == 3 * 7

    monkeypatch.setattr(pipeline, "embed_and_label_inputs", embed)
    _embed_waiting()
    assert Image.objects.filter(status=Image.Status.READY).count() == 7 == Embedding.objects.count()


def test_the_same_photo_twice_in_a_folder_is_imported_once(tmp_path, butterflies, small_batches, capsys, media_files) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "twice"
    root.mkdir()
    first = next(iter(butterflies.values()))[:3]
    for i, path in enumerate([*first, first[0], first[1]]):
        shutil.copy(path, root / f"{i}-{path.name}")
    call_command("import_images", str(root), "--no-progress")
    assert "imported 3, skipped 2 already in the catalog, rejected 0" in capsys.readouterr().out
    assert Image.objects.filter(status=Image.Status.READY).count() == 3 and len(media_files()) == 3 * 3


def test_an_import_left_to_the_workers_stores_every_photo_pending_and_queues_it_on_commit(  # type: ignore[no-untyped-def]
    photos, small_batches, capsys, media_files, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks() as queued:
        call_command("import_images", str(photos), "--queue", "--no-progress")
    assert "imported 12, skipped 0 already in the catalog, rejected 1" in capsys.readouterr().out
    assert len(queued) == 12
    images = Image.objects.all()
    assert {(im.status, im.lane) for im in images} == {(Image.Status.PENDING, "bulk")}
    assert all(im.queued_at is not None for im in images) and not Embedding.objects.exists()
    assert len(media_files()) == 3 * 12


def test_inputs_made_for_another_backbone_are_not_used_and_the_pictures_are_read_back(butterflies, media_files) -> None:  # type: ignore[no-untyped-def]
    backbone = pipeline.catalog_backbone()
    paths = next(iter(butterflies.values()))[:3]
    uploads = [
        catalog_services.upload_prepare(data=p.read_bytes(), original_name=p.name, queue=False, backbone=backbone) for p in paths
    ]
    assert all(u.picture is None and u.network_input is not None for u in uploads)  # only the small input is kept
    images = [im for im in catalog_services.uploads_store(uploads=uploads) if isinstance(im, Image)]
    assert len(images) == 3 and len(media_files()) == 3 * 3
    stale = {im.pk: ("a backbone the catalog left", u.network_input[1]) for im, u in zip(images, uploads, strict=True)}  # type: ignore[index]
    outcome = catalog_services.images_embed_batch(image_id=images[0].pk, network_inputs=stale)
    assert sorted(outcome.ready) == sorted(im.pk for im in images) and not stale
    expected = pipeline.embed_images([pipeline.decode(p.read_bytes()).image for p in paths], backbone=backbone)
    for image, vector in zip(images, expected, strict=True):
        np.testing.assert_allclose(Embedding.objects.get(image=image).as_array(), vector, atol=1e-5)
