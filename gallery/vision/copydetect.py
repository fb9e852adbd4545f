"""Copy detection: does an upload reproduce a protected work, even after editing?

Three kinds of evidence, cheapest first:

1. regional CNN descriptors (one forward pass of the backbone's last feature map,
   pooled over a grid of windows). A protected work is described by its whole-image
   descriptor in five orientations (as is, mirrored, rotated 90/180/270°) and by the
   descriptors of its sub-windows; an upload by its whole-image descriptor and its own
   sub-windows. Work windows against the upload find crops; upload windows against
   the work find pastes into another photo and borders.
2. a perceptual hash of the work and its mirror image (resized, re-encoded, recoloured
   copies).
3. for the few best candidates only, SIFT keypoints matched and verified with a
   RANSAC similarity transform: the number of consistent matches separates a copy
   from another photo of the same subject.

No Django here: signatures are plain arrays, serialised to bytes for storage.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

from .backbones import Backbone, l2_normalise
from .phash import hamming, hash_similarity, phash, phash_variants

DESCRIPTOR_VERSION = 1
WORK_VARIANTS = ("original", "mirrored", "rotated 90°", "rotated 180°", "rotated 270°")
# (window side as a fraction of the feature map's side, positions per axis).
REGION_GRID = ((0.5, 3), (0.7, 2))
# An upload is also cut finer, so that a work pasted small into another photo fills a window.
QUERY_GRID = (*REGION_GRID, (0.4, 3))
CNN_LONG_SIDE = 320
SIFT_LONG_SIDE = 400
SIFT_FEATURES = 300
RATIO_TEST = 0.8
RANSAC_PIXELS = 3.0
CANDIDATES = 4
# This many consistent keypoints settle it: later candidates need no verifying.
CONCLUSIVE_INLIERS = 40


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


def pool_regions(fmap: np.ndarray, grid: tuple[tuple[float, int], ...] = REGION_GRID) -> np.ndarray:
    """(h, w, c) activations → (regions, c) L2-normalised mean-pooled descriptors."""
    h, w, _ = fmap.shape
    # An integral image makes every window's sum four lookups.
    integral = np.zeros((h + 1, w + 1, fmap.shape[2]), dtype=np.float64)
    integral[1:, 1:] = fmap.cumsum(0).cumsum(1)
    out = []
    for y0, y1, x0, x1 in region_boxes(h, w, grid):
        total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        out.append(total / ((y1 - y0) * (x1 - x0)))
    return l2_normalise(np.asarray(out, dtype=np.float32))


def _forward(backbone: Backbone, image: PILImage.Image) -> np.ndarray:
    arr = np.asarray(fit_long_side(image, CNN_LONG_SIDE), dtype=np.uint8)
    return backbone.feature_maps(arr[None])[0]


@dataclass
class Keypoints:
    """SIFT keypoint positions and descriptors (uint8, OpenCV's scale) of one image."""

    xy: np.ndarray
    desc: np.ndarray

    def __len__(self) -> int:
        return int(self.xy.shape[0])


_sift = None


def sift_keypoints(image: PILImage.Image) -> Keypoints:
    global _sift
    if _sift is None:
        _sift = cv2.SIFT_create(nfeatures=SIFT_FEATURES)  # type: ignore[attr-defined]
    gray = np.asarray(fit_long_side(image, SIFT_LONG_SIDE).convert("L"), dtype=np.uint8)
    points, desc = _sift.detectAndCompute(gray, None)
    if desc is None or not points:
        return Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))
    xy = np.array([p.pt for p in points], dtype=np.float32)
    return Keypoints(xy, np.clip(desc, 0, 255).astype(np.uint8))


def _root_sift(desc: np.ndarray) -> np.ndarray:
    d = desc.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-6)
    return np.sqrt(d)


def verify(query: Keypoints, work: Keypoints) -> int:
    """Number of keypoint matches consistent with one similarity transform (RANSAC)."""
    if len(query) < 3 or len(work) < 3:
        return 0
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    pairs = matcher.knnMatch(_root_sift(query.desc), _root_sift(work.desc), k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO_TEST * p[1].distance]
    if len(good) < 3:
        return 0
    src = query.xy[[m.queryIdx for m in good]]
    dst = work.xy[[m.trainIdx for m in good]]
    _, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS, maxIters=500, confidence=0.99
    )
    return int(mask.sum()) if mask is not None else 0


