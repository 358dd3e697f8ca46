"""The API the browser UI uses (web/api/ui.py), over HTTP with bearer tokens: sanitised
message HTML and its headers, threads, the caller's file tree, /server; and the JSON 404 of
paths the API's mount cannot match."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email.message import EmailMessage

import httpx
import pytest

from netpost.testing import RunningNetpost, start_netpost

ALICE, BOB, ADMIN = "alice@example.test", "bob@example.test", "admin@example.test"


@pytest.fixture(scope="module")
def np(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNetpost]:
    accounts = {ALICE: "secret", BOB: "secret", ADMIN: "secret"}
    config = f'[web]\nadmins = ["{ADMIN}"]\n'
    with start_netpost(tmp_path_factory.mktemp("ui-api"), listeners=("smtp", "http"),
                       accounts=accounts, config=config) as server:
        yield server


def client(np: RunningNetpost, who: str) -> httpx.Client:
    return httpx.Client(base_url=np.url("/api/v1"), timeout=30,
                        headers={"Authorization": f"Bearer {np.api_token(who)}"})


def inbox(c: httpx.Client) -> int:
    return next(b["id"] for b in c.get("/mailboxes").json()["mailboxes"] if b["name"] == "INBOX")


def send(np: RunningNetpost, msg: EmailMessage, to: str) -> None:
    with smtplib.SMTP(*np.address("smtp")) as s:
        s.send_message(msg, from_addr="x@example.test", to_addrs=[to])


def test_message_html_is_sanitised_with_its_own_csp(np: RunningNetpost) -> None:
    msg = EmailMessage()
    msg["Subject"] = "html"
    msg.set_content("text")
    msg.add_alternative('<p onclick="x()">Hi</p><script>alert(1)</script>'
                        '<img src="https://t.example/p.gif">', subtype="html")
    send(np, msg, ALICE)
    plain = EmailMessage()
    plain["Subject"] = "plain"
    plain.set_content("only text")
    send(np, plain, ALICE)
    with client(np, ALICE) as c:
        box = inbox(c)
        uids = {m["subject"]: m["uid"] for m in c.get(f"/mailboxes/{box}/messages").json()[
            "messages"]}
        r = c.get(f"/mailboxes/{box}/messages/{uids['html']}/html")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "<p>Hi</p>" in r.text and "script" not in r.text and "onclick" not in r.text
        assert "t.example" not in r.text and r.headers["x-netpost-remote-blocked"] == "1"
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "sandbox" in csp and "script-src" not in csp
        assert "img-src data:;" in csp
        r = c.get(f"/mailboxes/{box}/messages/{uids['html']}/html?remote=true")
        assert 'src="https://t.example/p.gif"' in r.text
        assert "img-src data: http: https:" in r.headers["content-security-policy"]
        assert c.get(f"/mailboxes/{box}/messages/{uids['plain']}/html").status_code == 404
    with client(np, BOB) as c:  # another's message: 404, as for none
        assert c.get(f"/mailboxes/{box}/messages/{uids['html']}/html").status_code == 404


def test_threads_group_by_references_then_subject(np: RunningNetpost) -> None:
    def mail(subject: str, mid: str, reply_to: str | None = None) -> EmailMessage:
        m = EmailMessage()
        m["Subject"] = subject
        m["Message-ID"] = mid
        if reply_to:
            m["In-Reply-To"] = reply_to
            m["References"] = reply_to
        m.set_content("x")
        return m
    send(np, mail("Plans", "<a@x>"), BOB)
    send(np, mail("Something else entirely", "<b@x>", "<a@x>"), BOB)  # linked by reference
    send(np, mail("RE: Fwd: plans", "<c@x>"), BOB)  # linked by subject
    send(np, mail("Other", "<d@x>"), BOB)
    with client(np, BOB) as c:
        page = c.get(f"/mailboxes/{inbox(c)}/threads?limit=10").json()
    threads = [[m["message_id"] for m in t["messages"]] for t in page["threads"]]
    assert threads == [["<d@x>"], ["<a@x>", "<b@x>", "<c@x>"]]
    assert page["threads"][1]["subject"] == "Plans" and page["threads"][1]["unseen"] == 3


def test_files_of_ones_own_tree(np: RunningNetpost) -> None:
    with client(np, ALICE) as c:
        assert c.get("/files").json()["entries"] == []
        assert c.post("/files/folders", json={"path": "/docs"}).status_code == 201
        r = c.put("/files/content", params={"path": "/docs/a.bin"}, content=b"\x00\x01" * 5000)
        assert r.status_code == 201 and r.json()["size"] == 10000
        listing = c.get("/files", params={"path": "/docs"}).json()
        assert [(e["name"], e["size"]) for e in listing["entries"]] == [("a.bin", 10000)]
        r = c.get("/files/content", params={"path": "/docs/a.bin"})
        assert r.content == b"\x00\x01" * 5000
        assert r.headers["content-disposition"] == 'attachment; filename="a.bin"'
        assert "sandbox" in r.headers["content-security-policy"]
        assert c.delete("/files", params={"path": "/docs"}).status_code == 409  # not empty
        assert c.delete("/files", params={"path": "/docs/a.bin"}).status_code == 200
        assert c.delete("/files", params={"path": "/docs"}).status_code == 200
        assert c.delete("/files", params={"path": "/"}).status_code == 409
        for escape in ("../../..", "/docs/../../", "/./../"):
            r = c.get("/files", params={"path": escape})
            assert r.status_code == 200 and r.json()["path"] == "/", escape  # clamped
        # ".." above the root stays at the root: this is alice's /bob@example.test (none)
        assert c.get("/files", params={"path": "/../bob@example.test"}).status_code == 404
        assert c.get("/files/content", params={"path": "/../netpost.toml"}).status_code == 404
    with client(np, BOB) as c:
        assert c.get("/files").json()["entries"] == []  # alice's tree is not bob's


def test_server_settings_hide_secrets_and_are_for_admins(np: RunningNetpost) -> None:
    with client(np, ADMIN) as c:
        s = c.get("/server").json()
    assert s["certificate"]["self_signed"] and len(s["certificate"]["sha256"]) == 64
    assert s["listeners"]["http"].startswith("127.0.0.1:")
    assert "hostname" in s["settings"]["server"]
    with client(np, ALICE) as c:
        assert c.get("/server").status_code == 403


def test_unmatchable_api_paths_answer_json(np: RunningNetpost) -> None:
    with client(np, ALICE) as c:
        for path in ("/tokens/a%0Ab", "/x%0Ay", "/nothing"):
            r = c.delete(path) if path.startswith("/tokens") else c.get(path)
            assert r.status_code == 404 and r.headers["content-type"] == "application/json"
            assert "error" in r.json()


def test_drafts_are_kept_and_replaced(np: RunningNetpost) -> None:
    with client(np, BOB) as c:
        drafts = next(b["id"] for b in c.get("/mailboxes").json()["mailboxes"]
                      if b["name"] == "Drafts")
        first = c.post("/drafts", json={"subject": "wip", "text": "one"})
        assert first.status_code == 201, first.text
        raw = c.get(f"/mailboxes/{drafts}/messages/{first.json()['uid']}/raw").content
        assert b"\r\nTo:" not in raw.split(b"\r\n\r\n", 1)[0]  # no recipient yet: no To
        second = c.post("/drafts", json={"subject": "wip", "text": "two", "to": [ALICE],
                                         "replaces": first.json()["uid"]}).json()
        page = c.get(f"/mailboxes/{drafts}/messages").json()["messages"]
        assert [m["uid"] for m in page] == [second["uid"]]
        assert set(page[0]["flags"]) == {"\\Draft", "\\Seen"} and page[0]["to"] == ALICE
        raw = c.get(f"/mailboxes/{drafts}/messages/{second['uid']}/raw").content
        assert raw.split(b"\r\n\r\n", 1)[1].strip() == b"two"
    draft = np.messages(BOB, "Drafts")
    assert len(draft) == 1 and draft[0]["From"] == BOB
    with client(np, ALICE) as c:  # nothing was sent
        assert all(m["subject"] != "wip" for m in
                   c.get(f"/mailboxes/{inbox(c)}/messages").json()["messages"])
