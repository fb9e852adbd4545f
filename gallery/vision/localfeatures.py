"""The catalog's local features: which catalog images show a newly registered work?

Uploads are checked against the protected works when they arrive. A work registered
later must find the copies already in the catalog, and a copy pasted small into another
photo, cropped or put in a collage looks nothing like the work as a whole. So every
catalog image keeps its SIFT keypoints (stored per image, `ImageKeypoints.to_bytes`), and
their RootSIFT descriptors sit in one compact nearest-neighbour index keyed by image id:

- below TRAIN_AT descriptors (a few hundred images) exact, in full;
- past it an inverted file of product-quantised codes (PQ_BYTES a descriptor plus its
  8-byte image id), trained on the descriptors held then and retrained from the stored
  keypoints when the count has grown RETRAIN_GROWTH times (up to RETRAIN_UNTIL).

A work's descriptors (as is and mirrored) each find their nearest catalog descriptors;
each image among them clearly nearer than the background (the K-th neighbour) gets one
vote from that descriptor. A catalog holding the same copy twice still gives both their
votes, which a first/second-neighbour ratio test would not. The most voted images are
verified on their stored keypoints (`copydetect.locate`), without decoding them.

No Django here: keypoints are plain arrays, serialised to bytes for storage.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np
from PIL import Image as PILImage

from .backbones import Backbone
from .copydetect import (
    HASH_COUNTS_BELOW,
    Candidate,
    CopyIndex,
    Evidence,
    Geometry,
    Keypoints,
    QuerySignature,
    WorkSignature,
    keypoints_as_shown,
    locate,
    sift_keypoints,
)
from .folders import replace_folder
from .phash import hamming, phash

VERSION = 1
# A catalog image's keypoints: the strongest FEATURES at LONG_SIDE pixels. On 10k images
# holding 200 crops, small pastes and collages, 256 keypoints at 400 px put 0.97 of the
# copies among the 20 most voted images (PQ16 codes, 8 lists probed), but a work pasted
# at a quarter of a poster's width then shows too few of them for the screen (0.63 of
# such pastes pass it; 0.73 with 400 at 512 px, no better at 640 px).
LONG_SIDE = 512
FEATURES = 400
# Exact below this many descriptors; past it an inverted file of PQ codes.
TRAIN_AT = 100_000
LISTS_PER_ROOT = 0.75
PQ_BYTES = 16
PROBES = 8
RETRAIN_GROWTH = 4
RETRAIN_UNTIL = 2_000_000
# Votes: the K nearest catalog descriptors of each work descriptor; an image among them
# nearer than RATIO times the K-th distance gets one vote.
NEIGHBOURS = 10
RATIO = 0.8
MIN_VOTES = 3
# A closer look at the part of an image that shows the work counts only when nearly all of
# its keypoint matches agree and span the work (a paste: support ~1.0; the same product
# on another shelf photo looked at closely: 0.2–0.45).
PART_MIN_SUPPORT = 0.6
# ...or when very many of them agree: a collage cell showing a small crop of the work gives
# 46–103 inliers whose span sits at the coverage floor (support 0.5); the same product on
# another shelf photo stays below that support.
PART_CONCLUSIVE_INLIERS = 40
PART_CONCLUSIVE_SUPPORT = 0.5
# In a closer look the keypoints count for more (`copydetect.fuse`: this many count as even
# odds, against INLIERS_HALF for a whole image): a work pasted on a sixth of a poster shows
# 13–25 consistent keypoints where a copy filling the frame shows 50 and more, and the
# look only counts when its geometry looks like a copy's (above). Measured on two draws of
# 200 old copies: 4 and 3 more small pastes found than at 25, and no other photo matched
# that was not matched before (half-point 20: 2 and 2 more; 10: 5 and 3).
PART_INLIERS_HALF = 15
# A scan looks closer only where the screen's geometry rests on at least this many
# keypoints: fewer is chance agreement (the images always checked in full bring 2–5),
# and in the old-copies benchmark 95 closer looks on 3–5 keypoints rescued no copy and
# took 8.7 s of 200 scans, up to a second of the slowest scan.
PART_MIN_SCREENED_INLIERS = 6
# An upload's best candidate scoring at least this (and below the threshold) is looked at
# again on the part of the upload that shows the work (`look_closer`): 2% of unrelated
# butterfly photos and 6% of grocery shelf photos, ~0.2 s each.
LOOK_CLOSER_FROM = 0.2
# ...and that look counts only when its keypoints agree nearly all and place most of the
# work in the part: a work pasted into a poster (support 1.0, 0.59–0.84 of the work found
# in the four pastes it rescued on the attack suite), not the same logo on another product
# (support 0.5, 0.09 of the work) or another shot of the same shelf (0.87, 0.25), which a
# scan's looser rule (`_copy_like`, for collage cells showing a small crop) would take.
UPLOAD_PART_MIN_SUPPORT = 0.9
UPLOAD_PART_MIN_WORK_FOUND = 0.4
# The image a work's keypoints vote for far more than any other is checked in full even
# when the screen stops it: a work pasted small or cut into a collage cell shows many
# matches on the stored keypoints, but in a part of the work too small for the screen's
# copy-like weighting (13 inliers at support 0.3). "Far more": at least DOMINANT_VOTES
# votes and DOMINANT_RATIO times the next image's.
DOMINANT_VOTES = 5
DOMINANT_RATIO = 1.5
# A work pasted small spans 128-205 px of a catalog image's keypoint frame (LONG_SIDE) at a
# quarter to two fifths of its width, and has lost the detail the work's own keypoints
# (found at 400 px) keep. So a scan also votes, and screens, with the keypoints of the work
# shrunk to SMALL_WORK_SIDE. On two draws of 200 old copies: the copy among the voted
# 0.985 / 0.960 → 0.990 / 0.985, two more copies found on each, scan p50 +0.1 s.
SMALL_WORK_SIDE = 160


@dataclass
class ImageKeys:
    """What copy detection keeps about one catalog image: its keypoints and its pHash."""

    keypoints: Keypoints
    hash: int

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        size = self.keypoints.size or (0, 0)
        np.savez_compressed(
            out,
            xy=self.keypoints.xy.astype(np.float16),
            desc=self.keypoints.desc,
            size=np.array(size, dtype=np.int32),
            hash=np.array([self.hash], dtype=np.uint64),
            version=np.array([VERSION]),
        )
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageKeys:
        with np.load(io.BytesIO(data)) as z:
            size = (int(z["size"][0]), int(z["size"][1]))
            keypoints = Keypoints(z["xy"].astype(np.float32), z["desc"], size if size[0] > 0 else None)
            return cls(keypoints, int(z["hash"][0]))


def describe_image(image: PILImage.Image) -> ImageKeys:
    """A catalog image's keypoints and hash (about 30 ms at 400 px)."""
    image = image.convert("RGB")
    return ImageKeys(sift_keypoints(image, long_side=LONG_SIDE, features=FEATURES), phash(image))


