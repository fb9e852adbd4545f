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

Run it with `python -m imagesearch.webserver --host 0.0.0.0 --port 8000`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import time
from typing import Any, cast

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger("imagesearch.webserver")

# How long a refused upload's remaining input is drained before the connection closes.
LINGER_SECONDS = 2.0


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


class BodyLimitedChannel(HTTPChannel):  # type: ignore[misc]
    """A connection whose refused body is discarded, with a lingering close after the 413.

    Closing a socket that still has unread input makes the kernel send a reset, which can
    destroy the 413 before the client (busy sending) reads it; like nginx's lingering
    close, the channel shuts its sending side and drains input for a moment first.
    """

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


class WebServer(TcpWSGIServer):  # type: ignore[misc]
    channel_class = BodyLimitedChannel
    # A request must arrive at this many bytes a second on average once it has taken
    # longer than the client timeout (like Apache's mod_reqtimeout MinRate).
    min_rate = 500.0

    def maintenance(self, now: float) -> None:
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
        # The per-path limits refuse first; this is only waitress's own backstop.
        max_request_body_size=largest_body_limit() + 1024 * 1024,
        # From any other peer than the trusted proxy, X-Forwarded-* headers are removed.
        clear_untrusted_proxy_headers=True,
        ident="imagesearch",
        **proxy,
    )


def _warm_up() -> None:
    """Load the search index (and build any backbone still missing) in the background, so
    the first search does not pay for it; /readyz says "loading" until it is done."""
    from gallery.monitoring.health import start_warm_up

    start_warm_up()


def create(*, host: str, port: int) -> WebServer:
    """The server for the Django application, listening but not yet serving."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")
    from imagesearch.wsgi import application

    adj = adjustments(host=host, port=port)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    server = WebServer(application, map={}, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0])  # type: ignore[arg-type]
    from django.conf import settings

    server.min_rate = float(settings.WEB_SERVER["CLIENT_MIN_RATE"])
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default=os.environ.get("IMAGESEARCH_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("IMAGESEARCH_PORT", "8000")))
    parser.add_argument("--no-warm-up", action="store_true", help="do not build the backbone and load the index at start")
    args = parser.parse_args(argv)
    if not args.no_warm_up:
        # Loading TensorFlow and building a network hold the interpreter lock for seconds:
        # done before listening, so no request (a probe included) waits behind them. The
        # search index loads in the background after; /readyz says "loading" until then.
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesearch.settings")
        import django

        django.setup()
        from gallery.monitoring.health import build_backbones

        build_backbones()
    server = create(host=args.host, port=args.port)
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


if __name__ == "__main__":
    main()
