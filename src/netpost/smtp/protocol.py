"""SMTP protocol engine, sans-I/O (see docs/engines.md).

RFC 5321 (SMTP) with the extensions RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8,
RFC 2034/3463 ENHANCEDSTATUSCODES, RFC 2920 PIPELINING, RFC 3030 CHUNKING (BDAT),
RFC 3207 STARTTLS, RFC 4954 AUTH (PLAIN, LOGIN), RFC 3461 DSN (with RFC 6533's utf-8
address type) and RFC 1985 ETRN.

The engine never touches sockets, clocks or files.  The session feeds it bytes with
`receive_data()`, pulls events with `next_event()`, answers them with `send()` /
`accept_auth()` / `reject_auth()` and writes out `data_to_send()`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from netpost.auth import sasl
from netpost.auth.sasl import (
    Credentials,
    SASLBase64Error,
    SASLCancelled,
    SASLError,
    SASLExchange,
)
from netpost.mail.address import UTF8_NON_ASCII, WIRE_LABEL, valid_wire_domain

__all__ = [
    "AuthRequest",
    "EtrnRequest",
    "Event",
    "MailFrom",
    "MessageData",
    "RcptTo",
    "Reply",
    "SMTPConnection",
    "SMTPSettings",
    "StartTLS",
    "etrn_no_messages",
    "etrn_not_allowed",
    "etrn_pending_count",
    "etrn_pending_started",
    "etrn_queuing_started",
    "etrn_unable",
    "orcpt_encode",
    "utf8_addr_decode",
    "utf8_addr_encode",
    "xtext_decode",
    "xtext_encode",
]


# --- replies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One SMTP reply; a tuple text is a multi-line reply (RFC 5321 4.2.1)."""

    code: int
    enhanced: str | None  # RFC 3463 enhanced status code, e.g. "2.1.0"; on every line
    text: str | tuple[str, ...]

    def lines(self) -> list[str]:
        """The reply's lines without CRLF."""
        texts = (self.text,) if isinstance(self.text, str) else self.text
        if not texts:
            texts = ("",)
        last = len(texts) - 1
        out = []
        for i, raw in enumerate(texts):
            # Never let reply text break the line structure (reply injection).
            text = raw.replace("\r", " ").replace("\n", " ")
            if self.enhanced:
                text = f"{self.enhanced} {text}" if text else self.enhanced
            out.append(f"{self.code:03d}{' ' if i == last else '-'}{text}")
        return out

    def to_bytes(self) -> bytes:
        return "".join(line + "\r\n" for line in self.lines()).encode("utf-8", "replace")


# --- settings and events ----------------------------------------------------------------------


@dataclass(frozen=True)
class SMTPSettings:
    hostname: str
    submission: bool = False  # AUTH required before MAIL (RFC 6409 4.3)
    tls_available: bool = True  # STARTTLS may be offered (when the connection is not TLS yet)
    auth_enabled: bool = True  # offer/accept AUTH at all (the MX listener sets False)
    allow_plaintext_auth: bool = False  # AUTH allowed before TLS (development only)
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 100
    max_command_line: int = 2048  # octets incl. CRLF (RFC 5321 4.5.3.1.4 says at least 512)
    max_errors: int = 20
    etrn_enabled: bool = False  # RFC 1985 ETRN offered (the MX listener, for client domains)


@dataclass(frozen=True)
class StartTLS:
    """The go-ahead is queued: flush, upgrade the transport, then call tls_started()."""


@dataclass(frozen=True)
class AuthRequest:
    """Check the credentials, then call accept_auth() or reject_auth()."""

    credentials: Credentials


@dataclass(frozen=True)
class MailFrom:
    address: str  # "" for the null reverse-path <>
    params: dict[str, str | None]  # keywords upper-cased, values as sent
    ret: str | None = None  # RFC 3461 4.3 RET: "FULL" or "HDRS" (upper-cased), None if absent
    envid: str | None = None  # RFC 3461 4.4 ENVID, xtext-decoded (printable ASCII)


@dataclass(frozen=True)
class RcptTo:
    address: str  # "postmaster" for <postmaster>
    params: dict[str, str | None]
    # RFC 3461 4.1 NOTIFY: {"NEVER"} or a subset of {"SUCCESS", "FAILURE", "DELAY"};
    # None when absent (then local policy: failure and delay notices, RFC 3461 4.1).
    notify: frozenset[str] | None = None
    # RFC 3461 4.2 ORCPT: (address type lower-cased, e.g. "rfc822" / "utf-8", decoded address)
    orcpt: tuple[str, str] | None = None


@dataclass(frozen=True)
class MessageData:
    data: bytes  # exact content, dot-unstuffed (DATA) or joined chunks (BDAT), CRLF line ends
    mail_from: str
    recipients: tuple[str, ...]  # only the accepted ones, in order
    body: str | None  # BODY= value upper-cased (7BIT / 8BITMIME) or None
    smtputf8: bool
    ret: str | None = None  # the transaction's MAIL RET= (RFC 3461 4.3)
    envid: str | None = None  # the transaction's MAIL ENVID=, decoded (RFC 3461 4.4)
    # Aligned with `recipients`: each accepted recipient's NOTIFY and ORCPT (see RcptTo).
    rcpt_notify: tuple[frozenset[str] | None, ...] = ()
    rcpt_orcpt: tuple[tuple[str, str] | None, ...] = ()


@dataclass(frozen=True)
class EtrnRequest:
    """RFC 1985 ETRN: start a queue run for `node`; answer with send() (see etrn_* replies).

    `node` is as sent: "example.com" (that domain), "@example.com" (that domain and its
    subdomains) or "#queuename" (a named queue).
    """

    node: str

    @property
    def queue(self) -> str | None:
        """The queue name of a "#queuename" node, else None."""
        return self.node[1:] if self.node.startswith("#") else None

    @property
    def domain(self) -> str | None:
        """The domain of a domain or "@domain" node (lower-cased), else None."""
        if self.node.startswith("#"):
            return None
        return self.node.removeprefix("@").lower()

    @property
    def subdomains(self) -> bool:
        """True for "@domain": the domain and every subdomain of it (RFC 1985 5.3)."""
        return self.node.startswith("@")


Event = StartTLS | AuthRequest | MailFrom | RcptTo | MessageData | EtrnRequest


# --- fixed replies ----------------------------------------------------------------------------

