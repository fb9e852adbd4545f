"""The browser experience in real headless Chromium, against the whole product running in
production mode (tests/support/browser.py). Screenshots land in test-artifacts/browser/."""

from __future__ import annotations

import re

import pytest
from PIL import Image as PILImage
from playwright.sync_api import Browser, expect

from benchmarks.livestack import Stack
from tests.support.browser import ARTIFACTS, READY_TIMEOUT_MS, drop, offsite_requests, sign_in

pytestmark = pytest.mark.slow


def test_upload_watch_ready_search_and_compare(stack: Stack, browser: Browser, butterflies) -> None:  # type: ignore[no-untyped-def]
    first, second, query = butterflies["001"][0], butterflies["004"][0], butterflies["004"][-1]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    offsite = offsite_requests(page, stack)
    sign_in(page, stack)
    page.goto(stack.url + "/upload/")
    expect(page.get_by_text("drag and drop photos here")).to_be_visible()

    # One photo through the file picker, one dropped on the form; both upload in place.
    page.get_by_label("Photos (one or many").set_input_files(str(first))
    page.get_by_role("button", name="Upload").click()
    drop(page, "[data-drop-zone]", second)
    cards = page.locator("[data-upload-queue] .card")
    expect(cards).to_have_count(2)
    expect(page.get_by_role("progressbar")).to_have_count(0, timeout=60_000)  # both files sent
    page.screenshot(path=ARTIFACTS / "upload-processing.png", full_page=True)

    # The statuses turn to ready without a reload: the page (and its queue) stays the same.
    page.evaluate("window.sameDocument = true")
    expect(page.locator("[data-upload-queue] .card[data-status=ready]")).to_have_count(2, timeout=READY_TIMEOUT_MS)
    assert page.evaluate("window.sameDocument") is True and page.url == stack.url + "/upload/"
    expect(cards.locator(".status")).to_have_text(["Ready", "Ready"])
    expect(cards.get_by_role("link", name="More like this")).to_have_count(2)
    expect(cards.get_by_role("img", name=first.name)).to_be_visible()
    expect(page.get_by_text("All done.")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "upload-ready.png", full_page=True)

    # A photo already in the catalog is refused in place, with a link to the existing one.
    drop(page, "[data-drop-zone]", first)
    refused = cards.nth(2)
    expect(refused.locator(".status")).to_have_text("Not added")
    expect(refused.get_by_role("alert")).to_contain_text("already in the catalog")
    expect(refused.get_by_role("link", name="View the photo already in the catalog")).to_be_visible()

    # Search with a third photo: the form posts normally; results sit beside the query.
    page.get_by_role("link", name="Search by photo").click()
    page.get_by_label("Query photo").set_input_files(str(query))
    page.get_by_label("Results").fill("5")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", name="Results for your photo")).to_be_visible()
    query_photo = page.get_by_role("img", name=f"Your query photo {query.name}")
    expect(query_photo).to_be_visible()
    # A web-sized JPEG comes back as it was sent (its metadata left out): the browser shows it whole.
    with PILImage.open(query) as sent:
        assert query_photo.evaluate("i => i.complete ? [i.naturalWidth, i.naturalHeight] : null") == list(sent.size)
    results = page.locator(".search-results .card")
    expect(results).to_have_count(2)
    expect(results.first.locator(".name")).to_have_text(second.name)  # same species first
    scores = [float(text.split()[-1]) for text in results.locator(".score").all_text_contents()]
    assert len(scores) == 2 and scores[0] >= scores[1]
    query_box = page.locator(".search-results .query").bounding_box()
    grid_box = page.locator(".search-results .grid").bounding_box()
    assert query_box and grid_box and query_box["x"] + query_box["width"] <= grid_box["x"]  # side by side
    page.screenshot(path=ARTIFACTS / "search-results.png", full_page=True)

    # The compare view: query and result side by side, zoomable, closed with Escape.
    compare = results.first.get_by_role("button", name=f"Compare with {second.name}")
    compare.click()
    dialog = page.get_by_role("dialog", name="Compare")
    expect(dialog).to_be_visible()
    query_img = dialog.get_by_role("img", name=f"Query: your photo {query.name}")
    result_img = dialog.get_by_role("img", name=re.compile(f"^Result: {re.escape(second.name)}"))
    expect(query_img).to_be_visible()
    expect(result_img).to_be_visible()
    assert dialog.locator("img").evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")
    width_before = result_img.bounding_box()["width"]  # type: ignore[index]
    dialog.get_by_role("button", name="Zoom in").click()
    dialog.get_by_role("button", name="Zoom in").click()
    expect(dialog.locator("output")).to_have_text("2.0×")
    assert result_img.bounding_box()["width"] > 1.9 * width_before  # type: ignore[index]
    page.screenshot(path=ARTIFACTS / "compare-zoomed.png")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(compare).to_be_focused()

    # The gallery lists both, each with "more like this".
    page.get_by_role("link", name="Gallery", exact=True).click()
    expect(page.locator(".grid .card")).to_have_count(2)
    expect(page.get_by_role("link", name=re.compile("^More like this"))).to_have_count(2)
    page.get_by_role("link", name=f"More like this {second.name}").click()
    expect(page.get_by_role("heading", name="More like this")).to_be_visible()
    expect(page.locator("#similar .card .name")).to_have_text([first.name])
    assert offsite == []
    page.close()


