"""A corpus of hostile and awkward uploads with the outcome each must have.

Every case is a list of (file name as raw bytes, content) parts for one request, and
either `refused` (HTTP 4xx, `message` shown, nothing stored) or `accepted` (one image
stored under a server-made name, then `check` holds for it). The table is shared by
every upload entry point (the browser form here; the JSON API can iterate it too).
"""

from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image as PILImage

Part = tuple[bytes, bytes]

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)


@dataclass(frozen=True)
class HostileUpload:
    kind: str
    parts: Callable[[], list[Part]]
    outcome: str  # refused | accepted
    message: str = ""  # refused: shown to the user
    check: Callable[[Any], None] | None = field(default=None, repr=False)  # accepted: called with the Image

    def __str__(self) -> str:
        return self.kind


# ---------------------------------------------------------------- building blocks


def encode(im: PILImage.Image, fmt: str, **kw: Any) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kw)
    return out.getvalue()


def textured(size: tuple[int, int] = (160, 120), color: tuple[int, int, int] = RED, seed: int = 0) -> PILImage.Image:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color, np.float32) + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return PILImage.fromarray(arr)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header is patched to claim giant dimensions."""
    data = bytearray(encode(textured(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(textured().convert("P"), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def webp_lossless_claiming(width: int, height: int) -> bytes:
    """A lossless WebP of one colour, a few dozen bytes whatever its size: a solid image
    codes the same at any size, so a small one is encoded and its header patched."""
    data = bytearray(encode(PILImage.new("RGB", (64, 64), RED), "WEBP", lossless=True, method=0, quality=0))
    assert data[12:16] == b"VP8L"
    data[21:25] = struct.pack("<I", (width - 1) | (height - 1) << 14)  # 14 bits each, alpha 0, version 0
    return bytes(data)


def webp_canvas_claiming(width: int, height: int) -> bytes:
    """An animated WebP of two 16×16 frames on a canvas of width × height."""
    frames = [PILImage.new("RGB", (16, 16), c) for c in (RED, GREEN)]
    data = bytearray(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True, duration=100))
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


@functools.cache
def png_deep_claiming(width: int, height: int, *, color_type: int = 0) -> bytes:
    """A 16-bit PNG (grayscale: color type 0; RGBA: 6) of one mid-grey value, compressed
    row by row: about 110 kB for 7000² grayscale."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    z = zlib.compressobj(9)
    row = b"\0" + b"\x80\x00" * (width * channels)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@dataclass(frozen=True)
class TiffPage:
    """One page (IFD) of a hand-written TIFF: one strip, uncompressed or deflated."""

    width: int
    height: int
    bits: int = 8
    samples: int = 1
    sample_format: int = 1  # 1 unsigned integer, 2 signed integer, 3 IEEE float
    pixels: bytes | None = None  # raw rows; None: zeros
    deflate: bool = True


def _tiff_strip(page: TiffPage) -> bytes:
    if page.pixels is not None:
        return zlib.compress(page.pixels, 9) if page.deflate else page.pixels
    row = b"\0" * (page.width * page.samples * page.bits // 8)
    if not page.deflate:
        return row * page.height
    z = zlib.compressobj(9)
    return b"".join(z.compress(row) for _ in range(page.height)) + z.flush()


@functools.cache
def tiff_pages(pages: tuple[TiffPage, ...]) -> bytes:
    """A little-endian TIFF of the given pages; a deflated all-zero 7000² float page is
    about 200 kB and decodes to 196 MB."""
    out = bytearray(b"II*\0\0\0\0\0")
    link = 4  # where the offset of the next IFD goes
    for page in pages:
        strip = _tiff_strip(page)
        strip_at = len(out)
        out += strip + b"\0" * (len(strip) % 2)
        bits_at = len(out)
        out += struct.pack(f"<{page.samples}H", *[page.bits] * page.samples) + b"\0\0"
        entries = [
            (256, 4, 1, page.width),
            (257, 4, 1, page.height),
            (258, 3, page.samples, page.bits if page.samples == 1 else bits_at),
            (259, 3, 1, 8 if page.deflate else 1),
            (262, 3, 1, 2 if page.samples == 3 else 1),
            (273, 4, 1, strip_at),
            (277, 3, 1, page.samples),
            (278, 4, 1, page.height),
            (279, 4, 1, len(strip)),
            (284, 3, 1, 1),
            (339, 3, 1, page.sample_format),
        ]
        ifd_at = len(out)
        struct.pack_into("<I", out, link, ifd_at)
        out += struct.pack("<H", len(entries))
        for tag, kind, count, value in entries:
            packed = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
            out += struct.pack("<HHI", tag, kind, count) + packed
        link = len(out)
        out += b"\0\0\0\0"
    return bytes(out)


def tiff_float_claiming(width: int, height: int) -> bytes:
    return tiff_pages((TiffPage(width, height, bits=32, sample_format=3),))


def tiff_int32_claiming(width: int, height: int) -> bytes:
    return tiff_pages((TiffPage(width, height, bits=32, sample_format=2),))


def tiff_multipage_bomb(width: int, height: int, *, pages: int = 3) -> bytes:
    """A small red photo as the first page, then `pages` float pages of width × height."""
    first = np.asarray(textured((160, 120), RED), dtype=np.uint8).tobytes()
    return tiff_pages(
        (TiffPage(160, 120, samples=3, pixels=first),) + (TiffPage(width, height, bits=32, sample_format=3),) * pages
    )


@functools.cache
def jpeg_big(width: int, height: int, *, progressive: bool = False, subsampling: int = 2) -> bytes:
    """A real JPEG of width × height (a flat colour with a gradient), baseline or progressive."""
    ramp = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)
    arr = np.empty((height, width, 3), dtype=np.uint8)
    arr[:] = np.array(RED, dtype=np.uint8)
    arr[:, :, 1] = ramp
    return encode(PILImage.fromarray(arr), "JPEG", quality=80, progressive=progressive, subsampling=subsampling)


