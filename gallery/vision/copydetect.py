"""Copy detection: does an upload reproduce a protected work, even after editing?

Three kinds of evidence:

1. SIFT keypoints. Every work's RootSIFT descriptors sit in one nearest-neighbour index
   (exact while small, an inverted file past that); an upload's descriptors vote for the
   works holding their distinctive nearest neighbours. Votes survive what infringers do
   to a photo, a paste into another photo and a crop included, so the works with most
   votes are the main candidates. Every candidate is verified: keypoints matched
   one-to-one and a RANSAC similarity transform; the number of consistent matches
   separates a copy from another photo of the same subject.
2. CNN descriptors (one forward pass of the backbone's last feature map). A work is
   described in five orientations (as is, mirrored, rotated 90/180/270°), at a small
   scale, and by a grid of its windows; the whole upload is compared with all of them.
   The nearest work joins the candidates, and very high similarity is evidence.
3. a perceptual hash of the work and its mirror image: the nearest joins the candidates,
   and an almost identical hash settles it without keypoints (resized, re-encoded,
   recoloured copies).

No Django here: signatures are plain arrays, serialised to bytes for storage.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import cv2
import faiss
import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

from .backbones import Backbone, l2_normalise
from .folders import replace_folder
from .phash import hamming, phash, phash_variants

DESCRIPTOR_VERSION = 1
WORK_VARIANTS = ("original", "mirrored", "rotated 90°", "rotated 180°", "rotated 270°")
# The index keeps, per work, its orientations, its whole-image descriptor at a small scale
# (how it looks when pasted into a part of another photo), then its windows.
VIEWS = (*WORK_VARIANTS, "the work, small")
SMALL_LONG_SIDE = 160
# (window side as a fraction of the feature map's side, positions per axis).
REGION_GRID = ((0.5, 3), (0.7, 2))
CNN_LONG_SIDE = 320
SIFT_LONG_SIDE = 400
SIFT_FEATURES = 300
# The upload's keypoints: on the attack suite 400 at 400 px find pastes and crops as well
# as 600 at 512 px (recall@1 0.99 / 1.00 both) for 40 ms less per upload.
QUERY_SIFT_LONG_SIDE = 400
QUERY_SIFT_FEATURES = 400
RATIO_TEST = 0.8
RANSAC_PIXELS = 3.0
# Geometry in the score (see Geometry.support): the share of ratio-test matches that are
# inliers counts from RATIO_NONE and in full from RATIO_FULL; the share of the work or the
# upload the inliers span counts in full from COVER_FULL and never below COVER_FLOOR.
RATIO_NONE = 0.5
RATIO_FULL = 0.85
COVER_FULL = 0.2
COVER_FLOOR = 0.5
# The matched region reaches this share of the image beyond the outermost inliers.
REGION_MARGIN = 0.04
# A work found in a small part of an upload (a paste, a collage cell) is looked at again
# on that part alone (widened by FOCUS_MARGIN of its size), when it covers at most
# FOCUS_LARGEST of the upload: its keypoints, hash and CNN descriptor then describe the
# part that shows the work instead of the whole poster.
FOCUS_MARGIN = 0.15
FOCUS_LARGEST = 0.5
# A copy that shows the work smaller than its keypoints were found at has lost its fine
# detail, and its keypoints match the sharp work's poorly (a work pasted at a quarter of a
# photo's width: 13-19 consistent keypoints). When the work's pixels are at hand, a closer
# look also matches the part against keypoints of the work shrunk to the size the copy
# shows it (31-188 on the same pastes): when it shows at most AS_SHOWN_BELOW of the size
# the work's keypoints were found at. That geometry stands for the whole work shown small,
# so it counts only when its inliers span the work (support at least AS_SHOWN_SUPPORT;
# such pastes: 0.74-1.0); a cluster of matches on a shared logo does not (sibling products
# of one brand on shelf photos: 40-44 inliers at support 0.5). A part described at more than
# AS_SHOWN_LARGEST times its usual resolution means a geometry at odds with the part: none.
AS_SHOWN_BELOW = 0.9
AS_SHOWN_SUPPORT = 0.6
AS_SHOWN_LARGEST = 2.0
# Candidates besides the keypoint votes: the nearest works by CNN descriptor and by hash.
CANDIDATES = 1
# This many consistent keypoints settle it: later candidates need no verifying.
CONCLUSIVE_INLIERS = 40
# Keypoint votes: an upload's descriptors find their nearest work descriptors among all
# works; a neighbour clearly nearer than the next (the ratio test) votes for its work.
# The works with most votes join the candidates that are verified.
VOTE_CANDIDATES = 3
MIN_VOTES = 3
# Up to this many work descriptors the neighbours are exact; past it an inverted file
# (8-bit scalar quantised) with this many lists per square root of the count, searched
# in this many lists (at 10k works, 2M descriptors: 56 ms per upload, the copy still
# first; one list per root and 8 probes took 151 ms).
VOTE_EXACT_BELOW = 4096
VOTE_LISTS_PER_ROOT = 2
VOTE_PROBES = 4
# Past this many descriptors (~5k works) the keypoints are kept as product-quantised codes
# (VOTE_PQ_BYTES a descriptor, plus its 8-byte id) instead of 8-bit ones (128 bytes), in
# an inverted multi-index: two quantisers of 2^VOTE_IMI_BITS centroids, one per half of
# the descriptor, whose pairs make ~1M cells, of which the VOTE_IMI_PROBES nearest are
# searched. Its cells stay small as the register grows past its training (a few codes at
# 10k works, ~20 at 100k works: ~21M descriptors, 0.84 GiB), so nothing is retrained past
# VOTE_RETRAIN_UNTIL and the votes' cost grows slowly. Measured on real keypoints and
# variants (60 edited copies; the copy among the 3 most voted, vote time): 10k works
# 0.983 in 12 ms (32 cells), 100k works 0.950 in 35 ms (32 cells), 0.933 in 22 ms (16),
# 0.950 in 18 ms (12): within one copy of each other; the single-level file it replaced
# (2·√n lists at 2M descriptors, 4 probed) 0.967 in 19 ms and 0.950 in ~120 ms.
VOTE_PQ_ABOVE = 1_000_000
VOTE_PQ_BYTES = 32
VOTE_IMI_BITS = 10
VOTE_IMI_PROBES = 16
VOTE_TRAIN_SAMPLE = 131_072
# The quantisers are retrained when the count has doubled, until they were trained on this
# many descriptors (about 10k works); past it new works are only added, so a large
# register never re-reads every signature.
VOTE_RETRAIN_UNTIL = 2_000_000
# Past this many works a PCA projection (this many dimensions, fitted on at most this many
# vectors) shortlists works for exact scoring.
SHORTLIST_ABOVE = 512
SHORTLIST = 64
PROJECTED_DIMS = 128
# Past this many works the shortlist is found in two steps: the first HEAD_DIMS projected
# dimensions (the leading components, kept in their own contiguous rows) pick COARSE works,
# whose full projected rows then pick the SHORTLIST. At 100k works (1.9M rows) 36 ms of CPU
# against 84 ms for the full projection.
COARSE_ABOVE = 16_384
HEAD_DIMS = 32
COARSE = 1024
PROJECTION_SAMPLE = 4096
# Works added are indexed (and, with a store, their full signatures let go) in batches of
# at most this many, so filling a large register holds one batch of signatures at a time.
FLUSH_EVERY = 2000


# ---------------------------------------------------------------- descriptors


def fit_long_side(image: PILImage.Image, long_side: int, *, min_side: int = 32) -> PILImage.Image:
    """Resize so that the longer side is `long_side` (up or down), keeping the aspect ratio."""
    w, h = image.size
    scale = long_side / max(w, h)
    size = (max(min_side, round(w * scale)), max(min_side, round(h * scale)))
    return image.convert("RGB").resize(size, PILImage.Resampling.BILINEAR)


def region_boxes(height: int, width: int, grid: tuple[tuple[float, int], ...] = REGION_GRID) -> list[tuple[int, int, int, int]]:
    """Windows (y0, y1, x0, x1) on a feature map: the whole map first, then the grid."""
    boxes = [(0, height, 0, width)]
    for fraction, steps in grid:
        rh, rw = max(1, round(height * fraction)), max(1, round(width * fraction))
        ys = np.linspace(0, height - rh, steps).round().astype(int)
        xs = np.linspace(0, width - rw, steps).round().astype(int)
        boxes += [(int(y), int(y) + rh, int(x), int(x) + rw) for y in ys for x in xs]
    return boxes


def pool_boxes(fmap: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """(h, w, c) activations → (len(boxes), c) L2-normalised mean-pooled descriptors."""
    h, w, c = fmap.shape
    # An integral image makes every window's sum four lookups.
    integral = np.zeros((h + 1, w + 1, c), dtype=np.float64)
    integral[1:, 1:] = fmap.cumsum(0).cumsum(1)
    y0, y1, x0, x1 = (np.array(v) for v in zip(*boxes, strict=True))
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return l2_normalise((total / ((y1 - y0) * (x1 - x0))[:, None]).astype(np.float32))


def pool_regions(fmap: np.ndarray, grid: tuple[tuple[float, int], ...] = REGION_GRID) -> np.ndarray:
    """(h, w, c) activations → (regions, c) descriptors of `region_boxes`."""
    return pool_boxes(fmap, region_boxes(fmap.shape[0], fmap.shape[1], grid))


def pool_whole(fmap: np.ndarray) -> np.ndarray:
    """(h, w, c) activations → (c,) the L2-normalised mean over the whole map."""
    return pool_regions(fmap, ())[0]


def _forward(backbone: Backbone, image: PILImage.Image) -> np.ndarray:
    arr = np.asarray(fit_long_side(image, CNN_LONG_SIDE), dtype=np.uint8)
    return backbone.feature_maps(arr[None])[0]


@dataclass
class Keypoints:
    """SIFT keypoint positions and descriptors (uint8, OpenCV's scale) of one image."""

    xy: np.ndarray
    desc: np.ndarray
    # (width, height) of the image the keypoints were found in; None for signatures
    # stored before it was kept (then estimated from where the keypoints lie).
    size: tuple[int, int] | None = None
    _root: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    @property
    def frame(self) -> tuple[float, float]:
        """(width, height) of the keypoints' image: the recorded size, else the keypoints'
        extent with the long side at SIFT_LONG_SIDE (how works are described)."""
        if self.size is not None:
            return float(self.size[0]), float(self.size[1])
        if len(self) == 0:
            return float(SIFT_LONG_SIDE), float(SIFT_LONG_SIDE)
        extent = np.maximum(self.xy.max(axis=0), 1.0)
        scale = SIFT_LONG_SIDE / float(extent.max())
        return float(extent[0] * scale), float(extent[1] * scale)

    @property
    def root(self) -> np.ndarray:
        """RootSIFT descriptors (L1-normalised, square-rooted), computed once and kept."""
        if self._root is None:
            d = self.desc.astype(np.float32)
            d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-6)
            self._root = np.sqrt(d)
        return self._root


