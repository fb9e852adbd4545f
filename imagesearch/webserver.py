"""The web server: waitress, which reads each request whole in its I/O loop before a
worker thread sees it, so slow or stalled clients cost a socket, never a thread.

On top of plain waitress, a request body is held to its path's limit
(imagesearch/body_limits.py) while it arrives: a declared Content-Length over the limit
is refused before one byte of the body is read, a chunked body as soon as it passes the
limit. The refused request still reaches Django, with no body, so the answer is the
product's own 413 (the API's JSON error, the error page); the rest of the body is
discarded unread and the connection closed. A connection that sends nothing for
CLIENT_TIMEOUT seconds (half a request, a stalled body, an idle keep-alive) is closed, and
so is one whose request, after CLIENT_TIMEOUT seconds, has arrived at under CLIENT_MIN_RATE
bytes a second (a body trickled just fast enough never to fall silent).

With more than one process (`--processes`, settings.WEB_SERVER["PROCESSES"]; by default
one per core, up to MAX_AUTO_PROCESSES), a light parent binds the socket and forks the
processes before any of them loads Django, TensorFlow or the index; each accepts from the
shared socket, and one holding more connections than the others leaves new ones to them
(`ConnectionShare`, `WebServer.handle_accept`, `BalancingTask`). Python code holds
one core per process at most, so one process cannot fill a machine. The parent restarts a
process that dies (and gives up when they keep dying at once), passes SIGTERM on, and
points prometheus-client at a shared folder so that /metrics, answered by any process,
counts every process's requests.

Run it with `python -m imagesearch.webserver --host 0.0.0.0 --port 8000`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import logging.config
import mmap
import os
import shutil
import signal
import socket
import tempfile
import time
from typing import Any, cast

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher, WSGITask

log = logging.getLogger("imagesearch.webserver")

# How long a refused upload's remaining input is drained before the connection closes.
LINGER_SECONDS = 2.0
# Processes by default: one per core, at most this many (each holds its own backbone and
# search index in memory).
MAX_AUTO_PROCESSES = 4
# A process that dies is started again, unless CRASH_LIMIT of them died within CRASH_WINDOW
# seconds: then something is wrong at start (settings, database) and the server stops.
CRASH_LIMIT = 5
CRASH_WINDOW = 60.0
# A process holding more than ACCEPT_SLACK connections over the process holding fewest
# leaves new connections to that one (keep-alive connections stay with the process that
# accepted them: 50 clients connecting at once were otherwise split 13 / 37, the second
# process's searches waiting three times longer); one waiting ACCEPT_FALLBACK seconds is
# taken anyway, so a stuck process cannot hold connections back.
ACCEPT_SLACK = 1
ACCEPT_FALLBACK = 0.05
# Deferrals further apart than this are for different connections.
DEFERRAL_GAP = 0.01
# How long stopping processes get to finish their requests before they are killed.
STOP_GRACE = 20.0


class _Discard:
    """Stands in for the parser once a body is refused: swallows the rest of it."""

    completed = False
    empty = False
    expect_continue = False
    headers_finished = False
    error = None

    def received(self, data: bytes) -> int:
        return len(data)


class BodyLimitedParser(HTTPRequestParser):  # type: ignore[misc]
    """waitress's request parser, holding the body to its path's limit."""

    def __init__(self, adj: Adjustments, channel: BodyLimitedChannel):
        super().__init__(adj)
        self.channel = channel
        self.body_limit = 0

    def parse_header(self, header_plus: bytes) -> None:
        from imagesearch.body_limits import body_limit

        super().parse_header(header_plus)
        self.body_limit = body_limit(str(getattr(self, "path", "/")))
        if not self.chunked and self.content_length > self.body_limit:
            self._refuse(declared=self.content_length)

    def received(self, data: bytes) -> int:
        consumed = int(super().received(data))
        if self.chunked and not self.completed and self.body_bytes_received > self.body_limit:
            self._refuse(declared=self.body_limit + 1)
            self.completed = True
            return len(data)
        return consumed

    def _refuse(self, *, declared: int) -> None:
        # Django sees the request without a body and a length over the limit: its
        # middleware answers 413 without reading. The connection closes after that answer.
        self.body_rcv = None
        self.chunked = False
        self.content_length = 0
        self.expect_continue = False
        headers = cast(dict[str, str], self.headers)
        headers["CONTENT_LENGTH"] = str(declared)
        headers["CONNECTION"] = "close"
        self.channel.refusing = True


class BalancingTask(WSGITask):  # type: ignore[misc]
    """A response that closes its keep-alive connection (saying so in its headers) while
    this process holds more connections than its share: the client connects again, and
    a process holding fewer accepts it. Connections made at once (or to a process that
    was busy for a moment) even out while they are used."""

    def build_response_header(self) -> bytes:
        if cast(WebServer, self.channel.server).over_share():
            self.set_close_on_finish()
        return cast(bytes, super().build_response_header())


class BodyLimitedChannel(HTTPChannel):  # type: ignore[misc]
    """A connection whose refused body is discarded, with a lingering close after the 413.

    Closing a socket that still has unread input makes the kernel send a reset, which can
    destroy the 413 before the client (busy sending) reads it; like nginx's lingering
    close, the channel shuts its sending side and drains input for a moment first.
    """

    task_class = BalancingTask
    refusing = False
    linger_until: float | None = None
    # When the request now arriving began, and how many of its bytes have come.
    request_began: float | None = None
    request_bytes = 0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.parser_class = self._new_parser  # type: ignore[assignment]

    def _new_parser(self, adj: Adjustments) -> HTTPRequestParser | _Discard:
        return _Discard() if self.refusing else BodyLimitedParser(adj, self)

    def handle_close(self) -> None:
        if self.refusing and self.linger_until is None and self.connected and self.socket is not None:
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:
                self.linger_until = time.monotonic() + LINGER_SECONDS
                self.will_close = self.close_when_flushed = False
                return
        super().handle_close()

    def readable(self) -> bool:
        return self.linger_until is not None or bool(super().readable())

    def received(self, data: bytes) -> bool:
        if self.linger_until is not None:
            if time.monotonic() > self.linger_until:
                self.will_close = True
            return True
        if self.request is None and data:
            self.request_began, self.request_bytes = time.time(), 0
        self.request_bytes += len(data)
        result = bool(super().received(data))
        if self.request is None:  # every request in the data arrived whole
            self.request_began = None
        return result

    def too_slow(self, now: float, *, grace: float, min_rate: float) -> bool:
        """A request still arriving after `grace` seconds at under `min_rate` bytes a
        second on average: a trickle that never falls silent long enough to time out."""
        if self.request_began is None or self.requests or min_rate <= 0:
            return False
        elapsed = now - self.request_began
        return elapsed > grace and self.request_bytes < min_rate * elapsed


class ConnectionShare:
    """How many connections each web process holds, in memory the parent maps before it
    forks them; a slot reads IDLE while its process is not serving."""

    IDLE = 2**31 - 1

    def __init__(self, processes: int) -> None:
        self.memory = mmap.mmap(-1, 4 * processes)  # anonymous and shared with children
        self.slots = memoryview(self.memory).cast("i")
        for slot in range(processes):
            self.slots[slot] = self.IDLE

    def set(self, slot: int, connections: int) -> None:
        self.slots[slot] = connections

    def fewest(self) -> int:
        return min(self.slots)


class WebServer(TcpWSGIServer):  # type: ignore[misc]
    channel_class = BodyLimitedChannel
    # A request must arrive at this many bytes a second on average once it has taken
    # longer than the client timeout (like Apache's mod_reqtimeout MinRate).
    min_rate = 500.0
    # With several processes: the shared connection counts and this process's slot.
    share: ConnectionShare | None = None
    slot = 0
    deferred_since: float | None = None
    last_deferral = 0.0
    # With several processes: the parent's pid, checked at each maintenance.
    parent: int | None = None

    def _record(self, share: ConnectionShare) -> int:
        """Record, for the other processes to see, how many connections this one holds."""
        mine = len(cast(dict[int, Any], self.active_channels))
        share.set(self.slot, mine)
        return mine

    def over_share(self) -> bool:
        """Whether this process holds more than ACCEPT_SLACK connections over the process
        holding fewest (recording how many it holds)."""
        if self.share is None:
            return False
        return self._record(self.share) > self.share.fewest() + ACCEPT_SLACK

    def readable(self) -> bool:
        if self.share is not None:  # each turn of the loop
            self._record(self.share)
        return bool(super().readable())

    def handle_accept(self) -> None:
        if self.over_share():
            # Another process holds fewer connections: it takes this one, unless it has
            # waited ACCEPT_FALLBACK seconds. The socket stays readable until one process
            # accepts, so this is called again at once: each call yields a millisecond.
            now = time.monotonic()
            if self.deferred_since is None or now - self.last_deferral > DEFERRAL_GAP:
                self.deferred_since = now  # a new connection waiting
            self.last_deferral = now
            if now - self.deferred_since < ACCEPT_FALLBACK:
                time.sleep(0.001)
                return
        self.deferred_since = None
        super().handle_accept()

    def maintenance(self, now: float) -> None:
        if self.parent is not None and os.getppid() != self.parent:
            # The parent is gone (killed): nobody would stop or replace this process.
            log.warning("web process %s: the server's parent process is gone; stopping", os.getpid())
            raise SystemExit(0)
        super().maintenance(now)  # type: ignore[arg-type]
        grace = float(self.adj.channel_timeout)
        channels = cast(dict[int, Any], self.active_channels)
        for channel in list(channels.values()):
            if isinstance(channel, BodyLimitedChannel) and channel.too_slow(now, grace=grace, min_rate=self.min_rate):
                channel.will_close = True


def adjustments(*, host: str, port: int) -> Adjustments:
    """waitress's settings from the project's (settings.WEB_SERVER)."""
    from django.conf import settings

    from imagesearch.body_limits import largest_body_limit

    conf = settings.WEB_SERVER
    timeout = int(conf["CLIENT_TIMEOUT"])
    proxy: dict[str, Any] = {}
    if conf["TRUSTED_PROXY"]:
        proxy = {"trusted_proxy": conf["TRUSTED_PROXY"], "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"}}
    return Adjustments(
        listen=f"{host}:{port}",
        threads=int(conf["THREADS"]),
        channel_timeout=timeout,
        # Stalled connections are looked for this often, so one lives at most ~1.25 × timeout.
        cleanup_interval=max(1, timeout // 4),
        connection_limit=int(conf["CONNECTION_LIMIT"]),
        # poll(): select() cannot watch descriptors above 1024.
        asyncore_use_poll=True,
        # A photo's body in a few reads, not one per 8 KiB: each read is a turn of the loop,
        # which asks every open connection whether it wants to read or write.
        recv_bytes=64 * 1024,
        # The per-path limits refuse first; this is only waitress's own backstop.
        max_request_body_size=largest_body_limit() + 1024 * 1024,
        # From any other peer than the trusted proxy, X-Forwarded-* headers are removed.
        clear_untrusted_proxy_headers=True,
        ident="imagesearch",
        **proxy,
    )


def _freeze_startup_objects() -> None:
    """Leave what start-up built (Django, TensorFlow, the networks: half a million objects)
    out of the cycle collector's full passes. Each full pass walked all of it, holding the
    interpreter lock for about 200 ms while every request of the process waited; those
    objects live as long as the process anyway."""
    gc.collect()
    gc.freeze()


def _warm_up() -> None:
    """Load the search index (and build any backbone still missing) in the background, so
    the first search does not pay for it; /readyz says "loading" until it is done."""
    from gallery.monitoring.health import start_warm_up

    start_warm_up()


def create(*, host: str, port: int, sock: socket.socket | None = None) -> WebServer:
    """The server for the Django application, listening but not yet serving; on `sock`,
    already bound, when given (shared by several processes)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")
    from imagesearch.wsgi import application

    adj = adjustments(host=host, port=port)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    if sock is None:
        server = WebServer(application, map={}, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0])  # type: ignore[arg-type]
    else:
        sockinfo = (sock.family, sock.type, sock.proto, sock.getsockname())
        server = WebServer(application, map={}, _sock=sock, bind_socket=False, dispatcher=dispatcher, adj=adj, sockinfo=sockinfo)  # type: ignore[arg-type]
    from django.conf import settings

    server.min_rate = float(settings.WEB_SERVER["CLIENT_MIN_RATE"])
    return server


