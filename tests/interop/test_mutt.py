"""mutt in batch mode sending through submission with STARTTLS and AUTH."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Server, require_tool
from tests.interop.helpers import (
    ALICE,
    BOB,
    body_of,
    empty_mailbox,
    fetch_all,
    run,
    server_certificate,
)

pytestmark = pytest.mark.interop


def mutt_settings(server: Server, cert: Path, password: str = PASSWORD) -> str:
    # mutt (GnuTLS) has no "don't verify" switch: the self-signed certificate is trusted by
    # listing it in certificate_file; ssl_verify_host=no because it is issued to "localhost".
    return (f'set smtp_url="smtp://{ALICE}@127.0.0.1:{server.port("submission")}/" '
            f'smtp_pass="{password}" from="{ALICE}" realname="Alice" '
            f'ssl_starttls=yes ssl_force_tls=yes ssl_verify_host=no '
            f'certificate_file="{cert}" record="" copy=no')


def send(server: Server, tmp_path: Path, subject: str, body: bytes, *,
         password: str = PASSWORD, expect: int = 0) -> None:
    cert = server_certificate(server, tmp_path / "server-cert.pem")
    cmd = [require_tool("mutt"), "-n", "-F", "/dev/null",
           "-e", mutt_settings(server, cert, password), "-s", subject, "--", BOB]
    run(server, cmd, tmp_path, stdin=body, expect=expect)


def test_mutt_batch_send(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, BOB)
    body = b"Hello from mutt.\n.a line with a leading dot\nlast line\n"
    send(server, tmp_path, "mutt batch send", body)
    got = fetch_all(server, BOB, delete=True)
    assert len(got) == 1
    parsed = email.message_from_bytes(got[0], policy=email.policy.default)
    assert parsed["Subject"] == "mutt batch send"
    assert parsed["From"] == f"Alice <{ALICE}>" and parsed["To"] == BOB
    assert f"authenticated as {ALICE}" in parsed["Received"]
    assert body_of(got[0]) == body.replace(b"\n", b"\r\n")


def test_mutt_wrong_password(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, BOB)
    send(server, tmp_path, "never", b"x\n", password="wrong", expect=1)
    assert fetch_all(server, BOB) == []
