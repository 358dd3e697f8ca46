"""POP3 protocol engine, sans-I/O (see docs/engines.md).

Implements RFC 1939 (POP3), RFC 2449 (CAPA, extended response codes, PIPELINING),
RFC 2595 section 4 (STLS), RFC 5034 (AUTH with SASL PLAIN and LOGIN) and RFC 3206
(the SYS and AUTH response codes). The engine never touches sockets, clocks or the
store: the session feeds it bytes, answers its events and writes what it queues.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from netpost.auth.sasl import MECHANISMS, Credentials, SASLCancelled, SASLError, SASLExchange

__all__ = [
    "AuthRequest",
    "Event",
    "MaildropEntry",
    "POP3Connection",
    "POP3Settings",
    "Retrieve",
    "StartTLS",
    "Update",
]

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"

# SASL continuation lines are not POP3 commands, so RFC 2449's 255-octet limit does not bind
# them (RFC 5034 section 4 only limits the AUTH command line itself). Allow a little more.
SASL_LINE_MAX = 2048

PLAINTEXT_REFUSED = (
    "[AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
)
TOO_MANY_ERRORS = "-ERR Too many errors, closing connection"

_CRLF = b"\r\n"
_TERMINATOR = b".\r\n"

_AUTH_COMMANDS = frozenset({"USER", "PASS", "AUTH", "STLS"})
_TRANSACTION_COMMANDS = frozenset({"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL"})


@dataclass(frozen=True)
class POP3Settings:
    tls_available: bool = True  # STLS may be offered (connection not yet TLS)
    allow_plaintext_auth: bool = False  # USER/PASS/AUTH allowed before TLS (development only)
    max_errors: int = 10
    max_line: int = 255  # RFC 2449 section 4: command lines up to 255 octets incl. CRLF
    implementation: str = "netpost"


@dataclass(frozen=True, slots=True)
class MaildropEntry:
    size: int  # exact octets as sent (CRLF line ends, before byte-stuffing)
    uidl: str  # unique-id, 1..70 chars 0x21..0x7E (RFC 1939 section 7)
    key: object  # opaque to the engine: the session's handle for the message


@dataclass(frozen=True, slots=True)
class StartTLS:
    """STLS accepted: flush, upgrade the transport, then call tls_started()."""


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """Check these credentials, then call accept_auth() or reject_auth()."""

    credentials: Credentials  # mechanism "USER" for USER/PASS


@dataclass(frozen=True, slots=True)
class Retrieve:
    """RETR (lines is None) or TOP msg n (lines == n): call send_message() or send_error()."""

    number: int
    entry: MaildropEntry
    lines: int | None


@dataclass(frozen=True, slots=True)
class Update:
    """QUIT in TRANSACTION: expunge these entries (RFC 1939 section 6), then update_done()."""

    deleted: tuple[MaildropEntry, ...]


Event = StartTLS | AuthRequest | Retrieve | Update
_E = TypeVar("_E", StartTLS, AuthRequest, Retrieve, Update)


def _normalise(content: bytes) -> bytes:
    """Make every line end CRLF, including the last (RFC 1939 section 3)."""
    if content.count(b"\n") != content.count(_CRLF):
        content = content.replace(_CRLF, b"\n").replace(b"\n", _CRLF)
    if content and not content.endswith(_CRLF):
        content += _CRLF
    return content


def _top(content: bytes, lines: int) -> bytes:
    """The header, the blank line and at most `lines` body lines of CRLF content (RFC 1939 7)."""
    if content.startswith(_CRLF):
        end = 2
    else:
        blank = content.find(b"\r\n\r\n")
        end = len(content) if blank < 0 else blank + 4
    body = content[end:]
    if not body:
        return content
    lines = min(lines, len(body))
    parts = body.split(_CRLF, lines)
    if len(parts) <= lines:
        return content  # the body has no more than `lines` lines
    if lines == 0:
        return content[:end]
    return content[:end] + _CRLF.join(parts[:lines]) + _CRLF


class POP3Connection:
    """One POP3 server connection's protocol state."""

    def __init__(
        self,
        settings: POP3Settings,
        *,
        tls_active: bool = False,
        trace: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.tls_active = tls_active
        self.closed = False
        self.state = AUTHORIZATION
        self._trace = trace
        self._out: list[bytes] = []  # queued output chunks, joined once per flush
        self._lines: deque[bytes | None] = deque()  # complete input lines; None = too long
        self._partial = bytearray()  # the incomplete last line
        self._skipping = False  # dropping the rest of an overlong line
        self._awaiting_tls = False  # STLS accepted, transport not yet upgraded
        self._pending: Event | None = None
        self._part_end = b"\n"  # last octet of the previous message part (begin_message)
        self._errors = 0
        self.error_replies: dict[str, int] = {}  # -ERR answered since last taken
        self._user: str | None = None  # USER given, PASS expected
        self._sasl: SASLExchange | None = None
        self._maildrop: tuple[MaildropEntry, ...] = ()
        self._deleted: list[bool] = []
        self._live_count = 0
        self._live_size = 0

    # ------------------------------------------------------------------ output

    def _send(self, line: str) -> None:
        if line.startswith("-ERR"):  # counted for /metrics (net/session.py takes them)
            self.error_replies["-ERR"] = self.error_replies.get("-ERR", 0) + 1
        if self._trace is not None:
            self._trace("S", line)
        self._out.append(line.encode("utf-8", "replace") + _CRLF)

    def _send_multi(self, status: str, lines: Sequence[str]) -> None:
        # RFC 1939 section 3: multi-line responses end with a line holding only ".".
        # None of our listing lines starts with ".", so no stuffing is needed here.
        if self._trace is not None:
            self._trace("S", status)
            for line in lines:
                self._trace("S", line)
            self._trace("S", ".")
        body = "\r\n".join((status, *lines, ".")) + "\r\n"
        self._out.append(body.encode("utf-8", "replace"))

    def _error(self, text: str) -> None:
        """Answer a bad command; too many of them end the session."""
        self._errors += 1
        if self._errors >= self.settings.max_errors:
            self._send(TOO_MANY_ERRORS)
            self._shutdown()
        else:
            self._send("-ERR " + text)

    def _shutdown(self) -> None:
        self.closed = True
        self._lines.clear()
        self._partial.clear()
        self._skipping = False
        self._sasl = None

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def chunks_to_send(self) -> list[bytes]:
        """What data_to_send() would return, as the queued chunks (for writelines(): no join).

        The caller owns the returned list; the queue is empty afterwards.
        """
        out = self._out
        self._out = []
        return out

    def greeting(self, text: str = "netpost POP3 server ready") -> None:
        # RFC 1939 section 4: the server greets with a positive response.
        self._send("+OK " + text)

    # ------------------------------------------------------------------- input

    def _line_limit(self) -> int:
        if self._sasl is not None:
            return max(self.settings.max_line, SASL_LINE_MAX)
        return self.settings.max_line

    def receive_data(self, data: bytes) -> None:
        if self.closed:
            return
        if not data:
            # RFC 1939 section 6: a dropped connection never enters the UPDATE state.
            self._shutdown()
            return
        if self._awaiting_tls:
            return  # plaintext after STLS is never processed (RFC 2595 section 4)
        if self._skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return
            self._skipping = False
            self._lines.append(None)
            data = data[newline + 1 :]
        buf = self._partial
        buf += data
        hard_limit = max(self.settings.max_line, SASL_LINE_MAX)
        start = 0
        while (newline := buf.find(b"\n", start)) >= 0:
            end = newline + 1
            if end - start > hard_limit:
                self._lines.append(None)
            else:
                self._lines.append(bytes(buf[start:end]))
            start = end
        if start:
            del buf[:start]
        if len(buf) >= self._line_limit():
            # The line can no longer fit: drop what we have and skip to its end.
            buf.clear()
            self._skipping = True

    def next_event(self) -> Event | None:
        while self._pending is None and not self.closed and self._lines:
            event = self._handle_line(self._lines.popleft())
            if event is not None:
                self._pending = event
                return event
        return None

    # ---------------------------------------------------------------- commands

    def _trace_in(self, line: str) -> None:
        if self._trace is not None:
            self._trace("C", line)

    def _handle_line(self, raw: bytes | None) -> Event | None:
        if raw is None or len(raw) > self._line_limit():
            self._trace_in("<overlong line discarded>")
            self._sasl = None
            # RFC 2449 section 4: command lines are limited to 255 octets.
            self._error("Line too long")
            return None
        line = raw[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._sasl is not None:
            self._trace_in("<redacted>")
            return self._sasl_response(line)
        try:
            text = line.decode("utf-8")
            valid_utf8 = True
        except UnicodeDecodeError:
            text = line.decode("utf-8", "replace")
            valid_utf8 = False
        keyword, _, rest = text.partition(" ")
        command = keyword.upper()
        if command == "PASS":
            self._trace_in(f"{keyword} <redacted>")
        elif command == "AUTH" and " " in rest.strip(" "):
            mechanism = rest.strip(" ").split(" ", 1)[0]
            self._trace_in(f"{keyword} {mechanism} <redacted>")
        else:
            self._trace_in(text)
            rest = rest.rstrip(" ")
        if not keyword:
            self._error("Empty command")
            return None
        if command in _AUTH_COMMANDS:
            if self.state != AUTHORIZATION:
                self._error(f"{command} not valid in {self.state} state")
                return None
            if command == "STLS":
                return self._cmd_stls(rest)
            if not (self.tls_active or self.settings.allow_plaintext_auth):
                # RFC 2595 section 2.4 / RFC 3206 [AUTH]: no passwords in clear text.
                self._error(PLAINTEXT_REFUSED)
                return None
            if command in ("USER", "PASS") and not valid_utf8:
                self._error("Invalid UTF-8 in argument")
                return None
            if command == "USER":
                return self._cmd_user(rest)
            if command == "PASS":
                return self._cmd_pass(rest)
            return self._cmd_auth(rest)
        if command in _TRANSACTION_COMMANDS:
            if self.state != TRANSACTION:
                self._error(f"{command} not valid in {self.state} state")
                return None
            args = rest.split(" ") if rest else []
            if "" in args:
                self._error("Syntax error in arguments")
                return None
            return self._transaction(command, args)
        if command == "CAPA":
            if rest:
                self._error("CAPA takes no arguments")
            else:
                self._cmd_capa()
            return None
        if command == "QUIT":
            if rest:
                self._error("QUIT takes no arguments")
                return None
            return self._cmd_quit()
        self._error("Unknown command")
        return None

    def _cmd_capa(self) -> None:
        # RFC 2449 section 5 and 6.
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.tls_active or self.settings.allow_plaintext_auth:
            caps.append("USER")
            caps.append("SASL " + " ".join(MECHANISMS))
        if self.settings.tls_available and not self.tls_active and self.state == AUTHORIZATION:
            caps.append("STLS")  # RFC 2595 section 4
        caps.append("IMPLEMENTATION " + self.settings.implementation)
        self._send_multi("+OK Capability list follows", caps)

    def _cmd_quit(self) -> Event | None:
        if self.state == TRANSACTION:
            # RFC 1939 section 6: QUIT in TRANSACTION enters the UPDATE state.
            self.state = UPDATE
            deleted = tuple(e for e, d in zip(self._maildrop, self._deleted, strict=True) if d)
            return Update(deleted)
        # RFC 1939 section 5: QUIT in AUTHORIZATION just ends the session.
        self._send(f"+OK {self.settings.implementation} POP3 server signing off")
        self._shutdown()
        return None

    def _cmd_stls(self, rest: str) -> Event | None:
        # RFC 2595 section 4: STLS only in AUTHORIZATION, before authentication.
        if rest:
            self._error("STLS takes no arguments")
            return None
        if self.tls_active:
            self._error("Command not permitted when TLS active")
            return None
        if not self.settings.tls_available:
            self._error("STLS not available")
            return None
        self._send("+OK Begin TLS negotiation")
        # Discard anything pipelined after STLS: plaintext injection (CVE-2011-0411).
        self._lines.clear()
        self._partial.clear()
        self._skipping = False
        self._awaiting_tls = True
        self._user = None
        return StartTLS()

    def _cmd_user(self, rest: str) -> Event | None:
        # RFC 1939 section 7: USER name.
        if not rest:
            self._error("USER requires a name")
            return None
        self._user = rest
        self._send("+OK Send password")
        return None

    def _cmd_pass(self, rest: str) -> Event | None:
        # RFC 1939 section 7: PASS string; the password is everything after "PASS ".
        user, self._user = self._user, None
        if user is None:
            self._error("USER first")
            return None
        if not rest:
            self._error("PASS requires a password")
            return None
        return AuthRequest(Credentials("USER", user, rest))

    def _cmd_auth(self, rest: str) -> Event | None:
        # RFC 5034 section 4: AUTH mechanism [initial-response].
        self._user = None
        if not rest:
            self._send_multi("+OK Supported mechanisms follow", MECHANISMS)
            return None
        parts = rest.strip(" ").split(" ")
        if len(parts) > 2 or "" in parts:
            self._error("Syntax error in AUTH arguments")
            return None
        mechanism = parts[0].upper()
        if mechanism not in MECHANISMS:
            self._error("Unsupported authentication mechanism")
            return None
        self._sasl = SASLExchange(mechanism, parts[1] if len(parts) == 2 else None)
        return self._sasl_response(None)

    def _sasl_response(self, line: bytes | None) -> Event | None:
        """Start the SASL exchange (line None) or feed it a client line; wrap its answer."""
        exchange = self._sasl
        assert exchange is not None
        try:
            step = exchange.start() if line is None else exchange.step(line)
        except SASLCancelled:
            self._sasl = None
            self._send("-ERR Authentication cancelled")  # RFC 5034 section 4
            return None
        except SASLError as exc:
            self._sasl = None
            self._error(f"Invalid authentication data: {exc}")
            return None
        if isinstance(step, str):
            self._send("+ " + step)  # RFC 5034 section 4: PLAIN's first challenge is empty
            return None
        self._sasl = None
        return AuthRequest(step)

    # ------------------------------------------------------------- transaction

    def _message(self, arg: str) -> int | None:
        """Validate a message-number argument; answer -ERR and return None when bad."""
        if not (arg.isascii() and arg.isdigit()):
            self._error("Invalid message number")
            return None
        digits = arg.lstrip("0")
        number = int(digits) if 0 < len(digits) <= 12 else 0
        if not 1 <= number <= len(self._maildrop):
            self._error(f"No such message, only {len(self._maildrop)} messages in maildrop")
            return None
        if self._deleted[number - 1]:
            # RFC 1939 section 5: deleted messages may not be referenced.
            self._error(f"Message {number} already deleted")
            return None
        return number

    def _transaction(self, command: str, args: list[str]) -> Event | None:
        nargs = len(args)
        if command in ("RETR", "DELE"):
            if nargs != 1:
                self._error(f"{command} requires a message number")
                return None
            number = self._message(args[0])
            if number is None:
                return None
            entry = self._maildrop[number - 1]
            if command == "RETR":
                return Retrieve(number, entry, None)
            # RFC 1939 section 5: DELE marks; the message goes in the UPDATE state.
            self._deleted[number - 1] = True
            self._live_count -= 1
            self._live_size -= entry.size
            self._send(f"+OK Message {number} deleted")
            return None
        if command == "TOP":
            # RFC 1939 section 7: TOP msg n.
            if nargs != 2:
                self._error("TOP requires a message number and a line count")
                return None
            if not (args[1].isascii() and args[1].isdigit()):
                self._error("Invalid line count")
                return None
            number = self._message(args[0])
            if number is None:
                return None
            # Cap absurd counts (int() refuses very long digit strings); the body is shorter.
            count = args[1].lstrip("0")
            lines = int(count or "0") if len(count) <= 12 else 10**12
            return Retrieve(number, self._maildrop[number - 1], lines)
        if command in ("LIST", "UIDL"):
            if nargs > 1:
                self._error(f"{command} takes at most one argument")
                return None
            if nargs == 1:
                number = self._message(args[0])
                if number is None:
                    return None
                entry = self._maildrop[number - 1]
                value = str(entry.size) if command == "LIST" else entry.uidl
                self._send(f"+OK {number} {value}")
                return None
            live = [
                (i, e)
                for i, (e, d) in enumerate(zip(self._maildrop, self._deleted, strict=True), 1)
                if not d
            ]
            if command == "LIST":
                status = f"+OK {self._live_count} messages ({self._live_size} octets)"
                self._send_multi(status, [f"{i} {e.size}" for i, e in live])
            else:
                listing = [f"{i} {e.uidl}" for i, e in live]
                self._send_multi("+OK Unique-ID listing follows", listing)
            return None
        if nargs:
            self._error(f"{command} takes no arguments")
            return None
        if command == "STAT":
            # RFC 1939 section 5: deleted messages are not counted.
            self._send(f"+OK {self._live_count} {self._live_size}")
        elif command == "RSET":
            self._deleted = [False] * len(self._maildrop)
            self._live_count = len(self._maildrop)
            self._live_size = sum(e.size for e in self._maildrop)
            self._send(f"+OK maildrop has {self._live_count} messages ({self._live_size} octets)")
        else:  # NOOP
            self._send("+OK")
        return None

    # ----------------------------------------------------------------- answers

    def _take(self, kind: type[_E]) -> _E | None:
        """Clear and return the pending event, checking it is of the expected kind.

        Returns None (nothing to answer) when the connection is already closed.
        """
        pending = self._pending
        if self.closed:
            self._pending = None
            return None
        if not isinstance(pending, kind):
            raise RuntimeError(f"no pending {kind.__name__} to answer (pending: {pending!r})")
        self._pending = None
        return pending

    def accept_auth(self, maildrop: Sequence[MaildropEntry]) -> None:
        if self._take(AuthRequest) is None:
            return
        self._maildrop = tuple(maildrop)
        self._deleted = [False] * len(self._maildrop)
        self._live_count = len(self._maildrop)
        self._live_size = sum(e.size for e in self._maildrop)
        self.state = TRANSACTION
        self._send("+OK Logged in.")

    def reject_auth(self, text: str = "[AUTH] Authentication failed") -> None:
        if self._take(AuthRequest) is None:
            return
        self._send("-ERR " + text)

    def send_message(
        self, content: bytes, *, crlf: bool = False, dot_lines: bool = True
    ) -> None:
        """Answer the pending RETR/TOP with the message `content`.

        crlf=True: the caller guarantees every line of `content` already ends in CRLF (no bare
        CR or LF; the store keeps messages so), so the line-end scan is skipped; a missing
        final CRLF is still added. dot_lines=False: the caller guarantees no line starts with
        "." (recorded at delivery), so the byte-stuffing scan is skipped. The defaults are safe
        for any content.
        """
        event = self._take(Retrieve)
        if event is None:
            return
        if not crlf:
            content = _normalise(content)
        elif content and not content.endswith(_CRLF):
            content += _CRLF
        if event.lines is None:
            status = b"+OK %d octets\r\n" % len(content)
        else:
            content = _top(content, event.lines)
            status = b"+OK Top of message follows\r\n"
        if self._trace is not None:
            self._trace("S", status[:-2].decode("ascii"))
            self._trace("S", f"<message: {len(content)} octets>")
        out = self._out
        out.append(status)
        if dot_lines:
            # RFC 1939 section 3: a line starting with "." gets one more "."; the first line
            # has no CRLF before it, so its extra "." is a chunk of its own (no copy).
            if content.startswith(b"."):
                out.append(b".")
            content = content.replace(b"\r\n.", b"\r\n..")
        if content:
            out.append(content)
        out.append(_TERMINATOR)

    def begin_message(self, size: int) -> bool:
        """Start answering the pending RETR with a message too large to hold in memory: then
        `message_part` for each piece in order, and `end_message`.  The content must be CRLF
        throughout (as stored).  False, and nothing queued, when no RETR is pending (TOP
        answers with `send_message`)."""
        event = self._pending
        if not isinstance(event, Retrieve) or event.lines is not None:
            return False
        if self._take(Retrieve) is None:
            return False
        status = b"+OK %d octets\r\n" % size
        if self._trace is not None:
            self._trace("S", status[:-2].decode("ascii"))
            self._trace("S", f"<message: {size} octets>")
        self._out.append(status)
        self._part_end = b"\n"  # the message starts at a line start
        return True

    def message_part(self, data: bytes, *, dot_lines: bool = True) -> None:
        """One piece of the message begun with `begin_message` (byte-stuffed here, RFC 1939
        3, also where a CRLF or a line's "." falls on the boundary between two pieces)."""
        if not data:
            return
        out = self._out
        if dot_lines:
            if self._part_end == b"\n" and data.startswith(b"."):
                out.append(b".")
            elif self._part_end == b"\r" and data.startswith(b"\n."):
                out.append(b"\n.")
                data = data[1:]
            data = data.replace(b"\r\n.", b"\r\n..")
        out.append(data)
        self._part_end = data[-1:]

    def end_message(self) -> None:
        if self._part_end != b"\n":
            self._out.append(_CRLF)
        self._out.append(_TERMINATOR)

    def send_error(self, text: str) -> None:
        if self._take(Retrieve) is None:
            return
        self._send("-ERR " + text)

    def update_done(self, ok: bool = True, text: str | None = None) -> None:
        if self._take(Update) is None:
            return
        if ok:
            self._send("+OK " + (text or f"{self.settings.implementation} POP3 server signing off"))
        else:
            # RFC 1939 section 6 / RFC 3206: some deleted messages could not be removed.
            text = text or "Some deleted messages not removed"
            if not text.startswith("["):
                text = "[SYS/TEMP] " + text
            self._send("-ERR " + text)
        self._shutdown()

    def tls_started(self) -> None:
        if self._take(StartTLS) is None:
            return
        self.tls_active = True
        self._awaiting_tls = False
        self._lines.clear()
        self._partial.clear()
        self._skipping = False

    def close(self, text: str) -> None:
        """End the session from the server side (shutdown, idle timeout); nothing is deleted."""
        if self.closed:
            return
        if not text.startswith(("+OK", "-ERR")):
            text = "-ERR " + text
        self._send(text)
        self._pending = None
        self._shutdown()
