"""A reviewer sees where an upload copies a protected work: in real headless Chromium,
against the whole product in production mode (tests/support/browser.py)."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from PIL import Image as PILImage
from playwright.sync_api import Browser, expect

from benchmarks import attacks
from benchmarks.livestack import Stack
from tests.support.browser import ARTIFACTS, READY_TIMEOUT_MS, sign_in

pytestmark = pytest.mark.slow

REVIEWER = ("reviewer", "a long reviewer password")


def test_the_match_page_outlines_the_copied_region_and_draws_the_correspondences(  # type: ignore[no-untyped-def]
    stack: Stack, browser: Browser, butterflies, tmp_path
) -> None:
    original = butterflies["005"][0]
    crop = tmp_path / "my-butterfly.jpg"
    attacks.crop(PILImage.open(original).convert("RGB"), np.random.default_rng(3)).save(crop, quality=90)
    stack.create_user(*REVIEWER, superuser=True)

    # The rights holder's work is registered through its page.
    reviewer = browser.new_page(viewport={"width": 1280, "height": 1000})
    sign_in(reviewer, stack, *REVIEWER)
    reviewer.goto(stack.url + "/copyright/works/new/")
    reviewer.get_by_label("Protected image").set_input_files(str(original))
    reviewer.get_by_label("Title").fill("Painted lady on thistle")
    reviewer.get_by_label("Rights holder").fill("Ada Photo Ltd")
    reviewer.get_by_role("button", name="Register").click()
    deadline = time.monotonic() + READY_TIMEOUT_MS / 1000
    while "Monitored" not in reviewer.locator("table.works").inner_text():
        assert time.monotonic() < deadline, "the work never became ready"
        time.sleep(1)
        reviewer.goto(stack.url + "/copyright/works/")

    # Someone uploads a crop of it.
    visitor = browser.new_page()
    sign_in(visitor, stack)
    visitor.goto(stack.url + "/upload/")
    visitor.get_by_label("Photos (one or many").set_input_files(str(crop))
    visitor.get_by_role("button", name="Upload").click()

    # The match reaches the review queue; its page shows where the copy is.
    match_link = reviewer.locator("a[href*='/copyright/matches/']").first
    while True:
        reviewer.goto(stack.url + "/copyright/")
        if match_link.count():
            break
        assert time.monotonic() < deadline, "no match reached the queue"
        time.sleep(1)
    reviewer.goto(stack.url + match_link.get_attribute("href"))  # type: ignore[operator]
    outlines = reviewer.locator("polygon.evidence-region")
    expect(outlines).to_have_count(2)
    for i in range(2):
        box = outlines.nth(i).bounding_box()
        assert box is not None and box["width"] > 50 and box["height"] > 50  # drawn over the picture
    work_outline = outlines.nth(0).bounding_box()
    work_picture = reviewer.get_by_role("img", name=re.compile("Protected work")).bounding_box()
    assert work_outline and work_picture
    # Half of the work was kept: the outline marks a part of it, not all of it.
    assert 0.25 < (work_outline["width"] * work_outline["height"]) / (work_picture["width"] * work_picture["height"]) < 0.8
    expect(reviewer.locator("#evidence-summary")).to_contain_text(
        re.compile(r"covering\s+\d+ % of it;\s+\d+ % of the work appears there")
    )

    expect(reviewer.locator("line.evidence-line")).to_have_count(0)
    reviewer.get_by_role("button", name="Show keypoint correspondences").click()
    lines = reviewer.locator("line.evidence-line")
    assert lines.count() >= 20
    expect(lines.first).to_be_visible()
    expect(reviewer.get_by_role("button", name="Hide keypoint correspondences")).to_be_visible()
    reviewer.screenshot(path=ARTIFACTS / "copy-evidence.png", full_page=True)
