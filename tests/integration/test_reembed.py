"""Migrating the catalog to another backbone: search stays in one space throughout,
a crash mid-way resumes, the switch is atomic and the old vectors go."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from gallery.catalog import pipeline
from gallery.catalog import services as catalog_services
from gallery.catalog.models import Embedding, Image
from gallery.curation import services as curation_services
from gallery.curation.models import CatalogJob
from gallery.search import selectors as search_selectors
from gallery.search import services as search_services
from gallery.search.models import CatalogState, ReducedVector, Reduction
from gallery.vision.backbones import EFFICIENTNET_LITE0, RESNET50

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """ResNet50 weights saved by the test: no ImageNet download is possible here."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.applications.ResNet50(include_top=False, pooling="avg", weights=None)
    path = tmp_path_factory.mktemp("weights") / "resnet50_notop.weights.h5"
    model.save_weights(str(path))
    return path


@pytest.fixture
def catalog(butterflies, settings, resnet_weights) -> tuple[list[Image], list[Path]]:  # type: ignore[no-untyped-def]
    """14 photos of 7 species embedded with Lite0 and PCA fitted; two held-back queries."""
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "RESNET50_WEIGHTS": str(resnet_weights), "BATCH_SIZE": 4}
    groups = list(butterflies.values())[:7]
    images = []
    for group in groups:
        for p in group[:2]:
            with open(p, "rb") as f:
                images.append(catalog_services.image_create(file=f, original_name=p.name, queue=False))
    catalog_services.images_embed_batch(image_id=images[0].pk)
    catalog_services.images_embed_batch(image_id=images[4].pk)
    catalog_services.images_embed_batch(image_id=images[8].pk)
    catalog_services.images_embed_batch(image_id=images[12].pk)
    search_services.reduction_fit(backbone=EFFICIENTNET_LITE0)
    assert Image.objects.filter(status=Image.Status.READY).count() == 14
    return images, [groups[0][5], groups[3][5]]


def _search(path: Path) -> list[tuple[int, float]]:
    f = io.BytesIO(path.read_bytes())
    f.name = path.name
    return [(h.image.pk, h.score) for h in search_selectors.search_by_image(file=f, limit=50)]


def _ranking_in(backbone: str, path: Path) -> list[int]:
    """The catalog ranked for the query purely in one backbone's stored space."""
    query = pipeline.embed_images([pipeline.decode(path.read_bytes()).image], backbone=pipeline.backbone_named(backbone))[0]
    reduction = Reduction.objects.filter(backbone=backbone, is_active=True).first()
    if reduction is not None:
        rows = ReducedVector.objects.filter(reduction=reduction)
        query = search_services.reduction_load(reduction).transform(query[None])[0]
    else:
        rows = Embedding.objects.filter(backbone=backbone)
    rows = rows.filter(image__status=Image.Status.READY, image__visibility=Image.Visibility.PUBLISHED)
    ids = [r.image_id for r in rows]
    x = np.stack([np.frombuffer(bytes(r.vector), dtype=np.float32) for r in rows])
    scores = (x @ query) / (np.linalg.norm(x, axis=1) * np.linalg.norm(query))
    return [ids[i] for i in np.argsort(-scores, kind="stable")]


