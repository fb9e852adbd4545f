"""gunicorn settings shared by `manage.py serve` and the production container."""

import os
import threading

threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Build the backbone in the background so the first search does not pay for it."""

    def _warm() -> None:
        try:
            from gallery.pipeline import current_backbone

            current_backbone()
        except Exception as exc:  # the first search will report it
            worker.log.warning("backbone warm-up failed: %s", exc)

    threading.Thread(target=_warm, daemon=True).start()
