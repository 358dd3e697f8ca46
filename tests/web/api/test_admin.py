"""What an administrator does with the CLI, over the web API, against a real server; the
live views (sessions, trace stream) and /metrics."""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from netpost.store.embedded import open_reader
from netpost.store.interfaces import BlobRef
from netpost.testing import start_netpost
from tests.conftest import DOMAIN, PASSWORD
from tests.web.api.conftest import ADMIN, ALICE, BOB, Api


def test_domains_and_dkim_records(api: Api) -> None:
    with api.client(ADMIN) as c:
        r = c.post("/domains", json={"name": "Second.Example"})
        assert r.status_code == 201, r.text
        record = r.json()
        assert record["domain"] == "second.example"
        assert record["name"] == f"{record['selector']}._domainkey.second.example"
        assert record["value"].startswith("v=DKIM1; k=rsa; p=")
        assert c.get("/domains/second.example/dkim").json() == record
        assert "second.example" in c.get("/domains").json()["domains"]
        assert c.post("/domains", json={"name": "second.example"}).status_code == 409
        assert c.post("/domains", json={"name": "bad..name"}).status_code == 400
        assert c.delete("/domains/second.example").status_code == 200
        assert c.get("/domains/second.example/dkim").status_code == 404
        assert c.delete(f"/domains/{DOMAIN}").status_code == 400  # it has accounts
    # The CLI sees the same store.
    assert "second.example" not in api.server.cli("domain", "list").stdout


def test_accounts_passwords_and_quotas(api: Api) -> None:
    carol = f"carol@{DOMAIN}"
    with api.client(ADMIN) as c:
        r = c.post("/accounts", json={"address": carol, "password": "first pass"})
        assert r.status_code == 201 and r.json()["address"] == carol
        assert c.post("/accounts", json={"address": carol, "password": "x"}).status_code == 409
        assert c.post("/accounts", json={"address": "x@nowhere.example", "password": "x"}
                      ).status_code == 400
        assert carol in [a["address"] for a in c.get("/accounts").json()["accounts"]]
        assert c.put(f"/accounts/{carol}/quota", json={"octets": 1000}).status_code == 200
        assert c.get(f"/accounts/{carol}").json()["quota"] == 1000
    # Carol changes her own password: the current one is required.
    login = httpx.post(api.base + "/api/v1/login", json={"address": carol,
                                                          "password": "first pass"})
    assert login.status_code == 200
    with httpx.Client(base_url=api.base + "/api/v1", cookies=login.cookies, timeout=30,
                      headers={"X-CSRF-Token": login.json()["csrf_token"]}) as c:
        assert c.put(f"/accounts/{carol}/password", json={"password": "second pass"}
                     ).status_code == 403
        assert c.put(f"/accounts/{carol}/password", json={
            "password": "second pass", "current_password": "wrong"}).status_code == 403
        assert c.put(f"/accounts/{carol}/password", json={
            "password": "second pass", "current_password": "first pass"}).status_code == 200
    assert httpx.post(api.base + "/api/v1/login", json={
        "address": carol, "password": "second pass"}).status_code == 200
    with api.client(ADMIN) as c:
        assert c.delete(f"/accounts/{ADMIN}").status_code == 409  # not yourself
        assert c.delete(f"/accounts/{carol}").status_code == 200
        assert c.get(f"/accounts/{carol}").status_code == 404


def test_aliases(api: Api) -> None:
    with api.client(ADMIN) as c:
        r = c.post("/aliases", json={"source": f"team@{DOMAIN}", "target": ALICE})
        assert r.status_code == 201
        assert {"source": f"team@{DOMAIN}", "target": ALICE} in c.get("/aliases").json()[
            "aliases"]
        assert c.post("/aliases", json={"source": f"team@{DOMAIN}", "target": ALICE}
                      ).status_code == 409
        r = c.delete("/aliases", params={"source": f"team@{DOMAIN}", "target": ALICE})
        assert r.status_code == 200
        assert c.delete("/aliases", params={"source": f"team@{DOMAIN}", "target": ALICE}
                        ).status_code == 404