def test_search_answers_from_one_backbone_during_a_migration_that_survives_a_crash(
    catalog, butterflies, monkeypatch, settings, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    # plain cosine ranking, so results can be compared with one backbone's stored space
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "DBA_K": 0, "QE_K": 0}
    _, queries = catalog
    original = pipeline.embed_images
    target_batches: list[int] = []
    observed: list[tuple[str, list[int]]] = []
    crash_at: list[int] = [2]  # the second target batch dies like a killed worker
    late_upload = list(butterflies.values())[8][0]
    busy = [False]

    def embed_watching(images_, *, backbone=None):  # type: ignore[no-untyped-def]
        migrating = pipeline.catalog_state().target_backbone == RESNET50
        if backbone is not None and backbone.name == RESNET50 and migrating and not busy[0]:
            busy[0] = True
            try:
                target_batches.append(len(images_))
                # A visitor searches mid-migration: results must be Lite0's ranking exactly.
                for q in queries:
                    hits = [pk for pk, _ in _search(q)]
                    observed.append((pipeline.catalog_state().backbone, hits))
                    assert hits == _ranking_in(EFFICIENTNET_LITE0, q)
                if len(target_batches) == 2:  # an upload arrives during the migration
                    with open(late_upload, "rb") as f:
                        new = catalog_services.image_create(file=f, original_name=late_upload.name, queue=False)
                    catalog_services.images_embed_batch(image_id=new.pk)
                if len(target_batches) == crash_at[0]:
                    raise RuntimeError("worker killed")
            finally:
                busy[0] = False
        return original(images_, backbone=backbone)

    monkeypatch.setattr(pipeline, "embed_images", embed_watching)

    with pytest.raises(RuntimeError, match="worker killed"), django_capture_on_commit_callbacks(execute=True):
        curation_services.catalog_job_start(kind="reembed", backbone=RESNET50)  # queued to the (eager) worker, which dies
    job = CatalogJob.objects.get()
    job.refresh_from_db()
    assert job.status == CatalogJob.Status.RUNNING and 0 < job.done < job.total
    state = CatalogState.objects.get()
    assert (state.backbone, state.target_backbone) == (EFFICIENTNET_LITE0, RESNET50)
    assert Embedding.objects.filter(backbone=RESNET50).count() == 4 + 1  # first batch + the new upload
    for q in queries:  # still answering from Lite0
        assert [pk for pk, _ in _search(q)] == _ranking_in(EFFICIENTNET_LITE0, q)

    crash_at[0] = 0
    before = len(target_batches)
    call_command("reembed", backbone=RESNET50, foreground=True, stdout=io.StringIO())
    resumed = sum(target_batches[before:])
    assert resumed == 15 - 5  # only what was missing: 14 + 1 uploaded, 5 done before the crash

    job.refresh_from_db()
    assert job.status == CatalogJob.Status.DONE and job.done == job.total == 15
    state = CatalogState.objects.get()
    assert (state.backbone, state.target_backbone) == (RESNET50, "")
    assert Embedding.objects.filter(backbone=RESNET50).count() == 15
    assert not Embedding.objects.exclude(backbone=RESNET50).exists()
    assert not Reduction.objects.filter(backbone=EFFICIENTNET_LITE0).exists()
    assert Reduction.objects.get(is_active=True).backbone == RESNET50  # 15 ≥ PCA_MIN_IMAGES
    for q in queries:
        hits = [pk for pk, _ in _search(q)]
        assert hits == _ranking_in(RESNET50, q) and len(hits) == 15
    assert len(observed) >= 2 * 4 and all(backbone == EFFICIENTNET_LITE0 for backbone, _ in observed)
    assert search_selectors.active_space().backbone == RESNET50
    # New uploads after the switch are embedded with the new backbone only.
    with open(list(butterflies.values())[9][0], "rb") as f:
        after = catalog_services.image_create(file=f, original_name="after.jpg", queue=False)
    catalog_services.images_embed_batch(image_id=after.pk)
    assert list(Embedding.objects.filter(image=after).values_list("backbone", flat=True)) == [RESNET50]


def test_reembed_refuses_bad_requests_and_changes_nothing(catalog) -> None:  # type: ignore[no-untyped-def]
    from django.core.management.base import CommandError

    for backbone, message in [("vgg16", "unknown backbone"), (EFFICIENTNET_LITE0, "already uses")]:
        with pytest.raises(CommandError, match=message):
            call_command("reembed", backbone=backbone, foreground=True, stdout=io.StringIO())
    assert not CatalogJob.objects.exists()
    assert CatalogState.objects.get().target_backbone == ""


