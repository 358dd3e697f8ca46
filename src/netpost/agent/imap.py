"""An IMAP session for the agent: the standard library's imaplib with the few things a user
agent needs on top (a page of envelopes, UID sets, MOVE, folder listing).

Why imaplib: the agent runs one command and exits, so a blocking client is the clearest
shape; every command here is one or two round trips, so an own async client would not make
`list` faster (its time is TLS + LOGIN + SELECT + one FETCH). Only the responses are parsed
here, with the small helpers at the bottom; messages themselves go to `email`.
"""

from __future__ import annotations

import imaplib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from netpost.agent import AgentError
from netpost.agent.account import Account, Endpoint

imaplib._MAXLINE = 10_000_000  # type: ignore[attr-defined]  # long FETCH lines


@dataclass
class Selected:
    """What SELECT/EXAMINE told (RFC 9051 6.3.2, RFC 7162 3.1.2.1)."""

    name: str
    exists: int
    uidvalidity: int
    uidnext: int = 0
    highestmodseq: int | None = None


@dataclass
class Fetched:
    """One message of a FETCH answer."""

    seq: int
    uid: int = 0
    flags: tuple[str, ...] = ()
    size: int = 0
    modseq: int | None = None
    internaldate: str = ""
    literal: bytes | None = None  # the one body section asked for, if any


@dataclass
class Folder:
    name: str
    attributes: tuple[str, ...] = field(default_factory=tuple)
    delimiter: str | None = None


class _PinnedIMAP4_SSL(imaplib.IMAP4_SSL):
    account: Account

    def open(self, host: str = "", port: int | None = 993,
             timeout: float | None = None) -> None:
        super().open(host, port, timeout)
        self.account.check_pin(self.sock, f"imap {host}:{port}")  # before the greeting


class _PinnedIMAP4(imaplib.IMAP4):
    account: Account


