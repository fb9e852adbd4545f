"""Copy detection in the vision layer: hashes, signatures, the index, attacks and the metrics."""

from __future__ import annotations

import numpy as np
import pytest
from django.conf import settings
from PIL import Image as PILImage
from PIL import ImageOps

from benchmarks import attacks, copyeval
from gallery.vision import copydetect
from gallery.vision.phash import hamming, phash, phash_variants

# The operating threshold, chosen from the curve of `manage.py evaluate_copies`.
THRESHOLD = settings.COPYRIGHT["THRESHOLD"]


def _photo(path) -> PILImage.Image:  # type: ignore[no-untyped-def]
    return PILImage.open(path).convert("RGB")


def test_phash_survives_resize_and_jpeg_but_not_another_photo(butterflies) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    a, b = _photo(butterflies["003"][0]), _photo(butterflies["003"][1])
    h = np.array([phash(a)], dtype=np.uint64)
    assert hamming(h, phash(attacks.resize(a, rng)))[0] <= 6
    assert hamming(h, phash(attacks.jpeg(a, rng)))[0] <= 8
    assert hamming(h, phash(b))[0] > 16
    assert hamming(phash_variants(a)[1:], phash(ImageOps.mirror(a)))[0] == 0


def test_every_attack_family_is_reproducible_and_changes_the_photo(butterflies) -> None:  # type: ignore[no-untyped-def]
    work, background = _photo(butterflies["005"][0]), _photo(butterflies["006"][0])
    for family in attacks.ALL_FAMILIES:
        one = attacks.apply(family, work, np.random.default_rng(3), background)
        two = attacks.apply(family, work, np.random.default_rng(3), background)
        assert np.array_equal(np.asarray(one), np.asarray(two)), family
        assert one.size != work.size or not np.array_equal(np.asarray(one), np.asarray(work)), family
    with pytest.raises(ValueError, match="background"):
        attacks.apply("paste", work, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown attack"):
        attacks.apply("melt", work, np.random.default_rng(0))


def test_region_boxes_cover_the_map_and_stay_inside_it() -> None:
    boxes = copydetect.region_boxes(8, 11)
    assert boxes[0] == (0, 8, 0, 11)
    assert len(boxes) == 1 + sum(steps * steps for _, steps in copydetect.REGION_GRID)
    assert all(0 <= y0 < y1 <= 8 and 0 <= x0 < x1 <= 11 for y0, y1, x0, x1 in boxes)


@pytest.mark.slow
def test_index_finds_edited_copies_and_verification_separates_same_species(butterflies) -> None:  # type: ignore[no-untyped-def]
    from gallery.vision.backbones import load_backbone

    backbone = load_backbone("efficientnet_lite0")
    works = [_photo(p) for p in butterflies["007"][:4]]
    index = copydetect.CopyIndex()
    for i, im in enumerate(works):
        signature = copydetect.describe_work(backbone, im)
        index.add(100 + i, copydetect.WorkSignature.from_bytes(signature.to_bytes()))  # as stored
    rng = np.random.default_rng(5)
    background = _photo(butterflies["010"][0])
    for family in ("crop", "mirror", "rotate90", "paste"):
        query = attacks.apply(family, works[2], rng, background)
        best = index.match(copydetect.describe_query(backbone, query))[0]
        assert best.work_id == 102, family
        assert best.score >= THRESHOLD, (family, best)
    stranger = copydetect.describe_query(backbone, _photo(butterflies["007"][6]))  # same species, another photo
    assert index.match(stranger)[0].score < THRESHOLD


def test_micro_ap_and_precision_at_threshold_follow_their_definitions() -> None:
    preds = [
        copyeval.Prediction("crop", True, 0.9),
        copyeval.Prediction("", False, 0.8),  # a distractor above a copy
        copyeval.Prediction("crop", True, 0.7),
        copyeval.Prediction("crop", False, 0.95),  # wrong top-1: never found
    ]
    scores = copyeval.score_family(preds, "crop", threshold=0.75)
    # Ranked: wrong(0.95), right(0.9), distractor(0.8), right(0.7) → (1/2 + 2/4) / 3 copies.
    assert scores.micro_ap == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert scores.recall_at_1 == pytest.approx(2 / 3)
    assert scores.precision_at_threshold == pytest.approx(1 / 3)
    assert copyeval.choose_threshold(preds, min_precision=0.5) == pytest.approx(0.7)


@pytest.mark.slow
def test_a_work_pasted_small_into_another_photo_is_found_and_its_species_is_not(butterflies) -> None:  # type: ignore[no-untyped-def]
    from gallery.vision.backbones import load_backbone

    backbone = load_backbone("efficientnet_lite0")
    species = butterflies["002"]
    works = [_photo(p) for p in species[:3]]
    index = copydetect.CopyIndex()
    for i, im in enumerate(works):
        index.add(i, copydetect.describe_work(backbone, im))
    backgrounds = [_photo(butterflies["009"][0]), _photo(butterflies["004"][1])]
    for i, work in enumerate(works):
        pasted = attacks.paste_into(work, backgrounds[i % 2], np.random.default_rng(20 + i))
        best = index.match(copydetect.describe_query(backbone, pasted))[0]
        assert (best.work_id, best.score >= THRESHOLD) == (i, True), (i, best)
    # Other photos of the same species, pasted the same way, are not copies of any work.
    for j, other in enumerate(species[3:6]):
        pasted = attacks.paste_into(_photo(other), backgrounds[j % 2], np.random.default_rng(40 + j))
        assert index.match(copydetect.describe_query(backbone, pasted))[0].score < THRESHOLD, other


def test_the_shortlist_of_a_large_register_keeps_the_works_an_exact_scan_ranks_first(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(copydetect, "SHORTLIST_ABOVE", 50)
    monkeypatch.setattr(copydetect, "SHORTLIST", 10)
    monkeypatch.setattr(copydetect, "PROJECTED_DIMS", 16)
    rng = np.random.default_rng(0)
    # CNN activations are non-negative and lie close to a low-dimensional subspace.
    basis = np.abs(rng.normal(size=(12, 64))).astype(np.float32)
    per_work = copydetect.CopyIndex().per_work
    empty = copydetect.Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))

    def vectors(k: int) -> np.ndarray:
        x = np.abs(rng.normal(size=(k, 12))).astype(np.float32) @ basis
        return copydetect.l2_normalise(x + 0.05 * np.abs(rng.normal(size=x.shape)).astype(np.float32))

    index = copydetect.CopyIndex()
    for i in range(200):
        v = vectors(per_work)
        hashes = np.array([i, i], dtype=np.uint64)
        index.add(i, copydetect.WorkSignature(v[:5], v[6:], hashes, empty, empty, small=v[5]))
    for target in (7, 120, 199):
        signature = index.signature(target)
        crop = copydetect.l2_normalise(signature.regions[2] + 0.05 * vectors(1)[0])  # a part of the work
        query = copydetect.QuerySignature(vectors=crop[None], hash=0)
        shortlisted, _ = index.cnn_scores(query)
        assert int(np.argmax(shortlisted)) == target
        assert (shortlisted >= 0).sum() == 10  # only the shortlist was scored exactly