@dataclass
class WorkSignature:
    """Everything the matcher keeps about one protected work."""

    globals: np.ndarray  # (len(WORK_VARIANTS), dim), one per orientation
    regions: np.ndarray  # (windows, dim)
    hashes: np.ndarray  # uint64 (2,): as is, mirrored
    keypoints: Keypoints
    mirrored_keypoints: Keypoints
    version: int = DESCRIPTOR_VERSION

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
        )
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> WorkSignature:
        with np.load(io.BytesIO(data)) as z:
            return cls(
                globals=l2_normalise(z["globals"].astype(np.float32)),
                regions=l2_normalise(z["regions"].astype(np.float32)),
                hashes=z["hashes"].astype(np.uint64),
                keypoints=Keypoints(z["kp_xy"], z["kp_desc"]),
                mirrored_keypoints=Keypoints(z["mkp_xy"], z["mkp_desc"]),
                version=int(z["version"][0]),
            )


@dataclass
class QuerySignature:
    """What the matcher computes once per upload."""

    vectors: np.ndarray  # (1 + windows, dim): the whole image first
    hash: int
    keypoints: Keypoints | None = None  # computed lazily, only when candidates need verifying
    image: PILImage.Image | None = field(default=None, repr=False)

    def ensure_keypoints(self) -> Keypoints:
        if self.keypoints is None:
            if self.image is None:
                raise ValueError("the query image is needed for keypoints")
            self.keypoints = sift_keypoints(self.image)
        return self.keypoints


def describe_work(backbone: Backbone, image: PILImage.Image) -> WorkSignature:
    """Five forward passes (one per orientation) plus SIFT of the work and its mirror."""
    image = image.convert("RGB")
    mirrored = ImageOps.mirror(image)
    views = [image, mirrored, image.rotate(90, expand=True), image.rotate(180), image.rotate(270, expand=True)]
    maps = [_forward(backbone, v) for v in views]
    pooled = pool_regions(maps[0])
    globals_ = np.stack([pooled[0]] + [pool_regions(m)[0] for m in maps[1:]])
    return WorkSignature(
        globals=globals_,
        regions=pooled[1:],
        hashes=phash_variants(image),
        keypoints=sift_keypoints(image),
        mirrored_keypoints=sift_keypoints(mirrored),
    )


def describe_query(backbone: Backbone, image: PILImage.Image) -> QuerySignature:
    """One forward pass and a hash; keypoints follow only if a candidate needs them."""
    image = image.convert("RGB")
    return QuerySignature(vectors=pool_regions(_forward(backbone, image), QUERY_GRID), hash=phash(image), image=image)


# ---------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Evidence:
    """The signals behind one (upload, work) score."""

    cnn: float  # best cosine between any upload window and any work view or window
    cnn_view: str  # which comparison gave it
    hash_distance: int  # bits between pHashes (0–64), best of work and mirror
    inliers: int  # geometrically consistent keypoint matches (-1: not verified)
    mirrored: bool  # the keypoints matched the mirror image of the work

    def fired(self) -> list[str]:
        out = []
        if self.hash_distance <= HASH_FIRES:
            out.append(f"perceptual hash ({self.hash_distance} of 64 bits differ)")
        if self.inliers >= INLIERS_FIRE:
            out.append(f"{self.inliers} keypoints agree on one geometry" + (" (mirrored)" if self.mirrored else ""))
        if self.cnn >= CNN_FIRES:
            out.append(f"CNN similarity {self.cnn:.2f} ({self.cnn_view})")
        return out


HASH_FIRES = 10
INLIERS_FIRE = 15
CNN_FIRES = 0.9


def fuse(evidence: Evidence) -> float:
    """One score in [0, 1] from independent signals (a noisy-OR of calibrated parts).

    Keypoints: 15 consistent matches give 0.5, 45 give 0.75 (two photos of one species
    reach ~15 within 3 px; copies 25 and more). Hash: only distances well
    under the ~32 bits of unrelated photos count. CNN: only very high similarity counts,
    because two photos of the same subject are close too.
    """
    geo = max(evidence.inliers, 0) / (max(evidence.inliers, 0) + INLIERS_FIRE)
    hsh = float(np.clip((20 - evidence.hash_distance) / 20, 0, 1)) ** 0.5
    cnn = float(np.clip((evidence.cnn - 0.8) / 0.2, 0, 1)) ** 2
    miss = (1 - geo) * (1 - hsh) * (1 - 0.8 * cnn)
    return float(1 - miss)


