"""The reviewer's work on the pages: decisions as state transitions under a lock, reopening,
the queue's navigation and bulk dismissal, who sees the way in, and an audit trail that
outlives deleted works and uploads."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth.models import Group, User
from django.urls import reverse

from gallery.catalog import services as catalog_services
from gallery.catalog.models import Image
from gallery.copyright import services as copyright_services
from gallery.copyright.models import CopyMatch, MatchDecision, ProtectedWork
from tests.conftest import photo_bytes

pytestmark = pytest.mark.django_db


def _file(data: bytes, name: str = "photo.jpg") -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


def _work(seed: int, *, title: str = "Harbour", holder: str = "Sea Pictures") -> ProtectedWork:
    return copyright_services.protected_work_register(
        file=_file(photo_bytes(seed=100 + seed, color=(30, 90, 160))), title=title, rights_holder=holder, queue=False
    )


def _match(seed: int, *, work: ProtectedWork | None = None, score: float = 0.9) -> CopyMatch:
    work = work or _work(seed)
    image = catalog_services.image_create(
        file=_file(photo_bytes(seed=seed), f"upload-{seed}.jpg"), original_name=f"upload-{seed}.jpg", queue=False
    )
    return CopyMatch.objects.create(work=work, image=image, score=score, signals={}, found_by="upload")


@pytest.fixture
def reviewer(settings) -> User:  # type: ignore[no-untyped-def]
    user = User.objects.create_user("reviewer", password="pw-reviewer-1")
    user.groups.add(Group.objects.get_or_create(name=settings.IMAGESEARCH["COPYRIGHT_GROUP"])[0])
    return user


@pytest.fixture
def rc(client, reviewer):  # type: ignore[no-untyped-def]
    client.force_login(reviewer)
    return client


def _decide(client, match: CopyMatch, **data: str):  # type: ignore[no-untyped-def]
    return client.post(reverse("gallery:copyright_decide", args=[match.pk]), data)


def test_the_match_page_offers_real_buttons_for_each_decision(rc) -> None:  # type: ignore[no-untyped-def]
    match = _match(1)
    html = rc.get(reverse("gallery:copyright_match", args=[match.pk])).content.decode()
    for value, label in (("confirm", "Confirm copy"), ("dismiss", "Dismiss"), ("note", "Add note")):
        assert re.search(rf'<button type="submit" name="action" value="{value}"[^>]*>{label}</button>', html), value
    assert 'name="seen_status" value="pending"' in html
    assert 'name="action" value="reopen"' not in html
    rc.post(reverse("gallery:copyright_decide", args=[match.pk]), {"action": "dismiss", "seen_status": "pending"})
    html = rc.get(reverse("gallery:copyright_match", args=[match.pk])).content.decode()
    assert 'name="action" value="reopen"' in html and 'value="confirm"' not in html


def test_a_decision_taken_meanwhile_is_not_overwritten(rc, reviewer) -> None:  # type: ignore[no-untyped-def]
    match = _match(1)
    # Two reviewers opened the page while it was pending; the first confirms and hides.
    copyright_services.match_decide(
        match_id=match.pk, action="confirm", decided_by=reviewer, seen_status="pending", hide_upload=True
    )
    response = _decide(rc, match, action="dismiss", seen_status="pending", note="looks fine")
    assert response.status_code == 409
    assert "changed while you were looking" in response.content.decode() and "confirmed by reviewer" in response.content.decode()
    match.refresh_from_db()
    assert match.status == CopyMatch.Status.CONFIRMED
    assert Image.objects.get(pk=match.image_id).visibility == Image.Visibility.HIDDEN
    assert list(MatchDecision.objects.values_list("action", flat=True)) == ["confirm"]


def test_a_decided_match_changes_only_through_reopen_with_its_own_entry(rc, reviewer) -> None:  # type: ignore[no-untyped-def]
    match = _match(1)
    _decide(rc, match, action="confirm", seen_status="pending", hide_upload="on")
    image = Image.objects.get(pk=match.image_id)
    assert image.visibility == Image.Visibility.HIDDEN and "Harbour" in image.visibility_reason
    # Confirming again, or dismissing a confirmed match, is refused.
    for action in ("confirm", "dismiss"):
        response = _decide(rc, match, action=action, seen_status="confirmed")
        assert response.status_code == 400 and "reopen it first" in response.content.decode()
    assert _decide(rc, match, action="reopen", seen_status="confirmed").status_code == 400  # needs a reason
    assert _decide(rc, match, action="reopen", seen_status="confirmed", note="the licence was shown").status_code == 302
    match.refresh_from_db()
    assert match.status == CopyMatch.Status.PENDING and match.decided_at is None
    # Dismissing after the reopen puts the upload back in the gallery, and says so.
    _decide(rc, match, action="dismiss", seen_status="pending", note="licensed")
    image.refresh_from_db()
    assert image.visibility == Image.Visibility.PUBLISHED and image.visibility_reason == ""
    history = list(MatchDecision.objects.order_by("id").values_list("action", "status_before", "published_upload"))
    assert history == [("confirm", "pending", False), ("reopen", "confirmed", False), ("dismiss", "pending", True)]
    html = rc.get(reverse("gallery:copyright_match", args=[match.pk])).content.decode()
    assert "Reopened" in html and "upload back in the gallery" in html


def test_next_and_previous_pending_keep_the_queue_filters(rc, reviewer) -> None:  # type: ignore[no-untyped-def]
    ours = _work(1, holder="Ada Photo")
    theirs = _work(2, holder="Other Press")
    a, b, c = (_match(10 + i, work=ours) for i in range(3))  # newest first: c, b, a
    _match(20, work=theirs)
    query = "?rights_holder=Ada+Photo"
    html = rc.get(reverse("gallery:copyright_match", args=[b.pk]) + query).content.decode()
    assert f'href="/copyright/matches/{a.pk}/{query}" rel="next"' in html
    assert f'href="/copyright/matches/{c.pk}/{query}" rel="prev"' in html
    assert "3 pending" in html
    # Deciding keeps the filters: back on the same match, whose neighbours are still there.
    html_form = f'action="/copyright/matches/{b.pk}/decide/{query}"'
    assert html_form in html
    response = rc.post(reverse("gallery:copyright_decide", args=[b.pk]) + query, {"action": "dismiss", "seen_status": "pending"})
    assert response["Location"] == f"/copyright/matches/{b.pk}/{query}"
    html = rc.get(response["Location"]).content.decode()
    assert f'/copyright/matches/{a.pk}/{query}" rel="next"' in html and "2 pending" in html
    assert f'href="/copyright/{query}"' in html  # back to the filtered queue


def test_bulk_dismiss_from_the_queue_records_a_note_on_each(rc, reviewer) -> None:  # type: ignore[no-untyped-def]
    first, second, third = _match(1), _match(2), _match(3)
    copyright_services.match_decide(match_id=third.pk, action="confirm", decided_by=reviewer, seen_status="pending")
    url = reverse("gallery:copyright_dismiss") + "?status=pending"
    response = rc.post(url, {"matches": [first.pk, second.pk, third.pk], "note": "our own stock photos"}, follow=True)
    assert response.redirect_chain[-1][0] == "/copyright/?status=pending"
    text = response.content.decode()
    assert "Dismissed 2 matches." in text and "1 had been decided meanwhile" in text
    statuses = dict(CopyMatch.objects.values_list("pk", "status"))
    assert statuses == {first.pk: "dismissed", second.pk: "dismissed", third.pk: "confirmed"}
    notes = set(MatchDecision.objects.filter(action="dismiss").values_list("note", flat=True))
    assert notes == {"our own stock photos"}
    empty = rc.post(reverse("gallery:copyright_dismiss"), {"note": "x"}, follow=True)
    assert "Tick the matches to dismiss first." in empty.content.decode()


def test_the_reviewer_group_comes_from_the_setting(client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.IMAGESEARCH = {**settings.IMAGESEARCH, "COPYRIGHT_GROUP": "Rights team"}
    member = User.objects.create_user("member", password="pw-member-1")
    member.groups.add(Group.objects.create(name="Rights team"))
    outsider = User.objects.create_user("outsider", password="pw-outsider-1")
    outsider.groups.add(Group.objects.get_or_create(name="Copyright staff")[0])
    client.force_login(outsider)
    assert client.get(reverse("gallery:copyright_queue")).status_code == 403
    assert "Copyright review" not in client.get(reverse("gallery:index")).content.decode()
    client.force_login(member)
    assert client.get(reverse("gallery:copyright_queue")).status_code == 200
    nav = client.get(reverse("gallery:index")).content.decode()
    assert '<a href="/copyright/">Copyright review</a>' in nav and ">Admin</a>" not in nav


def test_staff_see_the_admin_in_the_navigation(client) -> None:  # type: ignore[no-untyped-def]
    client.force_login(User.objects.create_user("editor", password="pw-editor-1", is_staff=True))
    nav = client.get(reverse("gallery:index")).content.decode()
    assert '<a href="/admin/">Admin</a>' in nav and "Copyright review" not in nav
    client.logout()
    nav = client.get(reverse("gallery:index")).content.decode()
    assert "/admin/" not in nav and "Copyright review" not in nav


def test_deleting_a_work_or_an_upload_keeps_the_decisions_and_removes_the_files(
    rc, reviewer, media_files, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    kept = _match(1)
    gone_work = _match(2)
    for m in (kept, gone_work):
        copyright_services.match_decide(match_id=m.pk, action="confirm", decided_by=reviewer, seen_status="pending", note="copy")
    work_file = gone_work.work.file.name
    assert any(p.name == work_file.rsplit("/", 1)[-1] for p in media_files())
    with django_capture_on_commit_callbacks(execute=True):
        assert copyright_services.protected_work_delete(work_id=gone_work.work_id)
        catalog_services.images_delete(image_ids=[kept.image_id])
    assert not CopyMatch.objects.exists()
    assert not any(p.name == work_file.rsplit("/", 1)[-1] for p in media_files())  # the private original is gone
    decisions = MatchDecision.objects.order_by("id")
    assert [(d.work_title, d.rights_holder, d.match_id) for d in decisions] == [("Harbour", "Sea Pictures", None)] * 2
    assert all(d.image_title.startswith("upload-") and len(d.work_checksum) == 64 for d in decisions)
    log = rc.get(reverse("gallery:copyright_decisions")).content.decode()
    assert log.count("match deleted with its work or upload") == 2
    thumb = rc.get(reverse("gallery:copyright_decision_thumbnail", args=[decisions[0].pk, "work"]))
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"
    assert rc.get(reverse("gallery:copyright_decision_thumbnail", args=[decisions[0].pk, "upload"])).content[:2] == b"\xff\xd8"
