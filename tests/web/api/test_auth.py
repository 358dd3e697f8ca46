"""Web API authentication and its security properties, against a real server over loopback:
sessions (cookie flags), CSRF, bearer tokens (CLI-made, revoked), roles, IDOR, login
throttling shared with the mail services, oversize bodies, path traversal on file routes."""

from __future__ import annotations

import imaplib
import socket
import time
from contextlib import closing

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.web.api.conftest import ADMIN, ALICE, BOB, Api, make_token


def test_login_sets_strict_httponly_cookie_and_me(api: Api) -> None:
    with httpx.Client(base_url=api.base + "/api/v1", timeout=30) as c:
        r = c.post("/login", json={"address": ALICE, "password": PASSWORD})
        assert r.status_code == 200
        cookies = r.headers.get_list("set-cookie")
        session = next(x for x in cookies if x.startswith("netpost_session="))
        assert "HttpOnly" in session and "SameSite=strict" in session
        assert "Secure" not in session  # plain http: a Secure cookie would never come back
        csrf = next(x for x in cookies if x.startswith("netpost_csrf="))
        assert "HttpOnly" not in csrf
        me = c.get("/me").json()
        assert me["address"] == ALICE and me["admin"] is False and me["auth"] == "session"
        assert me["csrf_token"] == r.json()["csrf_token"]
        assert c.post("/logout", headers={"X-CSRF-Token": me["csrf_token"]}).status_code == 200
        c.cookies.set("netpost_session", session.split(";")[0].partition("=")[2])
        assert c.get("/me").status_code == 401  # the session is gone from the store


def test_https_listener_serves_the_api_with_secure_cookies(api: Api) -> None:
    with httpx.Client(base_url=api.secure_base + "/api/v1", verify=False, timeout=30) as c:
        r = c.post("/login", json={"address": ALICE, "password": PASSWORD})
        assert r.status_code == 200
        assert all("Secure" in x for x in r.headers.get_list("set-cookie"))
        assert c.get("/me").json()["address"] == ALICE