def _quote(text: str) -> str:
    """An IMAP quoted string (RFC 9051 4.3); callers keep to ASCII."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check(typ: str, data: list[Any], what: str) -> list[Any]:
    if typ != "OK":
        text = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
        raise AgentError(f"the IMAP server refused {what}: {text or typ}")
    return data


class ImapSession:
    """A logged-in IMAP connection; use as a context manager (LOGOUT at the end)."""

    def __init__(self, account: Account, endpoint: Endpoint | None = None,
                 timeout: float = 60.0) -> None:
        ep = endpoint or account.imap
        self.account = account
        where = f"imap {ep.host}:{ep.port}"
        try:
            if ep.tls == "implicit":
                _PinnedIMAP4_SSL.account = account
                self.conn: imaplib.IMAP4 = _PinnedIMAP4_SSL(
                    ep.host, ep.port, ssl_context=account.ssl_context(), timeout=timeout)
            else:
                self.conn = imaplib.IMAP4(ep.host, ep.port, timeout=timeout)
                if ep.tls == "starttls":
                    self.conn.starttls(account.ssl_context())
                    account.check_pin(self.conn.sock, where)
            self.conn.login(account.user, account.password())
        except imaplib.IMAP4.error as exc:
            raise AgentError(f"{where}: {exc}") from None
        except (TimeoutError, OSError) as exc:
            raise AgentError(f"{where}: {exc}") from None
        self.capabilities = {c.upper() for c in self.conn.capabilities}
        self.selected: Selected | None = None
        if "ENABLE" in self.capabilities and "CONDSTORE" in self.capabilities:
            self.conn.enable("CONDSTORE")  # RFC 7162 3.1

    def __enter__(self) -> ImapSession:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass

    # --- folders ---------------------------------------------------------------------------
    def folders(self) -> list[Folder]:
        data = _check(*self.conn.list(), "LIST")
        return [f for f in (parse_list_line(d) for d in data if d) if f is not None]

    def special_use(self, attribute: str, fallback: str) -> str:
        """The folder with SPECIAL-USE `attribute` (RFC 6154), e.g. \\Sent, or `fallback`."""
        for f in self.folders():
            if attribute.lower() in (a.lower() for a in f.attributes):
                return f.name
        return fallback

    def create(self, name: str) -> None:
        _check(*self.conn.create(_mailbox(name)), f"CREATE {name}")

    def rename(self, old: str, new: str) -> None:
        _check(*self.conn.rename(_mailbox(old), _mailbox(new)), f"RENAME {old}")

    def delete_folder(self, name: str) -> None:
        _check(*self.conn.delete(_mailbox(name)), f"DELETE {name}")

    # --- selection -------------------------------------------------------------------------
    def select(self, name: str, readonly: bool = False) -> Selected:
        mailbox = _mailbox(name)
        condstore = "CONDSTORE" in self.capabilities
        cmd = "EXAMINE" if readonly else "SELECT"
        args = (mailbox, "(CONDSTORE)") if condstore else (mailbox,)
        self.conn.state = "AUTH"
        self.conn.untagged_responses = {}  # as imaplib's select() does
        self.conn.is_readonly = readonly
        typ, data = self.conn._simple_command(cmd, *args)
        if typ != "OK":
            self.conn.state = "AUTH"
            raise AgentError(f"no folder {name!r} (the server said: "
                             f"{b' '.join(d for d in data if d).decode('utf-8', 'replace')})")
        self.conn.state = "SELECTED"
        untagged = self.conn.untagged_responses

        def number(key: str, default: int = 0) -> int:
            values = untagged.pop(key, None)
            if not values or not isinstance(values[-1], bytes | str):
                return default
            return int(values[-1])

        exists = number("EXISTS")
        ok_codes = untagged.pop("OK", [])
        uidvalidity = uidnext = 0
        highest: int | None = None
        for code in ok_codes:
            text = code.decode("ascii", "replace") if isinstance(code, bytes) else str(code)
            if m := re.match(r"\[UIDVALIDITY (\d+)\]", text):
                uidvalidity = int(m.group(1))
            elif m := re.match(r"\[UIDNEXT (\d+)\]", text):
                uidnext = int(m.group(1))
            elif m := re.match(r"\[HIGHESTMODSEQ (\d+)\]", text):
                highest = int(m.group(1))
        uidvalidity = uidvalidity or number("UIDVALIDITY")
        uidnext = uidnext or number("UIDNEXT")
        self.selected = Selected(name, exists, uidvalidity, uidnext, highest)
        return self.selected

    # --- messages --------------------------------------------------------------------------
    def fetch(self, message_set: str, items: str, *, by_uid: bool = True) -> list[Fetched]:
        if by_uid:
            typ, data = self.conn.uid("FETCH", message_set, items)
        else:
            typ, data = self.conn.fetch(message_set, items)
        return list(parse_fetch(_check(typ, data, "FETCH")))

    def page(self, number: int, size: int) -> tuple[list[Fetched], int]:
        """Page `number` (1 = newest) of the selected folder, newest first: only that
        page's sequence range is fetched (RFC 9051 6.4.5), never the whole folder."""
        assert self.selected is not None
        exists = self.selected.exists
        last = exists - (number - 1) * size
        if last < 1:
            return [], exists
        first = max(1, last - size + 1)
        items = ("(UID FLAGS RFC822.SIZE INTERNALDATE "
                 "BODY.PEEK[HEADER.FIELDS (DATE FROM TO SUBJECT)])")
        got = self.fetch(f"{first}:{last}", items, by_uid=False)
        got.sort(key=lambda f: f.seq, reverse=True)
        return got, exists

    def message(self, uid: int, *, peek: bool = False) -> bytes:
        section = "BODY.PEEK[]" if peek else "BODY[]"
        for f in self.fetch(str(uid), f"(UID {section})"):
            if f.uid == uid and f.literal is not None:
                return f.literal
        raise AgentError(f"no message with UID {uid} in {self._folder()}")

    def search(self, criteria: list[str]) -> list[int]:
        """UID SEARCH (RFC 9051 6.4.4); `criteria` are already IMAP atoms/quoted strings."""
        typ, data = self.conn.uid("SEARCH", *criteria)
        _check(typ, data, "SEARCH")
        uids: list[int] = []
        for line in data:
            if isinstance(line, bytes):
                uids.extend(int(x) for x in line.split() if x.isdigit())
        return uids

    def store(self, uids: str, change: str, flags: Iterable[str]) -> None:
        """UID STORE uids +FLAGS.SILENT (...) (RFC 9051 6.4.6)."""
        flag_list = "(" + " ".join(flags) + ")"
        _check(*self.conn.uid("STORE", uids, f"{change}FLAGS.SILENT", flag_list), "STORE")

    def move(self, uids: str, target: str) -> None:
        if "MOVE" in self.capabilities:  # RFC 6851
            _check(*self.conn.uid("MOVE", uids, _mailbox(target)), f"MOVE to {target}")
            return
        _check(*self.conn.uid("COPY", uids, _mailbox(target)), f"COPY to {target}")
        self.expunge(uids)

    def expunge(self, uids: str) -> None:
        """Mark `uids` \\Deleted and expunge just them (UID EXPUNGE, RFC 4315 2.1)."""
        self.store(uids, "+", ["\\Deleted"])
        if "UIDPLUS" in self.capabilities or "IMAP4REV2" in self.capabilities:
            _check(*self.conn.uid("EXPUNGE", uids), "UID EXPUNGE")
        else:
            _check(*self.conn.expunge(), "EXPUNGE")

    def append(self, folder: str, message: bytes, flags: str = "(\\Seen)") -> None:
        _check(*self.conn.append(_mailbox(folder), flags, None, message), f"APPEND {folder}")

    def _folder(self) -> str:
        return self.selected.name if self.selected else "the folder"


