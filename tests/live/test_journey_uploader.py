"""The uploader's journey in real headless Chromium against the whole product
(tests/support/browser.py): sign in, upload, watch the photos become ready, search by
photo, compare and zoom, "more like this", My uploads; then one photo is hidden after a
copyright review and its uploader, the gallery and a stranger each see what they should.
Screenshots land in test-artifacts/browser/journey-*.png."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from benchmarks.livestack import ROOT, Stack
from tests.support.browser import ARTIFACTS, READY_TIMEOUT_MS, offsite_requests, sign_in

pytestmark = pytest.mark.slow

UPLOADER = ("ulla", "a long uploader password")
REASON = "Hidden after copyright review: matches “Swallowtail at dawn” by Ann Example"

# Where the middle of what a zoom pane shows lies on its picture, as fractions of the picture.
VISIBLE_CENTRE = """img => {
  const pane = img.parentElement, b = pane.getBoundingClientRect(), r = img.getBoundingClientRect();
  const left = Math.max(b.left + pane.clientLeft, r.left), right = Math.min(b.left + pane.clientLeft + pane.clientWidth, r.right);
  const top = Math.max(b.top + pane.clientTop, r.top), bottom = Math.min(b.top + pane.clientTop + pane.clientHeight, r.bottom);
  return [((left + right) / 2 - r.left) / r.width, ((top + bottom) / 2 - r.top) / r.height];
}"""


def _hide(stack: Stack, image_id: int, reason: str) -> None:
    """What a copyright reviewer's decision does to the photo (that flow is tested elsewhere)."""
    code = (
        "from gallery.catalog import services as catalog_services; "
        f"assert catalog_services.images_set_visibility(image_ids=[{image_id}], visibility='hidden', reason={reason!r}) == 1"
    )
    subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=stack.env, check=True)


def _nav(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True).click()


def _picture_under(img: Locator, x: float, y: float) -> tuple[float, float]:
    box = img.bounding_box()
    assert box is not None
    return (x - box["x"]) / box["width"], (y - box["y"]) / box["height"]


def _check_compare_zoom(page: Page, results: Locator, result_name: str) -> None:
    """Zooming keeps the middle of the view still (buttons) or the point under the pointer (Ctrl + wheel)."""
    results.first.get_by_role("button", name=f"Compare with {result_name}").click()
    dialog = page.get_by_role("dialog", name="Compare")
    result_img = dialog.get_by_role("img", name=re.compile(f"^Result: {re.escape(result_name)}"))
    expect(result_img).to_be_visible()
    page.wait_for_function("() => [...document.querySelectorAll('dialog img')].every(i => i.complete && i.naturalWidth)")
    centre = result_img.evaluate(VISIBLE_CENTRE)
    assert centre == pytest.approx([0.5, 0.5], abs=0.01)  # at 1× the whole picture shows
    dialog.get_by_role("button", name="Zoom in").click()
    dialog.get_by_role("button", name="Zoom in").click()
    expect(dialog.locator("output")).to_have_text("2.0×")
    pane = result_img.locator("xpath=..")
    assert pane.evaluate("p => p.scrollWidth > p.clientWidth * 1.5")  # really zoomed in
    assert result_img.evaluate(VISIBLE_CENTRE) == pytest.approx([0.5, 0.5], abs=0.02)
    page.screenshot(path=ARTIFACTS / "journey-compare-zoomed.png")

    dialog.get_by_role("button", name="Zoom out").click()
    dialog.get_by_role("button", name="Zoom out").click()
    expect(dialog.locator("output")).to_have_text("1.0×")
    box = result_img.bounding_box()
    assert box is not None
    x, y = box["x"] + 0.3 * box["width"], box["y"] + 0.5 * box["height"]
    page.mouse.move(x, y)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    expect(dialog.locator("output")).not_to_have_text("1.0×")
    page.wait_for_timeout(200)  # the wheel event is handled after it is sent
    assert float(dialog.locator("output").inner_text().rstrip("×")) > 1.5
    assert _picture_under(result_img, x, y) == pytest.approx((0.3, 0.5), abs=0.02)
    # and the query side zoomed with it, about the same place
    query_img = dialog.get_by_role("img", name=re.compile("^Query: "))
    assert query_img.evaluate("i => i.getBoundingClientRect().width") > 1.5 * query_img.evaluate(
        "i => i.parentElement.clientWidth"
    ) or query_img.evaluate("i => i.getBoundingClientRect().height") > 1.5 * query_img.evaluate(
        "i => i.parentElement.clientHeight"
    )
    page.screenshot(path=ARTIFACTS / "journey-compare-pointer-zoom.png")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


