"""The admin queue page in Chromium against a `netpost serve` whose relay's smart host refuses
connections (tests/web/api/conftest.py's server): a message to a remote address waits in the
queue; the page retries it and deletes it."""

from __future__ import annotations

from playwright.sync_api import Browser, expect

from tests.conftest import PASSWORD
from tests.web.api.conftest import ADMIN, ALICE, Api, api  # noqa: F401 (the fixture)
from tests.web.ui.conftest import new_context, shot


def test_queue_retry_and_delete(browser: Browser, api: Api) -> None:  # noqa: F811
    with api.client(ALICE) as c:
        r = c.post("/send", json={"to": ["friend@example.org"], "subject": "to the queue",
                                  "text": "waits: the smart host refuses"})
        assert r.status_code == 202, r.text
        queue_id = r.json()["queue_id"]
    page = new_context(browser).new_page()
    page.goto(api.base + "/")
    page.fill("#login-address", ADMIN)
    page.fill("#login-password", PASSWORD)
    page.click("form.login button[type=submit]")
    expect(page.locator("#messages")).to_be_visible()
    page.goto(api.base + "/#/admin/queue")
    row = page.locator(f'tr[data-queue-id="{queue_id}"]')
    expect(row).to_be_visible()
    expect(row).to_contain_text("friend@example.org")
    expect(row).to_contain_text(ALICE)
    shot(page, "13-admin-queue")
    row.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status")).to_contain_text("Retrying")
    expect(row).to_be_visible()  # tried again, refused again: still waiting
    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_contain_text("Deleted from the queue")
    expect(row).to_have_count(0)
    with api.client(ADMIN) as c:
        assert c.get(f"/queue/{queue_id}").status_code == 404
    page.context.close()
