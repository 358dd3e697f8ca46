"""Hostile input never kills the server: overlong lines, garbage on every port, error limits."""

from __future__ import annotations

import os
import random
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import PASSWORD, Server, client_tls
from tests.security import (
    ALICE,
    Raw,
    alive,
    check_still_works,
    launch,
    server_log,
    smtp_session,
    starttls_session,
    stop,
)

LONG = 100_000


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = launch(tmp_path_factory, "robust")
    yield s
    stop(s)
    log = server_log(s)
    assert "Traceback" not in log and "session failed" not in log, log[-5000:]


def send_long(c: Raw, line: bytes, pieces: bool) -> None:
    if pieces:
        c.send_pieces(line, 1024)
    else:
        c.send(line)


@pytest.mark.parametrize("pieces", [False, True], ids=["one-write", "1KiB-pieces"])
@pytest.mark.parametrize("where", ["smtp", "submission-tls", "smtp-in-mail", "smtp-auth"])
def test_smtp_long_line_gets_one_error(srv: Server, pieces: bool, where: str) -> None:
    if where == "submission-tls":
        c = starttls_session(srv.port("submission"))
    else:
        c = smtp_session(srv.port("smtp" if where != "smtp-auth" else "submission"))
    with c:
        if where == "smtp-in-mail":
            assert c.cmd("MAIL FROM:<x@example.org>")[0] == 250
            line = b"RCPT TO:<" + b"a" * LONG + b"@example.test>\r\n"
        elif where == "smtp-auth":
            c.cmd("STARTTLS")
            c.starttls()
            c.cmd("EHLO client.test")
            assert c.cmd("AUTH PLAIN")[0] == 334
            line = b"A" * LONG + b"\r\n"
        else:
            line = b"NOOP " + b"x" * LONG + b"\r\n"
        send_long(c, line, pieces)
        code, lines = c.reply()
        assert code in (500, 501), lines
        # Exactly one error: the next reply answers the NOOP.
        code, lines = c.cmd("NOOP")
        assert code == 250, lines
        if where == "smtp-in-mail":
            assert c.cmd("RCPT TO:<bob@example.test>")[0] == 250  # transaction intact
        code, lines = c.cmd("QUIT")
        assert code == 221, lines


@pytest.mark.parametrize("pieces", [False, True], ids=["one-write", "1KiB-pieces"])
@pytest.mark.parametrize("logged_in", [False, True], ids=["authorization", "transaction"])
def test_pop3_long_line_gets_one_error(srv: Server, pieces: bool, logged_in: bool) -> None:
    with Raw(srv.port("pop3s"), tls=True) as c:
        assert c.line().startswith(b"+OK")
        if logged_in:
            assert c.pop(f"USER {ALICE}").startswith(b"+OK")
            assert c.pop(f"PASS {PASSWORD}").startswith(b"+OK")
        send_long(c, b"NOOP " + b"x" * LONG + b"\r\n", pieces)
        reply = c.line()
        assert reply.startswith(b"-ERR"), reply
        if logged_in:
            reply = c.pop("NOOP")
            assert reply.startswith(b"+OK"), reply
        else:
            reply = c.pop(f"USER {ALICE}")  # still in AUTHORIZATION, still answering
            assert reply.startswith(b"+OK"), reply
        assert c.pop("QUIT").startswith(b"+OK")
        assert c.wait_closed() == b""


def garbage(crlf: bool) -> bytes:
    data = bytearray(os.urandom(2 * 1024 * 1024))
    if crlf:
        rnd = random.Random(1)
        for pos in range(0, len(data) - 2, rnd.randint(20, 2000)):
            data[pos:pos + 2] = b"\r\n"
    else:
        data = data.replace(b"\r", b"x").replace(b"\n", b"y")
    return bytes(data)