_local = threading.local()  # one SIFT detector per thread and keypoint count


def sift_keypoints(image: PILImage.Image, *, long_side: int = SIFT_LONG_SIDE, features: int = SIFT_FEATURES) -> Keypoints:
    detectors = _local.__dict__.setdefault("sift", {})
    if features not in detectors:
        detectors[features] = cv2.SIFT_create(nfeatures=features)  # type: ignore[attr-defined]
    gray = np.asarray(fit_long_side(image, long_side).convert("L"), dtype=np.uint8)
    size = (int(gray.shape[1]), int(gray.shape[0]))
    points, desc = detectors[features].detectAndCompute(gray, None)
    if desc is None or not points:
        return Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), size)
    xy = np.array([p.pt for p in points], dtype=np.float32)
    return Keypoints(xy, np.clip(desc, 0, 255).astype(np.uint8), size)


@dataclass(frozen=True)
class Geometry:
    """Where an upload and a work agree: the keypoint correspondences consistent with one
    similarity transform, in the pixels of each side's keypoint image."""

    query_xy: np.ndarray  # (n, 2) inliers on the upload
    work_xy: np.ndarray  # (n, 2) the same inliers on the work
    query_size: tuple[float, float]  # (width, height) of the upload's keypoint image
    work_size: tuple[float, float]
    transform: np.ndarray | None  # 2×3, upload pixels → work pixels
    matches: int  # one-to-one matches passing the ratio test, before RANSAC
    work_keypoints: int  # all keypoints of the work

    @property
    def inliers(self) -> int:
        return int(self.query_xy.shape[0])

    @property
    def work_share(self) -> float:
        """Share of the work's area inside the convex hull of its inliers."""
        return _hull_share(self.work_xy, self.work_size)

    @property
    def query_share(self) -> float:
        """Share of the upload's area inside the convex hull of its inliers."""
        return _hull_share(self.query_xy, self.query_size)

    @property
    def inlier_ratio(self) -> float:
        """Inliers among the ratio-test matches: near 1 for a copy, low when a few
        coincidental matches happen to agree."""
        return self.inliers / self.matches if self.matches else 0.0

    @property
    def spread(self) -> float:
        """How spread the inliers are on the work: their RMS distance from their centre
        as a share of the work's half diagonal (0: one point; ~0.58 for uniform cover)."""
        if self.inliers < 2:
            return 0.0
        centred = self.work_xy - self.work_xy.mean(axis=0)
        half_diagonal = 0.5 * float(np.hypot(*self.work_size))
        return float(np.sqrt((centred**2).sum(axis=1).mean()) / half_diagonal)

    @property
    def scale(self) -> float:
        """How much larger the work shows than the upload (the transform's scale)."""
        if self.transform is None:
            return 1.0
        return float(np.hypot(self.transform[0, 0], self.transform[1, 0]))

    @property
    def support(self) -> float:
        """How much the inliers look like a copy rather than a coincidence, in [0, 1]:
        nearly all ratio-test matches agree (copies 0.83–1.0 on the attack suite; another
        photo of the same species 0.62 at its 90th percentile) and they cover a fair share
        of the work or of the upload (copies: crops 0.16 and up of the work, pastes of the
        work; the same species 0.09 at its 90th percentile)."""
        agree = float(np.clip((self.inlier_ratio - RATIO_NONE) / (RATIO_FULL - RATIO_NONE), 0.0, 1.0))
        cover = float(np.clip(max(self.work_share, self.query_share) / COVER_FULL, COVER_FLOOR, 1.0))
        return agree * cover

    def region_on_work(self) -> np.ndarray:
        """(k, 2) the polygon of the work that the upload shows: the upload's frame mapped
        onto the work, within the work and around its inliers (an upload may show a crop
        of the work inside another photo: its frame alone would claim too much)."""
        if self.transform is None or self.inliers < 3:
            return np.zeros((0, 2), dtype=np.float32)
        mapped = _frame(self.query_size) @ self.transform[:, :2].T + self.transform[:, 2]
        return _clipped(_clipped(mapped, self.work_size), self.work_size, around=self.work_xy)

    def region_on_upload(self) -> np.ndarray:
        """(k, 2) the polygon of the upload where the work appears: the work's frame mapped
        onto the upload, within the upload and around its inliers."""
        if self.transform is None or self.inliers < 3:
            return np.zeros((0, 2), dtype=np.float32)
        inverse = cv2.invertAffineTransform(self.transform.astype(np.float64))
        mapped = _frame(self.work_size) @ inverse[:, :2].T + inverse[:, 2]
        return _clipped(_clipped(mapped, self.query_size), self.query_size, around=self.query_xy)

    @property
    def work_found(self) -> float:
        """Share of the work's area that appears in the upload."""
        return _polygon_share(self.region_on_work(), self.work_size)

    @property
    def upload_covered(self) -> float:
        """Share of the upload's area that the work covers."""
        return _polygon_share(self.region_on_upload(), self.query_size)

    def fractions(self) -> tuple[np.ndarray, np.ndarray]:
        """Inliers as fractions of each image's width and height (upload, work)."""
        return self.query_xy / np.array(self.query_size), self.work_xy / np.array(self.work_size)

    def focus(self, *, margin: float = FOCUS_MARGIN, largest: float = FOCUS_LARGEST) -> tuple[float, float, float, float] | None:
        """(x0, y0, x1, y1) fractions of the upload around where the work appears, widened
        by `margin` of that box's size; None when that box covers more than `largest` of
        the upload (looking closer would show nothing new)."""
        region = self.region_on_upload()
        if len(region) < 3:
            return None
        size = np.array(self.query_size)
        low, high = region.min(axis=0) / size, region.max(axis=0) / size
        pad = margin * (high - low)
        (x0, y0), (x1, y1) = np.clip(low - pad, 0.0, 1.0), np.clip(high + pad, 0.0, 1.0)
        if (x1 - x0) * (y1 - y0) > largest or x1 - x0 <= 0 or y1 - y0 <= 0:
            return None
        return float(x0), float(y0), float(x1), float(y1)

    def in_whole(self, box: tuple[float, float, float, float]) -> Geometry:
        """This geometry, found on the part `box` (fractions) of an upload, expressed on the
        whole upload: the same pixel scale on a larger frame, the part at its place."""
        x0, y0, x1, y1 = box
        width, height = self.query_size
        whole = (width / (x1 - x0), height / (y1 - y0))
        offset = np.array([x0 * whole[0], y0 * whole[1]], dtype=np.float32)
        transform = None
        if self.transform is not None:  # work = A (x − offset) + b
            transform = self.transform.copy()
            transform[:, 2] -= transform[:, :2] @ offset
        return Geometry(self.query_xy + offset, self.work_xy, whole, self.work_size, transform, self.matches, self.work_keypoints)

    def mirrored(self) -> Geometry:
        """The same geometry for keypoints found on the work's mirror image, expressed in
        the work's own coordinates."""
        w = self.work_size[0]
        transform = None
        if self.transform is not None:  # x → w − x after the transform
            transform = self.transform.copy()
            transform[0] = -transform[0]
            transform[0, 2] += w
        work_xy = self.work_xy.copy()
        work_xy[:, 0] = w - work_xy[:, 0]
        return Geometry(self.query_xy, work_xy, self.query_size, self.work_size, transform, self.matches, self.work_keypoints)


