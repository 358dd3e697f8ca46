"""Security and robustness tests against a real `netpost serve` over real sockets.

Shared helpers live here (this package may not have its own conftest): a data-directory template
with the test domain and users made once per run (adding users runs argon2 in a CLI process,
seconds each), servers started from copies of it, a raw line-oriented client, and POP3 readers.
"""

from __future__ import annotations

import base64
import poplib
import shutil
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import CONFIG, DOMAIN, PASSWORD, Server, client_tls, run_cli, start_server

USERS = ("alice", "bob", "carol")
BOB = f"bob@{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"

# A short grace period: a test that leaves a transaction open must not hold teardown for 30 s.
BASE_CONFIG = CONFIG + "[server]\nshutdown_grace = 2.0\n"

_template_lock = threading.Lock()
_template: Path | None = None


def template(root: Path) -> Path:
    """A data directory with DOMAIN and USERS (password PASSWORD), made once per test run."""
    global _template
    with _template_lock:
        if _template is None:
            path = root / "netpost-template"
            path.mkdir(parents=True, exist_ok=True)
            r = run_cli(path, "domain", "add", DOMAIN)
            assert r.returncode == 0, r.stderr
            for user in USERS:
                r = run_cli(path, "user", "add", f"{user}@{DOMAIN}", "--password-stdin",
                            stdin=PASSWORD + "\n")
                assert r.returncode == 0, r.stderr
            _template = path
        return _template


def launch(factory: pytest.TempPathFactory, name: str, extra_config: str = "",
           ports: dict[str, int] | None = None) -> Server:
    """Start a server on a copy of the template data directory with BASE_CONFIG + extra."""
    data = factory.mktemp(name) / "data"
    shutil.copytree(template(factory.getbasetemp()), data)
    return start_server(data, BASE_CONFIG + extra_config, ports=ports)


def stop(server: Server) -> None:
    try:
        server.stop(timeout=20)
    except Exception:
        server.proc.kill()
        server.proc.wait(10)


def alive(server: Server) -> bool:
    return server.proc.poll() is None


def server_log(server: Server) -> str:
    return "".join(server.output)


# --- raw client ---------------------------------------------------------------------------------


class Raw:
    """A raw client: exact bytes out, lines and SMTP/POP3 replies in."""

    def __init__(self, port: int, *, tls: bool = False, timeout: float = 10) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            self.sock = client_tls().wrap_socket(self.sock)
        self.buf = b""
        self.eof = False

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_pieces(self, data: bytes, size: int = 1024, pause: float = 0.0) -> None:
        for i in range(0, len(data), size):
            self.sock.sendall(data[i:i + size])
            if pause:
                time.sleep(pause)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def line(self) -> bytes:
        """The next line with its CRLF; b"" at end of stream."""
        while b"\n" not in self.buf:
            if self.eof or not self._fill():
                rest, self.buf = self.buf, b""
                return rest
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def reply(self) -> tuple[int, list[bytes]]:
        """One SMTP reply: (code, lines without CRLF); (-1, [...]) at end of stream."""
        lines: list[bytes] = []
        while True:
            line = self.line()
            if not line.endswith(b"\n"):
                return -1, lines + ([line] if line else [])
            line = line.rstrip(b"\r\n")
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                try:
                    return int(line[:3]), lines
                except ValueError:
                    return -1, lines

    def cmd(self, line: str | bytes) -> tuple[int, list[bytes]]:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def pop(self, line: str | bytes) -> bytes:
        """A POP3 single-line command; its status line without CRLF."""
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.line().rstrip(b"\r\n")

    def starttls(self) -> None:
        assert isinstance(self.sock, socket.socket) and not isinstance(self.sock, ssl.SSLSocket)
        assert self.buf == b"", self.buf
        self.sock = client_tls().wrap_socket(self.sock)

    def wait_closed(self, timeout: float = 10) -> bytes:
        """Read until the server closes; returns what came. Fails if it does not close."""
        self.sock.settimeout(timeout)
        got = self.buf
        self.buf = b""
        deadline = time.monotonic() + timeout
        while not self.eof:
            assert time.monotonic() < deadline, f"server did not close; got {got[-300:]!r}"
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                chunk = b""
            if not chunk:
                self.eof = True
            got += chunk
        return got


def smtp_session(port: int, *, tls: bool = False) -> Raw:
    """Connected and greeted with EHLO (implicit TLS when tls)."""
    c = Raw(port, tls=tls)
    code, lines = c.reply()
    assert code == 220, lines
    code, lines = c.cmd("EHLO client.test")
    assert code == 250, lines
    return c


def starttls_session(port: int) -> Raw:
    c = smtp_session(port)
    code, lines = c.cmd("STARTTLS")
    assert code == 220, lines
    c.starttls()
    code, lines = c.cmd("EHLO client.test")
    assert code == 250, lines
    return c


# --- mailboxes ----------------------------------------------------------------------------------


def mailbox(server: Server, user: str = BOB) -> list[bytes]:
    """Every message in user's maildrop over POP3S (kept, not deleted)."""
    pop = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls(), timeout=60)
    try:
        pop.user(user)
        pop.pass_(PASSWORD)
        count, _ = pop.stat()
        out = []
        for i in range(1, count + 1):
            _, lines, _ = pop.retr(i)
            out.append(b"\r\n".join(lines) + b"\r\n")
        pop.quit()
        return out
    finally:
        pop.close()


def strip_trace(raw: bytes) -> bytes:
    """The message as the client sent it: drop the Return-Path and (folded) Received field the
    server prepends."""
    assert raw.startswith(b"Return-Path: <"), raw[:200]
    rest = raw.split(b"\r\n", 1)[1]
    assert rest.startswith(b"Received: "), rest[:200]
    lines = rest.split(b"\r\n")
    i = 1
    while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\r\n".join(lines[i:])


def deliver_one(server: Server, subject: str, to: str = BOB) -> bytes:
    """A plain delivery over the MX with raw SMTP; returns the message as sent."""
    msg = (f"From: sender@example.org\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n"
           f"body of {subject}\r\n").encode()
    with smtp_session(server.port("smtp")) as c:
        assert c.cmd("MAIL FROM:<sender@example.org>")[0] == 250
        assert c.cmd(f"RCPT TO:<{to}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        code, lines = c.cmd(msg + b".")
        assert code == 250, lines
        assert c.cmd("QUIT")[0] == 221
    return msg


def check_still_works(server: Server, label: str) -> None:
    """The server is alive, accepts a delivery and serves it back over POP3."""
    assert alive(server), server_log(server)[-3000:]
    msg = deliver_one(server, f"still alive {label} {time.monotonic_ns()}")
    assert any(strip_trace(m) == msg for m in mailbox(server)), label


def plain(user: str, password: str = PASSWORD) -> str:
    """An AUTH PLAIN initial response (RFC 4616)."""
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()
