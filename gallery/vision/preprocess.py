"""Safe decoding and per-backbone preprocessing of photos.

Every common photo becomes an upright 8-bit RGB image: EXIF orientation is applied,
CMYK, palette, alpha, 16-bit, 32-bit and float modes are converted, and only the first
frame of an animation or a multi-page file is read.

Decoding is bounded in memory. The header is read first (size, mode, bit depth,
compression) and the bytes a decode would take are computed from it; a file over the
budget is refused before a pixel is decoded. JPEGs are decoded at a reduced scale
(libjpeg's DCT scaling); other formats are decoded at full size and reduced strip by
strip to the working size, so no whole-image copy is made in another mode or in float.
Nothing downstream (display copy, thumbnail, embedding, copy detection) needs more
than `WORKING_SIDE` pixels on the long side.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile, ImageFilter

# Pillow warns at 89M pixels and raises at twice that; the product sets its own bounds.
PILImage.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"})

# The display copy's long side: the largest picture anything downstream needs.
WORKING_SIDE = 2048
# A JPEG that libjpeg can decode at a fraction of its size landing this little under the
# working side is kept at that size: a 12-megapixel phone photo (4032 px) decodes at half
# size (2016 px) instead of whole and resampled, at about a quarter of the CPU.
WORKING_SIDE_SLACK = 0.025
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_MEMORY = 256 * 2**20

# Bytes per pixel of Pillow's in-memory modes ("RGB" is stored as 4 bytes a pixel).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_DEEP_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
# Pixels converted at a time when a decoded image is reduced to the working size.
_STRIP_PIXELS = 1 << 20
# Strip temporaries (a native strip, its float32 and RGB copies), encoder buffers, the
# interpreter's own small allocations: measured under 20 MB on 7000-pixel-wide strips.
_OVERHEAD = 24 * 2**20
# An RLE BMP is expanded by Pillow in Python, a few bytes of file per row of pixels:
# beyond this its decoder spends seconds of CPU however little memory it needs.
_RLE_BMP_MAX_PIXELS = 8_000_000

_TRANSPOSE_FOR_ORIENTATION = {
    2: PILImage.Transpose.FLIP_LEFT_RIGHT,
    3: PILImage.Transpose.ROTATE_180,
    4: PILImage.Transpose.FLIP_TOP_BOTTOM,
    5: PILImage.Transpose.TRANSPOSE,
    6: PILImage.Transpose.ROTATE_270,
    7: PILImage.Transpose.TRANSVERSE,
    8: PILImage.Transpose.ROTATE_90,
}


class ImageDecodeError(ValueError):
    """The bytes are not a photo the product accepts; the message is shown to the user,
    the code (stable) is for programs: empty_file, not_an_image, too_many_pixels,
    too_large_to_decode, server_busy."""

    def __init__(self, message: str, *, code: str = "not_an_image") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PreprocessOptions:
    """The seed's optional steps, both off by default."""

    grayscale: bool = False
    denoise: bool = False


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB picture of at most `WORKING_SIDE` pixels on its long side, with
    the upright size of the file it came from."""

    image: PILImage.Image
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class DecodePlan:
    """What a decode of a file's first frame will take, computed from its header."""

    format: str
    mode: str
    width: int  # as stored, before EXIF orientation
    height: int
    target: tuple[int, int]  # the working size, before orientation
    draft_scale: int  # JPEG: libjpeg decodes at 1/draft_scale
    peak_bytes: int  # the most memory the decode and reduction hold at once

    @property
    def pixels(self) -> int:
        return self.width * self.height


