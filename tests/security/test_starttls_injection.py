"""Plaintext pipelined after STARTTLS/STLS is never read as if it came over TLS
(RFC 3207 4.2, RFC 2595 4; CVE-2011-0411), even when more than one read's worth is buffered."""

from __future__ import annotations

import socket
import ssl

from tests.conftest import Server, client_tls

PAD = b"NOOP " + b"x" * 1000 + b"\r\n"  # valid commands, ~300 KiB of them: more than one read


def _read_until(sock: socket.socket, marker: bytes, limit: int = 10_000_000) -> bytes:
    data = b""
    while marker not in data and len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _handshake(sock: socket.socket) -> ssl.SSLSocket | None:
    """Start TLS. If some pipelined plaintext reached the server only after it switched to
    TLS, the handshake fails: safe too (it was not read as a command), so None."""
    try:
        return client_tls().wrap_socket(sock)
    except (ssl.SSLError, ConnectionError):
        return None


def _after_tls(tls: ssl.SSLSocket) -> bytes:
    """Whatever the server says over TLS before we say anything (should be nothing)."""
    tls.settimeout(1.5)
    try:
        return tls.recv(65536)
    except TimeoutError:
        return b""


def test_smtp_starttls_drops_pipelined_plaintext(server: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port("submission")), timeout=10)
    _read_until(sock, b"\r\n")
    sock.sendall(b"EHLO a\r\n")
    _read_until(sock, b"250 HELP\r\n")
    sock.sendall(PAD * 300 + b"STARTTLS\r\n" + PAD * 150 +
                 b"EHLO evil\r\nMAIL FROM:<inject@evil.example>\r\n")
    data = _read_until(sock, b"220 2.0.0")
    assert b"220 2.0.0" in data
    tls = _handshake(sock)
    if tls is None:
        return
    assert _after_tls(tls) == b""  # no reply to the injected EHLO / MAIL
    tls.sendall(b"NOOP\r\n")
    assert tls.recv(1024).startswith(b"250")
    tls.close()


def test_pop3_stls_drops_pipelined_plaintext(server: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port("pop3")), timeout=10)
    _read_until(sock, b"\r\n")
    pad = b"CAPA\r\n" * 60_000  # ~360 KiB of valid commands (NOOP is not, before login)
    sock.sendall(pad + b"STLS\r\n" + pad[:200_000] + b"USER inject@evil.example\r\n")
    data = _read_until(sock, b"+OK Begin TLS")
    assert b"+OK Begin TLS" in data
    tls = _handshake(sock)
    if tls is None:
        return
    assert _after_tls(tls) == b""
    tls.sendall(b"CAPA\r\n")
    assert tls.recv(1024).startswith(b"+OK")
    tls.close()
