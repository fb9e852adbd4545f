"""Decoding: every common photo becomes upright RGB; damaged files get a clear reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage

from gallery.vision.preprocess import (
    ImageDecodeError,
    PreprocessOptions,
    decode_image,
    jpeg_as_shown,
    jpeg_has_metadata,
    prepare,
    thumbnail_bytes,
)


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


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (224, 224), (250, 1000), (100, 80), (1024, 768), (3000, 2000)])
def test_prepare_gives_the_pixels_of_resizing_the_whole_photo_then_cropping(size: tuple[int, int]) -> None:
    from skimage import data as skdata

    im = PILImage.fromarray(skdata.astronaut()).resize(size)
    w, h = size
    scale = 256 / min(w, h)
    nw, nh = max(224, round(w * scale)), max(224, round(h * scale))
    whole = im.resize((nw, nh), PILImage.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - 224) // 2, (nh - 224) // 2
    expected = np.asarray(whole.crop((left, top, left + 224, top + 224)), dtype=np.int16)
    got = prepare(im, size=224, resize_short=256).astype(np.int16)
    assert got.shape == (224, 224, 3)
    assert np.abs(got - expected).max() <= 2 and np.abs(got - expected).mean() < 0.2


@pytest.mark.parametrize(("size", "expected"), [((500, 375), (400, 300)), ((300, 1200), (100, 400)), ((2048, 1536), (400, 300))])
def test_a_thumbnail_fits_its_box_and_looks_like_the_photo(size: tuple[int, int], expected: tuple[int, int]) -> None:
    arr = _scene(*size)
    thumb = PILImage.open(io.BytesIO(thumbnail_bytes(PILImage.fromarray(arr), max_side=400)))
    assert thumb.format == "JPEG" and thumb.size == expected
    reference = _reference(arr, expected)
    assert np.abs(np.asarray(thumb, dtype=np.float32) - reference).mean() < 3.0
    small = PILImage.fromarray(_scene(120, 80))  # already small: kept at its size
    assert PILImage.open(io.BytesIO(thumbnail_bytes(small, max_side=400))).size == (120, 80)


# ---------------------------------------------------------------- big pictures, reduced


def _scene(w: int, h: int) -> np.ndarray:
    """A smooth two-way gradient with a red block: comparable after any good resize."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1).astype(np.uint8)
    arr[h // 4 : h // 2, w // 4 : w // 2] = (230, 20, 20)
    return arr


def _reference(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(PILImage.fromarray(arr).resize(size, PILImage.Resampling.LANCZOS), dtype=np.float32)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_a_big_photo_is_decoded_at_the_display_size_and_looks_the_same(fmt: str) -> None:
    arr = _scene(4800, 3000)
    decoded = decode_image(_encode(PILImage.fromarray(arr), fmt, **({"quality": 95} if fmt == "JPEG" else {})))
    assert (decoded.width, decoded.height) == (4800, 3000), "the upload's own size is recorded"
    assert decoded.image.size == (2048, 1280) and decoded.image.mode == "RGB"
    diff = np.abs(np.asarray(decoded.image, dtype=np.float32) - _reference(arr, (2048, 1280)))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((4032, 3024), 2048, (2016, 1512)),  # a 12-megapixel phone photo: decoded at half size
        ((4000, 3000), 2048, (2000, 1500)),
        ((4032, 3024), 512, (504, 378)),  # an eighth rather than a quarter and resampled
        ((3264, 2448), 2048, (2048, 1536)),  # half would be far under the working side: resampled to it
        ((2100, 1400), 2048, (2048, 1365)),
    ],
)
def test_a_phone_photo_just_over_twice_the_working_size_decodes_at_a_fraction(
    size: tuple[int, int], max_side: int, expected: tuple[int, int]
) -> None:
    arr = _scene(*size)
    decoded = decode_image(_encode(PILImage.fromarray(arr), "JPEG", quality=90), max_side=max_side)
    assert decoded.image.size == expected and (decoded.width, decoded.height) == size
    assert np.abs(np.asarray(decoded.image, dtype=np.float32) - _reference(arr, expected)).mean() < 3.0


def test_a_big_rotated_jpeg_is_reduced_and_upright() -> None:
    arr = _scene(4400, 2200)
    exif = PILImage.Exif()
    exif[0x0112] = 6
    decoded = decode_image(_encode(PILImage.fromarray(arr), "JPEG", exif=exif, quality=95))
    assert (decoded.width, decoded.height) == (2200, 4400)
    assert decoded.image.size == (1024, 2048)
    upright = np.ascontiguousarray(np.rot90(arr, k=-1))
    diff = np.abs(np.asarray(decoded.image, dtype=np.float32) - _reference(upright, (1024, 2048)))
    assert diff.mean() < 2.0