def decode_image(
    data: bytes | BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_memory: int = DEFAULT_MAX_MEMORY,
    max_side: int = WORKING_SIDE,
    enough: tuple[float, float] | None = None,
    gate: AbstractContextManager[object] | None = None,
) -> DecodedImage:
    """Decode the first frame of an image within `max_memory` bytes, reduced to at most
    `max_side` pixels on its long side; raise ImageDecodeError with a readable reason.

    `enough` = (long, short): the caller needs no more than `long` pixels on the long side
    or `short` on the short side, whichever is larger, so the picture is reduced further
    (a JPEG decoded at a fraction of its size). `gate` is held while pixels are decoded
    (a bound on concurrent decodes); the header checks run before it, so a refused file
    never waits."""
    raw = data if isinstance(data, bytes) else data.read()
    if not raw:
        raise ImageDecodeError("The file is empty.", code="empty_file")
    try:
        im = PILImage.open(io.BytesIO(raw))
    except PILImage.UnidentifiedImageError:
        raise ImageDecodeError("The file is not an image in a supported format (JPEG, PNG, GIF, WebP, BMP, TIFF).") from None
    except Exception as exc:
        raise ImageDecodeError(
            f"The image is damaged or truncated: its header could not be read ({exc.__class__.__name__})."
        ) from None
    with im:
        plan = plan_decode(im, raw, max_pixels=max_pixels, max_memory=max_memory, max_side=max_side, enough=enough)
        with gate or contextlib.nullcontext():
            try:
                if plan.draft_scale > 1:
                    im.draft(None, plan.target)
                im.load()
                orientation = _orientation(im)  # after load: a PNG's EXIF may follow its pixels
                picture = _reduce_to_rgb(im, plan.target)
            except ImageDecodeError:
                raise
            except Exception as exc:
                raise ImageDecodeError(
                    f"The image is damaged or truncated and could not be decoded ({exc.__class__.__name__})."
                ) from None
    if plan.peak_bytes > _TRIM_ABOVE:
        _return_freed_memory()
    # Nothing of the file but its pixels goes on: Pillow keeps a JPEG's comment (and more)
    # with the picture and writes it again into every JPEG encoded from it.
    picture.info = {}
    width, height = plan.width, plan.height
    if orientation in _TRANSPOSE_FOR_ORIENTATION:
        picture = picture.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
        if orientation >= 5:
            width, height = height, width
    return DecodedImage(picture, plan.format, width, height)


# glibc keeps freed blocks of big decodes (Pillow allocates images in 16 MB blocks,
# under its adaptive mmap threshold) in its arenas; a large decode gives them back.
_TRIM_ABOVE = 64 * 2**20
_libc: ctypes.CDLL | None | bool = False