def process_count(requested: int | None = None) -> int:
    """How many web processes: `requested`, else the setting; 0 means one per core this
    process may run on, at most MAX_AUTO_PROCESSES."""
    if requested is None:
        from django.conf import settings

        requested = int(settings.WEB_SERVER["PROCESSES"])
    if requested < 0:
        raise ValueError(f"web processes must be 0 (one per core) or more, not {requested}")
    if requested > 0:
        return requested
    return max(1, min(MAX_AUTO_PROCESSES, len(os.sched_getaffinity(0))))


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port for the processes to share. It listens once the
    first of them is ready to serve (waitress calls listen()): until then a client is
    refused at once, as by one process, instead of waiting for processes still loading."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def serve(
    args: argparse.Namespace,
    sock: socket.socket | None = None,
    share: ConnectionShare | None = None,
    slot: int = 0,
    parent: int | None = None,
) -> None:
    """Build the backbone, then serve until SIGTERM (one process; with `share`, one of
    several on the shared `sock`, counting its connections in `slot`, stopping when the
    `parent` process is gone)."""
    if not args.no_warm_up:
        # Loading TensorFlow and building a network hold the interpreter lock for seconds:
        # done before listening, so no request (a probe included) waits behind them. The
        # search index loads in the background after; /readyz says "loading" until then.
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")
        import django

        django.setup()
        from gallery.monitoring.health import build_backbones

        build_backbones()
        _freeze_startup_objects()
    server = create(host=args.host, port=args.port, sock=sock)
    server.share, server.slot, server.parent = share, slot, parent
    if not args.no_warm_up:
        _warm_up()

    def _stop(signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    adj = server.adj
    log.info(
        "serving on http://%s:%s (%s threads, client timeout %ss, at most %s connections)",
        args.host, getattr(server, "effective_port", args.port), adj.threads, adj.channel_timeout, adj.connection_limit,
    )  # fmt: skip
    server.run()


class Supervisor:
    """The parent of several web processes on one shared socket (see the module's notes)."""

    def __init__(self, args: argparse.Namespace, count: int) -> None:
        self.args, self.count = args, count
        self.children: dict[int, int] = {}  # pid → its slot in the connection counts
        self.share = ConnectionShare(count)
        self.crashes: list[float] = []
        self.stopping = False
        self.sock: socket.socket | None = None
        self.metrics_dir: str | None = None

    def run(self) -> int:
        from django.conf import settings

        logging.config.dictConfig(settings.LOGGING)
        self.sock = bound_socket(self.args.host, self.args.port)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Read by prometheus-client when a process first imports it: never in here.
            self.metrics_dir = tempfile.mkdtemp(prefix="imagesearch-web-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        if not settings.IMAGESEARCH["QUERY_THREADS"]:
            # The processes share the cores: a query's forward pass runs on its process's
            # share of them (more threads than cores only contend for them).
            settings.IMAGESEARCH["QUERY_THREADS"] = max(1, len(os.sched_getaffinity(0)) // self.count)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        port = self.sock.getsockname()[1]
        log.info("%s web processes on http://%s:%s", self.count, self.args.host, port)
        try:
            for slot in range(self.count):
                self._spawn(slot)
            return self._watch()
        finally:
            self._stop_all()
            self.sock.close()
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _stop(self, signum: int, _frame: Any) -> None:
        self.stopping = True

    def _spawn(self, slot: int) -> None:
        self.share.set(slot, ConnectionShare.IDLE)  # until the new process serves
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the new web process
            code = 1
            try:
                # Until it serves, a signal stops it at once (the parent's handlers only set
                # its own flag); serving, SIGTERM stops it cleanly (serve).
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                serve(self.args, self.sock, self.share, slot, parent)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0
            except BaseException:
                log.exception("web process %s failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = slot

    def _watch(self) -> int:
        while not self.stopping:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid, status = 0, 0
            if pid == 0 or pid not in self.children:
                time.sleep(0.2)
                continue
            slot = self.children.pop(pid)
            self.share.set(slot, ConnectionShare.IDLE)
            if self.stopping:
                break
            now = time.monotonic()
            self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW] + [now]
            code = os.waitstatus_to_exitcode(status)
            if len(self.crashes) >= CRASH_LIMIT:
                log.error(
                    "web process %s exited with %s; %s exits within %.0f s: stopping", pid, code, len(self.crashes), CRASH_WINDOW
                )
                return 1
            log.warning("web process %s exited with %s; starting another", pid, code)
            time.sleep(min(5.0, 0.5 * len(self.crashes)))
            self._spawn(slot)
        return 0

    def _stop_all(self) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while self.children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                break
            if pid:
                self.children.pop(pid, None)
            else:
                time.sleep(0.1)
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.children.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default=os.environ.get("IMAGESEARCH_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("IMAGESEARCH_PORT", "8000")))
    parser.add_argument("--no-warm-up", action="store_true", help="do not build the backbone and load the index at start")
    parser.add_argument("--processes", type=int, default=None, help="web processes (default: the setting; 0: one per core)")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")
    count = process_count(args.processes)
    if count == 1:
        serve(args)
        return
    raise SystemExit(Supervisor(args, count).run())


if __name__ == "__main__":
    main()
