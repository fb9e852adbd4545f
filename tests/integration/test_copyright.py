"""Copyright monitoring through the product: registering works, matching uploads in the
worker, scanning the catalog, and the staff review pages with their access rules."""

from __future__ import annotations

import io
import re
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image as PILImage
from PIL import ImageOps

from benchmarks import attacks
from benchmarks.livestack import live_stack
from gallery.catalog import services as catalog_services
from gallery.catalog.models import Embedding, Image
from gallery.copyright import selectors as copyright_selectors
from gallery.copyright import services as copyright_services
from gallery.copyright.models import CopyMatch, ImageKeypoints, MatchDecision, ProtectedWork, WorkSignature
from tests.conftest import photo_bytes

pytestmark = pytest.mark.django_db


def _jpeg(image: PILImage.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def _file(data: bytes, name: str = "photo.jpg") -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


def _upload(data: bytes, name: str) -> Image:
    image = catalog_services.image_create(file=_file(data, name), original_name=name)
    return Image.objects.get(pk=image.pk)


@pytest.fixture(autouse=True)
def _fresh_index():  # type: ignore[no-untyped-def]
    copyright_selectors.copy_index.clear()


@pytest.fixture
def staff(db) -> User:  # type: ignore[no-untyped-def]
    user = User.objects.create_user("rights", password="pw-rights-1")
    user.groups.add(Group.objects.get(name=settings.IMAGESEARCH["COPYRIGHT_GROUP"]))
    return user


@pytest.fixture
def staff_client(client, staff):  # type: ignore[no-untyped-def]
    client.force_login(staff)
    return client


def _register(client, data: bytes, *, title: str = "Monarch at dawn", holder: str = "Ada Photo Ltd"):  # type: ignore[no-untyped-def]
    upload = SimpleUploadedFile("work.jpg", data, content_type="image/jpeg")
    return client.post(
        reverse("gallery:copyright_register"), {"file": upload, "title": title, "rights_holder": holder, "reference": "AP-1"}
    )


@pytest.mark.slow
@pytest.mark.parametrize("gem_p", [3.0, 2.0])
def test_a_new_work_finds_an_existing_cropped_copy_through_the_background_scan(
    staff_client, butterflies, django_capture_on_commit_callbacks, settings, gem_p
) -> None:  # type: ignore[no-untyped-def]
    # The catalog's pooling (GeM-3 of catalogs embedded before, GeM-2 of new ones) changes
    # nothing for copies: works are described by the network alone.
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "GEM_P": gem_p}
    work_path, same_species = butterflies["001"][0], butterflies["001"][1]
    original = PILImage.open(work_path).convert("RGB")
    w, h = original.size
    cropped = original.crop((w // 4, 0, w, round(h * 0.66)))  # half the area, off-centre
    with django_capture_on_commit_callbacks(execute=True):
        copy = _upload(_jpeg(cropped), "cropped.jpg")
        other = _upload(same_species.read_bytes(), same_species.name)
    assert Image.objects.get(pk=copy.pk).status == Image.Status.READY
    assert not CopyMatch.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = _register(staff_client, work_path.read_bytes())
    assert response.status_code == 302
    work = ProtectedWork.objects.get()
    assert work.status == ProtectedWork.Status.READY and work.scanned_at is not None
    matches = list(CopyMatch.objects.all())
    assert [(m.image_id, m.status, m.found_by) for m in matches] == [(copy.pk, CopyMatch.Status.PENDING, "scan")]
    assert not CopyMatch.objects.filter(image=other).exists()  # another monarch is not a copy
    catalog_name = "efficientnet_lite0" if gem_p == 3.0 else "efficientnet_lite0-gem2"
    assert set(Embedding.objects.values_list("backbone", flat=True)) == {catalog_name}
    assert list(WorkSignature.objects.values_list("backbone", flat=True)) == ["efficientnet_lite0"]

    queue = staff_client.get(reverse("gallery:copyright_queue")).content.decode()
    assert "Monarch at dawn" in queue and f'data-match-id="{matches[0].pk}"' in queue


@pytest.mark.slow
def test_a_new_work_finds_an_old_small_paste_and_collage_through_the_catalogs_keypoints(
    staff_client, butterflies, settings, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    # Only the keypoint votes bring candidates: none by embedding.
    settings.COPYRIGHT = {**settings.COPYRIGHT, "SCAN_CANDIDATES": 0, "SCAN_ALWAYS_VERIFIED": 0}
    rng = np.random.default_rng(4)
    work_path = butterflies["005"][0]
    work = PILImage.open(work_path).convert("RGB")
    others = [PILImage.open(p).convert("RGB") for p in (butterflies["008"][0], butterflies["009"][0], butterflies["010"][0])]
    with django_capture_on_commit_callbacks(execute=True):
        paste = _upload(_jpeg(attacks.old_copy("paste_small", work, others, rng)), "market-poster.jpg")
        collage = _upload(_jpeg(attacks.old_copy("collage", work, others, rng)), "collage.jpg")
        same_species = _upload(butterflies["005"][1].read_bytes(), "another-swallowtail.jpg")
    # No work is registered yet: the worker still keeps each upload's keypoints.
    assert ImageKeypoints.objects.filter(image__in=[paste, collage, same_species]).count() == 3
    assert not CopyMatch.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        assert _register(staff_client, work_path.read_bytes(), title="Swallowtail study").status_code == 302
    found = {m.image_id: m for m in CopyMatch.objects.all()}
    assert set(found) == {paste.pk, collage.pk}
    assert {m.found_by for m in found.values()} == {"scan"}
    # The review page draws where the work sits in the poster: a small part of it.
    geometry = found[paste.pk].signals["geometry"]
    assert geometry["upload_covered"] < 0.3 and geometry["work_found"] > 0.6


def test_a_small_paste_the_screen_would_stop_is_checked_because_the_votes_single_it_out(
    staff_client, butterflies, settings, monkeypatch, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    """A work pasted small shows many keypoint matches on the stored keypoints, but in a
    part of the work too small for the screen: the image its votes single out is checked
    in full anyway, and found; other photos stay unchecked."""
    from gallery.vision import localfeatures

    # Only the votes bring candidates, and the screen stops every one of them.
    settings.COPYRIGHT = {**settings.COPYRIGHT, "SCAN_CANDIDATES": 0, "SCAN_ALWAYS_VERIFIED": 0, "SCAN_SCREEN_INLIERS": 10_000}
    rng = np.random.default_rng(9)
    work_path = butterflies["005"][0]
    work = PILImage.open(work_path).convert("RGB")
    others = [PILImage.open(p).convert("RGB") for p in (butterflies["008"][0], butterflies["009"][0], butterflies["010"][0])]
    with django_capture_on_commit_callbacks(execute=True):
        paste = _upload(_jpeg(attacks.old_copy("paste_small", work, others, rng)), "flyer.jpg")
        _upload(butterflies["005"][1].read_bytes(), "same-species.jpg")
        _upload(butterflies["002"][2].read_bytes(), "unrelated.jpg")

    with django_capture_on_commit_callbacks(execute=True):
        assert _register(staff_client, work_path.read_bytes(), title="Swallowtail, small").status_code == 302
    assert list(CopyMatch.objects.values_list("image_id", "found_by")) == [(paste.pk, "scan")]

    # Without that rule the screen alone decides: nothing is checked, nothing found.
    CopyMatch.objects.all().delete()
    monkeypatch.setattr(localfeatures, "DOMINANT_VOTES", 10_000)
    with django_capture_on_commit_callbacks(execute=True):
        assert _register(staff_client, _jpeg(work.rotate(180)), title="Swallowtail, upside down").status_code == 302
    assert not CopyMatch.objects.exists()


def _poster(work_path: Path, photo_path: Path, *, share: float) -> PILImage.Image:
    """The photo with the work pasted into it at `share` of its width, centred, a third down."""
    work, photo = PILImage.open(work_path).convert("RGB"), PILImage.open(photo_path).convert("RGB")
    width = round(share * photo.width)
    poster = photo.copy()
    poster.paste(
        work.resize((width, round(work.height * width / work.width))), (photo.width // 2 - width // 2, photo.height // 3)
    )
    return poster


def test_a_work_pasted_very_small_is_found_against_the_work_shrunk_as_the_poster_shows_it(
    staff_client, butterflies, django_capture_on_commit_callbacks, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A work pasted at a fifth of a poster's width has lost its fine detail: the scan
    reads the work's private original and matches the poster's part against the work
    shrunk to that size. Without the work's pixels the same scan misses it."""
    from gallery.copyright import services as copyright_services

    work_path = butterflies["003"][0]
    poster_image = _poster(work_path, butterflies["007"][3], share=0.2)
    with django_capture_on_commit_callbacks(execute=True):
        poster = _upload(_jpeg(poster_image), "poster.jpg")
        _upload(butterflies["003"][1].read_bytes(), "same-species.jpg")

    monkeypatch.setattr(copyright_services, "_work_for_scan", lambda work: None)
    with django_capture_on_commit_callbacks(execute=True):
        assert _register(staff_client, work_path.read_bytes(), title="Brush-foot, sharp only").status_code == 302
    assert not CopyMatch.objects.exists()

    ProtectedWork.objects.all().delete()
    copyright_selectors.copy_index.clear()
    monkeypatch.undo()
    with django_capture_on_commit_callbacks(execute=True):
        assert _register(staff_client, work_path.read_bytes(), title="Brush-foot").status_code == 302
    match = CopyMatch.objects.get()
    assert (match.image_id, match.found_by) == (poster.pk, "scan")
    # The review page outlines the paste: about the twenty-fifth of the poster it covers.
    assert 0.02 < match.signals["geometry"]["upload_covered"] < 0.1


def test_an_upload_showing_a_work_pasted_small_is_matched_by_looking_closer_at_the_paste(
    staff_client, butterflies, django_capture_on_commit_callbacks, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A registered work pasted at three tenths of a poster's width keeps too few keypoints
    for the whole poster's check (score ~0.38, below the threshold); the upload's check
    looks again at the part of the poster its keypoints place the work in, against the
    work shrunk as the poster shows it, and records the match. Without that look, none."""
    work_path = butterflies["003"][0]
    poster_image = _poster(work_path, butterflies["007"][3], share=0.3)
    with django_capture_on_commit_callbacks(execute=True):
        assert _register(staff_client, work_path.read_bytes(), title="Brush-foot").status_code == 302

    from gallery.vision import localfeatures

    monkeypatch.setattr(localfeatures, "LOOK_CLOSER_FROM", 2.0)  # never look closer
    with django_capture_on_commit_callbacks(execute=True):
        poster = _upload(_jpeg(poster_image), "poster.jpg")
    assert not CopyMatch.objects.exists()

    # The look counts only where the part shows most of the work, as a paste does (not a
    # logo shared with another product): asking for more than all of it, none counts.
    monkeypatch.undo()
    monkeypatch.setattr(localfeatures, "UPLOAD_PART_MIN_WORK_FOUND", 1.01)
    assert copyright_services.upload_match(image_id=poster.pk) == []

    monkeypatch.undo()
    assert [m.image_id for m in copyright_services.upload_match(image_id=poster.pk)] == [poster.pk]  # checked again
    match = CopyMatch.objects.get()
    assert (match.image_id, match.found_by) == (poster.pk, "upload")
    assert match.score >= settings.COPYRIGHT["THRESHOLD"]
    # The review page outlines the paste: about a tenth of the poster it covers.
    assert 0.04 < match.signals["geometry"]["upload_covered"] < 0.2
    page = staff_client.get(reverse("gallery:copyright_match", args=[match.pk])).content.decode()
    assert "on the part of the image that shows it" in page


def test_the_catalog_page_stores_keypoints_of_images_uploaded_before(
    settings, django_capture_on_commit_callbacks, client
) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        images = [_upload(photo_bytes(seed=s, color=(40 * s, 90, 160)), f"p{s}.jpg") for s in range(3)]
    ImageKeypoints.objects.all().delete()  # as before copy scans kept them
    admin = User.objects.create_superuser("boss", password="pw-boss-1")
    client.force_login(admin)
    page = client.get(reverse("admin:gallery_image_catalog")).content.decode()
    assert "3 ready photos have none yet" in page
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(reverse("admin:gallery_image_catalog"), {"kind": "keypoints"}, follow=True).content.decode()
    assert "Index keypoints for copy scans" in done
    assert ImageKeypoints.objects.filter(image__in=images).count() == 3
    assert "have none yet" not in client.get(reverse("admin:gallery_image_catalog")).content.decode()


@pytest.mark.slow
def test_upload_of_a_mirrored_copy_is_matched_and_an_exact_copy_by_checksum(
    butterflies, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    work_path = butterflies["004"][0]
    with django_capture_on_commit_callbacks(execute=True):
        work = copyright_services.protected_work_register(
            file=_file(work_path.read_bytes()), title="Swallowtail", rights_holder="B"
        )
    with django_capture_on_commit_callbacks(execute=True):
        mirrored = _upload(_jpeg(ImageOps.mirror(PILImage.open(work_path))), "mirrored.jpg")
        exact = _upload(work_path.read_bytes(), "same-file.jpg")
        unrelated = _upload(butterflies["009"][0].read_bytes(), "other.jpg")
    by_image = {m.image_id: m for m in CopyMatch.objects.filter(work=work)}
    assert set(by_image) == {mirrored.pk, exact.pk}
    assert by_image[exact.pk].score == 1.0 and by_image[exact.pk].signals["exact"] is True
    assert by_image[mirrored.pk].signals["mirrored"] is True
    assert unrelated.pk not in by_image
    # Settled by its hash alone, the mirrored copy still carries the geometry the review
    # page draws: the whole work, each point on the upload at the mirrored place of the work.
    geometry = by_image[mirrored.pk].signals["geometry"]
    assert geometry["mirrored"] is True and geometry["work_found"] > 0.8 and geometry["upload_covered"] > 0.8
    pairs = np.array(geometry["pairs"])
    assert len(pairs) >= 20
    assert np.allclose(pairs[:, 0], 1 - pairs[:, 2], atol=0.02) and np.allclose(pairs[:, 1], pairs[:, 3], atol=0.02)


def _pending_match(name: str = "suspect.jpg", seed: int = 1) -> CopyMatch:
    work = ProtectedWork.objects.create(
        title="Harbour", rights_holder="Sea Pictures", checksum=f"{seed:064d}", width=10, height=10, file="protected/x.jpg"
    )
    image = _upload(photo_bytes(seed=seed), name)
    return CopyMatch.objects.create(work=work, image=image, score=0.91, signals={"fired": ["perceptual hash"]}, found_by="upload")


def test_staff_confirm_and_hide_then_dismiss_through_the_pages(staff_client, staff) -> None:  # type: ignore[no-untyped-def]
    match = _pending_match()
    page = staff_client.get(reverse("gallery:copyright_match", args=[match.pk]))
    assert page.status_code == 200 and "Harbour" in page.content.decode() and "perceptual hash" in page.content.decode()

    url = reverse("gallery:copyright_decide", args=[match.pk])
    response = staff_client.post(url, {"action": "confirm", "hide_upload": "on", "note": "same boats, cropped"})
    assert response.status_code == 302
    match.refresh_from_db()
    assert match.status == CopyMatch.Status.CONFIRMED
    assert Image.objects.get(pk=match.image_id).visibility == Image.Visibility.HIDDEN
    assert staff_client.get(reverse("gallery:detail", args=[match.image_id])).status_code == 404
    gallery = staff_client.get(reverse("gallery:index")).content.decode()
    assert f"/images/{match.image_id}/" not in gallery
    decision = MatchDecision.objects.get(match=match)
    assert (decision.action, decision.decided_by, decision.note, decision.hid_upload) == (
        "confirm",
        staff,
        "same boats, cropped",
        True,
    )
    history = staff_client.get(reverse("gallery:copyright_match", args=[match.pk])).content.decode()
    assert "rights" in history and "same boats, cropped" in history and "upload hidden" in history

    other = _pending_match("second.jpg", seed=2)
    response = staff_client.post(reverse("gallery:copyright_decide", args=[other.pk]), {"action": "dismiss", "note": "own photo"})
    assert response.status_code == 302
    other.refresh_from_db()
    assert other.status == CopyMatch.Status.DISMISSED
    assert Image.objects.get(pk=other.image_id).visibility == Image.Visibility.PUBLISHED
    # A dismissed pair is not raised again by a later check.
    copyright_services.copy_match_record(work_id=other.work_id, image_id=other.image_id, score=0.99, signals={}, found_by="scan")
    other.refresh_from_db()
    assert other.status == CopyMatch.Status.DISMISSED and other.score == 0.91

    pending = staff_client.get(reverse("gallery:copyright_queue"), {"status": "pending"}).content.decode()
    assert "data-match-id" not in pending
    dismissed = staff_client.get(reverse("gallery:copyright_queue"), {"status": "dismissed", "rights_holder": "Sea Pictures"})
    assert f'data-match-id="{other.pk}"' in dismissed.content.decode()
    assert (
        "data-match-id" not in staff_client.get(reverse("gallery:copyright_queue"), {"rights_holder": "Nobody"}).content.decode()
    )


def test_queue_orders_by_newest_or_by_score(staff_client) -> None:  # type: ignore[no-untyped-def]
    low = _pending_match("a.jpg", seed=3)
    high = _pending_match("b.jpg", seed=4)
    CopyMatch.objects.filter(pk=high.pk).update(score=0.99)
    CopyMatch.objects.filter(pk=low.pk).update(score=0.70)
    newest = staff_client.get(reverse("gallery:copyright_queue")).content.decode()
    by_score = staff_client.get(reverse("gallery:copyright_queue"), {"order": "score"}).content.decode()
    ids = lambda html: [int(i) for i in re.findall(r'data-match-id="(\d+)"', html)]  # noqa: E731
    assert ids(newest) == [high.pk, low.pk]
    assert ids(by_score) == [high.pk, low.pk]
    CopyMatch.objects.filter(pk=high.pk).update(score=0.5)
    assert ids(staff_client.get(reverse("gallery:copyright_queue"), {"order": "score"}).content.decode()) == [low.pk, high.pk]


@pytest.mark.parametrize(
    ("post", "message"),
    [
        ({"action": "note", "note": ""}, "Write the note"),
        ({"action": "dismiss", "hide_upload": "on"}, "Only a confirmed copy can be hidden"),
        ({"action": "delete-everything"}, "Select a valid choice"),
    ],
)
def test_bad_decisions_get_a_clear_error_and_change_nothing(staff_client, post, message) -> None:  # type: ignore[no-untyped-def]
    match = _pending_match()
    response = staff_client.post(reverse("gallery:copyright_decide", args=[match.pk]), post)
    assert response.status_code == 400 and message in response.content.decode()
    match.refresh_from_db()
    assert match.status == CopyMatch.Status.PENDING and not MatchDecision.objects.exists()
    assert Image.objects.get(pk=match.image_id).visibility == Image.Visibility.PUBLISHED


def test_a_note_is_recorded_without_changing_the_status(staff_client) -> None:  # type: ignore[no-untyped-def]
    match = _pending_match()
    staff_client.post(reverse("gallery:copyright_decide", args=[match.pk]), {"action": "note", "note": "asked the uploader"})
    match.refresh_from_db()
    assert match.status == CopyMatch.Status.PENDING
    assert list(MatchDecision.objects.values_list("action", "note")) == [("note", "asked the uploader")]


def test_registering_bad_input_is_refused_and_stores_nothing(staff_client, media_files) -> None:  # type: ignore[no-untyped-def]
    response = _register(staff_client, b"not an image at all")
    assert response.status_code == 400 and "not an image" in response.content.decode()
    response = staff_client.post(reverse("gallery:copyright_register"), {"title": "x", "rights_holder": "y"})
    assert response.status_code == 400
    assert not ProtectedWork.objects.exists() and media_files() == []


def test_registering_the_same_work_twice_is_refused(staff_client, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    data = photo_bytes(seed=7)
    with django_capture_on_commit_callbacks(execute=False):
        assert _register(staff_client, data).status_code == 302
    response = _register(staff_client, data, title="Again")
    assert response.status_code == 400 and "already registered" in response.content.decode()
    assert ProtectedWork.objects.count() == 1


def test_a_protected_original_is_private_and_shown_to_staff_only(staff_client, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    from django.core.files.storage import default_storage

    from gallery.storage import private_storage

    data = photo_bytes(seed=11)
    with django_capture_on_commit_callbacks(execute=False):
        assert _register(staff_client, data).status_code == 302
    work = ProtectedWork.objects.get()
    assert private_storage.exists(work.file.name) and not default_storage.exists(work.file.name)
    with pytest.raises(ValueError):
        _ = work.file.url  # no public address at all
    response = staff_client.get(reverse("gallery:copyright_work_file", args=[work.pk]))
    assert response.status_code == 200 and b"".join(response.streaming_content) == data
    staff_client.logout()
    assert staff_client.get(reverse("gallery:copyright_work_file", args=[work.pk])).status_code == 302
    admin = User.objects.create_superuser("root", password="pw-long-enough-123")
    staff_client.force_login(admin)
    page = staff_client.get(reverse("admin:gallery_protectedwork_change", args=[work.pk]))
    assert page.status_code == 200 and reverse("gallery:copyright_work_file", args=[work.pk]) in page.content.decode()


def _review_requests(match: CopyMatch) -> list[tuple[str, str, dict[str, str]]]:
    return [
        ("get", reverse("gallery:copyright_queue"), {}),
        ("get", reverse("gallery:copyright_match", args=[match.pk]), {}),
        ("post", reverse("gallery:copyright_decide", args=[match.pk]), {"action": "confirm", "hide_upload": "on"}),
        ("post", reverse("gallery:copyright_decide", args=[match.pk]), {"action": "dismiss"}),
        ("post", reverse("gallery:copyright_decide", args=[match.pk]), {"action": "note", "note": "x"}),
        ("get", reverse("gallery:copyright_works"), {}),
        ("get", reverse("gallery:copyright_register"), {}),
        ("post", reverse("gallery:copyright_register"), {"title": "t", "rights_holder": "h"}),
        ("get", reverse("gallery:copyright_work_file", args=[match.work_id]), {}),
        ("post", reverse("gallery:copyright_dismiss"), {"matches": str(match.pk), "note": "x"}),
        ("get", reverse("gallery:copyright_decisions"), {}),
        ("get", reverse("gallery:copyright_decision_thumbnail", args=[1, "work"]), {}),
    ]


def test_non_staff_and_anonymous_are_refused_everywhere(client) -> None:  # type: ignore[no-untyped-def]
    match = _pending_match()
    for method, url, data in _review_requests(match):
        response = getattr(client, method)(url, data)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), (method, url)
    client.force_login(User.objects.create_user("visitor", password="pw-visitor-1", is_staff=True))
    for method, url, data in _review_requests(match):
        assert getattr(client, method)(url, data).status_code == 403, (method, url)
    match.refresh_from_db()
    assert match.status == CopyMatch.Status.PENDING and not MatchDecision.objects.exists()
    assert Image.objects.get(pk=match.image_id).visibility == Image.Visibility.PUBLISHED
    assert ProtectedWork.objects.count() == 1


def test_superusers_may_review_and_forms_need_csrf(client) -> None:  # type: ignore[no-untyped-def]
    match = _pending_match()
    client.force_login(User.objects.create_superuser("root", password="pw-root-1"))
    assert client.get(reverse("gallery:copyright_match", args=[match.pk])).status_code == 200
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(User.objects.get(username="root"))
    assert strict.post(reverse("gallery:copyright_decide", args=[match.pk]), {"action": "dismiss"}).status_code == 403
    match.refresh_from_db()
    assert match.status == CopyMatch.Status.PENDING


@pytest.mark.slow
def test_mirrored_upload_creates_a_pending_match_through_the_real_worker(tmp_path, butterflies) -> None:  # type: ignore[no-untyped-def]
    work_path = butterflies["002"][0]
    mirrored = tmp_path / "mirrored.jpg"
    mirrored.write_bytes(_jpeg(ImageOps.mirror(PILImage.open(work_path))))
    innocent = butterflies["002"][1]
    with live_stack(tmp_path / "var") as stack:
        import subprocess
        import sys

        register = (
            f"from gallery.copyright import services as copyright_services; import io; f = io.BytesIO(open({str(work_path)!r}, 'rb').read()); f.name = 'w.jpg'; "
            "copyright_services.protected_work_register(file=f, title='Admiral', rights_holder='Lepido Press')"
        )
        root = Path(__file__).resolve().parents[2]
        subprocess.run([sys.executable, "manage.py", "shell", "-c", register], cwd=root, env=stack.env, check=True)
        db = sqlite3.connect(stack.var / "db.sqlite3")
        deadline = time.monotonic() + 120
        while db.execute("select status from gallery_protectedwork").fetchone()[0] != "ready":
            assert time.monotonic() < deadline, "the work was never described\n" + stack.log_tail()
            time.sleep(0.5)
        browser = stack.browser()
        response = browser.upload([mirrored, innocent])
        assert response.status_code == 200, response.text[:300]
        ids = [int(i) for i in re.search(r"ids=([\d,]+)", response.url).group(1).split(",")]  # type: ignore[union-attr]
        assert set(browser.wait_ready(ids).values()) == {"ready"}
        deadline = time.monotonic() + 120
        while not (rows := db.execute("select image_id, status from gallery_copymatch").fetchall()):
            assert time.monotonic() < deadline, "no match was recorded\n" + stack.log_tail()
            time.sleep(0.5)
        time.sleep(3)  # the innocent upload's check has finished too
        rows = db.execute("select image_id, status from gallery_copymatch").fetchall()
        assert rows == [(ids[0], "pending")], f"{rows}\n{stack.log_tail()}"


@pytest.mark.slow
def test_a_bulk_import_is_checked_against_protected_works(tmp_path, butterflies, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    from django.core.management import call_command

    work_path = butterflies["006"][0]
    with django_capture_on_commit_callbacks(execute=True):
        work = copyright_services.protected_work_register(
            file=_file(work_path.read_bytes()), title="Mourning cloak", rights_holder="C"
        )
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "flipped.jpg").write_bytes(_jpeg(ImageOps.mirror(PILImage.open(work_path))))
    (folder / "other.jpg").write_bytes(butterflies["006"][3].read_bytes())
    call_command("import_images", str(folder), "--no-progress")
    matched = {m.image.original_name for m in CopyMatch.objects.filter(work=work)}
    assert matched == {"flipped.jpg"}


@pytest.mark.slow
def test_a_bulk_import_before_any_work_keeps_keypoints_for_a_later_work(
    tmp_path, butterflies, settings, django_capture_on_commit_callbacks, capsys
) -> None:  # type: ignore[no-untyped-def]
    from django.core.management import call_command

    settings.COPYRIGHT = {**settings.COPYRIGHT, "SCAN_CANDIDATES": 0, "SCAN_ALWAYS_VERIFIED": 0}
    work_path = butterflies["007"][0]
    work = PILImage.open(work_path).convert("RGB")
    backdrop = PILImage.open(butterflies["002"][2]).convert("RGB")
    folder = tmp_path / "archive"
    folder.mkdir()
    (folder / "flyer.jpg").write_bytes(_jpeg(attacks.paste_small(work, backdrop, np.random.default_rng(2))))
    (folder / "other.jpg").write_bytes(butterflies["007"][2].read_bytes())
    with django_capture_on_commit_callbacks(execute=True):
        call_command("import_images", str(folder), "--no-progress")
    assert "Index keypoints for copy scans" in capsys.readouterr().out  # queued (run at once here)
    assert ImageKeypoints.objects.count() == 2

    with django_capture_on_commit_callbacks(execute=True):
        registered = copyright_services.protected_work_register(
            file=_file(work_path.read_bytes()), title="Peacock", rights_holder="D"
        )
    matched = {m.image.original_name for m in CopyMatch.objects.filter(work=registered)}
    assert matched == {"flyer.jpg"}


def _half_of_the_work_in_the_upload() -> copyright_services.copydetect.Evidence:
    """Evidence of an upload showing the left half of a 400×300 work at twice the size."""
    rng = np.random.default_rng(0)
    corners = np.array([[2, 2], [198, 2], [198, 298], [2, 298]], dtype=np.float32)
    work_xy = np.concatenate([corners, rng.uniform([0, 0], [200, 300], size=(96, 2)).astype(np.float32)])
    geometry = copyright_services.copydetect.Geometry(
        work_xy * 2, work_xy, (400, 600), (400, 300), np.array([[0.5, 0, 0], [0, 0.5, 0]]), 104, 300
    )
    return copyright_services.copydetect.Evidence(0.7, "a part of the work", 30, 100, False, geometry)


def test_the_match_page_outlines_the_matched_region_and_says_how_much_was_found(client) -> None:  # type: ignore[no-untyped-def]
    reviewer = User.objects.create_superuser("reviewer", password="pw-review-1")
    client.force_login(reviewer)
    match = _pending_match()
    signals = copyright_services._evidence_signals(_half_of_the_work_in_the_upload())
    geometry = signals["geometry"]
    assert isinstance(geometry, dict)
    assert geometry["work_box"] == pytest.approx([0, 0, 0.5, 1], abs=0.01)
    assert geometry["upload_box"] == pytest.approx([0, 0, 1, 1], abs=0.01)
    assert len(geometry["pairs"]) == copyright_services.EVIDENCE_PAIRS
    assert all(v == round(v, 3) and 0 <= v <= 1 for pair in geometry["pairs"] for v in pair)
    CopyMatch.objects.filter(pk=match.pk).update(signals=signals)

    page = client.get(reverse("gallery:copyright_match", args=[match.pk])).content.decode()
    outlines = re.findall(r'<polygon class="evidence-region" points="([^"]+)"', page)
    assert len(outlines) == 2  # on the work and on the upload
    work_outline = np.array([[float(v) for v in p.split(",")] for p in outlines[0].split()])
    assert work_outline.max(axis=0) == pytest.approx([0.5, 1.0], abs=0.01)  # the left half of the work
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page))
    assert "The protected work was found in the upload, covering 100 % of it; 50 % of the work appears there." in text
    assert "Show keypoint correspondences" in page and "gallery/evidence.js" in page
    assert page.count("<img ") == 2  # each picture once

    # A match recorded before the evidence had geometry: the pictures, no outline, no button.
    old = _pending_match("old.jpg", seed=2)
    page = client.get(reverse("gallery:copyright_match", args=[old.pk])).content.decode()
    assert "evidence-region" not in page and "Show keypoint correspondences" not in page
    assert page.count("<img ") == 2 and "perceptual hash" in page


def test_the_catalogs_keypoint_index_is_saved_loaded_back_and_appended_to(
    settings, monkeypatch, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    from gallery.vision import localfeatures

    settings.COPYRIGHT = {**settings.COPYRIGHT, "INDEX_SAVE_EVERY": 1}
    monkeypatch.setattr(localfeatures, "TRAIN_AT", 300)  # compressed codes from the second image on
    with django_capture_on_commit_callbacks(execute=True):
        first = [_upload(photo_bytes(seed=s, color=(30 * s, 120, 90)), f"k{s}.jpg") for s in range(3)]
    stored = sum(ImageKeypoints.objects.values_list("count", flat=True))
    index = copyright_selectors.catalog_keypoints.get()
    assert index.trained and len(index) == stored  # every descriptor once, however it was built
    assert (Path(settings.COPYRIGHT["INDEX_DIR"]) / "catalog-keypoints-v1" / "index.faiss").is_file()

    # A new process loads the saved file instead of reading and training again...
    copyright_selectors.catalog_keypoints.clear()
    monkeypatch.setattr(localfeatures.CatalogKeypointIndex, "_train", lambda self, new: pytest.fail("retrained"))
    with django_capture_on_commit_callbacks(execute=True):
        later = _upload(photo_bytes(seed=9, color=(10, 10, 200)), "later.jpg")
    index = copyright_selectors.catalog_keypoints.get()
    # ...and adds only the rows stored since.
    assert len(index) == stored + ImageKeypoints.objects.get(image=later).count
    assert index.images == len(first) + 1
