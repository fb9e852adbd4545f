"""Several real Celery workers on one Redis and one PostgreSQL database share the catalog's
work without doing any of it twice (run by the test command in its PostgreSQL pass)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest

from benchmarks.livestack import ROOT, live_stack

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL server named by DATABASE_URL, dropped afterwards."""
    server = os.environ.get("DATABASE_URL", "")
    assert server.startswith("postgres"), "run these with DATABASE_URL naming a PostgreSQL database (scripts/test.sh does)"
    name = f"workers_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield server.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_workers_share_a_bulk_import_and_embed_each_image_once(tmp_path, butterflies, database_url: str) -> None:  # type: ignore[no-untyped-def]
    photos = [p for group in butterflies.values() for p in group[:4]][:36]  # 36 photos, 9 species
    folder = tmp_path / "import"
    folder.mkdir()
    for p in photos:
        shutil.copy(p, folder / p.name)
    with live_stack(
        tmp_path / "var",
        workers=2,
        DATABASE_URL=database_url,
        IMAGESEARCH_BATCH_SIZE="3",
        IMAGESEARCH_PCA_MIN_IMAGES="1000",
    ) as stack:
        stack.wait_workers_ready(["w1", "w2"])
        command = [sys.executable, "manage.py", "import_images", str(folder), "--queue", "--no-progress"]
        subprocess.run(command, cwd=ROOT, env=stack.env, check=True, stdout=subprocess.DEVNULL)

        def rows() -> list[tuple[int, str, int, str]]:
            with psycopg.connect(database_url) as conn:
                return conn.execute("SELECT id, status, attempts, embedded_by FROM gallery_image").fetchall()

        deadline = time.monotonic() + 300
        while {r[1] for r in rows()} != {"ready"}:
            assert time.monotonic() < deadline, f"{Counter(r[1] for r in rows())}\n{stack.log_tail()}"
            time.sleep(0.5)
        with psycopg.connect(database_url) as conn:
            per_image = conn.execute("SELECT image_id, count(*) FROM gallery_embedding GROUP BY image_id").fetchall()
        images = rows()

    assert len(images) == 36
    assert sorted(per_image) == sorted((r[0], 1) for r in images)  # exactly one embedding per image
    assert {r[2] for r in images} == {1}  # each image was claimed, and embedded, exactly once
    by_worker = Counter(r[3].split("@")[0] for r in images)
    assert set(by_worker) == {"w1", "w2"}, by_worker  # both workers did some of the work
    print(f"images embedded per worker: {dict(by_worker)}")
