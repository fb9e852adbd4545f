"""The server in front of Django against hostile clients: slow or stalled connections
(slowloris, trickled bodies) and bodies larger than an endpoint takes (a 1 GB upload, an
endless chunked stream), against the real web server (imagesearch/webserver.py) on
loopback and against nginx with deploy/nginx.conf in front of it, with raw sockets."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml  # type: ignore[import-untyped]
from django.test import Client

from benchmarks.livestack import ROOT, Stack, free_port, live_stack
from imagesearch.body_limits import body_limit

CLIENT_TIMEOUT = 3  # seconds, set short for the stack below
GIB = 1 << 30
BLOCK = b"\x00" * 65536


# ------------------------------------------------------------------ the limits and the files


def test_each_endpoint_takes_its_photos_and_the_form(settings) -> None:  # type: ignore[no-untyped-def]
    per_file = settings.IMAGESEARCH["MAX_UPLOAD_BYTES"]
    form = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert form < body_limit("/") < form + 100_000
    assert body_limit("/accounts/login/") == body_limit("/")
    for one_photo in ("/search/", "/api/v1/search/", "/api/v1/images/", "/copyright/works/new/", "/admin/gallery/image/add/"):
        assert per_file + form < body_limit(one_photo) < per_file + form + 200_000, one_photo
    files = settings.DATA_UPLOAD_MAX_NUMBER_FILES
    assert files * per_file < body_limit("/upload/") < files * per_file + form + files * 100_000


def test_nginx_limits_are_the_applications(settings) -> None:  # type: ignore[no-untyped-def]
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    server_wide = re.search(r"^    client_max_body_size (\d+);", text, re.M)
    assert server_wide and int(server_wide.group(1)) == body_limit("/")
    locations = re.findall(r"location (=?) ?(/\S*) \{\s*client_max_body_size (\d+);", text)
    assert {path for _, path, _ in locations} == {
        "/upload/",
        "/search/",
        "/copyright/works/new/",
        "/admin/",
        "/api/v1/search/",
        "/api/v1/images/",
    }
    for _, path, limit in locations:
        assert int(limit) == body_limit(path), path
    for directive in ("client_header_timeout", "client_body_timeout"):
        assert re.search(rf"{directive} \d+s;", text), directive
    assert "proxy_request_buffering on;" in text


def test_compose_publishes_only_the_proxy(tmp_path: Path) -> None:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is required (the test command installs Debian's package)"
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    result = subprocess.run([exe, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    # Only the proxy faces the network; an operator tool (the optional Prometheus of the
    # monitoring profile) may publish on the host's loopback alone.
    outside = {name for name in published if any(not str(port).startswith("127.0.0.1:") for port in services[name]["ports"])}
    assert outside == {"proxy"}
    assert published <= {"proxy", "prometheus"}
    assert services.get("prometheus", {}).get("profiles", ["monitoring"]) == ["monitoring"]
    proxy = services["proxy"]
    assert any("deploy/nginx.conf:/etc/nginx/conf.d/default.conf" in str(v) for v in proxy["volumes"])
    address = proxy["networks"]["default"]["ipv4_address"]
    assert services["web"]["environment"]["IMAGESEARCH_TRUSTED_PROXY"] == address
    assert "imagesearch.webserver" in str(services["web"]["command"])


# ------------------------------------------------------------------ the middleware alone


@pytest.mark.django_db
def test_app_refuses_a_declared_oversized_body_before_reading(client: Client) -> None:
    api = client.post("/api/v1/search/", data=b"", content_type="multipart/form-data; boundary=x", CONTENT_LENGTH=str(GIB))
    assert api.status_code == 413
    assert api.json()["error"]["code"] == "too_large"
    page = client.post("/upload/", data=b"", content_type="multipart/form-data; boundary=x", CONTENT_LENGTH=str(GIB))
    assert page.status_code == 413 and "Request too large" in page.content.decode()


# ------------------------------------------------------------------ the real server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    var = tmp_path_factory.mktemp("front") / "var"
    tmp = var.parent / "tmp"
    tmp.mkdir()
    env = {
        "IMAGESEARCH_CLIENT_TIMEOUT": str(CLIENT_TIMEOUT),
        # Small limits, so a body over them is quick to send: 2 photos of 5 MB.
        "IMAGESEARCH_MAX_UPLOAD_MB": "5",
        "IMAGESEARCH_MAX_FILES_PER_UPLOAD": "2",
        "TMPDIR": str(tmp),
        "IMAGESEARCH_PCA_MIN_IMAGES": "1000",
    }
    with live_stack(var, **env) as running:  # type: ignore[arg-type]
        yield running


def _port(stack_url: str) -> int:
    return int(stack_url.rsplit(":", 1)[1])


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def _get_seconds(port: int, path: str = "/") -> tuple[float, bytes]:
    started = time.monotonic()
    with _connect(port) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return time.monotonic() - started, data


def _closed_by_server(s: socket.socket, deadline: float) -> bool:
    """Wait until the server closes `s` (end of stream or reset) or the deadline passes."""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([s], [], [], 0.5)
        if readable:
            try:
                if s.recv(65536) == b"":
                    return True
            except OSError:
                return True
    return False


def _stream(port: int, path: str, *, chunked: bool, pause_at: int = 0, limit_seconds: float = 120) -> tuple[int, bytes]:
    """POST an endless (chunked) or 1 GiB (Content-Length) body, generated as it goes, until
    the server answers or closes; with `pause_at`, rest a second once that much is sent.
    Returns the body bytes sent and the server's response."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {GIB}\r\n\r\n"
    block = b"%x\r\n%s\r\n" % (len(BLOCK), BLOCK) if chunked else BLOCK
    sent, response = 0, b""
    s = _connect(port)
    try:
        s.sendall(head.encode())
        s.setblocking(False)
        deadline = time.monotonic() + limit_seconds
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([s], [s] if chunked or sent < GIB else [], [], 1)
            if readable:
                try:
                    data = s.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                response += data
                if b"\r\n\r\n" in response and _complete(response):
                    break
            elif writable:
                if pause_at and sent >= pause_at:
                    time.sleep(1)
                    pause_at = 0
                try:
                    sent += s.send(block)
                except BlockingIOError:
                    pass
                except OSError:
                    s.setblocking(True)
                    s.settimeout(5)
                    try:
                        while data := s.recv(65536):
                            response += data
                    except OSError:
                        pass
                    break
    finally:
        s.close()
    return sent, response


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: (\d+)", head)
    return bool(length) and len(body) >= int(length.group(1))  # type: ignore[union-attr]


