"""IMAP SEARCH: the search keys parsed into a tree, and evaluated over a mailbox's messages.

`parse_search` reads what follows the word SEARCH (RFC 9051 6.4.4, RFC 3501 6.4.4): the
ESEARCH `RETURN (...)` options (RFC 4731, RFC 5182 SAVE, RFC 5267/9394 PARTIAL), `CHARSET`
and the keys.  It raises only `ParseError` (a tagged BAD) and `BadCharset` (NO [BADCHARSET]).
Keys are read without recursion on NOT and OR, so a client's long OR chain is no danger;
OR chains become one n-ary `OrKey` and NOT NOT k becomes k.

`evaluate` filters messages by a key and never raises.  It works on sets of candidates, cheap
keys first: flags, sizes, dates, numbers and MODSEQ in one pass over `MessageInfo`; then the
header fields kept at delivery, asked of `SearchData.header_texts` once per field for the
remaining candidates; last the keys that need the message itself (BODY, TEXT, HEADER on other
fields), reading each remaining candidate once for all of them.

The address helpers (`parse_addresses`) are shared with SORT (netpost.imap.sort).
"""

from __future__ import annotations

import bisect
import calendar
import datetime
import email.header
import email.message
import email.parser
import email.policy
import email.utils
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from netpost.imap.parser import Atom, ParseError, SequenceSet, String, Token, parse_sequence_set
from netpost.mail.message import KEPT_FIELDS, decode_words

log = logging.getLogger("netpost.imap")

__all__ = [
    "Address",
    "AllKey",
    "AndKey",
    "BadCharset",
    "BodyKey",
    "DateKey",
    "FlagKey",
    "Group",
    "HeaderKey",
    "MessageInfo",
    "ModSeqKey",
    "NotKey",
    "OrKey",
    "SearchCommand",
    "SearchData",
    "SearchKey",
    "SetKey",
    "SizeKey",
    "check_charset",
    "evaluate",
    "first_address",
    "header_field_raw",
    "parse_addresses",
    "parse_return_options",
    "parse_search",
    "parse_search_keys",
    "sent_date",
    "uses_modseq",
]


# --- what the session hands over -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message of the selected mailbox as the session sees it."""

    seq: int
    uid: int
    flags: frozenset[str]  # includes "\\Recent" when the session sees the message as recent
    internaldate: float  # POSIX seconds
    size: int
    modseq: int


class SearchData(Protocol):
    """What evaluation asks of the store beyond `MessageInfo`."""

    def header_texts(self, field: str, uids: Sequence[int]) -> dict[int, str]:
        """Decoded text of one kept header field (lower-case name, see
        netpost.mail.message.KEPT_FIELDS) for these UIDs; messages without it are absent."""
        ...

    def raw_message(self, uid: int) -> bytes | None:
        """The whole message (CRLF line ends), or None if it cannot be read."""
        ...


class BadCharset(Exception):
    """A CHARSET other than UTF-8 or US-ASCII: NO [BADCHARSET (UTF-8 US-ASCII)]."""


# --- the key tree ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllKey:
    """ALL."""


@dataclass(frozen=True, slots=True)
class FlagKey:
    """A flag set (`present`) or not: ANSWERED, UNSEEN, KEYWORD k, RECENT, OLD...

    System flags are spelled as IMAP does ("\\Seen"); keywords compare case-insensitively.
    """

    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class SizeKey:
    """LARGER n (`larger`) or SMALLER n: RFC822.SIZE strictly above or below n."""

    larger: bool
    size: int


@dataclass(frozen=True, slots=True)
class DateKey:
    """BEFORE/ON/SINCE (internal date, its day in UTC) or SENTBEFORE/SENTON/SENTSINCE (the
    Date: field's day as written, without time and zone; RFC 9051 6.4.4)."""

    sent: bool
    op: Literal["before", "on", "since"]
    day: datetime.date


@dataclass(frozen=True, slots=True)
class HeaderKey:
    """HEADER field text; FROM, TO, CC, BCC and SUBJECT too.  Empty text: has the field."""

    field: str  # lower case
    text: str


@dataclass(frozen=True, slots=True)
class BodyKey:
    """BODY text (the decoded text after the header) or TEXT (`whole`: header and body)."""

    text: str
    whole: bool = False


@dataclass(frozen=True, slots=True)
class SetKey:
    """A sequence set of message numbers, or of UIDs (`uid`); "$" is the saved result."""

    numbers: SequenceSet
    uid: bool = False


@dataclass(frozen=True, slots=True)
class ModSeqKey:
    """MODSEQ n (RFC 7162 3.1.5): mod-sequence at least n (the entry name is not kept)."""

    modseq: int


@dataclass(frozen=True, slots=True)
class NotKey:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class OrKey:
    """Any of the keys (OR a b, and OR chains flattened)."""

    keys: tuple[SearchKey, ...]


@dataclass(frozen=True, slots=True)
class AndKey:
    """All of the keys (a parenthesized list, or the keys of the command)."""

    keys: tuple[SearchKey, ...]


