"""Searching by words, by a region of a photo, and with filters, in real Chromium against
the whole product (tests/support/browser.py): type a word and pick a suggestion, follow a
suggestion after a typo, narrow with filters, draw a box on a catalog image and on the
query photo. Screenshots land in test-artifacts/browser/."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
from PIL import Image as PILImage
from playwright.sync_api import Browser, Page, expect

from benchmarks.livestack import Stack, upload_ids
from tests.support.browser import ARTIFACTS, READY_TIMEOUT_MS, VISITOR, sign_in

pytestmark = pytest.mark.slow

CALTECH = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "caltech101-subset30" / "images"
# The visitor uploads the dalmatians; someone else uploads the rest.
THEIRS = ("flamingo", "strawberry", "accordion")


def _photos(name: str, count: int = 3, start: int = 0) -> list[Path]:
    found = sorted((CALTECH / name).glob("*.jpg"))[start : start + count]
    if len(found) < count:
        pytest.fail(f"the evaluation set is missing at {CALTECH}")
    return found


def _named(name: str) -> list[str]:
    """The names the catalog shows for a class's photos (the files are named per class)."""
    return sorted(f"{name}-{p.name}" for p in _photos(name))


def _copies(folder: Path, name: str) -> list[Path]:
    out = []
    for p in _photos(name):
        target = folder / f"{name}-{p.name}"
        target.write_bytes(p.read_bytes())
        out.append(target)
    return out


