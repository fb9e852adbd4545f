"""The catalog's keypoint index: which catalog images show a newly registered work."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from django.conf import settings
from PIL import Image as PILImage

from benchmarks import attacks
from gallery.vision import copydetect, localfeatures


def _photo(path) -> PILImage.Image:  # type: ignore[no-untyped-def]
    return PILImage.open(path).convert("RGB")


@pytest.fixture(scope="module")
def scene(butterflies):  # type: ignore[no-untyped-def]
    """A work, a catalog of other butterflies (several of its own species) holding a small
    paste, a collage and a crop of it, and the work's own keypoints (as registered)."""
    rng = np.random.default_rng(5)
    work = _photo(butterflies["002"][0])
    others = [_photo(p) for species in ("001", "002", "003", "004", "005", "006") for p in butterflies[species][1:6]]
    copies = {family: attacks.old_copy(family, work, others[-3:], rng) for family in attacks.OLD_COPY_FAMILIES}
    catalog = {100 + i: localfeatures.describe_image(p) for i, p in enumerate(others)}
    for i, family in enumerate(attacks.OLD_COPY_FAMILIES):
        catalog[10 + i] = localfeatures.describe_image(copies[family])
    keypoints = copydetect.sift_keypoints(work)
    mirrored = copydetect.sift_keypoints(work.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT))
    return {"catalog": catalog, "keypoints": (keypoints, mirrored), "copies": {10, 11, 12}}


def _index(catalog: dict[int, localfeatures.ImageKeys]) -> localfeatures.CatalogKeypointIndex:
    """The catalog added in two batches; `everything` gives what was added before."""
    items = [(i, k.keypoints) for i, k in catalog.items()]
    index = localfeatures.CatalogKeypointIndex(lambda: items[:10])
    index.add(items[:10])
    index.add(items[10:])
    return index


def test_stored_keypoints_come_back_as_they_were(scene) -> None:  # type: ignore[no-untyped-def]
    keys = scene["catalog"][10]
    again = localfeatures.ImageKeys.from_bytes(keys.to_bytes())
    assert again.hash == keys.hash and again.keypoints.size == keys.keypoints.size
    assert np.array_equal(again.keypoints.desc, keys.keypoints.desc)
    assert np.abs(again.keypoints.xy - keys.keypoints.xy).max() < 0.25  # half-precision pixels
    assert 100 < len(keys.keypoints) <= localfeatures.FEATURES
    assert len(keys.to_bytes()) < 60_000


