"""Faults with real processes: a worker killed mid-batch, the broker down at upload time,
the database locked, the disk full, the same photo uploaded twice at the same moment."""

from __future__ import annotations

import errno
import io
import os
import re
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from django.core.files.storage import FileSystemStorage
from django.urls import reverse

from benchmarks.livestack import Stack, live_stack
from gallery.catalog.models import Image
from tests.conftest import photo_bytes


class FullDiskStorage(FileSystemStorage):
    """Public media storage on a disk that has no room left."""

    def _save(self, name, content):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.django_db
def test_disk_full_refuses_the_upload_and_leaves_no_file(user_client, settings, media_files) -> None:  # type: ignore[no-untyped-def]
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "tests.live.test_faults.FullDiskStorage"}}
    f = io.BytesIO(photo_bytes())
    f.name = "p.jpg"
    response = user_client.post(reverse("gallery:upload"), {"files": [f]})
    assert response.status_code == 503
    assert "no room for new photos" in response.content.decode()
    assert Image.objects.count() == 0 and media_files() == []  # the private original was removed too


def _db(stack: Stack) -> sqlite3.Connection:
    return sqlite3.connect(stack.var / "db.sqlite3", timeout=30)


def _statuses(stack: Stack) -> dict[str, int]:
    with _db(stack) as db:
        return dict(db.execute("select status, count(*) from gallery_image group by status").fetchall())


def _wait(stack: Stack, done, timeout: float = 240, interval: float = 0.3) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{_statuses(stack)}\n{stack.log_tail()}"
        time.sleep(interval)


def _ids(response) -> list[int]:  # type: ignore[no-untyped-def]
    return [int(i) for i in re.search(r"ids=([\d,]+)", response.url).group(1).split(",")]  # type: ignore[union-attr]


def _stored_files(stack: Stack) -> int:
    return sum(1 for root in ("private", "media") for p in (stack.var / root).rglob("*") if p.is_file())


@pytest.mark.slow
def test_worker_killed_mid_batch_then_restarted_embeds_every_image_once(tmp_path, butterflies) -> None:  # type: ignore[no-untyped-def]
    photos = [p for group in list(butterflies.values())[:4] for p in group[:3]]  # 12 photos
    with live_stack(tmp_path / "var", IMAGESEARCH_BATCH_SIZE="3", IMAGESEARCH_PCA_MIN_IMAGES="1000") as stack:
        browser = stack.browser()
        os.kill(stack.worker.pid, signal.SIGKILL)
        stack.worker.wait()
        response = browser.upload(photos)
        assert response.status_code == 200, response.text[-500:]
        ids = _ids(response)
        assert _statuses(stack) == {"pending": 12}
        with _db(stack) as db:  # a file damaged on disk: the worker must fail it and go on
            (corrupt,) = db.execute("select file from gallery_image where id = ?", (ids[4],)).fetchone()
        (stack.var / "private" / corrupt).write_bytes(b"\xff\xd8\xff\xe0 damaged on disk")

        stack.worker = stack.start_worker()
        # A batch holds its claim for a fraction of a second on an idle machine: look often.
        _wait(stack, lambda: _statuses(stack).get("processing", 0) > 0, timeout=180, interval=0.01)
        os.kill(stack.worker.pid, signal.SIGKILL)  # in the middle of a batch
        stack.worker.wait()
        assert _statuses(stack).get("processing", 0) > 0  # the claim is left behind

        stack.worker = stack.start_worker()  # same name: releases its own stale claims
        _wait(stack, lambda: set(_statuses(stack)) <= {"ready", "failed"})
        assert _statuses(stack) == {"ready": 11, "failed": 1}
        assert stack.worker.poll() is None  # the corrupt file did not take the worker down
        with _db(stack) as db:
            reason = db.execute("select status_reason from gallery_image where id = ?", (ids[4],)).fetchone()[0]
            per_image = db.execute("select image_id, count(*) from gallery_embedding group by image_id").fetchall()
        assert "damaged or truncated" in reason
        assert sorted(per_image) == [(i, 1) for i in sorted(ids) if i != ids[4]]  # each ready image exactly once


@pytest.mark.slow
def test_broker_down_database_locked_and_simultaneous_duplicates(tmp_path, butterflies) -> None:  # type: ignore[no-untyped-def]
    photos = butterflies["003"][:4]
    with live_stack(
        tmp_path / "var",
        beat=True,
        IMAGESEARCH_SWEEP_SECONDS="2",
        IMAGESEARCH_SWEEP_MIN_AGE_SECONDS="1",
        IMAGESEARCH_SQLITE_TIMEOUT="2",
        IMAGESEARCH_PCA_MIN_IMAGES="1000",
    ) as stack:
        browser = stack.browser()

        # The broker is down at upload time: the upload is accepted and stored, then
        # embedded by the periodic sweep once the broker is back.
        stack.stop_broker()
        response = browser.upload(photos[:1])
        assert response.status_code == 200, response.text[-500:]
        (first,) = _ids(response)
        assert _statuses(stack) == {"pending": 1}
        stack.start_broker()
        assert browser.wait_ready([first]) == {first: "ready"}, stack.log_tail()

        # The database is locked by another writer: a clear refusal, no row, no file.
        before = _stored_files(stack)
        lock = sqlite3.connect(stack.var / "db.sqlite3", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            response = browser.upload(photos[1:2])
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert response.status_code == 503 and "catalog is busy" in response.text
        assert _statuses(stack) == {"ready": 1} and _stored_files(stack) == before
        response = browser.upload(photos[1:2])  # and it works once the lock is gone
        assert response.status_code == 200

        # The same photo from two browsers at the same moment: one image.
        other = stack.browser("second")
        start = threading.Barrier(2)
        codes: list[int] = []

        def send(b) -> None:  # type: ignore[no-untyped-def]
            start.wait()
            r = b.upload(photos[2:3])
            codes.append(r.status_code)
            if r.status_code == 400:
                assert "already in the catalog" in r.text

        threads = [threading.Thread(target=send, args=(b,)) for b in (browser, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [200, 400]
        with _db(stack) as db:
            assert db.execute("select count(*) from gallery_image where original_name = ?", (photos[2].name,)).fetchone() == (1,)
            count = db.execute("select count(*) from gallery_image").fetchone()[0]
        _wait(stack, lambda: set(_statuses(stack)) == {"ready"})
        assert count == 3 and _stored_files(stack) == 3 * count  # no orphan files
        assert Path(stack.var / "private").is_dir()
