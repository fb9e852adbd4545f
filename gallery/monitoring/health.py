"""Liveness and readiness of a web process.

Ready means: the database answers, the broker answers, the catalog's backbone is built in
this process and its search index is loaded. Building the backbone and loading the index
take seconds, so they happen on a background thread (started with the web server, or by
the first readiness probe); until they are done the process says "loading" at once rather
than making a search wait. Results are kept for READY_CACHE_SECONDS, so a flood of probes
costs one database query and one broker round trip per interval.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connections

log = logging.getLogger(__name__)

OK, FAILED, LOADING = "ok", "failed", "loading"
CHECKS = ("database", "broker", "backbone", "index")
# The broker gets this long to answer a probe or a scrape.
BROKER_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(state == OK for state in self.checks.values())

    @property
    def failing(self) -> list[str]:
        return [name for name, state in self.checks.items() if state != OK]


@dataclass
class _WarmUp:
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    index_loaded: bool = False
    error: str = ""


_warm = _WarmUp()
_cache_lock = threading.Lock()
_cached: tuple[float, Readiness] | None = None


def build_backbones() -> None:
    """Build the configured and the catalog's backbone and the query path in this process. TensorFlow holds
    the interpreter lock for seconds while it loads and traces a network, so the web server
    does this before it listens: no request waits behind it."""
    from gallery.catalog import pipeline
    from gallery.search.selectors import active_space

    try:
        pipeline.current_backbone()
        searched = pipeline.backbone_named(active_space().backbone)
        # The query path's runtime (its conversion holds the interpreter lock for seconds too).
        log.debug("search photos run on %s", pipeline.query_runtime(searched))
    except Exception as exc:  # the warm-up tries again, and readiness says so meanwhile
        log.warning("backbone not built at start: %s: %s", type(exc).__name__, exc)
    finally:
        connections.close_all()


def warm_up() -> None:
    """Build the catalog's backbone and load its search index in this process."""
    from gallery.catalog import pipeline
    from gallery.search.index import space_index
    from gallery.search.selectors import active_space

    try:
        pipeline.current_backbone()
        space = active_space()
        pipeline.backbone_named(space.backbone)
        space_index(backbone=space.backbone, reduction=space.reduction)
        _warm.index_loaded = True
        _warm.error = ""
    except Exception as exc:  # the next probe tries again; the first search reports it
        _warm.error = f"{type(exc).__name__}: {exc}"
        log.warning("warm-up failed: %s", _warm.error)
    finally:
        connections.close_all()


def start_warm_up() -> None:
    """Warm up on a background thread, unless one is running."""
    with _warm.lock:
        if _warm.thread is not None and _warm.thread.is_alive():
            return
        _warm.thread = threading.Thread(target=warm_up, name="warm-up", daemon=True)
        _warm.thread.start()


def forget() -> None:
    """Drop the cached readiness (and the warm-up state), as a new process would start."""
    global _cached
    with _cache_lock:
        _cached = None
    _warm.index_loaded = False


def check_database() -> str:
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return OK
    except Exception as exc:
        log.warning("readiness: database check failed: %s", exc)
        return FAILED


def queue_depths() -> dict[str, int]:
    """Messages waiting in each lane's queue, read from the broker (raises when it does not answer)."""
    from kombu.exceptions import ChannelError

    from imagesearch.celery import app

    lanes = [q.name for q in settings.CELERY_TASK_QUEUES]
    depths: dict[str, int] = {}
    options = {**app.conf.broker_transport_options, "socket_timeout": BROKER_TIMEOUT_SECONDS}
    url = settings.CELERY_BROKER_URL
    with app.connection_for_read(url=url, connect_timeout=BROKER_TIMEOUT_SECONDS, transport_options=options) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_SECONDS)
        channel = conn.default_channel
        for lane in lanes:
            try:
                depths[lane] = int(channel.queue_declare(queue=lane, passive=True).message_count)
            except ChannelError:  # a queue nothing was ever sent to does not exist yet
                depths[lane] = 0
                channel = conn.channel()
    return depths


def check_broker() -> str:
    try:
        queue_depths()
        return OK
    except Exception as exc:
        log.warning("readiness: broker check failed: %s", exc)
        return FAILED


def check_backbone_and_index() -> tuple[str, str]:
    """Whether this process has the catalog's backbone built and its index loaded; starts
    the warm-up when it has not."""
    from gallery.catalog import pipeline
    from gallery.search.index import catalog_index
    from gallery.vision.backbones import backbone_loaded

    try:
        name = pipeline.catalog_state().backbone
    except Exception as exc:
        log.warning("readiness: catalog state unreadable: %s", exc)
        return FAILED, FAILED
    backbone = OK if backbone_loaded(name, resnet50_weights=settings.IMAGESEARCH["RESNET50_WEIGHTS"] or None) else LOADING
    index = OK if (_warm.index_loaded or catalog_index.loaded) else LOADING
    if LOADING in (backbone, index):
        start_warm_up()
        if _warm.error:
            return (FAILED if backbone == LOADING else backbone), (FAILED if index == LOADING else index)
    return backbone, index


def readiness() -> Readiness:
    """The readiness of this process, from checks at most READY_CACHE_SECONDS old."""
    global _cached
    max_age = float(settings.MONITORING["READY_CACHE_SECONDS"])
    now = time.monotonic()
    with _cache_lock:
        if _cached is not None and now - _cached[0] < max_age:
            return _cached[1]
        database = check_database()
        broker = check_broker()
        backbone, index = check_backbone_and_index() if database == OK else (FAILED, FAILED)
        result = Readiness({"database": database, "broker": broker, "backbone": backbone, "index": index})
        _cached = (now, result)
        return result