def _frame(size: tuple[float, float]) -> np.ndarray:
    w, h = size
    return np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)


def _clipped(polygon: np.ndarray, size: tuple[float, float], *, around: np.ndarray | None = None) -> np.ndarray:
    """A convex polygon clipped to the frame (0, 0)–size or, given points, to their
    bounding box widened by REGION_MARGIN of the frame (keypoints stay off the edges)."""
    if len(polygon) < 3 or not np.all(np.isfinite(polygon)):
        return np.zeros((0, 2), dtype=np.float32)
    if cv2.contourArea(polygon.astype(np.float32), oriented=True) < 0:
        polygon = polygon[::-1]
    window = _frame(size)
    if around is not None:
        margin = REGION_MARGIN * np.array(size)
        (x0, y0), (x1, y1) = around.min(axis=0) - margin, around.max(axis=0) + margin
        window = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    area, inside = cv2.intersectConvexConvex(
        np.ascontiguousarray(polygon, dtype=np.float32), np.ascontiguousarray(window, dtype=np.float32)
    )
    if inside is None or area <= 0:
        return np.zeros((0, 2), dtype=np.float32)
    return inside.reshape(-1, 2).astype(np.float32)


def _polygon_share(polygon: np.ndarray, size: tuple[float, float]) -> float:
    if len(polygon) < 3:
        return 0.0
    return float(min(1.0, abs(cv2.contourArea(polygon.astype(np.float32))) / max(size[0] * size[1], 1.0)))


def _hull_share(xy: np.ndarray, size: tuple[float, float]) -> float:
    if len(xy) < 3:
        return 0.0
    hull = cv2.convexHull(np.ascontiguousarray(xy, dtype=np.float32))
    return float(min(1.0, cv2.contourArea(hull) / max(size[0] * size[1], 1.0)))


def _no_geometry(query: Keypoints, work: Keypoints, matches: int = 0) -> Geometry:
    empty = np.zeros((0, 2), dtype=np.float32)
    return Geometry(empty, empty, query.frame, work.frame, None, matches, len(work))


def verify_geometry(query: Keypoints, work: Keypoints) -> Geometry:
    """The keypoint matches consistent with one similarity transform (RANSAC).

    A query keypoint matches its nearest work keypoint when that is clearly nearer than
    the second nearest (the ratio test); each work keypoint keeps only its best match, so
    a repeated texture cannot pile many query keypoints onto one work keypoint.
    """
    if len(query) < 3 or len(work) < 3:
        return _no_geometry(query, work)
    # RootSIFT descriptors have unit length: squared distance = 2 - 2 * dot product.
    squared = np.maximum(2.0 - 2.0 * (query.root @ work.root.T), 0.0)
    nearest = np.argpartition(squared, 1, axis=1)[:, :2]
    rows = np.arange(len(query))
    d = squared[rows[:, None], nearest]
    first = d.argmin(axis=1)
    best, d1, d2 = nearest[rows, first], d[rows, first], d[rows, 1 - first]
    good = np.nonzero(d1 < RATIO_TEST**2 * d2)[0]
    if len(good) < 3:
        return _no_geometry(query, work, len(good))
    # One match per work keypoint: the nearest.
    order = good[np.lexsort((d1[good], best[good]))]
    good = order[np.r_[True, best[order][1:] != best[order][:-1]]]
    if len(good) < 3:
        return _no_geometry(query, work, len(good))
    transform, mask = cv2.estimateAffinePartial2D(
        query.xy[good], work.xy[best[good]], method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS, maxIters=500, confidence=0.99
    )
    if mask is None or transform is None:
        return _no_geometry(query, work, len(good))
    kept = good[mask.ravel().astype(bool)]
    return Geometry(
        query.xy[kept].astype(np.float32),
        work.xy[best[kept]].astype(np.float32),
        query.frame,
        work.frame,
        transform,
        len(good),
        len(work),
    )


