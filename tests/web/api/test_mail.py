"""The user's mail over the web API against a real server: send (durable, in Sent), list in
pages, read as JSON with MIME parts, raw and part downloads, flags, move, delete, search,
and the change feed as server-sent events while SMTP delivers."""

from __future__ import annotations

import base64
import json
import smtplib
import threading
import time

import httpx

from tests.web.api.conftest import ALICE, BOB, Api


def _send(api: Api, sender: str, **body: object) -> dict[str, object]:
    with api.client(sender) as c:
        r = c.post("/send", json=body)
        assert r.status_code == 202, r.text
        return dict(r.json())


def test_send_read_parts_raw_and_sent_copy(api: Api) -> None:
    attachment = bytes(range(256)) * 10
    result = _send(api, ALICE, to=[BOB], cc=[], subject="Zürich report", text="Grüezi Bob\n",
                   html="<p>Grüezi <b>Bob</b></p>",
                   attachments=[{"filename": "data.bin", "content_type":
                                 "application/octet-stream",
                                 "content_base64": base64.b64encode(attachment).decode()}])
    assert result["recipients"] == [BOB] and result["sent_uid"]
    inbox = api.mailbox_id(BOB)
    with api.client(BOB) as c:
        page = c.get(f"/mailboxes/{inbox}/messages").json()
        first = page["messages"][0]
        assert first["subject"] == "Zürich report" and first["from"] == ALICE
        assert first["message_id"] == result["message_id"]
        msg = c.get(f"/mailboxes/{inbox}/messages/{first['uid']}").json()
        kinds = {p["content_type"]: p for p in msg["parts"]}
        assert kinds["text/plain"]["text"] == "Grüezi Bob\n"
        assert "<b>Bob</b>" in kinds["text/html"]["text"]
        binary = kinds["application/octet-stream"]
        assert binary["filename"] == "data.bin" and binary["size"] == len(attachment)
        r = c.get(f"/mailboxes/{inbox}/messages/{first['uid']}/parts/{binary['part']}")
        assert r.content == attachment
        assert r.headers["content-disposition"] == 'attachment; filename="data.bin"'
        assert "sandbox" in r.headers["content-security-policy"]
        raw = c.get(f"/mailboxes/{inbox}/messages/{first['uid']}/raw")
        assert raw.headers["content-type"] == "message/rfc822"
        assert b"\r\nSubject: =?utf-8?" in raw.content  # RFC 2047 encoded
        assert raw.content.startswith(b"Return-Path: <" + ALICE.encode())
        assert b"with HTTP id " in raw.content  # the trace fields of a submission
        assert b"authenticated as " + ALICE.encode() in raw.content
    sent = api.mailbox_id(ALICE, "Sent")
    with api.client(ALICE) as c:
        copy = c.get(f"/mailboxes/{sent}/messages").json()["messages"][0]
        assert copy["subject"] == "Zürich report" and copy["flags"] == ["\\Seen"]


def test_paging_walks_the_whole_mailbox_newest_first(api: Api) -> None:
    with api.client(ALICE) as c:
        box = c.post("/mailboxes", json={"name": "paging"}).json()
    for i in range(23):
        _send(api, BOB, to=[ALICE], subject=f"page {i}", text="x", save_sent=False)
    with api.client(ALICE) as c:
        moved = 0
        inbox = api.mailbox_id(ALICE)
        for m in c.get(f"/mailboxes/{inbox}/messages", params={"limit": 100}).json()["messages"]:
            if m["subject"].startswith("page "):
                r = c.post(f"/mailboxes/{inbox}/messages/{m['uid']}/move",
                           json={"mailbox": "paging"})
                assert r.status_code == 200 and r.json()["mailbox"] == "paging"
                moved += 1
        assert moved == 23
        seen: list[int] = []
        before = None
        while True:
            params = {"limit": 10} | ({"before": before} if before else {})
            page = c.get(f"/mailboxes/{box['id']}/messages", params=params).json()
            assert page["total"] == 23
            seen += [m["uid"] for m in page["messages"]]
            before = page["next_before"]
            if before is None:
                break
        assert seen == sorted(seen, reverse=True) and len(seen) == 23
        assert c.get(f"/mailboxes/{box['id']}/messages", params={"limit": 0}).status_code == 422


