"""The priority lane with real processes: an upload is embedded ahead of a running bulk import."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.livestack import ROOT, Stack, live_stack

pytestmark = pytest.mark.slow


def _db(stack: Stack) -> sqlite3.Connection:
    return sqlite3.connect(stack.var / "db.sqlite3", timeout=30)


def _rows(stack: Stack) -> dict[int, tuple[str, str, str, int]]:
    """Per image: lane, status, when it was embedded ("" before), how many times it was claimed."""
    with _db(stack) as db:
        rows = db.execute("select id, lane, status, embedded_at, attempts from gallery_image").fetchall()
    return {r[0]: (r[1], r[2], r[3] or "", r[4]) for r in rows}


def _wait(stack: Stack, done: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, stack.log_tail()
        time.sleep(0.3)


def _folder(path: Path, photos: list[Path]) -> Path:
    path.mkdir()
    for p in photos:
        shutil.copy(p, path / p.name)
    return path


def _import(stack: Stack, folder: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "manage.py", "import_images", str(folder), "--queue", "--no-progress"]
    return subprocess.Popen(command, cwd=ROOT, env=stack.env, stdout=subprocess.DEVNULL)


def _uploaded_id(response) -> int:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text[-500:]
    return int(re.search(r"ids=(\d+)", response.url).group(1))  # type: ignore[union-attr]


def test_an_upload_is_embedded_ahead_of_a_running_bulk_import(tmp_path, butterflies) -> None:  # type: ignore[no-untyped-def]
    photos = [p for group in butterflies.values() for p in group[:8]]  # 80 photos, 10 species
    first_import, second_import = _folder(tmp_path / "bulk1", photos[:60]), _folder(tmp_path / "bulk2", photos[60:72])
    with live_stack(tmp_path / "var", IMAGESEARCH_BATCH_SIZE="4", IMAGESEARCH_PCA_MIN_IMAGES="1000") as stack:
        browser = stack.browser()
        stack.wait_workers_ready(["e2e"])

        # A bulk import of 60 photos is queued; once the worker is busy with it, a person uploads.
        importer = _import(stack, first_import)
        _wait(stack, lambda: sum(r[1] == "ready" for r in _rows(stack).values()) >= 4)
        upload = _uploaded_id(browser.upload([photos[72]]))
        assert browser.wait_ready([upload]) == {upload: "ready"}, stack.log_tail()
        assert importer.wait(timeout=300) == 0
        _wait(stack, lambda: {r[1] for r in _rows(stack).values()} == {"ready"})
        rows = _rows(stack)
        bulk = {pk: r for pk, r in rows.items() if pk != upload}
        assert len(bulk) == 60 and {r[0] for r in bulk.values()} == {"bulk"} and rows[upload][0] == "interactive"
        upload_at = rows[upload][2]
        # Bulk photos were still waiting when the upload was done, and none shared its batch.
        assert sum(r[2] > upload_at for r in bulk.values()) >= 1, sorted(r[2] for r in bulk.values())
        assert all(r[2] != upload_at for r in bulk.values())
        assert {r[3] for r in rows.values()} == {1}  # each image was embedded once

        # The worker dies and the broker loses every queued task: the restarted worker queues
        # each waiting image again on its own lane, and the upload still goes first.
        os.kill(stack.worker.pid, signal.SIGKILL)
        stack.worker.wait()
        assert _import(stack, second_import).wait(timeout=300) == 0
        late = _uploaded_id(browser.upload([photos[73]]))
        assert {r[1] for pk, r in _rows(stack).items() if pk not in rows} == {"pending"}
        stack.stop_broker()
        stack.start_broker()
        stack.worker = stack.start_worker()
        _wait(stack, lambda: {r[1] for r in _rows(stack).values()} == {"ready"})
        after = {pk: r for pk, r in _rows(stack).items() if pk not in rows}
        assert len(after) == 13 and after[late][0] == "interactive"
        late_at = after[late][2]
        assert all(r[2] > late_at for pk, r in after.items() if pk != late)
        assert {r[3] for r in after.values()} == {1}