def jpeg_progressive_claiming(width: int, height: int) -> bytes:
    """A small progressive 4:4:4 JPEG whose frame header claims width × height: libjpeg
    would keep every DCT coefficient of the claimed size."""
    data = bytearray(encode(textured(), "JPEG", progressive=True, subsampling=0))
    sof = data.index(b"\xff\xc2")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_rle_claiming(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP of width × height in four bytes a row: one pixel, then an
    end-of-line record that stands for the rest of the row."""
    palette = b"".join(bytes((b, g, r, 0)) for r, g, b in [RED] * 256)
    pixels = b"\1\0\0\0" * height + b"\0\1"
    header_size, info_size = 14, 40
    offset = header_size + info_size + len(palette)
    info = struct.pack("<IiiHHIIiiII", info_size, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def zero_pixel_gif() -> bytes:
    """A GIF whose screen and only frame are 0 × 0."""
    data = bytearray(gif_claiming(0, 0))
    at = data.index(b"\x2c", 10)  # image descriptor: left, top, width, height
    data[at + 5 : at + 9] = b"\0\0\0\0"
    return bytes(data)


def zero_pixel_bmp() -> bytes:
    data = bytearray(encode(textured(), "BMP"))
    data[18:26] = struct.pack("<ii", 0, 0)
    return bytes(data)


def bad_crc_png() -> bytes:
    data = bytearray(encode(textured(), "PNG"))
    at = data.index(b"IDAT") + 20
    data[at] ^= 0xFF
    return bytes(data)


def animated_gif() -> bytes:
    frames = [PILImage.new("RGB", (64, 48), c) for c in (RED, GREEN, BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def png16() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 128, dtype=np.uint16), (96, 1))
    return encode(PILImage.fromarray(ramp, "I;16"), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(textured(color=RED).convert("CMYK"), "JPEG", quality=92)


def palette_with_alpha() -> bytes:
    im = PILImage.new("P", (80, 60), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    im.paste(1, (40, 0, 80, 60))
    return encode(im, "PNG", transparency=0)


def gray_alpha() -> bytes:
    return encode(PILImage.new("LA", (80, 60), (120, 128)), "PNG")


def exif_with_gps_and_huge_comment() -> bytes:
    exif = PILImage.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x9286] = b"ASCII\0\0\0" + b"A" * 60_000  # UserComment, ~60 kB
    exif.get_ifd(0x8825).update({1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 7.0, 0.0)})  # GPS
    # And a JPEG comment segment, which Pillow keeps with a decoded picture.
    return encode(textured(), "JPEG", exif=exif.tobytes(), comment=b"Home: 12 Example Road")


def oriented_jpeg(orientation: int) -> bytes:
    """A photo that is upright (landscape, red top-left corner) once EXIF orientation
    `orientation` is applied: the stored pixels are its inverse transform."""
    upright = upright_reference()
    inverse = {
        1: None,
        2: PILImage.Transpose.FLIP_LEFT_RIGHT,
        3: PILImage.Transpose.ROTATE_180,
        4: PILImage.Transpose.FLIP_TOP_BOTTOM,
        5: PILImage.Transpose.TRANSPOSE,
        6: PILImage.Transpose.ROTATE_90,
        7: PILImage.Transpose.TRANSVERSE,
        8: PILImage.Transpose.ROTATE_270,
    }[orientation]
    stored = upright if inverse is None else upright.transpose(inverse)
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def upright_reference() -> PILImage.Image:
    """160×80, red top-left quadrant on a blue background, with texture."""
    im = textured((160, 80), BLUE, seed=3)
    im.paste(textured((80, 40), RED, seed=4), (0, 0))
    return im


def zip_archive() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("photo.jpg", encode(textured(), "JPEG"))
    return out.getvalue()


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
    b'<script>alert(document.cookie)</script><rect width="100" height="100"/></svg>'
)
HTML = b"<!doctype html><html><body><script>fetch('/admin/').then(r=>r.text()).then(alert)</script></body></html>"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n/Helvetica findfont 12 scalefont setfont\nshowpage\n"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
SCRIPT_PAYLOAD = b"<script>alert('polyglot')</script>"


def jpeg() -> bytes:
    return encode(textured(), "JPEG")


def one(name: bytes | str, data: Callable[[], bytes]) -> Callable[[], list[Part]]:
    raw = name.encode() if isinstance(name, str) else name
    return lambda: [(raw, data())]


# ---------------------------------------------------------------- outcome checks


def _pixel(im: PILImage.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in im.convert("RGB").getpixel(xy))  # type: ignore[union-attr]


def served_copies(image: Any) -> list[bytes]:
    out = []
    for f in (image.display, image.thumbnail):
        with f.open("rb") as fh:
            out.append(fh.read())
    return out


def is_reddish(rgb: tuple[int, ...]) -> bool:
    return rgb[0] > 150 and rgb[1] < 100 and rgb[2] < 100


def check_first_frame(image: Any) -> None:
    with PILImage.open(image.display) as im:
        assert is_reddish(_pixel(im, (10, 10))), "the first (red) frame is shown"
        assert getattr(im, "n_frames", 1) == 1


def check_reduced(width: int, height: int) -> Callable[[Any], None]:
    """A huge picture is recorded at its size and served reduced."""

    def check(image: Any) -> None:
        assert (image.width, image.height) == (width, height)
        with PILImage.open(image.display) as display, PILImage.open(image.thumbnail) as thumb:
            assert max(display.size) == 2048 and display.mode == "RGB"
            assert max(thumb.size) <= 400

    return check


def check_format(fmt: str) -> Callable[[Any], None]:
    def check(image: Any) -> None:
        assert image.format == fmt
        assert image.file.name.endswith("." + {"PNG": "png", "JPEG": "jpg", "GIF": "gif"}[fmt])

    return check


def check_transparent_is_white(image: Any) -> None:
    with PILImage.open(image.display) as im:
        assert _pixel(im, (5, 5))[0] > 240 and all(c > 240 for c in _pixel(im, (5, 5))), "transparency on white"
        assert _pixel(im, (70, 30))[2] > 200, "the opaque half stays blue"


def check_metadata_removed(image: Any) -> None:
    for data in served_copies(image):
        with PILImage.open(io.BytesIO(data)) as im:
            assert not im.getexif(), "served copies carry no EXIF"
            assert "comment" not in im.info and "icc_profile" not in im.info
        assert b"GPS" not in data and b"AAAAAAAAAAAAAAAA" not in data and b"CameraMaker" not in data
        assert b"Example Road" not in data
    with image.file.open("rb") as fh:  # the private original is kept as uploaded
        original = fh.read()
        assert b"CameraMaker" in original and b"Example Road" in original


def check_no_payload(image: Any) -> None:
    for data in served_copies(image):
        assert b"<script" not in data


def check_name(expected: str) -> Callable[[Any], None]:
    def check(image: Any) -> None:
        assert image.original_name == expected
        assert image.file.name.startswith("originals/") and image.checksum in image.file.name

    return check


def check_upright(image: Any) -> None:
    assert (image.width, image.height) == (160, 80), "stored dimensions are upright"
    with PILImage.open(image.display) as im:
        assert im.size == (160, 80)
        assert is_reddish(_pixel(im, (20, 10))), "red corner at the top left"
        assert not is_reddish(_pixel(im, (140, 70)))


# ---------------------------------------------------------------- the corpus

MB = 1024 * 1024

CORPUS: list[HostileUpload] = [
    # refused: not images, broken images, dangerous formats, oversized
    HostileUpload("empty file", one("empty.jpg", lambda: b""), "refused", "The file is empty."),
    HostileUpload("text named .jpg", one("notes.jpg", lambda: b"meeting notes\n" * 40), "refused", "not an image"),
    HostileUpload("JPEG start marker only", one("stub.jpg", lambda: b"\xff\xd8\xff"), "refused", "not an image"),
    HostileUpload("truncated JPEG", one("cut.jpg", lambda: jpeg()[:700]), "refused", "damaged or truncated"),
    HostileUpload("truncated PNG", one("cut.png", lambda: encode(textured(), "PNG")[:900]), "refused", "damaged or truncated"),
    HostileUpload("truncated WebP", one("cut.webp", lambda: encode(textured(), "WEBP")[:300]), "refused", "damaged or truncated"),
    HostileUpload("PNG with a bad checksum", one("crc.png", bad_crc_png), "refused", "damaged or truncated"),
    HostileUpload(
        "decompression bomb (PNG, 60000² pixels in 100 bytes)",
        one("bomb.png", lambda: png_claiming(60000, 60000)),
        "refused",
        "megapixels",
    ),
    HostileUpload(
        "giant dimensions (JPEG 65000²)", one("giant.jpg", lambda: jpeg_claiming(65000, 65000)), "refused", "megapixels"
    ),
    HostileUpload("giant dimensions (GIF 65535²)", one("giant.gif", lambda: gif_claiming(65535, 65535)), "refused", "megapixels"),
    HostileUpload("zero-pixel PNG", one("zero.png", lambda: png_claiming(0, 0)), "refused", "not an image"),
    HostileUpload("zero-pixel GIF", one("zero.gif", zero_pixel_gif), "refused", "not an image"),
    HostileUpload("zero-pixel BMP", one("zero.bmp", zero_pixel_bmp), "refused", "not an image"),
    HostileUpload("SVG with script", one("vector.svg", lambda: SVG), "refused", "not an image"),
    HostileUpload("SVG with script named .png", one("vector.png", lambda: SVG), "refused", "not an image"),
    HostileUpload("HTML with script named .jpg", one("page.jpg", lambda: HTML), "refused", "not an image"),
    HostileUpload("polyglot: GIF header + HTML", one("poly.gif", lambda: b"GIF89a" + HTML), "refused", "not an image"),
    HostileUpload("PDF document", one("doc.pdf", lambda: PDF), "refused", "not an image"),
    HostileUpload("ZIP archive named .png", one("archive.png", zip_archive), "refused", "not an image"),
    HostileUpload("PostScript (EPS)", one("art.eps", lambda: EPS), "refused", "EPS format are not accepted"),
    HostileUpload(
        "icon (ICO)", one("favicon.ico", lambda: encode(textured((32, 32)), "ICO")), "refused", "ICO format are not accepted"
    ),
    HostileUpload(
        "over the size limit (21 MB)",
        one("huge.jpg", lambda: jpeg() + b"\0" * (21 * MB)),
        "refused",
        "the limit is",
    ),
    HostileUpload(
        "too many files in one request (51)",
        lambda: [(f"p{i}.jpg".encode(), encode(textured((16, 16), seed=i), "JPEG")) for i in range(51)],
        "refused",
        "at most 50 photos at once",
    ),
    # decompression bombs of every accepted format: refused from the header, before any
    # pixel is decoded, or decoded within the memory budget (tests/test_decode_memory.py)
    HostileUpload(
        "lossless WebP of 7000² in 38 bytes",
        one("bomb.webp", lambda: webp_lossless_claiming(7000, 7000)),
        "refused",
        "decoding it would take about",
    ),
    HostileUpload(
        "animated WebP on a 7000² canvas",
        one("canvas.webp", lambda: webp_canvas_claiming(7000, 7000)),
        "refused",
        "MB a photo may use",
    ),
    HostileUpload(
        "float32 TIFF of 7000² in 190 kB", one("float.tif", lambda: tiff_float_claiming(7000, 7000)), "refused", "32-bit float"
    ),
    HostileUpload(
        "32-bit integer TIFF of 7000² in 190 kB",
        one("int.tif", lambda: tiff_int32_claiming(7000, 7000)),
        "refused",
        "32-bit integer",
    ),
    HostileUpload(
        "progressive 4:4:4 JPEG claiming 7000²",
        one("prog.jpg", lambda: jpeg_progressive_claiming(7000, 7000)),
        "refused",
        "decoding it would take about",
    ),
    HostileUpload(
        "RLE BMP of 7000² in 28 kB", one("rle.bmp", lambda: bmp_rle_claiming(7000, 7000)), "refused", "compressed (RLE) BMP"
    ),
    HostileUpload(
        "16-bit PNG of 7000² in 107 kB (decoded within the budget)",
        one("deep-bomb.png", lambda: png_deep_claiming(7000, 7000)),
        "accepted",
        check=check_reduced(7000, 7000),
    ),
    HostileUpload(
        "GIF with a 7000² canvas (decoded within the budget)",
        one("canvas.gif", lambda: gif_claiming(7000, 7000)),
        "accepted",
        check=check_reduced(7000, 7000),
    ),
    HostileUpload(
        "multi-page TIFF: a photo, then 7000² float pages (first page only)",
        one("pages.tif", lambda: tiff_multipage_bomb(7000, 7000, pages=2)),
        "accepted",
        check=check_first_frame,
    ),
    # accepted: awkward but legitimate photos, with the stated result
    HostileUpload("animated GIF (first frame is used)", one("anim.gif", animated_gif), "accepted", check=check_first_frame),
    HostileUpload("16-bit grayscale PNG", one("deep.png", png16), "accepted", check=check_format("PNG")),
    HostileUpload("CMYK JPEG", one("print.jpg", cmyk_jpeg), "accepted", check=check_format("JPEG")),
    HostileUpload(
        "palette PNG with transparency", one("logo.png", palette_with_alpha), "accepted", check=check_transparent_is_white
    ),
    HostileUpload("grayscale with alpha PNG", one("la.png", gray_alpha), "accepted", check=check_format("PNG")),
    HostileUpload(
        "EXIF with GPS, a 60 kB comment and a JPEG comment (served without metadata)",
        one("gps.jpg", exif_with_gps_and_huge_comment),
        "accepted",
        check=check_metadata_removed,
    ),
    HostileUpload(
        "wrong extension (PNG named .jpg, stored as .png)",
        one("really-a-png.jpg", lambda: encode(textured(), "PNG")),
        "accepted",
        check=check_format("PNG"),
    ),
    HostileUpload(
        "polyglot: JPEG with a script appended (served re-encoded)",
        one("poly.jpg", lambda: jpeg() + SCRIPT_PAYLOAD),
        "accepted",
        check=check_no_payload,
    ),
    HostileUpload("path traversal name ../../x.jpg", one("../../x.jpg", jpeg), "accepted", check=check_name("x.jpg")),
    HostileUpload(
        "Windows path traversal name ..\\..\\win.jpg", one(b"..\\..\\win.jpg", jpeg), "accepted", check=check_name("win.jpg")
    ),
    # Browsers send UTF-8; a part whose name is not UTF-8 is not taken as a file at all.
    HostileUpload("non-UTF-8 file name", one(b"caf\xe9 \xff\xfe.jpg", jpeg), "refused", "Choose at least one photo"),
    HostileUpload(
        "control and bidi characters in the name",
        one("photo\x07\u202egpj.exe.jpg", jpeg),
        "accepted",
        check=check_name("photogpj.exe.jpg"),
    ),
    HostileUpload(
        "600-character name (kept to 255)", one("n" * 596 + ".jpg", jpeg), "accepted", check=check_name("n" * 251 + ".jpg")
    ),
    HostileUpload("name longer than a part header may be (2000)", one("n" * 1996 + ".jpg", jpeg), "refused", "Request refused"),
    HostileUpload(
        "HTML in the name (shown escaped)",
        one("<img src=x onerror='alert(1)'>.jpg", jpeg),
        "accepted",
        check=check_name("<img src=x onerror='alert(1)'>.jpg"),
    ),
    *[
        HostileUpload(
            f"EXIF orientation {o} (displayed upright)",
            one(f"orient{o}.jpg", lambda o=o: oriented_jpeg(o)),  # type: ignore[misc]
            "accepted",
            check=check_upright,
        )
        for o in range(1, 9)
    ],
]


def multipart(parts: list[Part], *, field: str = "files", fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body built by hand, so file names can be any bytes."""
    boundary = "----hostile-upload-boundary-7f3a"
    body = bytearray()
    for key, value in (fields or {}).items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
    for name, data in parts:
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="'.encode()
        body += name.replace(b'"', b"%22") + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"
