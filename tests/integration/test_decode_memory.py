"""Decompression bombs of every accepted format against the per-decode memory budget,
measured for real: the peak RSS of a child process decoding them (tests/decode_memory.py).

Each bomb is refused from its header (nothing decoded, a clear message and a stable
code) or decoded within the budget; files just under the budget of each format show
the header arithmetic is not optimistic; parallel decodes are bounded by the number of
decode slots."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from django.conf import settings

from gallery.catalog import pipeline
from gallery.catalog import services as catalog_services
from gallery.catalog.models import Image
from gallery.errors import ImageRejected
from gallery.vision.preprocess import ImageDecodeError
from tests.support import hostile_uploads as h
from tests.support.decode_memory import measure_decode_together, measure_decodes

BUDGET_MB = 256  # IMAGESEARCH_DECODE_MEMORY_MB's default, the stated ceiling per decode
HEADER_ONLY_MB = 8  # a refused file is never decoded

# name → (bytes, expected outcome: a refusal code, or "decoded")
BOMBS: dict[str, tuple[Callable[[], bytes], str]] = {
    "lossless WebP 7000²": (lambda: h.webp_lossless_claiming(7000, 7000), "too_large_to_decode"),
    "animated WebP, 7000² canvas": (lambda: h.webp_canvas_claiming(7000, 7000), "too_large_to_decode"),
    "float32 TIFF 7000²": (lambda: h.tiff_float_claiming(7000, 7000), "too_large_to_decode"),
    "int32 TIFF 7000²": (lambda: h.tiff_int32_claiming(7000, 7000), "too_large_to_decode"),
    "progressive 4:4:4 JPEG claiming 7000²": (lambda: h.jpeg_progressive_claiming(7000, 7000), "too_large_to_decode"),
    "RLE BMP 7000²": (lambda: h.bmp_rle_claiming(7000, 7000), "too_large_to_decode"),
    "PNG claiming 60000²": (lambda: h.png_claiming(60000, 60000), "too_many_pixels"),
    "16-bit grey PNG 7000²": (lambda: h.png_deep_claiming(7000, 7000), "decoded"),
    "GIF, 7000² canvas": (lambda: h.gif_claiming(7000, 7000), "decoded"),
    "multi-page TIFF, 7000² float pages after a photo": (lambda: h.tiff_multipage_bomb(7000, 7000, pages=2), "decoded"),
    # Just under the budget in each format: the header arithmetic must not be optimistic.
    "lossless WebP 3800²": (lambda: h.webp_lossless_claiming(3800, 3800), "decoded"),
    "16-bit RGBA PNG 6700²": (lambda: h.png_deep_claiming(6700, 6700, color_type=6), "decoded"),
    "float32 TIFF 5400²": (lambda: h.tiff_float_claiming(5400, 5400), "decoded"),
    "RLE BMP 2800²": (lambda: h.bmp_rle_claiming(2800, 2800), "decoded"),
    "progressive 4:4:4 JPEG 5000²": (lambda: h.jpeg_big(5000, 5000, progressive=True, subsampling=0), "decoded"),
    "baseline JPEG 8000×6000": (lambda: h.jpeg_big(8000, 6000), "decoded"),
}


@pytest.fixture(scope="module")
def measured() -> dict[str, tuple[str, float, str]]:
    """name → (outcome, peak MB, message), every bomb measured once in one child."""
    names = list(BOMBS)
    results = measure_decodes([BOMBS[n][0]() for n in names])
    out = {}
    for name, r in zip(names, results, strict=True):
        (o,) = r.outcomes
        out[name] = ("decoded" if o["ok"] else str(o["code"]), r.peak_mb, str(o.get("message", "")))
    return out


@pytest.mark.parametrize("name", list(BOMBS))
def test_each_bomb_is_refused_from_its_header_or_decoded_within_the_budget(name: str, measured) -> None:  # type: ignore[no-untyped-def]
    outcome, peak_mb, message = measured[name]
    assert outcome == BOMBS[name][1], message
    if outcome == "decoded":
        assert peak_mb <= BUDGET_MB, f"{name}: {peak_mb:.0f} MB"
    else:
        assert peak_mb <= HEADER_ONLY_MB, f"{name}: {peak_mb:.0f} MB spent on a refused file"
        assert "pixels" in message and ("MB a photo may use" in message or "the limit is" in message or "RLE" in message)


def test_four_parallel_decodes_are_bounded_by_the_decode_slots() -> None:
    """Four 7000² 16-bit PNGs at once: two decode, two wait; with four slots the same
    uploads take more than two budgets."""
    files = [h.png_deep_claiming(7000, 7000)] * 4
    bounded = measure_decode_together(files, env={"IMAGESEARCH_DECODE_CONCURRENCY": "2"})
    assert all(o["ok"] for o in bounded.outcomes)
    assert bounded.peak_mb <= 2 * BUDGET_MB, f"{bounded.peak_mb:.0f} MB"
    unbounded = measure_decode_together(files, env={"IMAGESEARCH_DECODE_CONCURRENCY": "4"})
    assert unbounded.peak_mb > bounded.peak_mb * 1.4, (unbounded.peak_mb, bounded.peak_mb)


@pytest.mark.django_db
def test_a_refused_bomb_stores_nothing_and_says_why(media_files) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageRejected) as refused:
        catalog_services.image_create(file=io.BytesIO(h.tiff_float_claiming(7000, 7000)), original_name="float.tif", queue=False)
    assert refused.value.code == "too_large_to_decode"
    assert "7000×7000" in str(refused.value) and "256 MB" in str(refused.value)
    assert Image.objects.count() == 0 and media_files() == []


@pytest.mark.django_db
def test_the_worker_fails_a_stored_bomb_with_a_reason_and_embeds_the_rest(make_photo) -> None:  # type: ignore[no-untyped-def]
    """A file stored before the budget existed (or by another route) is not decoded by
    the worker: the image fails with the reason, the batch goes on."""
    from django.core.files.base import ContentFile

    good = catalog_services.image_create(file=io.BytesIO(make_photo(seed=1)), original_name="ok.jpg", queue=False)
    bomb = catalog_services.image_create(file=io.BytesIO(make_photo(seed=2)), original_name="bomb.webp", queue=False)
    bomb.file.save("originals/bomb.webp", ContentFile(h.webp_lossless_claiming(7000, 7000)), save=True)
    outcome = catalog_services.images_embed_batch(image_id=good.pk)
    assert good.pk in outcome.ready and bomb.pk in outcome.failed
    bomb.refresh_from_db()
    assert bomb.status == "failed" and "MB a photo may use" in bomb.status_reason


def test_a_decode_waits_for_a_slot_then_is_refused_as_busy(settings) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "DECODE_CONCURRENCY": 1, "DECODE_WAIT_SECONDS": 0}
    slots = pipeline._decode_slots()
    assert slots.acquire(timeout=1)
    try:
        with pytest.raises(ImageDecodeError) as busy:
            pipeline.decode(h.jpeg())
        assert busy.value.code == "server_busy"
    finally:
        slots.release()
    assert pipeline.decode(h.jpeg()).width == 160


def test_the_budget_is_a_setting() -> None:
    assert settings.IMAGESEARCH["DECODE_MEMORY_MB"] == BUDGET_MB