def _return_freed_memory() -> None:
    global _libc
    if _libc is False:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else None
        except OSError:
            _libc = None
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def plan_decode(
    im: PILImage.Image,
    raw: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_memory: int = DEFAULT_MAX_MEMORY,
    max_side: int = WORKING_SIDE,
    enough: tuple[float, float] | None = None,
) -> DecodePlan:
    """Check an opened (not yet decoded) image against the limits and return what its
    decode will take (`max_side` and `enough` as for `decode_image`); raise
    ImageDecodeError when it is refused."""
    fmt = im.format or ""
    width, height = im.size
    if fmt not in ALLOWED_FORMATS:
        raise ImageDecodeError(f"Images in {fmt or 'this'} format are not accepted.")
    if width <= 0 or height <= 0:
        raise ImageDecodeError("The image has no pixels.")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"The image is {width}×{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels.", code="too_many_pixels"
        )
    tiles = getattr(im, "tile", None) or []
    rle = fmt == "BMP" and bool(tiles) and tiles[0][0] == "bmp_rle"
    if rle and width * height > _RLE_BMP_MAX_PIXELS:
        raise ImageDecodeError(
            f"The image is a compressed (RLE) BMP of {width}×{height} pixels; such BMPs are accepted up to "
            f"{_RLE_BMP_MAX_PIXELS / 1e6:.0f} megapixels. Save it as PNG or JPEG.",
            code="too_large_to_decode",
        )
    scale = min(1.0, max_side / max(width, height))
    if enough is not None:
        scale = min(scale, max(enough[0] / max(width, height), enough[1] / min(width, height)))
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    draft_scale = 1
    if fmt in ("JPEG", "MPO") and len(tiles) == 1:
        ratio = min(width // target[0], height // target[1])
        draft_scale = next(s for s in (8, 4, 2, 1) if ratio >= s)
        finer = 2 * draft_scale
        if finer <= 8 and scale * max(width, height) >= max_side - 0.5:  # capped by the working side
            drafted = (-(-width // finer), -(-height // finer))
            if max(drafted) >= (1 - WORKING_SIDE_SLACK) * max_side:
                draft_scale, target = finer, drafted
    load_peak, held = _decode_bytes(im, raw, fmt, draft_scale=draft_scale, rle=rle)
    decoded = (-(-width // draft_scale), -(-height // draft_scale))
    peak = max(load_peak, held + _reduction_bytes(decoded, target, im.mode)) + _OVERHEAD
    if peak > max_memory:
        per_pixel = max(1.0, (peak - _OVERHEAD) / (width * height))
        fits = (max_memory - _OVERHEAD) / per_pixel
        raise ImageDecodeError(
            f"The image is {width}×{height} pixels ({_describe(fmt, im.mode)}); decoding it would take about "
            f"{peak / 2**20:.0f} MB, more than the {max_memory / 2**20:.0f} MB a photo may use. "
            f"Images like this one are accepted up to about {fits / 1e6:.0f} megapixels.",
            code="too_large_to_decode",
        )
    return DecodePlan(fmt, im.mode, width, height, target, draft_scale, peak)


def _describe(fmt: str, mode: str) -> str:
    kind = {"F": "32-bit float", "I": "32-bit integer", "RGBA": "with transparency", "LA": "with transparency"}.get(mode)
    if mode.startswith("I;16"):
        kind = "16-bit"
    return f"{fmt}, {kind}" if kind else fmt


def _decode_bytes(im: PILImage.Image, raw: bytes, fmt: str, *, draft_scale: int, rle: bool) -> tuple[int, int]:
    """(the peak while Pillow decodes the first frame, what stays held after it) in bytes.

    Measured on Pillow 12: WebP goes through libwebp's animation decoder, which holds two
    RGBA canvases and hands Pillow a third copy as bytes; libtiff reads a whole strip
    before Pillow unpacks it; Pillow's RLE BMP decoder builds the pixels in Python
    first; a progressive or multi-scan JPEG keeps every DCT coefficient (2 bytes each)
    of the full-size image, whatever the scale it is decoded at."""
    width, height = im.size
    pixel = _MODE_BYTES.get(im.mode, 4)
    pixels = width * height
    if fmt == "WEBP":
        return 16 * pixels, 12 * pixels
    if fmt == "TIFF":
        return 2 * pixel * pixels, pixel * pixels
    if rle:
        return 3 * pixel * pixels, pixel * pixels
    if fmt in ("JPEG", "MPO"):
        out = -(-width // draft_scale) * -(-height // draft_scale) * pixel
        coefficients = _jpeg_coefficient_bytes(im) if _jpeg_buffers_coefficients(im, raw) else 0
        return out + coefficients, out
    return pixel * pixels, pixel * pixels


def _jpeg_coefficient_bytes(im: PILImage.Image) -> int:
    width, height = im.size
    layers = getattr(im, "layer", None) or [("", 1, 1, 0)] * 3
    hmax = max(h for _, h, _, _ in layers) or 1
    vmax = max(v for _, _, v, _ in layers) or 1
    total = 0
    for _, h, v, _ in layers:
        blocks_x = -(-width * max(h, 1) // (8 * hmax)) + max(h, 1)
        blocks_y = -(-height * max(v, 1) // (8 * vmax)) + max(v, 1)
        total += blocks_x * blocks_y * 64 * 2
    return total


def _jpeg_buffers_coefficients(im: PILImage.Image, raw: bytes) -> bool:
    """Whether libjpeg must keep the whole image's coefficients: a progressive JPEG, or
    one whose components arrive in more than one scan."""
    if im.info.get("progressive") or im.info.get("progression"):
        return True
    at = 2
    while at + 4 <= len(raw):
        if raw[at] != 0xFF:
            return True  # not a marker where one must be: assume the worst
        marker = raw[at + 1]
        if marker == 0xFF:
            at += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        length = int.from_bytes(raw[at + 2 : at + 4], "big")
        if marker == 0xDA:  # the first scan; entropy-coded data never holds FF DA
            return raw.find(b"\xff\xda", at + 2 + length) != -1
        at += 2 + length
    return True


def _reduction_bytes(decoded: tuple[int, int], target: tuple[int, int], mode: str) -> int:
    """Memory of `_reduce_to_rgb` beyond the decoded image: the box-reduced intermediate,
    the resampler's one-pass temporary and the result (4 bytes a pixel each)."""
    width, height = decoded
    factor = max(1, min(width // target[0], height // target[1]))
    mid = (-(-width // factor), -(-height // factor))
    direct = factor == 1 and mode == "RGB"
    mid_bytes = 0 if direct else mid[0] * mid[1] * 4
    return mid_bytes + target[0] * mid[1] * 4 + target[0] * target[1] * 4


def _orientation(im: PILImage.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is ignored, as browsers do
        return 1
    return value if isinstance(value, int) else 1


def _reduce_to_rgb(im: PILImage.Image, target: tuple[int, int]) -> PILImage.Image:
    """8-bit RGB of a decoded image at `target` size, converted strip by strip: the box
    reduce by an integer factor is exact per strip, and a final Lanczos resize (less
    than 2×) reaches the target size."""
    width, height = im.size
    factor = max(1, min(width // target[0], height // target[1]))
    if factor == 1 and im.mode == "RGB":
        return im.copy() if im.size == target else im.resize(target, PILImage.Resampling.LANCZOS)
    convert = _strip_converter(im)
    mid = PILImage.new("RGB", (-(-width // factor), -(-height // factor)))
    rows = max(factor, _STRIP_PIXELS // width // factor * factor)
    for top in range(0, height, rows):
        strip = convert(im.crop((0, top, width, min(height, top + rows))))
        mid.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    return mid if mid.size == target else mid.resize(target, PILImage.Resampling.LANCZOS)


def _strip_converter(im: PILImage.Image) -> Callable[[PILImage.Image], PILImage.Image]:
    """A function turning strips of `im` into RGB; deep modes (16/32-bit, float) are
    scaled by levels measured once over the whole image."""
    if im.mode not in _DEEP_MODES:
        return to_rgb
    levels = _deep_levels(im)
    return lambda strip: to_rgb(strip, levels=levels)


def _deep_levels(im: PILImage.Image) -> tuple[float, float]:
    """(offset, scale) mapping a 16-bit, 32-bit or float image to 0–255: integers keep
    their 8- or 16-bit range, anything wider and floats are stretched from min to max
    (non-finite values are left out and become 0)."""
    width, height = im.size
    rows = max(1, _STRIP_PIXELS // width)
    lo, hi = math.inf, -math.inf
    for top in range(0, height, rows):
        arr = np.asarray(im.crop((0, top, width, min(height, top + rows))), dtype=np.float32)
        finite = arr[np.isfinite(arr)] if im.mode == "F" else arr
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    return _levels_for(im.mode, lo, hi)


def _levels_for(mode: str, lo: float, hi: float) -> tuple[float, float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return 0.0, 0.0
    if mode != "F" and lo >= 0 and hi <= 65535:
        return 0.0, 255.0 / 65535.0 if hi > 255 else 1.0
    return (lo, 255.0 / (hi - lo)) if hi > lo else (lo, 0.0)


def display_copy_bytes(image: PILImage.Image, *, max_side: int = 2048, quality: int = 88) -> bytes:
    """A re-encoded JPEG of a decoded (upright RGB) image, at most `max_side` pixels on its
    long side. Nothing of the uploaded file survives but the pixels: no EXIF, GPS, ICC,
    comments or trailing bytes."""
    copy = image if image.mode == "RGB" and max(image.size) <= max_side else to_rgb(image)
    if max(copy.size) > max_side:
        copy.thumbnail((max_side, max_side), PILImage.Resampling.LANCZOS)
    out = io.BytesIO()
    copy.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def thumbnail_bytes(image: PILImage.Image, *, max_side: int = 400, quality: int = 85) -> bytes:
    """A JPEG of a decoded image at most `max_side` pixels on its long side. Resampled by
    OpenCV (a box reduce first when the image is more than twice as large again): the same
    antialiased result as Pillow's bicubic thumbnail to the eye, at about a quarter of its
    CPU time. A reduction by less than half (a web-sized photo to the thumbnail's size) is
    bicubic: closer to a Lanczos reference than the area filter there (mean difference 0.6
    against 0.95 levels on photos of the three sets) at 0.3 instead of 0.8 ms."""
    import cv2

    rgb = image if image.mode == "RGB" else to_rgb(image)
    width, height = rgb.size
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        factor = max(1, int(1.0 / scale) // 2)
        source = rgb.reduce(factor) if factor > 1 else rgb
        interpolation = cv2.INTER_CUBIC if size[0] * 2 >= source.size[0] and size[1] * 2 >= source.size[1] else cv2.INTER_AREA
        rgb = PILImage.fromarray(cv2.resize(np.asarray(source), size, interpolation=interpolation))
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def to_rgb(im: PILImage.Image, *, levels: tuple[float, float] | None = None) -> PILImage.Image:
    """8-bit RGB from any Pillow mode; transparency is composited onto white. Deep modes
    are mapped with `levels` (offset, scale), measured on `im` itself when not given."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in _DEEP_MODES:
        arr = np.array(im, dtype=np.float32)  # a copy: scaled in place
        if levels is None:
            finite = arr[np.isfinite(arr)] if im.mode == "F" else arr
            levels = _levels_for(im.mode, float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        offset, scale = levels
        arr -= np.float32(offset)
        arr *= np.float32(scale)
        np.nan_to_num(arr, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(arr, 0, 255, out=arr)
        return PILImage.fromarray(arr.astype(np.uint8)).convert("RGB")
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
    left, top = (nw - size) // 2, (nh - size) // 2
    # Only the centre crop is resampled: the pixels of resizing the whole photo and then
    # cropping (within one level of 255), at about half the CPU time.
    sx, sy = w / nw, h / nh
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    im = im.resize((size, size), PILImage.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    return np.asarray(im, dtype=np.uint8)


# Marker segments a browser needs to show a JPEG as its decoder does: JFIF (APP0), an ICC
# colour profile (APP2) and Adobe's colour transform (APP14). Every other application
# segment (EXIF with its GPS position and camera serial, XMP, maker data, thumbnails) and
# comments are metadata.
_SHOWN_SEGMENTS = {0xE0: b"JFIF\0", 0xE2: b"ICC_PROFILE\0", 0xEE: b"Adobe"}
_START_OF_SCAN = 0xDA


def jpeg_as_shown(raw: bytes, *, size: tuple[int, int]) -> bytes | None:
    """The bytes of a JPEG that shows exactly the decoded picture of `size` (upright: no
    EXIF rotation to apply, 8-bit grey or colour) with its metadata segments left out and
    its image data unchanged, or None when it is not such a file: a browser may show it as
    it is instead of a re-encoded copy."""
    try:
        with PILImage.open(io.BytesIO(raw)) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L") or im.size != size or _orientation(im) != 1:
                return None
    except Exception:
        return None
    return jpeg_without_metadata(raw)


def _jpeg_segments(raw: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of a JPEG's segments up to its first scan, which comes last
    with end = len(raw); stops early where the bytes are not well formed, and after a
    segment that runs past their end (given cut at len(raw))."""
    if raw[:2] != b"\xff\xd8":
        return
    at = 2
    while at + 4 <= len(raw) and raw[at] == 0xFF:
        marker = raw[at + 1]
        if marker == 0xFF:  # a fill byte before a marker
            at += 1
            continue
        if marker == _START_OF_SCAN:  # from here on, image data
            yield marker, at, len(raw)
            return
        end = at + 2 + int.from_bytes(raw[at + 2 : at + 4], "big")
        if end <= at + 3:
            return
        yield marker, at, min(end, len(raw))
        at = end


def _is_metadata(raw: bytes, marker: int, start: int) -> bool:
    if not (0xE0 <= marker <= 0xEF or marker == 0xFE):
        return False
    signature = _SHOWN_SEGMENTS.get(marker)
    return signature is None or raw[start + 4 : start + 4 + len(signature)] != signature


def jpeg_without_metadata(raw: bytes) -> bytes | None:
    """A JPEG's bytes with its metadata segments left out and everything from its first
    scan on unchanged, or None when its segments up to that scan are not well formed."""
    kept = [raw[:2]]
    for marker, start, end in _jpeg_segments(raw):
        if not _is_metadata(raw, marker, start):
            kept.append(raw[start:end])
        if marker == _START_OF_SCAN:
            return b"".join(kept)
    return None


def jpeg_has_metadata(head: bytes) -> bool:
    """Whether the first bytes of a JPEG show a metadata segment before its first scan."""
    return any(_is_metadata(head, marker, start) for marker, start, _ in _jpeg_segments(head))
