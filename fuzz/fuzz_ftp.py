#!/usr/bin/env python3
"""Fuzz target: the FTP control-connection engine must answer any byte stream and never raise.

Whole sessions: the engine's events get plausible session answers (logins accepted for the
password "ok", passive ports, file replies with multi-line listings that echo the client's
path, transfers that start, run while more commands arrive, finish or are aborted), and every
reply must be well formed (CRLF lines, three-digit codes, multi-line replies closed, no
continuation line that could end a reply early).

Input layout: byte 0 picks the settings (see `settings_for`), byte 1 how the rest is cut into
reads; the rest is what the client sends.

Coverage-guided with atheris (`pip install atheris`):
    python fuzz/fuzz_ftp.py -max_total_time=300 fuzz/corpus/ftp
Without atheris it replays the files given (or the corpus directory) once each, which is how
`tests/test_fuzz_targets.py` runs it in the suite.
"""

from __future__ import annotations

import ipaddress
import posixpath
import sys
from collections.abc import Iterable
from pathlib import Path

from netpost.ftp.protocol import (
    Abort,
    Event,
    FileRequest,
    FTPConnection,
    FTPSettings,
    Login,
    PassiveRequest,
    StartTLS,
    TransferRequest,
)

CLIENT4 = "192.0.2.7"
CLIENT6 = "2001:db8::7"


def settings_for(flags: int) -> FTPSettings:
    """Bit 0: IPv4 client (else IPv6); 1: AUTH TLS offered; 2: implicit TLS; 3: login before
    TLS allowed; 4: PROT P required; 5: 4096-octet lines (else 96); 6: 20 errors (else 4)."""
    return FTPSettings(
        client_address=CLIENT4 if flags & 1 else CLIENT6,
        tls_available=bool(flags & 2),
        tls_active=bool(flags & 4),
        allow_plaintext_login=bool(flags & 8),
        require_protected_data=bool(flags & 16),
        max_line=4096 if flags & 32 else 96,
        max_errors=20 if flags & 64 else 4,
    )


def _canon(host: str) -> str:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def check_replies(out: bytes) -> None:
    """Whole, well-formed replies (RFC 959 4.2): CRLF lines; a reply is "ddd text" or
    "ddd-text" ... "ddd text"; no line inside starts with three digits (padded instead)."""
    if not out:
        return
    assert out.endswith(b"\r\n"), out[-80:]
    code: bytes | None = None  # inside a multi-line reply with this code
    for line in out[:-2].split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line, line
        if code is None:
            assert len(line) >= 4 and line[:3].isdigit() and line[:1] in b"12345", line
            assert line[3:4] in (b" ", b"-"), line
            if line[3:4] == b"-":
                code = line[:3]
        elif line[:3] == code and line[3:4] == b" ":
            code = None
        else:
            assert not (len(line) >= 3 and line[:3].isdigit()), line  # RFC 959 4.2: padded
    assert code is None, "multi-line reply not closed"


