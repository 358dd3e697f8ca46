"""msmtp sending through submission with STARTTLS + AUTH PLAIN, and its --serverinfo."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Server, require_tool
from tests.interop.helpers import ALICE, BOB, CAROL, empty_mailbox, fetch_all, make_message, run

pytestmark = pytest.mark.interop

EX_NOPERM = 77  # msmtp's exit code when authentication fails (sysexits.h)


def msmtp(server: Server, *args: str, password: str = PASSWORD) -> list[str]:
    return [require_tool("msmtp"), "--file=/dev/null", "--host=127.0.0.1",
            f"--port={server.port('submission')}", "--tls=on", "--tls-starttls=on",
            "--tls-certcheck=off", "--auth=plain", f"--user={ALICE}",
            f"--passwordeval=printf '%s\\n' {shlex.quote(password)}", *args]


def test_submission_starttls_auth_plain(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, BOB)
    empty_mailbox(server, CAROL)
    msg = make_message("msmtp submission", body="one\r\n.two\r\n..three\r\n", sender=ALICE,
                       to=BOB)
    run(server, msmtp(server, f"--from={ALICE}", BOB, CAROL), tmp_path, stdin=msg)
    for user in (BOB, CAROL):
        got = fetch_all(server, user, delete=True)
        assert len(got) == 1 and got[0].endswith(msg), got
        assert f"authenticated as {ALICE}".encode() in got[0]


def test_submission_wrong_password(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, BOB)
    r = run(server, msmtp(server, f"--from={ALICE}", BOB, password="wrong"), tmp_path,
            stdin=make_message("msmtp wrong"), expect=EX_NOPERM)
    assert b"535 5.7.8" in r.stderr
    assert fetch_all(server, BOB) == []


def test_serverinfo(server: Server, tmp_path: Path) -> None:
    r = run(server, [require_tool("msmtp"), "--file=/dev/null", "--host=127.0.0.1",
                     f"--port={server.port('submission')}", "--serverinfo", "--tls=on",
                     "--tls-starttls=on", "--tls-certcheck=off"], tmp_path)
    out = r.stdout.decode()
    assert f"port {server.port('submission')}" in out and "ESMTP netpost" in out, out
    assert "CN=localhost" in out  # the self-signed certificate
    assert "SIZE 52428800" in out and "PIPELINING" in out, out
    assert "PLAIN LOGIN" in out.split("AUTH:", 1)[1], out  # offered after STARTTLS