SearchKey = (
    AllKey | FlagKey | SizeKey | DateKey | HeaderKey | BodyKey | SetKey | ModSeqKey
    | NotKey | OrKey | AndKey
)


@dataclass
class SearchCommand:
    """A parsed SEARCH.  `returns` is None for the plain form (untagged SEARCH reply), else
    the upper-case ESEARCH options in the order given, duplicates dropped (RFC 9051 6.4.4:
    an empty RETURN () means ALL).  `partial` is the PARTIAL range (RFC 5267 4.4, RFC 9394),
    low to high, negative for counting from the end; set when "PARTIAL" is in `returns`."""

    charset: str | None
    returns: tuple[str, ...] | None
    key: SearchKey
    partial: tuple[int, int] | None = None


# --- parsing ---------------------------------------------------------------------------------

CHARSETS = ("UTF-8", "US-ASCII")  # the [BADCHARSET (...)] list
RETURN_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "PARTIAL"})
MAX_DEPTH = 64  # nesting of NOT / OR / lists a search may have (after OR chains are flattened)
_MAX_NUMBER64 = 2**63 - 1  # RFC 9051 9: number64; RFC 7162 mod-sequence-valzer
_MAX_NZ = 0xFFFFFFFF
_DIGITS = re.compile(r"[0-9]{1,19}\Z")
_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})\Z")  # RFC 9051 9: date-text
_MONTHS = {name: i for i, name in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1)}
_PARTIAL = re.compile(r"(-?)([0-9]{1,10}):(-?)([0-9]{1,10})\Z")
_ENTRY_TYPES = frozenset({"PRIV", "SHARED", "ALL"})  # RFC 7162 3.1.5: entry-type-req

# Keys without arguments (RFC 9051 6.4.4; NEW, OLD and RECENT from RFC 3501 6.4.4).
_SIMPLE: dict[str, SearchKey] = {
    "ALL": AllKey(),
    "ANSWERED": FlagKey("\\Answered"),
    "DELETED": FlagKey("\\Deleted"),
    "DRAFT": FlagKey("\\Draft"),
    "FLAGGED": FlagKey("\\Flagged"),
    "SEEN": FlagKey("\\Seen"),
    "RECENT": FlagKey("\\Recent"),
    "NEW": AndKey((FlagKey("\\Recent"), FlagKey("\\Seen", False))),  # RECENT UNSEEN
    "OLD": FlagKey("\\Recent", False),  # NOT RECENT
    "UNANSWERED": FlagKey("\\Answered", False),
    "UNDELETED": FlagKey("\\Deleted", False),
    "UNDRAFT": FlagKey("\\Draft", False),
    "UNFLAGGED": FlagKey("\\Flagged", False),
    "UNSEEN": FlagKey("\\Seen", False),
}
_HEADER_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}
_DATE_KEYS: dict[str, tuple[bool, Literal["before", "on", "since"]]] = {
    "BEFORE": (False, "before"),
    "ON": (False, "on"),
    "SINCE": (False, "since"),
    "SENTBEFORE": (True, "before"),
    "SENTON": (True, "on"),
    "SENTSINCE": (True, "since"),
}


def parse_search(tokens: list[Token]) -> SearchCommand:
    """Everything after the word SEARCH: [RETURN (opts)] [CHARSET name] keys (RFC 9051 6.4.4,
    RFC 4731 3.1)."""
    pos = 0
    returns: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None
    if tokens and _is_word(tokens[0], "RETURN"):
        options = tokens[1] if len(tokens) > 1 else None
        if not isinstance(options, list):
            raise ParseError("RETURN needs a list of options")
        returns, partial = parse_return_options(options)
        pos = 2
    charset: str | None = None
    if pos < len(tokens) and _is_word(tokens[pos], "CHARSET"):
        if pos + 1 >= len(tokens):
            raise ParseError("CHARSET needs a name")
        charset = check_charset(tokens[pos + 1])
        pos += 2
    return SearchCommand(charset, returns, parse_search_keys(tokens[pos:]), partial)


def parse_search_keys(tokens: list[Token]) -> SearchKey:
    """One or more search keys (all must match); also the search part of SORT and THREAD."""
    keys = _parse_keys(tokens, 0)
    if not keys:
        raise ParseError("Missing search key")
    key = _and(keys)
    if _depth(key) > MAX_DEPTH:
        raise ParseError("Search keys nested too deeply")
    return key


def check_charset(token: Token) -> str:
    """The CHARSET argument: "UTF-8" or "US-ASCII" (strings are read as UTF-8 either way);
    BadCharset for any other (RFC 9051 6.4.4)."""
    name = _astring(token, "charset").upper()
    if name not in CHARSETS:
        raise BadCharset(f"Unsupported charset {name[:40]!r}")
    return name


def uses_modseq(key: SearchKey) -> bool:
    """Whether the key has a MODSEQ criterion: the reply then carries the highest MODSEQ of
    the messages found (RFC 7162 3.1.5)."""
    stack: list[SearchKey] = [key]
    while stack:
        k = stack.pop()
        if isinstance(k, ModSeqKey):
            return True
        stack.extend(_children(k))
    return False