def _mailbox(name: str) -> str:
    """A mailbox argument: quoted; non-ASCII names in modified UTF-7 (RFC 3501 5.1.3)."""
    if not name.isascii():
        name = encode_utf7(name)
    return _quote(name)


def encode_utf7(name: str) -> str:
    """Modified UTF-7 (RFC 3501 5.1.3): printable ASCII as is, '&' as '&-', the rest as
    '&' + modified base64 of UTF-16BE + '-'."""
    import base64

    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode_utf7(name: str) -> str:
    import base64

    def repl(m: re.Match[str]) -> str:
        body = m.group(1)
        if not body:
            return "&"
        b64 = body.replace(",", "/")
        b64 += "=" * (-len(b64) % 4)
        return base64.b64decode(b64).decode("utf-16-be")

    return re.sub(r"&([^-]*)-", repl, name)


_LIST = re.compile(rb'^\((?P<attrs>[^)]*)\) (?P<delim>"(?:[^"\\]|\\.)*"|NIL) (?P<name>.*)$')


def parse_list_line(line: Any) -> Folder | None:
    """One LIST answer (RFC 9051 7.3.1): `(\\HasNoChildren \\Sent) "/" "Sent"`."""
    if isinstance(line, tuple):  # the name sent as a literal
        head, name_bytes = line
        m = _LIST.match(head.rstrip() + b' ""')
        raw_name = name_bytes
    else:
        m = _LIST.match(line)
        raw_name = None
    if m is None:
        return None
    attrs = tuple(m.group("attrs").decode("ascii", "replace").split())
    delim = m.group("delim")
    delimiter = None if delim == b"NIL" else delim[1:-1].decode()
    if raw_name is None:
        raw = m.group("name")
        if raw.startswith(b'"'):
            raw = re.sub(rb"\\(.)", rb"\1", raw[1:-1])
        raw_name = raw
    text = raw_name.decode("utf-8", "replace")
    return Folder(decode_utf7(text) if "&" in text else text, attrs, delimiter)


_FETCH_HEAD = re.compile(rb"^(\d+) \(")
_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_MODSEQ = re.compile(rb"\bMODSEQ \((\d+)\)")
_INTERNALDATE = re.compile(rb'\bINTERNALDATE "([^"]*)"')


def parse_fetch(data: list[Any]) -> Iterator[Fetched]:
    """FETCH answers as imaplib hands them: a message with a literal is a tuple (text up to
    the literal, the literal) followed by the text after it (b')' or b' FLAGS (...))');
    one without a literal is plain bytes.  Unsolicited FETCHes come through too."""
    current: Fetched | None = None
    text = b""

    def finish() -> Fetched | None:
        if current is None:
            return None
        if m := _UID.search(text):
            current.uid = int(m.group(1))
        if m := _FLAGS.search(text):
            current.flags = tuple(m.group(1).decode("utf-8", "replace").split())
        if m := _SIZE.search(text):
            current.size = int(m.group(1))
        if m := _MODSEQ.search(text):
            current.modseq = int(m.group(1))
        if m := _INTERNALDATE.search(text):
            current.internaldate = m.group(1).decode("ascii", "replace")
        return current

    for item in data:
        if item is None:
            continue
        head = item[0] if isinstance(item, tuple) else item
        m = _FETCH_HEAD.match(head)
        if m is not None:  # a new message starts
            done = finish()
            if done is not None:
                yield done
            current = Fetched(seq=int(m.group(1)))
            text = head
        else:
            text += head
        if isinstance(item, tuple) and current is not None:
            # imaplib gives the literal of the last section; the agent asks for one
            current.literal = item[1]
    done = finish()
    if done is not None:
        yield done


def uid_set(uids: Iterable[int]) -> str:
    """A compact UID set: 1:3,7,9:10 (RFC 9051 9, sequence-set)."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)
