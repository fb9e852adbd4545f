"""Copy detection without Django: hashes, signatures, the index, attacks and the metrics."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageOps

from gallery.vision import attacks, copydetect, copyeval
from gallery.vision.phash import hamming, phash, phash_variants


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
        assert best.score >= 0.6, (family, best)
    stranger = copydetect.describe_query(backbone, _photo(butterflies["007"][6]))  # same species, another photo
    assert index.match(stranger)[0].score < 0.6


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
