"""Outbound and inbound mail with a real Postfix as the remote peer (issue 7).

netpost → Postfix: netpost (domain example.test, users from tests/security's template) relays
its users' mail to a private Postfix MX for b.test, given as its smart host.  Postfix offers
STARTTLS with a certificate from a test CA, and netpost is told to require TLS and check the
certificate (`tls = "required"`, `ca_file`), so every delivery here is over verified TLS.
Postfix keeps a Return-Path field it receives (its default drops it), so a Return-Path that
netpost sent along would show.

Postfix → netpost: a second private Postfix relays everything to netpost's MX listener.

Postfix's virtual(8) writes Maildir files with LF line ends; `crlf` turns them back into the
CRLF form that was sent, so bodies are compared byte for byte.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import re
import shutil
import smtplib
import time
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import dkim
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from netpost.mail.dkim import dkim_record
from tests.conftest import CONFIG, DOMAIN, PASSWORD, Server, client_tls, start_server
from tests.interop.helpers import body_of, fetch_all
from tests.security import ALICE, BOB, stop, template
from tests.support.certs import TestCA
from tests.support.postfix import PostfixPeer

PF_DOMAIN = "b.test"
PF_HOST = "mx.b.test"
PF_USERS = ("u1", "u2", "u3")
U1, U2, U3 = (f"{u}@{PF_DOMAIN}" for u in PF_USERS)
NETPOST_HOST = "mx.example.test"

# Lines that SMTP transparency (RFC 5321 4.5.2), trailing white space and 8-bit text must not
# disturb on the way through two MTAs.
BODY = ("first line\r\n"
        ".a line with a leading dot\r\n"
        "..two dots\r\n"
        ".\r\n"
        "trailing spaces   \r\n"
        "\ttab first\r\n"
        "caf\u00e9 \u2013 8-bit UTF-8\r\n"
        "last line\r\n").encode()


def make_message(subject: str, to: list[str], sender: str = ALICE) -> bytes:
    return (f"From: <{sender}>\r\n"
            f"To: {', '.join(f'<{t}>' for t in to)}\r\n"
            f"Subject: {subject}\r\n"
            f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: 8bit\r\n"
            f"\r\n").encode() + BODY


def crlf(raw: bytes) -> bytes:
    assert b"\r" not in raw, "a Maildir file from virtual(8) should have bare LF line ends"
    return raw.replace(b"\n", b"\r\n")


def header_fields(raw: bytes, name: str) -> list[str]:
    """The (unfolded) values of every `name` field, top to bottom."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return [re.sub(r"\s+", " ", str(v)) for v in msg.get_all(name, [])]


def ip_certificate(ca: TestCA, ip: str, name: str, directory: Path) -> tuple[Path, Path]:
    """A server certificate from `ca` for the address `ip` (an iPAddress subjectAltName, which
    a client that connects to the address checks) and the DNS name `name`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.pem.encode())
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def submit(server: Server, to: list[str], message: bytes, sender: str = ALICE) -> None:
    """Submission with STARTTLS and AUTH, as a mail client does; every recipient accepted."""
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as s:
        s.starttls(context=client_tls())
        s.login(sender, PASSWORD)
        refused = s.sendmail(sender, to, message, mail_options=["BODY=8BITMIME"])
        assert refused == {}, f"netpost refused recipients at submission: {refused}"


def queue_listing(server: Server) -> str:
    r = server.cli("queue", "list")
    assert r.returncode == 0, f"netpost queue list failed: {r.stderr}"
    return r.stdout


def wait_for(predicate: Callable[[], bool], what: str, explain: Callable[[], str],
             timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{explain()}")
        time.sleep(0.1)


def wait_queue_empty(server: Server, pf: PostfixPeer) -> None:
    wait_for(lambda: "the queue is empty" in queue_listing(server), "netpost's queue to empty",
             lambda: f"netpost queue list:\n{queue_listing(server)}\n"
                     f"Postfix log:\n{pf.log[-3000:]}")


def with_subject(messages: list[bytes], subject: str) -> list[bytes]:
    return [m for m in messages if f"\nSubject: {subject}\n".encode() in m.replace(b"\r", b"")]


def wait_log(pf: PostfixPeer, pattern: str, what: str, timeout: float = 10.0) -> None:
    """Postfix logs through postlogd, a moment after the fact: wait for a line."""
    wait_for(lambda: re.search(pattern, pf.log) is not None, f"{what} in Postfix's log",
             lambda: f"pattern: {pattern}\nPostfix log:\n{pf.log[-3000:]}", timeout)


def delivered(pf: PostfixPeer, user: str, subject: str, timeout: float = 20.0) -> bytes:
    """The one message with `subject` in `user`'s Maildir at Postfix, once it is there."""
    deadline = time.monotonic() + timeout
    while not (found := with_subject(pf.messages(user), subject)):
        if time.monotonic() > deadline:
            pytest.fail(f"no message {subject!r} for {user}@{pf.domain} after {timeout} s\n"
                        f"Postfix log:\n{pf.log[-3000:]}")
        time.sleep(0.05)
    assert len(found) == 1, f"{len(found)} copies of {subject!r} for {user}@{pf.domain}"
    return found[0]