def dominant(images: np.ndarray, votes: np.ndarray) -> int | None:
    """The image of `vote`'s result that the work's keypoints vote for far more than any
    other (see DOMINANT_VOTES), or None."""
    if len(images) == 0 or votes[0] < DOMINANT_VOTES:
        return None
    if len(images) > 1 and votes[0] < DOMINANT_RATIO * votes[1]:
        return None
    return int(images[0])


def small_work_keypoints(work: PILImage.Image | None, signature: WorkSignature) -> tuple[Keypoints, Keypoints] | None:
    """The keypoints of the work (and of its mirror image) shrunk to SMALL_WORK_SIDE, in
    the signature's keypoint frame; None without the work's pixels."""
    if work is None:
        return None
    return keypoints_as_shown(work, signature.keypoints.frame, shown=SMALL_WORK_SIDE, long_side=SMALL_WORK_SIDE)


def screen(
    keys: ImageKeys, work: WorkSignature, *, min_inliers: float, small: tuple[Keypoints, Keypoints] | None = None
) -> tuple[bool, Geometry | None]:
    """Whether a catalog image's stored keypoints or hash come near enough to a work's to
    be worth describing it in full (`min_inliers` keypoints agreeing on one geometry,
    weighted by how copy-like it is, or a hash close enough to count as evidence), with
    that geometry (None when the hash settled it). When the work's keypoints fall short,
    those of the work shrunk (`small`, see SMALL_WORK_SIDE) are tried."""
    if int(hamming(work.hashes, keys.hash).min()) < HASH_COUNTS_BELOW:
        return True, None
    geometry, _ = locate(keys.keypoints, work)
    if geometry.inliers * geometry.support >= min_inliers:
        return True, geometry
    if small is not None:
        shrunk, _ = locate(keys.keypoints, replace(work, keypoints=small[0], mirrored_keypoints=small[1]))
        if shrunk.inliers * shrunk.support >= min_inliers:
            return True, shrunk
    return False, geometry