def parse_return_options(options: list[Token]) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """The list after RETURN (RFC 4731 3.1; also ESORT's, RFC 5267 3.1): the options and
    the PARTIAL range if one is given.  Unknown options are a BAD."""
    seen: list[str] = []
    partial: tuple[int, int] | None = None
    i = 0
    while i < len(options):
        word = _word(options[i], "RETURN option")
        if word not in RETURN_OPTIONS:
            raise ParseError(f"Unknown RETURN option {word[:40]}")  # RFC 4731 3.1
        if word == "PARTIAL":
            if partial is not None or i + 1 >= len(options):
                raise ParseError("PARTIAL needs one range")
            partial = _parse_partial(options[i + 1])
            i += 1
        if word not in seen:
            seen.append(word)
        i += 1
    if not seen:
        seen.append("ALL")  # RFC 9051 6.4.4: RETURN () is RETURN (ALL)
    return tuple(seen), partial


def _parse_partial(token: Token) -> tuple[int, int]:
    """partial-range: n:m or -n:-m (RFC 9394 3; RFC 5267 4.4 has the positive form)."""
    m = _PARTIAL.match(token.value) if isinstance(token, Atom) else None
    if m is None or m.group(1) != m.group(3):
        raise ParseError("Invalid PARTIAL range")
    low, high = int(m.group(2)), int(m.group(4))
    if not (1 <= low <= _MAX_NZ and 1 <= high <= _MAX_NZ):
        raise ParseError("Invalid PARTIAL range")
    low, high = min(low, high), max(low, high)
    return (-low, -high) if m.group(1) else (low, high)


@dataclass
class _Operator:
    """NOT or OR waiting for its operands while keys are read left to right."""

    name: str
    arity: int
    operands: list[SearchKey] = field(default_factory=list)


def _parse_keys(tokens: list[Token], depth: int) -> list[SearchKey]:
    """Keys in prefix notation, read with a stack of waiting NOT/OR operators instead of
    recursion (an OR chain of any length needs no stack frames)."""
    if depth > MAX_DEPTH:
        raise ParseError("Search keys nested too deeply")
    keys: list[SearchKey] = []
    waiting: list[_Operator] = []
    pos = 0
    while pos < len(tokens):
        token = tokens[pos]
        key: SearchKey
        if isinstance(token, list):
            inner = _parse_keys(token, depth + 1)
            if not inner:
                raise ParseError("Empty parenthesized search key")
            key = _and(inner)
            pos += 1
        elif _is_word(token, "NOT"):
            waiting.append(_Operator("NOT", 1))
            pos += 1
            continue
        elif _is_word(token, "OR"):
            waiting.append(_Operator("OR", 2))
            pos += 1
            continue
        else:
            key, pos = _parse_key(tokens, pos)
        complete = True
        while waiting:
            operator = waiting[-1]
            operator.operands.append(key)
            if len(operator.operands) < operator.arity:
                complete = False
                break
            waiting.pop()
            key = _not(key) if operator.name == "NOT" else _or(operator.operands)
        if complete:
            keys.append(key)
    if waiting:
        raise ParseError(f"Missing search key after {waiting[-1].name}")
    return keys


def _parse_key(tokens: list[Token], pos: int) -> tuple[SearchKey, int]:
    """One key that is not NOT, OR or a list; returns it and the position after it."""
    token = tokens[pos]
    if not isinstance(token, Atom):
        raise ParseError("Search key expected")
    word = token.value.upper()
    simple = _SIMPLE.get(word)
    if simple is not None:
        return simple, pos + 1

    def arg(n: int = 1) -> Token:
        if pos + n >= len(tokens):
            raise ParseError(f"Missing argument to {word[:20]}")
        return tokens[pos + n]

    if word in _HEADER_KEYS:
        return HeaderKey(_HEADER_KEYS[word], _astring(arg(), word)), pos + 2
    if word == "HEADER":
        name = _astring(arg(1), "header field name").strip().lower()
        if not name or any(c <= " " or c == ":" or c == "\x7f" for c in name):
            raise ParseError("Invalid header field name")  # RFC 5322 3.6.8: ftext
        return HeaderKey(name, _astring(arg(2), "HEADER")), pos + 3
    if word in ("BODY", "TEXT"):
        return BodyKey(_astring(arg(), word), whole=word == "TEXT"), pos + 2
    if word in _DATE_KEYS:
        sent, op = _DATE_KEYS[word]
        return DateKey(sent, op, _parse_date(arg())), pos + 2
    if word in ("LARGER", "SMALLER"):
        return SizeKey(word == "LARGER", _number(arg(), _MAX_NUMBER64, word)), pos + 2
    if word in ("KEYWORD", "UNKEYWORD"):
        flag = arg()
        if not isinstance(flag, Atom) or not flag.value:
            raise ParseError(f"{word} needs a flag")
        return FlagKey(_flag_name(flag.value), present=word == "KEYWORD"), pos + 2
    if word == "UID":
        numbers = arg()
        if not isinstance(numbers, Atom):
            raise ParseError("UID needs a sequence set")
        return SetKey(parse_sequence_set(numbers.value), uid=True), pos + 2
    if word == "MODSEQ":
        # RFC 7162 3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer; the entry
        # name is a quoted "/flags/<flag>", the type priv, shared or all.
        entry = arg()
        if isinstance(entry, String):
            if not entry.value.lower().startswith(b"/flags/"):
                raise ParseError("Invalid MODSEQ entry name")
            if _word(arg(2), "MODSEQ entry type") not in _ENTRY_TYPES:
                raise ParseError("Invalid MODSEQ entry type")
            return ModSeqKey(_number(arg(3), _MAX_NUMBER64, word)), pos + 4
        return ModSeqKey(_number(arg(), _MAX_NUMBER64, word)), pos + 2
    try:
        return SetKey(parse_sequence_set(token.value)), pos + 1
    except ParseError:
        raise ParseError(f"Unknown search key {token.value[:40]!r}") from None


