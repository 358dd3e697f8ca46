"""SMTP client engine, sans-I/O: one outbound connection (RFC 5321 section 3, 4).

The other side of `netpost.smtp.protocol`.  Extensions: RFC 2920 PIPELINING, RFC 1870 SIZE,
RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 3207 STARTTLS, RFC 4954 AUTH (PLAIN, LOGIN),
RFC 3461 DSN, RFC 3030 CHUNKING (BDAT, optional), RFC 2034/3463 ENHANCEDSTATUSCODES.

The engine never touches sockets, clocks or files.  The driver (`netpost.smtp.outbound`)
feeds it the server's bytes with `receive_data()` (b"" when the peer closed), writes out
`data_to_send()` and pulls events with `next_event()`:

- `NeedTLS`: the server said 220 to STARTTLS; upgrade the transport, call `tls_started()`.
- `Ready`: the session is ready for a mail transaction; call `start_transaction()`.
- `TransactionDone`: the outcome of one transaction; the engine is in state READY again
  (unless the server said 421: then `ConnectionFailed` follows).
- `ConnectionFailed`: the connection is finished and unusable; close it once the pending
  output (e.g. a QUIT) is written.
- `Closed`: QUIT was answered.

`phase` names what the engine waits for, so the driver can pick the RFC 5321 4.5.3.2
timeout and say "timeout waiting for reply to DATA".
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from netpost.auth.sasl import b64encode

__all__ = [
    "Closed",
    "ConnectionFailed",
    "Event",
    "Extensions",
    "NeedTLS",
    "OutRecipient",
    "Ready",
    "RecipientResult",
    "ReplyReader",
    "SMTPClient",
    "SMTPProtocolError",
    "ServerReply",
    "TransactionDone",
    "TransactionResult",
    "dot_stuff",
    "xtext_encode",
]


# --- replies (RFC 5321 4.2) -------------------------------------------------------------------


class SMTPProtocolError(Exception):
    """The server's bytes are not SMTP replies; `reason` says why in a few words.

    `replies`: those the same `ReplyReader.feed()` call completed before the error."""

    def __init__(self, reason: str, replies: tuple[ServerReply, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.replies = replies


@dataclass(frozen=True)
class ServerReply:
    """One reply from the server.  `lines` hold each line's text without the code, the
    separator and (when present) the enhanced status code."""

    code: int
    enhanced: str | None  # RFC 3463 class.subject.detail, e.g. "5.1.1"
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The lines' text joined by spaces (one line for logs and DSN diagnostics)."""
        return " ".join(line for line in self.lines if line)

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600  # RFC 5321 4.2.1: 5yz permanent negative completion

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500  # RFC 5321 4.2.1: 4yz transient negative completion

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    def __str__(self) -> str:
        head = f"{self.code} {self.enhanced}" if self.enhanced else str(self.code)
        text = self.text
        return f"{head} {text}" if text else head


