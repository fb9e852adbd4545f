"""How the domains use Celery: the one retry policy of the tasks, and tasks looked up by
name when a service queues one (a service names its task; it does not import the module
that imports the service)."""

from __future__ import annotations

import threading
from typing import Any

from django.db import OperationalError

# Errors worth retrying: the database busy or briefly gone, storage hiccups.
TRANSIENT = (OperationalError, OSError, ConnectionError)


def retry_later(task: Any, exc: Exception) -> Exception:
    """Retry a task after a transient error, backing off 1, 2, 4 … up to 60 s."""
    return task.retry(exc=exc, countdown=min(2**task.request.retries, 60))  # type: ignore[no-any-return]


_loading = threading.Lock()


def task_named(name: str) -> Any:
    """The registered task `name` (e.g. "gallery.embed_image"), for queueing it."""
    from imagesearch.celery import app

    if name not in app.tasks:
        # Outside a worker, the domains' task modules load on first use, once: Celery hands
        # them to the first caller, so a second request arriving meanwhile would find
        # nothing left to load and the task not registered yet.
        with _loading:
            if name not in app.tasks:
                app.loader.import_default_modules()
    return app.tasks[name]
