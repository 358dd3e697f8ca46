"""Size limits, per-address connection limits and the idle timeout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import Server
from tests.security import BOB, Raw, launch, mailbox, smtp_session, stop

MAX = 100_000


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = launch(tmp_path_factory, "small", f"[limits]\nmax_message_size = {MAX}\n")
    yield s
    stop(s)


def body(size: int, tag: str) -> bytes:
    head = f"From: big@example.org\r\nSubject: {tag}\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    n = (size - len(head)) // len(line) + 1
    return (head + line * n)[:size - 2] + b"\r\n"


def test_size_limits(small: Server) -> None:
    before = mailbox(small, BOB)
    with smtp_session(small.port("smtp")) as c:
        code, lines = c.cmd("EHLO client.test")
        assert f"250-SIZE {MAX}".encode() in lines, lines
        # Declared too big.
        code, lines = c.cmd("MAIL FROM:<big@example.org> SIZE=200000")
        assert lines[-1].startswith(b"552 5.3.4"), lines
        assert c.cmd("NOOP")[0] == 250
        # Declared small, sent big over DATA: read to the end, refused, nothing stored.
        assert c.cmd("MAIL FROM:<big@example.org> SIZE=1000")[0] == 250
        assert c.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send_pieces(body(150_000, "too big data"), 16384)
        code, lines = c.cmd(".")
        assert lines[-1].startswith(b"552 5.3.4"), lines
        assert c.cmd("NOOP")[0] == 250  # the session goes on
        # BDAT in one chunk, and in chunks that only add up to too much.
        for chunks in ([150_000], [60_000, 60_000]):
            assert c.cmd("MAIL FROM:<big@example.org>")[0] == 250
            assert c.cmd(f"RCPT TO:<{BOB}>")[0] == 250
            data = body(sum(chunks), f"too big bdat {chunks}")
            codes = []
            pos = 0
            for i, n in enumerate(chunks):
                last = " LAST" if i == len(chunks) - 1 else ""
                c.send(f"BDAT {n}{last}\r\n".encode() + data[pos:pos + n])
                pos += n
                code, lines = c.reply()
                codes.append(lines[-1])
            assert codes[-1].startswith(b"552 5.3.4"), codes
            assert c.cmd("NOOP")[0] == 250
        # Just under the limit still goes through.
        ok = body(MAX - 1000, "fits")
        assert c.cmd("MAIL FROM:<big@example.org> SIZE=99000")[0] == 250
        assert c.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(ok)
        code, lines = c.cmd(".")
        assert code == 250, lines
    after = mailbox(small, BOB)
    assert after[:len(before)] == before
    assert len(after) == len(before) + 1 and after[-1].endswith(ok)


# --- connections ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = launch(tmp_path_factory, "crowded", "[limits]\nmax_connections_per_ip = 3\n")
    yield s
    stop(s)


@pytest.mark.parametrize(("listener", "tls", "refusal"), [
    ("smtp", False, b"421 4.7.0"),
    ("submission", False, b"421 4.7.0"),
    ("submissions", True, b"421 4.7.0"),
    ("pop3", False, b"-ERR [SYS/TEMP]"),
    ("pop3s", True, b"-ERR [SYS/TEMP]"),
])
def test_too_many_connections_from_one_address(crowded: Server, listener: str, tls: bool,
                                               refusal: bytes) -> None:
    port = crowded.port(listener)
    conns = [Raw(port, tls=tls) for _ in range(3)]
    try:
        for c in conns:
            greeting = c.line()
            assert greeting.startswith((b"220", b"+OK")), greeting
        extra = Raw(port, tls=tls)
        try:
            line = extra.line()
            assert line.startswith(refusal), line
            extra.wait_closed(5)
        finally:
            extra.close()
        # The three admitted sessions are unaffected.
        for c in conns:
            if listener.startswith("pop3"):
                assert c.pop("CAPA").startswith(b"+OK")
                while c.line() != b".\r\n":
                    pass
            else:
                assert c.cmd("NOOP")[0] == 250
    finally:
        for c in conns:
            c.close()
    # Once they are gone, a new connection is admitted again.
    deadline = time.monotonic() + 5
    while True:
        with Raw(port, tls=tls) as c:
            line = c.line()
        if line.startswith((b"220", b"+OK")):
            break
        assert time.monotonic() < deadline, line
        time.sleep(0.1)


def test_connection_limit_counts_all_sessions_per_address(crowded: Server) -> None:
    """Each listener counts on its own; stalled sessions on SMTP do not lock out POP3."""
    conns = [Raw(crowded.port("smtp")) for _ in range(3)]
    try:
        for c in conns:
            c.line()
        with Raw(crowded.port("pop3")) as p:
            assert p.line().startswith(b"+OK")
    finally:
        for c in conns:
            c.close()


@pytest.fixture(scope="module")
def sleepy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = launch(tmp_path_factory, "sleepy", "[smtp]\nidle_timeout = 1\n[pop3]\nidle_timeout = 1\n")
    yield s
    stop(s)


def test_idle_smtp_session_is_closed(sleepy: Server) -> None:
    with smtp_session(sleepy.port("smtp")) as c:
        start = time.monotonic()
        code, lines = c.reply()
        took = time.monotonic() - start
        assert lines and lines[-1].startswith(b"421 4.4.2"), lines
        assert 0.5 < took < 4, took
        c.wait_closed(3)


def test_idle_in_the_middle_of_data_is_closed(sleepy: Server) -> None:
    """A client that stalls inside DATA is dropped too, and nothing is stored."""
    before = mailbox(sleepy, BOB)
    with smtp_session(sleepy.port("smtp")) as c:
        assert c.cmd("MAIL FROM:<slow@example.org>")[0] == 250
        assert c.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: stalled\r\n\r\nhalf a message\r\n")
        got = c.wait_closed(5)
        assert b"421 4.4.2" in got, got
    assert mailbox(sleepy, BOB) == before


def test_slow_but_active_client_is_not_cut_off(sleepy: Server) -> None:
    with smtp_session(sleepy.port("smtp")) as c:
        for _ in range(4):
            time.sleep(0.5)
            assert c.cmd("NOOP")[0] == 250


def test_idle_pop3_session_is_closed(sleepy: Server) -> None:
    with Raw(sleepy.port("pop3")) as c:
        assert c.line().startswith(b"+OK")
        got = c.wait_closed(5)
        assert got == b"" or got.startswith(b"-ERR"), got