# RFC 5321 4.2: Reply-code = %x32-35 %x30-35 %x30-39, then "-" (more lines follow),
# SP or the end of the line (the last line).
_REPLY_LINE_RE = re.compile(rb"([2-5][0-5][0-9])([ -]|$)")
# RFC 3463 2: class "." subject "." detail; class 2, 4 or 5; subject and detail 1*3digit.
_ENHANCED_RE = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")
_CTRL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ReplyReader:
    """Cut a byte stream into `ServerReply`s (RFC 5321 4.2.1 multiline replies).

    Lines end with CRLF (a bare LF is tolerated).  Out-of-bounds or malformed input raises
    `SMTPProtocolError`, never anything else; after that the reader stays broken.
    """

    def __init__(self, *, max_line: int = 4096, max_lines: int = 200) -> None:
        self.max_line = max_line  # octets per line including CRLF
        self.max_lines = max_lines  # lines in one reply
        self._buf = bytearray()
        self._scan = 0  # bytes of _buf already searched for LF
        self._lines: list[bytes] = []  # lines of the reply being read
        self._code = b""
        self._error: SMTPProtocolError | None = None

    @property
    def partial(self) -> bool:
        """True when part of a reply has arrived (EOF now would cut it)."""
        return bool(self._buf) or bool(self._lines)

    def discard(self) -> None:
        """Drop buffered input (RFC 3207 5: nothing read before the TLS handshake counts)."""
        self._buf = bytearray()
        self._scan = 0
        self._lines = []
        self._code = b""

    def feed(self, data: bytes) -> list[ServerReply]:
        """Add bytes; return every reply they complete, in order.

        Raises SMTPProtocolError (carrying the replies completed before it) at the first
        malformed or out-of-bounds line, and again on every later call."""
        if self._error is not None:
            raise SMTPProtocolError(self._error.reason)
        replies: list[ServerReply] = []
        try:
            self._feed(data, replies)
        except SMTPProtocolError as exc:
            self._error = exc
            self.discard()
            raise SMTPProtocolError(exc.reason, tuple(replies)) from None
        return replies

    def _feed(self, data: bytes, replies: list[ServerReply]) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while True:
            lf = buf.find(b"\n", pos + self._scan)
            if lf < 0:
                self._scan = len(buf) - pos
                if self._scan >= self.max_line:
                    raise SMTPProtocolError(f"reply line longer than {self.max_line} octets")
                break
            self._scan = 0
            if lf + 1 - pos > self.max_line:
                raise SMTPProtocolError(f"reply line longer than {self.max_line} octets")
            end = lf - 1 if lf > pos and buf[lf - 1] == 0x0D else lf
            line = bytes(buf[pos:end])
            pos = lf + 1
            reply = self._line(line)
            if reply is not None:
                replies.append(reply)
        del buf[:pos]

    def _line(self, line: bytes) -> ServerReply | None:
        m = _REPLY_LINE_RE.match(line)
        if m is None:
            shown = line[:20].decode("ascii", "replace")
            raise SMTPProtocolError(f"malformed reply line {shown!r}")
        code = m.group(1)
        if self._lines and code != self._code:
            # RFC 5321 4.2.1: every line of a multiline reply has the same code.
            raise SMTPProtocolError("reply code changed within a multiline reply")
        self._code = code
        self._lines.append(line[4:])
        if len(self._lines) > self.max_lines:
            raise SMTPProtocolError(f"multiline reply longer than {self.max_lines} lines")
        if m.group(2) == b"-":
            return None
        lines = self._lines
        self._lines = []
        self._code = b""
        return _make_reply(int(code), lines)


def _make_reply(code: int, raw_lines: list[bytes]) -> ServerReply:
    # RFC 6531 3.7.4: replies may be UTF-8; anything else shows as U+FFFD.  Control
    # characters become spaces so that reply text cannot forge log or trace lines.
    texts = [_CTRL_RE.sub(" ", raw.decode("utf-8", "replace")) for raw in raw_lines]
    enhanced = None
    # RFC 2034 3 / RFC 3463 2: the enhanced code starts the text; its class is the
    # reply's first digit.  A 3yz reply never has one.
    m = _ENHANCED_RE.match(texts[0])
    if m is not None and int(m.group(1)) == code // 100:
        enhanced = f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}"
        prefix = m.group(0).rstrip(" ")
        texts = [_strip_prefix(t, prefix) for t in texts]
    return ServerReply(code, enhanced, tuple(texts))


def _strip_prefix(text: str, prefix: str) -> str:
    if text == prefix:
        return ""
    if text.startswith(prefix + " "):
        return text[len(prefix) + 1 :]
    return text


# --- encodings --------------------------------------------------------------------------------


def xtext_encode(text: str) -> str:
    """RFC 3461 4: xtext; "+", "=" and octets outside 33-126 become "+HH" (UTF-8 octets)."""
    out = []
    for byte in text.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def utf8_addr_xtext(text: str) -> str:
    """RFC 6533 3 utf-8-addr-xtext: QCHAR or "\\x{HEX}" for everything else."""
    out = []
    for ch in text:
        o = ord(ch)
        # QCHAR = %x21-2a / %x2c-3c / %x3e-5b / %x5d-7e (not "+", "=", "\")
        if 0x21 <= o <= 0x7E and ch not in "+=\\":
            out.append(ch)
        else:
            out.append(f"\\x{{{o:X}}}")
    return "".join(out)


def orcpt_param(address: str) -> str:
    """RFC 3461 4.2 ORCPT value: addr-type ";" xtext (RFC 6533 3 "utf-8" type when needed)."""
    if address.isascii():
        return "rfc822;" + xtext_encode(address)
    return "utf-8;" + utf8_addr_xtext(address)


_BARE_RE = re.compile(rb"\r\n|\r|\n")


def normalize_crlf(content: bytes) -> bytes:
    """Line ends as CRLF and a CRLF at the end (RFC 5321 2.3.8, 4.1.1.4).

    A bare CR or LF is never sent: a receiver that reads LF "." CRLF as the end of data
    would otherwise let the rest of the message smuggle commands.  Checked by counting
    (C speed); rewritten only when needed.
    """
    crlf = content.count(b"\r\n")
    if content.count(b"\n") != crlf or content.count(b"\r") != crlf:
        content = _BARE_RE.sub(b"\r\n", content)
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    return content


