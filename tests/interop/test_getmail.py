"""getmail6 SimplePOP3SSLRetriever: delete = false, then delete = true."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Server, require_tool
from tests.interop.helpers import (
    BOB,
    body_of,
    deliver,
    empty_mailbox,
    fetch_all,
    make_message,
    run,
    stat,
)

pytestmark = pytest.mark.interop


def getmail(server: Server, tmp_path: Path, user: str, *, delete: bool) -> list[bytes]:
    out = tmp_path / ("out-delete" if delete else "out-keep")
    out.mkdir()
    getmaildir = tmp_path / "getmail"
    getmaildir.mkdir(exist_ok=True)
    # getmail refuses to deliver into an mbox/Maildir as root ("refuse to deliver mail as
    # root"); its documented escape is an external MDA with allow_root_commands, which also
    # works unchanged for a normal user. One file per message.
    deliver_cmd = f"cat > \"$(mktemp {shlex.quote(str(out))}/msg.XXXXXX)\""
    rc = getmaildir / "getmailrc"
    rc.write_text(
        "[retriever]\n"
        "type = SimplePOP3SSLRetriever\n"
        "server = 127.0.0.1\n"
        f"port = {server.port('pop3s')}\n"
        f"username = {user}\n"
        f"password = {PASSWORD}\n"
        "[destination]\n"
        "type = MDA_external\n"
        "path = /bin/sh\n"
        f"arguments = ('-c', {deliver_cmd!r})\n"
        "allow_root_commands = true\n"
        "[options]\n"
        "read_all = true\n"
        f"delete = {'true' if delete else 'false'}\n"
        "verbose = 1\n")
    r = run(server, [require_tool("getmail"), f"--getmaildir={getmaildir}", f"--rcfile={rc}"],
            tmp_path)
    assert b"retrieved" in r.stdout, r.stdout
    return [p.read_bytes() for p in out.iterdir()]


def test_getmail_keep_then_delete(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, BOB)
    sent = [make_message(f"getmail {i}", body=f"getmail body {i}\r\n.dot\r\n") for i in range(3)]
    deliver(server, BOB, sent)
    expected = {body_of(m).replace(b"\r\n", b"\n") for m in sent}

    kept = getmail(server, tmp_path, BOB, delete=False)
    assert len(kept) == 3 and {body_of(m) for m in kept} == expected
    assert all(b"Return-Path: <sender@example.org>" in m for m in kept)
    on_server = fetch_all(server, BOB)
    assert len(on_server) == 3 and all(any(m.endswith(s) for m in on_server) for s in sent)

    deleted = getmail(server, tmp_path, BOB, delete=True)  # read_all: fetched again, deleted
    assert len(deleted) == 3 and {body_of(m) for m in deleted} == expected
    assert stat(server, BOB) == 0