@dataclass(frozen=True)
class Candidate:
    work_id: int
    score: float
    evidence: Evidence


class CopyIndex:
    """Protected works' signatures in memory, appended to as works are registered."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self._signatures: dict[int, WorkSignature] = {}
        self._globals: np.ndarray | None = None
        self._regions: np.ndarray | None = None
        self._hashes = np.zeros((0, 2), dtype=np.uint64)
        self._pending: list[tuple[int, WorkSignature]] = []

    def __len__(self) -> int:
        return len(self.ids) + len(self._pending)

    def __contains__(self, work_id: int) -> bool:
        return work_id in self._signatures

    def add(self, work_id: int, signature: WorkSignature) -> None:
        if work_id in self._signatures:
            return
        self._signatures[work_id] = signature
        self._pending.append((work_id, signature))

    def _flush(self) -> None:
        if not self._pending:
            return
        new_globals = np.concatenate([s.globals for _, s in self._pending])
        new_regions = np.concatenate([s.regions for _, s in self._pending])
        self._globals = new_globals if self._globals is None else np.concatenate([self._globals, new_globals])
        self._regions = new_regions if self._regions is None else np.concatenate([self._regions, new_regions])
        self._hashes = np.concatenate([self._hashes, np.stack([s.hashes for _, s in self._pending])])
        self.ids += [i for i, _ in self._pending]
        self._pending = []

    def signature(self, work_id: int) -> WorkSignature:
        return self._signatures[work_id]

    def cnn_scores(self, query: QuerySignature) -> tuple[np.ndarray, np.ndarray]:
        """Per work: the best CNN similarity and which comparison gave it (an index into
        WORK_VARIANTS, or len(WORK_VARIANTS) for a window of the work)."""
        self._flush()
        n = len(self.ids)
        assert self._globals is not None and self._regions is not None
        views = len(WORK_VARIANTS)
        # Every upload window against every whole-work view: pastes, borders, rotations.
        by_view = (query.vectors @ self._globals.T).max(axis=0).reshape(n, views)
        # The whole upload against every window of the work: crops.
        # Every work has the same windows (a fixed grid), so a reshape groups them.
        by_window = (self._regions @ query.vectors[0]).reshape(n, -1).max(axis=1)
        best_view = by_view.argmax(axis=1)
        best = by_view[np.arange(n), best_view]
        use_window = by_window > best
        return np.where(use_window, by_window, best), np.where(use_window, views, best_view)

    def match(self, query: QuerySignature, *, candidates: int = CANDIDATES, verify_all: bool = False) -> list[Candidate]:
        """The best-scoring works for an upload, best first, each verified with keypoints."""
        if len(self) == 0:
            return []
        cnn, how = self.cnn_scores(query)
        as_is, flipped_hash = hamming(self._hashes[:, 0], query.hash), hamming(self._hashes[:, 1], query.hash)
        distance = np.minimum(as_is, flipped_hash)
        order = np.argsort(-cnn, kind="stable")[:candidates]
        by_hash = np.argsort(distance, kind="stable")[:2]
        chosen = list(dict.fromkeys([*order.tolist(), *by_hash.tolist()]))
        out = []
        settled = False
        for i in chosen:
            signature = self._signatures[self.ids[i]]
            inliers, mirrored = -1, bool(flipped_hash[i] < as_is[i])
            # An almost identical hash needs no keypoints; a settled query needs no more.
            if verify_all or (distance[i] > 4 and not settled):
                keypoints = query.ensure_keypoints()
                plain = verify(keypoints, signature.keypoints)
                flipped = verify(keypoints, signature.mirrored_keypoints) if plain < INLIERS_FIRE else 0
                inliers, mirrored = max(plain, flipped), flipped > plain
                settled = inliers >= CONCLUSIVE_INLIERS
            view = WORK_VARIANTS[how[i]] if how[i] < len(WORK_VARIANTS) else "a part of the work"
            evidence = Evidence(float(cnn[i]), view, int(distance[i]), inliers, mirrored)
            out.append(Candidate(self.ids[i], fuse(evidence), evidence))
        return sorted(out, key=lambda c: -c.score)


def hash_only_scores(hashes: np.ndarray, query_image: PILImage.Image) -> np.ndarray:
    """The pHash baseline: similarity of the upload's hash to each work's (as is only)."""
    return hash_similarity(hamming(hashes, phash(query_image)))
