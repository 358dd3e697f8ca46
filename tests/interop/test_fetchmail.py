"""fetchmail over POP3: keep (STLS on the pop3 port) and delete (implicit TLS on pop3s)."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Server, require_tool
from tests.interop.helpers import (
    BOB,
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

NO_MAIL = 1  # fetchmail: 0 = mail retrieved, 1 = no mail


def fetchmail(server: Server, tmp_path: Path, user: str, *, keep: bool, implicit_tls: bool,
              expect: int = 0) -> list[bytes]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    service, tls = ((server.port("pop3s"), "ssl") if implicit_tls
                    else (server.port("pop3"), 'sslproto "tls1.2+"'))  # tls1.2+ = STLS required
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll 127.0.0.1 service {service} protocol POP3 auth password\n"
        f'  user "{user}" there with password "{PASSWORD}" is "{getpass.getuser()}" here\n'
        f"  options {'keep' if keep else 'no keep'} fetchall no rewrite {tls} no sslcertck\n"
        # one file per message: the mda is run through the shell once per message
        f"  mda \"/bin/sh -c 'cat > $(mktemp {out}/msg.XXXXXX)'\"\n")
    rc.chmod(0o600)
    cmd = [require_tool("fetchmail"), "-f", str(rc), "--pidfile", str(tmp_path / "fm.pid"),
           "--idfile", str(tmp_path / "fetchids"), "-v"]
    run(server, cmd, tmp_path, expect=expect)
    files = sorted(out.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return [p.read_bytes() for p in files]


def bodies(messages: list[bytes]) -> set[bytes]:
    return {body_of(m) for m in messages}


def lf_bodies(sent: list[bytes]) -> set[bytes]:
    return {body_of(m).replace(b"\r\n", b"\n") for m in sent}


def test_fetchmail_keep_over_stls(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, BOB)
    sent = [make_message(f"fetchmail keep {i}", body=f"keep {i}\r\n.dot\r\n") for i in range(3)]
    deliver(server, BOB, sent)
    got = fetchmail(server, tmp_path, BOB, keep=True, implicit_tls=False)
    assert len(got) == 3
    assert bodies(got) == lf_bodies(sent)  # fetchmail hands the mda LF line ends
    assert all(b"Subject: fetchmail keep" in m for m in got)
    # kept: still on the server, unchanged
    on_server = fetch_all(server, BOB)
    assert len(on_server) == 3 and all(any(m.endswith(s) for m in on_server) for s in sent)
    trace = (server.data / "trace.log").read_text()
    assert "C: STLS" in trace


def test_fetchmail_delete_over_pop3s(server: Server, tmp_path: Path) -> None:
    empty_mailbox(server, CAROL)
    sent = [make_message(f"fetchmail delete {i}", body=f"delete {i}\r\n", to=CAROL)
            for i in range(4)]
    deliver(server, CAROL, sent)
    got = fetchmail(server, tmp_path, CAROL, keep=False, implicit_tls=True)
    assert len(got) == 4 and bodies(got) == lf_bodies(sent)
    assert stat(server, CAROL) == 0  # really deleted
    # a second run finds nothing
    again = tmp_path / "again"
    again.mkdir()
    assert fetchmail(server, again, CAROL, keep=False, implicit_tls=True, expect=NO_MAIL) == []
