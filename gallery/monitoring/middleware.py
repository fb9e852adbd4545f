"""Middleware: a request id, one access-log line and the latency of every request; the
probes answered before the host check.

The request id is the incoming X-Request-ID when it is sane, else a new one; it is
returned in the X-Request-ID response header, appears in every log line written while the
request is served, and travels with the tasks the request queues (gallery/monitoring/worker.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import quote

from django.http import HttpRequest, HttpResponse

from gallery.monitoring import metrics
from gallery.monitoring.logs import request_id_from, request_id_var

access_log = logging.getLogger("imagesearch.access")

PROBES = {"/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics"}
# Requests a path may not carry into the log as-is: control characters, spaces, non-ASCII.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
MAX_LOGGED_PATH = 300


def route_of(request: HttpRequest) -> str:
    """The URL name the request resolved to (bounded), never its path."""
    probe = getattr(request, "probe", None)
    if probe:
        return str(probe)
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    return match.view_name or match.route or "unnamed"


def client_of(request: HttpRequest) -> str:
    return str(request.META.get("REMOTE_ADDR", "-"))


class RequestLogMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        rid = request_id_from(request.META.get("HTTP_X_REQUEST_ID"))
        request.request_id = rid  # type: ignore[attr-defined]
        token = request_id_var.set(rid)
        start = time.perf_counter()
        try:
            response = self.get_response(request)
            elapsed = time.perf_counter() - start
            response["X-Request-ID"] = rid
            self._record(request, response, elapsed)
            return response
        finally:
            request_id_var.reset(token)

    def _record(self, request: HttpRequest, response: HttpResponse, elapsed: float) -> None:
        route = route_of(request)
        method = metrics.method_label(request.method)
        metrics.http_request_duration.labels(route=route, method=method).observe(elapsed)
        metrics.http_responses.labels(route=route, method=method, status=str(response.status_code)).inc()
        # Probes and scrapes arrive every few seconds: logged only when refused or failing.
        quiet = route in PROBES.values() and response.status_code < 400
        level = logging.DEBUG if quiet else logging.INFO
        if access_log.isEnabledFor(level):
            path = quote(request.path, safe=_PATH_SAFE)[:MAX_LOGGED_PATH]
            size = "-" if response.streaming else str(len(response.content))
            access_log.log(
                level,
                '%s "%s %s" %s %s %.1fms',
                client_of(request),
                method,
                path,
                response.status_code,
                size,
                elapsed * 1000,
            )


class ProbeMiddleware:
    """Answers /healthz and /readyz, and /metrics to token and loopback clients, before the
    host check and the HTTPS redirect: a container's health check and a scraper reach the
    process by its internal name over plain HTTP. Anyone else asking for /metrics goes on
    to the routed view, which serves staff signed in and refuses the rest."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info)
        if probe is None:
            return self.get_response(request)
        from gallery.monitoring import views
        from gallery.monitoring.access import Access

        request.probe = probe  # type: ignore[attr-defined]
        if probe == "healthz":
            return views.healthz(request)
        if probe == "readyz":
            return views.readyz(request)
        access = views.access_of(request)
        if access is Access.UNKNOWN:
            request.probe = None  # type: ignore[attr-defined]
            return self.get_response(request)  # perhaps staff: the session tells, in the routed view
        return views.metrics(request)