_SYSTEM_FLAGS = {"\\" + f.upper(): "\\" + f
                 for f in ("Answered", "Flagged", "Deleted", "Seen", "Draft", "Recent")}


def _flag_name(value: str) -> str:
    """System flags in IMAP's spelling, so \\SEEN finds \\Seen; keywords as given."""
    return _SYSTEM_FLAGS.get(value.upper(), value)


def _parse_date(token: Token) -> datetime.date:
    """date = date-text / DQUOTE date-text DQUOTE, e.g. 1-Feb-2026 (RFC 9051 9)."""
    text = _astring(token, "date")
    m = _DATE.match(text)
    month = _MONTHS.get(m.group(2).upper(), 0) if m else 0
    if m is None or not month:
        raise ParseError(f"Invalid date {text[:40]!r}")
    try:
        return datetime.date(int(m.group(3)), month, int(m.group(1)))
    except ValueError:
        raise ParseError(f"Invalid date {text[:40]!r}") from None


def _number(token: Token, limit: int, what: str) -> int:
    if not isinstance(token, Atom) or not _DIGITS.match(token.value):
        raise ParseError(f"{what} needs a number")
    value = int(token.value)
    if value > limit:
        raise ParseError(f"Number too large for {what}")
    return value


def _astring(token: Token, what: str) -> str:
    """An atom, quoted string or literal as text (UTF-8; RFC 9051 6.4.4 CHARSET)."""
    if isinstance(token, Atom):
        return token.value
    if isinstance(token, String):
        try:
            return token.value.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError(f"Invalid UTF-8 in {what}") from None
    raise ParseError(f"A string is expected for {what}")


def _word(token: Token, what: str) -> str:
    if not isinstance(token, Atom):
        raise ParseError(f"Invalid {what}")
    return token.value.upper()


def _is_word(token: Token, word: str) -> bool:
    return isinstance(token, Atom) and token.value.upper() == word


def _and(keys: list[SearchKey]) -> SearchKey:
    if len(keys) == 1:
        return keys[0]
    flat: list[SearchKey] = []
    for key in keys:
        flat.extend(key.keys if isinstance(key, AndKey) else (key,))
    return AndKey(tuple(flat))


def _or(keys: list[SearchKey]) -> SearchKey:
    flat: list[SearchKey] = []
    for key in keys:
        flat.extend(key.keys if isinstance(key, OrKey) else (key,))
    return OrKey(tuple(flat))


def _not(key: SearchKey) -> SearchKey:
    return key.key if isinstance(key, NotKey) else NotKey(key)


def _children(key: SearchKey) -> tuple[SearchKey, ...]:
    if isinstance(key, NotKey):
        return (key.key,)
    if isinstance(key, (OrKey, AndKey)):
        return key.keys
    return ()


def _depth(key: SearchKey) -> int:
    deepest = 0
    stack: list[tuple[SearchKey, int]] = [(key, 1)]
    while stack:
        k, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in _children(k))
    return deepest


# --- header text helpers ---------------------------------------------------------------------

_FOLD = re.compile(r"\r?\n(?=[ \t])")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """The header section (without the blank line) and the body (RFC 5322 2.1); a message
    without a blank line is all header."""
    if raw.startswith((b"\r\n", b"\n")):
        return b"", raw[2 if raw.startswith(b"\r\n") else 1 :]
    m = _BLANK_LINE.search(raw)
    if m is None:
        return raw, b""
    return raw[: m.start()], raw[m.end() :]