def _random_keypoints(rng: np.random.Generator, n: int) -> copydetect.Keypoints:
    desc = rng.integers(0, 60, size=(n, 128)).astype(np.uint8)
    return copydetect.Keypoints(rng.uniform(0, 400, size=(n, 2)).astype(np.float32), desc)


def _noisy(rng: np.random.Generator, keypoints: copydetect.Keypoints) -> copydetect.Keypoints:
    desc = np.clip(keypoints.desc.astype(np.int16) + rng.integers(-2, 3, size=keypoints.desc.shape), 0, 255)
    return copydetect.Keypoints(keypoints.xy * 0.5 + 10, desc.astype(np.uint8))


@pytest.mark.parametrize("exact_below", [10**9, 1000])
def test_keypoints_vote_for_the_work_they_come_from_before_and_after_the_inverted_file(monkeypatch, exact_below) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(copydetect, "VOTE_EXACT_BELOW", exact_below)
    rng = np.random.default_rng(1)
    works = [_random_keypoints(rng, 80) for _ in range(40)]
    votes = copydetect.KeypointVotes(lambda: works[: len(votes_for)])
    votes_for: list[copydetect.Keypoints] = []
    for start in range(0, 30, 10):  # registered in three steps; the last ones are appended to a trained index
        votes_for += works[start : start + 10]
        votes.extend(works[start : start + 10], start)
    for target in (3, 17, 29):
        query = _noisy(rng, works[target])
        mixed = copydetect.Keypoints(
            np.concatenate([query.xy[:40], _random_keypoints(rng, 200).xy]),
            np.concatenate([query.desc[:40], _random_keypoints(rng, 200).desc]),
        )
        counted = votes.vote(mixed, 30)
        assert int(np.argmax(counted)) == target
        assert counted[target] >= 30  # most of its 40 keypoints found it
        assert np.sort(counted)[-2] <= 5
    assert votes.vote(_random_keypoints(rng, 200), 30).max() <= 5  # an unrelated photo


