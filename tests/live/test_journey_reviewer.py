"""The copyright reviewer's journey in a real browser, against the whole product (the web server,
a real worker): from the navigation to the queue, register a work, see uploaded copies
queued, open one, confirm it and hide the upload by clicking, see the history; dismiss
another with the keyboard; the hidden upload leaves the public gallery. A work registered
after its copy was uploaded finds that copy."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageOps
from playwright.sync_api import Browser, Page, expect

from benchmarks import attacks
from benchmarks.livestack import Stack
from tests.support.browser import ARTIFACTS, READY_TIMEOUT_MS, VISITOR, sign_in

pytestmark = pytest.mark.slow

REVIEWER = ("rights-desk", "a long reviewer password")


def _jpeg(image: PILImage.Image, path: Path) -> Path:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=88)
    path.write_bytes(out.getvalue())
    return path


def _upload(page: Page, stack: Stack, paths: list[Path]) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Upload", exact=True).click()
    page.get_by_label("Photos (one or many").set_input_files([str(p) for p in paths])
    page.get_by_role("button", name="Upload").click()
    ready = page.locator("[data-upload-queue] .card[data-status=ready]")
    expect(ready).to_have_count(len(paths), timeout=READY_TIMEOUT_MS)


def _register(page: Page, work: Path, title: str) -> None:
    """Register a protected work by its form, from a copyright page."""
    page.get_by_role("link", name="Register a work").click()
    page.get_by_label("Protected image").set_input_files(str(work))
    page.get_by_label("Title").fill(title)
    page.get_by_label("Rights holder").fill("Lepido Press")
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_text(f"Registered “{title}”")).to_be_visible()


def _queue_rows(page: Page, count: int, timeout: float = 120) -> None:
    """The queue fills as the worker checks uploads: look again until the matches are listed."""
    deadline = time.monotonic() + timeout
    while page.locator("tr[data-match-id]").count() < count and time.monotonic() < deadline:
        time.sleep(1)
        page.reload()
    expect(page.locator("tr[data-match-id]")).to_have_count(count)


def test_reviewer_registers_a_work_confirms_one_copy_and_dismisses_another(
    stack: Stack, browser: Browser, butterflies, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    stack.create_user(*REVIEWER, groups=("Copyright staff",))
    work_path = butterflies["003"][0]
    original = PILImage.open(work_path)
    w, h = original.size
    crop = _jpeg(original.crop((w // 5, h // 6, w, h)), tmp_path / "holiday-snap.jpg")
    mirrored = _jpeg(ImageOps.mirror(original), tmp_path / "mirrored-snap.jpg")
    unrelated = butterflies["007"][0]

    reviewer = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    sign_in(reviewer, stack, *REVIEWER)
    # The way in is in the navigation; ordinary visitors do not see it.
    reviewer.get_by_role("navigation", name="Main").get_by_role("link", name="Copyright review").click()
    expect(reviewer.get_by_role("heading", name="Copyright review queue")).to_be_visible()
    expect(reviewer.get_by_text("No matches here.")).to_be_visible()
    _register(reviewer, work_path, "Morning Admiral")
    deadline = time.monotonic() + 120
    while reviewer.get_by_text("Monitored").count() == 0 and time.monotonic() < deadline:
        time.sleep(1)
        reviewer.reload()
    expect(reviewer.get_by_text("Monitored")).to_be_visible()

    # An ordinary user uploads a crop and a mirror image of the work, and an unrelated photo.
    uploader = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    sign_in(uploader, stack, *VISITOR)
    expect(uploader.get_by_role("link", name="Copyright review")).to_have_count(0)
    _upload(uploader, stack, [crop, mirrored, unrelated])

    reviewer.get_by_role("link", name="Review queue").click()
    reviewer.get_by_label("Status").select_option("pending")
    reviewer.get_by_role("button", name="Filter").click()
    _queue_rows(reviewer, 2)
    expect(reviewer.locator("tr[data-match-id]").filter(has_text=unrelated.name)).to_have_count(0)
    reviewer.screenshot(path=ARTIFACTS / "review-queue.png", full_page=True)

    # Open the crop's match: both pictures, the signals, the decision buttons.
    reviewer.get_by_role("link", name="Review holiday-snap.jpg against Morning Admiral").click()
    expect(reviewer.get_by_role("heading", name="Possible copy of “Morning Admiral”")).to_be_visible()
    expect(reviewer.get_by_role("img", name="Protected work Morning Admiral")).to_be_visible()
    expect(reviewer.get_by_role("img", name="Suspect upload holiday-snap.jpg")).to_be_visible()
    expect(reviewer.get_by_role("heading", name="Signals")).to_be_visible()
    reviewer.screenshot(path=ARTIFACTS / "review-match.png", full_page=True)
    reviewer.get_by_label("Hide the upload from the public gallery").check()
    reviewer.get_by_label("Why").fill("Cropped from the licensed print")
    reviewer.get_by_role("button", name="Confirm copy").click()
    expect(reviewer.get_by_text("Confirmed, upload hidden: “Morning Admiral”.")).to_be_visible()
    expect(reviewer.locator("#match-status")).to_have_text("Confirmed")
    history = reviewer.locator("ol.history li")
    expect(history).to_have_count(1)
    expect(history.first).to_contain_text("rights-desk · Confirmed, upload hidden: “Cropped from the licensed print”")
    expect(reviewer.get_by_role("button", name="Reopen")).to_be_visible()
    reviewer.screenshot(path=ARTIFACTS / "review-confirmed.png", full_page=True)

    # The next pending match is one click (or key) away; the queue's filter came along.
    reviewer.get_by_role("link", name="Next pending →").or_(reviewer.get_by_role("link", name="← Previous pending")).click()
    assert "status=pending" in reviewer.url
    expect(reviewer.get_by_role("img", name="Suspect upload mirrored-snap.jpg")).to_be_visible()
    reviewer.keyboard.press("d")
    expect(reviewer.locator("#match-status")).to_have_text("Dismissed")
    expect(reviewer.locator("ol.history li").first).to_contain_text("Dismissed")
    assert "status=pending" in reviewer.url
    reviewer.get_by_role("link", name="Back to the queue").click()
    expect(reviewer.get_by_text("No matches here.")).to_be_visible()  # nothing pending is left

    # The decision log lists both decisions.
    reviewer.get_by_role("link", name="Decision log").click()
    expect(reviewer.locator("tr[data-decision-id]")).to_have_count(2)
    reviewer.screenshot(path=ARTIFACTS / "review-decision-log.png", full_page=True)

    # The hidden upload has left the public gallery; the dismissed one stays.
    uploader.get_by_role("link", name="Gallery", exact=True).click()
    names = uploader.locator(".grid .card .name")
    expect(names).to_have_count(2)
    expect(names.filter(has_text="holiday-snap.jpg")).to_have_count(0)
    expect(names.filter(has_text="mirrored-snap.jpg")).to_have_count(1)

    # Its owner finds it on "My uploads", hidden, with the reviewer's reason.
    uploader.get_by_role("navigation", name="Main").get_by_role("link", name="My uploads").click()
    hidden = uploader.locator(".card").filter(has_text="holiday-snap.jpg")
    expect(hidden.locator(".visibility")).to_have_text("Hidden")
    expect(hidden.locator(".hidden-reason")).to_have_text(
        "Hidden after copyright review: a copy of “Morning Admiral” (Lepido Press)."
    )
    expect(uploader.locator(".card").filter(has_text="mirrored-snap.jpg").locator(".visibility")).to_have_text("Published")
    uploader.screenshot(path=ARTIFACTS / "review-owner-my-uploads.png", full_page=True)


def test_a_work_registered_after_its_copy_was_uploaded_finds_the_old_copy(
    stack: Stack, browser: Browser, butterflies, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A poster with the work pasted small into another photo is uploaded first; the
    work is registered afterwards, and the catalog scan queues the poster for review."""
    archivist = ("archive-desk", "another long reviewer password")
    stack.create_user(*archivist, groups=("Copyright staff",))
    work_path = butterflies["005"][0]
    work = PILImage.open(work_path).convert("RGB")
    backdrop = PILImage.open(butterflies["008"][0]).convert("RGB")
    poster = _jpeg(attacks.paste_small(work, backdrop, np.random.default_rng(4)), tmp_path / "swallowtail-poster.jpg")

    uploader = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    sign_in(uploader, stack, *VISITOR)
    _upload(uploader, stack, [poster])

    reviewer = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    sign_in(reviewer, stack, *archivist)
    reviewer.get_by_role("navigation", name="Main").get_by_role("link", name="Copyright review").click()
    _register(reviewer, work_path, "Swallowtail study")

    reviewer.get_by_role("link", name="Review queue").click()
    reviewer.get_by_label("Status").select_option("pending")
    reviewer.get_by_role("button", name="Filter").click()
    deadline = time.monotonic() + 120
    rows = reviewer.locator("tr[data-match-id]").filter(has_text="swallowtail-poster.jpg")
    while rows.count() == 0 and time.monotonic() < deadline:
        time.sleep(1)
        reviewer.reload()
    expect(rows).to_have_count(1)
    reviewer.get_by_role("link", name="Review swallowtail-poster.jpg against Swallowtail study").click()
    expect(reviewer.get_by_role("heading", name="Possible copy of “Swallowtail study”")).to_be_visible()
    expect(reviewer.locator(".found-by")).to_have_text("found in the catalog when the work was registered")
    reviewer.screenshot(path=ARTIFACTS / "review-old-copy.png", full_page=True)
