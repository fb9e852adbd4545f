"""Several web processes on one socket: a process holding more connections than its share
leaves new ones to the others and closes kept-alive ones, so that 50 clients connecting at
once do not wait three times longer on one process than on the other."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from waitress.adjustments import Adjustments
from waitress.task import ThreadedTaskDispatcher

from imagesearch import webserver
from imagesearch.webserver import ConnectionShare, WebServer, bound_socket, process_count


def _app(environ, start_response):  # type: ignore[no-untyped-def]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


@pytest.fixture
def server() -> Iterator[WebServer]:
    """A server on its own shared socket, as one of two processes (slot 0); the other
    process's slot is set by each test."""
    sock = bound_socket("127.0.0.1", 0)
    adj = Adjustments(listen="127.0.0.1:0", threads=2, asyncore_use_poll=True, channel_timeout=5)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(2)
    sockinfo = (sock.family, sock.type, sock.proto, sock.getsockname())
    srv = WebServer(_app, map={}, _sock=sock, bind_socket=False, dispatcher=dispatcher, adj=adj, sockinfo=sockinfo)
    srv.share, srv.slot = ConnectionShare(2), 0
    srv.next_channel_cleanup = sys.maxsize  # the stand-in connections below are not channels
    yield srv
    srv.close()
    dispatcher.shutdown()


def _serve(srv: WebServer) -> threading.Thread:
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    return thread


def _get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\nok" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _connect(srv: WebServer) -> socket.socket:
    return socket.create_connection(cast(socket.socket, srv.socket).getsockname()[:2], timeout=5)


def _held(srv: WebServer) -> dict[int, Any]:
    """The connections the server holds, by descriptor."""
    return cast(dict[int, Any], srv.active_channels)


def _share(srv: WebServer) -> ConnectionShare:
    assert srv.share is not None
    return srv.share


def test_a_process_with_fewer_connections_takes_the_next_one(server: WebServer, monkeypatch: pytest.MonkeyPatch) -> None:
    held = [_connect(server) for _ in range(2)]
    server.handle_accept()
    server.handle_accept()
    assert len(_held(server)) == 2  # alone so far: it took both
    _share(server).set(1, 0)  # the other process now serves, holding none
    waiting = _connect(server)
    now = [100.0]
    monkeypatch.setattr(webserver.time, "monotonic", lambda: now[0])
    step = webserver.DEFERRAL_GAP / 2  # called again and again while the connection waits
    while now[0] + step < 100.0 + webserver.ACCEPT_FALLBACK:
        server.handle_accept()  # left to the other process
        assert len(_held(server)) == 2
        now[0] += step
    now[0] += step  # nobody took it: a stuck process cannot hold it back
    server.handle_accept()
    assert len(_held(server)) == 3
    another = _connect(server)
    now[0] += 1.0  # a new connection waits its own time
    server.handle_accept()
    assert len(_held(server)) == 3
    _share(server).set(1, 5)  # the other process is the busier one now
    server.handle_accept()
    assert len(_held(server)) == 4
    for s in (*held, waiting, another):
        s.close()


def test_every_turn_of_the_loop_records_the_connections_held(server: WebServer) -> None:
    _held(server).update({-1 - i: object() for i in range(10)})
    assert _share(server).fewest() == ConnectionShare.IDLE  # neither process has counted yet
    assert server.readable()
    assert _share(server).slots[0] == 10 and _share(server).fewest() == 10


def test_a_busier_process_closes_kept_alive_connections(server: WebServer) -> None:
    _serve(server)
    _share(server).set(1, 0)
    first = _connect(server)
    reply = _get(first)
    assert reply.startswith(b"HTTP/1.1 200") and b"Connection: close" not in reply  # 1 ≤ 0 + slack
    second = _connect(server)
    reply = _get(second)  # now 2 connections here, none there
    assert reply.startswith(b"HTTP/1.1 200") and b"Connection: close" in reply
    assert second.recv(10) == b""  # closed: the client connects again, to the other process
    _share(server).set(1, 10)
    third = _connect(server)
    reply = _get(third)
    assert b"Connection: close" not in reply
    assert _get(third).startswith(b"HTTP/1.1 200")  # still open
    for s in (first, second, third):
        s.close()


def test_one_process_alone_never_defers_or_closes() -> None:
    sock = bound_socket("127.0.0.1", 0)
    adj = Adjustments(listen="127.0.0.1:0", threads=1, asyncore_use_poll=True)
    sockinfo = (sock.family, sock.type, sock.proto, sock.getsockname())
    srv = WebServer(_app, map={}, _sock=sock, bind_socket=False, adj=adj, sockinfo=sockinfo)
    srv.next_channel_cleanup = sys.maxsize
    _held(srv).update({-1 - i: object() for i in range(50)})
    assert srv.readable() and not srv.over_share()
    waiting = socket.create_connection(sock.getsockname()[:2], timeout=5)
    srv.handle_accept()
    assert len(_held(srv)) == 51
    waiting.close()
    srv.close()


def test_the_shared_socket_refuses_clients_until_a_process_serves() -> None:
    sock = bound_socket("127.0.0.1", 0)
    with pytest.raises(ConnectionRefusedError):  # at once, not after waiting for a process still loading
        socket.create_connection(sock.getsockname()[:2], timeout=5)
    sock.close()


def test_process_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webserver.os, "sched_getaffinity", lambda _pid: set(range(2)))
    assert process_count(0) == 2  # one per core
    monkeypatch.setattr(webserver.os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert process_count(0) == webserver.MAX_AUTO_PROCESSES
    assert process_count(3) == 3
    with pytest.raises(ValueError, match="one per core"):
        process_count(-1)


def test_connection_counts_are_shared_with_forked_processes() -> None:
    import os

    share = ConnectionShare(2)
    pid = os.fork()
    if pid == 0:
        share.set(1, 7)
        os._exit(0)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + 5
    while share.slots[1] != 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert share.fewest() == 7