def locate(query: Keypoints, work: WorkSignature) -> tuple[Geometry, bool]:
    """The geometry of the upload on the work or, when that does not look like a copy, on
    its mirror image (then expressed in the work's own coordinates), and whether it was
    mirrored. A symmetric subject matches its own mirror image in part: the raw count of
    inliers would stop at that part."""
    plain = verify_geometry(query, work.keypoints)
    if plain.inliers * plain.support >= INLIERS_FIRE:
        return plain, False
    flipped = verify_geometry(query, work.mirrored_keypoints)
    if flipped.inliers * flipped.support > plain.inliers * plain.support:
        return flipped.mirrored(), True
    return plain, False


def verify(query: Keypoints, work: Keypoints) -> int:
    """Number of keypoint matches consistent with one similarity transform (RANSAC)."""
    return verify_geometry(query, work).inliers


@dataclass
class WorkSignature:
    """Everything the matcher keeps about one protected work."""

    globals: np.ndarray  # (len(WORK_VARIANTS), dim), one per orientation
    regions: np.ndarray  # (windows, dim)
    hashes: np.ndarray  # uint64 (2,): as is, mirrored
    keypoints: Keypoints
    mirrored_keypoints: Keypoints
    version: int = DESCRIPTOR_VERSION
    # (dim,) the whole work at SMALL_LONG_SIDE; signatures stored before it existed use
    # the original view in its place.
    small: np.ndarray | None = None

    def vectors(self) -> np.ndarray:
        """The rows the index keeps: orientations, the small view, windows."""
        small = self.globals[0] if self.small is None else self.small
        return np.concatenate([self.globals, small[None], self.regions])

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        np.savez(
            out,
            globals=self.globals.astype(np.float16),
            regions=self.regions.astype(np.float16),
            hashes=self.hashes,
            kp_xy=self.keypoints.xy,
            kp_desc=self.keypoints.desc,
            mkp_xy=self.mirrored_keypoints.xy,
            mkp_desc=self.mirrored_keypoints.desc,
            version=np.array([self.version]),
            **({} if self.small is None else {"small": self.small.astype(np.float16)}),
            **({} if self.keypoints.size is None else {"kp_size": np.array(self.keypoints.size, dtype=np.int32)}),
        )
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> WorkSignature:
        with np.load(io.BytesIO(data)) as z:
            # The keypoints' image size, kept since it was added (older ones are estimated).
            size = (int(z["kp_size"][0]), int(z["kp_size"][1])) if "kp_size" in z.files else None
            return cls(
                globals=l2_normalise(z["globals"].astype(np.float32)),
                regions=l2_normalise(z["regions"].astype(np.float32)),
                hashes=z["hashes"].astype(np.uint64),
                keypoints=Keypoints(z["kp_xy"], z["kp_desc"], size),
                mirrored_keypoints=Keypoints(z["mkp_xy"], z["mkp_desc"], size),
                version=int(z["version"][0]),
                small=l2_normalise(z["small"].astype(np.float32)[None])[0] if "small" in z.files else None,
            )


@dataclass
class QuerySignature:
    """What the matcher computes once per upload."""

    vectors: np.ndarray  # (1, dim): the whole image
    hash: int
    keypoints: Keypoints | None = None
    image: PILImage.Image | None = field(default=None, repr=False)
    # Keypoints (and their votes, when described by a CopyIndex) being computed on another
    # thread while the forward pass runs.
    pending: Future[tuple[Keypoints, np.ndarray | None]] | None = field(default=None, repr=False)
    votes: np.ndarray | None = field(default=None, repr=False)  # per work, in index order

    def ensure_keypoints(self) -> Keypoints:
        if self.keypoints is None and self.pending is not None:
            (self.keypoints, self.votes), self.pending = self.pending.result(), None
        if self.keypoints is None:
            if self.image is None:
                raise ValueError("the query image is needed for keypoints")
            self.keypoints = sift_keypoints(self.image, long_side=QUERY_SIFT_LONG_SIDE, features=QUERY_SIFT_FEATURES)
        return self.keypoints


def keypoints_as_shown(
    work: PILImage.Image, frame: tuple[float, float], *, shown: float, long_side: int
) -> tuple[Keypoints, Keypoints] | None:
    """The work's keypoints, and its mirror image's, found on the work shrunk to `shown`
    pixels on its long side (how large a copy shows it) and then resized to `long_side`
    (the resolution the copy's part is described at), with positions in the work's keypoint
    `frame` as a signature keeps them; None when the copy shows the work about as large as
    its keypoints were found at (nothing to gain, see AS_SHOWN_BELOW)."""
    found_at = min(max(work.size), max(frame))
    if shown >= AS_SHOWN_BELOW * found_at or shown < 16 or not 32 <= long_side <= AS_SHOWN_LARGEST * QUERY_SIFT_LONG_SIDE:
        return None
    shrunk = fit_long_side(work, round(shown), min_side=8)
    size = (round(frame[0]), round(frame[1]))

    def keypoints(image: PILImage.Image) -> Keypoints:
        found = sift_keypoints(image, long_side=long_side, features=QUERY_SIFT_FEATURES)
        to_frame = max(frame) / max(found.frame)
        return Keypoints(found.xy * np.float32(to_frame), found.desc, size)

    return keypoints(shrunk), keypoints(ImageOps.mirror(shrunk))


def describe_work(backbone: Backbone, image: PILImage.Image) -> WorkSignature:
    """Five forward passes (one per orientation), one at a small scale, and SIFT of the work
    and its mirror."""
    image = image.convert("RGB")
    mirrored = ImageOps.mirror(image)
    views = [image, mirrored, image.rotate(90, expand=True), image.rotate(180), image.rotate(270, expand=True)]
    maps = [_forward(backbone, v) for v in views]
    pooled = pool_regions(maps[0])
    globals_ = np.stack([pooled[0]] + [pool_whole(m) for m in maps[1:]])
    small = np.asarray(fit_long_side(image, SMALL_LONG_SIDE), dtype=np.uint8)
    return WorkSignature(
        small=pool_whole(backbone.feature_maps(small[None])[0]),
        globals=globals_,
        regions=pooled[1:],
        hashes=phash_variants(image),
        keypoints=sift_keypoints(image),
        mirrored_keypoints=sift_keypoints(mirrored),
    )


_keypoint_pool: tuple[int, ThreadPoolExecutor] | None = None


def _keypoint_executor() -> ThreadPoolExecutor:
    """One thread per process (a forked worker starts its own) that extracts an upload's
    keypoints while the forward pass runs; both release the interpreter lock."""
    global _keypoint_pool
    if _keypoint_pool is None or _keypoint_pool[0] != os.getpid():
        _keypoint_pool = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="copy-keypoints"))
    return _keypoint_pool[1]


