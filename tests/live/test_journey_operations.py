"""An operator's look at a running install, in a real browser against the whole product (the
web server, Redis and a real worker): sign in as staff, follow "Operations" in the
navigation, read the workers per lane, queue depths and counts, see the backup the command
took; an ordinary user has no link and gets 403. Then the worker stops (the doctor names
the lanes without one) and the broker goes down (the page still answers, and says so)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from benchmarks.livestack import ROOT, Stack
from tests.support.browser import ARTIFACTS, sign_in

pytestmark = pytest.mark.slow

OPERATOR = ("operator", "a long operator password")


def _manage(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=300
    )


def _lane_row(page: Page, lane: str):  # type: ignore[no-untyped-def]
    return page.get_by_role("table", name="Lanes").get_by_role("row").filter(has=page.get_by_role("rowheader", name=lane))


def test_staff_read_the_operations_page_others_cannot(stack: Stack, browser: Browser, butterflies, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    photos = tmp_path / "photos"
    photos.mkdir()
    for species in ("001", "002"):
        for src in butterflies[species][:2]:
            (photos / src.name).write_bytes(src.read_bytes())
    assert _manage(stack, "import_images", str(photos), "--no-progress").returncode == 0
    stack.create_user(*OPERATOR, staff=True)

    # An ordinary user: no link in the navigation, and the address answers 403.
    visitor = browser.new_context().new_page()
    sign_in(visitor, stack)
    nav = visitor.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="My uploads")).to_be_visible()
    expect(nav.get_by_role("link", name="Operations")).to_have_count(0)
    assert visitor.goto(stack.url + "/operations/").status == 403  # type: ignore[union-attr]
    visitor.context.close()

    page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    sign_in(page, stack, *OPERATOR)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Operations").click()
    expect(page.get_by_role("heading", name="Operations", level=1)).to_be_visible()
    for lane in ("interactive", "bulk"):
        row = _lane_row(page, lane)
        expect(row).to_contain_text("1: e2e@")  # the stack's one worker consumes both lanes
        expect(row.get_by_role("cell").first).to_have_text("0")  # nothing waiting
    images = page.get_by_role("table", name="Images by status")
    expect(images.get_by_role("row").filter(has_text="Ready")).to_contain_text("4")
    expect(page.get_by_role("table", name="Embeddings by backbone")).to_contain_text("efficientnet_lite0")
    expect(page.get_by_text("Backbone: efficientnet_lite0")).to_be_visible()
    expect(page.get_by_text("No backup recorded. Run")).to_be_visible()
    expect(page.get_by_text("No failures in the last hour.")).to_be_visible()

    # A backup taken by the command shows up on the page.
    taken = _manage(stack, "backup", str(tmp_path / "nightly"))
    assert taken.returncode == 0, taken.stderr
    page.reload()
    expect(page.get_by_text("Last backup:")).to_contain_text(str(tmp_path / "nightly"))
    expect(page.get_by_text("Last backup:")).to_contain_text("12 files")
    checks = page.get_by_role("table", name="Checks")
    expect(checks.get_by_role("row").filter(has_text="backup")).to_contain_text("OK")
    page.screenshot(path=ARTIFACTS / "operations-healthy.png", full_page=True)

    # The worker stops: the doctor fails each lane by name, the page says no worker is left.
    stack.worker.terminate()
    stack.worker.wait(timeout=60)
    doctor = _manage(stack, "doctor", "--json")
    assert doctor.returncode == 1
    found = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert found["workers interactive"]["status"] == "FAIL"
    assert "no worker answers on lane interactive" in found["workers interactive"]["detail"]
    assert "no worker answers on lane bulk" in found["workers bulk"]["detail"]
    page.reload()
    expect(_lane_row(page, "bulk")).to_contain_text("none")
    expect(checks.get_by_role("row").filter(has_text="workers interactive")).to_contain_text("FAIL")

    # The broker goes down: the page still answers and says so.
    stack.stop_broker()
    page.reload()
    expect(page.get_by_role("alert")).to_contain_text("Broker unreachable")
    expect(_lane_row(page, "interactive")).to_contain_text("unknown")
    expect(checks.get_by_role("row").filter(has_text="broker").first).to_contain_text("broker unreachable")
    page.screenshot(path=ARTIFACTS / "operations-broker-down.png", full_page=True)
    stack.start_broker()
