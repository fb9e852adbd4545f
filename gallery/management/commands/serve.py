"""Run the whole product locally: embedded broker, a Celery worker, and the web server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from imagesearch.broker import start_redis


class Command(BaseCommand):
    help = "Start the gallery at http://HOST:PORT with a worker (and the embedded broker when none is configured)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=os.environ.get("IMAGESEARCH_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("IMAGESEARCH_PORT", "8000")))
        parser.add_argument("--no-worker", action="store_true", help="do not start a Celery worker")

    def handle(self, *args: Any, **opts: Any) -> None:
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        children: list[tuple[str, subprocess.Popen[bytes]]] = []
        broker = settings.CELERY_BROKER_URL
        embedded = broker == f"redis+socket://{settings.EMBEDDED_REDIS_SOCKET}"
        try:
            if embedded:
                children.append(
                    ("broker", start_redis(socket=settings.EMBEDDED_REDIS_SOCKET, directory=settings.VAR_DIR / "redis"))
                )
                self.stdout.write(f"embedded Redis broker on {settings.EMBEDDED_REDIS_SOCKET}")
            # Fewer glibc malloc arenas: memory freed after a large decode goes back to the system.
            env = {"MALLOC_ARENA_MAX": "2", **os.environ, "CELERY_BROKER_URL": broker}
            if not opts["no_worker"]:
                # -q: no start-up banner; the worker's log lines say when it is ready.
                worker = [
                    sys.executable, "-m", "celery", "-A", "imagesearch", "-q", "worker",
                    "--pool=solo", "--loglevel=INFO", "-n", "worker@%h", "-Q", "interactive,bulk", "--beat",
                    "--schedule", str(settings.VAR_DIR / "celerybeat-schedule"),
                ]  # fmt: skip
                children.append(("worker", subprocess.Popen(worker, env=env)))
            # waitress (imagesearch/webserver.py): slow clients cost a socket, not a thread.
            web = [sys.executable, "-m", "imagesearch.webserver", "--host", opts["host"], "--port", str(opts["port"])]
            children.append(("web", subprocess.Popen(web, env=env)))
            self.stdout.write(self.style.SUCCESS(f"gallery at http://{opts['host']}:{opts['port']}/  (Ctrl+C stops)"))
            self._supervise(children)
        finally:
            for _, proc in reversed(children):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for _, proc in reversed(children):
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def _supervise(self, children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        stop = {"flag": False}

        def _stop(signum: int, _frame: Any) -> None:
            stop["flag"] = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while not stop["flag"]:
            for name, proc in children:
                if proc.poll() is not None:
                    self.stderr.write(f"{name} exited with {proc.returncode}; stopping")
                    raise SystemExit(1)
            time.sleep(0.5)