def test_the_work_votes_for_its_pasted_collaged_and_cropped_copies(scene) -> None:  # type: ignore[no-untyped-def]
    ids, votes = _index(scene["catalog"]).vote(*scene["keypoints"])
    # The scan verifies the most voted (other photos of the same species share some
    # wing pattern: the screen on geometry tells them apart, below).
    assert scene["copies"] <= set(ids[: settings.COPYRIGHT["SCAN_VOTED"] // 2].tolist())
    assert ids[0] == 10  # the crop keeps most of the work
    assert list(votes) == sorted(votes, reverse=True) and votes.min() >= localfeatures.MIN_VOTES
    unrelated = [i for i in ids.tolist() if i < 105 or i >= 110]
    assert all(dict(zip(ids.tolist(), votes.tolist(), strict=True))[i] < 20 for i in unrelated if i not in scene["copies"])


def test_two_uploads_of_the_same_copy_both_get_the_votes(scene) -> None:  # type: ignore[no-untyped-def]
    catalog = dict(scene["catalog"])
    catalog[50] = catalog[10]  # the small paste, uploaded twice
    ids, votes = _index(catalog).vote(*scene["keypoints"])
    ranked = dict(zip(ids.tolist(), votes.tolist(), strict=True))
    assert ranked[50] == ranked[10] >= 10


def test_the_screen_passes_the_copies_and_stops_the_same_species(scene, butterflies) -> None:  # type: ignore[no-untyped-def]
    signature = copydetect.WorkSignature(
        globals=np.zeros((5, 4), np.float32),
        regions=np.zeros((13, 4), np.float32),
        hashes=np.array([0, 0], dtype=np.uint64),
        keypoints=scene["keypoints"][0],
        mirrored_keypoints=scene["keypoints"][1],
    )
    catalog = scene["catalog"]
    for copy in scene["copies"]:
        assert localfeatures.screen(catalog[copy], signature, min_inliers=8)[0], copy
    same_species = [i for i in catalog if i >= 105 and i < 110]  # other photos of the work's species
    assert not any(localfeatures.screen(catalog[i], signature, min_inliers=8)[0] for i in same_species)


def test_a_large_catalog_moves_to_compressed_codes_and_a_saved_index_votes_the_same(scene, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(localfeatures, "TRAIN_AT", 6000)  # passed by the second batch
    catalog = scene["catalog"]
    index = _index(catalog)
    # Trained when the second batch passed the size: every descriptor once.
    assert index.trained and len(index) == sum(len(k.keypoints) for k in catalog.values())
    assert index.nbytes < len(index) * 40  # PQ codes and ids, not 512-byte vectors
    ids, _ = index.vote(*scene["keypoints"])
    assert scene["copies"] <= set(ids[: settings.COPYRIGHT["SCAN_VOTED"] // 2].tolist())

    index.save(tmp_path / "keypoints", last_row=42)
    loaded, last_row = localfeatures.CatalogKeypointIndex.load(tmp_path / "keypoints", lambda: [])
    assert last_row == 42 and loaded.trained
    again, _ = loaded.vote(*scene["keypoints"])
    assert np.array_equal(again, ids)


def test_the_votes_single_out_an_image_only_when_it_stands_far_above_the_rest() -> None:
    ids = np.array([7, 3, 9])
    assert localfeatures.dominant(ids, np.array([13, 6, 5])) == 7
    assert localfeatures.dominant(ids[:1], np.array([9])) == 7  # the only image voted for
    assert localfeatures.dominant(ids, np.array([11, 10, 10])) is None  # two images alike
    assert localfeatures.dominant(ids[:1], np.array([4])) is None  # too few votes to mean anything
    assert localfeatures.dominant(ids[:0], np.array([], dtype=np.int64)) is None


def test_a_closer_look_counts_when_its_keypoints_span_the_work_or_very_many_agree() -> None:
    rng = np.random.default_rng(3)

    def evidence(inliers: int, *, spread: float, matches: int) -> copydetect.Evidence:
        xy = (rng.random((inliers, 2)) * spread * 400).astype(np.float32)
        geometry = copydetect.Geometry(xy, xy, (400.0, 400.0), (400.0, 400.0), np.eye(2, 3), matches, 300)
        return copydetect.Evidence(0.5, "original", 30, inliers, False, geometry)

    assert localfeatures._copy_like(evidence(20, spread=1.0, matches=20))  # a paste: spans the work
    clustered = evidence(46, spread=0.05, matches=46)  # a collage cell showing a small crop of the work
    assert clustered.support == 0.5 and localfeatures._copy_like(clustered)
    assert not localfeatures._copy_like(evidence(30, spread=0.05, matches=30))  # fewer: not conclusive
    assert not localfeatures._copy_like(evidence(60, spread=0.05, matches=100))  # most matches disagree


def test_in_a_closer_look_fewer_keypoints_spanning_the_work_reach_the_threshold() -> None:
    """A work pasted on a sixth of a poster shows ~15 consistent keypoints spread over it:
    not enough for a whole image, enough for a closer look at the part that shows it."""
    rng = np.random.default_rng(8)
    xy = (rng.random((16, 2)) * 400).astype(np.float32)
    geometry = copydetect.Geometry(xy, xy, (400.0, 400.0), (400.0, 400.0), np.eye(2, 3), 17, 300)
    paste = copydetect.Evidence(0.6, "original", 28, 16, False, geometry)
    threshold = float(settings.COPYRIGHT["THRESHOLD"])
    assert localfeatures._copy_like(paste)
    assert copydetect.fuse(paste) < threshold <= copydetect.fuse(paste, inliers_half=localfeatures.PART_INLIERS_HALF)


def test_a_full_check_on_the_stored_keypoints_finds_the_copies_without_extracting_keypoints_again(
    scene, butterflies, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from gallery.vision.backbones import load_backbone

    backbone = load_backbone("efficientnet_lite0")
    threshold = float(settings.COPYRIGHT["THRESHOLD"])
    rng = np.random.default_rng(5)
    work = _photo(butterflies["002"][0])
    others = [_photo(p) for species in ("001", "002", "003", "004", "005", "006") for p in butterflies[species][1:6]]
    copies = {family: attacks.old_copy(family, work, others[-3:], rng) for family in attacks.OLD_COPY_FAMILIES}
    single = copydetect.CopyIndex()
    single.add(1, copydetect.describe_work(backbone, work))
    signature = single.signature(1)

    def check(picture: PILImage.Image, keys: localfeatures.ImageKeys) -> copydetect.Candidate:
        _, screened = localfeatures.screen(keys, signature, min_inliers=settings.COPYRIGHT["SCAN_SCREEN_INLIERS"])
        candidate, _ = localfeatures.check_in_full(
            single, backbone, picture, 1, screened=screened, threshold=threshold, keypoints=keys.keypoints, work=work
        )
        return candidate

    extracted: list[tuple[int, int]] = []
    sift = copydetect.sift_keypoints

    def counted(image: PILImage.Image, **kw: int) -> copydetect.Keypoints:
        extracted.append(image.size)
        return sift(image, **kw)

    monkeypatch.setattr(copydetect, "sift_keypoints", counted)
    for i, family in enumerate(attacks.OLD_COPY_FAMILIES):
        picture = copies[family]
        found = check(picture, scene["catalog"][10 + i])
        assert found.score >= threshold, family
        # Only a closer look at a part of the image extracts keypoints again, never the whole image.
        assert picture.size not in extracted, family
    # Other photos of the work's own species are not copies.
    for i, picture in enumerate(others[5:10]):
        assert check(picture, scene["catalog"][105 + i]).score < threshold


def test_full_checks_two_at_a_time_score_as_one_at_a_time_and_skip_unreadable_images(scene, butterflies) -> None:  # type: ignore[no-untyped-def]
    from gallery.vision.backbones import load_backbone

    backbone = load_backbone("efficientnet_lite0")
    rng = np.random.default_rng(5)
    work = _photo(butterflies["002"][0])
    others = [_photo(p) for species in ("001", "002", "003", "004", "005", "006") for p in butterflies[species][1:6]]
    copies = [attacks.old_copy(family, work, others[-3:], rng) for family in attacks.OLD_COPY_FAMILIES]
    signature = copydetect.describe_work(backbone, work)
    pictures = {10 + i: copy for i, copy in enumerate(copies)} | {105 + i: p for i, p in enumerate(others[5:8])}
    checks = [
        localfeatures.FullCheck(
            image_id,
            functools.partial(pictures.__getitem__, image_id),
            localfeatures.screen(scene["catalog"][image_id], signature, min_inliers=6)[1],
            scene["catalog"][image_id].keypoints,
        )
        for image_id in pictures
    ]
    checks.insert(2, localfeatures.FullCheck(99, lambda: None, None, None))  # its file is gone
    threshold = float(settings.COPYRIGHT["THRESHOLD"])

    def scores(threads: int) -> list[tuple[int, float]]:
        done = localfeatures.check_all_in_full(7, signature, backbone, checks, threshold=threshold, threads=threads, work=work)
        assert all(candidate.work_id == 7 for _, candidate, _ in done)
        return [(image_id, candidate.score) for image_id, candidate, _ in done]

    alone, together = scores(1), scores(2)
    assert [i for i, _ in together] == [10, 11, 12, 105, 106, 107]  # in the order given, the unreadable one left out
    assert np.allclose([s for _, s in alone], [s for _, s in together], atol=1e-4)
    assert {i for i, s in together if s >= threshold} == {10, 11, 12}


def test_a_closer_look_matches_a_work_pasted_small_against_the_work_shrunk_alike(butterflies, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A work pasted at a fifth of a photo's width has lost its fine detail: its keypoints
    match the sharp work's poorly, and those of the work shrunk to the same size well."""
    from gallery.vision.backbones import load_backbone

    backbone = load_backbone("efficientnet_lite0")
    threshold = float(settings.COPYRIGHT["THRESHOLD"])
    work, photo = _photo(butterflies["003"][0]), _photo(butterflies["007"][3])
    width = round(0.2 * photo.width)
    height = round(work.height * width / work.width)
    at = (photo.width // 2 - width // 2, photo.height // 3)
    poster = photo.copy()
    poster.paste(work.resize((width, height), PILImage.Resampling.BILINEAR), at)
    single = copydetect.CopyIndex()
    single.add(1, copydetect.describe_work(backbone, work))
    keys = localfeatures.describe_image(poster)
    _, screened = localfeatures.screen(keys, single.signature(1), min_inliers=settings.COPYRIGHT["SCAN_SCREEN_INLIERS"])
    assert screened is not None
    assert abs(localfeatures.shown_size(screened, poster.size) - width) < 0.15 * width

    def check(work_pixels: PILImage.Image | None, where: copydetect.Geometry | None = screened) -> copydetect.Candidate:
        candidate, _ = localfeatures.check_in_full(
            single,
            backbone,
            poster,
            1,
            screened=where,
            threshold=threshold,
            keypoints=keys.keypoints,
            work=work_pixels,
        )
        return candidate

    sharp, alike = check(None), check(work)
    assert alike.score >= threshold > sharp.score
    assert alike.evidence.inliers >= 2 * sharp.evidence.inliers
    # The same place resting on chance agreement (fewer keypoints than a screen passes)
    # is not looked at closer: the whole poster's score stands, and no part is described.
    few = localfeatures.PART_MIN_SCREENED_INLIERS - 1
    chance = dataclasses.replace(screened, query_xy=screened.query_xy[:few], work_xy=screened.work_xy[:few])
    looks: list[object] = []
    monkeypatch.setattr(single, "match_part", lambda *a, **k: looks.append(a))
    assert check(work, chance).score == check(work, None).score < threshold and looks == []
    check(work)  # the screen's own geometry: looked at closer once
    assert len(looks) == 1
    # The review page outlines the paste where it is on the whole poster.
    assert alike.evidence.geometry is not None
    geometry = alike.evidence.geometry
    region = geometry.region_on_upload() / np.array(geometry.query_size)  # fractions of the poster
    pasted = np.array([at[0], at[1], at[0] + width, at[1] + height]) / np.array(poster.size * 2)
    assert np.allclose([*region.min(axis=0), *region.max(axis=0)], pasted, atol=0.03)


def test_the_work_as_shown_is_described_only_when_shown_smaller_than_its_keypoints(butterflies) -> None:  # type: ignore[no-untyped-def]
    work = _photo(butterflies["003"][0])
    frame = copydetect.sift_keypoints(work).frame
    assert copydetect.keypoints_as_shown(work, frame, shown=0.95 * max(frame), long_side=400) is None
    found = copydetect.keypoints_as_shown(work, frame, shown=100, long_side=300)
    assert found is not None
    plain, mirrored = found
    assert len(plain) > 50 and len(mirrored) > 50
    # Positions in the work's keypoint frame, as a signature keeps them.
    assert plain.size == (round(frame[0]), round(frame[1]))
    assert plain.xy.max(axis=0)[0] > 0.8 * frame[0] and (plain.xy <= np.array(frame) + 1).all()


def test_the_work_shrunk_as_a_small_paste_shows_it_lets_the_screen_pass_that_paste(butterflies) -> None:  # type: ignore[no-untyped-def]
    """A work pasted at a fifth of a poster's width: its own keypoints agree with too few
    of the poster's stored ones for the screen; those of the work shrunk pass it, on the
    paste, and raise the poster's votes."""
    from gallery.vision.backbones import load_backbone

    work, photo = _photo(butterflies["002"][0]), _photo(butterflies["007"][3])
    width = round(0.2 * photo.width)
    poster = photo.copy()
    at = (photo.width // 2 - width // 2, photo.height // 3)
    poster.paste(work.resize((width, round(work.height * width / work.width)), PILImage.Resampling.BILINEAR), at)
    signature = copydetect.describe_work(load_backbone("efficientnet_lite0"), work)
    keys = localfeatures.describe_image(poster)
    small = localfeatures.small_work_keypoints(work, signature)
    assert small is not None and localfeatures.small_work_keypoints(None, signature) is None
    inliers = settings.COPYRIGHT["SCAN_SCREEN_INLIERS"]

    assert not localfeatures.screen(keys, signature, min_inliers=inliers)[0]
    worth, geometry = localfeatures.screen(keys, signature, min_inliers=inliers, small=small)
    assert worth and geometry is not None
    # The geometry places the work on the paste, as a closer look then frames it.
    box = geometry.focus()
    assert box is not None
    x0, y0, x1, y1 = box
    centre = ((at[0] + width / 2) / poster.width, (at[1] + width * work.height / work.width / 2) / poster.height)
    assert x0 < centre[0] < x1 and y0 < centre[1] < y1 and (x1 - x0) < 0.35

    others = {100 + i: localfeatures.describe_image(_photo(p)) for i, p in enumerate(butterflies["002"][1:12])}
    index = _index({**others, 1: keys})
    plain = dict(zip(*index.vote(signature.keypoints, signature.mirrored_keypoints), strict=True))
    shrunk = dict(zip(*index.vote(signature.keypoints, signature.mirrored_keypoints, *small), strict=True))
    assert shrunk.get(1, 0) > plain.get(1, 0)
