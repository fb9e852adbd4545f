"""Real processes on loopback for end-to-end tests and benchmarks: Redis, Celery workers and
the product's web server (imagesearch/webserver.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from imagesearch.broker import start_redis

ROOT = Path(__file__).resolve().parent.parent


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started that still run (Linux: /proc); none once it has exited."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    url: str
    var: Path
    env: dict[str, str]
    worker: subprocess.Popen[bytes]
    web: subprocess.Popen[bytes]
    logs: Path
    redis: subprocess.Popen[bytes] | None = None
    redis_port: int = 0
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Each worker's metrics port (IMAGESEARCH_WORKER_METRICS_PORT), by worker name.
    metrics_ports: dict[str, int] = field(default_factory=dict)

    def web_pids(self) -> list[int]:
        """The web server's process and the processes it runs (one per core by default)."""
        return [self.web.pid, *child_pids(self.web.pid)]

    def stop_broker(self) -> None:
        """Take the broker away (as if Redis went down)."""
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(timeout=20)

    def start_broker(self) -> None:
        """Bring the broker back on the same port, empty."""
        self.redis = start_redis(port=self.redis_port, directory=self.var / "redis", persist=False, executable=redis_executable())

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for name in ("worker.log", "web.log"):
            path = self.logs / name
            if path.exists():
                out.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def start_worker(self, name: str = "e2e", *, beat: bool = False) -> subprocess.Popen[bytes]:
        """Another Celery worker; with `beat`, it also runs the periodic sweep."""
        log = open(self.logs / "worker.log", "ab")  # noqa: SIM115 - owned by the process
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "imagesearch",
            "worker",
            "--pool=solo",
            "--loglevel=INFO",
            "-n",
            f"{name}@%h",
            "-Q",
            "interactive,bulk",
        ]
        if beat:
            args += ["--beat", "--schedule", str(self.var / "celerybeat-schedule")]
        self.metrics_ports[name] = free_port()
        return subprocess.Popen(
            args,
            cwd=ROOT,
            env={**self.env, "IMAGESEARCH_WORKER_METRICS_PORT": str(self.metrics_ports[name])},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def wait_workers_ready(self, names: list[str], timeout: float = 180) -> None:
        """Wait until each named worker has connected and said it is ready."""
        deadline = time.monotonic() + timeout
        host = socket.gethostname()
        while True:
            text = (self.logs / "worker.log").read_text(errors="replace")
            if all(f"{name}@{host} ready." in text for name in names):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers {names} did not start\n" + self.log_tail())
            time.sleep(0.3)

    def create_user(
        self, username: str, password: str, *, staff: bool = False, superuser: bool = False, groups: tuple[str, ...] = ()
    ) -> None:
        """An account in the running stack's database, optionally staff, superuser or in groups."""
        code = (
            "from django.contrib.auth import get_user_model; from django.contrib.auth.models import Group; "
            "U = get_user_model(); "
            f"u = U.objects.create_user({username!r}, password={password!r}); "
            f"u.is_staff = {staff or superuser!r}; u.is_superuser = {superuser!r}; u.save(); "
            f"[u.groups.add(Group.objects.get_or_create(name=g)[0]) for g in {list(groups)!r}]"
        )
        subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=self.env, check=True)

    def browser(self, username: str = "tester", password: str = "a long test password") -> Browser:
        """A browser signed in as a new ordinary user (uploading needs an account)."""
        self.create_user(username, password)
        browser = Browser(self.url)
        browser.login(username, password)
        return browser


def redis_executable() -> str | None:
    """The system's redis-server (installed by the test command) when present."""
    return shutil.which("redis-server")