def blast(sock: socket.socket | ssl.SSLSocket, data: bytes) -> None:
    """Write data while draining whatever comes back; stop when the server hangs up."""
    if isinstance(sock, ssl.SSLSocket):
        # One SSL object must not be used from two threads at once (OpenSSL aborts):
        # alternate short sends and reads in this thread. Garbage need not arrive whole.
        sock.settimeout(0.05)
        try:
            for i in range(0, len(data), 65536):
                try:
                    sock.sendall(data[i:i + 65536])
                except TimeoutError:
                    pass
                try:
                    while sock.recv(65536):
                        pass
                    break  # the server closed
                except TimeoutError:
                    pass
        except (OSError, ssl.SSLError, ValueError):
            pass  # the server closed on us: fine
        sock.close()
        return
    sock.settimeout(20)

    def drain() -> None:
        try:
            while sock.recv(65536):
                pass
        except (OSError, ValueError):
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        for i in range(0, len(data), 65536):
            sock.sendall(data[i:i + 65536])
    except OSError:
        pass  # the server closed on us: fine
    try:
        sock.shutdown(socket.SHUT_WR)
    except (OSError, ValueError):
        pass
    reader.join(20)
    sock.close()


@pytest.mark.parametrize("crlf", [False, True], ids=["no-crlf", "with-crlf"])
@pytest.mark.parametrize("target", [
    "smtp", "submission", "pop3",  # plaintext command streams
    "submissions-raw", "pop3s-raw",  # garbage instead of a TLS handshake
    "submissions-in-tls", "pop3s-in-tls",  # garbage inside an established TLS session
    "smtp-after-starttls", "smtp-in-data", "pop3-after-login",
])
def test_garbage_never_kills_the_server(srv: Server, target: str, crlf: bool) -> None:
    data = garbage(crlf)
    name = target.split("-")[0]
    port = srv.port(name)
    if target.endswith("in-tls"):
        sock: socket.socket | ssl.SSLSocket = client_tls().wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10))
    elif target == "smtp-after-starttls":
        sock = starttls_session(port).sock
    elif target == "smtp-in-data":
        c = smtp_session(port)
        assert c.cmd("MAIL FROM:<noise@example.org>")[0] == 250
        assert c.cmd("RCPT TO:<carol@example.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        sock = c.sock
    elif target == "pop3-after-login":
        c = Raw(srv.port("pop3s"), tls=True)
        c.line()
        c.pop(f"USER {ALICE}")
        assert c.pop(f"PASS {PASSWORD}").startswith(b"+OK")
        sock = c.sock
    else:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    blast(sock, data)
    assert alive(srv), server_log(srv)[-3000:]
    if crlf and target in ("smtp", "pop3s-in-tls"):
        check_still_works(srv, target)


def test_still_works_after_all_the_garbage(srv: Server) -> None:
    check_still_works(srv, "after garbage")


def test_too_many_smtp_errors_close_with_421(srv: Server) -> None:
    with smtp_session(srv.port("smtp")) as c:
        c.send(b"XYZZY\r\n" * 25)
        got = c.wait_closed(10)
        lines = got.split(b"\r\n")
        assert any(line.startswith(b"421 4.7.0") for line in lines), got
        assert sum(line.startswith(b"500") for line in lines) < 25, got
        closing = [i for i, line in enumerate(lines) if line.startswith(b"421")][0]
        assert lines[closing + 1:] == [b""], got  # nothing after the 421


def test_too_many_errors_in_a_transaction_and_mixed(srv: Server) -> None:
    """Errors of any kind count: bad recipients, bad syntax, out-of-sequence commands."""
    with smtp_session(srv.port("smtp")) as c:
        c.send(b"MAIL FROM:<a@example.org>\r\n" + b"RCPT TO:<nobody@example.test>\r\n" * 10
               + b"RCPT TO:<x@elsewhere.example>\r\n" * 5 + b"MAIL FROM:<b@example.org>\r\n" * 5
               + b"\x00\xff\xfe\r\n" * 5)
        got = c.wait_closed(10)
        assert b"\r\n421 4.7.0" in got, got


def test_too_many_pop3_errors_close(srv: Server) -> None:
    with Raw(srv.port("pop3")) as c:
        assert c.line().startswith(b"+OK")
        c.send(b"XYZZY\r\n" * 25)
        got = c.wait_closed(10)
        lines = [line for line in got.split(b"\r\n") if line]
        assert all(line.startswith(b"-ERR") for line in lines), got
        assert len(lines) < 25, got
