"""Outbound mail between two real netpost servers on different loopback addresses.

A (127.0.0.1, domain example.test) relays for its users; B (127.0.0.2, domain b.test) is the
remote MX.  Without DNS here A is told B's address as its smart host; the MX-by-DNS path has
its own test with a real DNS server (test_relay_dns.py).
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import socket
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import CONFIG, PASSWORD, Server, client_tls, run_cli, start_server
from tests.interop.helpers import fetch_all
from tests.security import ALICE, DOMAIN, stop, template
from tests.support.certs import TestCA

B_DOMAIN = "b.test"
B_HOST = "127.0.0.2"
BOB_B = f"bob@{B_DOMAIN}"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_b(root: Path, port: int) -> Server:
    data = root / "b"
    if not (data / "netpost.db").exists():
        data.mkdir(parents=True, exist_ok=True)
        assert run_cli(data, "domain", "add", B_DOMAIN).returncode == 0
        r = run_cli(data, "user", "add", BOB_B, "--password-stdin", stdin=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
    return start_server(data, CONFIG + "[server]\nshutdown_grace = 2.0\nhostname = \"mx.b.test\"\n",
                        ports={"smtp": port}, host=B_HOST)


def start_a(root: Path, b_port: int, extra: str = "", smarthost: str | None = None) -> Server:
    import shutil

    data = root / "a"
    if not data.exists():
        shutil.copytree(template(root.parent), data)
    config = CONFIG + f"""