def test_csrf_is_required_for_cookie_sessions(api: Api) -> None:
    c, csrf = api.login(ALICE)
    with closing(c):
        body = {"name": "csrf-test"}
        assert c.post("/mailboxes", json=body).status_code == 403
        assert c.post("/mailboxes", json=body,
                      headers={"X-CSRF-Token": "0" * 64}).status_code == 403
        # The right token from another site's page: refused by Origin and by Sec-Fetch-Site.
        assert c.post("/mailboxes", json=body, headers={
            "X-CSRF-Token": csrf, "Origin": "https://evil.example"}).status_code == 403
        assert c.post("/mailboxes", json=body, headers={
            "X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}).status_code == 403
        r = c.post("/mailboxes", json=body, headers={"X-CSRF-Token": csrf,
                                                     "Origin": api.base})
        assert r.status_code == 201, r.text
        # Reading needs no token.
        assert c.get("/mailboxes").status_code == 200
    # A cross-site login (login CSRF) is refused too.
    with httpx.Client(base_url=api.base + "/api/v1", timeout=30) as c:
        r = c.post("/login", json={"address": ALICE, "password": PASSWORD},
                   headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and "netpost_session" not in r.headers.get("set-cookie", "")


def test_bearer_tokens_need_no_csrf_and_die_when_revoked(api: Api) -> None:
    token = make_token(api.server, ALICE)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api.base + "/api/v1", headers=headers, timeout=30) as c:
        assert c.post("/mailboxes", json={"name": "via-token"}).status_code == 201
        listed = api.server.cli("token", "list", ALICE).stdout
        token_id = token[3:19]
        assert token_id in listed and token not in listed  # only the id is shown
        r = api.server.cli("token", "revoke", token_id)
        assert r.returncode == 0, r.stderr
        assert c.get("/me").status_code == 401
    # Only a hash is stored.
    db = (api.server.data / "netpost.db").read_bytes()
    assert token.encode() not in db and token[20:].encode() not in db


def test_roles_users_cannot_administer(api: Api) -> None:
    with api.client(BOB) as c:
        for method, path in (("GET", "/domains"), ("GET", "/accounts"), ("GET", "/queue"),
                             ("GET", "/sessions"), ("GET", "/aliases"), ("GET", "/leases"),
                             ("GET", "/traces")):
            assert c.request(method, path).status_code == 403, path
        r = c.post("/accounts", json={"address": f"mallory@{ALICE.split('@')[1]}",
                                      "password": "x"})
        assert r.status_code == 403
    with api.client(ADMIN) as c:
        assert c.get("/accounts").status_code == 200


def test_idor_a_user_never_reaches_another_users_mail(api: Api) -> None:
    with api.client(ADMIN) as c:
        r = c.post("/send", json={"to": [ALICE], "subject": "for alice only", "text": "x"})
        assert r.status_code == 202, r.text
    alice_inbox = api.mailbox_id(ALICE)
    with api.client(ALICE) as c:
        uid = c.get(f"/mailboxes/{alice_inbox}/messages").json()["messages"][0]["uid"]
    one = f"/mailboxes/{alice_inbox}/messages/{uid}"
    with api.client(BOB) as c:
        for method, path, body in (
                ("GET", f"/mailboxes/{alice_inbox}/messages", None),
                ("GET", f"/mailboxes/{alice_inbox}/search?q=alice", None),
                ("GET", one, None), ("GET", one + "/raw", None),
                ("GET", one + "/parts/1", None),
                ("POST", one + "/flags", {"add": ["\\Seen"]}),
                ("POST", one + "/move", {"mailbox": "INBOX"}),
                ("DELETE", one, None), ("DELETE", f"/mailboxes/{alice_inbox}", None)):
            r = c.request(method, path, json=body)
            assert r.status_code == 404, (method, path, r.status_code)
            assert "for alice only" not in r.text
        # Accounts: another user's is "not found", as one that does not exist.
        assert c.get(f"/accounts/{ALICE}").status_code == 404
        assert c.get(f"/accounts/{BOB}").status_code == 200
        r = c.put(f"/accounts/{ALICE}/password", json={"password": "x",
                                                        "current_password": PASSWORD})
        assert r.status_code == 404
    with api.client(ALICE) as c:  # untouched
        msg = c.get(one).json()
        assert msg["subject"] == "for alice only" and msg["flags"] == []


def test_idor_shares_and_tokens(api: Api) -> None:
    tree = api.server.data / "files" / ALICE
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "notes.txt").write_text("alice's notes")
    with api.client(ALICE) as c:
        share = c.post("/shares", json={"path": "/notes.txt"}).json()
        created = c.post("/tokens", json={"name": "x"}).json()
    with api.client(BOB) as c:
        assert c.delete(f"/shares/{share['token']}").status_code == 404
        assert share["token"] not in c.get("/shares").text
        assert c.post("/shares", json={"path": "/notes.txt", "address": ALICE}
                      ).status_code == 403
        assert c.delete(f"/tokens/{created['id']}").status_code == 404
    assert httpx.get(share["url"]).text == "alice's notes"
    with api.client(ALICE) as c:  # removing it over a new connection: traced, token cut
        assert c.delete(f"/shares/{share['token']}").status_code == 200
    trace = (api.server.data / "trace.log").read_text()
    assert f"DELETE /api/v1/shares/{share['token'][:6]}…" in trace
    assert share["token"] not in trace


@pytest.mark.parametrize("path", ["../../../etc/passwd", "/../bob@example.test/x",
                                  "/%2e%2e/%2e%2e/etc/passwd", "/notes.txt/../../..",
                                  "/a\x00b"])
def test_path_traversal_on_share_creation(api: Api, path: str) -> None:
    (api.server.data / "files" / ALICE).mkdir(parents=True, exist_ok=True)
    with api.client(ALICE) as c:
        r = c.post("/shares", json={"path": path})
        assert "root:" not in r.text
        if r.status_code == 201:
            # ".." stops at the top of the user's own tree, as in a chroot: "/" is theirs.
            assert r.json()["path"] == "/" and r.json()["address"] == ALICE
            listing = httpx.get(r.json()["url"]).text
            assert "passwd" not in listing and "bob@" not in listing
            assert c.delete(f"/shares/{r.json()['token']}").status_code == 200
        else:
            assert r.status_code in (400, 404), r.text


def test_path_traversal_on_share_urls(api: Api) -> None:
    tree = api.server.data / "files" / ALICE / "pub"
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "ok.txt").write_text("fine")
    with api.client(ALICE) as c:
        url = c.post("/shares", json={"path": "/pub"}).json()["url"]
    assert httpx.get(url + "/ok.txt").text == "fine"
    for evil in ("/../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc"):
        r = httpx.get(url + evil)
        assert r.status_code == 404 and "root:" not in r.text