def test_queue_list_retry_delete(api: Api) -> None:
    with api.client(ALICE) as c:  # a remote recipient: the relay queues it
        r = c.post("/send", json={"to": ["someone@unreachable.invalid"], "text": "x",
                                  "save_sent": False})
        assert r.status_code == 202, r.text
        queue_id = r.json()["queue_id"]
    with api.client(ADMIN) as c:
        listed = c.get("/queue").json()
        ids = [m["queue_id"] for m in listed["messages"]]
        assert queue_id in ids and sum(listed["counts"].values()) >= 1
        one = c.get(f"/queue/{queue_id}").json()
        assert one["mail_from"] == ALICE
        # As from submission: DKIM-signed as the sender's domain, for the remote recipient.
        shown = api.server.cli("queue", "show", queue_id).stdout
        sha = shown.split("sha256 ")[1].split()[0]
        reader = open_reader(api.server.data)
        try:
            queued = reader.blobs.read(BlobRef(sha, one["size"]))
        finally:
            reader.close()
        assert b"DKIM-Signature:" in queued and f"d={DOMAIN}".encode() in queued
        assert one["recipients"][0]["address"] == "someone@unreachable.invalid"
        assert c.post(f"/queue/{queue_id}/retry").status_code == 200
        assert c.post("/queue/flush", params={"domain": "unreachable.invalid"}
                      ).status_code == 200
        assert c.delete(f"/queue/{queue_id}").status_code == 200
        assert c.get(f"/queue/{queue_id}").status_code == 404


def test_sessions_and_live_trace_stream(api: Api) -> None:
    lines: list[str] = []
    ready = threading.Event()

    def listen() -> None:
        headers = {"Authorization": f"Bearer {api.tokens[ADMIN]}"}
        with httpx.stream("GET", api.base + "/api/v1/traces/stream",
                          params={"listener": "smtp"}, headers=headers, timeout=30) as r:
            for line in r.iter_lines():
                ready.set()
                if line.startswith("data: "):
                    lines.append(line[6:])
                    if "QUIT" in line:
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(10)
    time.sleep(0.2)
    with smtplib.SMTP("127.0.0.1", api.server.port("smtp"), timeout=30) as s:
        s.ehlo("inspector.example")
        with api.client(ADMIN) as c:
            sessions = c.get("/sessions").json()
        assert any(x["listener"] == "smtp" for x in sessions["sessions"])
        names = {x["name"] for x in sessions["listeners"]}
        assert {"smtp", "imap", "http", "https"} <= names
    t.join(15)
    text = "\n".join(lines)
    assert "c: ehlo inspector.example" in text.lower() and "S: 250" in text
    assert all(" smtp#" in x for x in lines)  # the filter kept other listeners out
    with api.client(ADMIN) as c:
        status = c.get("/traces").json()
        assert status["enabled"] and "smtp" in status["listeners"]