def postfix_queue_id(raw: bytes) -> str:
    """The queue id in the Received field Postfix wrote (the top one)."""
    top = header_fields(raw, "Received")[0]
    m = re.search(rf"by {re.escape(PF_HOST)} \(Postfix\) with (\S+) id ([0-9A-F]+)", top)
    assert m is not None, f"top Received field is not Postfix's: {top}"
    return m.group(2)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostfixPeer, Path]]:
    """Postfix as b.test's MX with STARTTLS; yields it and the CA file that checks it."""
    root = tmp_path_factory.mktemp("postfix-mx")
    ca = TestCA()
    ca_file = root / "ca.pem"
    ca_file.write_text(ca.pem)
    cert = ip_certificate(ca, "127.0.0.1", PF_HOST, root / "tls")
    # Keep a Return-Path field that arrives (Postfix drops it by default): netpost must not
    # send one (RFC 5321 4.4).
    peer = PostfixPeer(domain=PF_DOMAIN, users=PF_USERS, myhostname=PF_HOST, tls_cert=cert,
                       extra_main={"message_drop_headers": "bcc, content-length, resent-bcc",
                                   "smtpd_tls_received_header": "yes"})
    with peer:
        yield peer, ca_file


@pytest.fixture(scope="module")
def netpost(tmp_path_factory: pytest.TempPathFactory,
            mx: tuple[PostfixPeer, Path]) -> Iterator[Server]:
    pf, ca_file = mx
    data = tmp_path_factory.mktemp("netpost-postfix") / "data"
    shutil.copytree(template(tmp_path_factory.getbasetemp()), data)
    config = CONFIG + f"""
[server]
shutdown_grace = 2.0
hostname = "{NETPOST_HOST}"
[relay]
smarthost = "127.0.0.1:{pf.port}"
tls = "required"
ca_file = "{ca_file}"
first_retry = 1.0
max_retry = 2.0
connect_timeout = 3.0
command_timeout = 10.0
"""
    server = start_server(data, config)
    yield server
    stop(server)


# --- netpost → Postfix --------------------------------------------------------------------------


def test_message_reaches_postfix_intact_signed_and_traced(
        netpost: Server, mx: tuple[PostfixPeer, Path]) -> None:
    pf, _ = mx
    subject = "to postfix"
    sent = make_message(subject, [U1])
    submit(netpost, [U1], sent)
    wire = crlf(delivered(pf, "u1", subject))

    assert body_of(wire) == BODY, (
        f"body changed on the way:\nsent:   {BODY!r}\nstored: {body_of(wire)!r}")

    # Postfix's final-delivery Return-Path only: none came from netpost (RFC 5321 4.4).
    assert header_fields(wire, "Return-Path") == [f"<{ALICE}>"], (
        f"Return-Path fields: {header_fields(wire, 'Return-Path')}")
    received = header_fields(wire, "Received")
    assert len(received) >= 2, received
    # Top: Postfix's, saying netpost came with TLS (and netpost checked Postfix's certificate:
    # tls = "required", or nothing would have been sent).
    assert received[0].startswith(f"from {NETPOST_HOST} ("), received[0]
    assert f"by {PF_HOST} (Postfix) with ESMTPS" in received[0], received[0]
    assert "(using TLSv1." in received[0], received[0]  # smtpd_tls_received_header
    # Next: netpost's own, for the submission (authenticated, over TLS).
    assert re.match(rf"from \S+ \(\[127\.0\.0\.1\]\) by {re.escape(NETPOST_HOST)} \(netpost\) "
                    rf"with ESMTPSA id \S+ \(using TLS[^)]*; authenticated as {ALICE}\) "
                    rf"for <{U1}>; ", received[1]), received[1]

    # DKIM: example.test has a key (`netpost domain add` makes one); the signature still
    # verifies after Postfix, against the record netpost says to publish.
    [signature] = header_fields(wire, "DKIM-Signature")
    assert f"d={DOMAIN};" in signature.replace(" ", ""), signature
    record_name, record_value = dkim_record(netpost.data, DOMAIN)

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        return record_value.encode() if name.decode().rstrip(".") == record_name else None

    assert dkim.verify(wire, dnsfunc=txt), "the DKIM signature does not verify after Postfix"

    wait_queue_empty(netpost, pf)
    wait_log(pf, rf"to=<{re.escape(U1)}>, .*status=sent", "Postfix's delivery of u1's copy")


