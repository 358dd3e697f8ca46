"""curl as an SMTP sender (smtp://, STARTTLS, smtps://) and as a POP3 client (STLS, pop3s://)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Server, require_tool
from tests.interop.helpers import (
    ALICE,
    BOB,
    CAROL,
    deliver,
    empty_mailbox,
    fetch_all,
    make_message,
    pop3,
    run,
    stat,
)

pytestmark = pytest.mark.interop

LOGIN_DENIED = 67  # curl: "The user name, password, or similar was not accepted"
SEND_ERROR = 55  # curl: "Failed sending network data" (also: MAIL FROM refused)


def curl(server: Server, tmp_path: Path, *args: str, expect: int = 0) -> bytes:
    cmd = [require_tool("curl"), "-sS", "--max-time", "30", *args]
    return run(server, cmd, tmp_path, expect=expect).stdout


def upload(server: Server, tmp_path: Path, url: str, sender: str, rcpt: str, msg: bytes,
           *extra: str) -> None:
    eml = tmp_path / "message.eml"
    eml.write_bytes(msg)
    curl(server, tmp_path, "--url", url, "--mail-from", sender, "--mail-rcpt", rcpt,
         "--upload-file", str(eml), *extra)


def test_smtp_mx(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, CAROL)
    msg = make_message("curl mx", to=CAROL)
    upload(server, tmp_path, f"smtp://127.0.0.1:{server.port('smtp')}", "friend@example.org",
           CAROL, msg)
    got = fetch_all(server, CAROL, delete=True)
    assert len(got) == 1
    assert got[0].startswith(b"Return-Path: <friend@example.org>\r\n")
    assert got[0].endswith(msg)


def test_smtp_submission_starttls_auth(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, BOB)
    msg = make_message("curl submission", sender=ALICE, to=BOB)
    upload(server, tmp_path, f"smtp://127.0.0.1:{server.port('submission')}", ALICE, BOB, msg,
           "--ssl-reqd", "-k", "--user", f"{ALICE}:{PASSWORD}")
    got = fetch_all(server, BOB, delete=True)
    assert len(got) == 1 and got[0].endswith(msg)
    assert b"with ESMTPSA" in got[0]


def test_smtps_submissions(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, BOB)
    msg = make_message("curl smtps", sender=ALICE, to=BOB)
    upload(server, tmp_path, f"smtps://127.0.0.1:{server.port('submissions')}", ALICE, BOB, msg,
           "-k", "--user", f"{ALICE}:{PASSWORD}")
    got = fetch_all(server, BOB, delete=True)
    assert len(got) == 1 and got[0].endswith(msg)


def test_pop3(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, CAROL)
    msgs = [make_message(f"curl pop3 {i}", body=f"body {i}\r\n.dot line\r\n" * (i + 1),
                         to=CAROL) for i in range(3)]
    deliver(server, CAROL, msgs)
    pop = pop3(server, CAROL)  # what poplib sees, to compare curl's view with
    try:
        listing = [line.decode() for line in pop.list()[1]]
        uidl = [line.decode() for line in pop.uidl()[1]]
        first = b"\r\n".join(pop.retr(1)[1]) + b"\r\n"
        pop.quit()
    finally:
        pop.close()
    assert first.endswith(msgs[0])
    user = ["--user", f"{CAROL}:{PASSWORD}"]
    stls = f"pop3://127.0.0.1:{server.port('pop3')}/"
    pop3s = f"pop3s://127.0.0.1:{server.port('pop3s')}/"

    # LIST over STLS, then over implicit TLS.
    out = curl(server, tmp_path, "--ssl-reqd", "-k", *user, stls)
    assert out.decode().split("\r\n") == [*listing, ""]
    out = curl(server, tmp_path, "-k", *user, pop3s)
    assert out.decode().split("\r\n") == [*listing, ""]
    # RETR 1: byte-identical to poplib's copy (curl undoes the dot-stuffing).
    assert curl(server, tmp_path, "-k", *user, pop3s + "1") == first
    assert curl(server, tmp_path, "--ssl-reqd", "-k", *user, stls + "1") == first
    # UIDL
    out = curl(server, tmp_path, "-k", *user, "-X", "UIDL", pop3s)
    assert out.decode().split("\r\n") == [*uidl, ""]
    # TOP 1 0: the header section and the empty line after it.
    header = first.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    assert curl(server, tmp_path, "-k", *user, "-X", "TOP 1 0", pop3s) == header
    # DELE has a one-line answer: -I tells curl not to wait for a multi-line body.
    curl(server, tmp_path, "-k", *user, "-X", "DELE 1", "-I", pop3s)
    rest = fetch_all(server, CAROL)
    assert len(rest) == 2
    assert rest[0].endswith(msgs[1]) and rest[1].endswith(msgs[2])
    assert stat(server, CAROL) == 2


def test_pop3_password_needs_tls(server: Server, tmp_path: Path) -> None:
    deliver(server, CAROL, [make_message("plain pop3", to=CAROL)])
    curl(server, tmp_path, "--user", f"{CAROL}:{PASSWORD}",
         f"pop3://127.0.0.1:{server.port('pop3')}/", expect=LOGIN_DENIED)


def test_submission_refuses_auth_before_starttls(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, BOB)
    eml = tmp_path / "message.eml"
    eml.write_bytes(make_message("cleartext", sender=ALICE, to=BOB))
    r = run(server, [require_tool("curl"), "-sS", "--max-time", "30", "--url",
                     f"smtp://127.0.0.1:{server.port('submission')}", "--user",
                     f"{ALICE}:{PASSWORD}", "--mail-from", ALICE, "--mail-rcpt", BOB,
                     "--upload-file", str(eml)], tmp_path, expect=SEND_ERROR)
    # no AUTH is offered before STARTTLS, so curl goes straight to MAIL FROM, which gets 530
    assert b"530" in r.stderr, r.stderr
    assert fetch_all(server, BOB) == []
