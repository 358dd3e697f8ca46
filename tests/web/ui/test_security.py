"""The web UI under attack, in headless Chromium: XSS through message HTML and header fields
(the corpus of tests/web/xss_corpus.py), remote content blocked until asked for, CSRF on the
UI's forms (no token, a cross-site form), a Content-Security-Policy that refuses inline
script, another user's message and paths outside one's tree."""

from __future__ import annotations

import http.server
import re
import smtplib
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import formataddr

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from netpost.testing import RunningNetpost
from tests.web.ui.conftest import ADMIN, ALICE, BOB, login, new_context, shot
from tests.web.xss_corpus import HEADER_PAYLOADS, HTML_PAYLOADS


class Hits(http.server.BaseHTTPRequestHandler):
    """A loopback web server standing for a sender's tracker, and for another site."""

    paths: list[str] = []
    seen = threading.Event()
    page = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).paths.append(self.path)
        type(self).seen.set()
        body = type(self).page if self.path.startswith("/attack") else b"GIF89a"
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if self.path.startswith("/attack")
                         else "image/gif")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def other_site() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hits)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture(scope="module")
def alice(browser: Browser, server: RunningNetpost) -> Iterator[Page]:
    page = login(browser, server, ALICE)
    yield page
    page.context.close()


def deliver(server: RunningNetpost, msg: EmailMessage, to: str = ALICE) -> None:
    with smtplib.SMTP(*server.address("smtp")) as s:
        s.send_message(msg, from_addr="sender@example.test", to_addrs=[to])


def html_message(subject: str, html: str, sender: str = "sender@example.test") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ALICE
    msg["Subject"] = subject
    msg.set_content("the plain text part")
    msg.add_alternative(html, subtype="html")
    return msg


def watch_dialogs(page: Page) -> list[str]:
    seen: list[str] = []

    def on_dialog(d: Dialog) -> None:
        seen.append(d.message)
        d.dismiss()
    page.on("dialog", on_dialog)
    return seen


def open_message(page: Page, subject: str) -> None:
    row = page.locator("#messages li.row", has_text=subject)
    expect(row).to_be_visible()
    row.click()
    expect(page.locator("#message-subject")).to_have_text(subject)


def test_xss_in_message_html_never_runs(server: RunningNetpost, alice: Page) -> None:
    dialogs = watch_dialogs(alice)
    alice.goto(server.url("/#/mail"))
    for i in range(0, len(HTML_PAYLOADS), 11):
        deliver(server, html_message(f"corpus {i}", "<p>corpus</p>" + "".join(
            HTML_PAYLOADS[i:i + 11])))
    for i in range(0, len(HTML_PAYLOADS), 11):
        open_message(alice, f"corpus {i}")
        frame = alice.frame_locator("#html-body")
        expect(frame.locator("p").first).to_have_text("corpus")
        body = alice.frame(url=re.compile(r"/html"))
        assert body is not None
        content = body.content()
        assert "<script" not in content.lower() and "javascript:" not in content.lower()
        assert not re.search(r"\son[a-z]+=", content, re.I), content
        # The sandbox: no script runs in the frame even if something slipped through.
        assert alice.locator("#html-body").get_attribute("sandbox") == (
            "allow-popups allow-popups-to-escape-sandbox")
    shot(alice, "20-xss-corpus")
    assert alice.evaluate("window.__xss") is None
    assert dialogs == []


def test_xss_in_header_fields_is_shown_as_text(server: RunningNetpost, alice: Page) -> None:
    dialogs = watch_dialogs(alice)
    alice.goto(server.url("/#/mail"))
    for n, payload in enumerate(HEADER_PAYLOADS):
        msg = EmailMessage()
        msg["From"] = formataddr((payload, f"evil{n}@example.test"))
        msg["To"] = ALICE
        msg["Subject"] = f"h{n} {payload}"
        msg.set_content("look at my headers")
        msg.add_attachment(b"x", maintype="text", subtype="plain",
                           filename=f"{payload[:40]}.txt")
        deliver(server, msg)
    for n, payload in enumerate(HEADER_PAYLOADS):
        open_message(alice, f"h{n} {payload}")
        # open_message saw the subject as text, literally; the From field too:
        expect(alice.locator("#reader dl")).to_contain_text(f"evil{n}@example.test")
        expect(alice.locator("#reader dl")).to_contain_text(payload[:12])
        expect(alice.locator("#reader .attachments")).to_be_visible()
    alice.get_by_role("checkbox", name="Threads").check()
    expect(alice.locator("#messages li.thread").first).to_be_visible()
    alice.get_by_role("checkbox", name="Threads").uncheck()
    shot(alice, "21-xss-headers")
    assert alice.evaluate("window.__xss") is None
    assert alice.locator("#main img, #main svg, #main script").count() == 0
    assert dialogs == []


def test_remote_content_is_blocked_until_asked_for(server: RunningNetpost, alice: Page,
                                                   other_site: int) -> None:
    Hits.paths.clear()
    Hits.seen.clear()
    base = f"http://127.0.0.1:{other_site}"
    deliver(server, html_message("Newsletter", f'<p>Newsletter</p><img src="{base}/pixel.gif" '
                                 f'alt="pixel"><div style="background: url({base}/bg.gif)">'
                                 "styled</div>"))
    alice.goto(server.url("/#/mail"))
    open_message(alice, "Newsletter")
    notice = alice.locator("#remote-notice")
    expect(notice).to_contain_text("Remote content blocked (2)")
    frame = alice.frame_locator("#html-body")
    expect(frame.locator("p")).to_have_text("Newsletter")
    body = alice.frame(url=re.compile(r"/html"))
    assert body is not None
    body.wait_for_load_state("load")
    expect(frame.locator("img")).not_to_have_attribute("src", re.compile("."))
    assert Hits.paths == []  # nothing reached the sender's server
    shot(alice, "22-remote-blocked")
    alice.get_by_role("button", name="Show remote content").click()
    expect(frame.locator("img")).to_have_attribute("src", f"{base}/pixel.gif")
    assert Hits.seen.wait(10)
    assert "/pixel.gif" in Hits.paths and "/bg.gif" not in Hits.paths  # CSS fetches: never
    expect(alice.locator("#remote-notice")).to_have_count(0)


