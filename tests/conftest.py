from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

# The browser tests' fixtures (a live product and Chromium), module-scoped.
pytest_plugins = ["tests.support.browser"]

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT.parent / "shared" / "datasets" / "leeds-butterfly"


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):  # type: ignore[no-untyped-def]
    """Every test writes uploads into its own temporary MEDIA_ROOT."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    settings.PRIVATE_MEDIA_ROOT = tmp_path / "private"
    settings.STORAGES = {
        **settings.STORAGES,
        "private": {**settings.STORAGES["private"], "OPTIONS": {"location": str(tmp_path / "private")}},
    }
    settings.COPYRIGHT = {**settings.COPYRIGHT, "INDEX_DIR": str(tmp_path / "copy-index")}
    from gallery.copyright.selectors import catalog_keypoints, copy_index
    from gallery.search import spacememo
    from gallery.search.index import catalog_index

    catalog_index.clear()
    spacememo.clear()
    copy_index.clear()
    catalog_keypoints.clear()


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> None:
    """The limiter's counters (the cache) start empty in every test."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def media_files(settings) -> Callable[[], list[Path]]:  # type: ignore[no-untyped-def]
    """Every stored file: public display copies and thumbnails, private originals."""
    roots = [Path(settings.MEDIA_ROOT), Path(settings.PRIVATE_MEDIA_ROOT)]
    return lambda: sorted(p for root in roots for p in root.rglob("*") if p.is_file())


@pytest.fixture
def user(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_user(username="uploader", password="a long test password")


@pytest.fixture
def user_client(client, user):  # type: ignore[no-untyped-def]
    """A browser signed in as an ordinary (non-staff) user."""
    client.force_login(user)
    return client


def photo_bytes(
    color: tuple[int, int, int] = (200, 60, 40), size: tuple[int, int] = (320, 240), fmt: str = "JPEG", seed: int = 0
) -> bytes:
    """A small textured photo made in memory."""
    rng = np.random.default_rng(seed)
    base = np.zeros((size[1], size[0], 3), dtype=np.float32) + np.array(color, dtype=np.float32)
    noise = rng.normal(0, 25, size=base.shape)
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    PILImage.fromarray(arr).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def make_photo() -> Callable[..., bytes]:
    return photo_bytes


def dataset_photos() -> dict[str, list[Path]]:
    """Leeds butterfly photos grouped by species (class id = first three digits)."""
    groups: dict[str, list[Path]] = {}
    for p in sorted((DATASET / "images").glob("*.jpg")):
        groups.setdefault(p.name[:3], []).append(p)
    return groups


@pytest.fixture(scope="session")
def butterflies() -> dict[str, list[Path]]:
    groups = dataset_photos()
    if not groups:
        pytest.fail(f"the evaluation set is missing at {DATASET}")
    return groups
