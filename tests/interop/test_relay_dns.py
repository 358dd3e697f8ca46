"""Outbound mail by MX records, with a real DNS server, and the inbound checks on the receiver.

A real Knot server (tests/support/dns.py) is the only DNS either netpost asks:

- example.test: A's domain; SPF allows 127.0.0.1, A's DKIM key is published, DMARC p=reject.
- b.test: MX mx.b.test → 127.0.0.2 (server B); MTA-STS enforce listing mx.b.test, policy
  served over HTTPS with a certificate from a test CA; B's certificate is from that CA too.
- null.test: a null MX (RFC 7505).  sts-unlisted.test: MTA-STS enforce naming another MX.
  wrong-cert.test: MTA-STS enforce, MX on B whose certificate names mx.b.test only.
- q.test: DMARC p=quarantine, no SPF, no DKIM.

A (127.0.0.1) delivers to B (127.0.0.2) by MX; B checks DKIM, SPF and DMARC for every client
([smtp] auth_checks_skip = []) and applies DMARC reject and quarantine.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netpost.mail import dkim
from tests.conftest import CONFIG, PASSWORD, Server, client_tls, run_cli, start_server
from tests.interop.helpers import fetch_all
from tests.interop.test_relay import dsn_groups, free_port, queue_empty, submit, wait_for
from tests.interop.test_swaks import swaks
from tests.mail.test_mtasts import PolicyServer, Reply
from tests.security import ALICE, DOMAIN, stop, template
from tests.support.certs import TestCA
from tests.support.dns import DNSServer, Record, a, mx, null_mx, txt

B_HOST = "127.0.0.2"
BOB_B = "bob@b.test"


def enforce(*mx_names: str) -> Reply:
    lines = ["version: STSv1", "mode: enforce", *(f"mx: {n}" for n in mx_names),
             "max_age: 86400"]
    return Reply(("\r\n".join(lines) + "\r\n").encode())


@dataclass
class World:
    a: Server
    b: Server
    ns: DNSServer


def zones(a_data: Path) -> dict[str, list[Record]]:
    name, value = dkim.dkim_record(a_data, DOMAIN)
    selector = name.removesuffix(f"._domainkey.{DOMAIN}")
    return {
        DOMAIN: [mx("@", 10, f"mx.{DOMAIN}"), a("mx", "127.0.0.1"),
                 txt("@", "v=spf1 ip4:127.0.0.1 -all"),
                 txt(f"{selector}._domainkey", value),
                 txt("_dmarc", "v=DMARC1; p=reject; adkim=s; aspf=r")],
        "b.test": [mx("@", 10, "mx.b.test"), a("mx", B_HOST),
                   txt("_mta-sts", "v=STSv1; id=1;"), a("mta-sts", "127.0.0.1"),
                   txt("@", "v=spf1 ip4:127.0.0.2 -all")],
        "null.test": [null_mx()],
        "sts-unlisted.test": [mx("@", 10, "mx.sts-unlisted.test"), a("mx", B_HOST),
                              txt("_mta-sts", "v=STSv1; id=1;"), a("mta-sts", "127.0.0.1")],
        "wrong-cert.test": [mx("@", 10, "mx.wrong-cert.test"), a("mx", B_HOST),
                            txt("_mta-sts", "v=STSv1; id=1;"), a("mta-sts", "127.0.0.1")],
        "q.test": [txt("_dmarc", "v=DMARC1; p=quarantine")],
        "nopolicy.test": [],
        "loop.test": [mx("@", 10, f"mx.{DOMAIN}")],  # A is its best MX
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("relay-dns")
    ca = TestCA()
    certs = root / "certs"
    policies = PolicyServer(ca, ["mta-sts.b.test", "mta-sts.sts-unlisted.test",
                                 "mta-sts.wrong-cert.test"], certs)
    policies.replies["mta-sts.b.test"] = enforce("mx.b.test")
    policies.replies["mta-sts.sts-unlisted.test"] = enforce("mx.elsewhere.test")
    policies.replies["mta-sts.wrong-cert.test"] = enforce("mx.wrong-cert.test")
    ca_file = certs / "ca.pem"
    ca_file.write_text(ca.pem)
    b_cert, b_key = ca.issue("mx.b.test", directory=certs)

    a_data = root / "a"
    shutil.copytree(template(root.parent), a_data)
    ns = DNSServer(zones(a_data))
    ns.start()
    b_data = root / "b"
    b_data.mkdir()
    assert run_cli(b_data, "domain", "add", "b.test").returncode == 0
    r = run_cli(b_data, "user", "add", BOB_B, "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    b_port = free_port(B_HOST)
    b = start_server(b_data, CONFIG + f"""