def test_verification_counts_each_work_keypoint_once(butterflies) -> None:  # type: ignore[no-untyped-def]
    work = copydetect.sift_keypoints(_photo(butterflies["001"][0]))
    assert len(work) > 50
    # A copy: the same keypoints, moved; consistent matches are found.
    moved = copydetect.Keypoints(work.xy * 0.7 + 20, work.desc)
    assert copydetect.verify(moved, work) >= 0.9 * len(work)
    # Many query keypoints with one descriptor can agree with one work keypoint only once.
    one = np.repeat(work.desc[:1], 60, axis=0)
    piled = copydetect.Keypoints(np.repeat(work.xy[:1], 60, axis=0) + np.arange(60, dtype=np.float32)[:, None] * 0.01, one)
    assert copydetect.verify(piled, work) <= 1


def test_geometry_of_a_crop_locates_it_on_the_work_in_fractions(butterflies) -> None:  # type: ignore[no-untyped-def]
    work = copydetect.sift_keypoints(_photo(butterflies["005"][0]))  # keypoints all over the photo
    w, h = work.frame
    # The upload: the left half of the work, shown twice as large.
    left = work.xy[:, 0] < w / 2
    crop = copydetect.Keypoints(work.xy[left] * 2, work.desc[left], (round(w), round(2 * h)))
    geometry = copydetect.verify_geometry(crop, work)
    assert geometry.inliers >= 0.9 * int(left.sum())
    assert geometry.scale == pytest.approx(0.5, abs=0.01)
    assert geometry.inlier_ratio > 0.9
    # Half of the work is in the upload, and it fills the whole upload.
    assert geometry.work_found == pytest.approx(0.5, abs=0.02)
    assert geometry.upload_covered == pytest.approx(1.0, abs=0.02)
    x0, y0 = geometry.region_on_work().min(axis=0) / np.array(work.frame)
    x1, y1 = geometry.region_on_work().max(axis=0) / np.array(work.frame)
    assert (x0, y0, x1, y1) == pytest.approx((0.0, 0.0, 0.5, 1.0), abs=0.02)
    # The same point is at the same place in fractions of each image: x halves, y stays.
    upload_xy, work_xy = geometry.fractions()
    assert np.allclose(upload_xy[:, 0] / 2, work_xy[:, 0], atol=0.01)
    assert np.allclose(upload_xy[:, 1], work_xy[:, 1], atol=0.01)
    # Matched on the work's mirror image, the evidence is drawn on the work itself.
    flipped = geometry.mirrored()
    assert np.allclose(flipped.work_xy[:, 0], w - geometry.work_xy[:, 0])
    assert flipped.region_on_work()[:, 0].min() / w == pytest.approx(0.5, abs=0.02)