def _header_fields(raw: bytes) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) of each field of the header section, in order."""
    head, _ = split_message(raw)
    text = head.decode("utf-8", "replace")  # RFC 6532: raw UTF-8 in fields
    fields: list[tuple[str, str]] = []
    for line in _FOLD.sub("", text.replace("\r\n", "\n")).split("\n"):
        name, colon, value = line.partition(":")
        if colon and name and not name[0].isspace():
            fields.append((name.strip().lower(), value.strip()))
    return fields


def header_field_raw(raw: bytes, name: str) -> list[str]:
    """Every occurrence of one header field of a message, unfolded and RFC 2047-decoded
    (for HEADER on fields that are not kept at delivery); never raises."""
    try:
        wanted = name.strip().lower()
        return [decode_words(value) for key, value in _header_fields(raw) if key == wanted]
    except Exception:
        return []


def _body_text(raw: bytes) -> str:
    """The text of the body: each text part decoded from base64 or quoted-printable and its
    charset (what Dovecot searches for BODY); other parts are left out."""
    head, body = split_message(raw)
    try:
        header = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
            head + b"\r\n\r\n")
        maintype = header.get_content_maintype()  # text/plain without Content-Type
        if maintype == "text" and header.get("content-transfer-encoding") is None:
            return _decode_text(body, header.get_content_charset())  # no MIME to undo
        if maintype not in ("multipart", "message", "text"):
            return ""  # one part that is not text: an image, a PDF...
        msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    except Exception:
        return body.decode("utf-8", "replace")
    parts: list[str] = []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        try:
            payload = part.get_payload(decode=True)
        except Exception:
            continue
        if isinstance(payload, bytes):
            parts.append(_decode_text(payload, part.get_content_charset()))
    return "\n".join(parts)


def _decode_text(data: bytes, charset: str | None) -> str:
    if charset and charset not in ("us-ascii", "utf-8"):
        try:
            return data.decode(charset, "replace")
        except (LookupError, ValueError):
            pass
    return data.decode("utf-8", "replace")


# --- addresses -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox of an address field: display name, local part, domain ("" if absent)."""

    name: str
    mailbox: str
    host: str

    def spec(self) -> str:
        return f"{self.mailbox}@{self.host}" if self.host else self.mailbox


@dataclass(frozen=True, slots=True)
class Group:
    """A group (RFC 5322 3.4: `name: a, b;`).  ENVELOPE shows its start as an address whose
    mailbox is the group name (RFC 9051 7.5.2), which is what SORT compares."""

    name: str
    members: tuple[Address, ...]


_ADDRESS_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[,:;<>@]|[^\s,:;<>@"()]+')


def _address_tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) tokens of an address list: "word" (atoms and quoted strings), "comment",
    or a special character as its own kind."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    n = len(text)
    while pos < n:
        c = text[pos]
        if c.isspace():
            pos += 1
            continue
        if c == "(":  # RFC 5322 3.2.2: comments nest and may quote with backslash
            depth, start = 0, pos
            while pos < n:
                ch = text[pos]
                if ch == "\\":
                    pos += 1
                elif ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        break
                pos += 1
            tokens.append(("comment", text[start + 1 : pos].strip()))
            pos += 1
            continue
        if c == ")":
            pos += 1
            continue
        m = _ADDRESS_TOKEN.match(text, pos)
        assert m is not None  # every other character starts one of the alternatives
        word = m.group()
        pos = m.end()
        if word in (",", ":", ";", "<", ">", "@"):
            tokens.append((word, word))
        elif word.startswith('"'):
            inner = word[1:-1] if len(word) > 1 and word.endswith('"') else word[1:]
            tokens.append(("word", re.sub(r"\\(.)", r"\1", inner)))
        else:
            tokens.append(("word", word))
    return tokens


def parse_addresses(text: str) -> list[Address | Group]:
    """The addresses of a decoded address field, tolerant of what mail really has: comments,
    `addr (Name)`, groups, missing domains.  Never raises."""
    try:
        return _parse_addresses(_address_tokens(text))
    except Exception:
        return []


def _parse_addresses(tokens: list[tuple[str, str]]) -> list[Address | Group]:
    items: list[Address | Group] = []
    group_name: str | None = None
    members: list[Address] = []
    outer: list[tuple[str, str]] = []  # tokens outside <...> of the current address
    angle: list[tuple[str, str]] | None = None  # tokens inside <...>, once seen

    def finish() -> None:
        nonlocal outer, angle
        address = _make_address(outer, angle)
        if address is not None and group_name is not None:
            members.append(address)
        elif address is not None:
            items.append(address)
        outer, angle = [], None

    inside = False
    for kind, value in tokens:
        if inside:
            if kind == ">":
                inside = False
            elif kind == ":":  # obsolete route (@a,@b:user@host): drop it
                assert angle is not None
                angle.clear()
            elif angle is not None:
                angle.append((kind, value))
            continue
        if kind == "<":
            inside, angle = True, []
        elif kind == ",":
            finish()
        elif kind == ":" and group_name is None:
            group_name = " ".join(v for k, v in outer if k == "word")
            outer, angle = [], None
        elif kind == ";" and group_name is not None:
            finish()
            items.append(Group(group_name, tuple(members)))
            group_name, members = None, []
        else:
            outer.append((kind, value))
    finish()
    if group_name is not None:
        items.append(Group(group_name, tuple(members)))
    return items


