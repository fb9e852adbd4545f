"""A curator's afternoon in the admin, in real Chromium against the whole product
(tests/support/browser.py): sign in, filter, bulk-tag, bulk-hide, bulk-delete through
the confirmation page, resolve a near-duplicate group and look at the catalog jobs.
Screenshots land in test-artifacts/browser/."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image as PILImage
from playwright.sync_api import Browser, Page, expect

from benchmarks.livestack import ROOT, Stack
from tests.support.browser import ARTIFACTS

pytestmark = pytest.mark.slow

CURATOR = ("curator", "a long curator password")


def _import(stack: Stack, directory: Path, *extra: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "import_images", str(directory), "--no-progress", *extra],
        cwd=ROOT,
        env=stack.env,
        check=True,
        capture_output=True,
    )


def _stored_files(stack: Stack) -> set[Path]:
    var = Path(stack.env["IMAGESEARCH_VAR_DIR"])
    return {p for p in var.rglob("*") if p.is_file() and p.parent.name != "static" and "static" not in p.parts}


def _media_files(stack: Stack) -> set[Path]:
    return {p for p in _stored_files(stack) if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")}


def _tick(page: Page, *names: str) -> None:
    for name in names:
        page.get_by_role("checkbox", name=f"Select this object for an action - {name}").check()


def _act(page: Page, action: str) -> None:
    page.get_by_label("Action:").select_option(label=action)
    page.get_by_role("button", name="Go").click()


def _rows(page: Page) -> list[str]:
    return [t.strip() for t in page.locator("#result_list tbody .field-__str__").all_text_contents()]


@pytest.fixture(scope="module")
def catalog(stack: Stack, butterflies, tmp_path_factory) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """Four photos tagged by species, then one more photo and, imported later, a smaller
    re-encoded copy of it (the near-duplicate)."""
    first = tmp_path_factory.mktemp("import-first")
    groups = list(butterflies.values())
    names = {"admiral": [p.name for p in groups[0][:2]], "peacock": [p.name for p in groups[1][:2]]}
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["filename", "tags"])
    for tag, files in names.items():
        for src in (p for g in groups[:2] for p in g if p.name in files):
            (first / src.name).write_bytes(src.read_bytes())
            writer.writerow([src.name, tag])
    original = groups[2][0]
    (first / "original.jpg").write_bytes(original.read_bytes())
    (first / "tags.csv").write_text(rows.getvalue())
    _import(stack, first, "--csv", str(first / "tags.csv"))
    second = tmp_path_factory.mktemp("import-copy")
    with PILImage.open(original) as im:
        small = im.convert("RGB").resize((im.width // 2, im.height // 2), PILImage.Resampling.LANCZOS)
    small.save(second / "copy-of-original.jpg", quality=60)
    _import(stack, second)
    with PILImage.open(original) as im:
        names["original-size"] = [f"{im.width}×{im.height}"]
    return names


def test_a_curator_tags_hides_deletes_resolves_duplicates_and_checks_jobs(
    stack: Stack, browser: Browser, catalog: dict[str, list[str]]
) -> None:
    stack.create_user(*CURATOR, superuser=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    admirals, peacocks = catalog["admiral"], catalog["peacock"]

    # Sign in through the admin's own login page, then reach the image list by links.
    page.goto(stack.url + "/admin/")
    page.get_by_label("Username:").fill(CURATOR[0])
    page.get_by_label("Password:").fill(CURATOR[1])
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Images", exact=True).click()
    expect(page.locator("#result_list tbody tr")).to_have_count(6)

    # A visitor's search page offers the import's tags (written by the import's own process).
    visitor = browser.new_page(viewport={"width": 1200, "height": 900})
    visitor.goto(stack.url + "/")
    visitor.get_by_role("link", name="Search by photo").click()
    tagged = visitor.get_by_label("Tagged (all of)")
    expect(tagged.locator("option")).to_have_text(["admiral", "peacock"])

    # Filter by a tag from the import, then tag the filtered images in bulk.
    page.locator("#changelist-filter").get_by_role("link", name="peacock").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    assert sorted(_rows(page)) == sorted(peacocks)
    _tick(page, *peacocks)
    _act(page, "Add tags to selected images")
    expect(page.get_by_role("heading", name="Add tags to 2 images")).to_be_visible()
    expect(page.locator(".selected-images img")).to_have_count(2)
    page.get_by_label("Tags:").fill("x" * 70)
    page.get_by_role("button", name="Add tags").click()
    expect(page.get_by_text("longer than 64 characters")).to_be_visible()  # bad input: the form again, nothing saved
    page.get_by_label("Tags:").fill("Favourite, spring show")
    page.screenshot(path=ARTIFACTS / "curator-add-tags.png", full_page=True)
    page.get_by_role("button", name="Add tags").click()
    expect(page.locator(".messagelist")).to_contain_text("2 images tagged favourite, spring show.")
    expect(page.locator("#result_list tbody tr")).to_have_count(2)  # the filter is kept
    expect(page.locator(".tag-list").first).to_have_text("favourite, peacock, spring show")
    page.screenshot(path=ARTIFACTS / "curator-tagged.png", full_page=True)
    # The visitor's next search page offers the new tags at once.
    visitor.reload()
    expect(tagged.locator("option")).to_have_text(["admiral", "favourite", "peacock", "spring show"])
    visitor.screenshot(path=ARTIFACTS / "visitor-search-new-tags.png", full_page=True)
    # In the gallery, a tag on an image's card shows the images that carry it.
    visitor.get_by_role("link", name="Gallery", exact=True).click()
    visitor.locator(".card a.tag", has_text="spring show").first.click()
    expect(visitor.locator(".card")).to_have_count(2)
    expect(visitor.locator(".card a.tag", has_text="spring show")).to_have_count(2)
    assert "tag=spring%20show" in visitor.url
    visitor.screenshot(path=ARTIFACTS / "visitor-gallery-by-tag.png", full_page=True)

    # Hide one of them, then find it with the visibility filter.
    page.get_by_role("link", name=re.compile("Clear all filters")).click()
    _tick(page, peacocks[0], admirals[0])
    _act(page, "Hide selected images")
    expect(page.locator(".messagelist")).to_contain_text("2 images hidden.")
    page.locator("#changelist-filter").get_by_role("link", name="Hidden").click()
    assert sorted(_rows(page)) == sorted([peacocks[0], admirals[0]])
    page.screenshot(path=ARTIFACTS / "curator-hidden.png", full_page=True)
    page.get_by_role("link", name=re.compile("Clear all filters")).click()
    expect(page.locator("#result_list tbody tr")).to_have_count(6)

    # Delete: a confirmation page first; cancelling removes nothing.
    files_before = _media_files(stack)
    _tick(page, admirals[1])
    _act(page, "Delete selected images (files and vectors too)")
    expect(page.get_by_role("heading", name="Delete 1 image?")).to_be_visible()
    expect(page.get_by_text("the original file, its display copy and its thumbnail")).to_be_visible()
    thumb = page.locator(".selected-images img")
    expect(thumb).to_have_count(1)
    thumb_url = stack.url + thumb.get_attribute("src")  # type: ignore[operator]
    page.screenshot(path=ARTIFACTS / "curator-delete-confirm.png", full_page=True)
    page.get_by_role("link", name="No, take me back").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(6)
    assert _media_files(stack) == files_before
    _tick(page, admirals[1])
    _act(page, "Delete selected images (files and vectors too)")
    page.get_by_role("button", name="Yes, delete 1 image").click()
    expect(page.locator(".messagelist")).to_contain_text("1 image deleted.")
    expect(page.locator("#result_list tbody tr")).to_have_count(5)
    assert admirals[1] not in _rows(page)
    deadline = time.monotonic() + 10
    while len(files_before - _media_files(stack)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(files_before - _media_files(stack)) == 3  # original, display copy, thumbnail
    assert page.request.get(thumb_url).status == 404

    # Near-duplicates: run the job from its page; the original is suggested, not the copy.
    page.get_by_role("link", name="Near-duplicates").click()
    page.get_by_role("button", name="Find near-duplicates now").click()
    deadline = time.monotonic() + 120
    while page.locator(".duplicate-group").count() == 0:
        assert time.monotonic() < deadline, "the near-duplicate job found nothing\n" + stack.log_tail()
        time.sleep(1)
        page.reload()
    group = page.locator(".duplicate-group")
    expect(group).to_have_count(1)
    expect(page.locator(".job").first).to_contain_text("1 group of near-duplicates among 5 images")
    expect(group.get_by_role("radio", name="Keep original.jpg")).to_be_checked()
    expect(group.get_by_role("radio", name="Keep copy-of-original.jpg")).not_to_be_checked()
    expect(group.locator(".suggestion")).to_contain_text(f"Suggested: largest ({catalog['original-size'][0]}), uploaded first")
    page.screenshot(path=ARTIFACTS / "curator-near-duplicates.png", full_page=True)
    group.get_by_role("button", name="Keep the chosen one, hide the others").click()
    expect(page.locator(".messagelist")).to_contain_text("1 image hidden.")
    expect(page.locator(".duplicate-group")).to_have_count(0)

    # The catalog page: only backbones whose weights load can be started; refit waits.
    page.get_by_role("link", name="Images").last.click()
    page.get_by_role("link", name="Search space and jobs").click()
    expect(page.locator("#active-backbone")).to_have_text("efficientnet_lite0")
    expect(page.locator("#active-pooling")).to_have_text("GeM pooling, p = 3")
    expect(page.locator("#configured-pooling")).to_contain_text("p = 3 (IMAGESEARCH_GEM_P)")
    expect(page.locator("#configured-pooling")).to_contain_text("over the whole map (IMAGESEARCH_CENTRE_REGION)")
    expect(page.get_by_role("button", name="Start re-embedding")).to_have_count(1)
    expect(page.get_by_role("option", name="resnet50")).to_have_count(0)
    expect(page.get_by_role("option", name="efficientnet_lite2")).to_have_count(1)
    unavailable = page.locator(".unavailable-backbones")
    expect(unavailable).to_contain_text("resnet50 (not available)")
    expect(unavailable).to_contain_text("IMAGESEARCH_RESNET50_WEIGHTS")
    expect(page.get_by_role("button", name="Refit PCA")).to_have_count(0)
    expect(page.locator(".refit-refused")).to_contain_text("at least 1000 ready images; it has 5")
    page.screenshot(path=ARTIFACTS / "curator-catalog.png", full_page=True)

    # Keypoints for copy scans: the button starts the resumable job for photos that lack them.
    page.get_by_role("button", name="Store keypoints").click()
    expect(page.locator(".messagelist")).to_contain_text("Index keypoints for copy scans")
    # Newest first: the job just started (each import queued one for its photos too).
    expect(page.locator("tr.job").first).to_contain_text("Index keypoints for copy scans")
    page.close()
