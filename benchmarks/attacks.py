"""The edits infringers make to a copied photo, one family each, for evaluating copy detection.

Every function takes the photo and a numpy Generator, so a suite built with one seed
is the same on every run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageEnhance, ImageFont, ImageOps

Attack = Callable[[PILImage.Image, np.random.Generator], PILImage.Image]

_WORDS = ("SALE", "© stockphotos", "www.example.com", "BEST PRICE", "nature daily", "LIKE & SHARE", "2024")


def _jpeg(image: PILImage.Image, quality: int) -> PILImage.Image:
    import io

    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality)
    out.seek(0)
    with PILImage.open(out) as decoded:
        return decoded.convert("RGB")


def resize(image: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    scale = float(rng.uniform(0.25, 0.5))
    w, h = image.size
    return image.resize((max(16, round(w * scale)), max(16, round(h * scale))), PILImage.Resampling.BILINEAR)


def jpeg(image: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    return _jpeg(image, int(rng.integers(12, 19)))


def crop(image: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    """Keep half of the area, off-centre."""
    w, h = image.size
    fw = float(rng.uniform(0.6, 0.85))
    fh = 0.5 / fw
    cw, ch = round(w * fw), round(h * fh)
    corner = int(rng.integers(4))  # push towards one corner so the crop is off-centre
    x = (
        int(rng.integers(0, max(1, (w - cw) // 3 + 1)))
        if corner in (0, 2)
        else w - cw - int(rng.integers(0, max(1, (w - cw) // 3 + 1)))
    )
    y = (
        int(rng.integers(0, max(1, (h - ch) // 3 + 1)))
        if corner in (0, 1)
        else h - ch - int(rng.integers(0, max(1, (h - ch) // 3 + 1)))
    )
    return image.crop((x, y, x + cw, y + ch))


def mirror(image: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    return ImageOps.mirror(image)


def rotate90(image: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    return image.rotate(90 if rng.random() < 0.5 else 270, expand=True)


def rotate_small(image: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    angle = float(rng.uniform(6, 12)) * (1 if rng.random() < 0.5 else -1)
    return image.rotate(angle, resample=PILImage.Resampling.BILINEAR, expand=True, fillcolor=(0, 0, 0))


def recolour(image: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    out = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.6, 1.4)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.6, 1.5)))
    return ImageEnhance.Color(out).enhance(float(rng.uniform(0.2, 1.8)))


def grayscale(image: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    return ImageOps.grayscale(image).convert("RGB")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def text_overlay(image: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for _ in range(int(rng.integers(1, 3))):
        size = max(10, int(h * rng.uniform(0.08, 0.14)))
        text = str(rng.choice(_WORDS))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.text((float(rng.uniform(0, w * 0.5)), float(rng.uniform(0, h * 0.85))), text, fill=colour, font=_font(size))
    return out


def logo_overlay(image: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    out = image.convert("RGB").copy()
    w, h = out.size
    lw, lh = max(8, int(w * rng.uniform(0.15, 0.3))), max(8, int(h * rng.uniform(0.1, 0.2)))
    logo = PILImage.new("RGBA", (lw, lh), (*(int(c) for c in rng.integers(0, 256, 3)), 200))
    draw = ImageDraw.Draw(logo)
    draw.ellipse((2, 2, lh - 2, lh - 2), fill=(255, 255, 255, 230))
    draw.text((lh + 2, lh // 4), "LOGO", fill=(255, 255, 255, 255), font=_font(max(8, lh // 2)))
    x = int(rng.choice([int(w * 0.03), w - lw - int(w * 0.03)]))
    y = int(rng.choice([int(h * 0.03), h - lh - int(h * 0.03)]))
    out.paste(logo, (x, y), logo)
    return out


def border(image: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    w, h = image.size
    pad = max(4, int(min(w, h) * rng.uniform(0.08, 0.2)))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    return ImageOps.expand(image.convert("RGB"), border=pad, fill=colour)


def paste_into(image: PILImage.Image, background: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    """The photo, scaled to 40–65% of the background's width, pasted into another photo."""
    out = background.convert("RGB").copy()
    bw, bh = out.size
    scale = float(rng.uniform(0.4, 0.65)) * bw / image.width
    pw, ph = max(8, round(image.width * scale)), max(8, round(image.height * scale))
    if ph > bh * 0.9:
        factor = bh * 0.9 / ph
        pw, ph = max(8, round(pw * factor)), max(8, round(ph * factor))
    part = image.convert("RGB").resize((pw, ph), PILImage.Resampling.BILINEAR)
    out.paste(part, (int(rng.integers(0, bw - pw + 1)), int(rng.integers(0, bh - ph + 1))))
    return out


