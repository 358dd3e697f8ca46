"""The web UI end to end in headless Chromium: an administrator creates a user, a message sent
from webmail arrives live in another session's list, is read, answered with an attachment,
an SMTP session is watched in the protocol inspector, a shared file is downloaded."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from netpost.testing import RunningNetpost
from tests.web.ui.conftest import ADMIN, ALICE, BOB, PASSWORD, login, new_context, shot


@pytest.fixture(scope="module")
def admin(browser: Browser, server: RunningNetpost) -> Iterator[Page]:
    page = login(browser, server, ADMIN)
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def alice(browser: Browser, server: RunningNetpost) -> Iterator[Page]:
    page = login(browser, server, ALICE)
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def bob(browser: Browser, server: RunningNetpost) -> Iterator[Page]:
    page = login(browser, server, BOB)
    yield page
    page.context.close()


def test_login_page_refuses_a_wrong_password(browser: Browser, server: RunningNetpost) -> None:
    page = new_context(browser).new_page()
    page.goto(server.url("/"))
    expect(page.get_by_role("heading", name="Log in to netpost")).to_be_visible()
    shot(page, "01-login")
    page.fill("#login-address", ALICE)
    page.fill("#login-password", "wrong")
    page.click("form.login button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("wrong address or password")
    page.context.close()


def test_admin_creates_a_user_who_can_log_in(browser: Browser, server: RunningNetpost,
                                            admin: Page) -> None:
    admin.goto(server.url("/#/admin/users"))
    admin.fill("#user-address", "carol@example.test")
    admin.fill("#user-password", "a first password")
    admin.get_by_role("button", name="Add user").click()
    expect(admin.locator('tr[data-address="carol@example.test"]')).to_be_visible()
    expect(admin.get_by_role("status")).to_contain_text("User added")
    shot(admin, "02-admin-users")
    row = admin.locator('tr[data-address="carol@example.test"]')
    row.get_by_role("button", name="Set password").click()
    row.get_by_label("New password for carol@example.test").fill("carol's password")
    row.get_by_role("button", name="Save password").click()
    expect(admin.get_by_role("status")).to_contain_text("Password of carol@example.test changed")
    carol = login(browser, server, "carol@example.test", "carol's password")
    expect(carol.locator("#who")).to_have_text("carol@example.test")
    expect(carol.get_by_role("link", name="Admin")).to_have_count(0)  # not an administrator
    carol.context.close()


def test_admin_pages_show_domains_queue_leases_and_settings(server: RunningNetpost,
                                                            admin: Page) -> None:
    admin.goto(server.url("/#/admin/domains"))
    expect(admin.get_by_role("cell", name="example.test")).to_be_visible()
    admin.fill("#domain-name", "school.test")
    admin.get_by_role("button", name="Add domain").click()
    expect(admin.get_by_role("status")).to_contain_text("Domain added")
    admin.get_by_role("row", name="school.test").get_by_role("button", name="DKIM record").click()
    expect(admin.locator("#dkim")).to_contain_text("_domainkey")
    shot(admin, "03-admin-domains")
    admin.goto(server.url("/#/admin/aliases"))
    admin.fill("#alias-source", "info@example.test")
    admin.fill("#alias-target", "carol@example.test")  # made by the test before
    admin.get_by_role("button", name="Add alias").click()
    alias = admin.get_by_role("row", name="info@example.test")
    expect(alias).to_contain_text("carol@example.test")
    with smtplib.SMTP(*server.address("smtp")) as s:
        s.sendmail("x@example.test", ["info@example.test"], b"Subject: via alias\r\n\r\nx\r\n")
    server.wait_for_messages("carol@example.test", 1)  # the alias delivers to carol
    alias.get_by_role("button", name="Remove").click()
    expect(admin.get_by_text("No aliases.")).to_be_visible()
    admin.goto(server.url("/#/admin/queue"))
    expect(admin.get_by_role("button", name="Retry all now")).to_be_visible()
    admin.goto(server.url("/#/admin/leases"))
    expect(admin.get_by_text("No leases")).to_be_visible()
    admin.goto(server.url("/#/admin/server"))
    expect(admin.get_by_text("self-signed")).to_be_visible()
    expect(admin.locator("#settings")).to_contain_text('"hostname"')
    shot(admin, "04-admin-server")


def test_message_sent_from_webmail_arrives_live_and_is_read(server: RunningNetpost,
                                                            alice: Page, bob: Page) -> None:
    alice.goto(server.url("/#/mail"))
    expect(alice.locator("#messages")).to_be_visible()
    bob.goto(server.url("/#/compose"))
    bob.fill("#compose-to", ALICE)
    bob.fill("#compose-subject", "Lunch on Friday?")
    bob.fill("#compose-body", "The usual place at noon.\nBob")
    shot(bob, "05-compose")
    bob.get_by_role("button", name="Send").click()
    expect(bob.get_by_role("status")).to_contain_text("Sent to alice@example.test")
    # Alice's page was not reloaded: the change feed (SSE) brought the message in.
    row = alice.locator("#messages li.row", has_text="Lunch on Friday?")
    expect(row).to_be_visible()
    expect(row).to_have_class("row unread")
    expect(alice.locator('#folders a[data-mailbox="INBOX"] .count')).to_have_text("1")
    shot(alice, "06-inbox-live")
    row.click()
    expect(alice.locator("#message-subject")).to_have_text("Lunch on Friday?")
    expect(alice.locator("pre.body")).to_contain_text("The usual place at noon.")
    expect(row).to_have_class("row")  # read now
    shot(alice, "07-reading")
    [msg] = server.messages(ALICE)
    assert msg["From"] == BOB and msg["Subject"] == "Lunch on Friday?"


def test_reply_with_an_attachment(server: RunningNetpost, alice: Page, bob: Page) -> None:
    bob.goto(server.url("/#/mail"))
    expect(bob.locator("#messages")).to_be_visible()
    alice.get_by_role("button", name="Reply").click()
    expect(alice.locator("#compose-to")).to_have_value(BOB)
    expect(alice.locator("#compose-subject")).to_have_value("Re: Lunch on Friday?")
    expect(alice.locator("#compose-body")).to_have_value(
        "\n\nOn " + server.messages(ALICE)[0]["Date"] + ", " + BOB
        + " wrote:\n> The usual place at noon.\n> Bob\n")
    alice.locator("#compose-body").press("Control+Home")
    alice.locator("#compose-body").type("Yes! Menu attached.")
    payload = b"soup\nsalad\n\x00\xff binary too\n"
    alice.set_input_files("#compose-files", files=[
        {"name": "menu.txt", "mimeType": "text/plain", "buffer": payload}])
    alice.get_by_role("button", name="Send").click()
    expect(alice.get_by_role("status")).to_contain_text("Sent to bob@example.test")
    row = bob.locator("#messages li.row", has_text="Re: Lunch on Friday?")
    expect(row).to_be_visible()
    row.click()
    expect(bob.locator("pre.body")).to_contain_text("Yes! Menu attached.")
    link = bob.get_by_role("link", name="menu.txt")
    expect(link).to_be_visible()
    shot(bob, "08-reply-with-attachment")
    with bob.expect_download() as info:
        link.click()
    path = info.value.path()
    assert path is not None and path.read_bytes() == payload
    [reply] = server.messages(BOB)
    original = server.messages(ALICE)[0]
    assert reply["In-Reply-To"] == original["Message-ID"]


def test_forward_keeps_the_attachments_and_move(server: RunningNetpost, bob: Page,
                                                 admin: Page) -> None:
    admin.goto(server.url("/#/mail"))
    expect(admin.locator("#messages")).to_be_visible()
    bob.goto(server.url("/#/mail"))
    bob.locator("#messages li.row", has_text="Re: Lunch on Friday?").click()
    bob.get_by_role("button", name="Forward").click()
    expect(bob.locator("#compose-subject")).to_have_value("Fwd: Lunch on Friday?")
    expect(bob.get_by_text("Forwarding attachments: menu.txt")).to_be_visible()
    bob.fill("#compose-to", ADMIN)
    bob.get_by_role("button", name="Send").click()
    expect(bob.get_by_role("status")).to_contain_text("Sent to admin@example.test")
    row = admin.locator("#messages li.row", has_text="Fwd: Lunch on Friday?")
    expect(row).to_be_visible()
    row.click()
    expect(admin.locator("pre.body")).to_contain_text("---------- Forwarded message ----------")
    expect(admin.get_by_role("link", name="menu.txt")).to_be_visible()
    [forwarded] = server.messages(ADMIN)
    [part] = [p for p in forwarded.iter_attachments()]
    assert part.get_filename() == "menu.txt"
    assert part.get_payload(decode=True) == b"soup\nsalad\n\x00\xff binary too\n"
    admin.locator("#move-to").select_option("Archive")
    expect(admin.get_by_role("status")).to_contain_text("Moved to Archive")
    expect(row).to_have_count(0)
    admin.locator('#folders a[data-mailbox="Archive"]').click()
    expect(admin.locator("#messages li.row", has_text="Fwd: Lunch on Friday?")).to_be_visible()


def test_threads_search_flag_and_delete(server: RunningNetpost, bob: Page) -> None:
    bob.goto(server.url("/#/mail"))
    with smtplib.SMTP(*server.address("smtp")) as s:
        for i in range(3):
            s.sendmail(ALICE, [BOB], f"Subject: Re: Lunch on Friday?\r\nMessage-ID: <t{i}@x>\r\n"
                       f"\r\nmore {i}\r\n".encode())
    expect(bob.locator("#messages li.row")).to_have_count(4)
    bob.locator("#threaded").check()
    thread = bob.locator("#messages li.thread")
    expect(thread).to_have_count(1)
    expect(thread.locator(".tcount")).to_have_text("(4)")
    shot(bob, "09-threads")
    bob.locator("#threaded").uncheck()
    # The keyboard alone: focus the list, arrow down to the second message, Enter reads it.
    expect(bob.locator("#messages li.thread")).to_have_count(0)
    bob.locator("#messages li.row").first.focus()
    bob.keyboard.press("ArrowDown")
    bob.keyboard.press("Enter")
    second = bob.locator("#messages li.row").nth(1)
    expect(second).to_have_attribute("aria-selected", "true")
    expect(bob.locator("pre.body")).to_contain_text("more 1")
    bob.fill("#search", "nothing like this")
    bob.get_by_role("button", name="Search").click()
    expect(bob.get_by_text("0 found")).to_be_visible()
    bob.fill("#search", "lunch")
    bob.get_by_role("button", name="Search").click()
    expect(bob.get_by_text("4 found")).to_be_visible()
    first = bob.locator("#messages li.row").first
    first.click()
    bob.get_by_role("button", name="Flag", exact=True).click()
    expect(bob.get_by_role("button", name="Unflag")).to_be_visible()
    bob.get_by_role("button", name="Delete").click()
    expect(bob.get_by_role("status")).to_contain_text("Moved to Trash")
    expect(bob.locator('#folders a[data-mailbox="Trash"]')).to_be_visible()
    bob.locator('#folders a[data-mailbox="Trash"]').click()
    expect(bob.locator("#messages li.row")).to_have_count(1)


def test_inspector_shows_an_smtp_session_as_it_happens(server: RunningNetpost,
                                                       admin: Page) -> None:
    admin.goto(server.url("/#/inspector/listener/smtp"))
    expect(admin.locator("#trace-watching")).to_have_text("Watching listener smtp")
    lines = admin.locator("#trace-lines")
    expect(lines).to_have_attribute("data-open", "true")
    with smtplib.SMTP(*server.address("smtp")) as s:
        s.ehlo("student.example")
        expect(lines).to_contain_text("C: ehlo student.example")  # smtplib writes lower case
        expect(lines).to_contain_text("S: 250")
        s.mail("someone@example.test")
        expect(lines).to_contain_text("C: mail FROM:<someone@example.test>")
        s.rcpt(ALICE)
        s.data(b"Subject: watched\r\n\r\nhello\r\n")
    expect(lines).to_contain_text("C: QUIT")
    expect(lines.locator("li.c").first).to_be_visible()
    shot(admin, "10-inspector-smtp")
    # A session of its own: click its id; the stream is then filtered to it.
    sid = lines.locator("button.sid").first.inner_text()
    lines.locator("button.sid").first.click()
    expect(admin.locator("#trace-watching")).to_have_text(f"Watching session {sid}")


def test_inspector_redacts_passwords(server: RunningNetpost, admin: Page) -> None:
    admin.goto(server.url("/#/inspector/listener/submission"))
    # (the list of the page before is still there until the new one is drawn)
    expect(admin.locator("#trace-watching")).to_have_text("Watching listener submission")
    lines = admin.locator("#trace-lines")
    expect(lines).to_have_attribute("data-open", "true")
    with smtplib.SMTP(*server.address("submission")) as s:
        s.login(ALICE, PASSWORD)
    expect(lines).to_contain_text("C: AUTH")
    expect(lines).to_contain_text("S: 235")
    text = lines.inner_text()
    secret = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    assert secret not in text and PASSWORD not in text


def test_inspector_turns_tracing_of_a_listener_on(server: RunningNetpost, admin: Page) -> None:
    admin.goto(server.url("/#/inspector"))
    admin.locator("#trace-listener").select_option("http")
    expect(admin.get_by_text("http is not traced")).to_be_visible()
    admin.get_by_role("button", name="Trace http").click()
    expect(admin.get_by_role("button", name="Stop tracing http")).to_be_visible()
    lines = admin.locator("#trace-lines")
    expect(lines).to_have_attribute("data-open", "true")
    assert httpx.get(server.url("/api/v1/watched-by-the-inspector")).status_code == 404
    expect(lines).to_contain_text("C: GET /api/v1/watched-by-the-inspector")
    expect(lines).to_contain_text("S: 404")
    shot(admin, "12-inspector-http")
    admin.get_by_role("button", name="Stop tracing http").click()
    expect(admin.get_by_role("button", name="Trace http")).to_be_visible()


def test_files_upload_share_download_unshare(server: RunningNetpost, alice: Page) -> None:
    alice.goto(server.url("/#/files"))
    alice.fill("#folder-name", "docs")
    alice.get_by_role("button", name="Make folder").click()
    alice.get_by_role("link", name="docs/").click()
    expect(alice.get_by_role("navigation", name="Folder")).to_contain_text("docs")
    content = b"minutes of the meeting\n" * 100
    alice.set_input_files("#upload-file", files=[
        {"name": "minutes.txt", "mimeType": "text/plain", "buffer": content}])
    alice.get_by_role("button", name="Upload", exact=True).click()
    row = alice.locator('tr[data-path="/docs/minutes.txt"]')
    expect(row).to_be_visible()
    with alice.expect_download() as info:
        row.get_by_role("link", name="Download").click()
    path = info.value.path()
    assert path is not None and path.read_bytes() == content
    row.get_by_role("button", name="Share").click()
    share = row.locator("a.mono")
    expect(share).to_be_visible()
    shot(alice, "11-files")
    url = share.get_attribute("href")
    assert url is not None and "/s/" in url
    # Anyone with the link downloads it, no login: a browser of its own.
    anonymous = alice.context.browser.new_context()  # type: ignore[union-attr]
    page = anonymous.new_page()
    response = page.request.get(url)
    assert response.status == 200 and response.body() == content
    row.get_by_role("button", name="Unshare").click()
    expect(row.get_by_text("not shared")).to_be_visible()
    assert httpx.get(url).status_code == 404
    anonymous.close()
    alice.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="Delete minutes.txt").click()
    expect(alice.get_by_text("This folder is empty.")).to_be_visible()


def test_logout_ends_the_session(server: RunningNetpost, browser: Browser) -> None:
    page = login(browser, server, BOB)
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in to netpost")).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", name="Log in to netpost")).to_be_visible()
    page.context.close()


def test_the_ui_over_https(server: RunningNetpost, browser: Browser) -> None:
    context = browser.new_context(ignore_https_errors=True)  # netpost's self-signed certificate
    page = context.new_page()
    page.goto(server.url("/", listener="https"))
    page.fill("#login-address", ALICE)
    page.fill("#login-password", PASSWORD)
    page.click("form.login button[type=submit]")
    expect(page.locator("#messages")).to_be_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "netpost_session")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    context.close()


UNNAMED_CONTROLS = """() => [...document.querySelectorAll(
    'input:not([type=hidden]), select, textarea, button, a[href]')]
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                  && !el.textContent.trim() && !el.getAttribute('title'))
  .map((el) => el.outerHTML.slice(0, 80))"""


def test_every_control_has_a_name(server: RunningNetpost, admin: Page) -> None:
    """For screen readers and keyboard users: each field has a label, each button and link a
    name; the landmarks are there."""
    for view, ready in [("/#/mail", "#messages"), ("/#/compose", "#compose-to"),
                        ("/#/files", "#upload-file"), ("/#/inspector", "#trace-listener"),
                        ("/#/admin/users", "#user-address"), ("/#/admin/aliases", "#alias-source"),
                        ("/#/admin/domains", "#domain-name"), ("/#/admin/queue", "table"),
                        ("/#/admin/server", "#settings"), ("/#/account", "#token-name")]:
        admin.goto(server.url(view))
        expect(admin.locator(ready).first).to_be_visible()
        assert admin.evaluate(UNNAMED_CONTROLS) == [], view
    assert admin.locator("main").count() == 1 and admin.locator("header nav").count() == 1


def test_a_draft_is_saved_edited_and_sent(server: RunningNetpost, browser: Browser) -> None:
    page = login(browser, server, "carol@example.test", "carol's password")
    page.goto(server.url("/#/compose"))
    page.fill("#compose-subject", "Half written")
    page.fill("#compose-body", "first thoughts")
    page.set_input_files("#compose-files", files=[
        {"name": "plan.txt", "mimeType": "text/plain", "buffer": b"the plan\n"}])
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("status")).to_contain_text("Draft saved in Drafts")
    page.fill("#compose-body", "second thoughts")
    page.get_by_role("button", name="Save draft").click()  # replaces the first
    expect(page.get_by_role("status")).to_contain_text("Draft saved in Drafts")
    page.goto(server.url("/#/mail"))
    page.locator('#folders a[data-mailbox="Drafts"]').click()
    drafts = page.locator("#messages li.row")
    expect(drafts).to_have_count(1)
    drafts.first.click()
    expect(page.locator("pre.body")).to_contain_text("second thoughts")
    page.get_by_role("button", name="Edit draft").click()
    expect(page.locator("#compose-subject")).to_have_value("Half written")
    expect(page.get_by_text("Attached: plan.txt")).to_be_visible()
    page.fill("#compose-to", BOB)
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_contain_text("Sent to bob@example.test")
    page.locator('#folders a[data-mailbox="Drafts"]').click()
    expect(page.get_by_text("No messages.")).to_be_visible()  # sent: the draft is gone
    sent = server.wait_for_messages(BOB, 1)
    last = [m for m in sent if m["Subject"] == "Half written"]
    assert len(last) == 1 and "second thoughts" in last[0].get_body(("plain",)).get_content()
    assert [a.get_filename() for a in last[0].iter_attachments()] == ["plan.txt"]
    page.context.close()


def test_account_password_and_api_tokens(server: RunningNetpost, browser: Browser) -> None:
    page = login(browser, server, "carol@example.test", "carol's password")
    page.get_by_role("link", name="Account").click()
    expect(page.get_by_role("heading", name="Your account")).to_be_visible()
    page.fill("#current-password", "not it")
    page.fill("#new-password", "carol's new password")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("status")).to_contain_text("current password is wrong")
    page.fill("#current-password", "carol's password")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("status")).to_contain_text("Password changed")
    with smtplib.SMTP(*server.address("submission")) as s:  # the same password everywhere
        s.login("carol@example.test", "carol's new password")
    page.fill("#token-name", "backup script")
    page.get_by_role("button", name="Make a token").click()
    token = page.locator("#new-token").inner_text()
    shot(page, "14-account")
    me = httpx.get(server.url("/api/v1/me"), headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["address"] == "carol@example.test"
    row = page.get_by_role("row", name="backup script")
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_text("No tokens.")).to_be_visible()
    me = httpx.get(server.url("/api/v1/me"), headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 401
    page.context.close()