R_OK = Reply(250, "2.0.0", "OK")
R_LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
R_UNKNOWN = Reply(500, "5.5.2", "Command not recognized")
R_BAD_UTF8 = Reply(500, "5.5.2", "Syntax error: command is not valid UTF-8")
R_BAD_CHARS = Reply(500, "5.5.2", "Syntax error: control characters in command")
R_TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
R_NEED_HELO = Reply(503, "5.5.1", "Send HELO/EHLO first")
R_NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command first")
R_NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command first")
R_NESTED_MAIL = Reply(503, "5.5.1", "Nested MAIL command")
R_NO_VALID_RCPT = Reply(554, "5.5.1", "No valid recipients")
R_AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
R_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
R_TOO_MANY_RCPT = Reply(452, "4.5.3", "Too many recipients")
R_NEED_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
R_BAD_SENDER = Reply(553, "5.1.7", "Bad sender address syntax")
R_BAD_RCPT = Reply(553, "5.1.3", "Bad recipient address syntax")
R_BARE_CRLF = Reply(554, "5.6.0", "Bare CR or LF in message data; lines must end with CRLF")
R_START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
R_AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
R_AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
R_AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
R_AUTH_BAD_B64 = Reply(501, "5.5.2", "Invalid base64 data")
R_AUTH_ENCRYPT = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
R_TLS_GO = Reply(220, "2.0.0", "Ready to start TLS")
R_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
R_EXPN = Reply(502, "5.5.1", "EXPN not supported")
R_HELP = Reply(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT AUTH STARTTLS",
)

R_ETRN_DISABLED = Reply(502, "5.5.1", "ETRN not available")
R_ETRN_SYNTAX = Reply(501, "5.5.4", "Syntax Error in Parameters")  # RFC 1985 5.1
R_ETRN_IN_TXN = Reply(503, "5.5.1", "ETRN not permitted during a mail transaction")


# RFC 1985 5.1: the replies to ETRN.  The node text was validated by the engine.
def etrn_queuing_started(node: str) -> Reply:
    return Reply(250, "2.0.0", f"OK, queuing for node {node} started")


def etrn_no_messages(node: str) -> Reply:
    return Reply(251, "2.0.0", f"OK, no messages waiting for node {node}")


def etrn_pending_started(node: str) -> Reply:
    return Reply(252, "2.0.0", f"OK, pending messages for node {node} started")


def etrn_pending_count(node: str, count: int) -> Reply:
    return Reply(253, "2.0.0", f"OK, {count} pending messages for node {node} started")


def etrn_unable(node: str) -> Reply:
    return Reply(458, "4.3.0", f"Unable to queue messages for node {node}")


def etrn_not_allowed(node: str, reason: str) -> Reply:
    return Reply(459, "4.7.1", f"Node {node} not allowed: {reason}")


# RFC 4954 4: a SASL continuation line may be up to 12288 octets.
AUTH_LINE_LIMIT = 12288

# --- syntax (RFC 5321 4.1.2, RFC 6531 3.3) ----------------------------------------------------

# Domain syntax is netpost.mail.address's (one module for both the wire and the account rules).
_U = UTF8_NON_ASCII  # ASCII-only is checked separately
_LABEL = WIRE_LABEL
# EHLO/HELO argument: be lenient about underscores, which many real hosts send.
_HLABEL = rf"[A-Za-z0-9_{_U}](?:[A-Za-z0-9_{_U}-]*[A-Za-z0-9_{_U}])?"
_HELO_DOMAIN_RE = re.compile(rf"{_HLABEL}(?:\.{_HLABEL})*\.?")
_ATEXT = rf"A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_U}"
_DOT_STRING_RE = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_QUOTED_RE = re.compile(rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U}]|\\[\x20-\x7e])*"')
_IPV4_RE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_GENERAL_LITERAL_RE = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")
_ADL_RE = re.compile(rf"@{_LABEL}(?:\.{_LABEL})*(?:,@{_LABEL}(?:\.{_LABEL})*)*:")
# RFC 5321 4.1.2 esmtp-param
_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE_RE = re.compile(rf"[\x21-\x3c\x3e-\x7e{_U}]+")
_DIGITS_RE = re.compile(r"[0-9]{1,20}")
_CTRL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _valid_literal(text: str) -> bool:
    """RFC 5321 4.1.3 address literal, brackets included."""
    if len(text) < 3 or text[0] != "[" or text[-1] != "]":
        return False
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
            return True
        if _IPV4_RE.fullmatch(inner):
            ipaddress.IPv4Address(inner)
            return True
    except ValueError:
        return False
    return _GENERAL_LITERAL_RE.fullmatch(inner) is not None


def _valid_domain(text: str) -> bool:
    if text.startswith("["):
        return len(text.encode("utf-8")) <= 255 and _valid_literal(text)  # RFC 5321 4.5.3.1.2
    return valid_wire_domain(text)  # RFC 5321 4.1.2, 4.5.3.1.2


def _valid_helo(text: str) -> bool:
    if text.startswith("["):
        return _valid_literal(text)
    return len(text) <= 255 and _HELO_DOMAIN_RE.fullmatch(text) is not None


def _valid_mailbox(text: str) -> bool:
    """RFC 5321 4.1.2 Mailbox = Local-part "@" ( Domain / address-literal )."""
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        return False
    if len(local.encode("utf-8")) > 64:  # RFC 5321 4.5.3.1.1
        return False
    if _DOT_STRING_RE.fullmatch(local) is None and _QUOTED_RE.fullmatch(local) is None:
        return False
    return _valid_domain(domain)


def _split_path(text: str) -> tuple[str, str] | None:
    """Split "<path> rest" into the path's inside and the rest; None without brackets."""
    if not text.startswith("<"):
        return None
    if '"' not in text:
        end = text.find(">")
        return None if end < 0 else (text[1:end], text[end + 1 :])
    quoted = False
    i = 1
    n = len(text)
    while i < n:  # a quoted local part may contain ">" (RFC 5321 4.1.2 Quoted-string)
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            return text[1:i], text[i + 1 :]
        i += 1
    return None


def _parse_params(text: str) -> dict[str, str | None] | None:
    """RFC 5321 4.1.2 Mail-parameters; None on a syntax error or a repeated keyword."""
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if _KEYWORD_RE.fullmatch(key) is None:
            return None
        if eq and _VALUE_RE.fullmatch(value) is None:
            return None
        key = key.upper()
        if key in params:
            return None
        params[key] = value if eq else None
    return params


