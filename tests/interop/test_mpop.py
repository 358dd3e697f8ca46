"""mpop over POP3 with STLS: keep and delete modes into an mbox file, and --serverinfo."""

from __future__ import annotations

import mailbox
import shlex
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Server, require_tool
from tests.interop.helpers import (
    CAROL,
    body_of,
    deliver,
    empty_mailbox,
    fetch_all,
    make_message,
    run,
    stat,
)

pytestmark = pytest.mark.interop


def mpop(server: Server, *args: str) -> list[str]:
    return [require_tool("mpop"), "--file=/dev/null", "--host=127.0.0.1",
            f"--port={server.port('pop3')}", "--tls=on", "--tls-starttls=on",
            "--tls-certcheck=off", *args]


def retrieve(server: Server, tmp_path: Path, *, keep: bool) -> list[bytes]:
    mbox = tmp_path / ("keep.mbox" if keep else "delete.mbox")
    mbox.touch()
    run(server, mpop(server, f"--user={CAROL}",
                     f"--passwordeval=printf '%s\\n' {shlex.quote(PASSWORD)}",
                     f"--keep={'on' if keep else 'off'}", "--only-new=off",
                     f"--uidls-file={tmp_path / 'uidls'}", f"--delivery=mbox,{mbox}"),
        tmp_path)
    box = mailbox.mbox(mbox, create=False)
    try:
        return [box.get_bytes(key) for key in box.keys()]
    finally:
        box.close()


def test_mpop_keep_then_delete(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, CAROL)
    sent = [make_message(f"mpop {i}", body=f"mpop body {i}\r\n.dot\r\nend\r\n", to=CAROL)
            for i in range(3)]
    deliver(server, CAROL, sent)
    expected = [body_of(m).replace(b"\r\n", b"\n") for m in sent]

    kept = retrieve(server, tmp_path, keep=True)
    assert [body_of(m) for m in kept] == expected  # in order, LF line ends in the mbox
    # mpop prepends its own Received: field; the rest is the stored message with LF line ends.
    for got, msg in zip(kept, sent, strict=True):
        assert b"\nReturn-Path: <sender@example.org>\n" in got
        assert got.endswith(msg.replace(b"\r\n", b"\n")), got
    on_server = fetch_all(server, CAROL)
    assert len(on_server) == 3 and all(m.endswith(s) for m, s in zip(on_server, sent, strict=True))

    deleted = retrieve(server, tmp_path, keep=False)
    assert [body_of(m) for m in deleted] == expected
    assert stat(server, CAROL) == 0
    trace = (server.data / "trace.log").read_text()
    assert "C: STLS" in trace and "C: DELE 3" in trace


def test_mpop_serverinfo(server: Server, tmp_path: Path) -> None:
    r = run(server, mpop(server, "--serverinfo", f"--user={CAROL}",
                         f"--passwordeval=printf '%s\\n' {shlex.quote(PASSWORD)}"), tmp_path)
    out = r.stdout.decode()
    assert f"port {server.port('pop3')}" in out and "netpost POP3 server ready" in out, out
    assert "CN=localhost" in out
    caps = out.split("POP3 capabilities:", 1)[1]
    for cap in ("PIPELINING", "TOP", "UIDL", "STLS", "RESP-CODES", "AUTH-RESP-CODE"):
        assert f"    {cap}:" in caps, out
    assert "USER PLAIN LOGIN" in caps, out