def _geometry(rng: np.random.Generator, inliers: int, matches: int, spread: float) -> copydetect.Geometry:
    """Inliers on a 400×300 work, around its centre, within `spread` of its size."""
    xy = (np.array([200.0, 150.0]) + rng.uniform(-0.5, 0.5, size=(inliers, 2)) * spread * np.array([400.0, 300.0])).astype(
        np.float32
    )
    return copydetect.Geometry(xy, xy, (400, 300), (400, 300), np.array([[1.0, 0, 0], [0, 1.0, 0]]), matches, 300)


def test_few_clustered_inliers_among_many_matches_score_below_the_threshold_and_a_copy_above() -> None:
    rng = np.random.default_rng(0)
    # The false positive of a walk-through: another photo of the species, 27 inliers, CNN 0.80.
    # Without geometry (as before) it reached the threshold.
    legacy = copydetect.Evidence(0.80, "original", 30, 27, False)
    assert copydetect.fuse(legacy) >= THRESHOLD
    coincidence = copydetect.Evidence(0.80, "original", 30, 27, False, _geometry(rng, 27, 60, 0.25))
    assert coincidence.geometry is not None and coincidence.geometry.work_share < 0.1
    assert copydetect.fuse(coincidence) < THRESHOLD
    assert "weak" in coincidence.fired()[0]
    # As many inliers that are nearly all the matches and spread over the work: a copy.
    copy = copydetect.Evidence(0.80, "original", 30, 27, False, _geometry(rng, 27, 28, 0.8))
    assert copydetect.fuse(copy) >= THRESHOLD
    assert "of the work found" in copy.fired()[0]
    # All agreeing but clustered counts less than spread, never nothing.
    clustered = copydetect.Evidence(0.80, "original", 30, 27, False, _geometry(rng, 27, 28, 0.2))
    assert 0 < copydetect.fuse(clustered) < copydetect.fuse(copy)


def test_stored_signatures_keep_the_keypoint_image_size(butterflies) -> None:  # type: ignore[no-untyped-def]
    photo = _photo(butterflies["004"][0])
    keypoints = copydetect.sift_keypoints(photo)
    assert max(keypoints.size or (0, 0)) == copydetect.SIFT_LONG_SIDE
    empty = np.zeros((1, 8), dtype=np.float32)
    signature = copydetect.WorkSignature(empty, empty, np.zeros(2, np.uint64), keypoints, keypoints)
    assert copydetect.WorkSignature.from_bytes(signature.to_bytes()).keypoints.size == keypoints.size
    # A signature stored before sizes were kept: the size is estimated from the keypoints.
    old = copydetect.Keypoints(keypoints.xy, keypoints.desc)
    assert old.frame == pytest.approx(keypoints.frame, rel=0.08)


