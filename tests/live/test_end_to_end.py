"""The whole product with real processes: a Redis broker, a Celery worker, the web server."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest

from benchmarks.livestack import live_stack

pytestmark = pytest.mark.slow


def _result_names(html: str) -> list[str]:
    return re.findall(r'<span class="name" title="([^"]+)"', html)


def test_upload_over_http_then_search_with_a_held_back_photo(tmp_path, butterflies) -> None:  # type: ignore[no-untyped-def]
    species = ["001", "004", "009"]
    catalog = [p for s in species for p in butterflies[s][:6]]
    held_back = {s: butterflies[s][-1] for s in species}
    with live_stack(tmp_path / "var", IMAGESEARCH_PCA_MIN_IMAGES="16", IMAGESEARCH_PCA_DIMS="12") as stack:
        browser = stack.browser()
        ids: list[int] = []
        for chunk in (catalog[:9], catalog[9:]):
            response = browser.upload(chunk)
            assert response.status_code == 200, response.text[:500]
            ids += [int(i) for i in re.search(r"ids=([\d,]+)", response.url).group(1).split(",")]  # type: ignore[union-attr]
        assert len(ids) == len(catalog)
        states = browser.wait_ready(ids)
        assert set(states.values()) == {"ready"}, f"{states}\n{stack.log_tail()}"

        db = sqlite3.connect(stack.var / "db.sqlite3")
        deadline = time.monotonic() + 90
        while not db.execute("select count(*) from gallery_reduction where is_active").fetchone()[0]:
            assert time.monotonic() < deadline, "the background PCA fit never activated\n" + stack.log_tail()
            time.sleep(0.5)
        assert db.execute("select fitted_on, dims from gallery_reduction where is_active").fetchone() == (18, 12)

        for s, query in held_back.items():
            response = browser.search(query)
            assert response.status_code == 200
            names = _result_names(response.text)
            assert names and names[0].startswith(s), f"{query.name}: {names}"
            assert "PCA-12" in response.text
        assert db.execute("select count(*) from gallery_image").fetchone()[0] == len(catalog)  # queries not stored
        detail = browser.session.get(f"{stack.url}/images/{ids[0]}/", timeout=10).text
        assert _result_names(detail)[1].startswith(species[0])  # [0] is the image itself
