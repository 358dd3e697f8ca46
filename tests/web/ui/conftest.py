"""Browser tests of the web UI: Playwright driving headless Chromium against a netpost started
in this process (netpost.testing) on loopback ports.  One browser per test module.

The browser: $NETPOST_CHROMIUM, else Playwright's own Chromium when `playwright install
chromium` has put one in place, else Debian's /usr/bin/chromium (scripts/install-test-deps.sh
installs it).  Without any of them the tests fail saying so: they are never skipped.
Screenshots go to tmp/artifacts/ at the top of the repository (not committed).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from netpost.testing import RunningNetpost, start_netpost

ARTIFACTS = Path(__file__).resolve().parents[3] / "tmp" / "artifacts"
DOMAIN = "example.test"
PASSWORD = "secret"
ADMIN = f"admin@{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
UI_CONFIG = f"""
[web]
admins = ["{ADMIN}"]
[trace]
listeners = ["smtp", "submission"]
"""
TIMEOUT_MS = 15_000  # for actions and expectations alike (a loaded 2-core machine)
expect.set_options(timeout=TIMEOUT_MS)


def chromium_executable(playwright: Playwright) -> str | None:
    """The browser to launch: None means Playwright's own (it is installed)."""
    chosen = os.environ.get("NETPOST_CHROMIUM")
    if chosen:
        if not os.access(chosen, os.X_OK):
            pytest.fail(f"NETPOST_CHROMIUM={chosen} is not an executable browser")
        return chosen
    own = playwright.chromium.executable_path
    if own and os.path.exists(own):
        return None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no Chromium for the browser tests: run scripts/install-test-deps.sh as root "
                "(Debian's chromium), or 'playwright install chromium', or set NETPOST_CHROMIUM")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_executable(p), headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNetpost]:
    accounts = {ADMIN: PASSWORD, ALICE: PASSWORD, BOB: PASSWORD}
    with start_netpost(tmp_path_factory.mktemp("ui"),
                       listeners=("smtp", "submission", "http", "https"), accounts=accounts,
                       config=UI_CONFIG) as np:
        yield np


def new_context(browser: Browser) -> BrowserContext:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    return context


def login(browser: Browser, server: RunningNetpost, address: str,
          password: str = PASSWORD) -> Page:
    """A new browser context logged in as `address` through the login page."""
    page = new_context(browser).new_page()
    page.goto(server.url("/"))
    page.fill("#login-address", address)
    page.fill("#login-password", password)
    page.click("form.login button[type=submit]")
    page.wait_for_selector("#messages")
    return page


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