def test_refit_command_switches_to_a_new_pca_version(catalog) -> None:  # type: ignore[no-untyped-def]
    first = Reduction.objects.get(is_active=True)
    out = io.StringIO()
    call_command("refit", foreground=True, stdout=out)
    second = Reduction.objects.get(is_active=True)
    assert second.version == first.version + 1 and "Activated" in out.getvalue()
    assert ReducedVector.objects.filter(reduction=second).count() == 14
    assert not ReducedVector.objects.filter(reduction=first).exists()


def test_reembed_refuses_a_backbone_whose_weights_are_missing(catalog, settings) -> None:  # type: ignore[no-untyped-def]
    from django.core.management.base import CommandError

    curation_services.catalog_job_start(kind="reembed", backbone=RESNET50, queue=False)  # loads with the test's weights
    CatalogJob.objects.all().delete()
    CatalogState.objects.update(target_backbone="")
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "RESNET50_WEIGHTS": ""}
    with pytest.raises(CommandError) as refused:
        call_command("reembed", backbone=RESNET50, foreground=True, stdout=io.StringIO())
    message = str(refused.value)
    assert message.startswith("resnet50 cannot be used on this machine.") and "IMAGESEARCH_RESNET50_WEIGHTS" in message
    assert "URL fetch failure" not in message and "https://" not in message
    assert not CatalogJob.objects.exists() and CatalogState.objects.get().target_backbone == ""


@pytest.mark.parametrize(("centre", "gem2"), [(False, "efficientnet_lite0-gem2"), (True, "efficientnet_lite0-gem2-centre")])
def test_a_new_pooling_leaves_the_catalog_searchable_until_a_reembed_to_the_same_network_switches_it(
    catalog, butterflies, settings, centre, gem2
) -> None:  # type: ignore[no-untyped-def]
    # The setting now asks for GeM-2 (of the whole map, or of the map and its centre, the
    # product's default): the catalog keeps answering from its GeM-3 vectors, queries
    # included, and new uploads join it, until the operator re-embeds.
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "GEM_P": 2.0, "CENTRE_REGION": centre, "DBA_K": 0, "QE_K": 0}
    images, queries = catalog
    for q in queries:
        assert [pk for pk, _ in _search(q)] == _ranking_in(EFFICIENTNET_LITE0, q)
    with open(list(butterflies.values())[9][0], "rb") as f:
        late = catalog_services.image_create(file=f, original_name="late.jpg", queue=False)
    catalog_services.images_embed_batch(image_id=late.pk)
    assert list(Embedding.objects.filter(image=late).values_list("backbone", flat=True)) == [EFFICIENTNET_LITE0]

    out = io.StringIO()
    call_command("reembed", backbone=EFFICIENTNET_LITE0, foreground=True, stdout=out)  # the same network
    state = CatalogState.objects.get()
    assert (state.backbone, state.target_backbone) == (gem2, "")
    assert set(Embedding.objects.values_list("backbone", flat=True)) == {gem2}
    assert Embedding.objects.count() == 15
    assert Reduction.objects.get(is_active=True).backbone == gem2
    for q in queries:
        assert [pk for pk, _ in _search(q)] == _ranking_in(gem2, q)
    # A catalog photo searched for comes first, as itself: queries are pooled as the catalog is.
    first = images[3]
    hits = _search(Path(first.file.path))
    assert hits[0][0] == first.pk and hits[0][1] > 0.999
    with pytest.raises(Exception, match=f"already uses {gem2}"):
        call_command("reembed", backbone=EFFICIENTNET_LITE0, foreground=True, stdout=io.StringIO())


def test_a_new_catalog_is_embedded_with_the_default_pooling(butterflies, settings) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "GEM_P": 2.0, "CENTRE_REGION": True}  # the product's defaults
    with open(next(iter(butterflies.values()))[0], "rb") as f:
        image = catalog_services.image_create(file=f, original_name="first.jpg", queue=False)
    catalog_services.images_embed_batch(image_id=image.pk)
    name = "efficientnet_lite0-gem2-centre"
    assert CatalogState.objects.get().backbone == name
    assert list(Embedding.objects.filter(image=image).values_list("backbone", flat=True)) == [name]