def check_in_full(
    works: CopyIndex,
    backbone: Backbone,
    picture: PILImage.Image,
    work_id: int,
    *,
    screened: Geometry | None,
    threshold: float,
    keypoints: Keypoints | None = None,
    work: PILImage.Image | None = None,
) -> tuple[Candidate, QuerySignature]:
    """Describe a screened catalog image as an upload is and score it against the work;
    `keypoints`, its stored ones, stand for the upload's (the screen has just matched
    them, and extracting them again is most of a check's time).
    When that falls short and the screen found the work in a small part of the image (a
    paste, a collage cell) on enough keypoints (PART_MIN_SCREENED_INLIERS), that part is
    looked at again alone (`CopyIndex.match_part`; given `work`, the work's pixels, also
    against the work shrunk to the size the image shows it) and the better of the two
    kept, if its geometry looks like a copy's."""
    query = works.describe(backbone, picture, keypoints=keypoints)
    best = next(c for c in works.match(query) if c.work_id == work_id)
    if screened is not None and best.score < threshold and screened.inliers >= PART_MIN_SCREENED_INLIERS:
        best = _better_on_the_part(works, backbone, picture, best, screened, work=lambda: work, counts=_copy_like)
    return best, query


def look_closer(
    works: CopyIndex,
    backbone: Backbone,
    picture: PILImage.Image,
    best: Candidate,
    *,
    threshold: float,
    work: Callable[[], PILImage.Image | None],
) -> Candidate:
    """An upload's best candidate, looked at again when it falls short of `threshold` but
    its keypoints place the work in a small part of the upload (a paste, a collage cell):
    that part alone, also against the work shrunk to the size the upload shows it (`work`
    reads the work's pixels, only then). The better of the two is kept when the part
    shows most of the work (UPLOAD_PART_MIN_SUPPORT, UPLOAD_PART_MIN_WORK_FOUND)."""
    geometry = best.evidence.geometry
    if best.score >= threshold or best.score < LOOK_CLOSER_FROM or geometry is None:
        return best
    return _better_on_the_part(works, backbone, picture, best, geometry, work=work, counts=_shows_the_work)


def _better_on_the_part(
    works: CopyIndex,
    backbone: Backbone,
    picture: PILImage.Image,
    best: Candidate,
    geometry: Geometry,
    *,
    work: Callable[[], PILImage.Image | None],
    counts: Callable[[Evidence], bool],
) -> Candidate:
    """`best`, or the work's candidate on the part of the picture `geometry` places the work
    in (none when that part is most of the picture), when the part scores higher and its
    evidence `counts`; the part is also matched against the work shrunk to the size the
    picture shows it, given the work's pixels (`work` reads them, only then)."""
    box = geometry.focus()
    if box is None:
        return best
    pixels = work()
    as_shown = None if pixels is None else (pixels, shown_size(geometry, picture.size))
    part = works.match_part(backbone, picture, box, best.work_id, inliers_half=PART_INLIERS_HALF, work_as_shown=as_shown)
    if part is not None and part.score > best.score and counts(part.evidence):
        return part
    return best


