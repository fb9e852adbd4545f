"""The one retry policy of the tasks: transient errors are retried with a growing countdown."""

from __future__ import annotations

from typing import Any

from django.db import OperationalError

# Errors worth retrying: the database busy or briefly gone, storage hiccups.
TRANSIENT = (OperationalError, OSError, ConnectionError)


def retry_later(task: Any, exc: Exception) -> Exception:
    """Retry a task after a transient error, backing off 1, 2, 4 … up to 60 s."""
    return task.retry(exc=exc, countdown=min(2**task.request.retries, 60))  # type: ignore[no-any-return]