def _collage(path: Path, names: tuple[str, str, str, str]) -> Path:
    """Top left, top right, bottom left, bottom right: photos not in the catalog."""
    side = 300
    canvas = PILImage.new("RGB", (2 * side, 2 * side), "white")
    for i, name in enumerate(names):
        with PILImage.open(_photos(name, 1, start=10)[0]) as picture:
            canvas.paste(picture.convert("RGB").resize((side, side)), ((i % 2) * side, (i // 2) * side))
    canvas.save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def catalog(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three photos of four things, and a collage in the catalog; every one ready."""
    folder = tmp_path_factory.mktemp("collages")
    visitor = _signed_in(stack, *VISITOR)
    other = stack.browser("other", "another long password")
    ids = upload_ids(visitor.upload(_copies(folder, "dalmatian")))
    for name in THEIRS:
        ids += upload_ids(other.upload(_copies(folder, name)))
    in_catalog = _collage(folder / "collage-in-catalog.jpg", ("accordion", "flamingo", "strawberry", "dalmatian"))
    ids += upload_ids(other.upload([in_catalog]))
    assert len(ids) == 13
    states = other.wait_ready(ids, timeout=READY_TIMEOUT_MS / 1000)
    assert set(states.values()) == {"ready"}, states
    query = _collage(folder / "collage-query.jpg", ("dalmatian", "accordion", "strawberry", "flamingo"))
    return {"in_catalog": in_catalog, "query": query}


def _signed_in(stack: Stack, username: str, password: str):  # type: ignore[no-untyped-def]
    from benchmarks.livestack import Browser as Session

    session = Session(stack.url)
    session.login(username, password)
    return session


def _result_names(page: Page) -> list[str]:
    return [t.strip() for t in page.locator(".search-results .card .name").all_text_contents()]


def _drag(page: Page, image_selector: str, box: tuple[float, float, float, float]) -> None:
    """Press, move and release the mouse over a picture, as a person draws a rectangle."""
    image = page.locator(image_selector)
    expect(image).to_be_visible()
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=image.element_handle())
    r = image.bounding_box()
    assert r is not None
    page.mouse.move(r["x"] + box[0] * r["width"], r["y"] + box[1] * r["height"])
    page.mouse.down()
    page.mouse.move(r["x"] + (box[0] + box[2]) / 2 * r["width"], r["y"] + (box[1] + box[3]) / 2 * r["height"], steps=5)
    page.mouse.move(r["x"] + box[2] * r["width"], r["y"] + box[3] * r["height"], steps=5)
    page.mouse.up()


def test_type_a_word_pick_a_suggestion_and_see_its_photos(stack: Stack, browser: Browser, catalog: dict[str, Path]) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(stack.url + "/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Search by words").click()
    words = page.get_by_label("Words")
    words.press_sequentially("dalm", delay=60)
    suggestions = page.locator("#word-suggestions option")
    expect(suggestions.first).to_have_attribute("value", "dalmatian")
    words.fill("dog")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", name="Results for “dog”")).to_be_visible()
    assert sorted(_result_names(page)[:3]) == _named("dalmatian")
    page.screenshot(path=ARTIFACTS / "words-dog.png", full_page=True)

    # A typo: a clear message and a suggestion to follow, not an empty page.
    page.get_by_label("Words").fill("flamngo")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("alert")).to_contain_text("No photo is labelled with “flamngo”")
    page.screenshot(path=ARTIFACTS / "words-unknown.png", full_page=True)
    page.get_by_role("link", name="flamingo", exact=True).click()
    expect(page.get_by_role("heading", name="Results for “flamingo”")).to_be_visible()
    assert sorted(_result_names(page)[:3]) == _named("flamingo")


def test_filters_combine(stack: Stack, browser: Browser, catalog: dict[str, Path]) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    sign_in(page, stack)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Search by words").click()
    page.get_by_label("Words").fill("animal")
    page.get_by_role("button", name="Search").click()
    everyone = _result_names(page)
    assert set(_named("dalmatian")) < set(everyone), everyone

    # Only my uploads: the visitor uploaded the dalmatians and nothing else.
    page.get_by_label("Only my uploads").check()
    page.get_by_role("button", name="Search").click()
    assert sorted(_result_names(page)) == _named("dalmatian")
    page.screenshot(path=ARTIFACTS / "words-mine.png", full_page=True)

    # And uploaded before yesterday: nothing is that old; the filters are kept in the form.
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    page.get_by_label("to", exact=True).fill(yesterday)
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No photo matches these words with these filters.")).to_be_visible()
    expect(page.get_by_label("Only my uploads")).to_be_checked()

    # An end date before the start date is refused in words.
    page.get_by_label("Uploaded from").fill(date.today().isoformat())
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("alert")).to_contain_text("The end date is before the start date.")


def test_draw_a_box_on_a_catalog_image_and_on_the_query_photo(stack: Stack, browser: Browser, catalog: dict[str, Path]) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(stack.url + "/")
    page.get_by_role("link", name="collage-in-catalog.jpg").first.click()
    expect(page.get_by_role("heading", name="Search with a region")).to_be_visible()
    expect(page.locator(".labels")).to_contain_text("Looks like:")
    _drag(page, "[data-region-image]", (0.52, 0.02, 0.98, 0.48))  # the flamingo, top right
    assert page.get_by_role("textbox", name="Region").input_value().startswith("0.5")
    expect(page.locator(".region-rect")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "region-drawn.png", full_page=True)
    page.get_by_role("button", name="Search this region").click()
    expect(page.get_by_role("heading", name="Results for the region")).to_be_visible()
    expect(page.get_by_role("img", name="The region you drew of collage-in-catalog.jpg")).to_be_visible()
    assert set(_result_names(page)[:2]) <= set(_named("flamingo")), _result_names(page)
    page.screenshot(path=ARTIFACTS / "region-results.png", full_page=True)

    # The query photo: pick it, drag on its preview (bottom left: the strawberry), search.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Search by photo").click()
    page.get_by_label("Query photo").set_input_files(str(catalog["query"]))
    _drag(page, "[data-region-image]", (0.02, 0.52, 0.48, 0.98))
    page.get_by_label("Results", exact=True).fill("3")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.get_by_role("heading", name="Results for the region of your photo")).to_be_visible()
    expect(page.get_by_role("img", name="The region you drew of collage-query.jpg")).to_be_visible()
    assert set(_result_names(page)[:2]) <= set(_named("strawberry")), _result_names(page)
    page.screenshot(path=ARTIFACTS / "region-query-results.png", full_page=True)

    # A box outside the picture, typed by hand, is refused in words and nothing is searched.
    page.get_by_label("Query photo").set_input_files(str(catalog["query"]))
    page.get_by_role("textbox", name="Region").fill("0,0,1.5,1")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("outside the picture")