def _shows_the_work(evidence: Evidence) -> bool:
    """Whether a closer look at an upload's part found most of the work there, as a paste."""
    geometry = evidence.geometry
    if geometry is None:
        return False
    return evidence.support >= UPLOAD_PART_MIN_SUPPORT and geometry.work_found >= UPLOAD_PART_MIN_WORK_FOUND


def shown_size(screened: Geometry, size: tuple[int, int]) -> float:
    """How many pixels long an image of `size` shows the work, by the geometry the screen
    found on its stored keypoints (work pixels per keypoint pixel)."""
    return max(screened.work_size) / max(screened.scale, 1e-6) * max(size) / max(screened.query_size)


@dataclass(frozen=True)
class FullCheck:
    """One catalog image a scan checks in full: its pixels (read when checked; None when
    they cannot be read), what the screen found on its stored keypoints, and those."""

    image_id: int
    picture: Callable[[], PILImage.Image | None]
    screened: Geometry | None
    keypoints: Keypoints | None


def check_all_in_full(
    work_id: int,
    signature: WorkSignature,
    backbone: Backbone,
    checks: list[FullCheck],
    *,
    threshold: float,
    threads: int,
    work: PILImage.Image | None = None,
) -> list[tuple[int, Candidate, QuerySignature]]:
    """`check_in_full` for each image, `threads` at a time (reading, forward passes and
    keypoints release the interpreter lock), in the order given; images whose pixels
    cannot be read are left out. Each thread scores against its own one-work index.
    `work`, the work's pixels, is for closer looks (see `check_in_full`)."""
    local = threading.local()

    def one(check: FullCheck) -> tuple[int, Candidate, QuerySignature] | None:
        picture = check.picture()
        if picture is None:
            return None
        if getattr(local, "works", None) is None:
            local.works = CopyIndex()
            local.works.add(work_id, signature)
        candidate, query = check_in_full(
            local.works,
            backbone,
            picture,
            work_id,
            screened=check.screened,
            threshold=threshold,
            keypoints=check.keypoints,
            work=work,
        )
        return check.image_id, candidate, query

    if threads <= 1 or len(checks) <= 1:
        done = [one(c) for c in checks]
    else:
        with ThreadPoolExecutor(max_workers=min(threads, len(checks)), thread_name_prefix="copy-scan") as pool:
            done = list(pool.map(one, checks))
    return [d for d in done if d is not None]


def _copy_like(evidence: Evidence) -> bool:
    """Whether a closer look's keypoint geometry looks like a copy's (see PART_MIN_SUPPORT)."""
    if evidence.support >= PART_MIN_SUPPORT:
        return True
    return evidence.inliers >= PART_CONCLUSIVE_INLIERS and evidence.support >= PART_CONCLUSIVE_SUPPORT