[server]
shutdown_grace = 2.0
hostname = "mx.example.test"
[relay]
smarthost = "{smarthost or f'{B_HOST}:{b_port}'}"
first_retry = 1.0
max_retry = 2.0
connect_timeout = 3.0
command_timeout = 10.0
{extra}
"""
    return start_server(data, config)


def submit(a: Server, to: list[str], subject: str, sender: str = ALICE) -> str:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg.set_content(f"{subject}\n.a line with a leading dot\n")
    with smtplib.SMTP("127.0.0.1", a.port("submission"), timeout=30) as s:
        s.starttls(context=client_tls())
        s.login(sender, PASSWORD)
        s.send_message(msg, from_addr=sender, to_addrs=to)
    return subject


def wait_for(predicate: object, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def subjects(server: Server, user: str) -> list[str]:
    out = []
    for raw in fetch_all(server, user):
        out.append(str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"]))
    return out


def queue_empty(a: Server) -> bool:
    r = a.cli("queue", "list")
    return r.returncode == 0 and "the queue is empty" in r.stdout


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server, Path, int]]:
    root = tmp_path_factory.mktemp("relay")
    port = free_port(B_HOST)
    b = start_b(root, port)
    a = start_a(root, port)
    yield a, b, root, port
    stop(a)
    stop(b)


def test_submitted_mail_reaches_the_remote_server(pair: tuple[Server, Server, Path, int]) -> None:
    a, b, _, _ = pair
    submit(a, [BOB_B], "across")
    wait_for(lambda: "across" in subjects(b, BOB_B), what="delivery to B")
    raw = next(r for r in fetch_all(b, BOB_B) if b"Subject: across" in r)
    # B's Received field says A came with STARTTLS (opportunistic TLS to the smart host).
    assert b"by mx.b.test" in raw and b"ESMTPS" in raw
    assert b"\n.a line with a leading dot" in raw  # dot-stuffing survived both hops
    wait_for(lambda: queue_empty(a), what="A's queue to empty")


def test_remote_down_defers_then_delivers(pair: tuple[Server, Server, Path, int]) -> None:
    a, b, root, port = pair
    stop(b)
    submit(a, [BOB_B], "while down")
    wait_for(lambda: "deferred" in a.cli("queue", "list").stdout, what="a deferral")
    listing = a.cli("queue", "list").stdout
    assert BOB_B in listing and ("refused" in listing.lower() or "connect" in listing.lower())
    b2 = start_b(root, port)
    try:
        a.cli("queue", "flush")
        wait_for(lambda: "while down" in subjects(b2, BOB_B), timeout=60, what="redelivery")
        wait_for(lambda: queue_empty(a), what="A's queue to empty")
    finally:
        stop(b2)
    # The module's other tests need B running again.
    pair_b = start_b(root, port)
    b.proc, b.ports, b.output = pair_b.proc, pair_b.ports, pair_b.output


def test_permanent_failure_bounces_to_the_sender(pair: tuple[Server, Server, Path, int]) -> None:
    a, _, _, _ = pair
    submit(a, [f"nobody@{B_DOMAIN}"], "to nobody")

    def bounced() -> bool:
        return any(b"multipart/report" in raw for raw in fetch_all(a, ALICE))

    wait_for(bounced, what="a DSN in alice's INBOX")
    raw = next(r for r in fetch_all(a, ALICE) if b"multipart/report" in r)
    report = email.message_from_bytes(raw, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    groups = status.get_payload()
    assert isinstance(groups, list) and len(groups) >= 2
    per_rcpt = groups[1]
    assert per_rcpt["Action"] == "failed"
    assert str(per_rcpt["Status"]).startswith("5.")
    assert f"nobody@{B_DOMAIN}" in str(per_rcpt["Final-Recipient"])
    assert "550" in str(per_rcpt["Diagnostic-Code"])
    assert report["Auto-Submitted"] == "auto-replied"
    wait_for(lambda: queue_empty(a), what="A's queue to empty")


def test_queue_cli_shows_and_deletes(pair: tuple[Server, Server, Path, int],
                                     tmp_path: Path) -> None:
    a, _, _, _ = pair
    r = a.cli("queue", "show", "NOSUCHID")
    assert r.returncode == 1 and "no queued message" in r.stderr
    r = a.cli("queue", "retry")
    assert r.returncode == 1 and "needs a QUEUE_ID" in r.stderr


def test_etrn_releases_a_held_domain(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("etrn")
    port = free_port(B_HOST)
    b = start_b(root, port)
    a = start_a(root, port, f'etrn_domains = ["{B_DOMAIN}"]\n')
    try:
        submit(a, [BOB_B], "held mail")
        wait_for(lambda: "held for ETRN" in a.cli("queue", "list").stdout, what="held entry")
        time.sleep(2)
        assert "held mail" not in subjects(b, BOB_B)
        with smtplib.SMTP("127.0.0.1", a.port("smtp"), timeout=30) as s:
            s.ehlo("client.b.test")
            assert s.has_extn("etrn")
            code, text = s.docmd("ETRN", B_DOMAIN)
            assert code in (250, 252, 253), text
            code, text = s.docmd("ETRN", "other.test")
            assert code == 459, text
        wait_for(lambda: "held mail" in subjects(b, BOB_B), what="delivery after ETRN")
    finally:
        stop(a)
        stop(b)


def test_mx_does_not_relay_for_others(pair: tuple[Server, Server, Path, int]) -> None:
    a, _, _, _ = pair
    with smtplib.SMTP("127.0.0.1", a.port("smtp"), timeout=30) as s:
        s.ehlo("stranger")
        s.mail("x@elsewhere.example")
        code, text = s.rcpt(BOB_B)
        assert code == 554 and b"5.7.1" in text
    assert DOMAIN  # the MX still takes mail for its own domain (other tests)


def test_held_mail_expires_after_max_age(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("etrn-expiry")
    port = free_port(B_HOST)
    held = f'etrn_domains = ["{B_DOMAIN}"]\nmax_age = 1.0\n'
    a = start_a(root, port, held)
    try:
        submit(a, [BOB_B], "never asked for")
        wait_for(lambda: "held for ETRN" in a.cli("queue", "list").stdout, what="held entry")
    finally:
        stop(a)
    time.sleep(1.5)
    # The runner looks for held mail past max_age when it starts (then every 10 minutes).
    a = start_a(root, port, held)
    try:
        def bounced() -> bool:
            return any(b"no ETRN asked for it" in raw for raw in fetch_all(a, ALICE))
        wait_for(bounced, what="a DSN for the expired held mail")
        wait_for(lambda: queue_empty(a), what="A's queue to empty")
    finally:
        stop(a)


def dsn_groups(server: Server, user: str) -> list[email.message.Message]:
    """The per-recipient groups (RFC 3464 2.3) of every DSN in `user`'s INBOX."""
    out: list[email.message.Message] = []
    for raw in fetch_all(server, user):
        report = email.message_from_bytes(raw, policy=email.policy.default)
        if report.get_content_type() != "multipart/report":
            continue
        for part in report.walk():
            if part.get_content_type() == "message/delivery-status":
                groups = part.get_payload()
                assert isinstance(groups, list)
                out += groups[1:]
    return out


