"""The web server as several processes on one port (imagesearch/webserver.py): every
process answers, one that dies is replaced while the others keep answering, /metrics
counts the requests of all of them, and SIGTERM stops them all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from benchmarks.livestack import ROOT, child_pids, free_port

pytestmark = pytest.mark.slow


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    tmp: Path
    log: Path

    def children(self) -> list[int]:
        return child_pids(self.proc.pid)


def _wait(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _healthz_count(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=10).text  # loopback: allowed
    for line in text.splitlines():
        if line.startswith("imagesearch_http_responses_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if labels == {"route": "healthz", "method": "GET", "status": "200"}:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    var, tmp = tmp_path / "var", tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "imagesearch.settings", "IMAGESEARCH_VAR_DIR": str(var), "TMPDIR": str(tmp)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["IMAGESEARCH_CLIENT_TIMEOUT"] = "4"  # connections looked after each second
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    log = tmp_path / "web.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imagesearch.webserver", "--port", str(port), "--processes", "2", "--no-warm-up"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    srv = Server(proc, f"http://127.0.0.1:{port}", tmp, log)
    try:
        _wait(lambda: _answers(srv.url), 120, "the server to answer")
        yield srv
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for pid in srv.children():
            os.kill(pid, signal.SIGKILL)


def test_processes_share_the_port_survive_a_crash_and_stop_together(server: Server) -> None:
    assert len(server.children()) == 2
    metrics_dirs = list(server.tmp.glob("imagesearch-web-metrics-*"))
    assert len(metrics_dirs) == 1  # the processes' shared metric files

    before = _healthz_count(server.url)
    for _ in range(10):  # each on a new connection: either process may answer
        assert requests.get(server.url + "/healthz", headers={"Connection": "close"}, timeout=5).status_code == 200

    victim = server.children()[0]
    os.kill(victim, signal.SIGKILL)
    for _ in range(10):  # the other process answers meanwhile
        assert requests.get(server.url + "/healthz", headers={"Connection": "close"}, timeout=10).status_code == 200
    _wait(lambda: len(server.children()) == 2 and victim not in server.children(), 60, "a new process")
    # Every answer counted, whichever process gave it, the dead one's included.
    assert _healthz_count(server.url) - before == 20
    assert "starting another" in server.log.read_text()

    children = server.children()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=40) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert not metrics_dirs[0].exists()  # removed with the server
    assert not _answers(server.url)


def test_processes_stop_when_the_server_is_killed(server: Server) -> None:
    children = server.children()
    assert len(children) == 2
    server.proc.kill()  # no chance to stop them: they notice on their own
    server.proc.wait(timeout=10)
    _wait(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 30, "the processes to stop")
    assert not _answers(server.url)


def test_processes_that_keep_dying_stop_the_server(tmp_path: Path) -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "imagesearch.settings", "IMAGESEARCH_VAR_DIR": str(tmp_path / "var")}
    # A metrics folder that is not there: every process fails as it starts.
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "missing")
    proc = subprocess.run(
        [sys.executable, "-m", "imagesearch.webserver", "--port", str(free_port()), "--processes", "2", "--no-warm-up"],
        cwd=ROOT, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert b"stopping" in proc.stderr