def _make_address(outer: list[tuple[str, str]],
                  angle: list[tuple[str, str]] | None) -> Address | None:
    if angle is not None:  # name <addr-spec>
        name = " ".join(v for k, v in outer if k == "word")
        spec = "".join(v for k, v in angle if k in ("word", "@"))
    else:  # addr-spec, maybe with an RFC 822 style (Real Name) comment
        spec = "".join(v for k, v in outer if k in ("word", "@"))
        name = next((v for k, v in outer if k == "comment" and v), "")
        if not spec:
            return None
    mailbox, at, host = spec.rpartition("@")
    if not at:
        mailbox, host = spec, ""
    return Address(name, mailbox, host)


# Fast paths for the common forms of a first address (an atom here may have dots).
_WORD = r'[^\s,"()<>@:;\\\[\]]+'
_END = r"\s*(?:,|\Z)"
_BARE = re.compile(rf"\s*({_WORD})@({_WORD}){_END}")  # user@host
_NAMED = re.compile(rf"\s*((?:{_WORD}\s+)*?)<({_WORD})@({_WORD})>{_END}")  # Name <user@host>
_QUOTED = re.compile(rf'\s*"([^"\\]*)"\s*<({_WORD})@({_WORD})>{_END}')  # "A, B" <user@host>


def first_address(text: str) -> Address | Group | None:
    """`parse_addresses(text)[0]`, quicker for the common forms (SORT reads one per message)."""
    m = _BARE.match(text)
    if m:
        return Address("", m.group(1), m.group(2))
    m = _NAMED.match(text)
    if m:
        return Address(" ".join(m.group(1).split()), m.group(2), m.group(3))
    m = _QUOTED.match(text)
    if m:
        return Address(m.group(1), m.group(2), m.group(3))
    items = parse_addresses(text)
    return items[0] if items else None


_ADDRESS_FIELDS = frozenset({"from", "sender", "reply-to", "to", "cc", "bcc"})
_INNER_COMMENT = re.compile(r"\([^()]*\)")
_AT_SPACE = re.compile(r"\s*@\s*")
_OPEN_SPACE = re.compile(r"<\s+")
_CLOSE_SPACE = re.compile(r"\s+>")
_NEEDS_PLAIN = re.compile(r'[("]|\s[@>]|[@<]\s')


def _plain_addresses(text: str) -> str:
    """An address field without comments and quotes, and without the white space they leave
    around "@", "<" and ">": `<a (x)@ (y) b>` is `<a@b>`.  Searches match this too, as
    Dovecot matches addresses rather than the field's text."""
    previous = None
    while previous != text:  # comments nest: take the innermost ones until none is left
        previous, text = text, _INNER_COMMENT.sub(" ", text)
    text = text.replace('"', "")
    text = _AT_SPACE.sub("@", text)
    text = _OPEN_SPACE.sub("<", text)
    text = _CLOSE_SPACE.sub(">", text)
    return " ".join(text.split())


# --- dates -----------------------------------------------------------------------------------


def sent_date(text: str | None) -> tuple[datetime.date, float] | None:
    """The day as written and the UTC POSIX time of a Date: field, or None if it cannot be
    read (RFC 5256 2.2 and RFC 9051 6.4.4 then use the internal date)."""
    if not text:
        return None
    try:
        parts = email.utils.parsedate_tz(text)
        if parts is None:
            return None
        year, month, day, hour, minute, second = parts[:6]
        written = datetime.date(year, month, day)
        stamp = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        return written, float(stamp - (parts[9] or 0))
    except Exception:
        return None


def _utc_day_start(day: datetime.date) -> float:
    return float(calendar.timegm(day.timetuple()))


def _utc_day(stamp: float) -> datetime.date:
    try:
        return datetime.datetime.fromtimestamp(stamp, datetime.UTC).date()
    except (OverflowError, OSError, ValueError):
        return datetime.date(1970, 1, 1)


def _compare_day(op: str, day: datetime.date, wanted: datetime.date) -> bool:
    if op == "before":
        return day < wanted
    if op == "on":
        return day == wanted
    return day >= wanted


# --- evaluation ------------------------------------------------------------------------------

_CHEAP, _HEADER, _RAW = 0, 1, 2  # what a key needs: MessageInfo, kept fields, the message


def evaluate(key: SearchKey, messages: Sequence[MessageInfo], data: SearchData, *,
             saved: Sequence[int] = ()) -> list[MessageInfo]:
    """The messages that match, in the order given.  `messages` is the mailbox as the
    session sees it ("*" is its largest sequence number or UID); `saved` holds the UIDs of
    the saved result that "$" stands for (RFC 5182 2.1).  Never raises: a message whose
    data cannot be read matches as if its fields were empty."""
    try:
        return _Evaluation(messages, data, saved).matching(key, list(messages))
    except Exception:  # a bug or a broken store must not end the session
        log.exception("SEARCH evaluation failed")
        return []