def test_static_files_are_hashed_and_served_in_production(stack: Stack, browser: Browser) -> None:
    page = browser.new_page()
    page.goto(stack.url + "/")
    href = page.locator("link[rel=stylesheet]").get_attribute("href")
    assert href and re.fullmatch(r"/static/gallery/site\.[0-9a-f]{12}\.css", href), href
    response = page.request.get(stack.url + href)
    assert response.status == 200 and "max-age=315360000" in response.headers["cache-control"]
    assert page.evaluate("getComputedStyle(document.querySelector('.top')).borderBottomStyle") == "solid"
    page.close()


@pytest.mark.parametrize("docs", ["docs", "redoc"])
def test_api_docs_render_offline(stack: Stack, browser: Browser, docs: str) -> None:
    page = browser.new_page()
    offsite = offsite_requests(page, stack)
    page.goto(stack.url + f"/api/v1/{docs}/")
    expect(page.get_by_text("Image search API").first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("/api/v1/search/").first).to_be_visible()
    page.wait_for_load_state("networkidle")
    page.screenshot(path=ARTIFACTS / f"api-{docs}.png", full_page=docs == "docs")
    assert offsite == []
    page.close()


def test_phone_sized_screen_and_keyboard(stack: Stack, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    for path in ("/", "/upload/", "/search/"):
        page.goto(stack.url + path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375, path
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#main$"))  # the jump lands a moment after the key
    page.screenshot(path=ARTIFACTS / "phone-search.png", full_page=True)
    page.close()


def test_upload_and_search_work_without_javascript(stack: Stack, browser: Browser, butterflies) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    sign_in(page, stack)
    page.goto(stack.url + "/upload/")
    expect(page.get_by_text("drag and drop photos here")).to_be_hidden()
    page.get_by_label("Photos (one or many").set_input_files([str(butterflies["009"][0]), str(butterflies["009"][1])])
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("heading", name="Your upload")).to_be_visible()
    assert "/uploads/?ids=" in page.url
    expect(page.locator(".grid .card")).to_have_count(2)
    page.goto(stack.url + "/search/")
    page.get_by_label("Query photo").set_input_files(str(butterflies["001"][-1]))
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", name="Results for your photo")).to_be_visible()
    expect(page.locator(".search-results .card").first).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("^Compare"))).to_have_count(0)
    page.screenshot(path=ARTIFACTS / "no-javascript-search.png", full_page=True)
    context.close()