class Session:
    """Drives one FTPConnection the way the real session does, with canned answers.

    The answers depend only on the events and their order, never on how the input was cut,
    except for `defer_transfers`: then a started transfer runs until the end of the current
    read (so commands in the same read arrive during the transfer: held, or ABOR/STAT/NOOP/QUIT
    answered at once)."""

    def __init__(self, settings: FTPSettings, *, defer_transfers: bool = False) -> None:
        self.conn = FTPConnection(settings, trace=self._trace)
        self.defer = defer_transfers
        self.events: list[Event] = []
        self.out: list[bytes] = []
        self.trace: list[tuple[str, str]] = []
        self.conn.greeting()
        self._flush()

    def _trace(self, direction: str, line: str) -> None:
        assert direction in ("C", "S")
        assert "\r" not in line and "\n" not in line or direction == "C"
        if direction == "C" and line.split(" ", 1)[0].upper() == "PASS":
            assert line == "PASS <redacted>", line
        self.trace.append((direction, line))

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        check_replies(out)
        self.out.append(out)

    def feed(self, chunk: bytes) -> None:
        conn = self.conn
        if conn.closed:
            return
        conn.receive_data(chunk)
        self._pump()
        while conn.transferring and not conn.closed:
            conn.transfer_done(226, "Transfer complete")
            self._pump()
        self._flush()

    def end(self, idle: bool = False) -> None:
        conn = self.conn
        if idle:
            conn.close("Idle timeout, closing control connection")
        else:
            conn.receive_data(b"")
        assert conn.closed
        assert conn.next_event() is None
        self._flush()

    def _pump(self) -> None:
        conn = self.conn
        while (event := conn.next_event()) is not None:
            self.events.append(event)
            self._answer(event, len(self.events))
            assert not conn.closed or conn.next_event() is None

    def _answer(self, event: Event, n: int) -> None:
        conn = self.conn
        if isinstance(event, StartTLS):
            assert not conn.tls_active
            conn.tls_started()
            assert conn.tls_active
        elif isinstance(event, Login):
            assert conn.account is None
            if event.password == "ok":
                conn.accept_login(event.user + "@example.test")
            else:
                conn.reject_login()
        elif isinstance(event, PassiveRequest):
            if n % 7 == 0:
                conn.reply(425, "Cannot open a passive port: no passive port free")
            elif event.extended or conn.settings.client_address == CLIENT4:
                conn.passive_ready("192.0.2.1", 1024 + n)
            else:
                conn.reply(425, "no IPv4 address")
        elif isinstance(event, FileRequest):
            self._file(event, n)
        elif isinstance(event, TransferRequest):
            assert conn.account is not None
            if event.active is not None:
                # The engine's promise: active data connections go to the client only.
                assert _canon(event.active.host) == _canon(conn.settings.client_address), event
                assert 1024 <= event.active.port < 65536, event.active
            assert not (event.offset and event.ascii), event  # REST is for TYPE I
            if n % 5 == 0:
                conn.reply(550, f"{event.path or '/'}: no such file or directory")
                return
            conn.transfer_started(f"Opening data connection for {event.path}")
            assert conn.transferring
            if not self.defer:
                conn.transfer_done(226 if n % 3 else 426, "Transfer complete")
        elif isinstance(event, Abort):
            assert conn.transferring
            conn.transfer_done(426, "Connection closed; transfer aborted")
        else:  # pragma: no cover - every event is handled
            raise AssertionError(f"unknown event {event!r}")

    def _file(self, event: FileRequest, n: int) -> None:
        conn = self.conn
        assert conn.account is not None
        path = posixpath.normpath(posixpath.join(conn.cwd, event.path or "."))
        path = "/" + path.lstrip("/")
        if n % 4 == 0:
            conn.reply(550 if n % 8 else 553, f"{path}: permission denied")
            return
        verb = event.verb
        if verb == "CWD":
            conn.set_cwd(path)
            conn.reply(250, f"Directory changed to {path}")
        elif verb == "MKD":
            conn.reply(257, f"\"{path}\" created")
        elif verb == "RNFR":
            conn.reply(350, "Ready for RNTO")
        elif verb == "RNTO":
            assert event.source is not None
            conn.reply(250, f"Renamed {event.source} to {path}")
        elif verb in ("SIZE", "MDTM"):
            conn.reply(213, str(len(path)))
        elif verb == "MLST":
            conn.reply(250, [f"Listing {path}", f" type=file;size=1; {path}", "End"])
        elif verb == "STAT":
            # A listing that echoes the client's name, even one like "213 fake end".
            conn.reply(213, [f"Status of {path}:", event.path, f"213 {event.path}",
                             f"213{event.path}", "", "End of status"])
        elif verb == "CHMOD":
            conn.reply(200, f"Mode of {path} set to {event.source}")
        else:
            conn.reply(250, f"{verb} {path} ok")


def run(settings: FTPSettings, chunks: Iterable[bytes], *, defer_transfers: bool = False,
        idle: bool = False) -> Session:
    """A whole session over `chunks` (each one read from the socket)."""
    session = Session(settings, defer_transfers=defer_transfers)
    for chunk in chunks:
        session.feed(chunk)
        if session.conn.closed:
            break
    session.end(idle=idle and not session.conn.closed)
    return session


def one_input(data: bytes) -> None:
    flags = data[0] if data else 0
    step = (data[1] % 64 + 1) if len(data) > 1 else 1
    body = data[2:]
    run(settings_for(flags), (body[i:i + step] for i in range(0, len(body), step)),
        defer_transfers=bool(flags & 128), idle=step % 2 == 0)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fuzz.replay import fuzz_main

    fuzz_main(one_input, "fuzz/corpus/ftp")