class _Evaluation:
    def __init__(self, messages: Sequence[MessageInfo], data: SearchData,
                 saved: Sequence[int]) -> None:
        self.data = data
        self.largest_seq = max((m.seq for m in messages), default=0)
        self.largest_uid = max((m.uid for m in messages), default=0)
        self.saved = frozenset(saved)
        self.texts: dict[str, dict[int, str]] = {}  # kept field -> uid -> text
        self.asked: dict[str, set[int]] = {}  # kept field -> uids already asked for
        self.read_failed = False  # a raw_message failure was logged

    # -- the set algebra --------------------------------------------------------------------
    def matching(self, key: SearchKey, candidates: list[MessageInfo]) -> list[MessageInfo]:
        if not candidates:
            return []
        cost = _cost(key)
        if cost == _CHEAP:
            test = self.predicate(key)
            return [m for m in candidates if test(m)]
        if isinstance(key, AndKey):
            return self._all_of(key.keys, candidates)
        if isinstance(key, OrKey):
            found: set[int] = set()
            rest = candidates
            for alternative in sorted(key.keys, key=_cost):  # cheap alternatives first
                hits = self.matching(alternative, rest)
                found.update(m.seq for m in hits)
                rest = [m for m in rest if m.seq not in found]
            return [m for m in candidates if m.seq in found]
        if isinstance(key, NotKey):
            excluded = {m.seq for m in self.matching(key.key, candidates)}
            return [m for m in candidates if m.seq not in excluded]
        if isinstance(key, (HeaderKey, DateKey)) and cost == _HEADER:
            return self._header_matching(key, candidates)
        return self._raw_matching([key], candidates)

    def _all_of(self, keys: tuple[SearchKey, ...],
                candidates: list[MessageInfo]) -> list[MessageInfo]:
        """AND: one pass for the cheap keys, then kept fields, then one read of each
        remaining message for all keys that need it, then what mixes them."""
        cheap = [k for k in keys if _cost(k) == _CHEAP]
        if cheap:
            tests = [self.predicate(k) for k in cheap]
            candidates = [m for m in candidates if all(t(m) for t in tests)]
        for k in keys:
            if _cost(k) == _HEADER:
                candidates = self.matching(k, candidates)
        raw_leaves = [k for k in keys if isinstance(k, (HeaderKey, BodyKey)) and _cost(k) == _RAW]
        if raw_leaves:
            candidates = self._raw_matching(raw_leaves, candidates)
        for k in keys:
            if _cost(k) == _RAW and not isinstance(k, (HeaderKey, BodyKey)):
                candidates = self.matching(k, candidates)
        return candidates

    # -- keys over MessageInfo alone ----------------------------------------------------------
    def predicate(self, key: SearchKey) -> Callable[[MessageInfo], bool]:
        if isinstance(key, AllKey):
            return lambda m: True
        if isinstance(key, FlagKey):
            return _flag_test(key)
        if isinstance(key, SizeKey):
            size = key.size
            if key.larger:
                return lambda m: m.size > size
            return lambda m: m.size < size
        if isinstance(key, DateKey):  # internal date: its day in UTC
            start = _utc_day_start(key.day)
            end = start + 86400.0
            if key.op == "before":
                return lambda m: m.internaldate < start
            if key.op == "on":
                return lambda m: start <= m.internaldate < end
            return lambda m: m.internaldate >= start
        if isinstance(key, SetKey):
            if key.numbers.saved:  # "$" (RFC 5182 2.1), for numbers and UIDs alike
                saved = self.saved
                return lambda m: m.uid in saved
            if key.uid:
                uid_in = _range_test(key.numbers.resolve(self.largest_uid))
                return lambda m: uid_in(m.uid)
            seq_in = _range_test(key.numbers.resolve(self.largest_seq))
            return lambda m: seq_in(m.seq)
        if isinstance(key, ModSeqKey):
            modseq = key.modseq
            return lambda m: m.modseq >= modseq  # RFC 7162 3.1.5
        if isinstance(key, NotKey):
            inner = self.predicate(key.key)
            return lambda m: not inner(m)
        if isinstance(key, OrKey):
            alternatives = [self.predicate(k) for k in key.keys]
            return lambda m: any(t(m) for t in alternatives)
        if isinstance(key, AndKey):
            parts = [self.predicate(k) for k in key.keys]
            return lambda m: all(t(m) for t in parts)
        raise AssertionError(f"not a cheap key: {key!r}")

    # -- kept header fields -------------------------------------------------------------------
    def _kept(self, name: str, candidates: list[MessageInfo]) -> dict[int, str]:
        """The field's texts for the candidates, asking the store only for UIDs not asked
        for before in this evaluation."""
        asked = self.asked.setdefault(name, set())
        texts = self.texts.setdefault(name, {})
        missing = [m.uid for m in candidates if m.uid not in asked]
        if missing:
            try:
                texts.update(self.data.header_texts(name, missing))
            except Exception:
                log.exception("reading %s for SEARCH failed", name)
            asked.update(missing)
        return texts

    def _header_matching(self, key: HeaderKey | DateKey,
                         candidates: list[MessageInfo]) -> list[MessageInfo]:
        if isinstance(key, DateKey):  # SENT*: the Date: field's day, else the internal date
            dates = self._kept("date", candidates)
            out = []
            for m in candidates:
                parsed = sent_date(dates.get(m.uid))
                day = parsed[0] if parsed else _utc_day(m.internaldate)
                if _compare_day(key.op, day, key.day):
                    out.append(m)
            return out
        needle = key.text.casefold()
        address = key.field in _ADDRESS_FIELDS
        narrow = getattr(self.data, "header_candidates", None)
        if needle and needle.isascii() and narrow is not None and len(candidates) > 1000:
            # A large mailbox: let the store narrow it first (an index-free scan in SQL is
            # several times faster than reading every text into Python).
            try:
                texts = narrow(key.field, needle, address=address)
            except Exception:
                log.exception("narrowing %s for SEARCH failed", key.field)
            else:
                return [m for m in candidates if (t := texts.get(m.uid)) is not None
                        and _field_matches(needle, t, address)]
        texts = self._kept(key.field, candidates)
        if not key.text:  # HEADER f "": every message that has the field
            return [m for m in candidates if m.uid in texts]
        out = []
        for m in candidates:
            text = texts.get(m.uid)
            if text is not None and _field_matches(needle, text, address):
                out.append(m)
        return out

    # -- keys that read the message -----------------------------------------------------------
    def _raw_matching(self, keys: Sequence[SearchKey],
                      candidates: list[MessageInfo]) -> list[MessageInfo]:
        out = []
        for m in candidates:
            try:
                raw = self.data.raw_message(m.uid)
            except Exception:
                if not self.read_failed:
                    log.exception("reading message UID %d for SEARCH failed", m.uid)
                    self.read_failed = True
                raw = None
            view = _MessageView(raw or b"")
            if all(view.matches(k) for k in keys):
                out.append(m)
        return out


