"""swaks against the MX, submission (STARTTLS) and submissions (implicit TLS) listeners."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Server, require_tool
from tests.interop.helpers import ALICE, BOB, CAROL, empty_mailbox, fetch_all, make_message, run

pytestmark = pytest.mark.interop

# swaks exit codes (man swaks): 24 no RCPT accepted, 28 AUTH failed.
RCPT_FAILED = 24
AUTH_FAILED = 28


def swaks(*, tls: bool = False) -> str:
    path = require_tool("swaks")
    if tls:
        r = subprocess.run([path, "--support"], capture_output=True, text=True, timeout=30)
        if "=== TLS supported" not in r.stdout + r.stderr:
            pytest.fail("swaks has no TLS support: install Debian package 'libnet-ssleay-perl' "
                        f"(a Recommends of swaks)\n{r.stdout}{r.stderr}")
    return path


def send(server: Server, tmp_path: Path, listener: str, msg: bytes, *extra: str,
         sender: str = "friend@example.org", to: str = CAROL, tls: bool = False,
         expect: int = 0) -> subprocess.CompletedProcess[bytes]:
    eml = tmp_path / "message.eml"
    # swaks ends the data with CRLF "." CRLF itself, so the file omits the final line end.
    assert msg.endswith(b"\r\n")
    eml.write_bytes(msg[:-2])
    cmd = [swaks(tls=tls), "--server", f"127.0.0.1:{server.port(listener)}",
           "--helo", "swaks.client.test", "--from", sender, "--to", to,
           "--data", f"@{eml}", *extra]
    return run(server, cmd, tmp_path, expect=expect)


def test_mx_plain_delivery(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, CAROL)
    msg = make_message("swaks mx plain", to=CAROL)
    r = send(server, tmp_path, "smtp", msg)
    assert b"250 2.0.0 Ok" in r.stdout
    got = fetch_all(server, CAROL, delete=True)
    assert len(got) == 1
    assert got[0].startswith(b"Return-Path: <friend@example.org>\r\n"
                             b"Received: from swaks.client.test")
    assert got[0].endswith(msg)  # byte-identical, leading dot unstuffed


def test_mx_pipelining(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, CAROL)
    msg = make_message("swaks pipelined", to=CAROL)
    r = send(server, tmp_path, "smtp", msg, "--pipeline")
    out = r.stdout.decode()
    # swaks sent MAIL, RCPT and DATA in one go before reading the replies.
    mail, rcpt, data = (out.index(f" -> {c}") for c in ("MAIL FROM", "RCPT TO", "DATA"))
    assert mail < rcpt < data < out.index("<-  250 2.1.0"), out
    got = fetch_all(server, CAROL, delete=True)
    assert len(got) == 1 and got[0].endswith(msg)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_submission_starttls_auth(server: Server, tmp_path: Path, mechanism: str) -> None:
    empty_mailbox(server, BOB)
    msg = make_message(f"swaks submission {mechanism}", sender=ALICE, to=BOB)
    r = send(server, tmp_path, "submission", msg, "--tls", "--auth", mechanism,
             "--auth-user", ALICE, "--auth-password", PASSWORD, sender=ALICE, to=BOB, tls=True)
    out = r.stdout.decode()
    assert "<-  220 2.0.0 Ready to start TLS" in out and "=== TLS started" in out, out
    assert f" ~> AUTH {mechanism}" in out and "<~  235 2.7.0" in out, out
    got = fetch_all(server, BOB, delete=True)
    assert len(got) == 1 and got[0].endswith(msg)
    assert b"with ESMTPSA" in got[0] and f"authenticated as {ALICE}".encode() in got[0]


def test_submissions_implicit_tls(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, BOB)
    msg = make_message("swaks implicit tls", sender=ALICE, to=BOB)
    r = send(server, tmp_path, "submissions", msg, "--tlsc", "--auth", "PLAIN",
             "--auth-user", ALICE, "--auth-password", PASSWORD, sender=ALICE, to=BOB, tls=True)
    out = r.stdout.decode()
    assert out.index("=== TLS started") < out.index("<~  220 "), out  # TLS before the banner
    got = fetch_all(server, BOB, delete=True)
    assert len(got) == 1 and got[0].endswith(msg)


def test_submission_wrong_password_fails(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, BOB)
    r = send(server, tmp_path, "submission", make_message("never"), "--tls", "--auth", "LOGIN",
             "--auth-user", ALICE, "--auth-password", "not the password", sender=ALICE, to=BOB,
             tls=True, expect=AUTH_FAILED)
    assert b"535 5.7.8" in r.stdout
    assert b"MAIL FROM" not in r.stdout
    assert fetch_all(server, BOB) == []


def test_mx_refuses_relay(server: Server, tmp_path: Path) -> None:
    r = send(server, tmp_path, "smtp", make_message("relay"), to="victim@elsewhere.example",
             expect=RCPT_FAILED)
    assert b"554 5.7.1 <victim@elsewhere.example>: Relay access denied" in r.stdout
    assert b" -> DATA" not in r.stdout
