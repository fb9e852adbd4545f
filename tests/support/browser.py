"""Shared pieces of the browser tests: the whole product running in production mode
(collected, hashed static files behind WhiteNoise; a real Redis and a real worker),
headless Debian Chromium driven by Playwright, and the gestures a person makes.

Loaded as a pytest plugin from conftest.py: the `stack` and `browser` fixtures are
module-scoped, so each journey module gets a fresh product. Screenshots land in
test-artifacts/browser/.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from benchmarks.livestack import ROOT, Stack, live_stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = ROOT / "test-artifacts" / "browser"
READY_TIMEOUT_MS = 240_000

VISITOR = ("visitor", "a long visitor password")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    var = tmp_path_factory.mktemp("browser") / "var"
    production = {
        "IMAGESEARCH_ENV": "production",
        "DJANGO_SECRET_KEY": "browser-test-secret-key-0123456789-abcdefghijklmnop",
        "DJANGO_SECURE_SSL_REDIRECT": "0",  # plain HTTP on loopback
        "DJANGO_SECURE_COOKIES": "0",
        "DJANGO_STATIC_ROOT": str(var / "static"),
        "IMAGESEARCH_PCA_MIN_IMAGES": "1000",
    }
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "imagesearch.settings", "IMAGESEARCH_VAR_DIR": str(var), **production}
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    with live_stack(var, **production) as running:  # type: ignore[arg-type]
        running.create_user(*VISITOR)
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def sign_in(page: Page, stack: Stack, username: str = VISITOR[0], password: str = VISITOR[1]) -> None:
    """Sign in through the real sign-in page, reached from the navigation."""
    page.goto(stack.url + "/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Sign in").click()
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(stack.url + "/")


def offsite_requests(page: Page, stack: Stack) -> list[str]:
    """Every request the page makes to anywhere but the product (the product works offline)."""
    offsite: list[str] = []
    page.on("request", lambda r: None if r.url.startswith((stack.url, "data:", "blob:")) else offsite.append(r.url))
    return offsite


def drop(page: Page, selector: str, path: Path) -> None:
    """Drop a file on an element the way a desktop drag does: a drop event with a DataTransfer."""
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "image/jpeg" }));
            return dt;
        }""",
        [path.name, base64.b64encode(path.read_bytes()).decode()],
    )
    page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})