def test_oversize_bodies_are_refused_early(api: Api) -> None:
    with api.client(ALICE) as c:
        # Declared too large: refused from the header, before the body is read.
        with socket.create_connection(("127.0.0.1", api.server.port("http")), 30) as s:
            s.sendall(b"POST /api/v1/send HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/json\r\nContent-Length: 1000000000000\r\n"
                      b"Authorization: Bearer " + api.tokens[ALICE].encode() + b"\r\n\r\n{")
            assert s.recv(100).startswith(b"HTTP/1.1 413 ")
        # Sent too large in chunks (no Content-Length).
        def chunks() -> object:
            for _ in range(80):
                yield b"x" * (1 << 20)
        r = c.post("/send", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        # A message larger than [limits] max_message_size.
        big = "a" * (51 * 1024 * 1024)
        r = c.post("/send", json={"to": [BOB], "text": big})
        assert r.status_code == 413
        # Not JSON, wrong type, unknown field.
        assert c.post("/send", content=b"{", headers={"Content-Type": "application/json"}
                      ).status_code == 400
        assert c.post("/send", content=b"x", headers={"Content-Type": "text/plain"}
                      ).status_code == 415
        assert c.post("/send", json={"to": BOB}).status_code == 422
        assert c.post("/send", json={"to": [BOB], "bogus": 1}).status_code == 422


def test_login_throttling_is_shared_with_imap(api: Api) -> None:
    """Failures on the web slow IMAP logins from the same address down, and the other way."""
    with httpx.Client(base_url=api.base + "/api/v1", timeout=60) as c:
        for _ in range(3):
            assert c.post("/login", json={"address": ALICE, "password": "wrong"}
                          ).status_code == 401
        # The 4th failure is answered after the doubled delay (0.2, 0.4, 0.8 -> 1.6 s cap).
        t0 = time.monotonic()
        imap = imaplib.IMAP4("127.0.0.1", api.server.port("imap"))
        imap.starttls(ssl_context=__import__("tests.conftest", fromlist=["x"]).client_tls())
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(ALICE, "still wrong")
        slow = time.monotonic() - t0
        assert slow >= 0.8, slow  # waited for the web's failures before answering
        imap.logout()
        # A bad bearer token counts as a failure too, and the right password still works.
        r = c.get("/me", headers={"Authorization": "Bearer np_0000000000000000_nope"})
        assert r.status_code == 401
        r = c.post("/login", json={"address": ALICE, "password": PASSWORD})
        assert r.status_code == 200
    # The success forgave the address: the next failure is quick again.
    with httpx.Client(base_url=api.base + "/api/v1", timeout=60) as c:
        t0 = time.monotonic()
        assert c.post("/login", json={"address": ALICE, "password": "wrong"}).status_code == 401
        assert time.monotonic() - t0 < 1.0


def test_unknown_endpoints_and_methods_answer_json(api: Api) -> None:
    with api.client(ALICE) as c:
        r = c.get("/nothing/here")
        assert r.status_code == 404 and "error" in r.json()
        r = c.patch("/mailboxes")
        assert r.status_code in (404, 405) and "error" in r.json()
    r = httpx.get(api.base + "/api/v1/me")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_expired_sessions_are_refused_and_forgotten(api: Api) -> None:
    from netpost.store.embedded import open_admin
    from netpost.web.api.auth import make_credential

    admin = open_admin(api.server.data)
    try:
        old = make_credential(admin.tokens, ALICE, "session", lifetime=0.5)
        time.sleep(0.6)
        with httpx.Client(base_url=api.base + "/api/v1", timeout=30) as c:
            c.cookies.set("netpost_session", old.secret_text)
            assert c.get("/me").status_code == 401
        assert admin.tokens.remove_expired_tokens(time.time()) >= 1
        assert admin.tokens.get_token(old.token.id) is None
    finally:
        admin.close()


def test_huge_ids_are_not_found_not_errors(api: Api) -> None:
    with api.client(ALICE) as c:
        huge = "9" * 30
        assert c.get(f"/mailboxes/{huge}/messages").status_code == 404
        assert c.get(f"/mailboxes/1/messages/{huge}").status_code == 404
        assert c.get("/mailboxes/1/messages", params={"before": huge}).status_code == 422
        assert c.get("/events", params={"after": huge}).status_code == 422


def test_token_cli_refusals(api: Api) -> None:
    r = api.server.cli("token", "create", f"nobody@{ALICE.split('@')[1]}")
    assert r.returncode == 1 and "no user" in r.stderr
    r = api.server.cli("token", "revoke", "0123456789abcdef")
    assert r.returncode == 1 and "no API token" in r.stderr
    r = api.server.cli("token", "create", ALICE, "--days", "0")
    assert r.returncode == 1
