"""/healthz, /readyz and /metrics. Cheap, never throttled, and telling an anonymous client
no more than each check's name and state."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gallery.monitoring.access import Access, metrics_access
from gallery.monitoring.collectors import CatalogCollector
from gallery.monitoring.health import readiness

SAFE_METHODS = ("GET", "HEAD")


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def healthz(request: HttpRequest) -> HttpResponse:
    """The process is alive and serving (no database, no broker)."""
    if request.method not in SAFE_METHODS:
        return HttpResponseNotAllowed(SAFE_METHODS)
    return _no_store(JsonResponse({"status": "alive"}))


def readyz(request: HttpRequest) -> HttpResponse:
    """200 when this process can serve searches now; 503 naming the checks that failed."""
    if request.method not in SAFE_METHODS:
        return HttpResponseNotAllowed(SAFE_METHODS)
    result = readiness()
    body: dict[str, Any] = {"status": "ready" if result.ready else "not ready", "checks": result.checks}
    if not result.ready:
        body["failing"] = result.failing
    response = JsonResponse(body, status=200 if result.ready else 503)
    # Not an error of this request: the failing check is logged once (gallery.monitoring.health)
    # and the access line says 503; Django's own "Service Unavailable" line would repeat it.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return _no_store(response)


class _WebRegistry:
    """The web processes' metrics and the catalog's, read at scrape time: this process's
    (the default registry) or, when the server runs several processes
    (imagesearch/webserver.py), all of theirs, summed from their shared folder."""

    def __init__(self) -> None:
        self.catalog = CatalogCollector()
        self.processes: CollectorRegistry | None = None
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.processes = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(self.processes)

    def collect(self):  # type: ignore[no-untyped-def]
        yield from (REGISTRY if self.processes is None else self.processes).collect()
        yield from self.catalog.collect()


_registry = CollectorRegistry(auto_describe=False)
_registry.register(_WebRegistry())  # type: ignore[arg-type]


def access_of(request: HttpRequest) -> Access:
    return metrics_access(
        authorization=request.META.get("HTTP_AUTHORIZATION", ""),
        remote_addr=request.META.get("REMOTE_ADDR", ""),
        user=getattr(request, "user", None),
        conf=settings.MONITORING,
    )


def metrics_response() -> HttpResponse:
    return _no_store(HttpResponse(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST))


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics, for the token, loopback clients and staff; 404 to anyone else
    (403 to a wrong token)."""
    if request.method not in SAFE_METHODS:
        return HttpResponseNotAllowed(SAFE_METHODS)
    access = access_of(request)
    if access is Access.WRONG_TOKEN:
        return _no_store(HttpResponse("Forbidden\n", status=403, content_type="text/plain"))
    if access is not Access.ALLOWED:
        return _no_store(HttpResponse("Not Found\n", status=404, content_type="text/plain"))
    return metrics_response()