def test_uploader_journey(stack: Stack, browser: Browser, butterflies: dict[str, list[Path]]) -> None:
    stack.create_user(*UPLOADER)
    mine = [butterflies["002"][0], butterflies["002"][1], butterflies["007"][0]]
    query = butterflies["002"][-1]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    offsite = offsite_requests(page, stack)

    # Sign in from the navigation; My uploads appears there and starts empty.
    sign_in(page, stack, *UPLOADER)
    _nav(page, "My uploads")
    expect(page.get_by_role("heading", name="My uploads")).to_be_visible()
    expect(page.get_by_text("You have not uploaded any photos yet.")).to_be_visible()

    # Upload three photos; they become ready in place.
    _nav(page, "Upload")
    page.get_by_label("Photos (one or many").set_input_files([str(p) for p in mine])
    page.get_by_role("button", name="Upload").click()
    queue = page.locator("[data-upload-queue] .card")
    expect(queue).to_have_count(3)
    expect(page.locator("[data-upload-queue] .card[data-status=ready]")).to_have_count(3, timeout=READY_TIMEOUT_MS)
    expect(page.get_by_text("All done.")).to_be_visible()

    # Search by photo: the same species comes first; compare it and zoom.
    _nav(page, "Search by photo")
    page.get_by_label("Query photo").set_input_files(str(query))
    page.get_by_role("button", name="Search").click()
    results = page.locator(".search-results .card")
    expect(results).to_have_count(3)
    expect(results.first.locator(".name")).to_have_text(re.compile(r"^002"))
    first_name = results.first.locator(".name").inner_text()
    page.screenshot(path=ARTIFACTS / "journey-search.png", full_page=True)
    _check_compare_zoom(page, results, first_name)

    # More like this, from a result.
    results.first.get_by_role("link", name=f"More like this {first_name}").click()
    expect(page.get_by_role("heading", name=first_name)).to_be_visible()
    similar = page.locator("#similar .card .name")
    expect(similar).to_have_count(2)
    expect(similar.first).to_have_text(re.compile(r"^002"))  # its sibling before the other species

    # My uploads: all three, newest first, ready and published.
    _nav(page, "My uploads")
    cards = page.locator(".uploads .card")
    expect(cards).to_have_count(3)
    expect(cards.locator(".status")).to_have_text(["Ready"] * 3)
    expect(cards.locator(".visibility")).to_have_text(["Published"] * 3)
    assert sorted(cards.locator(".name").all_inner_texts()) == sorted(p.name for p in mine)
    page.screenshot(path=ARTIFACTS / "journey-my-uploads.png", full_page=True)

    # A copyright review hides one of them.
    hidden = mine[2]
    card = cards.filter(has_text=hidden.name)
    hidden_id = int(card.get_attribute("data-image-id") or 0)
    _hide(stack, hidden_id, REASON)

    _nav(page, "Gallery")
    expect(page.locator(".grid .card")).to_have_count(2)
    expect(page.get_by_role("img", name=hidden.name)).to_have_count(0)

    _nav(page, "My uploads")
    expect(cards).to_have_count(3)
    expect(card.locator(".visibility")).to_have_text("Hidden")
    expect(card.locator(".hidden-reason")).to_have_text(REASON)
    expect(cards.locator(".visibility")).to_have_text(["Hidden", "Published", "Published"])
    page.screenshot(path=ARTIFACTS / "journey-my-uploads-hidden.png", full_page=True)

    card.get_by_role("link", name=hidden.name).first.click()
    expect(page.get_by_role("heading", name=hidden.name)).to_be_visible()
    expect(page.get_by_text(f"This photo is hidden from the public gallery: {REASON}")).to_be_visible()
    detail_url = page.url
    page.screenshot(path=ARTIFACTS / "journey-hidden-detail.png", full_page=True)

    # Someone else, signed in, cannot tell that it exists.
    stranger = browser.new_context()
    other = stranger.new_page()
    sign_in(other, stack)
    response = other.goto(detail_url)
    assert response is not None and response.status == 404
    expect(other.get_by_text("hidden from the public gallery")).to_have_count(0)
    expect(other.get_by_text(REASON)).to_have_count(0)
    other.goto(stack.url + "/")
    expect(other.locator(".grid .card")).to_have_count(2)
    stranger.close()

    # Empty states tell the truth: an unknown tag is not an empty catalog.
    page.goto(stack.url + "/?tag=nonexistent")
    expect(page.get_by_text("No images are tagged “nonexistent”.")).to_be_visible()
    expect(page.get_by_text("The catalog is empty")).to_have_count(0)
    page.screenshot(path=ARTIFACTS / "journey-unknown-tag.png", full_page=True)
    page.get_by_role("link", name="Show all images").click()
    expect(page.locator(".grid .card")).to_have_count(2)

    _nav(page, "Search by photo")
    page.get_by_label("Query photo").set_input_files(str(query))
    page.get_by_label("Tagged").fill("nonexistent")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No searchable images are tagged “nonexistent”.")).to_be_visible()
    expect(page.get_by_text("no searchable images yet")).to_have_count(0)
    page.screenshot(path=ARTIFACTS / "journey-search-unknown-tag.png", full_page=True)

    assert offsite == []
    page.close()