def _cost(key: SearchKey) -> int:
    if isinstance(key, HeaderKey):
        return _HEADER if key.field in KEPT_FIELDS else _RAW
    if isinstance(key, BodyKey):
        return _RAW
    if isinstance(key, DateKey):
        return _HEADER if key.sent else _CHEAP
    children = _children(key)
    return max(map(_cost, children)) if children else _CHEAP


def _flag_test(key: FlagKey) -> Callable[[MessageInfo], bool]:
    flag, present = key.flag, key.present
    if flag.startswith("\\"):
        return lambda m: (flag in m.flags) == present
    folded = flag.casefold()  # keywords are case-insensitive (RFC 9051 2.3.2)

    def has_keyword(m: MessageInfo) -> bool:
        found = flag in m.flags or any(f.casefold() == folded for f in m.flags)
        return found == present

    return has_keyword


def _range_test(ranges: list[tuple[int, int]]) -> Callable[[int], bool]:
    """Membership in sorted, merged ranges: a comparison for one, bisection for many."""
    merged: list[list[int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    if len(merged) == 1:
        low, high = merged[0]
        return lambda n: low <= n <= high
    lows = [r[0] for r in merged]
    highs = [r[1] for r in merged]

    def within(n: int) -> bool:
        i = bisect.bisect_right(lows, n) - 1
        return i >= 0 and n <= highs[i]

    return within


def _field_matches(needle: str, text: str, address: bool) -> bool:
    """Substring match, case-insensitive (RFC 9051 6.4.4); address fields also match their
    text without comments and quotes (`<a (x)@ b>` has a@b)."""
    if needle in text.casefold():
        return True
    if not address or not _NEEDS_PLAIN.search(text):
        return False
    return needle in _plain_addresses(text).casefold()


class _MessageView:
    """One message read for the keys that need it; each part is worked out once."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._fields: list[tuple[str, str]] | None = None
        self._header: str | None = None
        self._body: str | None = None

    def fields(self) -> list[tuple[str, str]]:
        if self._fields is None:
            try:
                self._fields = [(k, decode_words(v)) for k, v in _header_fields(self.raw)]
            except Exception:
                self._fields = []
        return self._fields

    def header_text(self) -> str:
        if self._header is None:
            self._header = "\n".join(f"{k}: {v}" for k, v in self.fields()).casefold()
        return self._header

    def body_text(self) -> str:
        if self._body is None:
            try:
                self._body = _body_text(self.raw).casefold()
            except Exception:
                self._body = ""
        return self._body

    def matches(self, key: SearchKey) -> bool:
        if isinstance(key, BodyKey):
            needle = key.text.casefold()
            if key.whole and needle in self.header_text():
                return True
            return needle in self.body_text()
        assert isinstance(key, HeaderKey)
        values = [v for k, v in self.fields() if k == key.field]
        if not key.text:
            return bool(values)
        needle = key.text.casefold()
        address = key.field in _ADDRESS_FIELDS
        return any(_field_matches(needle, v, address) for v in values)