# --- DSN parameters (RFC 3461, RFC 6533) ------------------------------------------------------

# RFC 3461 4: xtext = *( xchar / hexchar ); xchar is "!".."~" except "+" and "=", hexchar is
# "+" and two upper-case hex digits standing for one octet.
_XTEXT_RE = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_HEXCHAR_RE = re.compile(r"\+([0-9A-F]{2})")
_XCHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {"+", "="}
# RFC 6533 3: QCHAR is printable ASCII except "+", "=" and "\\"; QUCHAR adds non-ASCII;
# EmbeddedUnicodeChar is "\\x{" HEXPOINT "}".
_QCHARS = _XCHARS - {"\\"}
_UTF8_ADDR_RE = re.compile(
    rf"(?:[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e{_U}]|\\x\{{[0-9A-Fa-f]{{1,6}}\}})+"
)
_EMBEDDED_RE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_ADDR_TYPE_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")  # RFC 3461 4.2 atom
_PRINTABLE_ASCII_RE = re.compile(r"[\x20-\x7e]+")
_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
ENVID_MAX = 100  # RFC 3461 4.4: at most 100 characters


def xtext_encode(text: str) -> str:
    """RFC 3461 4: encode `text` (as UTF-8 octets) as xtext."""
    out = []
    for ch in text:
        if ch in _XCHARS:
            out.append(ch)
        else:
            out.extend(f"+{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def xtext_decode(text: str) -> str:
    """RFC 3461 4: decode xtext; ValueError on bad syntax or octets that are not UTF-8."""
    if _XTEXT_RE.fullmatch(text) is None:
        raise ValueError("invalid xtext")
    if "+" not in text:
        return text
    raw = bytearray()
    pos = 0
    for m in _HEXCHAR_RE.finditer(text):
        raw += text[pos : m.start()].encode("ascii")
        raw.append(int(m.group(1), 16))
        pos = m.end()
    raw += text[pos:].encode("ascii")
    return raw.decode("utf-8")  # UnicodeDecodeError is a ValueError


def utf8_addr_encode(address: str, *, unitext: bool) -> str:
    """RFC 6533 3: utf-8-addr-unitext (non-ASCII kept, for SMTPUTF8 sessions) or
    utf-8-addr-xtext (pure ASCII) form of a utf-8 address."""
    out = []
    for ch in address:
        if ch in _QCHARS or (unitext and ord(ch) > 0x7F):
            out.append(ch)
        else:
            out.append(f"\\x{{{ord(ch):X}}}")
    return "".join(out)


def utf8_addr_decode(text: str) -> str:
    """RFC 6533 3: decode utf-8-addr-xtext / utf-8-addr-unitext; ValueError when bad."""
    if _UTF8_ADDR_RE.fullmatch(text) is None:
        raise ValueError("invalid utf-8 address encoding")

    def point(m: re.Match[str]) -> str:
        cp = int(m.group(1), 16)
        if cp == 0 or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:  # RFC 6533 3 HEXPOINT
            raise ValueError("invalid code point")
        return chr(cp)

    return _EMBEDDED_RE.sub(point, text)


def orcpt_encode(addr_type: str, address: str, *, smtputf8: bool = False) -> str:
    """The value of an ORCPT parameter (RFC 3461 4.2; RFC 6533 3 for the utf-8 type)."""
    if addr_type.lower() == "utf-8":
        return "utf-8;" + utf8_addr_encode(address, unitext=smtputf8)
    return f"{addr_type};{xtext_encode(address)}"


def _decode_envid(value: str) -> str | None:
    """RFC 3461 4.4: ENVID=xtext, at most 100 characters, printable US-ASCII decoded."""
    if len(value) > ENVID_MAX:
        return None
    try:
        decoded = xtext_decode(value)
    except ValueError:
        return None
    return decoded if _PRINTABLE_ASCII_RE.fullmatch(decoded) else None


def _decode_notify(value: str) -> frozenset[str] | None:
    """RFC 3461 4.1: NOTIFY=NEVER or a comma list of SUCCESS, FAILURE, DELAY."""
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return frozenset(words)
    if all(word in _NOTIFY_WORDS for word in words):  # NEVER never in a list
        return frozenset(words)
    return None


def _decode_orcpt(value: str, smtputf8: bool) -> tuple[str, str] | None:
    """RFC 3461 4.2: ORCPT=addr-type;xtext; RFC 6533 3: utf-8;utf-8-addr-(x|uni)text."""
    addr_type, semi, encoded = value.partition(";")
    if not semi or not encoded or _ADDR_TYPE_RE.fullmatch(addr_type) is None:
        return None
    addr_type = addr_type.lower()
    try:
        if addr_type == "utf-8":
            if not smtputf8 and not encoded.isascii():
                return None  # RFC 6533 3: unitext only where SMTPUTF8 is in use
            address = utf8_addr_decode(encoded)
            if _CTRL_RE.search(address) is not None:
                return None
        else:
            address = xtext_decode(encoded)
            # RFC 3461 4.2: the decoded address is printable US-ASCII.
            if _PRINTABLE_ASCII_RE.fullmatch(address) is None:
                return None
    except ValueError:
        return None
    return addr_type, address


# RFC 1985 5.1: ETRN node = domain / "@" domain / "#" queuename
_QUEUENAME_RE = re.compile(r"[\x21-\x7e]{1,255}")


def _valid_etrn_node(node: str) -> bool:
    if node.startswith("#"):
        return _QUEUENAME_RE.fullmatch(node[1:]) is not None
    domain = node.removeprefix("@")
    return domain.isascii() and not domain.startswith("[") and _valid_domain(domain)


_SASL_MECH_RE = re.compile(rb"[A-Z0-9_-]{1,20}")  # RFC 4422 3.1 sasl-mech (upper case)


def _redacted_auth(raw: bytes | bytearray) -> str:
    """The trace form of a command line starting with "AUTH": never its SASL data.

    "AUTH <MECH> <redacted>" or "AUTH <MECH>" when the mechanism name looks like one
    (a known mechanism in any case, or an upper-case RFC 4422 name), else "AUTH <redacted>".
    """
    rest = bytes(raw[4:])
    if not rest:
        return "AUTH"
    if rest[:1] != b" ":
        return "AUTH <redacted>"  # "AUTH\t...", "AUTHx...": unknown framing, show nothing
    words = rest.split()
    if not words:
        return "AUTH"
    mech = words[0]
    known = mech.upper().decode("ascii", "replace") in sasl.MECHANISMS
    if not known and _SASL_MECH_RE.fullmatch(mech) is None:
        return "AUTH <redacted>"
    shown = "AUTH " + mech.upper().decode("ascii")
    return shown + " <redacted>" if len(words) > 1 else shown


# --- the engine -------------------------------------------------------------------------------

_CMD, _DATA, _BDAT, _AUTH, _TLS_WAIT = range(5)


class _Need:
    """Sentinel: more input is needed."""


_NEED = _Need()


class SMTPConnection:
    """One SMTP server connection (RFC 5321), sans-I/O."""

    # Input and DATA/BDAT progress, (re)set by _release_input().
    _buf: bytearray
    _pos: int
    _line_scan: int
    _discarding: bool

    def __init__(
        self,
        settings: SMTPSettings,
        *,
        tls_active: bool = False,
        trace: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.closed = False
        self.tls_active = tls_active
        self.helo_domain: str | None = None
        self.esmtp = False
        self.authenticated_as: str | None = None
        self._trace = trace
        self._out = bytearray()
        self._mode = _CMD
        self._pending: Event | None = None
        self._errors = 0
        # the mail transaction (RFC 5321 3.3)
        self._mail_from: str | None = None
        self._body: str | None = None
        self._smtputf8 = False
        self._ret: str | None = None  # RFC 3461 DSN parameters of the transaction
        self._envid: str | None = None
        self._recipients: list[str] = []
        self._rcpt_notify: list[frozenset[str] | None] = []
        self._rcpt_orcpt: list[tuple[str, str] | None] = []
        self._rcpt_attempted = False
        self._bdat_used = False
        self._chunks = bytearray()
        self._chunks_total = 0  # BDAT octets so far, including discarded ones
        self._release_input()  # the input buffer, DATA and BDAT progress, all empty
        # SASL exchange
        self._sasl: SASLExchange | None = None

    # --- public API ---------------------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        """True between an accepted MAIL and the end of its message (or an event is pending)."""
        return (
            self._mail_from is not None
            or self._mode in (_DATA, _BDAT)
            or self._pending is not None
        )

    def greeting(self) -> None:
        # RFC 5321 4.2 / 3.1: the opening 220 (no enhanced code, RFC 2034 3).
        self._queue(Reply(220, None, f"{self.settings.hostname} ESMTP netpost"))

    def receive_data(self, data: bytes) -> None:
        if self.closed:
            return
        if not data:
            # The peer closed its side: nothing more will be read, so let go of the input
            # and any half-received message now (up to max_message_size of DATA/BDAT).
            self.closed = True
            self._release_input()
            self._reset_txn()
            self._mode = _CMD
            return
        if self._mode == _TLS_WAIT:
            return  # RFC 3207 5: never act on plaintext sent before the TLS handshake
        if self._discarding:
            # Still inside a too-long line: drop it without buffering.
            lf = data.find(b"\n")
            if lf < 0:
                return
            self._discarding = False
            data = data[lf + 1 :]
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_event(self) -> Event | None:
        while not self.closed and self._pending is None:
            mode = self._mode
            result: Event | _Need | None
            if mode == _CMD:
                line = self._read_line(self.settings.max_command_line)
                if line is None:
                    return None
                result = None if line is False else self._handle_command(line)
            elif mode == _DATA:
                result = self._process_data()
            elif mode == _BDAT:
                result = self._process_bdat()
            elif mode == _AUTH:
                line = self._read_line(AUTH_LINE_LIMIT)
                if line is None:
                    return None
                if line is False:
                    self._mode = _CMD  # the too-long line aborted the exchange
                    self._sasl = None
                    result = None
                else:
                    result = self._handle_auth_line(line)
            else:  # _TLS_WAIT
                return None
            if isinstance(result, _Need):
                return None
            if result is not None:
                if not isinstance(result, StartTLS):
                    self._pending = result
                return result
        return None

    def send(self, reply: Reply) -> None:
        """Answer the pending MailFrom, RcptTo, MessageData or EtrnRequest event."""
        event = self._pending
        if event is None or isinstance(event, StartTLS):
            raise RuntimeError("send() called with no pending event")
        if isinstance(event, AuthRequest):
            if 200 <= reply.code < 300:
                raise RuntimeError("use accept_auth() to accept an AuthRequest")
            self.reject_auth(reply)
            return
        self._pending = None
        if self.closed:
            return
        ok = 200 <= reply.code < 300
        if isinstance(event, MailFrom):
            if ok:
                self._mail_from = event.address
                body = event.params.get("BODY")
                self._body = body.upper() if body else None
                self._smtputf8 = "SMTPUTF8" in event.params
                self._ret = event.ret
                self._envid = event.envid
        elif isinstance(event, RcptTo):
            self._rcpt_attempted = True
            if ok:
                self._recipients.append(event.address)
                self._rcpt_notify.append(event.notify)
                self._rcpt_orcpt.append(event.orcpt)
        elif isinstance(event, EtrnRequest):
            pass  # RFC 1985: the reply is all; the queue run happens outside the engine
        else:  # MessageData: any reply ends the transaction
            self._reset_txn()
            if ok:
                # Like Postfix's smtpd_hard_error_limit: errors a client may make *without
                # delivering mail*.  An MTA relaying a list with some stale addresses over one
                # connection must not be cut off while its good mail gets through.
                self._errors = 0
        self._answer(reply)
        if reply.code == 421 and not self.closed:
            self._shutdown()  # RFC 5321 3.8: 421 means the server closes the channel

    def accept_auth(self, identity: str) -> None:
        if not isinstance(self._pending, AuthRequest):
            raise RuntimeError("accept_auth() called with no pending AuthRequest")
        self._pending = None
        if self.closed:
            return
        self.authenticated_as = identity
        self._queue(R_AUTH_OK)

    def reject_auth(self, reply: Reply | None = None) -> None:
        if not isinstance(self._pending, AuthRequest):
            raise RuntimeError("reject_auth() called with no pending AuthRequest")
        self._pending = None
        if self.closed:
            return
        self._answer(reply if reply is not None else R_AUTH_FAILED)

    def tls_started(self) -> None:
        # RFC 3207 4.2: discard all knowledge obtained from the client; it must EHLO again.
        self.tls_active = True
        self.helo_domain = None
        self.esmtp = False
        self.authenticated_as = None
        self._reset_txn()
        self._pending = None
        if self._mode == _TLS_WAIT:
            self._mode = _CMD
        self._release_input()

    def close(self, reply: Reply) -> None:
        if self.closed:
            return
        self._queue(reply)
        self._shutdown()

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    # --- output -------------------------------------------------------------------------------

    def _queue(self, reply: Reply) -> None:
        lines = reply.lines()
        trace = self._trace
        if trace is not None:
            for line in lines:
                trace("S", line)
        self._out += "".join(line + "\r\n" for line in lines).encode("utf-8", "replace")

    def _answer(self, reply: Reply) -> None:
        """Queue a reply to a command; 4xx/5xx count towards max_errors."""
        self._queue(reply)
        # 452 (too many recipients, RFC 5321 4.5.3.1.10) is not the client's fault.
        if reply.code >= 400 and reply.code != 452:
            self._errors += 1
            if self._errors >= self.settings.max_errors:
                self._queue(R_TOO_MANY_ERRORS)
                self._shutdown()

    def _shutdown(self) -> None:
        self.closed = True
        self._pending = None
        self._mode = _CMD
        self._release_input()
        self._chunks = bytearray()

    def _release_input(self) -> None:
        """Drop all buffered input and DATA/BDAT progress (frees the memory)."""
        self._buf = bytearray()  # a new object: clear() may keep a big allocation around
        self._pos = 0  # start of the unprocessed input in _buf
        self._line_scan = 0  # bytes after _pos already searched for LF
        self._discarding = False  # dropping the rest of a too-long line, up to its LF
        # DATA state; offsets are relative to _pos, the start of the content
        self._d_first = False  # decided whether the content starts with ".\r\n"
        self._d_scan = 0
        self._d_chk = 0
        self._d_dropped = 0
        self._d_oversize = False
        self._b_remaining = 0
        self._b_size = 0
        self._b_last = False
        self._b_keep = False
        self._b_error: Reply | None = None

    def _compact(self) -> None:
        """Drop the consumed input (a finished message) instead of keeping it buffered.

        Only when more was consumed than is left: copying the rest then costs no more than
        what was consumed, so many small pipelined chunks stay linear, not quadratic.
        """
        pos = self._pos
        if pos and pos >= len(self._buf) - pos:
            self._buf = self._buf[pos:]  # a new, right-sized object; the old one is freed
            self._pos = 0

    def _trace_c(self, line: str) -> None:
        if self._trace is not None:
            self._trace("C", line)

    # --- input --------------------------------------------------------------------------------

    def _read_line(self, limit: int) -> bytearray | Literal[False] | None:
        """The next line without its line ending (CRLF, or a lenient bare LF).

        None: more input needed.  False: the line was too long, already answered and
        dropped (the rest of it is dropped as it arrives).
        """
        buf = self._buf
        pos = self._pos
        if self._discarding:
            lf = buf.find(b"\n", pos)
            if lf < 0:
                del buf[pos:]
                return None
            self._discarding = False
            pos = self._pos = lf + 1
        lf = buf.find(b"\n", pos + self._line_scan)
        if lf < 0:
            avail = len(buf) - pos
            if avail >= limit:  # the LF cannot come within the limit any more
                del buf[pos:]  # drop it (truncation is cheap), never keep more than this
                self._line_scan = 0
                self._discarding = True
                self._trace_c(f"<line too long: {avail}+ octets>")
                self._answer(R_LINE_TOO_LONG)
                return False
            self._line_scan = avail
            return None
        self._line_scan = 0
        self._pos = lf + 1
        if lf + 1 - pos > limit:
            self._trace_c(f"<line too long: {lf + 1 - pos} octets>")
            self._answer(R_LINE_TOO_LONG)
            return False
        end = lf - 1 if lf > pos and buf[lf - 1] == 0x0D else lf
        return buf[pos:end]

    # --- commands -----------------------------------------------------------------------------

    def _handle_command(self, raw: bytearray) -> Event | None:
        # Trace before decoding, with AUTH redaction decided on the bytes: a line that is
        # not valid UTF-8 must not leak an initial response either.
        if self._trace is not None:
            if raw[:4].upper() == b"AUTH":
                self._trace_c(_redacted_auth(raw))
            else:
                self._trace_c(raw.decode("utf-8", "replace"))
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._answer(R_BAD_UTF8)
            return None
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        # A CR inside a command line, NUL or other controls: never let them through.
        if _CTRL_RE.search(line) is not None:
            self._answer(R_BAD_CHARS)
            return None
        arg = arg.strip(" ")
        handler = self._COMMANDS.get(verb)
        if handler is None:
            self._answer(R_UNKNOWN)
            return None
        return handler(self, arg)

    def _cmd_ehlo(self, arg: str) -> Event | None:
        return self._hello(arg, esmtp=True)

    def _cmd_helo(self, arg: str) -> Event | None:
        return self._hello(arg, esmtp=False)

    def _hello(self, arg: str, *, esmtp: bool) -> Event | None:
        # RFC 5321 4.1.1.1: EHLO/HELO take a domain or an address literal.
        if not arg or not _valid_helo(arg):
            self._answer(Reply(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} domain"))
            return None
        self._reset_txn()  # RFC 5321 4.1.4: EHLO/HELO reset the state like RSET
        self.helo_domain = arg
        self.esmtp = esmtp
        s = self.settings
        if not esmtp:
            self._answer(Reply(250, None, s.hostname))
            return None
        # RFC 5321 4.1.1.1 / RFC 2034 3: EHLO reply lines carry no enhanced codes.
        lines = [
            f"{s.hostname} greets {arg}",
            "PIPELINING",  # RFC 2920
            f"SIZE {s.max_message_size}",  # RFC 1870
            "8BITMIME",  # RFC 6152
            "SMTPUTF8",  # RFC 6531
            "ENHANCEDSTATUSCODES",  # RFC 2034
            "CHUNKING",  # RFC 3030
            "DSN",  # RFC 3461
        ]
        if s.etrn_enabled:
            lines.append("ETRN")  # RFC 1985
        if s.tls_available and not self.tls_active:
            lines.append("STARTTLS")  # RFC 3207
        if self._auth_offered():
            lines.append("AUTH " + " ".join(sasl.MECHANISMS))  # RFC 4954
        lines.append("HELP")
        self._answer(Reply(250, None, tuple(lines)))
        return None

    def _auth_offered(self) -> bool:
        s = self.settings
        return s.auth_enabled and (self.tls_active or s.allow_plaintext_auth)

    def _path_and_params(
        self, arg: str, command: str
    ) -> tuple[str, dict[str, str | None]] | None:
        """RFC 5321 4.1.1.2/4.1.1.3: `FROM:<path> [params]` / `TO:<path> [params]` (a space
        after the colon is tolerated). Answers 501 itself and returns None on bad syntax."""
        keyword = command.split(" ")[1]  # "FROM:" or "TO:"
        if arg[: len(keyword)].upper() != keyword:
            self._answer(Reply(501, "5.5.4", f"Syntax: {command}<address>"))
            return None
        split = _split_path(arg[len(keyword):].lstrip(" "))
        if split is None:
            self._answer(Reply(501, "5.5.4", f"Syntax: {command}<address>"))
            return None
        path, rest = split
        if rest and not rest.startswith(" "):
            self._answer(Reply(501, "5.5.4", f"Syntax: {command}<address> [parameters]"))
            return None
        params = _parse_params(rest)
        if params is None:
            self._answer(Reply(501, "5.5.4", "Syntax error in parameters"))
            return None
        return path, params

    def _cmd_mail(self, arg: str) -> Event | None:
        # RFC 5321 4.1.1.2, sequence per 4.1.4 / 3.3
        if self.helo_domain is None:
            self._answer(R_NEED_HELO)
            return None
        if self._mail_from is not None:
            self._answer(R_NESTED_MAIL)
            return None
        if self.settings.submission and self.authenticated_as is None:
            self._answer(R_AUTH_REQUIRED)  # RFC 4954 6
            return None
        parsed = self._path_and_params(arg, "MAIL FROM:")
        if parsed is None:
            return None
        path, params = parsed
        if params and not self.esmtp:
            # RFC 5321 4.1.2 / RFC 1869: service extensions only in a session opened by EHLO.
            key = next(iter(params))
            self._answer(Reply(555, "5.5.4", f"Parameter {key} requires EHLO"))
            return None
        ret: str | None = None
        envid: str | None = None
        for key, value in params.items():
            if key == "SIZE":  # RFC 1870 6
                if value is None or _DIGITS_RE.fullmatch(value) is None:
                    self._answer(Reply(501, "5.5.4", "Syntax: SIZE=<octets>"))
                    return None
                if int(value) > self.settings.max_message_size:
                    self._answer(R_TOO_BIG)
                    return None
            elif key == "BODY":  # RFC 6152 2
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    self._answer(Reply(501, "5.5.4", "Unsupported BODY type"))
                    return None
            elif key == "SMTPUTF8":  # RFC 6531 3.4
                if value is not None:
                    self._answer(Reply(501, "5.5.4", "SMTPUTF8 takes no value"))
                    return None
            elif key == "AUTH":  # RFC 4954 5: accepted and ignored
                if value is None:
                    self._answer(Reply(501, "5.5.4", "Syntax: AUTH=<mailbox>"))
                    return None
            elif key == "RET":  # RFC 3461 4.3
                if value is None or value.upper() not in ("FULL", "HDRS"):
                    self._answer(Reply(501, "5.5.4", "Syntax: RET=FULL or RET=HDRS"))
                    return None
                ret = value.upper()
            elif key == "ENVID":  # RFC 3461 4.4
                envid = None if value is None else _decode_envid(value)
                if envid is None:
                    self._answer(Reply(501, "5.5.4", "Bad ENVID parameter syntax"))
                    return None
            else:
                self._answer(Reply(555, "5.5.4", f"Unsupported parameter {key}"))
                return None
        address = self._check_path(path, "SMTPUTF8" in params, sender=True)
        if address is None:
            return None
        return MailFrom(address, params, ret, envid)

    def _check_path(self, path: str, smtputf8: bool, *, sender: bool) -> str | None:
        """Validate a path's inside; answers and returns None when it is bad."""
        if not path:
            if sender:
                return ""  # RFC 5321 4.5.5: the null reverse-path
            self._answer(R_BAD_RCPT)
            return None
        if not sender and path.lower() == "postmaster":
            return "postmaster"  # RFC 5321 4.5.1
        if path.startswith("@"):  # RFC 5321 4.1.2: source route, accepted and ignored
            m = _ADL_RE.match(path)
            if m is None:
                self._answer(R_BAD_SENDER if sender else R_BAD_RCPT)
                return None
            path = path[m.end() :]
        if len(path.encode("utf-8")) > 254:  # RFC 5321 4.5.3.1.3 (256 with the brackets)
            self._answer(R_BAD_SENDER if sender else R_BAD_RCPT)
            return None
        if not _valid_mailbox(path):
            self._answer(R_BAD_SENDER if sender else R_BAD_RCPT)
            return None
        if not smtputf8 and not path.isascii():
            self._answer(R_NEED_SMTPUTF8)  # RFC 6531 3.5 / 3.7.4.1
            return None
        return path

    def _cmd_rcpt(self, arg: str) -> Event | None:
        # RFC 5321 4.1.1.3
        if self._mail_from is None:
            self._answer(R_NEED_MAIL)
            return None
        if self._bdat_used:
            self._answer(Reply(503, "5.5.1", "RCPT not allowed after BDAT"))
            return None
        parsed = self._path_and_params(arg, "RCPT TO:")
        if parsed is None:
            return None
        path, params = parsed
        if params and not self.esmtp:
            # RFC 5321 4.1.2 / RFC 1869: service extensions only in a session opened by EHLO.
            key = next(iter(params))
            self._answer(Reply(555, "5.5.4", f"Parameter {key} requires EHLO"))
            return None
        notify: frozenset[str] | None = None
        orcpt: tuple[str, str] | None = None
        for key, value in params.items():
            if key == "NOTIFY":  # RFC 3461 4.1
                notify = None if value is None else _decode_notify(value)
                if notify is None:
                    self._answer(
                        Reply(501, "5.5.4", "Syntax: NOTIFY=NEVER or NOTIFY=SUCCESS,FAILURE,DELAY")
                    )
                    return None
            elif key == "ORCPT":  # RFC 3461 4.2, RFC 6533 3
                orcpt = None if value is None else _decode_orcpt(value, self._smtputf8)
                if orcpt is None:
                    self._answer(Reply(501, "5.5.4", "Bad ORCPT parameter syntax"))
                    return None
            else:
                self._answer(Reply(555, "5.5.4", f"Unsupported parameter {key}"))
                return None
        address = self._check_path(path, self._smtputf8, sender=False)
        if address is None:
            self._rcpt_attempted = True
            return None
        if len(self._recipients) >= self.settings.max_recipients:
            self._rcpt_attempted = True
            self._answer(R_TOO_MANY_RCPT)  # RFC 5321 4.5.3.1.10
            return None
        return RcptTo(address, params, notify, orcpt)

    def _cmd_data(self, arg: str) -> Event | None:
        # RFC 5321 4.1.1.4
        if arg:
            self._answer(Reply(501, "5.5.4", "Syntax: DATA"))
            return None
        if self._mail_from is None:
            self._answer(R_NEED_MAIL)
            return None
        if self._bdat_used:
            self._answer(Reply(503, "5.5.1", "DATA not allowed after BDAT"))  # RFC 3030 2
            return None
        if not self._recipients:
            # RFC 5321 3.3: 503 when RCPT was never tried, 554 when all were rejected.
            self._answer(R_NO_VALID_RCPT if self._rcpt_attempted else R_NEED_RCPT)
            return None
        self._queue(R_START_DATA)
        self._mode = _DATA
        self._d_first = False
        self._d_scan = 0
        self._d_chk = 0
        self._d_dropped = 0
        self._d_oversize = False
        return None

    def _cmd_bdat(self, arg: str) -> Event | None:
        # RFC 3030 2: BDAT <chunk-size> [LAST]
        words = arg.split(" ")
        if (
            not 1 <= len(words) <= 2
            or _DIGITS_RE.fullmatch(words[0]) is None
            or (len(words) == 2 and words[1].upper() != "LAST")
        ):
            self._answer(Reply(501, "5.5.4", "Syntax: BDAT <size> [LAST]"))
            return None
        size = int(words[0])
        self._b_size = self._b_remaining = size
        self._b_last = len(words) == 2
        self._b_error = None
        self._b_keep = False
        # The chunk is always read (RFC 3030 2: framing stays exact); the verdict follows it.
        if self._mail_from is None:
            self._b_error = R_NEED_MAIL
        elif not self._recipients:
            # Like DATA (RFC 5321 3.3): 503 when RCPT was never tried, 554 when all failed.
            self._b_error = R_NO_VALID_RCPT if self._rcpt_attempted else R_NEED_RCPT
        elif self._chunks_total + size > self.settings.max_message_size:
            self._b_error = R_TOO_BIG  # RFC 1870 / RFC 3030 4
        else:
            self._b_keep = True
        self._mode = _BDAT
        return None

    def _cmd_rset(self, arg: str) -> Event | None:
        # RFC 5321 4.1.1.5
        if arg:
            self._answer(Reply(501, "5.5.4", "Syntax: RSET"))
            return None
        self._reset_txn()
        self._answer(R_OK)
        return None

    def _cmd_noop(self, arg: str) -> Event | None:
        self._answer(R_OK)  # RFC 5321 4.1.1.9: parameters are ignored
        return None

    def _cmd_vrfy(self, arg: str) -> Event | None:
        if not arg:
            self._answer(Reply(501, "5.5.4", "Syntax: VRFY <address>"))
            return None
        self._answer(R_VRFY)  # RFC 5321 3.5.3
        return None

    def _cmd_expn(self, arg: str) -> Event | None:
        self._answer(R_EXPN)  # RFC 5321 3.5.2: may be disabled
        return None

    def _cmd_help(self, arg: str) -> Event | None:
        self._answer(R_HELP)  # RFC 5321 4.1.1.8
        return None

    def _cmd_quit(self, arg: str) -> Event | None:
        # RFC 5321 4.1.1.10
        self._queue(Reply(221, "2.0.0", f"{self.settings.hostname} closing connection"))
        self._shutdown()
        return None

    def _cmd_starttls(self, arg: str) -> Event | None:
        # RFC 3207 4
        if arg:
            self._answer(Reply(501, "5.5.4", "Syntax: STARTTLS"))
            return None
        if self.tls_active:
            self._answer(Reply(503, "5.5.1", "TLS already active"))
            return None
        if not self.settings.tls_available:
            self._answer(Reply(502, "5.5.1", "STARTTLS not available"))
            return None
        self._queue(R_TLS_GO)
        # CVE-2011-0411: drop anything pipelined after STARTTLS.
        self._buf.clear()
        self._pos = 0
        self._line_scan = 0
        self._mode = _TLS_WAIT
        return StartTLS()

    def _cmd_auth(self, arg: str) -> Event | None:
        # RFC 4954 4
        s = self.settings
        if not s.auth_enabled:
            self._answer(Reply(502, "5.5.1", "AUTH not available"))
            return None
        if self.helo_domain is None:
            self._answer(R_NEED_HELO)
            return None
        if self.authenticated_as is not None:
            self._answer(Reply(503, "5.5.1", "Already authenticated"))
            return None
        if self._mail_from is not None:
            self._answer(Reply(503, "5.5.1", "AUTH not permitted during a mail transaction"))
            return None
        if not self.tls_active and not s.allow_plaintext_auth:
            self._answer(R_AUTH_ENCRYPT)
            return None
        words = arg.split()
        if not 1 <= len(words) <= 2:
            self._answer(Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
            return None
        mech = words[0].upper()
        if mech not in sasl.MECHANISMS:
            self._answer(Reply(504, "5.5.4", "Unrecognized authentication type"))
            return None
        self._sasl = SASLExchange(mech, words[1] if len(words) == 2 else None)
        return self._auth_step(None)

    def _handle_auth_line(self, raw: bytearray) -> Event | None:
        self._trace_c("<redacted>")
        self._mode = _CMD
        return self._auth_step(bytes(raw))

    def _auth_step(self, line: bytes | None) -> Event | None:
        """Start the SASL exchange (line None) or feed it a client line; wrap its answer."""
        exchange = self._sasl
        assert exchange is not None
        try:
            step = exchange.start() if line is None else exchange.step(line)
        except SASLCancelled:
            self._answer(R_AUTH_CANCELLED)  # RFC 4954 4
            step = None
        except SASLBase64Error:
            self._answer(R_AUTH_BAD_B64)
            step = None
        except SASLError as exc:
            self._answer(Reply(501, "5.5.2", f"Invalid SASL data: {exc}"))
            step = None
        if isinstance(step, str):
            self._queue(Reply(334, None, step))
            self._mode = _AUTH
            return None
        self._sasl = None
        return None if step is None else AuthRequest(step)

    def _cmd_etrn(self, arg: str) -> Event | None:
        # RFC 1985 5
        if not self.settings.etrn_enabled:
            self._answer(R_ETRN_DISABLED)
            return None
        if self.helo_domain is None:
            self._answer(R_NEED_HELO)
            return None
        if self._mail_from is not None:
            self._answer(R_ETRN_IN_TXN)  # RFC 1985 5: not within a mail transaction
            return None
        if not arg or " " in arg or not _valid_etrn_node(arg):
            self._answer(R_ETRN_SYNTAX)
            return None
        return EtrnRequest(arg)

    _COMMANDS: dict[str, Callable[[SMTPConnection, str], Event | None]] = {
        "EHLO": _cmd_ehlo,
        "HELO": _cmd_helo,
        "MAIL": _cmd_mail,
        "RCPT": _cmd_rcpt,
        "DATA": _cmd_data,
        "BDAT": _cmd_bdat,
        "RSET": _cmd_rset,
        "NOOP": _cmd_noop,
        "VRFY": _cmd_vrfy,
        "EXPN": _cmd_expn,
        "HELP": _cmd_help,
        "QUIT": _cmd_quit,
        "STARTTLS": _cmd_starttls,
        "AUTH": _cmd_auth,
        "ETRN": _cmd_etrn,
    }

    # --- message content ----------------------------------------------------------------------

    def _process_data(self) -> Event | _Need | None:
        """DATA content (RFC 5321 4.1.1.4, 4.5.2): no per-line Python loop."""
        buf = self._buf
        pos = self._pos
        n = len(buf)
        if not self._d_first:
            # The content may end at once with "." CRLF as its very first line.
            have = n - pos
            if have < 3 and buf[pos:n] == b".\r\n"[:have]:
                return _NEED
            self._d_first = True
            if buf[pos : pos + 3] == b".\r\n":
                return self._end_data(pos, pos + 3)
        # Search only what is new (minus 4 bytes that may start the marker).
        idx = buf.find(b"\r\n.\r\n", pos + max(0, self._d_scan - 4))
        if idx >= 0:
            content_end = idx + 2  # the CRLF before the dot belongs to the content
        else:
            content_end = n
            self._d_scan = n - pos
            if n > pos + self._d_chk and buf[n - 1] == 0x0D:
                content_end -= 1  # a CR at the end: judge it when the next byte arrives
        # RFC 5321 2.3.8: CR and LF only as CRLF.  Bare ones enable SMTP smuggling.
        chk = pos + self._d_chk
        if content_end > chk:
            crlf = buf.count(b"\r\n", chk, content_end)
            if (
                buf.count(b"\n", chk, content_end) != crlf
                or buf.count(b"\r", chk, content_end) != crlf
            ):
                self._trace_c(f"<message: {content_end - pos + self._d_dropped} octets>")
                self._queue(R_BARE_CRLF)
                self._reset_txn()
                self._shutdown()  # nothing after this may be read as commands
                return None
            self._d_chk = content_end - pos
        if content_end - pos + self._d_dropped > self.settings.max_message_size:
            self._d_oversize = True
        if idx >= 0:
            return self._end_data(content_end, idx + 5)
        if self._d_oversize:
            # Over the limit: keep only what may hold the start of the end marker.
            keep = max(pos, n - 4)
            dropped = keep - pos
            if dropped:
                del buf[pos:keep]
                self._d_dropped += dropped
                self._d_chk -= dropped
                self._d_scan -= dropped
        return _NEED

    def _end_data(self, content_end: int, after: int) -> Event | None:
        buf = self._buf
        pos = self._pos
        self._pos = after
        self._mode = _CMD
        if self._d_oversize:
            self._trace_c(f"<message: {content_end - pos + self._d_dropped} octets>")
            self._compact()
            self._reset_txn()
            self._answer(R_TOO_BIG)  # RFC 5321 4.5.3.1.10, RFC 1870
            return None
        with memoryview(buf) as view:
            data = bytes(view[pos:content_end])  # one copy
        self._compact()  # the raw content is not kept until the next receive_data()
        # RFC 5321 4.5.2: a line's leading period is removed.
        if data[:1] == b".":
            data = data[1:]
        data = data.replace(b"\r\n.", b"\r\n")
        self._trace_c(f"<message: {len(data)} octets>")
        return self._message(data)

    def _process_bdat(self) -> Event | _Need | None:
        """Read a BDAT chunk of exactly the announced size (RFC 3030 2)."""
        buf = self._buf
        pos = self._pos
        take = min(len(buf) - pos, self._b_remaining)
        if take:
            if self._b_keep:
                with memoryview(buf) as view:
                    self._chunks += view[pos : pos + take]
            self._pos = pos + take
            self._b_remaining -= take
        if self._b_remaining:
            return _NEED
        self._mode = _CMD
        self._compact()
        size = self._b_size
        self._chunks_total += size
        if self._b_error is not None:
            # RFC 3030 2: a failed BDAT fails the whole transaction.
            self._trace_c(f"<message: {self._chunks_total} octets>")
            self._reset_txn()
            self._answer(self._b_error)
            return None
        self._bdat_used = True
        if not self._b_last:
            self._answer(Reply(250, "2.0.0", f"{size} octets received"))
            return None
        data = bytes(self._chunks)
        self._chunks = bytearray()
        self._trace_c(f"<message: {len(data)} octets>")
        crlf = data.count(b"\r\n")
        if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
            # RFC 5321 2.3.8; BDAT framing is exact, so the session may go on.
            self._reset_txn()
            self._answer(R_BARE_CRLF)
            return None
        return self._message(data)

    def _message(self, data: bytes) -> MessageData:
        assert self._mail_from is not None
        return MessageData(
            data,
            self._mail_from,
            tuple(self._recipients),
            self._body,
            self._smtputf8,
            ret=self._ret,
            envid=self._envid,
            rcpt_notify=tuple(self._rcpt_notify),
            rcpt_orcpt=tuple(self._rcpt_orcpt),
        )

    def _reset_txn(self) -> None:
        # RFC 5321 4.1.1.5: clear the sender, recipients and buffered content.
        self._mail_from = None
        self._body = None
        self._smtputf8 = False
        self._ret = None
        self._envid = None
        self._recipients = []
        self._rcpt_notify = []
        self._rcpt_orcpt = []
        self._rcpt_attempted = False
        self._bdat_used = False
        self._chunks = bytearray()
        self._chunks_total = 0
