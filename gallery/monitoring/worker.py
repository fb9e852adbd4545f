"""Celery's side: the request id travels in the headers of every task queued while a
request is served and is set again around the task in the worker; each task's duration,
failures and retries are recorded; each worker serves its metrics on its own port.

The worker runs with the solo pool (`manage.py serve`, docker-compose), so tasks run in
the process that serves the metrics. The exporter applies the same access rule as the web
process's /metrics (gallery/monitoring/access.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from celery import signals
from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from gallery.monitoring import metrics
from gallery.monitoring.access import Access, metrics_access
from gallery.monitoring.logs import request_id_var

log = logging.getLogger(__name__)

HEADER = "x_request_id"

# Tasks running in this process: id → (start, the context token to restore).
_running: dict[str, tuple[float, Any]] = {}


def _task_name(task: Any) -> str:
    return str(getattr(task, "name", None) or "unknown")


def _stamp_request_id(sender: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    rid = request_id_var.get()
    if rid and headers is not None and HEADER not in headers:
        headers[HEADER] = rid


def _task_started(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    # Queued from a request: its id; run eagerly inside one: the id already set.
    rid = getattr(request, HEADER, None) or request_id_var.get()
    token = request_id_var.set(rid)
    if task_id:
        _running[task_id] = (time.perf_counter(), token)


def _task_finished(sender: Any = None, task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    started = _running.pop(task_id or "", None)
    if started is None:
        return
    start, token = started
    metrics.task_duration.labels(task=_task_name(task), state=str(state or "UNKNOWN")).observe(time.perf_counter() - start)
    try:
        request_id_var.reset(token)
    except ValueError:  # set in another context (never with the solo pool); leave it
        request_id_var.set(None)


def _task_failed(sender: Any = None, **_: Any) -> None:
    metrics.task_failures.labels(task=_task_name(sender)).inc()


def _task_retried(sender: Any = None, **_: Any) -> None:
    metrics.task_retries.labels(task=_task_name(sender)).inc()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not logged
        pass


def exporter_app(conf: dict[str, Any]) -> Any:
    """The worker's metrics as a WSGI application, behind the metrics access rule."""
    serve = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        access = metrics_access(
            authorization=environ.get("HTTP_AUTHORIZATION", ""), remote_addr=environ.get("REMOTE_ADDR", ""), conf=conf
        )
        if access is not Access.ALLOWED:
            status = "403 Forbidden" if access is Access.WRONG_TOKEN else "404 Not Found"
            start_response(status, [("Content-Type", "text/plain")])
            return [status.encode() + b"\n"]
        return serve(environ, start_response)

    return app


def start_exporter(*, host: str, port: int, conf: dict[str, Any]) -> ThreadingWSGIServer | None:
    """Serve this worker's metrics on host:port from a daemon thread; None when the port is
    taken (a second worker on the same host) or off."""
    if port <= 0:
        return None
    try:
        server = make_server(host, port, exporter_app(conf), ThreadingWSGIServer, handler_class=_QuietHandler)
    except OSError as exc:
        log.warning("worker metrics not served on %s:%s: %s", host, port, exc)
        return None
    threading.Thread(target=server.serve_forever, name="metrics-exporter", daemon=True).start()
    log.info("worker metrics on http://%s:%s/metrics", host, server.server_port)
    return server


_exporter_started = threading.Event()


def _worker_started(sender: Any = None, **_: Any) -> None:
    from django.conf import settings

    if _exporter_started.is_set():
        return
    _exporter_started.set()
    conf = settings.MONITORING
    start_exporter(host=conf["WORKER_METRICS_HOST"], port=int(conf["WORKER_METRICS_PORT"]), conf=conf)


def connect() -> None:
    """Connect the handlers (every process: the web process publishes, workers run)."""
    signals.before_task_publish.connect(_stamp_request_id, dispatch_uid="monitoring.stamp_request_id", weak=False)
    signals.task_prerun.connect(_task_started, dispatch_uid="monitoring.task_started", weak=False)
    signals.task_postrun.connect(_task_finished, dispatch_uid="monitoring.task_finished", weak=False)
    signals.task_failure.connect(_task_failed, dispatch_uid="monitoring.task_failed", weak=False)
    signals.task_retry.connect(_task_retried, dispatch_uid="monitoring.task_retried", weak=False)
    # Whichever comes first after this module is connected: the worker's start, or its
    # being ready (connected to the broker).
    signals.worker_init.connect(_worker_started, dispatch_uid="monitoring.worker_init", weak=False)
    signals.worker_ready.connect(_worker_started, dispatch_uid="monitoring.worker_ready", weak=False)
