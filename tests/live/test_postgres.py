"""PostgreSQL + pgvector (run by the test command against a real server it starts)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.db import connection

from gallery.catalog import services as catalog_services
from gallery.catalog.models import CatalogChange, Image
from gallery.search import selectors as search_selectors
from gallery.search.index import PgVectorIndex
from gallery.search.models import ReducedVector

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture(autouse=True)
def _on_postgres() -> None:
    assert connection.vendor == "postgresql", "run these with DATABASE_URL naming a PostgreSQL database (scripts/test.sh does)"


@pytest.fixture
def catalog(butterflies, settings, django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    """Real photos uploaded and embedded (the queued tasks run eagerly on commit)."""

    def make(species=("001", "002", "005", "007"), per=8) -> list[Image]:  # type: ignore[no-untyped-def]
        images = []
        with django_capture_on_commit_callbacks(execute=True):
            for s in species:
                for path in butterflies[s][:per]:
                    f = io.BytesIO(path.read_bytes())
                    f.name = path.name
                    images.append(catalog_services.image_create(file=f, original_name=path.name))
        for image in images:
            image.refresh_from_db()
        return images

    return make


def test_vectors_live_in_a_pgvector_column_with_an_hnsw_index(catalog) -> None:  # type: ignore[no-untyped-def]
    images = catalog(per=4)
    assert Image.objects.filter(status=Image.Status.READY).count() == len(images)
    space = search_selectors.active_space()
    assert space.reduction is not None and space.reduction.dims == 8
    with connection.cursor() as cur:
        cur.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'gallery_reducedvector'::regclass AND attname = 'vector'"
        )
        assert cur.fetchone()[0] == "vector"
        name = PgVectorIndex.ensure_index(space.reduction)
        cur.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [name])
        assert "hnsw" in cur.fetchone()[0]
    stored = ReducedVector.objects.filter(reduction=space.reduction).first()
    assert stored is not None and len(np.frombuffer(stored.vector, dtype=np.float32)) == 8


@pytest.mark.parametrize(("dba_k", "qe_k"), [(5, 5), (5, 0), (0, 5), (0, 0)], ids=["default", "dba", "qe", "plain"])
def test_sql_search_returns_the_in_memory_exact_top_k(catalog, settings, dba_k: int, qe_k: int) -> None:  # type: ignore[no-untyped-def]
    """The default settings (augmentation and query expansion on) included: the catalog is
    smaller than the re-ranked candidate set, so the ranking is exactly the in-memory one."""
    images = catalog()
    assert (settings.IMAGESEARCH["DBA_K"], settings.IMAGESEARCH["QE_K"]) == (5, 5)  # the defaults
    assert settings.IMAGESEARCH["PGVECTOR_RERANK_CANDIDATES"] > len(images)
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "DBA_K": dba_k, "QE_K": qe_k, "PGVECTOR_EF_SEARCH": 1000}
    for metric in ("cosine", "euclidean", "inner_product"):
        for image in images[::3]:
            settings.IMAGESEARCH = {**settings.IMAGESEARCH, "SEARCH_BACKEND": "memory"}
            memory = search_selectors.similar_to_image(image=image, limit=10, metric=metric)
            settings.IMAGESEARCH = {**settings.IMAGESEARCH, "SEARCH_BACKEND": "pgvector"}
            sql = search_selectors.similar_to_image(image=image, limit=10, metric=metric)
            assert len(memory) == 10
            assert [h.image.pk for h in sql] == [h.image.pk for h in memory], (
                metric,
                image.original_name,
                [round(h.score, 4) for h in sql],
                [round(h.score, 4) for h in memory],
            )
            np.testing.assert_allclose([h.score for h in sql], [h.score for h in memory], atol=1e-4)
    # The nearest neighbours of a butterfly are its own species.
    first = search_selectors.similar_to_image(image=images[0], limit=3)
    assert all(h.image.original_name[:3] == images[0].original_name[:3] for h in first)


def test_hidden_and_deleted_images_leave_sql_search_and_the_change_log_records_them(catalog, settings) -> None:  # type: ignore[no-untyped-def]
    images = catalog(per=5)
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "SEARCH_BACKEND": "pgvector"}
    top = search_selectors.similar_to_image(image=images[0], limit=2)
    before = CatalogChange.objects.count()
    catalog_services.images_set_visibility(image_ids=[top[0].image.pk], visibility="hidden")
    catalog_services.images_delete(image_ids=[top[1].image.pk])
    after = {h.image.pk for h in search_selectors.similar_to_image(image=images[0], limit=30)}
    assert top[0].image.pk not in after and top[1].image.pk not in after
    assert set(CatalogChange.objects.filter(pk__gt=0).values_list("image_id", flat=True)[before:]) >= {
        top[0].image.pk,
        top[1].image.pk,
    }


def test_with_fewer_candidates_than_images_sql_search_keeps_the_in_memory_scores_and_order(catalog, settings) -> None:  # type: ignore[no-untyped-def]
    """Augmented similarity depends on each image's neighbours, so no index over the stored
    vectors can enumerate its top-k: SQL search ranks a candidate set. Each hit's score is
    then exactly the in-memory one, hits come best first, and most of the top-10 agree."""
    images = catalog()
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "PGVECTOR_EF_SEARCH": 1000, "PGVECTOR_RERANK_CANDIDATES": 16}
    overlap = []
    for image in images[::2]:
        settings.IMAGESEARCH = {**settings.IMAGESEARCH, "SEARCH_BACKEND": "memory", "QE_K": 0}
        everything = {
            h.image.pk: h.score for h in search_selectors.similar_to_image(image=image, limit=len(images), metric="cosine")
        }
        settings.IMAGESEARCH = {**settings.IMAGESEARCH, "QE_K": 5}
        memory = [h.image.pk for h in search_selectors.similar_to_image(image=image, limit=10)]
        settings.IMAGESEARCH = {**settings.IMAGESEARCH, "SEARCH_BACKEND": "pgvector", "QE_K": 0}
        sql = search_selectors.similar_to_image(image=image, limit=10)
        np.testing.assert_allclose([h.score for h in sql], [everything[h.image.pk] for h in sql], atol=1e-4)
        assert [h.score for h in sql] == sorted((h.score for h in sql), reverse=True)
        settings.IMAGESEARCH = {**settings.IMAGESEARCH, "QE_K": 5}
        expanded = [h.image.pk for h in search_selectors.similar_to_image(image=image, limit=10)]
        overlap.append(len(set(expanded) & set(memory)) / 10)
    assert np.mean(overlap) >= 0.8, overlap
