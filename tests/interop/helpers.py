"""Shared helpers for the third-party client interop tests (fixtures: tests/conftest.py)."""

from __future__ import annotations

import os
import poplib
import smtplib
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.conftest import DOMAIN, PASSWORD, Server, client_tls

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"


def make_message(subject: str, body: str = "hello\r\n.leading dot\r\nbye\r\n",
                 sender: str = ALICE, to: str = BOB) -> bytes:
    """A complete CRLF message with its own Date and Message-ID (clients add nothing)."""
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@interop.test>\r\n\r\n{body}").encode()


def body_of(raw: bytes) -> bytes:
    """What follows the first empty line (CRLF or LF line ends)."""
    crlf, lf = raw.find(b"\r\n\r\n"), raw.find(b"\n\n")
    if crlf != -1 and (lf == -1 or crlf < lf):
        return raw[crlf + 4:]
    assert lf != -1, raw
    return raw[lf + 2:]


def pop3(server: Server, user: str) -> poplib.POP3_SSL:
    pop = poplib.POP3_SSL(server.host, server.port("pop3s"), context=client_tls(), timeout=30)
    pop.user(user)
    pop.pass_(PASSWORD)
    return pop


def fetch_all(server: Server, user: str, *, delete: bool = False) -> list[bytes]:
    """Every message in the mailbox, CRLF-joined as the server stored it."""
    pop = pop3(server, user)
    try:
        count, _ = pop.stat()
        out = []
        for i in range(1, count + 1):
            _, lines, _ = pop.retr(i)
            out.append(b"\r\n".join(lines) + b"\r\n")
            if delete:
                pop.dele(i)
        pop.quit()
        return out
    finally:
        pop.close()


def stat(server: Server, user: str) -> int:
    pop = pop3(server, user)
    try:
        count, _ = pop.stat()
        pop.quit()
        return count
    finally:
        pop.close()


def empty_mailbox(server: Server, user: str) -> None:
    fetch_all(server, user, delete=True)


def deliver(server: Server, user: str, messages: Sequence[bytes]) -> None:
    """Put messages into a mailbox through the MX with smtplib (independent of the client)."""
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as s:
        for msg in messages:
            s.sendmail("sender@example.org", [user], msg)


def server_certificate(server: Server, path: Path) -> Path:
    """The server's self-signed certificate as PEM, for clients that can only pin one."""
    path.write_text(ssl.get_server_certificate(("127.0.0.1", server.port("submissions"))))
    return path


def trace_tail(server: Server, lines: int = 60) -> str:
    trace = server.data / "trace.log"
    if not trace.exists():
        return "(no trace.log)"
    return "\n".join(trace.read_text(errors="replace").splitlines()[-lines:])


def run(server: Server, cmd: Sequence[str], cwd: Path, *, expect: int | None = 0,
        stdin: bytes | None = None, timeout: float = 60,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a client in cwd with HOME=cwd; check its exit code, explaining a mismatch."""
    full_env = dict(os.environ, HOME=str(cwd), LC_ALL="C.UTF-8")
    full_env.update(env or {})
    r = subprocess.run(list(cmd), cwd=cwd, input=stdin, capture_output=True, timeout=timeout,
                       env=full_env, stdin=None if stdin is not None else subprocess.DEVNULL)
    if expect is not None:
        assert r.returncode == expect, (
            f"{cmd[0]} exited {r.returncode}, expected {expect}\n"
            f"--- stdout\n{r.stdout.decode(errors='replace')}\n"
            f"--- stderr\n{r.stderr.decode(errors='replace')}\n"
            f"--- server trace (tail)\n{trace_tail(server)}")
    return r
