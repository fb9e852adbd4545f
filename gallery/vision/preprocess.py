"""Safe decoding and per-backbone preprocessing of photos.

Every common photo becomes an upright 8-bit RGB image: EXIF orientation is applied,
CMYK, palette, alpha, 16-bit and grayscale modes are converted, and the pixel count is
bounded before any pixel is decoded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile, ImageFilter, ImageOps

# Pillow warns at 89M pixels and raises at twice that; the product sets its own bound.
PILImage.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"})


class ImageDecodeError(ValueError):
    """The bytes are not a photo the product accepts; the message is shown to the user."""


@dataclass(frozen=True)
class PreprocessOptions:
    """The seed's optional steps, both off by default."""

    grayscale: bool = False
    denoise: bool = False


@dataclass(frozen=True)
class DecodedImage:
    image: PILImage.Image
    format: str
    width: int
    height: int


def decode_image(data: bytes | BinaryIO, *, max_pixels: int = 50_000_000) -> DecodedImage:
    """Decode and verify an image fully; raise ImageDecodeError with a readable reason."""
    raw = data if isinstance(data, bytes) else data.read()
    if not raw:
        raise ImageDecodeError("The file is empty.")
    try:
        with PILImage.open(io.BytesIO(raw)) as probe:
            fmt = probe.format or ""
            width, height = probe.size
    except PILImage.UnidentifiedImageError:
        raise ImageDecodeError("The file is not an image in a supported format (JPEG, PNG, GIF, WebP, BMP, TIFF).") from None
    except Exception as exc:
        raise ImageDecodeError(
            f"The image is damaged or truncated: its header could not be read ({exc.__class__.__name__})."
        ) from None
    if fmt not in ALLOWED_FORMATS:
        raise ImageDecodeError(f"Images in {fmt or 'this'} format are not accepted.")
    if width <= 0 or height <= 0:
        raise ImageDecodeError("The image has no pixels.")
    if width * height > max_pixels:
        raise ImageDecodeError(f"The image is {width}×{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels.")
    try:
        with PILImage.open(io.BytesIO(raw)) as im:
            im.seek(0)  # animated images: the first frame
            im.load()
            upright = ImageOps.exif_transpose(im) or im
            rgb = to_rgb(upright)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(
            f"The image is damaged or truncated and could not be decoded ({exc.__class__.__name__})."
        ) from None
    return DecodedImage(rgb, fmt, rgb.width, rgb.height)


def display_copy_bytes(image: PILImage.Image, *, max_side: int = 2048, quality: int = 88) -> bytes:
    """A re-encoded JPEG of a decoded (upright RGB) image, at most `max_side` pixels on its
    long side. Nothing of the uploaded file survives but the pixels: no EXIF, GPS, ICC,
    comments or trailing bytes."""
    copy = to_rgb(image)
    if max(copy.size) > max_side:
        copy.thumbnail((max_side, max_side), PILImage.Resampling.LANCZOS)
    out = io.BytesIO()
    copy.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def to_rgb(im: PILImage.Image) -> PILImage.Image:
    """8-bit RGB from any Pillow mode; transparency is composited onto white."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        scale = 255.0 / 65535.0 if hi > 255 else 1.0
        return PILImage.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return PILImage.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("LA", "La", "PA"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa"):
        background = PILImage.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def prepare(image: PILImage.Image, *, size: int, resize_short: int, options: PreprocessOptions | None = None) -> np.ndarray:
    """Resize the short side (bicubic), centre-crop `size`², return uint8 (size, size, 3)."""
    options = options or PreprocessOptions()
    im = image if image.mode == "RGB" else to_rgb(image)
    if options.grayscale:
        im = im.convert("L").convert("RGB")
    if options.denoise:
        im = im.filter(ImageFilter.MedianFilter(3))
    w, h = im.size
    scale = resize_short / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), PILImage.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
