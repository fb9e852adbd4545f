"""Decoding: every common photo becomes upright RGB; damaged files get a clear reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

from gallery.vision.preprocess import ImageDecodeError, PreprocessOptions, decode_image, prepare


def _encode(im: PILImage.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kw)
    return out.getvalue()


def _arrow(w: int = 120, h: int = 80) -> PILImage.Image:
    """Red left half, blue right half: orientation is visible in the pixels."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    return PILImage.fromarray(arr)


def test_exif_orientation_is_applied() -> None:
    im = _arrow()
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    decoded = decode_image(_encode(im, "JPEG", exif=exif, quality=95))
    assert (decoded.width, decoded.height) == (80, 120)
    top, bottom = np.asarray(decoded.image)[5, 40], np.asarray(decoded.image)[-5, 40]
    assert top[0] > 200 and top[2] < 60  # the red half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    "make",
    [
        lambda: _encode(_arrow().convert("CMYK"), "JPEG"),
        lambda: _encode(_arrow().convert("P", palette=PILImage.Palette.ADAPTIVE), "PNG"),
        lambda: _encode(_arrow().convert("RGBA"), "PNG"),
        lambda: _encode(_arrow().convert("L"), "PNG"),
        lambda: _encode(_arrow().convert("LA"), "PNG"),
        lambda: _encode(PILImage.fromarray(np.asarray(_arrow().convert("L"), dtype=np.uint16) * 257), "PNG"),
        lambda: _encode(_arrow(), "WEBP"),
        lambda: _encode(_arrow(), "GIF"),
        lambda: _encode(_arrow(), "TIFF"),
    ],
    ids=["cmyk-jpeg", "palette", "rgba", "grayscale", "gray-alpha", "16-bit", "webp", "gif", "tiff"],
)
def test_modes_become_rgb(make) -> None:  # type: ignore[no-untyped-def]
    decoded = decode_image(make())
    assert decoded.image.mode == "RGB"
    arr = np.asarray(decoded.image).astype(int)
    assert arr.shape == (80, 120, 3)
    # the two halves stay distinguishable (not a blank conversion)
    assert np.abs(arr[:, :50].mean(axis=(0, 1)) - arr[:, 70:].mean(axis=(0, 1))).sum() > 30


def test_palette_transparency_is_composited_on_white() -> None:
    rgba = PILImage.new("RGBA", (40, 40), (0, 0, 0, 0))
    decoded = decode_image(_encode(rgba.convert("P"), "PNG", transparency=0))
    assert np.asarray(decoded.image).min() == 255


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is plain text, not a photo", "not an image"),
        (_encode(_arrow(400, 300), "JPEG")[:600], "damaged or truncated"),
        (_encode(_arrow(400, 300), "PNG")[:200], "damaged or truncated"),
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png"],
)
def test_bad_files_get_a_readable_reason(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data)


def test_pixel_limit_is_checked_before_decoding() -> None:
    bomb = _encode(PILImage.new("L", (6000, 6000)), "PNG")  # ~36 MP, a few KB compressed
    assert len(bomb) < 200_000
    with pytest.raises(ImageDecodeError, match="megapixels"):
        decode_image(bomb, max_pixels=20_000_000)


def test_prepare_resizes_short_side_and_centre_crops() -> None:
    im = _arrow(600, 300)
    out = prepare(im, size=224, resize_short=256)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    gray = prepare(im, size=224, resize_short=256, options=PreprocessOptions(grayscale=True, denoise=True))
    assert np.array_equal(gray[..., 0], gray[..., 1])
