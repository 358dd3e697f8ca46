"""IMAP protocol engine, sans-I/O (docs/engines.md): framing, states, authentication, output.

Implements the connection-level parts of RFC 9051 (IMAP4rev2) and RFC 3501 (IMAP4rev1):
the greeting, the four states (3), CAPABILITY, NOOP and LOGOUT in any state, STARTTLS
(RFC 9051 6.2.1, RFC 8314), LOGIN and AUTHENTICATE (PLAIN, LOGIN; SASL-IR RFC 4959),
ENABLE (RFC 5161), ID (RFC 2971), IDLE's continuation and DONE (RFC 2177), literals
(LITERAL+ RFC 7888) and COMPRESS=DEFLATE (RFC 4978).  Mailbox commands become `Request`
events for the session (`netpost.imap.server`), which answers them through `untagged` and
`complete`.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from netpost.auth.sasl import Credentials, SASLError, parse_plain
from netpost.imap import commands as cmds
from netpost.imap.parser import (
    CommandReader,
    Continue,
    Frame,
    Limits,
    ParseError,
    Reject,
    tokenize,
)

NOT_AUTHENTICATED = "not authenticated"
AUTHENTICATED = "authenticated"
SELECTED = "selected"
LOGOUT = "logout"

_ANY = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})
_NOT_AUTH = frozenset({"STARTTLS", "LOGIN", "AUTHENTICATE"})
_AUTH = frozenset({"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE",
                   "UNSUBSCRIBE", "LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE",
                   "GETQUOTA", "GETQUOTAROOT", "SETQUOTA", "COMPRESS", "ENABLE"})
_SELECTED = frozenset({"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "UID EXPUNGE", "SEARCH",
                       "UID SEARCH", "FETCH", "UID FETCH", "STORE", "UID STORE", "COPY",
                       "UID COPY", "MOVE", "UID MOVE", "SORT", "UID SORT", "THREAD",
                       "UID THREAD"})
_KNOWN_NAMES = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID", *_NOT_AUTH, *_AUTH,
                          "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE",
                          "COPY", "MOVE", "SORT", "THREAD", "UID"})

# What ENABLE can turn on (RFC 5161 3.1); others are ignored, as the RFC says.
ENABLEABLE = ("IMAP4REV2", "CONDSTORE", "QRESYNC")

SASL_MECHANISMS = ("PLAIN", "LOGIN")

# FETCH items whose values are message content (redacted in the trace).
_CONTENT_ITEMS = (b"BODY[", b"BINARY[", b"RFC822 ", b"RFC822.HEADER ", b"RFC822.TEXT ")


@dataclass(frozen=True)
class IMAPSettings:
    tls_available: bool = True  # STARTTLS may be offered (connection not yet TLS)
    allow_plaintext_auth: bool = False  # LOGIN/AUTHENTICATE before TLS (development only)
    max_errors: int = 10  # BAD commands before the session ends
    max_literal: int = 50 * 1024 * 1024  # APPENDLIMIT
    max_line: int = 64 * 1024
    implementation: str = "netpost"
    version: str = "0"
    compress: bool = True


@dataclass(frozen=True, slots=True)
class StartTLS:
    """STARTTLS accepted: flush, upgrade the transport, then call tls_started()."""


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """Check these credentials, then call login_done()."""

    tag: str
    credentials: Credentials


@dataclass(frozen=True, slots=True)
class Request:
    """A mailbox command: answer with untagged() lines, then complete()."""

    command: cmds.Command


@dataclass(frozen=True, slots=True)
class IdleDone:
    """The client ended IDLE (DONE, RFC 2177 3): stop watching, then complete()."""

    tag: str


Event = StartTLS | LoginRequest | Request | IdleDone


class IMAPConnection:
    """One IMAP server connection's protocol state."""

    def __init__(self, settings: IMAPSettings, *, tls_active: bool = False,
                 trace: Callable[[str, str], None] | None = None) -> None:
        self.settings = settings
        self.tls_active = tls_active
        self.closed = False
        self.state = NOT_AUTHENTICATED
        self.enabled: set[str] = set()
        self._trace = trace
        self._reader = CommandReader(Limits(max_line=settings.max_line,
                                            max_literal=settings.max_literal,
                                            max_command=settings.max_literal + 1024 * 1024))
        self._out: list[bytes] = []
        self._pending: Event | None = None
        self._errors = 0
        self.error_replies: dict[str, int] = {}  # NO / BAD answered since last taken
        self._awaiting_tls = False
        self._sasl: tuple[str, str, list[bytes]] | None = None  # (tag, mechanism, responses)
        self._idle_tag: str | None = None
        self._inflate: zlib._Decompress | None = None
        self._deflate: zlib._Compress | None = None
        self._compress_next = False
        self._held = b""
        self.selected_readonly = False

    # ------------------------------------------------------------------ capabilities

    @property
    def utf8(self) -> bool:
        return "UTF8=ACCEPT" in self.enabled

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "IMAP4rev2", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
        if self.state == NOT_AUTHENTICATED:
            if self.settings.tls_available and not self.tls_active:
                caps.append("STARTTLS")
            if self.tls_active or self.settings.allow_plaintext_auth:
                caps += [f"AUTH={m}" for m in SASL_MECHANISMS]
            else:
                caps.append("LOGINDISABLED")  # RFC 9051 6.2.3
            return caps
        caps += ["NAMESPACE", "UNSELECT", "UIDPLUS", "MOVE", "CHILDREN", "SPECIAL-USE",
                 "CREATE-SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE",
                 "ESEARCH", "SEARCHRES", "CONDSTORE", "QRESYNC", "SORT", "SORT=DISPLAY",
                 "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "QUOTA", "QUOTA=RES-STORAGE",
                 "QUOTA=RES-MESSAGE", "BINARY", "MULTIAPPEND",
                 f"APPENDLIMIT={self.settings.max_literal}"]
        if self.settings.compress and self._deflate is None:
            caps.append("COMPRESS=DEFLATE")
        return caps

    # ------------------------------------------------------------------ output

    def _write(self, data: bytes) -> None:
        self._out.append(data)

    def _trace_out(self, data: bytes) -> None:
        if self._trace is None:
            return
        head = data[:200]
        if b" FETCH (" in head:
            # Message content never goes into the trace, quoted or literal.
            cuts = [i for w in _CONTENT_ITEMS if (i := head.find(w)) >= 0]
            if cuts:
                head = head[:min(cuts)] + b"<content redacted>"
        text = head.split(b"\r\n", 1)[0].decode("utf-8", "replace")
        if len(data) > 200 or data.count(b"\r\n") > 1:
            text += f" <... {len(data)} octets>"
        self._trace("S", text)

    def untagged(self, data: bytes) -> None:
        """Queue "* <data>\\r\\n" (data is one response, literals included)."""
        line = b"* " + data + b"\r\n"
        if self._trace is not None:
            self._trace_out(line)
        self._out.append(line)

    def untagged_many(self, lines: Sequence[bytes]) -> None:
        """Queue many untagged responses at once (a FETCH of many messages)."""
        if not lines:
            return
        if self._trace is not None:
            for line in lines[:20]:
                self._trace_out(b"* " + line)
            if len(lines) > 20:
                self._trace("S", f"<... {len(lines) - 20} more responses>")
        self._out.append(b"* " + b"\r\n* ".join(lines) + b"\r\n")

    def _tagged(self, tag: str, status: str, text: str) -> None:
        line = f"{tag} {status} {text}"
        if status != "OK":  # NO and BAD, counted for /metrics (net/session.py takes them)
            self.error_replies[status] = self.error_replies.get(status, 0) + 1
        if self._trace is not None:
            self._trace("S", line)
        self._out.append(line.encode("utf-8", "replace") + b"\r\n")

    def _continuation(self, text: str) -> None:
        if self._trace is not None:
            self._trace("S", "+ " + text)
        self._out.append(b"+ " + text.encode() + b"\r\n")

    def bye(self, text: str) -> None:
        """End the session with an untagged BYE (RFC 9051 7.1.5)."""
        self.untagged(b"BYE " + text.encode())
        self._shutdown()

    def _shutdown(self) -> None:
        self.closed = True
        self.state = LOGOUT

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        if self._compress_next:
            # RFC 4978 3: compression starts right after the tagged OK.
            self._compress_next = False
            self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
            self._inflate = zlib.decompressobj(-15)
            rest = self._reader.take_raw() + self._held
            self._held = b""
            if rest:
                self._feed_inflated(rest)
        return data

    def greeting(self, hostname: str) -> None:
        caps = " ".join(self.capabilities())
        self.untagged(f"OK [CAPABILITY {caps}] {hostname} netpost IMAP4rev2 ready".encode())

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        if self.closed:
            return
        if not data:
            self._shutdown()
            return
        if self._awaiting_tls:
            return  # plaintext after STARTTLS is never processed (RFC 9051 6.2.1)
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error:
                self.bye("Invalid compressed data")
                return
        if self._compress_next:
            # Bytes after COMPRESS's command, before our OK went out, are compressed already:
            # keep them raw until data_to_send turns compression on.
            self._held += data
            return
        self._reader.feed(data)

    def _feed_inflated(self, raw: bytes) -> None:
        assert self._inflate is not None
        try:
            self._reader.feed(self._inflate.decompress(raw))
        except zlib.error:
            self.bye("Invalid compressed data")

    def tls_started(self) -> None:
        self._pending = None
        self._awaiting_tls = False
        self.tls_active = True
        self._reader = CommandReader(self._reader.limits)

    def next_event(self) -> Event | None:
        while self._pending is None and not self.closed:
            if self._awaiting_tls or self._compress_next:
                return None
            if self._idle_tag is not None:
                done = self._idle_input()
                if done is None:
                    return None
                self._pending = done
                return done
            if self._sasl is not None:
                if not self._sasl_input():
                    return None
                if self._pending is not None:
                    return self._pending
                continue
            item = self._reader.next()
            if item is None:
                return None
            if isinstance(item, Continue):
                self._continuation("Ready for literal data")
                continue
            if isinstance(item, Reject):
                self._bad(item.tag, item.text, status="NO" if "[TOOBIG]" in item.text
                          else "BAD")
                continue
            event = self._frame(item)
            if event is not None:
                self._pending = event
                return event
        return None

    def _bad(self, tag: str, text: str, status: str = "BAD") -> None:
        self._errors += 1
        if self._errors >= self.settings.max_errors:
            self._tagged(tag, status, text)
            self.bye("Too many invalid commands")
            return
        self._tagged(tag, status, text)

    def _trace_frame(self, frame: Frame, name: str) -> None:
        if self._trace is None:
            return
        first = frame.lines[0].rstrip(b"\r\n").decode("utf-8", "replace")
        if name in ("LOGIN", "AUTHENTICATE"):
            words = first.split(" ")
            first = " ".join(words[:3 if name == "AUTHENTICATE" else 2]) + " <redacted>"
        elif len(first) > 300:
            first = first[:300] + " <...>"
        if frame.literals:
            first += f" <{len(frame.literals)} literal(s), {sum(map(len, frame.literals))} " \
                     "octets>"
        self._trace("C", first)

    def _frame(self, frame: Frame) -> Event | None:
        if not frame.lines:  # an overlong line, dropped
            if self._trace is not None:
                self._trace("C", "<overlong line discarded>")
            self._bad(frame.tag, frame.error or "Command line too long")
            return None
        words = frame.lines[0].split(b" ", 2)
        name = words[1].rstrip(b"\r\n").decode("ascii", "replace").upper() \
            if len(words) > 1 else ""
        self._trace_frame(frame, name)
        tag = frame.tag
        if frame.error is not None:
            self._bad(tag, frame.error, status="NO" if "[TOOBIG]" in frame.error else "BAD")
            return None
        line = frame.lines[0]
        if tag == "*" or not line.startswith(tag.encode()) or len(line) <= len(tag) or \
                line[len(tag)] != 0x20:
            self._bad("*", "Invalid tag")
            return None
        try:
            tokens = tokenize(frame, self._reader.limits, skip=len(tag) + 1)
            command = cmds.parse_command(tag, tokens, utf8=self.utf8)
        except ParseError as exc:
            if name not in _KNOWN_NAMES:
                self._bad(tag, "Unknown command")
            else:
                self._bad(tag, f"Syntax error: {exc}")
            return None
        self._errors = 0  # the limit is on BAD commands in a row (as Dovecot counts them)
        return self._dispatch(command)

    def _dispatch(self, command: cmds.Command) -> Event | None:
        name = command.name
        tag = command.tag
        state = self.state
        if name not in _ANY:
            if name in _NOT_AUTH and state != NOT_AUTHENTICATED:
                self._bad(tag, f"{name} is not valid in the {state} state")
                return None
            if name in _AUTH and state not in (AUTHENTICATED, SELECTED):
                self._bad(tag, f"{name} is not valid in the {state} state")
                return None
            if name in _SELECTED and state != SELECTED:
                self._bad(tag, f"{name} needs a selected mailbox")
                return None
        if name == "CAPABILITY":
            self.untagged(("CAPABILITY " + " ".join(self.capabilities())).encode())
            self._tagged(tag, "OK", "CAPABILITY completed")
            return None
        if name == "LOGOUT":
            # RFC 9051 6.1.3: BYE, then the tagged OK.
            self.untagged(b"BYE netpost logging out")
            self._tagged(tag, "OK", "LOGOUT completed")
            self._shutdown()
            return None
        if name == "NOOP" and state == NOT_AUTHENTICATED:
            self._tagged(tag, "OK", "NOOP completed")
            return None
        if name == "ID":
            assert isinstance(command, cmds.Id)
            # RFC 2971 3.3: the server's own identification.
            s = self.settings
            self.untagged(f'ID ("name" "{s.implementation}" "version" "{s.version}")'.encode())
            self._tagged(tag, "OK", "ID completed")
            return None
        if name == "STARTTLS":
            if self.tls_active or not self.settings.tls_available:
                self._bad(tag, "TLS is already active" if self.tls_active
                          else "TLS is not available", status="NO" if not self.tls_active
                          else "BAD")
                return None
            self._tagged(tag, "OK", "Begin TLS negotiation now")
            self._awaiting_tls = True
            self._reader.take_raw()  # CVE-2011-0411: nothing pipelined after it counts
            return StartTLS()
        if name in ("LOGIN", "AUTHENTICATE"):
            if not (self.tls_active or self.settings.allow_plaintext_auth):
                # RFC 9051 6.2.3 / 11.1: no passwords over plaintext.
                self._tagged(tag, "NO", "[PRIVACYREQUIRED] Use STARTTLS or port 993 first")
                return None
            if isinstance(command, cmds.Login):
                return LoginRequest(tag, Credentials("LOGIN", command.user, command.password))
            assert isinstance(command, cmds.Authenticate)
            return self._authenticate(command)
        if name == "ENABLE":
            assert isinstance(command, cmds.Enable)
            self._enable(command)
            return None
        if name == "COMPRESS":
            assert isinstance(command, cmds.Compress)
            if command.mechanism != "DEFLATE":
                self._tagged(tag, "NO", "Unknown compression mechanism")
            elif self._deflate is not None:
                self._tagged(tag, "NO", "[COMPRESSIONACTIVE] DEFLATE active via COMPRESS")
            elif not self.settings.compress:
                self._tagged(tag, "NO", "Compression is turned off")
            else:
                self._tagged(tag, "OK", "DEFLATE active")
                self._compress_next = True
            return None
        return Request(command)

    def _enable(self, command: cmds.Enable) -> None:
        done = []
        for cap in command.capabilities:
            if cap in ENABLEABLE and cap not in self.enabled:
                self.enabled.add(cap)
                done.append(cap)
                if cap == "QRESYNC" and "CONDSTORE" not in self.enabled:
                    self.enabled.add("CONDSTORE")  # RFC 7162 3.2.3: QRESYNC implies it
        names = {"IMAP4REV2": "IMAP4rev2"}
        self.untagged(("ENABLED" + "".join(" " + names.get(c, c) for c in done)).encode())
        self._tagged(command.tag, "OK", "ENABLE completed")

    # ------------------------------------------------------------------ answers

    def complete(self, tag: str, status: str, text: str) -> None:
        """The tagged response that ends the pending command."""
        self._tagged(tag, status, text)
        self._pending = None

    def defer(self) -> None:
        """The pending command goes on in the background: read the next (see respond)."""
        self._pending = None

    def respond(self, tag: str, status: str, text: str) -> None:
        """The tagged response of a command that was deferred."""
        self._tagged(tag, status, text)

    def login_done(self, tag: str, ok: bool, text: str = "") -> None:
        if ok:
            self.state = AUTHENTICATED
            caps = " ".join(self.capabilities())
            self.complete(tag, "OK", f"[CAPABILITY {caps}] Logged in")
        else:
            self._errors += 1
            self.complete(tag, "NO", text or "[AUTHENTICATIONFAILED] Authentication failed")
            if self._errors >= self.settings.max_errors:
                self.bye("Too many failed commands")

    def set_selected(self, selected: bool, readonly: bool = False) -> None:
        self.state = SELECTED if selected else AUTHENTICATED
        self.selected_readonly = readonly

    # ------------------------------------------------------------------ IDLE

    def start_idle(self, tag: str) -> None:
        """The session accepted IDLE: the continuation goes out, input is read for DONE."""
        self._continuation("idling")
        self._idle_tag = tag
        self._pending = None

    def _idle_input(self) -> IdleDone | None:
        line = self._reader.read_line()
        if line is None:
            return None
        tag = self._idle_tag
        assert tag is not None
        self._idle_tag = None
        text = line.rstrip(b"\r\n")
        if self._trace is not None:
            self._trace("C", text.decode("utf-8", "replace")[:100])
        if text.upper() != b"DONE":
            # RFC 2177 3: anything but DONE ends IDLE as an error.
            self._bad(tag, "Expected DONE to end IDLE")
            return IdleDone("")
        return IdleDone(tag)

    # ------------------------------------------------------------------ SASL

    def _authenticate(self, command: cmds.Authenticate) -> LoginRequest | None:
        mech = command.mechanism
        if mech not in SASL_MECHANISMS:
            self._tagged(command.tag, "NO", "Unsupported authentication mechanism")
            return None
        responses: list[bytes] = []
        if command.initial is not None:  # RFC 4959 SASL-IR
            responses.append(command.initial)
        self._sasl = (command.tag, mech, responses)
        return self._sasl_step()

    def _sasl_step(self) -> LoginRequest | None:
        assert self._sasl is not None
        tag, mech, responses = self._sasl
        decoded: list[bytes] = []
        for r in responses:
            r = r.strip()
            if r == b"*":  # RFC 9051 6.2.2: the client cancels
                self._sasl = None
                self._tagged(tag, "BAD", "Authentication cancelled")
                return None
            if r == b"=":
                decoded.append(b"")
                continue
            try:
                decoded.append(base64.b64decode(r, validate=True))
            except (binascii.Error, ValueError):
                self._sasl = None
                self._bad(tag, "Invalid base64 in SASL response")
                return None
        if mech == "PLAIN":
            if not decoded:
                self._continuation("")
                return None
            self._sasl = None
            try:
                creds = parse_plain(decoded[0])
            except SASLError as exc:
                self._bad(tag, f"Invalid PLAIN data: {exc}")
                return None
            return LoginRequest(tag, creds)
        # LOGIN: username, then password, each prompted.
        if len(decoded) < 2:
            prompt = b"Username:" if not decoded else b"Password:"
            self._continuation(base64.b64encode(prompt).decode())
            return None
        self._sasl = None
        try:
            user, password = decoded[0].decode("utf-8"), decoded[1].decode("utf-8")
        except UnicodeDecodeError:
            self._bad(tag, "SASL data is not UTF-8")
            return None
        return LoginRequest(tag, Credentials("LOGIN", user, password))

    def _sasl_input(self) -> bool:
        """Read one SASL response line; True if something happened."""
        line = self._reader.read_line()
        if line is None:
            return False
        if self._trace is not None:
            self._trace("C", "<redacted>")
        assert self._sasl is not None
        self._sasl[2].append(line.rstrip(b"\r\n"))
        event = self._sasl_step()
        if event is not None:
            self._pending = event
        return True
