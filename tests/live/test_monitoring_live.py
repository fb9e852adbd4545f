"""Metrics, probes and request ids with real processes: a Redis broker, a Celery worker and
the web server. Uploads and a search move the web process's and the worker's metrics;
/metrics is refused without the token; /readyz names the broker while it is down; the
worker's log lines for the upload's task carry the upload's request id; staff read the
metrics in the browser; `manage.py serve` starts quietly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser

from benchmarks.livestack import ROOT, Stack, free_port, live_stack, upload_ids
from tests.support.browser import ARTIFACTS, sign_in

pytestmark = pytest.mark.slow

TOKEN = "live-metrics-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _until(check: Callable[[], bool], what: str, stack: Stack | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}\n{stack.log_tail() if stack else ''}"
        time.sleep(0.3)


def _status(url: str, **kwargs) -> int:  # type: ignore[no-untyped-def]
    try:
        return requests.get(url, timeout=10, **kwargs).status_code
    except requests.ConnectionError:
        return 0


def test_metrics_probes_and_request_ids_with_real_processes(tmp_path, butterflies, browser: Browser) -> None:  # type: ignore[no-untyped-def]
    photos = [butterflies["001"][0], butterflies["004"][0], butterflies["009"][0]]
    query = butterflies["004"][5]
    env = {
        "IMAGESEARCH_METRICS_TOKEN": TOKEN,
        # The tests are on loopback: with loopback trust off they are any remote client.
        "IMAGESEARCH_METRICS_ALLOW_LOOPBACK": "0",
        "IMAGESEARCH_READY_CACHE_SECONDS": "0",
        "IMAGESEARCH_PCA_MIN_IMAGES": "1000",
    }
    with live_stack(tmp_path / "var", **env) as stack:  # type: ignore[arg-type]
        web_metrics = stack.url + "/metrics"
        worker_metrics = f"http://127.0.0.1:{stack.metrics_ports['e2e']}/metrics"
        # Refused without the token, in the web process and in the worker.
        assert _status(web_metrics) == 404
        assert _status(web_metrics, headers={"Authorization": "Bearer guessed"}) == 403
        _until(lambda: _status(worker_metrics) == 404, "the worker's exporter never came up", stack)
        assert _status(worker_metrics, headers={"Authorization": "Bearer guessed"}) == 403
        assert _status(worker_metrics, headers=AUTH) == 200
        _until(lambda: _status(stack.url + "/readyz") == 200, "the web process never became ready", stack)

        uploader = stack.browser()
        rid = f"live-upload-{uuid.uuid4().hex[:12]}"
        uploader.session.headers["X-Request-ID"] = rid
        response = uploader.upload(photos)
        del uploader.session.headers["X-Request-ID"]
        assert response.status_code == 200 and response.history[0].headers["X-Request-ID"] == rid
        ids = upload_ids(response)
        assert set(uploader.wait_ready(ids).values()) == {"ready"}, stack.log_tail()
        search = uploader.search(query)
        assert search.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", search.headers["X-Request-ID"])

        web = requests.get(web_metrics, headers=AUTH, timeout=10).text
        assert _sample(web, "imagesearch_http_request_duration_seconds_count", route="gallery:search", method="POST") >= 1
        assert _sample(web, "imagesearch_http_request_duration_seconds_count", route="gallery:upload", method="POST") >= 1
        for stage in ("decode", "embed", "index", "hydrate"):
            assert _sample(web, "imagesearch_search_stage_seconds_count", stage=stage) >= 1, stage
        assert _sample(web, "imagesearch_embeddings_total", backbone="efficientnet_lite0") >= 1  # the query photo
        assert _sample(web, "imagesearch_images", status="ready") == 3
        assert _sample(web, "imagesearch_broker_up") == 1
        assert {"interactive", "bulk"} <= set(re.findall(r'imagesearch_queue_depth\{lane="(\w+)"\}', web))
        assert _sample(web, "imagesearch_search_index_vectors") == 3

        worker = requests.get(worker_metrics, headers=AUTH, timeout=10).text
        assert _sample(worker, "imagesearch_embeddings_total", backbone="efficientnet_lite0") == 3
        assert _sample(worker, "imagesearch_task_duration_seconds_count", task="gallery.embed_image", state="SUCCESS") >= 1
        assert _sample(worker, "imagesearch_task_failures_total") == 0

        # The upload's id followed its task into the worker's log.
        worker_log = (stack.logs / "worker.log").read_text(errors="replace")
        tagged = [line for line in worker_log.splitlines() if f"[{rid}]" in line]
        assert any("gallery.embed_image" in line and "succeeded" in line for line in tagged), worker_log[-3000:]
        web_log = (stack.logs / "web.log").read_text(errors="replace")
        assert any(f"[{rid}]" in line and '"POST /upload/" 302' in line for line in web_log.splitlines())
        # Probes and scrapes that succeed leave no access line.
        assert "/readyz" not in web_log and '"GET /metrics" 200' not in web_log
        # Quiet: no faiss loader lines and no TensorFlow notices from either process.
        for text in (worker_log, web_log):
            assert "faiss.loader" not in text and "oneDNN" not in text and "absl::InitializeLog" not in text

        # Staff read the metrics in the browser, signed in through the sign-in page.
        stack.create_user("operator", "a long operator password", staff=True)
        page = browser.new_page()
        try:
            sign_in(page, stack, "operator", "a long operator password")
            page.goto(stack.url + "/metrics")
            assert "imagesearch_http_request_duration_seconds_bucket" in page.locator("body").inner_text()
            page.screenshot(path=str(ARTIFACTS / "metrics-staff.png"))
        finally:
            page.close()

        # The broker goes away: /readyz names it; it comes back: ready again.
        stack.stop_broker()
        down: dict[str, object] = {}

        def broker_named() -> bool:
            answer = requests.get(stack.url + "/readyz", timeout=15)
            down.update(answer.json())
            return answer.status_code == 503 and answer.json()["failing"] == ["broker"]

        _until(broker_named, "readyz never named the broker", stack, timeout=60)
        assert down["checks"] == {"database": "ok", "broker": "failed", "backbone": "ok", "index": "ok"}
        assert _sample(requests.get(web_metrics, headers=AUTH, timeout=15).text, "imagesearch_broker_up") == 0
        stack.start_broker()
        _until(lambda: _status(stack.url + "/readyz") == 200, "readyz never recovered with the broker back", stack, timeout=60)


BANNERS = re.compile(
    r"faiss\.loader|Loading faiss|oneDNN|absl::InitializeLog|cpu_feature_guard|TensorFlow binary|\[tasks\]|-------------- "
)


def test_serve_prints_a_few_quiet_lines_before_the_gallery_address(tmp_path: Path) -> None:
    port, worker_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_", "IMAGESEARCH_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="imagesearch.settings",
        IMAGESEARCH_VAR_DIR=str(tmp_path / "var"),
        IMAGESEARCH_BACKBONE="efficientnet_lite0",
        IMAGESEARCH_WORKER_METRICS_PORT=str(worker_port),
    )
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        _until(lambda: any("gallery at http://" in line for line in lines), f"no address line: {lines}", timeout=120)
        first = next(i for i, line in enumerate(lines) if "gallery at http://" in line)
        assert first <= 3, lines[: first + 1]
        assert lines[first].strip() == f"gallery at http://127.0.0.1:{port}/  (Ctrl+C stops)"
        # Everything the three processes print until both are ready, and a moment after.
        _until(lambda: _status(f"http://127.0.0.1:{port}/readyz") == 200, f"never ready: {''.join(lines)}", timeout=180)
        _until(lambda: any(" ready." in line for line in lines), f"the worker never said ready: {''.join(lines)}", timeout=60)
        time.sleep(2)
        noisy = [line for line in lines if BANNERS.search(line)]
        assert noisy == [], "".join(lines)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