def _float(keypoints: Iterable[Keypoints]) -> np.ndarray:
    parts = [k.root for k in keypoints if len(k)]
    if not parts:
        return np.zeros((0, 128), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


class CatalogKeypointIndex:
    """Every catalog image's descriptors, keyed by image id, appended to as images arrive.

    `everything` yields (image id, keypoints) of every image added so far, from storage;
    it is read when the inverted file is (re)trained. Removed images are not taken out: their
    votes are dropped by the caller, which knows which images still exist, and a retrain
    leaves them behind.
    """

    def __init__(self, everything: Callable[[], Iterable[tuple[int, Keypoints]]]) -> None:
        self._everything = everything
        self._index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatL2(128))
        self._trained_on = 0
        self.images = 0

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def trained(self) -> bool:
        return self._trained_on > 0

    def add(self, items: list[tuple[int, Keypoints]]) -> None:
        """Add images' keypoints (an image added twice votes twice: add each once)."""
        desc = _float(k for _, k in items)
        ids = np.concatenate([np.full(len(k), i, dtype=np.int64) for i, k in items if len(k)] or [np.zeros(0, np.int64)])
        self.images += len(items)
        total = len(self) + len(desc)
        if total >= TRAIN_AT and (
            not self.trained or (total >= RETRAIN_GROWTH * self._trained_on and self._trained_on < RETRAIN_UNTIL)
        ):
            self._train(items)
            return
        if len(desc):
            self._index.add_with_ids(desc, ids)

    def _train(self, new: list[tuple[int, Keypoints]]) -> None:
        """Rebuild from everything added before and the images being added: an inverted
        file trained on a sample."""
        items = [*self._everything(), *new]
        desc = _float(k for _, k in items)
        ids = np.concatenate([np.full(len(k), i, dtype=np.int64) for i, k in items if len(k)] or [np.zeros(0, np.int64)])
        lists = max(64, min(int(LISTS_PER_ROOT * np.sqrt(len(desc))), len(desc) // 40))
        index = faiss.IndexIVFPQ(faiss.IndexFlatL2(128), 128, lists, PQ_BYTES, 8)
        index.cp.niter = 10
        index.train(desc[np.random.default_rng(0).permutation(len(desc))[: 40 * lists]])
        for start in range(0, len(desc), 262_144):
            index.add_with_ids(desc[start : start + 262_144], ids[start : start + 262_144])
        index.nprobe = PROBES
        self._index, self._trained_on, self.images = index, len(desc), len(items)

    def vote(self, *keypoints: Keypoints) -> tuple[np.ndarray, np.ndarray]:
        """(image ids, votes), most voted first, of the images that at least MIN_VOTES of
        these keypoints' descriptors point to (one vote per descriptor and image)."""
        query = _float(keypoints)
        empty = np.zeros(0, dtype=np.int64)
        if len(self) < NEIGHBOURS or len(query) == 0:
            return empty, empty
        distances, ids = self._index.search(query, NEIGHBOURS)
        distances = np.sqrt(np.maximum(distances, 0.0))
        near = (ids >= 0) & (distances < RATIO * distances[:, -1:])
        rows = np.nonzero(near)[0]
        pairs = np.unique(np.stack([rows, ids[near]], axis=1), axis=0)  # one vote per descriptor and image
        images, votes = np.unique(pairs[:, 1], return_counts=True)
        keep = votes >= MIN_VOTES
        images, votes = images[keep], votes[keep]
        order = np.lexsort((images, -votes))
        return images[order], votes[order]

    @property
    def nbytes(self) -> int:
        """Bytes held: PQ codes and ids of every list with the coarse centroids (or the
        exact vectors with their ids while small)."""
        if isinstance(self._index, faiss.IndexIVF):
            return int(self._index.ntotal) * (int(self._index.code_size) + 8) + int(self._index.nlist) * 128 * 4
        return len(self) * (128 * 4 + 8)

    def save(self, directory: Path, *, last_row: int) -> None:
        """Write the index to `directory` (replaced whole, atomically) with the last
        stored row it holds."""
        meta = {"version": VERSION, "trained_on": self._trained_on, "images": self.images, "last_row": last_row}

        def write(folder: Path) -> None:
            faiss.write_index(self._index, str(folder / "index.faiss"))
            (folder / "meta.json").write_text(json.dumps(meta))

        replace_folder(directory, write)

    @classmethod
    def load(cls, directory: Path, everything: Callable[[], Iterable[tuple[int, Keypoints]]]) -> tuple[CatalogKeypointIndex, int]:
        """A saved index and the last stored row it holds."""
        meta = json.loads((Path(directory) / "meta.json").read_text())
        if meta.get("version") != VERSION:
            raise ValueError("the saved keypoint index was made with other keypoints")
        index = cls(everything)
        index._index = faiss.read_index(str(Path(directory) / "index.faiss"))
        if isinstance(index._index, faiss.IndexIVF):
            index._index.nprobe = PROBES
        index._trained_on, index.images = int(meta["trained_on"]), int(meta["images"])
        return index, int(meta["last_row"])