def test_big_palette_transparency_is_white_after_reduction() -> None:
    im = PILImage.new("P", (5000, 3000), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    im.paste(1, (2500, 0, 5000, 3000))
    decoded = decode_image(_encode(im, "PNG", transparency=0))
    px = np.asarray(decoded.image)
    assert decoded.image.size == (2048, 1229)
    assert px[600, 200].min() > 250, "the transparent half is white"
    assert tuple(px[600, 1800]) == (0, 0, 255)


def test_big_16_bit_and_float_images_keep_their_tones() -> None:
    ramp16 = np.tile(np.linspace(0, 65535, 4800).astype(np.uint16), (300, 1))
    decoded = decode_image(_encode(PILImage.fromarray(ramp16), "PNG"))
    row = np.asarray(decoded.image)[60, :, 0].astype(int)
    assert decoded.image.size == (2048, 128)
    assert row[0] < 3 and row[-1] > 252 and np.all(np.diff(row) >= 0), "a dark-to-bright ramp"

    ramp = np.tile(np.linspace(-1.0, 1.0, 4800, dtype=np.float32), (300, 1))
    ramp[0:10, 0:10] = np.nan
    ramp[20:30, 0:10] = np.inf
    decoded = decode_image(_encode(PILImage.fromarray(ramp, "F"), "TIFF"))
    row = np.asarray(decoded.image)[60, :, 0].astype(int)
    assert row[0] < 3 and row[-1] > 252 and np.all(np.diff(row) >= 0), "stretched from min to max, NaN and ∞ left out"


def test_small_photos_are_decoded_pixel_for_pixel() -> None:
    arr = _scene(640, 480)
    decoded = decode_image(_encode(PILImage.fromarray(arr), "PNG"))
    assert np.array_equal(np.asarray(decoded.image), arr)


def test_over_the_memory_budget_is_refused_with_what_it_would_take() -> None:
    data = _encode(PILImage.new("RGBA", (3000, 3000)), "PNG")
    with pytest.raises(ImageDecodeError) as refused:
        decode_image(data, max_memory=32 * 2**20)
    assert refused.value.code == "too_large_to_decode"
    assert "3000×3000" in str(refused.value) and "32 MB" in str(refused.value)
    assert decode_image(data).width == 3000


@pytest.mark.parametrize(
    ("size", "enough", "expected"),
    [
        ((4000, 3000), (640, 297), (640, 480)),  # a phone photo for a search: its preview's size
        ((3000, 4000), (640, 297), (480, 640)),
        ((4000, 800), (640, 297), (1485, 297)),  # a panorama: its short side still feeds the network
        ((500, 375), (640, 297), (500, 375)),  # already small: as it is
        ((4000, 3000), (6400, 2970), (2000, 1500)),  # a small region asks for more: never above the working size
    ],
)
def test_a_decode_is_no_larger_than_its_caller_needs(
    size: tuple[int, int], enough: tuple[float, float], expected: tuple[int, int]
) -> None:
    arr = _scene(*size)
    data = io.BytesIO()
    PILImage.fromarray(arr).save(data, "JPEG", quality=90)
    decoded = decode_image(data.getvalue(), enough=enough)
    assert decoded.image.size == expected
    assert (decoded.width, decoded.height) == size  # the file's own size is still what is recorded
    reference = _reference(arr, expected)
    assert np.abs(np.asarray(decoded.image, dtype=np.float32) - reference).mean() < 3.0


def _photo_jpeg(size: tuple[int, int] = (320, 240), mode: str = "RGB", **save: object) -> tuple[PILImage.Image, bytes]:
    rng = np.random.default_rng(3)
    ramp = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    picture = PILImage.fromarray(np.clip(ramp + rng.normal(0, 20, ramp.shape), 0, 255).astype(np.uint8)).convert(mode)
    out = io.BytesIO()
    picture.save(out, format="JPEG", **save)
    return picture, out.getvalue()


def test_a_jpeg_shown_as_sent_keeps_its_pixels_and_loses_its_metadata() -> None:
    exif = PILImage.Exif()
    exif[0x010F] = "Camera maker"
    exif[0x0112] = 1  # upright
    icc = b"\0\0\0\x10" + b"a colour profile"
    _, raw = _photo_jpeg(exif=exif, comment=b"taken at home", icc_profile=icc, progressive=True)
    shown = jpeg_as_shown(raw, size=(320, 240))
    assert shown is not None and len(shown) < len(raw)
    for private in (b"Camera maker", b"taken at home", b"Exif"):
        assert private in raw and private not in shown
    with PILImage.open(io.BytesIO(shown)) as kept, PILImage.open(io.BytesIO(raw)) as sent:
        assert kept.info.get("icc_profile") == icc  # colours show as sent
        assert np.array_equal(np.asarray(kept), np.asarray(sent))  # the image data untouched


@pytest.mark.parametrize(
    ("what", "make", "size"),
    [
        ("rotated by EXIF", lambda: _photo_jpeg(exif=_rotated())[1], (320, 240)),
        ("another size", lambda: _photo_jpeg()[1], (160, 120)),
        ("CMYK", lambda: _photo_jpeg(mode="CMYK")[1], (320, 240)),
        ("PNG", lambda: _png(), (320, 240)),
        ("cut short in its headers", lambda: _photo_jpeg()[1][:300], (320, 240)),
        ("not an image", lambda: b"\xff\xd8\xff\xe0 not a jpeg", (320, 240)),
    ],
)
def test_a_file_not_shown_as_its_decoded_picture_is_not_passed_on(what: str, make, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    assert jpeg_as_shown(make(), size=size) is None, what


def _rotated() -> PILImage.Exif:
    exif = PILImage.Exif()
    exif[0x0112] = 6
    return exif


def _png() -> bytes:
    out = io.BytesIO()
    _photo_jpeg()[0].save(out, format="PNG")
    return out.getvalue()


def test_a_metadata_segment_shows_in_the_first_bytes_of_a_jpeg_however_long_it_runs() -> None:
    _, clean = _photo_jpeg(optimize=True)  # as the product encodes its copies
    _, commented = _photo_jpeg(optimize=True, comment=b"x" * 60_000)
    assert not jpeg_has_metadata(clean[:8192]) and not jpeg_has_metadata(clean)
    assert jpeg_has_metadata(commented[:8192])
    assert jpeg_has_metadata(_photo_jpeg(exif=_rotated())[1][:8192])
