"""Metrics read at scrape time in the web process: the catalog by status, pending copy
matches, each lane's queue depth in the broker, and this process's search index. Each
scrape costs two COUNT … GROUP BY queries and one broker round trip."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class CatalogCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from self._catalog()
        yield from self._broker()
        yield from self._index()

    def _catalog(self) -> Iterator[Metric]:
        from django.db.models import Count

        from gallery.catalog.models import Image
        from gallery.copyright.models import CopyMatch

        try:
            by_status = dict(Image.objects.order_by().values_list("status").annotate(n=Count("id")))
            pending = CopyMatch.objects.filter(status=CopyMatch.Status.PENDING).count()
        except Exception as exc:
            log.warning("metrics: the catalog could not be counted: %s", exc)
            return
        images = GaugeMetricFamily("imagesearch_images", "Catalog images by status.", labels=["status"])
        for status in Image.Status.values:
            images.add_metric([status], by_status.get(status, 0))
        yield images
        yield GaugeMetricFamily(
            "imagesearch_copy_matches_pending", "Copyright matches waiting for a reviewer's decision.", value=pending
        )

    def _broker(self) -> Iterator[Metric]:
        from gallery.monitoring.health import queue_depths

        up = GaugeMetricFamily("imagesearch_broker_up", "1 when the broker answered this scrape.")
        try:
            depths = queue_depths()
        except Exception as exc:
            log.warning("metrics: the broker did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        queued = GaugeMetricFamily("imagesearch_queue_depth", "Tasks waiting in each lane's queue.", labels=["lane"])
        for lane, depth in depths.items():
            queued.add_metric([lane], depth)
        yield queued

    def _index(self) -> Iterator[Metric]:
        from gallery.search.index import catalog_index

        try:
            catalog_index.catch_up()
        except Exception as exc:
            log.warning("metrics: the search index could not catch up with the catalog: %s", exc)
        yield GaugeMetricFamily(
            "imagesearch_search_index_vectors", "Vectors in this process's in-memory search index.", value=catalog_index.size()
        )
        yield GaugeMetricFamily(
            "imagesearch_search_index_loaded",
            "1 once this process has loaded its search index.",
            value=1 if catalog_index.loaded else 0,
        )
