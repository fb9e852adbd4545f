"""The copy register across processes: saved after works are added, mapped back by the
next process instead of re-reading every signature, and never trusted when it is stale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from PIL import Image as PILImage
from PIL import ImageOps

from benchmarks import attacks
from gallery.catalog import pipeline
from gallery.copyright import selectors as copyright_selectors
from gallery.copyright.models import ProtectedWork, WorkSignature
from gallery.vision import copydetect
from gallery.vision.phash import phash, phash_variants

pytestmark = pytest.mark.django_db


def _signature(photo: PILImage.Image, rng: np.random.Generator) -> copydetect.WorkSignature:
    """Real keypoints and hashes; made-up CNN vectors (the register does not care here)."""
    vectors = rng.normal(size=(copydetect.CopyIndex().per_work, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return copydetect.WorkSignature(
        globals=vectors[:5],
        regions=vectors[6:],
        small=vectors[5],
        hashes=phash_variants(photo),
        keypoints=copydetect.sift_keypoints(photo),
        mirrored_keypoints=copydetect.sift_keypoints(ImageOps.mirror(photo)),
    )


def _work(photo: PILImage.Image, n: int, rng: np.random.Generator) -> ProtectedWork:
    work = ProtectedWork.objects.create(
        title=f"Work {n}", rights_holder="Holder", checksum=f"{n:064d}", width=10, height=10, file=f"protected/{n}.jpg",
        status=ProtectedWork.Status.READY,
    )  # fmt: skip
    WorkSignature.objects.create(
        work=work, backbone=settings.IMAGESEARCH["BACKBONE"], version=copydetect.DESCRIPTOR_VERSION,
        data=_signature(photo, rng).to_bytes(),
    )  # fmt: skip
    return work


def _query(photo: PILImage.Image) -> copydetect.QuerySignature:
    keypoints = copydetect.sift_keypoints(
        photo, long_side=copydetect.QUERY_SIFT_LONG_SIDE, features=copydetect.QUERY_SIFT_FEATURES
    )
    return copydetect.QuerySignature(vectors=np.eye(1, 32, dtype=np.float32), hash=phash(photo), keypoints=keypoints)


def test_the_next_process_maps_the_saved_register_and_reads_only_new_and_candidate_signatures(
    butterflies, settings, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    settings.COPYRIGHT = {**settings.COPYRIGHT, "INDEX_SAVE_EVERY": 2}
    rng = np.random.default_rng(0)
    photos = [PILImage.open(p).convert("RGB") for p in (butterflies["002"][0], butterflies["005"][1], butterflies["008"][2])]
    works = [_work(photo, i, rng) for i, photo in enumerate(photos[:2])]
    first = copyright_selectors.copy_index.get().works
    folder = Path(settings.COPYRIGHT["INDEX_DIR"]) / f"{pipeline.current_backbone().name}-v{copydetect.DESCRIPTOR_VERSION}"
    assert (folder / "meta.json").exists() and first.ids == [w.pk for w in works]

    # A new process: the saved works come from the folder, only the new one from its row.
    copyright_selectors.copy_index.clear()
    decoded: list[int] = []
    real = copydetect.WorkSignature.from_bytes

    def counted(cls: type, data: bytes) -> copydetect.WorkSignature:
        decoded.append(1)
        return real(data)

    monkeypatch.setattr(copydetect.WorkSignature, "from_bytes", classmethod(counted))
    third = _work(photos[2], 2, rng)
    loaded = copyright_selectors.copy_index.get().works
    assert len(loaded) == 3 and all(w.pk in loaded for w in [*works, third]) and len(decoded) == 1
    decoded.clear()
    best = loaded.match(_query(attacks.crop(photos[1], np.random.default_rng(4))))[0]
    assert best.work_id == works[1].pk and best.score >= settings.COPYRIGHT["THRESHOLD"]
    assert 1 <= len(decoded) <= 3  # the candidates' signatures, read from the database

    # A work deleted meanwhile: the saved register is stale and is not used.
    works[0].delete()
    copyright_selectors.copy_index.clear()
    rebuilt = copyright_selectors.copy_index.get().works
    assert len(rebuilt) == 2 and works[0].pk not in rebuilt and third.pk in rebuilt


def test_a_register_saved_from_another_database_is_ignored(butterflies, settings) -> None:  # type: ignore[no-untyped-def]
    settings.COPYRIGHT = {**settings.COPYRIGHT, "INDEX_SAVE_EVERY": 1}
    rng = np.random.default_rng(1)
    photo = PILImage.open(butterflies["003"][0]).convert("RGB")
    work = _work(photo, 7, rng)
    assert work.pk in copyright_selectors.copy_index.get().works
    # Same row numbers, other works: as after restoring another database.
    WorkSignature.objects.all().delete()
    ProtectedWork.objects.all().delete()
    ProtectedWork.objects.create(
        pk=work.pk + 5, title="Other", rights_holder="H", checksum="f" * 64, width=1, height=1, file="protected/o.jpg",
        status=ProtectedWork.Status.READY,
    )  # fmt: skip
    WorkSignature.objects.create(
        pk=WorkSignature.objects.count() + 1, work_id=work.pk + 5, backbone=settings.IMAGESEARCH["BACKBONE"],
        version=copydetect.DESCRIPTOR_VERSION, data=_signature(photo, rng).to_bytes(),
    )  # fmt: skip
    copyright_selectors.copy_index.clear()
    fresh = copyright_selectors.copy_index.get().works
    assert len(fresh) == 1 and work.pk + 5 in fresh and work.pk not in fresh
