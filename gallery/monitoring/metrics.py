"""The product's metrics, in the process that records them (prometheus-client).

Only metric objects live here, so any domain may record into them without importing
another. Labels are bounded: routes are URL names, never raw paths; methods outside the
usual few count as "other"; tasks are the product's task names.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

http_request_duration = Histogram(
    "imagesearch_http_request_duration_seconds",
    "Time to answer a request, by route (URL name) and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
http_responses = Counter(
    "imagesearch_http_responses",
    "Responses, by route (URL name), method and status code.",
    ["route", "method", "status"],
)
search_stage = Histogram(
    "imagesearch_search_stage_seconds",
    "Time of each stage of a search: decode the query photo, embed it, search the index, hydrate the hits.",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
embeddings = Counter(
    "imagesearch_embeddings",
    "Images embedded by a backbone (catalog images in workers, query photos in web processes).",
    ["backbone"],
)
index_rebuilds = Counter(
    "imagesearch_search_index_rebuilds",
    "Full (re)loads of this process's in-memory search index.",
)
task_duration = Histogram(
    "imagesearch_task_duration_seconds",
    "Time a Celery task ran in this worker, by task name and final state.",
    ["task", "state"],
    buckets=TASK_BUCKETS,
)
task_failures = Counter("imagesearch_task_failures", "Celery tasks that raised, by task name.", ["task"])
task_retries = Counter("imagesearch_task_retries", "Celery tasks that asked to be retried, by task name.", ["task"])

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str | None) -> str:
    return method if method in METHODS else "other"


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time one stage of a search into the stage histogram."""
    start = time.perf_counter()
    try:
        yield
    finally:
        search_stage.labels(stage=name).observe(time.perf_counter() - start)