[server]
shutdown_grace = 2.0
hostname = "mx.b.test"
[tls]
certificate = "{b_cert}"
key = "{b_key}"
[smtp]
auth_checks_skip = []
[relay]
nameservers = ["{ns.address}"]
""", ports={"smtp": b_port}, host=B_HOST)
    a_srv = start_server(a_data, CONFIG + f"""
[server]
shutdown_grace = 2.0
hostname = "mx.example.test"
[relay]
nameservers = ["{ns.address}"]
remote_port = {b_port}
source_address = "127.0.0.1"
ca_file = "{ca_file}"
mta_sts_port = {policies.port}
first_retry = 60.0
max_retry = 120.0
connect_timeout = 3.0
command_timeout = 10.0
""")
    yield World(a_srv, b, ns)
    stop(a_srv)
    stop(b)
    ns.stop()
    policies.close()


def messages(server: Server, user: str) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
            for raw in fetch_all(server, user)]


def by_subject(server: Server, user: str, subject: str) -> email.message.EmailMessage | None:
    return next((m for m in messages(server, user) if m["Subject"] == subject), None)


def results_of(msg: email.message.EmailMessage) -> list[str]:
    return [" ".join(str(v).split()) for v in msg.get_all("Authentication-Results") or []]


def test_delivered_by_mx_over_mta_sts_with_dkim_spf_dmarc_passing(world: World,
                                                                   tmp_path: Path) -> None:
    # Submitted by swaks (STARTTLS, AUTH PLAIN), as a user's client would.
    msg = (f"From: {ALICE}\r\nTo: {BOB_B}\r\nSubject: by mx\r\n"
           "Message-ID: <by-mx@example.test>\r\n\r\nacross by MX\r\n.leading dot\r\n")
    eml = tmp_path / "m.eml"
    eml.write_bytes(msg.encode()[:-2])  # swaks adds the final CRLF "." CRLF
    r = subprocess.run([swaks(tls=True), "--server",
                        f"127.0.0.1:{world.a.port('submission')}", "--tls", "--auth", "PLAIN",
                        "--auth-user", ALICE, "--auth-password", PASSWORD, "--from", ALICE,
                        "--to", BOB_B, "--data", f"@{eml}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "queued as" in r.stdout, r.stdout + r.stderr
    wait_for(lambda: by_subject(world.b, BOB_B, "by mx") is not None, what="delivery to B")
    msg = by_subject(world.b, BOB_B, "by mx")
    assert msg is not None
    received = " ".join(str(msg["Received"]).split())
    assert "by mx.b.test" in received and "ESMTPS" in received  # TLS (MTA-STS enforce)
    assert "DKIM-Signature" in msg
    assert msg.get_content().replace("\r\n", "\n").endswith("across by MX\n.leading dot\n")
    [results] = results_of(msg)
    assert results.startswith("mx.b.test;")
    assert "dkim=pass" in results and "header.d=example.test" in results
    assert "spf=pass" in results and "smtp.mailfrom=alice@example.test" in results
    assert "dmarc=pass" in results and "header.from=example.test" in results
    wait_for(lambda: queue_empty(world.a), what="A's queue to empty")


def _dsn_for(server: Server, recipient: str) -> email.message.Message | None:
    return next((g for g in dsn_groups(server, ALICE)
                 if recipient in str(g["Final-Recipient"])), None)


def test_null_mx_bounces_at_once(world: World) -> None:
    submit(world.a, ["someone@null.test"], "to a null mx")
    wait_for(lambda: _dsn_for(world.a, "someone@null.test") is not None, what="a DSN")
    group = _dsn_for(world.a, "someone@null.test")
    assert group is not None
    assert group["Action"] == "failed" and group["Status"] == "5.1.10"
    assert "null MX" in str(group["Diagnostic-Code"])


def test_mail_that_would_loop_back_bounces(world: World) -> None:
    # RFC 5321 5.1: A (mx.example.test) is loop.test's best MX, yet not its final destination.
    submit(world.a, ["x@loop.test"], "looping")
    wait_for(lambda: _dsn_for(world.a, "x@loop.test") is not None, what="a DSN")
    group = _dsn_for(world.a, "x@loop.test")
    assert group is not None and group["Status"] == "5.4.6"
    assert "loops back to myself" in str(group["Diagnostic-Code"])


def test_mta_sts_enforce_refuses_unlisted_mx_and_bad_certificate(world: World) -> None:
    submit(world.a, ["x@sts-unlisted.test"], "unlisted")
    submit(world.a, ["x@wrong-cert.test"], "wrong cert")

    def both_deferred() -> bool:
        listing = world.a.cli("queue", "list").stdout
        return listing.count("deferred") >= 2
    wait_for(both_deferred, what="two deferrals")
    listing = world.a.cli("queue", "list").stdout
    lines = listing.splitlines()
    unlisted = next(line for line in lines if "<x@sts-unlisted.test>" in line)
    assert "deferred" in unlisted and "MTA-STS" in unlisted, listing
    wrong = next(line for line in lines if "<x@wrong-cert.test>" in line)
    assert "deferred" in wrong and "certificate" in wrong.lower(), listing
    assert by_subject(world.b, BOB_B, "unlisted") is None  # neither reached B
    assert by_subject(world.b, BOB_B, "wrong cert") is None
    for line in lines:
        if line[:1].isalnum() and not line.startswith("recipients:"):
            assert world.a.cli("queue", "delete", line.split()[0]).returncode == 0


def _send_to_b(world: World, mail_from: str, header_from: str, subject: str,
               extra: str = "") -> tuple[int, bytes]:
    body = (f"From: {header_from}\r\nTo: {BOB_B}\r\nSubject: {subject}\r\n{extra}"
            f"Message-ID: <{subject.replace(' ', '.')}@test>\r\n\r\nhello\r\n")
    with smtplib.SMTP(B_HOST, world.b.port("smtp"), timeout=30) as s:
        s.ehlo("client.test")
        s.starttls(context=client_tls())
        s.ehlo("client.test")
        s.mail(mail_from)
        code, text = s.rcpt(BOB_B)
        assert code == 250, text
        return s.data(body.encode())


def test_dmarc_reject_is_refused_in_the_dialogue(world: World) -> None:
    # From: example.test (p=reject) without its DKIM signature, MAIL FROM another domain.
    code, text = _send_to_b(world, "x@nopolicy.test", f"ceo@{DOMAIN}", "spoofed")
    assert code == 550 and b"5.7.1" in text and b"DMARC" in text and b"example.test" in text
    assert by_subject(world.b, BOB_B, "spoofed") is None


def _junk(server: Server, user: str) -> list[bytes]:
    with imaplib.IMAP4(server.host, server.port("imap")) as imap:
        imap.starttls(client_tls())
        imap.login(user, PASSWORD)
        typ, _ = imap.select("Junk", readonly=True)
        assert typ == "OK"
        typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
        return [d[1] for d in data if isinstance(d, tuple)]


def test_dmarc_quarantine_files_in_junk(world: World) -> None:
    code, text = _send_to_b(world, "x@q.test", "x@q.test", "quarantined")
    assert code == 250, text
    assert by_subject(world.b, BOB_B, "quarantined") is None  # not in INBOX
    junk = [m for m in _junk(world.b, BOB_B) if b"Subject: quarantined" in m]
    assert len(junk) == 1
    msg = email.message_from_bytes(junk[0], policy=email.policy.default)
    [results] = results_of(msg)  # type: ignore[arg-type]
    assert "dmarc=fail" in results and "p=quarantine dis=quarantine" in results


def test_forged_results_claiming_our_name_are_removed(world: World) -> None:
    forged = ("Authentication-Results: mx.b.test; dkim=pass header.d=bank.test\r\n"
              "Authentication-Results: other.example; spf=pass\r\n")
    code, text = _send_to_b(world, "x@nopolicy.test", "x@nopolicy.test", "forged ar", forged)
    assert code == 250, text
    msg = by_subject(world.b, BOB_B, "forged ar")
    assert msg is not None
    results = results_of(msg)
    ours = [r for r in results if r.startswith("mx.b.test")]
    assert len(ours) == 1 and "bank.test" not in ours[0]
    assert "dmarc=none" in ours[0] and "spf=none" in ours[0]
    assert any(r.startswith("other.example") for r in results)  # others' fields are kept