def describe_query(
    backbone: Backbone,
    image: PILImage.Image,
    *,
    votes: Callable[[Keypoints], np.ndarray] | None = None,
    keypoints: Keypoints | None = None,
) -> QuerySignature:
    """One forward pass and a hash, with the keypoints extracted (and, given `votes`,
    looked up) meanwhile on another thread. Given `keypoints` (a catalog image's stored
    ones), no keypoints are extracted: they are used as they are."""
    image = image.convert("RGB")

    def keypoints_and_votes() -> tuple[Keypoints, np.ndarray | None]:
        found = sift_keypoints(image, long_side=QUERY_SIFT_LONG_SIDE, features=QUERY_SIFT_FEATURES)
        return found, None if votes is None else votes(found)

    pending = None if keypoints is not None else _keypoint_executor().submit(keypoints_and_votes)
    fmap = _forward(backbone, image)
    vectors = pool_whole(fmap)[None]
    return QuerySignature(vectors=vectors, hash=phash(image), keypoints=keypoints, image=image, pending=pending)


# ---------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Evidence:
    """The signals behind one (upload, work) score."""

    cnn: float  # best cosine between the upload and any work view or window
    cnn_view: str  # which comparison gave it
    hash_distance: int  # bits between pHashes (0–64), best of work and mirror
    inliers: int  # geometrically consistent keypoint matches (-1: not verified)
    mirrored: bool  # the keypoints matched the mirror image of the work
    # Where they agree, in the work's own coordinates (None: not verified, or evidence
    # recorded before geometry was kept: then every inlier counts in full).
    geometry: Geometry | None = field(default=None, compare=False, repr=False)

    @property
    def support(self) -> float:
        return 1.0 if self.geometry is None else self.geometry.support

    @property
    def effective_inliers(self) -> float:
        """Inliers weighted by how much their geometry looks like a copy."""
        return max(self.inliers, 0) * self.support

    def fired(self) -> list[str]:
        out = []
        if self.hash_distance <= HASH_FIRES:
            out.append(f"perceptual hash ({self.hash_distance} of 64 bits differ)")
        if self.inliers >= INLIERS_FIRE:
            agree = f"{self.inliers} keypoints agree on one geometry" + (" (mirrored)" if self.mirrored else "")
            if self.geometry is None:
                out.append(agree)
            elif self.effective_inliers >= INLIERS_FIRE:
                out.append(f"{agree}, {self.geometry.work_found:.0%} of the work found in the upload")
            else:
                out.append(
                    f"{agree}, but only {self.geometry.inlier_ratio:.0%} of the keypoint matches do and they span "
                    f"{max(self.geometry.work_share, self.geometry.query_share):.0%} of the image (weak: "
                    "another photo of the same subject looks like this)"
                )
        if self.cnn >= CNN_FIRES:
            out.append(f"CNN similarity {self.cnn:.2f} ({self.cnn_view})")
        return out


HASH_FIRES = 10
INLIERS_FIRE = 15
CNN_FIRES = 0.9
# Fusion: this many consistent keypoints count as even odds; hash distances from this
# many bits up count for nothing.
INLIERS_HALF = 25
HASH_COUNTS_BELOW = 14


def fuse(evidence: Evidence, *, inliers_half: float = INLIERS_HALF) -> float:
    """One score in [0, 1] from independent signals (a noisy-OR of calibrated parts).

    Keypoints: 25 consistent one-to-one matches give 0.5, 75 give 0.75, each weighted by
    its geometry's support (another photo of the same species reaches ~30 inliers, but
    few of its matches agree and they are clustered; copies 50 and more, nearly all
    agreeing and spread over the work). Hash: only distances well under the ~32 bits of
    unrelated photos count. CNN: only very high similarity counts, because two photos of
    the same subject are close too.
    """
    inliers = evidence.effective_inliers
    geo = inliers / (inliers + inliers_half)
    hsh = float(np.clip((HASH_COUNTS_BELOW - evidence.hash_distance) / HASH_COUNTS_BELOW, 0, 1)) ** 0.5
    cnn = float(np.clip((evidence.cnn - 0.8) / 0.2, 0, 1)) ** 2
    miss = (1 - geo) * (1 - hsh) * (1 - 0.8 * cnn)
    return float(1 - miss)


@dataclass(frozen=True)
class Candidate:
    work_id: int
    score: float
    evidence: Evidence


def _best_per_work(scores: np.ndarray, per_work: int) -> tuple[np.ndarray, np.ndarray]:
    """(n * per_work,) similarities → per work: the best and which of its vectors gave it."""
    grouped = scores.reshape(-1, per_work)
    which = grouped.argmax(axis=1)
    return grouped[np.arange(grouped.shape[0]), which], which


