"""Perceptual hashes: the exact-copy fast path of copy detection and its baseline.

A 64-bit DCT hash (pHash) survives resizing, re-encoding and colour changes, and fails
on crops, rotations and pastes. Hashes are kept as uint64 so that a whole register is
compared with one XOR and a popcount.
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

HASH_BITS = 64


def phash(image: PILImage.Image) -> int:
    """The 64-bit pHash of an image as an unsigned integer."""
    bits = imagehash.phash(image, hash_size=8).hash.flatten()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value


def phash_variants(image: PILImage.Image) -> np.ndarray:
    """Hashes of the image and of its mirror image, as uint64."""
    return np.array([phash(image), phash(ImageOps.mirror(image))], dtype=np.uint64)


def hamming(hashes: np.ndarray, query: int) -> np.ndarray:
    """Bit distance between each stored hash and the query hash."""
    return np.bitwise_count(np.asarray(hashes, dtype=np.uint64) ^ np.uint64(query)).astype(np.int64)


def hash_similarity(distance: np.ndarray | int) -> np.ndarray:
    """1 for identical hashes, 0.5 for the ~32 bits two unrelated photos differ by."""
    return 1.0 - np.asarray(distance, dtype=np.float64) / HASH_BITS
