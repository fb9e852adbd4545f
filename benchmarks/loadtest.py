"""A bounded load test against the whole product on loopback: N clients searching by
photo and M clients uploading, for a fixed time, then every upload must become ready."""

from __future__ import annotations

import http.client
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import requests

from benchmarks.livestack import Browser, live_stack, upload_ids
from gallery.ratelimit import LIMITS_OFF_ENV


@dataclass
class LoadReport:
    search_clients: int
    upload_clients: int
    duration_s: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"search": [], "upload": []})
    errors: list[str] = field(default_factory=list)
    uploaded_ids: list[int] = field(default_factory=list)
    ready: int = 0
    failed: int = 0
    drain_s: float = 0.0
    # The bare backbone's batched forward rate over the same query photos, photos/s: the
    # mean of its measures before and after the load (this machine's speed drifts).
    forward_ips: float = 0.0
    forward_measures: list[float] = field(default_factory=list)
    # CPU seconds the clients themselves used during the load (they share the machine).
    client_cpu_s: float = 0.0

    def requests(self, kind: str) -> int:
        return len(self.latencies[kind])

    def percentile(self, kind: str, q: float) -> float:
        values = self.latencies[kind]
        return float(np.percentile(values, q)) if values else 0.0

    def summary(self) -> str:
        lines = [
            f"{self.search_clients} searching + {self.upload_clients} uploading clients for {self.duration_s:.0f} s",
        ]
        for kind in ("search", "upload"):
            n = self.requests(kind)
            lines.append(
                f"  {kind:6s}: {n} requests ({n / self.duration_s:.1f}/s), p50 {self.percentile(kind, 50) * 1000:.0f} ms, "
                f"p95 {self.percentile(kind, 95) * 1000:.0f} ms, p99 {self.percentile(kind, 99) * 1000:.0f} ms"
            )
        if self.forward_ips and self.requests("search"):
            rate = self.requests("search") / self.duration_s
            ratio = rate / self.forward_ips
            p99 = self.percentile("search", 99)
            alone = "" if not self.upload_clients else " (the targets are for searching clients alone)"
            lines.append(
                f"  capacity: {rate:.1f} searches/s vs the bare batched forward pass {self.forward_ips:.1f} photos/s "
                f"(before / after the load: {' / '.join(f'{m:.1f}' for m in self.forward_measures)}) "
                f"→ ratio {ratio:.2f} (target ≥ 0.8: {'met' if ratio >= 0.8 else 'MISSED'}); "
                f"p99 {p99:.2f} s (target ≤ 1 s: {'met' if p99 <= 1.0 else 'MISSED'}){alone}"
            )
        if self.duration_s:
            lines.append(f"  the clients themselves: {self.client_cpu_s / self.duration_s:.2f} cores")
        lines.append(f"  errors: {len(self.errors)}" + (f" (first: {self.errors[0]})" if self.errors else ""))
        lines.append(
            f"  uploads: {len(self.uploaded_ids)} accepted, {self.ready} ready, {self.failed} failed, "
            f"all embedded {self.drain_s:.0f} s after the load stopped"
        )
        return "\n".join(lines)