@pytest.mark.slow
def test_another_photo_of_the_species_falls_below_the_threshold_and_a_cropped_paste_stays_above(butterflies) -> None:  # type: ignore[no-untyped-def]
    from gallery.vision.backbones import load_backbone

    backbone = load_backbone("efficientnet_lite0")
    work, other = _photo(butterflies["007"][11]), _photo(butterflies["007"][14])  # two photos of one species
    index = copydetect.CopyIndex()
    index.add(1, copydetect.describe_work(backbone, work))
    stranger = index.match(copydetect.describe_query(backbone, other), verify_all=True)[0]
    # Its keypoints agree on one geometry as a weak copy's would, but few matches do and
    # they cover little: counted by inliers alone it would be queued.
    assert stranger.evidence.inliers >= 25
    e = stranger.evidence
    assert copydetect.fuse(copydetect.Evidence(e.cnn, e.cnn_view, e.hash_distance, e.inliers, False)) >= THRESHOLD
    assert stranger.score < THRESHOLD
    # The work cropped and pasted into another photo: found, and where.
    rng = np.random.default_rng(7)
    edited = attacks.paste_into(attacks.crop(work, rng), _photo(butterflies["008"][0]), rng)
    copy = index.match(copydetect.describe_query(backbone, edited))[0]
    assert copy.score >= THRESHOLD
    assert copy.evidence.geometry is not None
    assert 0.3 < copy.evidence.geometry.work_found < 0.7  # half the work was kept
    assert 0.1 < copy.evidence.geometry.upload_covered < 0.6  # pasted into part of the upload