def dot_stuff(content: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency: a line starting with "." gets another "." in front.

    `content` has CRLF line ends and ends with CRLF (or is empty); linear time.
    """
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed[:1] == b".":
        stuffed = b"." + stuffed
    return stuffed


# --- capabilities (RFC 5321 4.1.1.1) ----------------------------------------------------------


@dataclass(frozen=True)
class Extensions:
    """What the server's EHLO reply offers; `esmtp` False after a HELO fallback."""

    esmtp: bool = False
    keywords: dict[str, str] = field(default_factory=dict)  # KEYWORD -> its parameters
    greeting_domain: str = ""

    @classmethod
    def from_ehlo(cls, reply: ServerReply) -> Extensions:
        keywords: dict[str, str] = {}
        for line in reply.lines[1:]:
            word, _, params = line.strip().partition(" ")
            if not word:
                continue
            key = word.upper()
            if key.startswith("AUTH="):  # old form "AUTH=LOGIN PLAIN" (pre-RFC 4954)
                params = (key[5:] + " " + params).strip()
                key = "AUTH"
                if key in keywords:
                    params = keywords[key] + " " + params
            keywords[key] = params.strip()
        domain = reply.lines[0].split(" ", 1)[0] if reply.lines else ""
        return cls(True, keywords, domain)

    def has(self, keyword: str) -> bool:
        return keyword in self.keywords

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.keywords  # RFC 2920

    @property
    def size(self) -> int | None:
        """RFC 1870 4: the fixed maximum message size; None when absent or 0 (no limit)."""
        if "SIZE" not in self.keywords:
            return None
        value = self.keywords["SIZE"].split(" ", 1)[0]
        if not value.isdigit() or len(value) > 20:
            return None
        return int(value) or None

    @property
    def eightbitmime(self) -> bool:
        return "8BITMIME" in self.keywords  # RFC 6152

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.keywords  # RFC 6531

    @property
    def starttls(self) -> bool:
        return "STARTTLS" in self.keywords  # RFC 3207

    @property
    def auth(self) -> frozenset[str]:
        return frozenset(self.keywords.get("AUTH", "").upper().split())  # RFC 4954 3

    @property
    def dsn(self) -> bool:
        return "DSN" in self.keywords  # RFC 3461

    @property
    def chunking(self) -> bool:
        return "CHUNKING" in self.keywords  # RFC 3030

    @property
    def enhancedstatuscodes(self) -> bool:
        return "ENHANCEDSTATUSCODES" in self.keywords  # RFC 2034


# --- transactions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OutRecipient:
    """A recipient to send to, with its RFC 3461 DSN parameters."""

    address: str
    notify: tuple[str, ...] | None = None  # ("NEVER",) or some of SUCCESS, FAILURE, DELAY
    orcpt: str | None = None  # the original recipient address (sent as ORCPT=rfc822;...)


Status = Literal["delivered", "temporary", "permanent"]


@dataclass(frozen=True)
class RecipientResult:
    """What became of one recipient.  `reply` is None when the server was never asked
    (a capability check failed); code/enhanced/text then describe our own verdict."""

    address: str
    status: Status
    code: int
    enhanced: str | None
    text: str
    reply: ServerReply | None

    @property
    def delivered(self) -> bool:
        return self.status == "delivered"

    @property
    def temporary(self) -> bool:
        return self.status == "temporary"

    @property
    def permanent(self) -> bool:
        return self.status == "permanent"


@dataclass(frozen=True)
class TransactionResult:
    """The outcome of one mail transaction, one entry per recipient in the order given."""

    recipients: tuple[RecipientResult, ...]
    reply: ServerReply | None  # the reply that decided the message (end of data, or the failure)
    sent: bool  # the content went to the server and it answered 2xx

    @property
    def summary(self) -> str:
        counts = {"delivered": 0, "temporary": 0, "permanent": 0}
        for r in self.recipients:
            counts[r.status] += 1
        text = (f"{counts['delivered']} delivered, {counts['temporary']} deferred, "
                f"{counts['permanent']} failed")
        return f"{text}: {self.reply}" if self.reply is not None else text


def _result(address: str, reply: ServerReply, accepted: bool) -> RecipientResult:
    if accepted:
        status: Status = "delivered"
    elif reply.permanent:
        status = "permanent"
    else:
        status = "temporary"  # 4yz, or a reply code that makes no sense here
    return RecipientResult(address, status, reply.code, reply.enhanced, reply.text, reply)


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NeedTLS:
    """Upgrade the transport to TLS now, then call `tls_started()`."""


@dataclass(frozen=True)
class Ready:
    """The session can carry a mail transaction."""

    extensions: Extensions


@dataclass(frozen=True)
class TransactionDone:
    result: TransactionResult


@dataclass(frozen=True)
class ConnectionFailed:
    """The connection is finished.  `temporary` False only on a 5yz that refused the
    whole session (greeting, HELO, AUTH mechanisms) or our own policy decision."""

    reason: str
    temporary: bool
    reply: ServerReply | None


@dataclass(frozen=True)
class Closed:
    """QUIT was answered (or the connection was already finished)."""


Event = NeedTLS | Ready | TransactionDone | ConnectionFailed | Closed


# --- the engine -------------------------------------------------------------------------------

# States
GREETING = "greeting"
EHLO = "EHLO"
HELO = "HELO"
STARTTLS = "STARTTLS"
TLS_WAIT = "TLS handshake"
AUTH = "AUTH"
READY = "ready"
TRANSACTION = "transaction"
QUIT = "QUIT"
DONE = "done"
END_OF_DATA = "end of data"  # the reply kind after DATA's content

Trace = Callable[[str, str], None]


@dataclass
class _Txn:
    mail_from: str
    recipients: tuple[OutRecipient, ...]
    content: bytes  # CRLF-normalized, not yet stuffed
    use_bdat: bool
    mail_ok: bool = False
    mail_reply: ServerReply | None = None
    rcpt_replies: list[ServerReply] = field(default_factory=list)
    data_reply: ServerReply | None = None
    final_reply: ServerReply | None = None  # to the end of data, or to BDAT LAST
    content_sent: bool = False
    # commands not yet written: (kind, line); without PIPELINING one at a time
    to_send: deque[tuple[str, str]] = field(default_factory=deque)

    @property
    def accepted(self) -> bool:
        """MAIL succeeded and at least one RCPT did."""
        return self.mail_ok and any(200 <= r.code < 300 for r in self.rcpt_replies)


class SMTPClient:
    """One outbound SMTP connection (RFC 5321), sans-I/O.

    `starttls`: send STARTTLS when offered.  `require_tls`: fail when it cannot be used.
    `auth`: (user, password) for a smart host; sent only over TLS unless
    `allow_plaintext_auth`.  `chunking`: use BDAT instead of DATA when offered.
    """

    def __init__(
        self,
        helo: str,
        *,
        starttls: bool = True,
        require_tls: bool = False,
        tls_active: bool = False,
        auth: tuple[str, str] | None = None,
        allow_plaintext_auth: bool = False,
        chunking: bool = False,
        trace: Trace | None = None,
        max_line: int = 4096,
        max_lines: int = 200,
    ) -> None:
        self.helo = helo
        self.starttls = starttls or require_tls
        self.require_tls = require_tls
        self.tls_active = tls_active
        self.auth_credentials = auth
        self.allow_plaintext_auth = allow_plaintext_auth
        self.chunking = chunking
        self.extensions = Extensions()
        self.authenticated = False
        self.state = GREETING
        self.failure: ConnectionFailed | None = None
        self.replies = 0  # complete replies handled so far (the driver times each reply)
        self._trace = trace
        self._reader = ReplyReader(max_line=max_line, max_lines=max_lines)
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._expect: deque[str] = deque()  # kinds of the replies we wait for, in order
        self._txn: _Txn | None = None
        self._need_rset = False  # a MAIL was accepted and its transaction not ended
        self._auth_steps: deque[tuple[str, str]] = deque()  # AUTH LOGIN: (shown, line)
        self._expect.append(GREETING)

    # --- public API ---------------------------------------------------------------------------

    @property
    def phase(self) -> str | None:
        """The command whose reply we wait for ("greeting", "MAIL", "end of data", ...)."""
        return self._expect[0] if self._expect else None

    @property
    def waiting_for(self) -> str:
        phase = self.phase
        if phase is None:
            return "nothing"
        return "greeting" if phase == GREETING else f"reply to {phase}"

    @property
    def usable(self) -> bool:
        return self.failure is None and self.state not in (QUIT, DONE)

    def receive_data(self, data: bytes) -> None:
        """Feed the server's bytes; b"" means the server closed the connection."""
        if self.state == DONE:
            return
        if not data:
            self._lost()
            return
        if self.state == TLS_WAIT:
            return  # RFC 3207 5: plaintext after the 220 to STARTTLS is not trusted
        error: SMTPProtocolError | None = None
        try:
            replies: Sequence[ServerReply] = self._reader.feed(data)
        except SMTPProtocolError as exc:
            error = exc
            replies = exc.replies
        for reply in replies:
            if self.state == DONE:
                break
            self._trace_s(reply)
            self._handle(reply)
            if self.state == TLS_WAIT:
                # RFC 3207 5 (and CVE-2011-0411 in reverse): replies that arrived with
                # the 220 were not protected by TLS; drop them.
                self._reader.discard()
                return
        if error is not None:
            self._fail(f"protocol error: {error.reason}", None)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def tls_started(self) -> None:
        """The transport is TLS now: RFC 3207 4.2, forget what EHLO said and say it again."""
        if self.state != TLS_WAIT:
            raise RuntimeError("tls_started() without NeedTLS")
        self.tls_active = True
        self.extensions = Extensions()
        self._reader.discard()
        self._send_ehlo()

    def start_transaction(
        self,
        mail_from: str,
        recipients: Sequence[OutRecipient],
        content: bytes,
        *,
        ret: str | None = None,
        envid: str | None = None,
        smtputf8: bool = False,
        eightbit: bool = False,
    ) -> None:
        """Send one message.  A `TransactionDone` (or `ConnectionFailed`) follows.

        `smtputf8`: the message needs SMTPUTF8 (UTF-8 header fields); non-ASCII addresses
        imply it.  `eightbit`: 8-bit content; any octet above 127 implies it.  RFC 6531
        3.2 / RFC 6152: without the server's support the message fails permanently (we do
        not downgrade or convert).
        """
        if self.state != READY or self.failure is not None:
            raise RuntimeError(f"start_transaction() in state {self.state}")
        rcpts = tuple(recipients)
        if not rcpts:
            raise ValueError("no recipients")
        for address in [mail_from, *(r.address for r in rcpts)]:
            if _CTRL_RE.search(address) or "\t" in address:
                # Never let an address carry a line break into the command stream.
                raise ValueError(f"control character in address {address!r}")
        if ret is not None and ret.upper() not in ("FULL", "HDRS"):
            raise ValueError(f"RET must be FULL or HDRS, not {ret!r}")  # RFC 3461 4.3
        for r in rcpts:
            if r.notify and not (
                    {n.upper() for n in r.notify} <= {"SUCCESS", "FAILURE", "DELAY"}
                    or [n.upper() for n in r.notify] == ["NEVER"]):
                raise ValueError(f"bad NOTIFY {r.notify!r}")  # RFC 3461 4.1
        ext = self.extensions
        content = normalize_crlf(content)
        eightbit = eightbit or not content.isascii()
        addresses = [mail_from] + [r.address for r in rcpts]
        smtputf8 = smtputf8 or not all(a.isascii() for a in addresses)
        # Capability checks before anything is sent.
        refusal: tuple[int, str, str] | None = None
        if smtputf8 and not ext.smtputf8:
            refusal = (553, "5.6.7", "SMTPUTF8 required but not offered by the server")
        elif eightbit and not ext.eightbitmime:
            # RFC 6152 3: 8-bit data only to a server that offers 8BITMIME.
            refusal = (554, "5.6.3", "8-bit message content but the server does not offer "
                       "8BITMIME (conversion to 7 bit not supported)")
        elif ext.size is not None and len(content) > ext.size:
            refusal = (552, "5.3.4", f"message size {len(content)} exceeds the server's "
                       f"fixed maximum message size {ext.size} (RFC 1870)")
        if refusal is not None:
            code, enhanced, text = refusal
            result = TransactionResult(
                tuple(RecipientResult(r.address, "permanent", code, enhanced, text, None)
                      for r in rcpts),
                None,
                False,
            )
            self._events.append(TransactionDone(result))
            return

        # MAIL FROM (RFC 5321 4.1.1.2) with its parameters.
        mail = f"MAIL FROM:<{mail_from}>"
        if ext.has("SIZE"):
            mail += f" SIZE={len(content)}"  # RFC 1870 6
        if eightbit and ext.eightbitmime:
            mail += " BODY=8BITMIME"  # RFC 6152 2
        if smtputf8:
            mail += " SMTPUTF8"  # RFC 6531 3.4
        if ext.dsn:
            if ret is not None:
                mail += f" RET={ret.upper()}"  # RFC 3461 4.3
            if envid is not None:
                mail += f" ENVID={xtext_encode(envid)}"  # RFC 3461 4.4
        use_bdat = self.chunking and ext.chunking
        txn = _Txn(mail_from, rcpts, content, use_bdat)
        if self._need_rset:
            txn.to_send.append(("RSET", "RSET"))  # RFC 5321 4.1.1.5
        txn.to_send.append(("MAIL", mail))
        for r in rcpts:
            rcpt = f"RCPT TO:<{r.address}>"  # RFC 5321 4.1.1.3
            if ext.dsn:
                if r.notify:
                    rcpt += " NOTIFY=" + ",".join(n.upper() for n in r.notify)  # RFC 3461 4.1
                if r.orcpt:
                    rcpt += " ORCPT=" + orcpt_param(r.orcpt)  # RFC 3461 4.2
            txn.to_send.append(("RCPT", rcpt))
        if not use_bdat:
            txn.to_send.append(("DATA", "DATA"))
        self._txn = txn
        self.state = TRANSACTION
        self._pump()

    def quit(self) -> None:
        """Say QUIT (RFC 5321 4.1.1.10); `Closed` follows the reply."""
        if self.state == DONE:
            self._events.append(Closed())
            return
        if self.state != READY:
            raise RuntimeError(f"quit() in state {self.state}")
        self.state = QUIT
        self._command(QUIT, "QUIT")

    # --- output -------------------------------------------------------------------------------

    def _command(self, kind: str, line: str, *, shown: str | None = None) -> None:
        if self._trace is not None:
            self._trace("C", line if shown is None else shown)
        self._out.append(line.encode("utf-8") + b"\r\n")
        self._expect.append(kind)

    def _trace_s(self, reply: ServerReply) -> None:
        if self._trace is None:
            return
        last = len(reply.lines) - 1
        for i, text in enumerate(reply.lines):
            head = f"{reply.code}{' ' if i == last else '-'}"
            if reply.enhanced:
                head += reply.enhanced + (" " if text else "")
            self._trace("S", head + text)

    def _send_ehlo(self) -> None:
        self.state = EHLO
        self._command(EHLO, f"EHLO {self.helo}")

    # --- failure ------------------------------------------------------------------------------

    def _fail(self, reason: str, reply: ServerReply | None, *, temporary: bool = True,
              quit: bool = False) -> None:
        if self.state == DONE:
            return
        if quit:
            # RFC 5321 3.1 / 4.1.1.10: end a refused session politely; no reply is awaited.
            if self._trace is not None:
                self._trace("C", "QUIT")
            self._out.append(b"QUIT\r\n")
        self._finish_txn_on_failure(reason, reply, temporary)
        self.failure = ConnectionFailed(reason, temporary, reply)
        self.state = DONE
        self._expect.clear()
        self._events.append(self.failure)

    def _finish_txn_on_failure(self, reason: str, reply: ServerReply | None,
                               temporary: bool) -> None:
        """A 421 in a transaction still yields its result (RFC 5321 3.8); other connection
        failures leave the transaction to the driver (it raises for the whole message)."""
        txn = self._txn
        if txn is None or reply is None or reply.code != 421:
            self._txn = None
            return
        self._txn = None
        results = []
        for i, r in enumerate(txn.recipients):
            got = txn.rcpt_replies[i] if i < len(txn.rcpt_replies) else None
            if got is not None and not 200 <= got.code < 300:
                results.append(_result(r.address, got, False))
            else:
                results.append(_result(r.address, reply, False))
        self._events.append(TransactionDone(TransactionResult(tuple(results), reply, False)))

    def _lost(self) -> None:
        if self.state == DONE:
            return
        if self.state == QUIT:
            self.state = DONE
            self._events.append(Closed())  # the server closed instead of answering: fine
            return
        phase = self.phase
        if phase == GREETING:
            reason = "connection closed before the greeting"
        elif phase is None:
            reason = "connection closed by the server"
        elif phase == END_OF_DATA:
            # RFC 5321 6.1 / RFC 1047: the message may or may not have been accepted.
            reason = "connection lost after DATA, before the reply to the end of data"
        else:
            reason = f"connection lost after {phase}"
        self._fail(reason, None)

    # --- replies ------------------------------------------------------------------------------

    def _handle(self, reply: ServerReply) -> None:
        self.replies += 1
        if not self._expect:
            self._fail(f"protocol error: unexpected reply {reply}", reply)
            return
        kind = self._expect.popleft()
        if kind == GREETING:
            self._on_greeting(reply)
        elif kind == EHLO:
            self._on_ehlo(reply)
        elif kind == HELO:
            self._on_helo(reply)
        elif kind == STARTTLS:
            self._on_starttls(reply)
        elif kind == AUTH:
            self._on_auth(reply)
        elif kind == QUIT:
            self.state = DONE
            self._events.append(Closed())
        else:
            self._on_txn_reply(kind, reply)

    def _on_greeting(self, reply: ServerReply) -> None:
        # RFC 5321 3.1 / 4.3.2: 220 service ready, 554 no service, 421 not available.
        if reply.code == 220:
            self._send_ehlo()
            return
        self._fail(f"server refused the session: {reply}", reply,
                   temporary=not reply.permanent, quit=reply.code != 421)

    def _on_ehlo(self, reply: ServerReply) -> None:
        if reply.code == 250:
            self.extensions = Extensions.from_ehlo(reply)
            self._after_hello()
        elif reply.code == 421:
            self._fail(f"EHLO refused: {reply}", reply)
        elif reply.permanent:
            # RFC 5321 3.2 / 4.1.1.1: a server without EHLO answers 5yz; fall back to HELO.
            self.state = HELO
            self._command(HELO, f"HELO {self.helo}")
        else:
            self._fail(f"EHLO refused: {reply}", reply, temporary=True, quit=True)

    def _on_helo(self, reply: ServerReply) -> None:
        if reply.code == 250:
            self.extensions = Extensions(esmtp=False)
            self._after_hello()
        else:
            self._fail(f"HELO refused: {reply}", reply, temporary=not reply.permanent,
                       quit=reply.code != 421)

    def _after_hello(self) -> None:
        ext = self.extensions
        if not self.tls_active and self.starttls:
            if ext.starttls:
                self.state = STARTTLS
                self._command(STARTTLS, "STARTTLS")  # RFC 3207 4
                return
            if self.require_tls:
                self._fail("TLS required but the server does not offer STARTTLS", None,
                           quit=True)
                return
        if self.auth_credentials is not None and not self.authenticated:
            self._start_auth()
            return
        self._ready()

    def _ready(self) -> None:
        self.state = READY
        self._events.append(Ready(self.extensions))

    def _on_starttls(self, reply: ServerReply) -> None:
        if reply.code == 220:
            self.state = TLS_WAIT
            self._events.append(NeedTLS())
            return
        if reply.code == 421:
            self._fail(f"STARTTLS refused: {reply}", reply)
        elif self.require_tls:
            self._fail(f"TLS required but STARTTLS was refused: {reply}", reply, quit=True)
        else:
            # RFC 3207 4: a 454 (TLS not available) lets the client go on without TLS.
            if self.auth_credentials is not None and not self.authenticated:
                self._start_auth()
            else:
                self._ready()

    # --- AUTH (RFC 4954) ----------------------------------------------------------------------

    def _start_auth(self) -> None:
        assert self.auth_credentials is not None
        user, password = self.auth_credentials
        if not self.tls_active and not self.allow_plaintext_auth:
            # Never send a password in the clear unless configured so.
            self._fail("AUTH needs TLS but the connection is not encrypted", None, quit=True)
            return
        mechs = self.extensions.auth
        self.state = AUTH
        if "PLAIN" in mechs:
            # RFC 4616 2 with an initial response (RFC 4954 4).
            token = b64encode(b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8"))
            self._command(AUTH, f"AUTH PLAIN {token}", shown="AUTH PLAIN <redacted>")
        elif "LOGIN" in mechs:
            self._auth_steps.append(("<redacted>", b64encode(user.encode("utf-8"))))
            self._auth_steps.append(("<redacted>", b64encode(password.encode("utf-8"))))
            self._command(AUTH, "AUTH LOGIN")
        else:
            offered = " ".join(sorted(mechs)) or "none"
            self._fail(f"no supported AUTH mechanism offered (offered: {offered})", None,
                       temporary=True, quit=True)

    def _on_auth(self, reply: ServerReply) -> None:
        if reply.code == 334 and self._auth_steps:
            shown, line = self._auth_steps.popleft()
            self._command(AUTH, line, shown=shown)
            return
        self._auth_steps.clear()
        if reply.code == 235:  # RFC 4954 6
            self.authenticated = True
            self._ready()
            return
        if reply.code == 334:
            # More challenges than the mechanism has steps: cancel (RFC 4954 4).
            self._command(AUTH, "*")
            return
        # A wrong password is a configuration problem: defer, never bounce (like Postfix).
        self._fail(f"authentication failed: {reply}", reply, temporary=True,
                   quit=reply.code != 421)

    # --- the mail transaction (RFC 5321 3.3, RFC 2920) ----------------------------------------

    def _pump(self) -> None:
        """Write the transaction's next commands: all at once with PIPELINING (RFC 2920 3.1:
        DATA ends the group), otherwise one when the previous reply is in."""
        txn = self._txn
        assert txn is not None
        if self.extensions.pipelining:
            while txn.to_send:
                kind, line = txn.to_send.popleft()
                self._command(kind, line)
        elif not self._expect and txn.to_send:
            kind, line = txn.to_send.popleft()
            self._command(kind, line)

    def _on_txn_reply(self, kind: str, reply: ServerReply) -> None:
        txn = self._txn
        assert txn is not None
        if reply.code == 421:
            # RFC 5321 3.8: the server is closing the channel.
            self._fail(f"server closing connection after {kind}: {reply}", reply)
            return
        if kind == "RSET":
            if reply.code != 250:
                self._fail(f"RSET refused: {reply}", reply, quit=True)
                return
            self._need_rset = False
        elif kind == "MAIL":
            txn.mail_reply = reply
            if 200 <= reply.code < 300:
                txn.mail_ok = True
                self._need_rset = True  # until the transaction ends on the server
        elif kind == "RCPT":
            txn.rcpt_replies.append(reply)
        elif kind == "DATA":
            txn.data_reply = reply
            if reply.code == 354:
                if txn.accepted:
                    self._trace_c(f"<message: {len(txn.content)} octets>")
                    self._out.append(dot_stuff(txn.content))
                    txn.content_sent = True
                # RFC 5321 4.1.1.4 end of data.  RFC 2920 3.1: a 354 although no
                # recipient was accepted is answered with the end of data at once.
                self._trace_c(".")
                self._out.append(b".\r\n")
                self._expect.append(END_OF_DATA)
        else:  # END_OF_DATA or BDAT
            txn.final_reply = reply
            # RFC 5321 4.1.1.4: the reply to the end of data ends the transaction; a
            # failed BDAT leaves it to be cleared with RSET (RFC 3030 2).
            if kind == END_OF_DATA or 200 <= reply.code < 300:
                self._need_rset = False
        if not self._expect:
            self._advance(txn)

    def _advance(self, txn: _Txn) -> None:
        """Every reply asked for so far is in: send the next command or finish."""
        if txn.to_send:  # only without PIPELINING
            next_kind = txn.to_send[0][0]
            if not txn.mail_ok and next_kind != "MAIL":
                self._end_txn(txn)  # the sender was refused: ask nothing more
            elif next_kind == "DATA" and not txn.accepted:
                self._end_txn(txn)  # RFC 5321 3.3: no DATA when no RCPT succeeded
            else:
                self._pump()
            return
        if (txn.use_bdat and txn.final_reply is None and txn.accepted
                and not txn.content_sent):
            # RFC 3030 2: the whole message as one chunk, no dot-stuffing.
            txn.content_sent = True
            self._command("BDAT", f"BDAT {len(txn.content)} LAST")
            self._trace_c(f"<message: {len(txn.content)} octets>")
            self._out.append(txn.content)
            return
        self._end_txn(txn)

    def _end_txn(self, txn: _Txn) -> None:
        results = []
        decider: ServerReply | None = None
        if not txn.mail_ok:
            decider = txn.mail_reply
        elif txn.accepted:
            # The end-of-data (or BDAT) reply decides; a DATA without 354 fails them all.
            decider = txn.final_reply if txn.content_sent else txn.data_reply
        sent = (txn.content_sent and decider is not None and 200 <= decider.code < 300)
        for i, r in enumerate(txn.recipients):
            got = txn.rcpt_replies[i] if i < len(txn.rcpt_replies) else None
            if not txn.mail_ok:
                assert txn.mail_reply is not None
                results.append(_result(r.address, txn.mail_reply, False))
            elif got is None or not 200 <= got.code < 300:
                assert got is not None  # every RCPT is answered once MAIL succeeded
                results.append(_result(r.address, got, False))
            else:
                assert decider is not None
                results.append(_result(r.address, decider, sent))
        self._txn = None
        self.state = READY
        self._events.append(TransactionDone(TransactionResult(tuple(results), decider, sent)))

    def _trace_c(self, line: str) -> None:
        if self._trace is not None:
            self._trace("C", line)