def test_flags_search_move_delete(api: Api) -> None:
    _send(api, BOB, to=[ALICE], subject="needle in a haystack", text="x", save_sent=False)
    inbox = api.mailbox_id(ALICE)
    with api.client(ALICE) as c:
        found = c.get(f"/mailboxes/{inbox}/search", params={"q": "NEEDLE"}).json()
        assert found["total"] >= 1
        uid = found["messages"][0]["uid"]
        assert found["messages"][0]["subject"] == "needle in a haystack"
        by_from = c.get(f"/mailboxes/{inbox}/search", params={"q": "bob@", "field": "from"})
        assert uid in [m["uid"] for m in by_from.json()["messages"]]
        r = c.post(f"/mailboxes/{inbox}/messages/{uid}/flags",
                   json={"add": ["\\Flagged", "$Important"]})
        assert r.json()["flags"] == ["$Important", "\\Flagged"]
        r = c.post(f"/mailboxes/{inbox}/messages/{uid}/flags", json={"remove": ["\\Flagged"]})
        assert r.json()["flags"] == ["$Important"]
        assert c.post(f"/mailboxes/{inbox}/messages/{uid}/flags",
                      json={"add": ["\\Bogus"]}).status_code == 422
        # Delete to Trash, then for good.
        r = c.delete(f"/mailboxes/{inbox}/messages/{uid}", params={"trash": True})
        assert r.status_code == 200
        assert c.get(f"/mailboxes/{inbox}/messages/{uid}").status_code == 404
        trash = api.mailbox_id(ALICE, "Trash")
        trashed = c.get(f"/mailboxes/{trash}/messages").json()["messages"][0]
        assert trashed["subject"] == "needle in a haystack"
        assert c.delete(f"/mailboxes/{trash}/messages/{trashed['uid']}").status_code == 200
        assert c.get(f"/mailboxes/{trash}/messages/{trashed['uid']}").status_code == 404
        assert c.post(f"/mailboxes/{trash}/messages/{trashed['uid']}/move",
                      json={"mailbox": "INBOX"}).status_code == 404


def test_send_refuses_unknown_local_users_and_bad_addresses(api: Api) -> None:
    with api.client(ALICE) as c:
        r = c.post("/send", json={"to": [f"nobody@{ALICE.split('@')[1]}"], "text": "x"})
        assert r.status_code == 400 and "no such local user" in r.json()["error"]
        assert c.post("/send", json={"to": ["not an address"], "text": "x"}).status_code == 422
        r = c.post("/send", json={"to": [BOB], "text": "x", "attachments": [
            {"filename": "a", "content_base64": "***"}]})
        assert r.status_code == 422


def test_change_feed_streams_smtp_deliveries(api: Api) -> None:
    events: list[dict[str, object]] = []
    ready = threading.Event()

    def listen() -> None:
        headers = {"Authorization": f"Bearer {api.tokens[BOB]}"}
        with httpx.stream("GET", api.base + "/api/v1/events", headers=headers,
                          timeout=30) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                ready.set()
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(10)
    time.sleep(0.2)
    with smtplib.SMTP("127.0.0.1", api.server.port("smtp"), timeout=30) as s:
        s.sendmail("someone@elsewhere.example", [BOB],
                   b"Subject: live\r\nFrom: someone@elsewhere.example\r\n\r\nhello\r\n")
    t.join(15)
    assert events and events[0]["kind"] == "append" and events[0]["mailbox"] == "INBOX"
    with api.client(BOB) as c:
        inbox = api.mailbox_id(BOB)
        msg = c.get(f"/mailboxes/{inbox}/messages/{events[0]['uid']}").json()
        assert msg["subject"] == "live"


def test_counts_follow_every_change(api: Api) -> None:
    """Totals and unseen counts are remembered per HIGHESTMODSEQ: every append, flag change
    and expunge must show at once."""
    inbox = api.mailbox_id(BOB)
    with api.client(BOB) as c:
        def state() -> tuple[int, int, int]:
            total = c.get(f"/mailboxes/{inbox}/messages").json()["total"]
            box = next(b for b in c.get("/mailboxes").json()["mailboxes"] if b["id"] == inbox)
            return total, box["messages"], box["unseen"]

        total, messages, unseen = state()
        assert total == messages
        _send(api, ALICE, to=[BOB], subject="count me", text="x", save_sent=False)
        assert state() == (total + 1, messages + 1, unseen + 1)
        uid = c.get(f"/mailboxes/{inbox}/messages").json()["messages"][0]["uid"]
        c.post(f"/mailboxes/{inbox}/messages/{uid}/flags", json={"add": ["\\Seen"]})
        assert state() == (total + 1, messages + 1, unseen)
        c.delete(f"/mailboxes/{inbox}/messages/{uid}")
        assert state() == (total, messages, unseen)