def search_form_body(name: str, data: bytes, *, token: str) -> tuple[bytes, str]:
    """The search page's form with a photo, encoded as a browser posts it (multipart), and
    its content type."""
    boundary = "----loadtest" + secrets.token_hex(12)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode()
        for field, value in (("csrfmiddlewaretoken", token), ("metric", "cosine"), ("limit", "10"))
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class SearchPoster:
    """One searching client: a kept-alive connection posting search forms encoded once.

    The load generator shares the machine's cores with the stack it measures, so a request
    costs it as little as it can: no form encoding or cookie handling per request (an
    HTTP library's per-request work cost it ~1.5 ms of CPU a search, 7% of the machine at
    90 searches/s). A connection the server closes is opened again on the next request."""

    def __init__(self, url: str, *, cookie: str, timeout: float = 300):
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
        self.cookie = cookie

    def post(self, body: tuple[bytes, str]) -> tuple[int, bytes]:
        """Status and body of one search."""
        data, content_type = body
        try:
            self.connection.request("POST", "/search/", body=data, headers={"Content-Type": content_type, "Cookie": self.cookie})
            response = self.connection.getresponse()
            return response.status, response.read()
        except Exception:
            self.connection.close()  # a fresh connection for the next request
            raise

    def close(self) -> None:
        self.connection.close()


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pids: list[int], *, timeout: float, busy_below: float = 0.05, window: float = 2.0) -> bool:
    """Wait until these processes together use under `busy_below` of a core over `window`
    seconds; False when they are still busy after `timeout` (or /proc cannot tell)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            before = sum(_cpu_seconds(p) for p in pids)
            time.sleep(window)
            if sum(_cpu_seconds(p) for p in pids) - before < busy_below * window:
                return True
    except (OSError, IndexError, ValueError):
        return False
    return False


def forward_rate(photos: list[Path], *, seconds: float = 5.0) -> float:
    """Photos per second of the configured backbone's forward pass alone, in batches of
    the web process's largest query batch, over these photos (decoded and preprocessed
    beforehand), on every core of this machine."""
    from django.conf import settings

    from gallery.catalog import pipeline

    backbone = pipeline.current_backbone()
    options = pipeline.preprocess_options()
    size = max(1, int(settings.IMAGESEARCH["QUERY_BATCH_MAX"]))
    arrays = [backbone.preprocess(pipeline.decode(p.read_bytes()).image, options) for p in photos[:size]]
    while len(arrays) < size:
        arrays += arrays[: size - len(arrays)]
    batch = np.stack(arrays)
    backbone.embed_arrays(batch)  # warm-up: the traced graph
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        backbone.embed_arrays(batch)
        done += len(batch)
    return done / (time.perf_counter() - began)


def run_load(
    *,
    photos: list[Path],
    search_clients: int = 50,
    upload_clients: int = 5,
    duration: float = 60.0,
    seed_catalog: int = 40,
    var: Path | None = None,
    drain_timeout: float = 600.0,
    measure_forward: bool = False,
) -> LoadReport:
    """Start a throw-away stack (rate limiter off: this measures capacity), seed a
    catalog, run the clients for `duration` seconds, wait for the uploads to be ready.
    `measure_forward` times the bare forward pass on the query photos (the reference of
    search capacity) before the stack starts and after it stops, and keeps their mean."""
    var = var or Path(tempfile.mkdtemp(prefix="imagesearch-load-"))
    seed, queries, pool = photos[:seed_catalog], photos[seed_catalog : seed_catalog + 50], photos[seed_catalog + 50 :]
    if not queries or not pool:
        raise ValueError(f"need more than {seed_catalog + 50} photos, got {len(photos)}")
    query_photos = [(p.name, p.read_bytes()) for p in queries]
    report = LoadReport(search_clients, upload_clients, duration)
    if measure_forward:
        report.forward_measures.append(forward_rate(queries))
    lock = threading.Lock()
    # As deployed: no debug bookkeeping (Django records every SQL query with DEBUG on).
    with live_stack(var / "stack", **LIMITS_OFF_ENV, IMAGESEARCH_WEB_THREADS="8", DJANGO_DEBUG="0") as stack:
        admin = stack.browser("seeder")
        seeded: list[int] = []
        for start in range(0, len(seed), 20):
            seeded += upload_ids(admin.upload(seed[start : start + 20]))
        admin.wait_ready(seeded, timeout=600)
        # The seeded photos' copy checks and keypoints run after they are ready: the load
        # starts once the workers are idle, so they take no cores from the searches.
        wait_idle([w.pid for w in stack.workers], timeout=120)

        uploaders = [stack.browser(f"uploader{i}") for i in range(upload_clients)]
        stop_at = time.monotonic() + duration

        # One CSRF cookie and token for every searching client, and each query photo's form
        # encoded once (as a browser would post it).
        greeter = Browser(stack.url)
        token = greeter._token("/search/")
        cookie = f"csrftoken={token}"
        bodies = [search_form_body(name, data, token=token) for name, data in query_photos]

        def search_client(i: int) -> None:
            poster = SearchPoster(stack.url, cookie=cookie)
            n = i
            while time.monotonic() < stop_at:
                body = bodies[n % len(bodies)]
                n += search_clients
                began = time.monotonic()
                try:
                    status, page = poster.post(body)
                    ok = status == 200 and b'class="grid results"' in page
                    problem = "" if ok else f"search {status}"
                except (OSError, http.client.HTTPException) as exc:
                    problem = f"search {exc.__class__.__name__}"
                with lock:
                    report.latencies["search"].append(time.monotonic() - began)
                    if problem:
                        report.errors.append(problem)
            poster.close()

        def upload_client(i: int) -> None:
            mine = pool[i::upload_clients]  # distinct photos per client: no duplicates by design
            for path in mine:
                if time.monotonic() >= stop_at:
                    break
                began = time.monotonic()
                try:
                    r = uploaders[i].upload([path])
                    ids = upload_ids(r) if r.status_code == 200 else []
                    problem = "" if ids else f"upload {r.status_code}"
                except requests.RequestException as exc:
                    ids, problem = [], f"upload {exc.__class__.__name__}"
                with lock:
                    report.latencies["upload"].append(time.monotonic() - began)
                    report.uploaded_ids += ids
                    if problem:
                        report.errors.append(problem)

        threads = [threading.Thread(target=search_client, args=(i,)) for i in range(search_clients)]
        threads += [threading.Thread(target=upload_client, args=(i,)) for i in range(upload_clients)]
        began, cpu_began = time.monotonic(), time.process_time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report.duration_s = time.monotonic() - began
        report.client_cpu_s = time.process_time() - cpu_began
        drain_began = time.monotonic()
        states = admin.wait_ready(report.uploaded_ids, timeout=drain_timeout) if report.uploaded_ids else {}
        report.drain_s = time.monotonic() - drain_began
        report.ready = sum(1 for s in states.values() if s == "ready")
        report.failed = sum(1 for s in states.values() if s == "failed")
    if measure_forward:  # again once the stack is gone, on the same idle machine
        report.forward_measures.append(forward_rate(queries))
        report.forward_ips = sum(report.forward_measures) / len(report.forward_measures)
    return report
