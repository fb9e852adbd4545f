"""A short version of the load benchmark: concurrent searches and uploads, no errors,
every upload ready afterwards (speed is reported by `manage.py loadtest`, not asserted)."""

from __future__ import annotations

import pytest

from gallery.loadtest import run_load

pytestmark = pytest.mark.slow


def test_concurrent_searches_and_uploads_without_errors(tmp_path, butterflies) -> None:  # type: ignore[no-untyped-def]
    photos = [p for group in butterflies.values() for p in group[:8]]
    report = run_load(photos=photos, search_clients=8, upload_clients=2, duration=10, seed_catalog=10, var=tmp_path)
    print(report.summary())
    assert report.requests("search") > 0 and report.uploaded_ids
    assert report.errors == []
    assert report.ready == len(report.uploaded_ids)
