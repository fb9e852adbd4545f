"""A short version of the load benchmark: concurrent searches and uploads, no errors,
every upload ready afterwards (speed is reported by `manage.py loadtest`, not asserted)."""

from __future__ import annotations

import pytest

from benchmarks.loadtest import run_load

pytestmark = pytest.mark.slow


def test_concurrent_searches_and_uploads_without_errors(tmp_path, butterflies) -> None:  # type: ignore[no-untyped-def]
    photos = [p for group in butterflies.values() for p in group[:8]]
    report = run_load(
        photos=photos, search_clients=8, upload_clients=2, duration=10, seed_catalog=10, var=tmp_path, measure_forward=True
    )
    summary = report.summary()
    print(summary)
    assert report.requests("search") > 0 and report.uploaded_ids
    assert report.forward_ips > 0 and "capacity:" in summary and "target ≥ 0.8" in summary
    assert report.errors == []
    assert report.ready == len(report.uploaded_ids)


def test_attackers_are_refused_while_normal_users_keep_working(tmp_path, butterflies) -> None:  # type: ignore[no-untyped-def]
    """A short hostile-traffic run (`manage.py loadtest --hostile` reports the figures)."""
    from benchmarks.hostile import run_hostile
    from tests.support import hostile_uploads as h

    photos = [p for group in butterflies.values() for p in group[:7]]
    bombs = [("webp-7000.webp", h.webp_lossless_claiming(7000, 7000)), ("float-7000.tif", h.tiff_float_claiming(7000, 7000))]
    report = run_hostile(
        photos=photos, bombs=bombs, normal_clients=2, duration=8, slow_sockets=40, flood_clients=3, client_timeout=3, var=tmp_path
    )
    print(report.summary())
    assert report.calm.latencies and report.hostile.latencies
    assert report.calm.errors == [] and report.hostile.errors == []  # normal users never refused
    assert report.attacks["anonymous API search flood"]["429"] > 0
    assert set(report.attacks["decompression bombs"]) <= {"400", "429"}  # refused, never stored or a 500
    assert report.attacks["token guesses"]["429"] > report.attacks["token guesses"]["400"]
    assert report.slow_sockets_closed == report.slow_sockets == 40