def _light_signature(photo: PILImage.Image, rng: np.random.Generator) -> copydetect.WorkSignature:
    """A work's signature with real keypoints and hashes but made-up CNN vectors (no backbone)."""
    per_work = copydetect.CopyIndex().per_work
    vectors = rng.normal(size=(per_work, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return copydetect.WorkSignature(
        globals=vectors[:5],
        regions=vectors[6:],
        small=vectors[5],
        hashes=phash_variants(photo),
        keypoints=copydetect.sift_keypoints(photo),
        mirrored_keypoints=copydetect.sift_keypoints(ImageOps.mirror(photo)),
    )


def _query(photo: PILImage.Image) -> copydetect.QuerySignature:
    keypoints = copydetect.sift_keypoints(
        photo, long_side=copydetect.QUERY_SIFT_LONG_SIDE, features=copydetect.QUERY_SIFT_FEATURES
    )
    vector = np.random.default_rng(0).normal(size=(1, 32)).astype(np.float32)
    return copydetect.QuerySignature(vectors=vector / np.linalg.norm(vector), hash=phash(photo), keypoints=keypoints)


def test_a_saved_compressed_register_is_mapped_back_and_finds_the_same_copies(butterflies, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Small thresholds so that eight works already get the product-quantised keypoint index.
    monkeypatch.setattr(copydetect, "VOTE_EXACT_BELOW", 500)
    monkeypatch.setattr(copydetect, "VOTE_PQ_ABOVE", 500)
    # ... and a CNN shortlist, whose rows are read from the saved vectors once loaded.
    monkeypatch.setattr(copydetect, "SHORTLIST_ABOVE", 4)
    monkeypatch.setattr(copydetect, "SHORTLIST", 3)
    rng = np.random.default_rng(5)
    photos = [_photo(p) for species in ("001", "002", "003", "004") for p in butterflies[species][:2]]
    stored = {100 + i: _light_signature(photo, rng) for i, photo in enumerate(photos)}
    read: list[int] = []

    def loader(work_id: int) -> copydetect.WorkSignature:
        read.append(work_id)
        return stored[work_id]

    index = copydetect.CopyIndex(loader)
    for work_id, signature in list(stored.items())[:7]:
        index.add(work_id, signature)
    crop = attacks.crop(photos[3], np.random.default_rng(2))
    before = index.match(_query(crop))[0]
    assert before.work_id == 103 and before.score >= THRESHOLD
    assert isinstance(index._votes._index, copydetect.faiss.IndexIVFPQ)
    multi = copydetect.faiss.MultiIndexQuantizer
    assert isinstance(copydetect.faiss.downcast_index(index._votes._index.quantizer), multi)

    index.save(tmp_path / "register")
    read.clear()
    again = copydetect.CopyIndex.load(tmp_path / "register", loader)
    assert again.ids == index.ids and 103 in again and len(again) == 7
    loaded = again._votes._index
    assert isinstance(loaded, copydetect.faiss.IndexIVFPQ)
    assert isinstance(copydetect.faiss.downcast_index(loaded.quantizer), multi)
    assert loaded.nprobe == copydetect.VOTE_IMI_PROBES
    after = again.match(_query(crop))[0]
    assert after.work_id == 103 and after.score == pytest.approx(before.score)
    assert 0 < len(set(read)) <= 5  # only the candidates' signatures were read
    assert again.nbytes < index.nbytes + sum(s.keypoints.desc.nbytes for s in stored.values())

    # A work registered after the restart is found as well.
    again.add(107, stored[107])
    pasted = attacks.paste_into(photos[7], _photo(butterflies["005"][0]), np.random.default_rng(3))
    assert again.match(_query(pasted))[0].work_id == 107
    assert again.cnn_scores(_query(pasted))[0].shape == (8,)  # mapped rows and the new one
    with pytest.raises(KeyError):
        again.signature(999)


def test_a_register_filled_from_its_store_holds_one_batch_of_signatures_at_a_time(butterflies, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A large register read from the database must not hold every full signature at once.
    monkeypatch.setattr(copydetect, "FLUSH_EVERY", 3)
    rng = np.random.default_rng(6)
    photos = [_photo(p) for species in ("001", "002", "003", "004") for p in butterflies[species][:2]]
    stored = {200 + i: _light_signature(photo, rng) for i, photo in enumerate(photos)}
    index = copydetect.CopyIndex(stored.__getitem__)
    held = []
    for work_id, signature in stored.items():
        index.add(work_id, signature)
        held.append(len(index._signatures))
    assert max(held) <= 3 and len(index) == 8
    # Every batch's vectors are there, in work order: each work is found by its own rows.
    for position, work_id in enumerate(stored):
        query = copydetect.QuerySignature(vectors=stored[work_id].globals[:1], hash=0)
        best, _ = index.cnn_scores(query)
        assert int(np.argmax(best)) == position
    crop = attacks.crop(photos[5], np.random.default_rng(4))
    assert index.match(_query(crop))[0].work_id == 205


@pytest.mark.parametrize("coarse_above", [10**9, 10])
def test_the_cnn_shortlist_finds_the_work_whose_view_the_upload_is_with_or_without_a_coarse_step(
    monkeypatch, coarse_above
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(copydetect, "SHORTLIST_ABOVE", 4)
    monkeypatch.setattr(copydetect, "SHORTLIST", 5)
    monkeypatch.setattr(copydetect, "COARSE_ABOVE", coarse_above)
    monkeypatch.setattr(copydetect, "COARSE", 12)
    monkeypatch.setattr(copydetect, "HEAD_DIMS", 8)
    rng = np.random.default_rng(7)
    per_work = copydetect.CopyIndex().per_work
    no_keypoints = copydetect.Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))
    index = copydetect.CopyIndex()
    signatures = []
    # As CNN vectors, most of the variance in a few directions (which the coarse step reads).
    scales = np.where(np.arange(32) < 8, 1.0, 0.15)
    for work_id in range(80):
        vectors = (rng.normal(size=(per_work, 32)) * scales).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        signature = copydetect.WorkSignature(
            globals=vectors[:5], regions=vectors[6:], small=vectors[5], hashes=np.zeros(2, np.uint64),
            keypoints=no_keypoints, mirrored_keypoints=no_keypoints,
        )  # fmt: skip
        signatures.append(signature)
        index.add(work_id, signature)
    for work_id in (3, 41, 79):
        # An upload that looks like one of the work's windows (a crop of it), with noise.
        view = signatures[work_id].regions[4] + (rng.normal(0, 0.05, 32) * scales).astype(np.float32)
        best, which = index.cnn_scores(copydetect.QuerySignature(vectors=(view / np.linalg.norm(view))[None], hash=0))
        assert int(np.argmax(best)) == work_id
        assert which[work_id] == len(copydetect.VIEWS)  # found by a window of the work
        assert (best >= 0).sum() == 5  # only the shortlist was scored exactly