@contextmanager
def live_stack(var: Path, *, beat: bool = False, workers: int = 1, **extra_env: str) -> Iterator[Stack]:
    """Redis, Celery workers (the first runs the periodic tasks when `beat`) and the web server on
    loopback. One worker is named `e2e`; several are `w1`, `w2`, ... on the same Redis."""
    logs = var / "logs"
    logs.mkdir(parents=True)
    redis_port = free_port()
    redis = start_redis(port=redis_port, directory=var / "redis", persist=False, executable=redis_executable())
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "imagesearch.settings",
        "IMAGESEARCH_VAR_DIR": str(var),
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "IMAGESEARCH_BACKBONE": "efficientnet_lite0",
        **extra_env,
    }
    env.pop("CELERY_TASK_ALWAYS_EAGER", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    web_port = free_port()
    stack = Stack(f"http://127.0.0.1:{web_port}", var, env, None, None, logs, redis, redis_port)  # type: ignore[arg-type]
    names = ["e2e"] if workers == 1 else [f"w{i}" for i in range(1, workers + 1)]
    stack.workers = [stack.start_worker(name, beat=beat and i == 0) for i, name in enumerate(names)]
    stack.worker = stack.workers[0]
    web_log = open(logs / "web.log", "ab")  # noqa: SIM115 - owned by the process
    stack.web = subprocess.Popen(
        [sys.executable, "-m", "imagesearch.webserver", "--host", "127.0.0.1", "--port", str(web_port)],
        cwd=ROOT, env=env, stdout=web_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        # The web server builds the backbone before it listens.
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(stack.url + "/", timeout=10).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            if time.monotonic() > deadline or stack.web.poll() is not None:
                raise RuntimeError("web server did not start\n" + stack.log_tail())
            time.sleep(0.3)
        yield stack
    finally:
        procs = [stack.web, stack.worker, *stack.workers, stack.redis]
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in procs:
            if proc is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


class Browser:
    """A requests session that speaks Django's CSRF protocol."""

    def __init__(self, url: str):
        self.url = url
        self.session = requests.Session()

    def _token(self, path: str) -> str:
        self.session.get(self.url + path, timeout=10)
        return str(self.session.cookies["csrftoken"])

    def login(self, username: str, password: str) -> None:
        token = self._token("/accounts/login/")
        response = self.session.post(
            self.url + "/accounts/login/",
            data={"csrfmiddlewaretoken": token, "username": username, "password": password, "next": "/"},
            timeout=30,
        )
        if "sessionid" not in self.session.cookies:
            raise RuntimeError(f"sign-in as {username} failed ({response.status_code})")

    def upload(self, paths: list[Path]) -> requests.Response:
        token = self._token("/upload/")
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
        return self.session.post(self.url + "/upload/", data={"csrfmiddlewaretoken": token}, files=files, timeout=60)

    def search_photo(self, name: str, data: bytes, *, token: str, timeout: float = 60) -> requests.Response:
        """The search page's form posted with a photo's bytes (the CSRF token fetched once by the caller)."""
        return self.session.post(
            self.url + "/search/",
            data={"csrfmiddlewaretoken": token, "metric": "cosine", "limit": "10"},
            files={"file": (name, data, "image/jpeg")},
            timeout=timeout,
        )

    def search(self, path: Path, *, metric: str = "cosine", limit: int = 5) -> requests.Response:
        token = self._token("/search/")
        return self.session.post(
            self.url + "/search/",
            data={"csrfmiddlewaretoken": token, "metric": metric, "limit": str(limit)},
            files={"file": (path.name, path.read_bytes(), "image/jpeg")},
            timeout=60,
        )

    def statuses(self, ids: list[int]) -> dict[int, str]:
        rows = self.session.get(self.url + "/images/status/", params={"ids": ",".join(map(str, ids))}, timeout=10).json()
        return {row["id"]: row["status"] for row in rows["images"]}

    def wait_ready(self, ids: list[int], timeout: float = 240) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while True:
            states = self.statuses(ids)
            if all(s in ("ready", "failed") for s in states.values()) and len(states) == len(ids):
                return states
            if time.monotonic() > deadline:
                return states
            time.sleep(0.5)


def upload_ids(response: requests.Response) -> list[int]:
    """The ids of the photos an upload form accepted (from the status page it redirects to)."""
    query = response.url.split("ids=", 1)
    return [int(i) for i in query[1].split(",") if i.isdigit()] if len(query) == 2 else []