def test_three_recipients_go_in_one_transaction(
        netpost: Server, mx: tuple[PostfixPeer, Path]) -> None:
    pf, _ = mx
    subject = "to three"
    rcpts = [U1, U2, U3]
    submit(netpost, rcpts, make_message(subject, rcpts))
    copies = {user: delivered(pf, user, subject) for user in PF_USERS}
    # virtual(8) writes one file per recipient; one SMTP transaction means one Postfix queue
    # file, so every copy names the same queue id (and Postfix's Received has no "for").
    ids = {user: postfix_queue_id(crlf(raw)) for user, raw in copies.items()}
    assert len(set(ids.values())) == 1, f"more than one transaction: queue ids {ids}"
    for raw in copies.values():
        assert body_of(crlf(raw)) == BODY
        top = header_fields(crlf(raw), "Received")[0]
        assert " for <" not in top, top
        # netpost's Received names no single recipient either.
        assert " for <" not in header_fields(crlf(raw), "Received")[1]
    [queue_id] = set(ids.values())
    for rcpt in rcpts:  # the one queue file delivered to all three
        wait_log(pf, rf"{queue_id}: to=<{re.escape(rcpt)}>, .*status=sent",
                 f"Postfix's delivery of {rcpt} from queue file {queue_id}")
    wait_queue_empty(netpost, pf)


def delivery_status(report: Message) -> list[Message]:
    parts = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
    assert len(parts) == 1, f"{len(parts)} message/delivery-status parts"
    groups = parts[0].get_payload()
    assert isinstance(groups, list) and len(groups) >= 2, groups
    return [g for g in groups if isinstance(g, Message)]


def test_unknown_recipient_bounces_while_the_other_is_delivered(
        netpost: Server, mx: tuple[PostfixPeer, Path]) -> None:
    pf, _ = mx
    subject = "partly unknown"
    nobody = f"nobody@{PF_DOMAIN}"
    submit(netpost, [U2, nobody], make_message(subject, [U2, nobody]))

    def reports() -> list[bytes]:
        return [r for r in fetch_all(netpost, ALICE)
                if b"multipart/report" in r and subject.encode() in r]

    wait_for(lambda: bool(reports()), "a DSN in alice's INBOX",
             lambda: f"netpost queue list:\n{queue_listing(netpost)}\n"
                     f"Postfix log:\n{pf.log[-3000:]}")
    [raw] = reports()
    report = email.message_from_bytes(raw, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report", report.get_content_type()
    assert report.get_param("report-type") == "delivery-status"
    groups = delivery_status(report)
    per_message, per_rcpt = groups[0], groups[1:]
    assert NETPOST_HOST in str(per_message["Reporting-MTA"]), str(per_message)
    assert len(per_rcpt) == 1, (
        f"the DSN should name only the failed recipient: {[str(g) for g in per_rcpt]}")
    [failed] = per_rcpt
    assert str(failed["Final-Recipient"]).lower() == f"rfc822; {nobody}", str(failed)
    assert failed["Action"] == "failed", str(failed)
    assert str(failed["Status"]).startswith("5."), str(failed)
    diagnostic = re.sub(r"\s+", " ", str(failed["Diagnostic-Code"]))
    assert "550" in diagnostic and "5.1.1" in diagnostic, diagnostic
    assert "127.0.0.1" in str(failed["Remote-MTA"]), str(failed)  # the smart host's name

    # The good recipient got the message all the same.
    got = delivered(pf, "u2", subject)
    assert body_of(crlf(got)) == BODY
    wait_log(pf, rf"reject: RCPT from .*<{re.escape(nobody)}>", "Postfix's RCPT rejection")
    wait_queue_empty(netpost, pf)


# --- Postfix → netpost --------------------------------------------------------------------------


def test_postfix_relays_to_netpost(netpost: Server) -> None:
    subject = "from postfix"
    message = make_message(subject, [BOB], sender="friend@relay.test")
    before = len(fetch_all(netpost, BOB))
    with PostfixPeer(domain="relay.test", users=(), myhostname="mx.relay.test",
                     relayhost=("127.0.0.1", netpost.port("smtp"))) as pf:
        pf.send("friend@relay.test", [BOB], message)

        def arrived() -> bool:
            return len(fetch_all(netpost, BOB)) > before

        wait_for(arrived, "Postfix's message in bob's INBOX",
                 lambda: f"Postfix queue:\n{pf.queue()}\nPostfix log:\n{pf.log[-3000:]}")
        pf.wait_queue_empty()
        wait_log(pf, rf"to=<{re.escape(BOB)}>, relay=127\.0\.0\.1.*status=sent",
                 "Postfix's relay to netpost")
    [raw] = with_subject(fetch_all(netpost, BOB), subject)
    assert body_of(raw) == BODY, f"body changed:\nsent:   {BODY!r}\nstored: {body_of(raw)!r}"
    assert header_fields(raw, "Return-Path") == ["<friend@relay.test>"]
    received = header_fields(raw, "Received")
    # netpost's field on top: Postfix came with STARTTLS (Postfix's "may" with a relayhost).
    assert re.match(rf"from mx\.relay\.test \(\[127\.0\.0\.1\]\) by {re.escape(NETPOST_HOST)} "
                    rf"\(netpost\) with ESMTPS id \S+ \(using TLS[^)]*\) for <{BOB}>; ",
                    received[0]), received[0]
    # Below it, Postfix's own from the submission.
    assert "by mx.relay.test (Postfix)" in received[1], received[1]