def paste_small(image: PILImage.Image, background: PILImage.Image, rng: np.random.Generator) -> PILImage.Image:
    """The photo, scaled to 25–40% of the background's width, pasted into another photo."""
    out = background.convert("RGB").copy()
    bw, bh = out.size
    scale = float(rng.uniform(0.25, 0.4)) * bw / image.width
    pw, ph = max(8, round(image.width * scale)), max(8, min(bh, round(image.height * scale)))
    part = image.convert("RGB").resize((pw, ph), PILImage.Resampling.BILINEAR)
    out.paste(part, (int(rng.integers(0, bw - pw + 1)), int(rng.integers(0, bh - ph + 1))))
    return out


def collage(image: PILImage.Image, others: list[PILImage.Image], rng: np.random.Generator) -> PILImage.Image:
    """The photo as one cell of a 2×2 grid with three other photos: each cell 300×225, the
    photo cut to that shape around its centre."""
    cells = [ImageOps.fit(p.convert("RGB"), (300, 225), PILImage.Resampling.BILINEAR) for p in others[:3]]
    cells.insert(int(rng.integers(4)), ImageOps.fit(image.convert("RGB"), (300, 225), PILImage.Resampling.BILINEAR))
    out = PILImage.new("RGB", (600, 450))
    for k, cell in enumerate(cells):
        out.paste(cell, ((k % 2) * 300, (k // 2) * 225))
    return out


# The edits of copies uploaded before their work is registered (`benchmark_copies --old-copies`).
OLD_COPY_FAMILIES = ("crop", "paste_small", "collage")


def old_copy(family: str, image: PILImage.Image, others: list[PILImage.Image], rng: np.random.Generator) -> PILImage.Image:
    """A crop, a small paste into others[0] or a collage with three of `others`."""
    if family == "crop":
        return crop(image.convert("RGB"), rng)
    if family == "paste_small":
        return paste_small(image, others[0], rng)
    if family == "collage":
        return collage(image, others, rng)
    raise ValueError(f"unknown old-copy family {family!r}; choose from {', '.join(OLD_COPY_FAMILIES)}")


FAMILIES: dict[str, Attack] = {
    "resize": resize,
    "jpeg": jpeg,
    "crop": crop,
    "mirror": mirror,
    "rotate90": rotate90,
    "rotate_small": rotate_small,
    "recolour": recolour,
    "grayscale": grayscale,
    "text": text_overlay,
    "logo": logo_overlay,
    "border": border,
}
PASTE = "paste"
ALL_FAMILIES = (*FAMILIES, PASTE)


def apply(
    family: str, image: PILImage.Image, rng: np.random.Generator, background: PILImage.Image | None = None
) -> PILImage.Image:
    """One edit of the named family; `paste` needs a background photo."""
    if family == PASTE:
        if background is None:
            raise ValueError("the paste attack needs a background photo")
        return paste_into(image, background, rng)
    if family not in FAMILIES:
        raise ValueError(f"unknown attack family {family!r}; choose from {', '.join(ALL_FAMILIES)}")
    return FAMILIES[family](image.convert("RGB"), rng)
