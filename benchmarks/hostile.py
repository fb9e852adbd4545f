"""Hostile traffic beside normal use, on a throw-away stack on loopback.

Normal users (each signed in, searching by photo at a human pace) are measured twice in
one run: alone, then while attackers run: slow sockets that never finish their headers,
bodies trickled a byte at a time, an anonymous flood of search-by-upload on the API,
decompression bombs uploaded by a signed-in account, and password guessing on the token
endpoint. The report compares the normal users' latency and counts what the attackers got.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import requests

from benchmarks.livestack import Browser, Stack, live_stack, upload_ids


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else 0.0


@dataclass
class HostileReport:
    normal_clients: int
    duration_s: float
    calm: Phase = field(default_factory=Phase)
    hostile: Phase = field(default_factory=Phase)
    attacks: dict[str, Counter[str]] = field(default_factory=dict)
    slow_sockets_closed: int = 0
    slow_sockets: int = 0

    def summary(self) -> str:
        lines = [f"{self.normal_clients} normal users searching by photo, {self.duration_s:.0f} s alone, then with attackers"]
        for name, phase in (("alone", self.calm), ("under attack", self.hostile)):
            lines.append(
                f"  normal users {name:13s}: {len(phase.latencies)} searches, p50 {phase.percentile(50) * 1000:.0f} ms, "
                f"p99 {phase.percentile(99) * 1000:.0f} ms, errors {len(phase.errors)}"
                + (f" (first: {phase.errors[0]})" if phase.errors else "")
            )
        if self.calm.latencies and self.hostile.latencies:
            ratio = self.hostile.percentile(99) / max(self.calm.percentile(99), 1e-6)
            lines.append(f"  p99 under attack / alone: {ratio:.2f}")
        for attack, outcomes in self.attacks.items():
            shown = ", ".join(f"{code}: {n}" for code, n in sorted(outcomes.items()))
            lines.append(f"  {attack}: {shown}")
        lines.append(f"  slow sockets: {self.slow_sockets} opened, {self.slow_sockets_closed} cut off by the server")
        return "\n".join(lines)


def _slow_sockets(stack: Stack, count: int, stop: float, report: HostileReport) -> None:
    """Connections that send half a request, or a body a byte at a time, and never finish."""
    host, port = urlsplit(stack.url).hostname or "127.0.0.1", urlsplit(stack.url).port or 80
    sockets: list[socket.socket] = []
    for i in range(count):
        try:
            s = socket.create_connection((host, port), timeout=5)
        except OSError:
            continue
        if i % 4 == 0:  # a trickled body
            s.sendall(
                b"POST /api/v1/search/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
            )
        else:  # half-open headers
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        s.setblocking(False)
        sockets.append(s)
    report.slow_sockets = len(sockets)
    closed: set[int] = set()
    while time.monotonic() < stop and len(closed) < len(sockets):
        for i, s in enumerate(sockets):
            if i in closed:
                continue
            try:
                if i % 4 == 0:
                    s.send(b"x")
                if s.recv(4096) == b"":
                    closed.add(i)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(i)
        time.sleep(1.0)
    report.slow_sockets_closed = len(closed)
    for s in sockets:
        s.close()


def _repeat(
    outcomes: Counter[str],
    lock: threading.Lock,
    stop: float,
    attempt: Callable[[], requests.Response],
    *,
    at_least: int = 0,
) -> None:
    """Attack until `stop`, and in any case `at_least` times (so a slow machine still
    shows what the limits do after the first attempts)."""
    done = 0
    while time.monotonic() < stop or done < at_least:
        done += 1
        try:
            code = str(attempt().status_code)
        except requests.RequestException as exc:
            code = exc.__class__.__name__
        with lock:
            outcomes[code] += 1


def run_hostile(
    *,
    photos: list[Path],
    bombs: list[tuple[str, bytes]],
    normal_clients: int = 5,
    duration: float = 30.0,
    slow_sockets: int = 200,
    flood_clients: int = 8,
    client_timeout: int = 10,
    var: Path | None = None,
) -> HostileReport:
    """Run normal users alone for `duration` seconds, then again beside the attackers."""
    var = var or Path(tempfile.mkdtemp(prefix="imagesearch-hostile-"))
    seed, queries = photos[:30], [(p.name, p.read_bytes()) for p in photos[30:60]]
    if not queries:
        raise ValueError(f"need more than 30 photos, got {len(photos)}")
    report = HostileReport(normal_clients, duration)
    lock = threading.Lock()
    with live_stack(var / "stack", IMAGESEARCH_CLIENT_TIMEOUT=str(client_timeout)) as stack:
        seeder = stack.browser("seeder")
        ids: list[int] = []
        for start in range(0, len(seed), 10):
            ids += upload_ids(seeder.upload(seed[start : start + 10]))
        seeder.wait_ready(ids, timeout=600)
        names = [f"person{i}" for i in range(normal_clients)]
        for name in names:
            stack.create_user(name, "a long test password")

        def normal_phase(phase: Phase, extra: list[threading.Thread]) -> None:
            stop = time.monotonic() + duration
            threads = [
                threading.Thread(target=_normal_user_signed_in, args=(stack, n, queries, phase, lock, stop)) for n in names
            ]
            for t in [*extra, *threads]:
                t.start()
            for t in threads:
                t.join()

        normal_phase(report.calm, [])

        stop = time.monotonic() + duration
        flood, bomb_results, guesses = Counter[str](), Counter[str](), Counter[str]()
        report.attacks = {"anonymous API search flood": flood, "decompression bombs": bomb_results, "token guesses": guesses}
        query_name, query_data = queries[0]

        def flood_once() -> requests.Response:
            return requests.post(
                stack.url + "/api/v1/search/", files={"file": (query_name, query_data, "image/jpeg")}, timeout=30
            )

        stack.create_user("bomber", "a long test password")
        bomber = Browser(stack.url)
        bomber.login("bomber", "a long test password")
        bomb_cycle = iter(range(10**9))

        def bomb_once() -> requests.Response:
            name, data = bombs[next(bomb_cycle) % len(bombs)]
            token = bomber._token("/upload/")
            return bomber.session.post(
                stack.url + "/upload/", data={"csrfmiddlewaretoken": token}, files={"files": (name, data)}, timeout=60
            )

        def guess_once() -> requests.Response:
            return requests.post(
                stack.url + "/api/v1/auth/token/", data={"username": "person0", "password": "wrong guess"}, timeout=30
            )

        attackers = [threading.Thread(target=_slow_sockets, args=(stack, slow_sockets, stop + client_timeout * 3, report))]
        attackers += [threading.Thread(target=_repeat, args=(flood, lock, stop, flood_once)) for _ in range(flood_clients)]
        attackers += [threading.Thread(target=_repeat, args=(bomb_results, lock, stop, bomb_once))]
        # Enough guesses to pass the free attempts however slowly each password is checked.
        attackers += [threading.Thread(target=_repeat, args=(guesses, lock, stop, guess_once), kwargs={"at_least": 24})]
        normal_phase(report.hostile, attackers)
        for t in attackers:
            t.join()
    return report


def _normal_user_signed_in(
    stack: Stack, name: str, queries: list[tuple[str, bytes]], phase: Phase, lock: threading.Lock, stop: float
) -> None:
    browser = Browser(stack.url)
    browser.login(name, "a long test password")
    token = browser._token("/search/")
    n = sum(map(ord, name))
    while time.monotonic() < stop:
        query_name, data = queries[n % len(queries)]
        n += 1
        began = time.monotonic()
        try:
            r = browser.search_photo(query_name, data, token=token)
            problem = "" if r.status_code == 200 and "Results for your photo" in r.text else f"search {r.status_code}"
        except requests.RequestException as exc:
            problem = f"search {exc.__class__.__name__}"
        with lock:
            phase.latencies.append(time.monotonic() - began)
            if problem:
                phase.errors.append(problem)
        time.sleep(max(0.0, 2.0 - (time.monotonic() - began)))  # a person: one search every ~2 s