def _dsn_actions(server: Server, user: str) -> list[tuple[str, str]]:
    return [(str(g["Action"]), str(g["Status"])) for g in dsn_groups(server, user)]


def test_delay_notice_then_bounce_after_max_age(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Nothing listens at the smart host: a delay notice once the message is older than
    delay_warning, and a failure notice when max_age is reached (RFC 3464 actions)."""
    root = tmp_path_factory.mktemp("delay")
    a = start_a(root, free_port(B_HOST), "delay_warning = 1.0\nmax_age = 5.0\n")
    try:
        submit(a, [BOB_B], "undeliverable")
        wait_for(lambda: ("delayed", "4.4.1") in _dsn_actions(a, ALICE), timeout=30,
                 what="a delay notice")
        wait_for(lambda: any(act == "failed" for act, _ in _dsn_actions(a, ALICE)),
                 timeout=40, what="the final failure notice")
        actions = _dsn_actions(a, ALICE)
        assert actions.count(("delayed", "4.4.1")) == 1, actions  # one delay notice only
        wait_for(lambda: queue_empty(a), what="A's queue to empty")
        raw = next(r for r in fetch_all(a, ALICE) if b"Action: failed" in r)
        assert b"gave up after" in raw and b"undeliverable" in raw  # the original comes back
    finally:
        stop(a)


def test_smart_host_with_auth(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A relays through B's submission port: STARTTLS, then AUTH PLAIN as B's user, who may
    send as alice@example.test (an alias of theirs on B)."""
    root = tmp_path_factory.mktemp("smarthost-auth")
    b_data = root / "b"
    b_data.mkdir()
    for args in (("domain", "add", B_DOMAIN), ("domain", "add", DOMAIN),
                 ("alias", "add", ALICE, f"relay@{B_DOMAIN}")):
        r = run_cli(b_data, *args)
        assert r.returncode == 0, r.stderr
    for user in (f"relay@{B_DOMAIN}", BOB_B):
        r = run_cli(b_data, "user", "add", user, "--password-stdin", stdin=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
    # With AUTH, A insists on TLS and checks the certificate: B's is from a test CA for its
    # address, and A trusts that CA.
    ca = TestCA()
    cert, key = ca.issue(B_HOST, directory=root / "certs")
    (root / "ca.pem").write_text(ca.pem)
    b = start_server(b_data, CONFIG + "[server]\nshutdown_grace = 2.0\nhostname = \"mx.b.test\"\n"
                     f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n', host=B_HOST)
    secret = root / "smarthost-password"
    secret.write_text(PASSWORD + "\n")
    auth = (f'smarthost_user = "relay@{B_DOMAIN}"\nsmarthost_password_file = "{secret}"\n')
    a = start_a(root, 0, auth + f'ca_file = "{root / "ca.pem"}"\n',
                smarthost=f"{B_HOST}:{b.port('submission')}")
    try:
        submit(a, [BOB_B], "through the smart host")
        wait_for(lambda: "through the smart host" in subjects(b, BOB_B), what="delivery via B")
        raw = next(r for r in fetch_all(b, BOB_B) if b"through the smart host" in r)
        assert b"ESMTPSA" in raw and f"authenticated as relay@{B_DOMAIN}".encode() in raw
        wait_for(lambda: queue_empty(a), what="A's queue to empty")
    finally:
        stop(a)
    # Without the CA, B's certificate does not check out: the password is not sent.
    a = start_a(root, 0, auth, smarthost=f"{B_HOST}:{b.port('submission')}")
    try:
        submit(a, [BOB_B], "unverified smart host")
        wait_for(lambda: "deferred" in a.cli("queue", "list").stdout, what="a deferral")
        listing = a.cli("queue", "list").stdout
        assert "certificate" in listing.lower(), listing
        assert "unverified smart host" not in subjects(b, BOB_B)
    finally:
        stop(a)
        stop(b)
