"""Every process's in-memory index follows catalog changes made by any process."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.catalog import services as catalog_services
from gallery.catalog import tasks as catalog_tasks
from gallery.catalog.models import Embedding, Image
from gallery.search.index import CatalogIndex
from gallery.search.models import CatalogState

pytestmark = pytest.mark.django_db


def _ready_image(n: int, vector: np.ndarray) -> Image:
    image = Image.objects.create(
        file=f"originals/{n}.jpg", checksum=f"{n:064d}", size=1, width=1, height=1, format="JPEG", status=Image.Status.READY
    )
    Embedding.objects.create(
        image=image, backbone="efficientnet_lite0", dim=len(vector), vector=vector.astype(np.float32).tobytes()
    )
    return image


@pytest.fixture
def catalog(settings) -> tuple[list[Image], np.ndarray]:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "ANN_THRESHOLD": 150, "ANN_BACKGROUND": False, "DBA_K": 0}
    CatalogState.objects.create(pk=1, backbone="efficientnet_lite0")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 16))[rng.integers(0, 8, 200)] * 3 + rng.normal(size=(200, 16))).astype(np.float32)
    return [_ready_image(i, v) for i, v in enumerate(x)], x


def _top(index: CatalogIndex, query: np.ndarray, k: int = 5) -> list[int]:
    tiered = index.get(backbone="efficientnet_lite0", reduction=None)
    assert tiered is not None
    return [h.id for h in tiered.search(query, k=k)]


@pytest.mark.parametrize("threshold", [150, 10_000], ids=["approximate", "exact"])
def test_a_change_in_one_process_reaches_the_other_on_its_next_query(catalog, settings, threshold: int) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "ANN_THRESHOLD": threshold}
    images, x = catalog
    web1, web2 = CatalogIndex(), CatalogIndex()  # two web processes' indexes
    first = _top(web1, x[3])
    assert first[0] == images[3].pk and _top(web2, x[3]) == first
    assert web1.get(backbone="efficientnet_lite0", reduction=None).approximate == (threshold == 150)  # type: ignore[union-attr]

    catalog_services.images_set_visibility(image_ids=[images[3].pk], visibility="hidden")
    catalog_services.images_delete(image_ids=[first[1]])
    for web in (web1, web2):
        assert not {images[3].pk, first[1]} & set(_top(web, x[3], k=20))

    newcomer = _ready_image(999, x[3] * 1.01)  # a new upload, embedded by a worker
    assert _top(web1, x[3])[0] == newcomer.pk and _top(web2, x[3])[0] == newcomer.pk

    catalog_services.images_set_visibility(image_ids=[images[3].pk], visibility="published")
    assert images[3].pk in _top(web2, x[3], k=2)

    Image.objects.filter(pk=newcomer.pk).update(status=Image.Status.PENDING)  # re-embedding: not searchable meanwhile
    assert newcomer.pk not in _top(web1, x[3], k=20)


def test_pruning_deletes_old_entries_and_an_index_behind_the_pruned_ones_reloads(catalog, settings) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from django.utils import timezone

    from gallery.models import CatalogChange

    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "ANN_THRESHOLD": 10_000, "CHANGE_LOG_RETENTION_SECONDS": 3600}
    images, x = catalog
    idle, busy = CatalogIndex(), CatalogIndex()
    assert _top(idle, x[3])[0] == images[3].pk and _top(busy, x[3])[0] == images[3].pk

    catalog_services.images_set_visibility(image_ids=[images[3].pk], visibility="hidden")
    assert images[3].pk not in _top(busy, x[3], k=20)  # this process has read the change; `idle` has not
    newcomer = _ready_image(999, x[3] * 1.01)
    old = timezone.now() - timedelta(hours=2)
    CatalogChange.objects.update(at=old)  # every entry so far is older than the retention
    recent = CatalogChange.objects.create(image_id=images[5].pk)  # and one is not
    assert catalog_tasks.prune_catalog_changes.delay().get() >= 2
    left = list(CatalogChange.objects.order_by("pk").values_list("pk", "pruned_through"))
    assert left[0] == (recent.pk, None) and len(left) == 2 and left[1][1] == recent.pk - 1
    assert catalog_tasks.prune_catalog_changes.delay().get() == 0  # nothing old is left

    # The idle process never read the pruned entries: it reloads instead of missing them.
    for web in (idle, busy):
        top = _top(web, x[3], k=20)
        assert images[3].pk not in top and top[0] == newcomer.pk


def test_hiding_or_deleting_an_image_reaches_the_change_log_after_every_migration(catalog) -> None:  # type: ignore[no-untyped-def]
    """The log's image triggers survive migrations that rebuild the image table: a hidden
    or deleted image must leave every process's index on its next query."""
    from gallery.models import CatalogChange

    images, _ = catalog
    before = CatalogChange.objects.count()
    catalog_services.images_set_visibility(image_ids=[images[0].pk], visibility="hidden")
    Image.objects.filter(pk=images[1].pk).delete()
    changed = set(CatalogChange.objects.order_by("id")[before:].values_list("image_id", flat=True))
    assert {images[0].pk, images[1].pk} <= changed