def test_metrics_need_an_admin_token_by_default(api: Api) -> None:
    url = api.base + "/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.post(api.base + "/api/v1/login", json={"address": BOB, "password": "no"}
                      ).status_code == 401
    r = httpx.get(url, headers={"Authorization": f"Bearer {api.tokens[BOB]}"})
    assert r.status_code == 403
    c, _csrf = api.login(ADMIN)  # a browser session is not enough: scrapers use tokens
    assert c.get(url).status_code == 401
    c.close()
    with smtplib.SMTP("127.0.0.1", api.server.port("smtp"), timeout=30) as s:
        s.sendmail("x@elsewhere.example", [ALICE], b"Subject: m\r\n\r\nx\r\n")
        try:
            s.rcpt("nobody@" + DOMAIN)
        except smtplib.SMTPException:
            pass
    for listener, command, answer in (("imap", b"a1 BOGUS\r\n", b"a1 BAD"),
                                      ("pop3", b"STAT\r\n", b"-ERR")):  # not logged in
        with socket.create_connection(("127.0.0.1", api.server.port(listener)), 30) as sock:
            f = sock.makefile("rb")
            f.readline()  # the greeting
            sock.sendall(command)
            assert f.readline().startswith(answer)
    r = httpx.get(url, headers={"Authorization": f"Bearer {api.tokens[ADMIN]}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'netpost_error_replies_total{code="BAD",listener="imap"}' in r.text
    assert 'netpost_error_replies_total{code="-ERR",listener="pop3"}' in r.text
    text = r.text
    for needle in ('netpost_connections{listener="smtp",protocol="smtp"}',
                   'netpost_commands_total{command="MailFrom",listener="smtp"}',
                   'netpost_error_replies_total{code="503",listener="smtp"}',
                   "netpost_queue_recipients", "netpost_queue_oldest_age_seconds",
                   "netpost_deliveries_total", "netpost_group_commit_batch_size_bucket",
                   "netpost_group_commit_seconds_sum", 'netpost_http_responses_total{code="401"}',
                   'netpost_login_failures_total{protocol="web"}', "netpost_web_sessions"):
        assert needle in text, needle


@pytest.mark.parametrize("mode,status", [("public", 200), ("off", 404)])
def test_metrics_modes(tmp_path: Path, mode: str, status: int) -> None:
    with start_netpost(tmp_path / "d", listeners=("http",),
                       config=f'[web]\nmetrics = "{mode}"\n') as server:
        r = httpx.get(server.url("/metrics"))
        assert r.status_code == status
        if status == 200:
            assert "netpost_start_time_seconds" in r.text


def test_openapi_document_and_docs_page(api: Api) -> None:
    doc = httpx.get(api.base + "/api/v1/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ("GET", "/api/v1/mailboxes/{mailbox_id}/messages") in ops
    assert ("POST", "/api/v1/login") in ops and ("GET", "/api/v1/queue") in ops
    page = httpx.get(api.base + "/api/v1/docs")
    assert page.status_code == 200 and "openapi.json" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    assert "cdn" not in page.text.lower()
    # The demo password never becomes an admin's elsewhere: only [web] admins are.
    me = httpx.post(api.base + "/api/v1/login", json={"address": ALICE, "password": PASSWORD})
    assert me.json()["admin"] is False


def test_ntp_status_and_leases(api: Api) -> None:
    import ntplib

    ntplib.NTPClient().request("127.0.0.1", port=api.server.port("ntp"), version=4, timeout=10)
    with api.client(ADMIN) as c:
        status = c.get("/status/ntp").json()
        assert status["running"] is True and status["stratum"] == 10  # the local clock
        assert status["synchronized"] is False and status["upstreams"] == []
        assert status["counters"]["requests"] >= 1 and status["counters"]["replies"] >= 1
        assert c.get("/leases").json() == {"leases": []}  # DHCP is off here
        metrics = c.get(api.base + "/metrics").text
        assert 'netpost_ntp_requests_total{outcome="replies"}' in metrics
    with api.client(ALICE) as c:
        assert c.get("/status/ntp").status_code == 403


def test_tracing_switched_on_while_running(tmp_path: Path) -> None:
    """The inspector's use: a server started without tracing; an administrator turns it on
    for smtp and http and watches; then off again."""
    admin = "root@example.test"
    with start_netpost(tmp_path / "d", listeners=("smtp", "http"),
                       accounts={admin: "pw"},
                       config=f'[web]\nadmins = ["{admin}"]\n') as server:
        headers = {"Authorization": f"Bearer {server.api_token(admin)}"}
        with httpx.Client(base_url=server.url("/api/v1"), headers=headers, timeout=30) as c:
            assert c.get("/traces").json()["enabled"] is False
            assert c.get("/traces/stream").status_code == 409
            assert c.put("/traces/nope", json={"enabled": True}).status_code == 404
            for name in ("smtp", "http"):
                r = c.put(f"/traces/{name}", json={"enabled": True})
                assert r.status_code == 200 and name in r.json()["listeners"]
            with smtplib.SMTP(*server.address("smtp"), timeout=30) as s:
                s.ehlo("watched.example")
            httpx.get(server.url("/api/v1/me"), headers=headers)  # a new connection
            trace = (server.data_dir / "trace.log").read_text()
            assert "ehlo watched.example" in trace.lower()
            assert "C: GET /api/v1/me" in trace and "Bearer" not in trace
            r = c.put("/traces/smtp", json={"enabled": False})
            assert r.json()["listeners"] == ["http"]
            with smtplib.SMTP(*server.address("smtp"), timeout=30) as s:
                s.ehlo("unwatched.example")
            assert "unwatched" not in (server.data_dir / "trace.log").read_text()
