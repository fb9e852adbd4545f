"""Near-duplicates: the blockwise search equals brute force, planted copies of real
photos are grouped, and an editor resolves the groups in the admin."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from PIL import Image as PILImage

from gallery.catalog import services as catalog_services
from gallery.catalog.models import Image
from gallery.curation import services as curation_services
from gallery.curation.models import DuplicateGroup
from gallery.search import services as search_services
from gallery.vision.neardup import group_pairs, near_duplicate_groups, similar_pairs


def test_blockwise_pairs_equal_brute_force_and_groups_are_transitive() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 16))
    x = np.repeat(centres, 4, axis=0) + rng.normal(scale=0.15, size=(120, 16))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    full = xn @ xn.T
    want = {(a, b) for a, b in zip(*np.nonzero(np.triu(full >= 0.97, k=1)), strict=True)}
    i, j, s = similar_pairs(x, threshold=0.97, max_per_row=120, block=7, chunk=11)  # many uneven blocks
    assert {(int(a), int(b)) for a, b in zip(i, j, strict=True)} == want and want
    np.testing.assert_allclose(s, full[i, j], rtol=1e-5)
    capped, _, _ = similar_pairs(np.ones((50, 4)), threshold=0.9, max_per_row=3, block=8, chunk=16)
    assert len(capped) == 3 * 47 + 2 + 1  # identical rows: each keeps its 3 most similar later rows
    groups = group_pairs(5, np.array([0, 3]), np.array([3, 4]), np.array([0.99, 0.98], dtype=np.float32))
    assert [g.members for g in groups] == [[0, 3, 4]] and groups[0].best_score == pytest.approx(0.99)
    assert near_duplicate_groups(np.eye(4), threshold=0.5) == []
    with pytest.raises(ValueError, match="between -1 and 1"):
        similar_pairs(x, threshold=2.0)


def _copy(path: Path, *, scale: float, fmt: str = "JPEG", quality: int = 70) -> bytes:
    with PILImage.open(path) as im:
        small = im.convert("RGB").resize((int(im.width * scale), int(im.height * scale)), PILImage.Resampling.LANCZOS)
    out = io.BytesIO()
    small.save(out, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()


def _add(data: bytes, name: str) -> Image:
    f = io.BytesIO(data)
    f.name = name
    return catalog_services.image_create(file=f, original_name=name, queue=False)


@pytest.mark.django_db
def test_planted_copies_are_grouped_and_resolved_by_an_editor(
    butterflies, client, monkeypatch, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    paths = [p for group in list(butterflies.values())[:8] for p in group[:2]]  # 16 photos, 8 species
    originals = [_add(p.read_bytes(), p.name) for p in paths]
    planted = {
        0: [_add(_copy(paths[0], scale=0.6), "copy0.jpg"), _add(_copy(paths[0], scale=0.8, fmt="PNG"), "copy0.png")],
        5: [_add(_copy(paths[5], scale=0.5, quality=60), "copy5.jpg")],
        11: [_add(_copy(paths[11], scale=0.7, quality=80), "copy11.jpg")],
    }
    for image in Image.objects.filter(status=Image.Status.PENDING):
        catalog_services.images_embed_batch(image_id=image.pk)
    search_services.reduction_fit(backbone="efficientnet_lite0")
    expected = {frozenset([originals[k].pk, *(c.pk for c in copies)]) for k, copies in planted.items()}

    # Uploads and deletions continue while the job runs: it works from its snapshot.
    real_pairs = curation_services.similar_pairs

    def pairs_while_editing(x, **kw):  # type: ignore[no-untyped-def]
        _add(_copy(paths[3], scale=0.9), "late.jpg")
        catalog_services.images_delete(image_ids=[originals[15].pk])
        return real_pairs(x, **kw)

    monkeypatch.setattr(curation_services, "similar_pairs", pairs_while_editing)
    client.force_login(User.objects.create_superuser("lead", password="pw"))
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("admin:gallery_image_catalog"), {"kind": "neardup"})
    found = {frozenset(g.images.values_list("pk", flat=True)) for g in DuplicateGroup.objects.all()}
    assert found == expected

    page = client.get(reverse("admin:gallery_image_near_duplicates")).content.decode()
    assert page.count('class="module duplicate-group"') == 3
    group0 = next(g for g in DuplicateGroup.objects.all() if originals[0].pk in g.images.values_list("pk", flat=True))
    response = client.post(
        reverse("admin:gallery_image_near_duplicates"),
        {"group": group0.pk, "keep": originals[0].pk, "action": "hide"},
        follow=True,
    )
    assert "2 images hidden." in response.content.decode()
    assert set(Image.objects.filter(visibility="hidden").values_list("pk", flat=True)) == {c.pk for c in planted[0]}
    group5 = next(g for g in DuplicateGroup.objects.all() if originals[5].pk in g.images.values_list("pk", flat=True))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:gallery_image_near_duplicates"),
            {"group": group5.pk, "keep": planted[5][0].pk, "action": "delete"},
            follow=True,
        )
    assert "1 image deleted." in response.content.decode()
    assert not Image.objects.filter(pk=originals[5].pk).exists() and Image.objects.filter(pk=planted[5][0].pk).exists()
    assert DuplicateGroup.objects.count() == 1
    gallery = {im.pk for im in client.get(reverse("gallery:index")).context["page"].object_list}
    assert originals[0].pk in gallery and not gallery & {c.pk for c in planted[0]}


def test_the_approximate_path_for_large_catalogs_finds_the_same_planted_pairs() -> None:
    from gallery.vision.neardup import similar_pairs

    rng = np.random.default_rng(4)
    centres = rng.normal(size=(20, 32))
    x = (centres[rng.integers(0, 20, size=3000)] + 0.8 * rng.normal(size=(3000, 32))).astype(np.float32)
    planted = rng.choice(3000, size=60, replace=False)
    copies = x[planted] + 0.01 * rng.normal(size=(60, 32)).astype(np.float32)
    data = np.concatenate([x, copies])
    expected = {(int(a), 3000 + n) for n, a in enumerate(planted)}
    exact = similar_pairs(data, threshold=0.99)
    approx = similar_pairs(data, threshold=0.99, approximate_above=1000)
    found_exact = set(zip(exact[0].tolist(), exact[1].tolist(), strict=True))
    found_approx = set(zip(approx[0].tolist(), approx[1].tolist(), strict=True))
    assert expected <= found_exact
    assert len(expected & found_approx) >= 0.97 * len(expected)
    assert found_approx <= found_exact  # nothing below the threshold sneaks in


def _checked_keep(page: str, group: DuplicateGroup) -> int:
    form = page.split(f'data-group="{group.pk}"', 1)[1].split("</form>", 1)[0]
    checked = [part for part in form.split("<input") if 'name="keep"' in part and "checked" in part]
    assert len(checked) == 1
    return int(checked[0].split('value="', 1)[1].split('"', 1)[0])


@pytest.mark.django_db
def test_the_review_preselects_the_largest_oldest_member_and_says_why(butterflies, client) -> None:  # type: ignore[no-untyped-def]
    from gallery.models import CatalogJob

    path = next(iter(butterflies.values()))[0]
    with PILImage.open(path) as im:
        width, height = im.size
    original = _add(path.read_bytes(), "original.jpg")
    smaller = _add(_copy(path, scale=0.5, quality=60), "smaller-copy.jpg")  # newer, smaller: the old default
    same_size = _add(_copy(path, scale=1.0, quality=50), "same-size-copy.jpg")  # as large, smaller file
    job = CatalogJob.objects.create(kind="neardup")
    group = DuplicateGroup.objects.create(job=job, best_score=0.987654321)
    group.images.set([original, smaller, same_size])
    client.force_login(User.objects.create_superuser("lead", password="pw"))
    page = client.get(reverse("admin:gallery_image_near_duplicates")).content.decode()
    assert _checked_keep(page, group) == original.pk
    assert f"Suggested: as large as any ({width}×{height}), largest file, uploaded first" in page
    assert "0.988" in page and "0.987654321" not in page
    # Without the same-size copy the original is simply the largest and the first.
    group.images.remove(same_size)
    page = client.get(reverse("admin:gallery_image_near_duplicates")).content.decode()
    assert f"Suggested: largest ({width}×{height}), uploaded first" in page
    # A larger upload that came later is still preferred for its pixels, and the page says so.
    bigger = _add(_copy(path, scale=1.5, quality=90), "bigger.jpg")
    group.images.add(bigger)
    page = client.get(reverse("admin:gallery_image_near_duplicates")).content.decode()
    assert _checked_keep(page, group) == bigger.pk
    assert f"Suggested: largest ({int(width * 1.5)}×{int(height * 1.5)})" in page and "uploaded first" not in page