def _largest_open_file(pid: int) -> int:
    """The largest regular file the process holds open (temporary files included, deleted or not)."""
    largest = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir) if fd_dir.exists() else []:
        try:
            st = os.stat(fd_dir / fd)
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if (
            target.startswith("/")
            and "sqlite3" not in target
            and not target.endswith((".so", ".log"))
            and os.path.isfile(fd_dir / fd)
        ):
            largest = max(largest, st.st_size)
    return largest


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


@pytest.mark.slow
def test_slow_clients_neither_delay_pages_nor_stay_connected(stack: Stack) -> None:
    port = _port(stack.url)
    slow: list[socket.socket] = []
    for i in range(200):
        s = _connect(port)
        if i % 4:  # half a request: the request line and one header, then nothing
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        else:  # a body announced and then trickled
            s.sendall(
                b"POST /api/v1/search/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n\xff"
            )
        slow.append(s)
    opened = time.monotonic()

    def trickle() -> None:  # one more byte each 10 s on every trickling socket
        while time.monotonic() - opened < 30:
            time.sleep(10)
            for s in slow[::4]:
                with contextlib.suppress(OSError):
                    s.send(b"\xd8")

    threading.Thread(target=trickle, daemon=True).start()
    timings = []
    for _ in range(5):
        seconds, response = _get_seconds(port)
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        timings.append(seconds)
    print(f"GET / with 200 slow sockets open: median {statistics.median(timings):.3f} s, max {max(timings):.3f} s")
    assert max(timings) < 1.0, timings

    # Each slow socket is closed by the server once it has been silent for the timeout.
    deadline = opened + CLIENT_TIMEOUT * 1.25 + 15
    closed = [_closed_by_server(s, deadline) for s in slow]
    print(f"{sum(closed)} of 200 slow sockets closed by the server after {time.monotonic() - opened:.1f} s")
    assert all(closed)
    for s in slow:
        s.close()
    assert requests.get(stack.url + "/", timeout=10).status_code == 200


@pytest.mark.slow
def test_a_body_trickled_just_fast_enough_never_to_fall_silent_is_cut_off(stack: Stack) -> None:
    port = _port(stack.url)
    tricklers = []
    for _ in range(20):
        s = _connect(port)
        s.sendall(
            b"POST /api/v1/search/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
        )
        tricklers.append(s)
    opened = time.monotonic()
    closed: set[int] = set()
    # One byte every half second: never silent for the timeout, far under the minimum rate.
    while len(closed) < len(tricklers) and time.monotonic() - opened < CLIENT_TIMEOUT * 2 + 20:
        for i, s in enumerate(tricklers):
            if i in closed:
                continue
            try:
                s.send(b"x")
            except OSError:
                closed.add(i)
                continue
            readable, _, _ = select.select([s], [], [], 0)
            if readable:
                try:
                    if s.recv(65536) == b"":
                        closed.add(i)
                except OSError:
                    closed.add(i)
        time.sleep(0.5)
    took = time.monotonic() - opened
    print(f"{len(closed)} of {len(tricklers)} trickling sockets cut off after {took:.1f} s")
    assert len(closed) == len(tricklers)
    assert took > CLIENT_TIMEOUT  # not before the grace the timeout gives
    for s in tricklers:
        s.close()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/api/v1/search/", "/upload/"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length-1GiB", "chunked-endless"])