class _Projection:
    """A PCA of the register's CNN vectors, for a cheap first pass over many works.

    Dot products are kept exact up to the dropped components: x·q = x'·q' + m·x + m·q − m·m,
    with x', q' the centred projections and m the mean.
    """

    def __init__(self, sample: np.ndarray, dims: int) -> None:
        self.mean = sample.mean(axis=0).astype(np.float32)
        centred = (sample - self.mean).astype(np.float32)
        # The leading right singular vectors of the centred sample (its covariance's eigenvectors).
        _, vectors = np.linalg.eigh(centred.T @ centred)
        self.components = np.ascontiguousarray(vectors[:, ::-1][:, :dims], dtype=np.float32)

    def project(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.ascontiguousarray((x - self.mean) @ self.components), (x @ self.mean).astype(np.float32)

    def dots(self, low: np.ndarray, offset: np.ndarray, query: np.ndarray) -> np.ndarray:
        """(n, k) projected rows and their m·x → (n, len(query)) approximate dot products."""
        q_low, q_offset = self.project(query)
        return low @ q_low.T + offset[:, None] + (q_offset - float(self.mean @ self.mean))[None, :]


def _set_probes(index: faiss.IndexIVF) -> None:
    multi = isinstance(faiss.downcast_index(index.quantizer), faiss.MultiIndexQuantizer)
    index.nprobe = VOTE_IMI_PROBES if multi else VOTE_PROBES


class KeypointVotes:
    """Every work's RootSIFT descriptors in one nearest-neighbour index, appended to as
    works are registered. The inverted file is trained when the descriptor count first
    passes VOTE_EXACT_BELOW and retrained only when it has doubled since; in between new
    descriptors are added to its lists."""

    def __init__(self, everything: Callable[[], list[Keypoints]]) -> None:
        # `everything`: every flushed work's keypoints, in work order (for retraining).
        self._everything = everything
        self._owner = np.zeros(0, dtype=np.int32)  # work position of every descriptor
        self._index: faiss.Index | None = None
        self._trained_on = 0

    def __len__(self) -> int:
        return len(self._owner)

    @staticmethod
    def _stack(keypoints: list[Keypoints], first: int) -> tuple[np.ndarray, np.ndarray]:
        desc = [k.root for k in keypoints if len(k)]
        owner = [np.full(len(k), first + i, dtype=np.int32) for i, k in enumerate(keypoints) if len(k)]
        if not desc:
            return np.zeros((0, 128), dtype=np.float32), np.zeros(0, dtype=np.int32)
        return np.ascontiguousarray(np.concatenate(desc), dtype=np.float32), np.concatenate(owner)

    def extend(self, keypoints: list[Keypoints], first: int) -> None:
        """Add the keypoints of works at positions first, first + 1, …"""
        desc, owner = self._stack(keypoints, first)
        n = len(self._owner) + len(owner)
        trained = isinstance(self._index, faiss.IndexIVF)
        if n >= VOTE_EXACT_BELOW and (not trained or (n >= 2 * self._trained_on and self._trained_on < VOTE_RETRAIN_UNTIL)):
            self._train(*self._stack(self._everything(), 0))
            return
        if self._index is None:
            self._index = faiss.IndexFlatL2(128)
        self._index.add(desc)
        self._owner = np.concatenate([self._owner, owner])

    def _train(self, desc: np.ndarray, owner: np.ndarray) -> None:
        rng = np.random.default_rng(0)
        index: faiss.IndexIVF
        if len(desc) >= VOTE_PQ_ABOVE:
            # At least ~40 sample descriptors per centroid of each half's quantiser.
            bits = int(np.clip(np.log2(min(len(desc), VOTE_TRAIN_SAMPLE) / 40), 4, VOTE_IMI_BITS))
            quantiser = faiss.MultiIndexQuantizer(128, 2, bits)
            quantiser.pq.cp.niter = 10
            index = faiss.IndexIVFPQ(quantiser, 128, 1 << (2 * bits), VOTE_PQ_BYTES, 8)
            index.quantizer_trains_alone = chr(1)  # the multi-index is trained as it is, not by k-means
            # Codes of the descriptors themselves, not of their offsets from the cell: one
            # distance table per upload keypoint instead of one per cell probed (at 10k
            # works 16 against 29 ms a vote with 64 cells probed, the same copies voted for).
            index.by_residual = False
            sample = desc[rng.permutation(len(desc))[:VOTE_TRAIN_SAMPLE]]
        else:
            lists = max(16, min(int(VOTE_LISTS_PER_ROOT * np.sqrt(len(desc))), len(desc) // 40))
            index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(128), 128, lists, faiss.ScalarQuantizer.QT_8bit)
            index.cp.niter = 10
            sample = desc[rng.permutation(len(desc))[: 40 * lists]]
        index.train(sample)
        for start in range(0, len(desc), 262_144):
            index.add(desc[start : start + 262_144])
        _set_probes(index)
        self._index, self._owner, self._trained_on = index, owner, len(desc)

    @property
    def nbytes(self) -> int:
        """Bytes the index holds: codes and ids of every cell with the cells' own
        overhead, the coarse centroids and each descriptor's work (or the flat vectors)."""
        if self._index is None:
            return 0
        if isinstance(self._index, faiss.IndexIVF):
            ivf = self._index
            quantiser = faiss.downcast_index(ivf.quantizer)
            if isinstance(quantiser, faiss.MultiIndexQuantizer):
                centroids = int(quantiser.pq.M * quantiser.pq.ksub * quantiser.pq.dsub) * 4
            else:
                centroids = int(ivf.nlist) * 128 * 4
            # Each cell's codes and ids live in two growable arrays (24 bytes each).
            codes = int(ivf.ntotal) * (int(ivf.code_size) + 8) + centroids + int(ivf.nlist) * 48
        else:
            codes = int(self._index.ntotal) * 128 * 4
        return codes + int(self._owner.nbytes)

    def save(self, directory: Path) -> None:
        if self._index is not None:
            faiss.write_index(self._index, str(directory / "votes.faiss"))
        np.save(directory / "owners.npy", self._owner)

    def load(self, directory: Path, trained_on: int) -> None:
        self._owner = np.load(directory / "owners.npy")
        path = directory / "votes.faiss"
        self._index = faiss.read_index(str(path)) if path.exists() else None
        if isinstance(self._index, faiss.IndexIVF):
            _set_probes(self._index)
        self._trained_on = trained_on

    def vote(self, keypoints: Keypoints, works: int) -> np.ndarray:
        """(works,) how many of the upload's keypoints vote for each work."""
        if self._index is None or self._index.ntotal < 2 or len(keypoints) == 0:
            return np.zeros(works, dtype=np.int64)
        distances, neighbours = self._index.search(np.ascontiguousarray(keypoints.root, dtype=np.float32), 2)
        d1, d2 = np.sqrt(np.maximum(distances[:, 0], 0)), np.sqrt(np.maximum(distances[:, 1], 0))
        distinct = (neighbours[:, 0] >= 0) & (neighbours[:, 1] >= 0) & (d1 < RATIO_TEST * d2)
        return np.bincount(self._owner[neighbours[distinct, 0]], minlength=works)[:works]


class _Rows:
    """Rows appended in batches to a buffer that grows by half its size when full, so
    filling a large register copies each row a few times, not once per batch."""

    def __init__(self) -> None:
        self._buffer: np.ndarray | None = None
        self._count = 0

    @property
    def rows(self) -> np.ndarray | None:
        return None if self._buffer is None else self._buffer[: self._count]

    @property
    def nbytes(self) -> int:
        return 0 if self._buffer is None else int(self._buffer.nbytes)

    def append(self, new: np.ndarray) -> None:
        needed = self._count + len(new)
        if self._buffer is None or needed > len(self._buffer):
            grown = np.empty((max(needed, self._count * 3 // 2), new.shape[1]), dtype=new.dtype)
            if self._buffer is not None:
                grown[: self._count] = self._buffer[: self._count]
            self._buffer = grown
        self._buffer[self._count : needed] = new
        self._count = needed


class CopyIndex:
    """Protected works' signatures, appended to as works are registered.

    Every work contributes the same number of CNN vectors (its views, then its windows),
    so per-work maxima are reshapes. Past SHORTLIST_ABOVE works, a PCA projection of the
    vectors picks a shortlist that is then scored exactly; the projection is refitted
    whenever the register has doubled since the last fit, so nothing is rebuilt per upload.

    Given a `loader` (work id → its stored signature), the index keeps only what search
    needs in memory (CNN vectors, hashes, the keypoint index) and reads a candidate's full
    signature (its keypoints, for verification) when it is needed. `save` writes those
    parts to a folder and `load` maps them back, so a new process does not rebuild them.
    """

    def __init__(self, loader: Callable[[int], WorkSignature] | None = None) -> None:
        self.ids: list[int] = []
        self._known: set[int] = set()
        self._signatures: dict[int, WorkSignature] = {}  # all of them without a loader
        self._loader = lru_cache(maxsize=256)(loader) if loader is not None else None
        # (works * per_work, dim) float16: the rows mapped from a saved folder, then the
        # rows added since in memory.
        self._mapped: np.ndarray | None = None
        self._added = _Rows()
        self._hashes = np.zeros((0, 2), dtype=np.uint64)
        self._pending: list[tuple[int, WorkSignature]] = []
        self._projection: _Projection | None = None
        self._fitted_on = 0
        self._low = np.zeros((0, PROJECTED_DIMS), dtype=np.float32)
        self._offset = np.zeros(0, dtype=np.float32)
        self._head = np.zeros((0, HEAD_DIMS), dtype=np.float32)  # _low's first columns, contiguous
        self._votes = KeypointVotes(lambda: [self.signature(i).keypoints for i in self.ids])

    def __len__(self) -> int:
        return len(self.ids) + len(self._pending)

    def __contains__(self, work_id: int) -> bool:
        return work_id in self._known

    def add(self, work_id: int, signature: WorkSignature) -> None:
        if work_id in self._known:
            return
        self._known.add(work_id)
        self._signatures[work_id] = signature
        self._pending.append((work_id, signature))
        if len(self._pending) >= FLUSH_EVERY:  # a large register read from the store: never all at once
            self._flush()

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: CNN vectors (unless mapped from a saved folder), their
        projection, hashes, the keypoint index and the signatures kept whole."""
        vectors = self._added.nbytes
        kept = sum(
            s.keypoints.desc.nbytes + s.keypoints.xy.nbytes + s.mirrored_keypoints.desc.nbytes
            + s.mirrored_keypoints.xy.nbytes + s.globals.nbytes + s.regions.nbytes
            + (0 if s.keypoints._root is None else s.keypoints._root.nbytes)
            for s in self._signatures.values()
        )  # fmt: skip
        return (
            vectors
            + int(self._low.nbytes + self._head.nbytes + self._offset.nbytes + self._hashes.nbytes)
            + self._votes.nbytes
            + kept
        )

    def save(self, directory: Path) -> None:
        """Write the searchable parts to `directory` (replaced whole, atomically)."""
        self._flush()
        replace_folder(directory, self._write)

    def _write(self, partial: Path) -> None:
        np.save(partial / "ids.npy", np.array(self.ids, dtype=np.int64))
        np.save(partial / "hashes.npy", self._hashes)
        with open(partial / "vectors.npy", "wb") as out:  # the mapped rows, then the rest, never all in memory
            parts = [p for p in (self._mapped, self._vectors) if p is not None]
            dim = parts[0].shape[1] if parts else 0
            rows = sum(len(p) for p in parts)
            np.lib.format.write_array_header_1_0(out, {"descr": "<f2", "fortran_order": False, "shape": (rows, dim)})
            for part in parts:
                for start in range(0, len(part), 65536):
                    out.write(np.ascontiguousarray(part[start : start + 65536], dtype="<f2").tobytes())
        np.save(partial / "low.npy", self._low)
        np.save(partial / "offset.npy", self._offset)
        if self._projection is not None:
            np.save(partial / "projection_mean.npy", self._projection.mean)
            np.save(partial / "projection_components.npy", self._projection.components)
        self._votes.save(partial)
        meta = {"version": DESCRIPTOR_VERSION, "fitted_on": self._fitted_on, "trained_on": self._votes._trained_on}
        (partial / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path, loader: Callable[[int], WorkSignature]) -> CopyIndex:
        """A saved index: its CNN vectors mapped from disk (only a shortlist's rows are
        read), the rest read into memory. Signatures come from `loader`."""
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("version") != DESCRIPTOR_VERSION:
            raise ValueError("the saved copy index was made with other descriptors")
        index = cls(loader)
        index.ids = np.load(directory / "ids.npy").tolist()
        index._known = set(index.ids)
        index._hashes = np.load(directory / "hashes.npy")
        vectors = np.load(directory / "vectors.npy", mmap_mode="r")
        index._mapped = vectors if vectors.size else None
        index._low, index._offset = np.load(directory / "low.npy"), np.load(directory / "offset.npy")
        index._head = np.ascontiguousarray(index._low[:, :HEAD_DIMS])
        if (directory / "projection_mean.npy").exists():
            projection = _Projection.__new__(_Projection)
            projection.mean = np.load(directory / "projection_mean.npy")
            projection.components = np.load(directory / "projection_components.npy")
            index._projection = projection
        index._fitted_on = int(meta["fitted_on"])
        index._votes.load(directory, int(meta["trained_on"]))
        return index

    @property
    def _vectors(self) -> np.ndarray | None:
        return self._added.rows

    @property
    def per_work(self) -> int:
        return len(VIEWS) + len(region_boxes(8, 8)) - 1  # the grid, without the whole map

    def _flush(self) -> None:
        if not self._pending:
            return
        self._added.append(np.concatenate([s.vectors() for _, s in self._pending]).astype(np.float16))
        self._hashes = np.concatenate([self._hashes, np.stack([s.hashes for _, s in self._pending])])
        first = len(self.ids)
        self.ids += [i for i, _ in self._pending]
        self._votes.extend([s.keypoints for _, s in self._pending], first)
        if self._loader is not None:  # the store has them; keep only what search needs
            for work_id, _ in self._pending:
                self._signatures.pop(work_id, None)
        self._pending = []
        n = len(self.ids)
        if n < SHORTLIST_ABOVE:
            return
        added = self._vectors
        assert added is not None  # a batch was just appended
        if self._projection is None or n >= 2 * self._fitted_on:
            mapped = self._mapped if self._mapped is not None else np.zeros((0, added.shape[1]), np.float16)
            step = max(1, (len(mapped) + len(added)) // PROJECTION_SAMPLE)
            sample = np.concatenate([mapped[::step], added[::step]]).astype(np.float32)
            self._projection = _Projection(sample, PROJECTED_DIMS)
            self._fitted_on = n
            low, offset = self._project(mapped)
            tail_low, tail_offset = self._project(added)
            self._low, self._offset = np.concatenate([low, tail_low]), np.concatenate([offset, tail_offset])
            self._head = np.ascontiguousarray(self._low[:, :HEAD_DIMS])
        else:
            low, offset = self._project(added[len(self._low) - self._mapped_rows :])
            self._low, self._offset = np.concatenate([self._low, low]), np.concatenate([self._offset, offset])
            self._head = np.concatenate([self._head, low[:, :HEAD_DIMS]])

    def _project(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self._projection is not None
        lows, offsets = [np.zeros((0, self._projection.components.shape[1]), np.float32)], [np.zeros(0, np.float32)]
        for start in range(0, len(vectors), 65536):
            low, offset = self._projection.project(vectors[start : start + 65536].astype(np.float32))
            lows.append(low)
            offsets.append(offset)
        return np.concatenate(lows), np.concatenate(offsets)

    @property
    def _mapped_rows(self) -> int:
        return 0 if self._mapped is None else len(self._mapped)

    def _rows(self, works: np.ndarray) -> np.ndarray:
        """(len(works) * per_work, dim) float32 CNN vectors of the works at these positions
        (sorted), read from the mapped rows (only those pages) or the ones in memory."""
        per_work, mapped_works = self.per_work, self._mapped_rows // self.per_work
        parts = []
        for source, chosen in (
            (self._mapped, works[works < mapped_works]),
            (self._vectors, works[works >= mapped_works] - mapped_works),
        ):
            if source is not None and len(chosen):
                parts.append(source.reshape(-1, per_work, source.shape[1])[chosen].reshape(-1, source.shape[1]))
        return np.concatenate(parts).astype(np.float32)

    def signature(self, work_id: int) -> WorkSignature:
        kept = self._signatures.get(work_id)
        if kept is not None:
            return kept
        if self._loader is None or work_id not in self._known:
            raise KeyError(work_id)
        return self._loader(work_id)

    def _scores(self, vectors: np.ndarray, query: QuerySignature) -> tuple[np.ndarray, np.ndarray]:
        """Per work in `vectors` ((works * per_work, dim)): the best CNN similarity of the
        whole upload to any view or window of the work (crops, rotations, mirror images),
        and which gave it (an index into VIEWS, or len(VIEWS) for a window of the work)."""
        best, which = _best_per_work(vectors @ query.vectors[0], self.per_work)
        return best, np.minimum(which, len(VIEWS))

    def cnn_scores(self, query: QuerySignature) -> tuple[np.ndarray, np.ndarray]:
        """Per work: the best CNN similarity and which comparison gave it. Past
        SHORTLIST_ABOVE works only a shortlist is scored exactly; the rest get -1."""
        self._flush()
        n = len(self.ids)
        if self._projection is None:
            return self._scores(self._rows(np.arange(n)), query)
        shortlist = self._shortlist(query.vectors[:1])
        exact, how = self._scores(self._rows(shortlist), query)
        best = np.full(n, -1.0, dtype=np.float32)
        which = np.zeros(n, dtype=np.int64)
        best[shortlist], which[shortlist] = exact, how
        return best, which

    def _shortlist(self, query: np.ndarray) -> np.ndarray:
        """Positions (sorted) of the SHORTLIST works whose projected rows score best."""
        assert self._projection is not None
        n, per_work = len(self.ids), self.per_work
        if n <= SHORTLIST:
            return np.arange(n)
        considered = np.arange(n)
        low, offset = self._low, self._offset
        if n > max(COARSE_ABOVE, COARSE):
            q_low, _ = self._projection.project(query)
            head = (self._head @ q_low[0, :HEAD_DIMS] + self._offset).reshape(n, per_work).max(axis=1)
            considered = np.sort(np.argpartition(-head, COARSE)[:COARSE])
            rows = (considered[:, None] * per_work + np.arange(per_work)[None, :]).ravel()
            low, offset = self._low[rows], self._offset[rows]
        rough = self._projection.dots(low, offset, query)[:, 0].reshape(len(considered), per_work).max(axis=1)
        return np.sort(considered[np.argpartition(-rough, SHORTLIST)[:SHORTLIST]])

    def describe(self, backbone: Backbone, image: PILImage.Image, *, keypoints: Keypoints | None = None) -> QuerySignature:
        """An upload's signature, its keypoints looked up in this index while the forward
        pass runs (or `keypoints` already extracted, looked up when matched). The index
        must not change until the signature is matched (one thread uses an index: the
        worker's)."""
        self._flush()
        works = len(self.ids)
        return describe_query(backbone, image, votes=lambda found: self._votes.vote(found, works), keypoints=keypoints)

    def match(self, query: QuerySignature, *, candidates: int = CANDIDATES, verify_all: bool = False) -> list[Candidate]:
        """The best-scoring works for an upload, best first, each verified with keypoints.

        Candidates: the works with most keypoint votes, the nearest by CNN descriptor and
        the nearest by hash. An almost identical hash needs no keypoints at all.
        """
        if len(self) == 0:
            return []
        cnn, how = self.cnn_scores(query)
        as_is, flipped_hash = hamming(self._hashes[:, 0], query.hash), hamming(self._hashes[:, 1], query.hash)
        distance = np.minimum(as_is, flipped_hash)
        by_hash = np.argsort(distance, kind="stable")[:candidates]
        by_cnn = np.argsort(-cnn, kind="stable")[:candidates]
        by_votes: list[int] = []
        if verify_all or distance[by_hash[0]] > 4:
            keypoints = query.ensure_keypoints()
            votes = query.votes if query.votes is not None else self._votes.vote(keypoints, len(self.ids))
            votes = np.pad(votes, (0, len(self.ids) - len(votes)))  # works registered since
            top = np.argsort(-votes, kind="stable")[:VOTE_CANDIDATES]
            by_votes = [int(i) for i in top if votes[i] >= MIN_VOTES]
        chosen = list(dict.fromkeys([*by_votes, *by_cnn.tolist(), *by_hash.tolist()]))
        out = []
        settled = False
        for i in chosen:
            signature = self.signature(self.ids[i])
            inliers, mirrored = -1, bool(flipped_hash[i] < as_is[i])
            geometry: Geometry | None = None
            # An almost identical hash needs no keypoints; a settled query needs no more.
            if verify_all or (distance[i] > 4 and not settled):
                geometry, mirrored = locate(query.ensure_keypoints(), signature)
                inliers = geometry.inliers
                settled = inliers * geometry.support >= CONCLUSIVE_INLIERS
            view = VIEWS[how[i]] if how[i] < len(VIEWS) else "a part of the work"
            evidence = Evidence(float(cnn[i]), view, int(distance[i]), inliers, mirrored, geometry)
            out.append(Candidate(self.ids[i], fuse(evidence), evidence))
        return sorted(out, key=lambda c: -c.score)

    def match_part(
        self,
        backbone: Backbone,
        image: PILImage.Image,
        box: tuple[float, float, float, float],
        work_id: int,
        *,
        inliers_half: float = INLIERS_HALF,
        work_as_shown: tuple[PILImage.Image, float] | None = None,
    ) -> Candidate | None:
        """The work's candidate on the part `box` (fractions) of the image, its evidence
        and geometry expressed on the whole image, scored with keypoints counting at
        `inliers_half` (see `fuse`); None when the part is too small.

        Given `work_as_shown` (the work's pixels, and how many pixels long the image shows
        it), the part's keypoints are also matched against the work's shrunk to that size
        (`keypoints_as_shown`), and the geometry with more copy-like inliers kept."""
        w, h = image.size
        pixels = (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h))
        if pixels[2] - pixels[0] < 32 or pixels[3] - pixels[1] < 32:
            return None
        part = image.crop(pixels)
        exact = (pixels[0] / w, pixels[1] / h, pixels[2] / w, pixels[3] / h)
        query = self.describe(backbone, part)
        found = next((c for c in self.match(query, verify_all=True) if c.work_id == work_id), None)
        if found is None:
            return None
        evidence = found.evidence
        if work_as_shown is not None:
            scale = max(query.ensure_keypoints().frame) / max(part.size)  # how much the part was resized for its keypoints
            evidence = self._closer_as_shown(query, work_id, evidence, work_as_shown, scale=scale)
        geometry = evidence.geometry
        view = f"{evidence.cnn_view}, on the part of the image that shows it"
        whole = replace(evidence, cnn_view=view, geometry=None if geometry is None else geometry.in_whole(exact))
        return Candidate(work_id, fuse(evidence, inliers_half=inliers_half), whole)

    def _closer_as_shown(
        self,
        query: QuerySignature,
        work_id: int,
        evidence: Evidence,
        work_as_shown: tuple[PILImage.Image, float],
        *,
        scale: float,
    ) -> Evidence:
        """`evidence` with the geometry against the work as the part shows it, when that
        spans the work and has more copy-like inliers (`scale`: how much the part was
        resized for its keypoints)."""
        work, shown = work_as_shown
        signature = self.signature(work_id)
        found = keypoints_as_shown(work, signature.keypoints.frame, shown=shown, long_side=round(shown * scale))
        if found is None:
            return evidence
        geometry, mirrored = locate(query.ensure_keypoints(), replace(signature, keypoints=found[0], mirrored_keypoints=found[1]))
        if geometry.support < AS_SHOWN_SUPPORT or geometry.inliers * geometry.support <= evidence.effective_inliers:
            return evidence
        return replace(evidence, inliers=geometry.inliers, mirrored=mirrored, geometry=geometry)

    def with_geometry(self, query: QuerySignature, candidate: Candidate) -> Evidence:
        """The candidate's evidence with the geometry a reviewer is shown, found now when an
        almost identical hash settled it without keypoints (the score stays as it was)."""
        if candidate.evidence.geometry is not None or candidate.work_id not in self._known:
            return candidate.evidence
        geometry, _ = locate(query.ensure_keypoints(), self.signature(candidate.work_id))
        return replace(candidate.evidence, geometry=geometry)