def test_csrf_token_is_required_by_the_ui_forms(server: RunningNetpost, browser: Browser
                                                ) -> None:
    admin = login(browser, server, ADMIN)
    without = admin.evaluate("""async () => (await fetch('/api/v1/domains', {method: 'POST',
        headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({name: 'no-token.test'})})).status""")
    wrong = admin.evaluate("""async () => (await fetch('/api/v1/domains', {method: 'POST',
        headers: {'Content-Type': 'application/json', 'X-CSRF-Token': 'forged'},
        body: JSON.stringify({name: 'wrong-token.test'})})).status""")
    assert (without, wrong) == (403, 403)
    # The same request through the UI's own form (which sends the token) works.
    admin.goto(server.url("/#/admin/domains"))
    admin.fill("#domain-name", "with-token.test")
    admin.get_by_role("button", name="Add domain").click()
    expect(admin.get_by_role("cell", name="with-token.test")).to_be_visible()
    domains = admin.request.get(server.url("/api/v1/domains")).json()["domains"]
    assert "no-token.test" not in domains and "wrong-token.test" not in domains
    admin.context.close()


def test_a_cross_site_form_cannot_act_for_a_logged_in_user(
        server: RunningNetpost, browser: Browser, other_site: int) -> None:
    admin = login(browser, server, ADMIN)
    target = server.url("/api/v1")
    # localhost is another site than 127.0.0.1: SameSite=Strict keeps the cookie home, and
    # the API refuses cross-site requests anyway.
    Hits.page = f"""<!doctype html><body>
<form id="f" method="POST" action="{target}/domains" enctype="text/plain">
<input name='{{"name":"evil.test","x":"' value='"}}'></form>
<script>document.getElementById('f').submit()</script></body>""".encode()
    page = admin.context.new_page()
    with page.expect_response(re.compile(r"/api/v1/domains$")) as info:
        page.goto(f"http://localhost:{other_site}/attack")
    assert info.value.status in (401, 403, 415)
    domains = admin.request.get(server.url("/api/v1/domains")).json()["domains"]
    assert "evil.test" not in domains
    # Login CSRF: another site may not log the browser in as the attacker.
    Hits.page = f"""<!doctype html><body>
<form id="f" method="POST" action="{target}/login" enctype="text/plain">
<input name='{{"address":"{BOB}","password":"secret","x":"' value='"}}'></form>
<script>document.getElementById('f').submit()</script></body>""".encode()
    with page.expect_response(re.compile(r"/api/v1/login$")) as info:
        page.goto(f"http://localhost:{other_site}/attack2")
    assert info.value.status in (403, 415)  # a form cannot send JSON; nor may it log in
    me = admin.request.get(server.url("/api/v1/me")).json()
    assert me["address"] == ADMIN
    admin.context.close()


def test_csp_refuses_inline_script(server: RunningNetpost, alice: Page) -> None:
    response = alice.goto(server.url("/"))
    assert response is not None
    csp = response.headers["content-security-policy"]
    script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
    assert script_src.strip() == "script-src 'self'" and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    expect(alice.locator("#messages")).to_be_visible()
    ran = alice.evaluate("""() => { const s = document.createElement('script');
        s.textContent = 'window.__inline = 1'; document.body.append(s);
        return window.__inline === 1 }""")
    assert ran is False


def test_another_users_message_and_paths_outside_the_tree(
        server: RunningNetpost, browser: Browser, alice: Page) -> None:
    alice.goto(server.url("/#/mail"))
    with httpx.Client(base_url=server.url("/api/v1"), headers={
            "Authorization": f"Bearer {server.api_token(ALICE)}"}) as c:
        inbox = next(b["id"] for b in c.get("/mailboxes").json()["mailboxes"]
                     if b["name"] == "INBOX")
        uid = c.get(f"/mailboxes/{inbox}/messages").json()["messages"][0]["uid"]
    bob = new_context(browser).new_page()
    bob.goto(server.url("/"))
    bob.fill("#login-address", BOB)
    bob.fill("#login-password", "secret")
    bob.click("form.login button[type=submit]")
    expect(bob.locator("#messages")).to_be_visible()
    for path in (f"/mailboxes/{inbox}/messages/{uid}/html", f"/mailboxes/{inbox}/threads",
                 f"/mailboxes/{inbox}/messages/{uid}"):
        assert bob.request.get(server.url("/api/v1" + path)).status == 404
    for path in ("../alice@example.test", "/../../", "/..%2f..%2f", "/%2e%2e/%2e%2e/etc"):
        r = bob.request.get(server.url("/api/v1/files?path=" + path))
        assert r.status in (200, 400, 404)
        if r.status == 200:
            assert r.json()["path"] == "/"  # clamped to bob's own root
            assert r.json()["entries"] == []
    r = bob.request.get(server.url("/api/v1/files/content?path=/../../netpost.toml"))
    assert r.status == 404
    assert bob.request.get(server.url("/api/v1/server")).status == 403  # admins only
    bob.context.close()