def test_oversized_bodies_are_refused_after_reading_at_most_the_limit(stack: Stack, path: str, chunked: bool) -> None:
    limit = _stack_limit(stack, path)
    tmp, media = Path(stack.env["TMPDIR"]), stack.var / "media"
    before = _tree_bytes(tmp) + _tree_bytes(media)
    largest = {"bytes": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for pid in stack.web_pids():  # whichever web process reads the body
                largest["bytes"] = max(largest["bytes"], _largest_open_file(pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # A pause just under the limit, so the watcher sees what the server holds by then.
        sent, response = _stream(_port(stack.url), path, chunked=chunked, pause_at=limit - 1024 * 1024)
    finally:
        done.set()
        watcher.join()
    head, _, body = response.partition(b"\r\n\r\n")
    print(f"{path} {'chunked' if chunked else 'Content-Length 1 GiB'}: limit {limit} B, the client sent {sent} B, "
          f"largest file the server held open {largest['bytes']} B; answer {head.splitlines()[0] if head else b'none'!r}")  # fmt: skip
    assert head.startswith(b"HTTP/1.1 413"), response[:300]
    if path.startswith("/api/"):
        assert json.loads(body)["error"]["code"] == "too_large"
    else:
        assert b"Request too large" in body
    # What the client got into the connection: at most the limit plus what socket buffers hold.
    assert sent <= limit + 8 * 1024 * 1024
    assert largest["bytes"] <= limit
    if chunked:  # buffered to a temporary file on its way, as far as the limit, then dropped
        assert largest["bytes"] > 0
    assert _tree_bytes(tmp) + _tree_bytes(media) - before < 1024 * 1024
    assert requests.get(stack.url + "/", timeout=10).status_code == 200


def _stack_limit(stack: Stack, path: str) -> int:
    code = f"from imagesearch.body_limits import body_limit; print(body_limit({path!r}))"
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=stack.env, capture_output=True, text=True, check=True
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ nginx in front (docker-compose's shape)


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


@pytest.fixture(scope="module")
def nginx(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    assert NGINX, "nginx is required (scripts/bootstrap.sh --dev installs Debian's package)"
    home = tmp_path_factory.mktemp("nginx")
    port = free_port()
    server = (ROOT / "deploy" / "nginx.conf").read_text()
    server = server.replace("server web:8000;", f"server 127.0.0.1:{_port(stack.url)};")
    server = server.replace("listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;")
    server = re.sub(r"(client_(header|body)_timeout) \d+s;", rf"\1 {CLIENT_TIMEOUT}s;", server)
    temp = "".join(f"    {kind}_temp_path {home}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (home / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\npid {home}/nginx.pid;\nerror_log {home}/error.log;\nworker_processes 1;\n"
        f"events {{ worker_connections 2048; }}\nhttp {{\n    access_log off;\n{temp}{server}\n}}\n"
    )
    out = open(home / "out.log", "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([NGINX, "-p", str(home), "-c", str(home / "nginx.conf")], stderr=subprocess.STDOUT, stdout=out)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start: " + (home / "out.log").read_text() + (home / "error.log").read_text())
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow
def test_nginx_cuts_off_slow_clients_and_keeps_pages_fast(nginx: int) -> None:
    slow = []
    for i in range(200):
        s = _connect(nginx)
        s.sendall(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            if i % 4
            else b"POST /search/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nx"
        )
        slow.append(s)
    opened = time.monotonic()
    timings = [_get_seconds(nginx)[0] for _ in range(5)]
    print(f"through nginx, GET / with 200 slow sockets open: median {statistics.median(timings):.3f} s, max {max(timings):.3f} s")
    assert max(timings) < 1.0, timings
    closed = [_closed_by_server(s, opened + CLIENT_TIMEOUT + 15) for s in slow]
    print(f"nginx closed {sum(closed)} of 200 slow sockets after {time.monotonic() - opened:.1f} s")
    assert all(closed)
    for s in slow:
        s.close()


@pytest.mark.slow
@pytest.mark.parametrize(("path", "chunked"), [("/api/v1/search/", False), ("/api/v1/search/", True), ("/upload/", False)])
def test_nginx_refuses_oversized_bodies(nginx: int, path: str, chunked: bool) -> None:
    sent, response = _stream(nginx, path, chunked=chunked)
    head, _, body = response.partition(b"\r\n\r\n")
    print(f"through nginx {path} {'chunked' if chunked else 'Content-Length 1 GiB'}: the client sent {sent} B; {head.splitlines()[0] if head else b'none'!r}")  # fmt: skip
    assert head.startswith(b"HTTP/1.1 413"), response[:300]
    assert sent <= body_limit(path) + 8 * 1024 * 1024
    if path.startswith("/api/"):
        assert json.loads(body)["error"]["code"] == "too_large"
