"""A stored message's MIME structure for IMAP FETCH: ENVELOPE, BODY[STRUCTURE], BODY[section],
BINARY[section] (RFC 9051 6.4.5, 7.5.2; RFC 3501 7.4.2; RFC 3516).

`parse` walks the raw octets once and keeps a `Part` tree of offsets: where each header and
body starts and ends, its header fields, its media type.  Boundaries are found by hand (RFC
2046 5.1.1) so that sizes and line counts are the octets as stored; nothing is copied until a
section is asked for.  Every function takes the raw message or the `Part` from `parse`, so a
FETCH of several items parses once.

Nothing here raises on any input: malformed MIME gets a best-effort answer in the manner of
Dovecot (a missing end boundary ends the part where the data or an outer boundary ends, a
multipart without a boundary is text/plain, a part without Content-Type is text/plain or, in
a multipart/digest, message/rfc822).  The one deliberate exception is `UnknownCTE`, which
BINARY must turn into NO [UNKNOWN-CTE] (RFC 3516 4.3).

Values come back as the response tree of `netpost.imap.wire`: None is NIL, int a number,
bytes a string, a list a parenthesized list.  Header values are the raw octets, unfolded:
encoded words are not decoded and 8-bit stays 8-bit.  Lists the grammar writes without SP
between their elements (`1*body`, `1*address`) are `Packed`.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple, TypeAlias

__all__ = [
    "Kind",
    "Packed",
    "Part",
    "Section",
    "UnknownCTE",
    "Value",
    "binary",
    "binary_size",
    "bodystructure",
    "envelope",
    "locate",
    "parse",
    "section",
]

Value: TypeAlias = None | int | bytes | list["Value"]


class Packed(list[Value]):
    """A list whose leading run of list elements is written with no SP between them: RFC
    9051 9 `body-type-mpart = 1*body SP media-subtype ...` and `env-from = "(" 1*address ")"`.
    `netpost.imap.wire.encode_value` writes it so (it looks for `packed`)."""

    packed = True


class UnknownCTE(Exception):
    """BINARY of a part whose Content-Transfer-Encoding is not known (RFC 3516 4.3)."""


@dataclass(frozen=True)
class Section:
    """A FETCH section (RFC 9051 6.4.5): part numbers, then "", "HEADER", "HEADER.FIELDS",
    "HEADER.FIELDS.NOT", "TEXT" or "MIME", and the field names of HEADER.FIELDS[.NOT]."""

    parts: tuple[int, ...]
    text: str
    fields: tuple[str, ...] = ()


class Kind(Enum):
    LEAF = "leaf"
    MULTIPART = "multipart"
    MESSAGE = "message"  # message/rfc822 or message/global: children[0] is the message


# (lower-case name, first octet of the field, first octet after the colon, end of the field
# with its line end)
Field: TypeAlias = tuple[bytes, int, int, int]


@dataclass(slots=True, eq=False)
class Part:
    """One entity: a header (the message header, or a body part's MIME header) and a body,
    as offsets into `raw`.  `media_type`/`media_subtype`/`params` are what BODYSTRUCTURE
    reports (the defaults filled in), `children` the body parts of a multipart or the one
    encapsulated message of a message/rfc822 part."""

    raw: bytes
    start: int
    body_start: int
    end: int
    fields: list[Field]
    kind: Kind
    media_type: bytes
    media_subtype: bytes
    params: list[tuple[bytes, bytes]]
    children: list[Part] = field(default_factory=list)

    @property
    def header(self) -> bytes:
        """The header, with the blank line that ends it."""
        return self.raw[self.start:self.body_start]

    @property
    def body(self) -> bytes:
        return self.raw[self.body_start:self.end]

    def value(self, name: bytes) -> bytes | None:
        """The unfolded value of the first field called `name` (lower case), or None."""
        for fname, _, vstart, fend in self.fields:
            if fname == name:
                return _unfold(self.raw[vstart:fend])
        return None


# Limits on hostile nesting and part counts (Dovecot's defaults): deeper parts and the parts
# after the last one allowed are left unparsed, inside the body of the last part.
_MAX_DEPTH = 100
_MAX_PARTS = 10_000

# Tests set this so that the never-raise guards re-raise instead of hiding a bug.
_STRICT = False


# --- parsing the tree -----------------------------------------------------------------------

class _Stop(NamedTuple):
    """A boundary delimiter line (RFC 2046 5.1.1)."""

    delim: int  # where the delimiter starts: the CRLF before "--boundary" belongs to it
    which: int  # which of the enclosing boundaries (0 = outermost)
    closing: bool  # "--boundary--": the multipart's last part ended
    after: int  # the first octet after the delimiter line


class _Parser:
    __slots__ = ("count", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.count = 0

    def entity(self, start: int, stack: tuple[bytes, ...], depth: int, digest: bool,
               flat: bool = False) -> tuple[Part, _Stop | None]:
        """The entity at `start` and the boundary line that ended it (None: end of data)."""
        raw = self.raw
        self.count += 1
        fields, body_start, cut = self.header(start, stack)
        mtype, msub, params, kind, boundary = _media(raw, fields, digest)
        if kind is not Kind.LEAF and (flat or depth >= _MAX_DEPTH or self.count >= _MAX_PARTS):
            mtype, msub, params, kind = b"text", b"plain", [], Kind.LEAF
        part = Part(raw, start, body_start, body_start, fields, kind, mtype, msub, params)
        if kind is Kind.MULTIPART:
            return part, self.multipart(part, stack, depth, cut, boundary, msub)
        if kind is Kind.MESSAGE:
            if cut is not None:
                inner = _empty_part(raw, body_start)
                stop: _Stop | None = cut
            else:
                inner, stop = self.entity(body_start, stack, depth + 1, False)
            part.children.append(inner)
            part.end = inner.end
            return part, stop
        stop = cut if cut is not None else self.next_boundary(body_start, stack)
        part.end = stop.delim if stop is not None else len(raw)
        return part, stop

    def multipart(self, part: Part, stack: tuple[bytes, ...], depth: int, cut: _Stop | None,
                  boundary: bytes, subtype: bytes) -> _Stop | None:
        # RFC 2046 5.1.1: preamble, then a body part after each delimiter, the close
        # delimiter, then the epilogue; an outer boundary or the end of data ends it early.
        inner = (*stack, boundary)
        own = len(stack)
        digest = subtype.lower() == b"digest"  # RFC 2046 5.1.5: parts default to rfc822
        stop = cut if cut is not None else self.next_boundary(part.body_start, inner)
        while stop is not None and stop.which == own and not stop.closing:
            if self.count >= _MAX_PARTS:  # the rest stays in this last part's body
                child, stop = self.entity(stop.after, stack, depth + 1, digest, flat=True)
            else:
                child, stop = self.entity(stop.after, inner, depth + 1, digest)
            part.children.append(child)
        if stop is not None and stop.which == own:  # the close delimiter: epilogue follows
            stop = self.next_boundary(stop.after, stack)
        part.end = stop.delim if stop is not None else len(self.raw)
        if not part.children:
            # RFC 9051 9 wants 1*body: an empty text/plain stands in (as Dovecot does).
            part.children.append(_empty_part(self.raw, part.end))
        return stop

    def header(self, start: int, stack: tuple[bytes, ...]
               ) -> tuple[list[Field], int, _Stop | None]:
        """The header fields from `start` up to the blank line (RFC 5322 2.1), the body's
        first octet, and the boundary line that cut the header short, if one did."""
        raw = self.raw
        n = len(raw)
        fields: list[Field] = []
        pos = start
        fstart = -1
        fname = b""
        fvalue = 0
        while pos < n:
            c = raw[pos]
            if c == 0x2D and stack and raw.startswith(b"--", pos):
                hit = self.match(pos, stack)
                if hit is not None:
                    delim = _line_break_before(raw, pos, start)
                    if fstart >= 0:
                        fields.append((fname, fstart, fvalue, delim))
                    return fields, delim, _Stop(delim, hit[0], hit[1], hit[2])
            nl = raw.find(b"\n", pos)
            line_end = n if nl < 0 else nl + 1
            if c == 0x0A or (c == 0x0D and pos + 1 < n and raw[pos + 1] == 0x0A):
                if fstart >= 0:
                    fields.append((fname, fstart, fvalue, pos))
                return fields, line_end, None
            if fstart < 0 or (c != 0x20 and c != 0x09):  # not a continuation line
                if fstart >= 0:
                    fields.append((fname, fstart, fvalue, pos))
                colon = raw.find(b":", pos, line_end)
                if colon < 0:
                    fname, fvalue = raw[pos:line_end].strip().lower(), line_end
                else:
                    # RFC 5322 4.5.5: obs-optional allows white space before the colon
                    fname, fvalue = raw[pos:colon].rstrip(b" \t").lower(), colon + 1
                fstart = pos
            pos = line_end
        if fstart >= 0:
            fields.append((fname, fstart, fvalue, n))
        return fields, n, None

    def match(self, pos: int, stack: tuple[bytes, ...]) -> tuple[int, bool, int] | None:
        """The enclosing boundary whose delimiter line starts at `pos`, if any.  RFC 2046
        5.1.1: the boundary need only be a prefix of the line; of several, the longest
        wins, and of equal ones the innermost."""
        raw = self.raw
        best = -1
        best_len = -1
        for index in range(len(stack) - 1, -1, -1):
            b = stack[index]
            if len(b) > best_len and raw.startswith(b, pos + 2):
                best, best_len = index, len(b)
        if best < 0:
            return None
        closing = raw.startswith(b"--", pos + 2 + best_len)
        nl = raw.find(b"\n", pos + 2 + best_len)
        return best, closing, (len(raw) if nl < 0 else nl + 1)

    def next_boundary(self, pos: int, stack: tuple[bytes, ...]) -> _Stop | None:
        """The first delimiter line of an enclosing boundary at or after `pos` (a line
        start)."""
        if not stack:
            return None
        raw = self.raw
        if raw.startswith(b"--", pos):
            hit = self.match(pos, stack)
            if hit is not None:
                return _Stop(pos, hit[0], hit[1], hit[2])
        i = pos
        while True:
            j = raw.find(b"\n--", i)
            if j < 0:
                return None
            hit = self.match(j + 1, stack)
            if hit is not None:
                delim = j - 1 if j > pos and raw[j - 1] == 0x0D else j
                return _Stop(delim, hit[0], hit[1], hit[2])
            i = j + 1


def _line_break_before(raw: bytes, pos: int, floor: int) -> int:
    """Where the CRLF (or LF) ending the line before `pos` starts, not before `floor`."""
    if pos <= floor:
        return pos
    pos -= 1
    if pos > floor and raw[pos - 1] == 0x0D:
        pos -= 1
    return pos


def _empty_part(raw: bytes, pos: int) -> Part:
    return Part(raw, pos, pos, pos, [], Kind.LEAF, b"text", b"plain", [])


def _media(raw: bytes, fields: list[Field], digest: bool
           ) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], Kind, bytes]:
    """Type, subtype, parameters, kind and boundary of an entity, from its Content-Type."""
    parsed = None
    for name, _, vstart, fend in fields:
        if name == b"content-type":  # the first one counts
            parsed = _content_type(_unfold(raw[vstart:fend]))
            break
    if parsed is None:
        # RFC 2045 5.2 (absent or unusable: text/plain; charset=us-ascii), RFC 2046 5.1.5
        if digest:
            return b"message", b"rfc822", [], Kind.MESSAGE, b""
        return b"text", b"plain", [], Kind.LEAF, b""
    mtype, msub, params = parsed
    low = mtype.lower()
    if low == b"multipart":
        for pname, pvalue in params:
            if pname.lower() == b"boundary":
                if pvalue:
                    return mtype, msub, params, Kind.MULTIPART, pvalue
                break
        # RFC 2046 5.1.1 makes the boundary mandatory; without one the body is one text
        return b"text", b"plain", [], Kind.LEAF, b""
    if low == b"message" and msub.lower() in (b"rfc822", b"global"):  # RFC 6532 3.7
        return mtype, msub, params, Kind.MESSAGE, b""
    return mtype, msub, params, Kind.LEAF, b""


def parse(raw: bytes) -> Part:
    """The MIME tree of a message (CRLF line ends expected; bare LF works too)."""
    raw = bytes(raw)
    try:
        part, _ = _Parser(raw).entity(0, (), 0, False)
        return part
    except Exception:  # never raise on stored mail
        if _STRICT:
            raise
        fields, body_start, _ = _Parser(raw).header(0, ())
        return Part(raw, 0, body_start, len(raw), fields, Kind.LEAF, b"text", b"plain", [])


def _as_part(src: bytes | Part) -> Part:
    return src if isinstance(src, Part) else parse(src)


def locate(src: bytes | Part, parts: tuple[int, ...]) -> Part | None:
    """The entity a section-part number names (RFC 9051 6.4.5), None if there is none: in a
    multipart, part N is its Nth body part; a non-multipart has only part 1, itself; numbers
    after a message/rfc822 part go into its encapsulated message."""
    node = _as_part(src)
    last = len(parts) - 1
    for i, num in enumerate(parts):
        if node.kind is Kind.MULTIPART:
            if not 1 <= num <= len(node.children):
                return None
            node = node.children[num - 1]
        elif num != 1 or (i < last and node.kind is not Kind.MESSAGE):
            return None
        if i < last and node.kind is Kind.MESSAGE:
            node = node.children[0]
    return node


# --- header values ----------------------------------------------------------------------------

def _unfold(value: bytes) -> bytes:
    """RFC 5322 2.2.3 unfolding (stray CR and LF go too), without surrounding white space."""
    if b"\n" in value or b"\r" in value:
        value = value.replace(b"\r", b"").replace(b"\n", b"")
    return value.strip(b" \t")


def _skip_cfws(v: bytes, i: int) -> int:
    """Past white space and comments (RFC 5322 3.2.2)."""
    n = len(v)
    while i < n:
        c = v[i]
        if c == 0x20 or c == 0x09:
            i += 1
        elif c == 0x28:  # "("
            i = _comment(v, i)[1]
        else:
            break
    return i


def _comment(v: bytes, i: int) -> tuple[bytes, int]:
    """The text of the comment at v[i] == "(" (nested comments kept, quoted-pairs
    unescaped) and the offset after it; an unclosed comment runs to the end."""
    out = bytearray()
    depth = 0
    n = len(v)
    while i < n:
        c = v[i]
        i += 1
        if c == 0x5C and i < n:  # "\" quoted-pair
            out.append(v[i])
            i += 1
            continue
        if c == 0x28:
            depth += 1
            if depth == 1:
                continue
        elif c == 0x29:
            depth -= 1
            if depth == 0:
                break
        out.append(c)
    return bytes(out), i


def _quoted(v: bytes, i: int) -> tuple[bytes, int]:
    """The content of the quoted-string at v[i] == '"' and the offset after it (RFC 5322
    3.2.4); an unclosed one runs to the end."""
    out = bytearray()
    n = len(v)
    i += 1
    while i < n:
        c = v[i]
        i += 1
        if c == 0x5C and i < n:
            out.append(v[i])
            i += 1
        elif c == 0x22:
            break
        else:
            out.append(c)
    return bytes(out), i


# RFC 2045 5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>; 8-bit
# octets are let through.
_TOKEN = re.compile(rb'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]+')
_RFC2231_NAME = re.compile(rb"(.+?)\*(?:([0-9]{1,4})(\*)?)?")
# RFC 2231 7: attribute-char, the octets an encoded value may hold as they are
_RFC2231_PLAIN = frozenset(b"!#$&+-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`"
                           b"abcdefghijklmnopqrstuvwxyz{|}~")


def _content_type(v: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """type, subtype and parameters (RFC 2045 5.1), None when there is no type/subtype."""
    i = _skip_cfws(v, 0)
    m = _TOKEN.match(v, i)
    if m is None:
        return None
    mtype = m.group()
    i = _skip_cfws(v, m.end())
    if i >= len(v) or v[i] != 0x2F:  # "/"
        return None
    m = _TOKEN.match(v, _skip_cfws(v, i + 1))
    if m is None:
        return None
    return mtype, m.group(), _params(v, m.end())


def _params(v: bytes, i: int) -> list[tuple[bytes, bytes]]:
    """The `;` attribute `=` value list after a type (RFC 2045 5.1), tolerant: junk up to
    the next `;` is skipped, a value runs to the next `;` when it is not quoted."""
    out: list[tuple[bytes, bytes]] = []
    n = len(v)
    while True:
        i = _skip_cfws(v, i)
        if i >= n:
            break
        if v[i] != 0x3B:  # ";"
            i = _skip_to_semicolon(v, i)
            continue
        i = _skip_cfws(v, i + 1)
        m = _TOKEN.match(v, i)
        if m is None:
            i = _skip_to_semicolon(v, i)
            continue
        name = m.group()
        i = _skip_cfws(v, m.end())
        if i >= n or v[i] != 0x3D:  # "=": an attribute without a value is dropped
            continue
        i = _skip_cfws(v, i + 1)
        if i < n and v[i] == 0x22:
            value, i = _quoted(v, i)
        else:
            j = _skip_to_semicolon(v, i)
            value = _strip_comments(v[i:j]).strip(b" \t")
            i = j
        out.append((name, value))
    if any(b"*" in name for name, _ in out):
        out = _merge_rfc2231(out)
    return out


def _skip_to_semicolon(v: bytes, i: int) -> int:
    """The offset of the next ";" outside quoted strings and comments (or the end)."""
    n = len(v)
    while i < n:
        c = v[i]
        if c == 0x3B:
            return i
        if c == 0x22:
            i = _quoted(v, i)[1]
        elif c == 0x28:
            i = _comment(v, i)[1]
        else:
            i += 1
    return n


def _strip_comments(v: bytes) -> bytes:
    if b"(" not in v:
        return v
    out = bytearray()
    i = 0
    while i < len(v):
        if v[i] == 0x28:
            i = _comment(v, i)[1]
        else:
            out.append(v[i])
            i += 1
    return bytes(out)


def _merge_rfc2231(params: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """RFC 2231 3-4: name*0, name*1... are joined into one parameter; when any section is
    encoded the result is `name*` = charset'language'%-encoded value, left encoded."""
    out: list[tuple[bytes, bytes] | bytes] = []  # a bytes entry: the group of that name
    groups: dict[bytes, dict[int, tuple[bytes, bool]]] = {}
    names: dict[bytes, bytes] = {}
    for name, value in params:
        m = _RFC2231_NAME.fullmatch(name)
        if m is None or m.group(2) is None:
            out.append((name, value))  # plain, or a single encoded `name*`
            continue
        key = m.group(1).lower()
        if key not in groups:
            groups[key] = {}
            names[key] = m.group(1)
            out.append(key)
        groups[key].setdefault(int(m.group(2)), (value, m.group(3) is not None))
    merged: list[tuple[bytes, bytes]] = []
    for entry in out:
        if isinstance(entry, tuple):
            merged.append(entry)
            continue
        sections = [groups[entry][k] for k in sorted(groups[entry])]
        if any(encoded for _, encoded in sections):
            text = b"".join(value if encoded else _pct_encode(value)
                            for value, encoded in sections)
            if not sections[0][1]:
                text = b"''" + text  # the first section carries charset'language'
            merged.append((names[entry] + b"*", text))
        else:
            merged.append((names[entry], b"".join(value for value, _ in sections)))
    return merged


def _pct_encode(value: bytes) -> bytes:
    return b"".join(bytes([c]) if c in _RFC2231_PLAIN else b"%%%02X" % c for c in value)


# --- ENVELOPE -------------------------------------------------------------------------------

# Address tokens (RFC 5322 3.2, 3.4): atoms, quoted strings, domain literals, comments, and the
# specials as their own octet value.
_ATOM, _QUOTED, _LITERAL, _COMMENT = 0, 1, 2, 3
_LT, _GT, _AT, _COMMA, _SEMI, _COLON, _DOT = b"<>@,;:."
_ATOM_RUN = re.compile(rb'[^ \t\r\n()<>\[:;@,."]+')
_DOT_ATOM = re.compile(rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\xff-]+"
                       rb"(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\xff-]+)*")
Token: TypeAlias = tuple[int, bytes, bool]  # kind, text, white space before it

# RFC 9051 7.5.2 / Dovecot: an address without a local part or domain still needs a mailbox
# and host, or it would read as group syntax.
_MISSING_MAILBOX = b"MISSING_MAILBOX"
_MISSING_DOMAIN = b"MISSING_DOMAIN"


def _address_tokens(v: bytes) -> list[Token]:
    toks: list[Token] = []
    i = 0
    n = len(v)
    space = False
    while i < n:
        c = v[i]
        if c in b" \t\r\n":
            space = True
            i += 1
        elif c == 0x28:  # "(" comment
            text, i = _comment(v, i)
            toks.append((_COMMENT, text, space))
            space = True
        elif c == 0x22:  # '"' quoted-string
            text, i = _quoted(v, i)
            toks.append((_QUOTED, text, space))
            space = False
        elif c == 0x5B:  # "[" domain-literal
            j = v.find(b"]", i)
            j = n if j < 0 else j + 1
            toks.append((_LITERAL, v[i:j], space))
            i = j
            space = False
        elif c in b"<>@,;:.":
            toks.append((c, b"", space))
            i += 1
            space = False
        else:
            m = _ATOM_RUN.match(v, i)
            j = m.end() if m is not None else i + 1
            toks.append((_ATOM, v[i:j], space))
            i = j
            space = False
    return toks


class _Addresses:
    """A tolerant RFC 5322 3.4 address-list reader: mailboxes, groups, obs-route, comments as
    the display name of a bare addr-spec ("user@host (Name)")."""

    __slots__ = ("i", "out", "toks")

    def __init__(self, toks: list[Token]) -> None:
        self.toks = toks
        self.i = 0
        self.out: list[Value] = []

    def kind(self) -> int:
        return self.toks[self.i][0] if self.i < len(self.toks) else -1

    def read(self) -> list[Value]:
        while self.i < len(self.toks):
            if self.kind() in (_COMMA, _COMMENT, _SEMI, _GT, _COLON, _DOT):
                self.i += 1  # empty list elements and stray specials
                continue
            before = self.i
            self.address()
            if self.i == before:
                self.i += 1
        return self.out

    def phrase(self) -> tuple[list[Token], bytes | None]:
        """Words (and obs-phrase dots) up to the next special; the last comment seen."""
        words: list[Token] = []
        comment = None
        while self.i < len(self.toks):
            tok = self.toks[self.i]
            if tok[0] == _COMMENT:
                comment = tok[1]
            elif tok[0] in (_ATOM, _QUOTED, _DOT):
                words.append(tok)
            else:
                break
            self.i += 1
        return words, comment

    def address(self) -> None:
        words, comment = self.phrase()
        if self.kind() != _COLON:
            self.mailbox(words, comment)
            return
        # RFC 9051 7.5.2: group start is (NIL NIL name NIL), group end (NIL NIL NIL NIL)
        self.i += 1
        self.out.append([None, None, _phrase_text(words), None])
        while self.i < len(self.toks):
            k = self.kind()
            if k == _SEMI:
                self.i += 1
                break
            if k in (_COMMA, _COMMENT, _COLON, _GT, _DOT):
                self.i += 1
                continue
            before = self.i
            self.mailbox(*self.phrase())
            if self.i == before:
                self.i += 1
        self.out.append([None, None, None, None])

    def mailbox(self, words: list[Token], comment: bytes | None) -> None:
        if self.kind() == _LT:  # name-addr: [display-name] "<" [obs-route] addr-spec ">"
            self.i += 1
            route = self.route()
            local, _ = self.phrase()
            host = None
            if self.kind() == _AT:
                self.i += 1
                host, _ = self.domain()
            while self.i < len(self.toks) and self.kind() not in (_GT, _COMMA, _SEMI):
                self.i += 1
            if self.kind() == _GT:
                self.i += 1
            self.out.append([_phrase_text(words) or None, route,
                             _local_part(local) or _MISSING_MAILBOX, host or _MISSING_DOMAIN])
            return
        mailbox = _local_part(words)
        host = None
        if self.kind() == _AT:  # addr-spec
            self.i += 1
            host, domain_comment = self.domain()
            comment = domain_comment or comment
        while self.kind() == _COMMENT:
            comment = self.toks[self.i][1]
            self.i += 1
        if not mailbox and not host:
            return
        self.out.append([comment or None, None, mailbox or _MISSING_MAILBOX,
                         host or _MISSING_DOMAIN])

    def route(self) -> bytes | None:
        """obs-route (RFC 5322 4.4): "@a,@b:" as adl "@a,@b"."""
        if self.kind() != _AT:
            return None
        save = self.i
        hops: list[bytes] = []
        while self.kind() == _AT:
            self.i += 1
            hops.append(b"@" + (self.domain()[0] or b""))
            while self.kind() in (_COMMA, _COMMENT):
                self.i += 1
        if self.kind() == _COLON:
            self.i += 1
            return b",".join(hops)
        self.i = save  # "<@host>": a missing local part, not a route
        return None

    def domain(self) -> tuple[bytes | None, bytes | None]:
        parts: list[bytes] = []
        comment = None
        while self.i < len(self.toks):
            kind, text, _ = self.toks[self.i]
            if kind == _COMMENT:
                comment = text
            elif kind in (_ATOM, _LITERAL):
                parts.append(text)
            elif kind == _DOT:
                parts.append(b".")
            else:
                break
            self.i += 1
        return b"".join(parts) or None, comment


def _phrase_text(words: list[Token]) -> bytes:
    """A display name: its words, one space where the header had white space (RFC 5322
    3.2.5), quoted strings without their quotes."""
    out = bytearray()
    for kind, text, space in words:
        if out and space:
            out += b" "
        out += b"." if kind == _DOT else text
    return bytes(out)


def _local_part(words: list[Token]) -> bytes:
    """A local part as it would be written: the atoms and dots, or when it was quoted, the
    quoted content (RFC 5322 3.4.1), quoted again only when it is not a dot-atom."""
    if not words:
        return b""
    text = b"".join(b"." if kind == _DOT else text for kind, text, _ in words)
    if any(kind == _QUOTED for kind, _, _ in words) and not _DOT_ATOM.fullmatch(text):
        return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return text


def _address_list(value: bytes) -> list[Value]:
    return _Addresses(_address_tokens(value)).read()


_ENV_TEXT = (b"date", b"subject", b"in-reply-to", b"message-id")
_ENV_FIRST = (b"from", b"sender", b"reply-to")
_ENV_JOINED = (b"to", b"cc", b"bcc")  # address lists split over several fields are joined


def envelope(src: bytes | Part) -> list[Value]:
    """ENVELOPE (RFC 9051 7.5.2, RFC 3501 7.4.2) of a message, or of the entity `src` is:
    date, subject, from, sender, reply-to, to, cc, bcc, in-reply-to, message-id.  For an
    encapsulated message pass `part.children[0]` of its message/rfc822 part."""
    try:
        return _envelope(_as_part(src))
    except Exception:  # never raise on stored mail
        if _STRICT:
            raise
        nil: list[Value] = [None] * 10
        return nil


def _envelope(part: Part) -> list[Value]:
    raw = part.raw
    text: dict[bytes, bytes] = {}
    addrs: dict[bytes, list[Value]] = {}
    for name, _, vstart, fend in part.fields:
        if name in _ENV_TEXT:
            if name not in text:
                text[name] = _unfold(raw[vstart:fend])
        elif name in _ENV_FIRST:
            if name not in addrs:
                addrs[name] = _address_list(_unfold(raw[vstart:fend]))
        elif name in _ENV_JOINED:
            addrs.setdefault(name, []).extend(_address_list(_unfold(raw[vstart:fend])))

    def address_field(name: bytes) -> Packed | None:
        found = addrs.get(name)
        return Packed(found) if found else None

    sender_from = address_field(b"from")
    # RFC 3501 7.4.2: Sender and Reply-To absent or empty are the From value
    return [
        text.get(b"date"),
        text.get(b"subject"),
        sender_from,
        address_field(b"sender") or sender_from,
        address_field(b"reply-to") or sender_from,
        address_field(b"to"),
        address_field(b"cc"),
        address_field(b"bcc"),
        text.get(b"in-reply-to"),
        text.get(b"message-id"),
    ]


# --- BODY and BODYSTRUCTURE -------------------------------------------------------------------

def bodystructure(src: bytes | Part, *, extensible: bool) -> list[Value]:
    """BODYSTRUCTURE (extensible: with the extension data) or BODY, RFC 9051 7.5.2 and the
    `body` grammar of RFC 9051 9.  Pass a part from `locate` for a BODYPARTSTRUCTURE."""
    part = _as_part(src)
    try:
        return _structure(part, extensible)
    except Exception:  # never raise on stored mail
        if _STRICT:
            raise
        return _structure(_empty_part(part.raw, part.start), extensible)


def _structure(part: Part, ext: bool) -> list[Value]:
    if part.kind is Kind.MULTIPART:
        # body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
        bodies = Packed(_structure(child, ext) for child in part.children)
        bodies.append(part.media_subtype)
        if ext:
            # body-ext-mpart = body-fld-param [SP body-fld-dsp [SP body-fld-lang
            #                  [SP body-fld-loc]]]
            bodies += [_param_list(part.params), *_extension(part)]
        return bodies
    text = part.media_type.lower() == b"text"
    params = part.params
    if text and not any(name.lower() == b"charset" for name, _ in params):
        params = [*params, (b"charset", b"us-ascii")]  # RFC 2045 5.2 default
    raw = part.raw
    out: list[Value] = [
        part.media_type,
        part.media_subtype,
        _param_list(params),
        part.value(b"content-id"),
        part.value(b"content-description"),
        _cte_token(part) or b"7bit",
        part.end - part.body_start,  # body-fld-octets
    ]
    if part.kind is Kind.MESSAGE:
        # body-type-msg = media-message SP body-fields SP envelope SP body SP body-fld-lines
        inner = part.children[0]
        out += [_envelope(inner), _structure(inner, ext),
                raw.count(b"\n", part.body_start, part.end)]
    elif text:
        out.append(raw.count(b"\n", part.body_start, part.end))  # body-fld-lines
    if ext:
        # body-ext-1part = body-fld-md5 [SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc]]]
        out += [part.value(b"content-md5"), *_extension(part)]
    return out


def _param_list(params: list[tuple[bytes, bytes]]) -> Value:
    # body-fld-param = "(" string SP string *(SP string SP string) ")" / nil
    if not params:
        return None
    return [item for pair in params for item in pair]


def _extension(part: Part) -> list[Value]:
    """body-fld-dsp, body-fld-lang, body-fld-loc (RFC 9051 9; RFC 2183, 3282, 2557)."""
    dsp: Value = None
    value = part.value(b"content-disposition")
    if value is not None:
        m = _TOKEN.match(value, _skip_cfws(value, 0))
        if m is not None:
            dsp = [m.group(), _param_list(_params(value, m.end()))]
    lang: Value = None
    value = part.value(b"content-language")
    if value is not None:
        tags: list[Value] = [t for t in (_strip_comments(t).strip(b" \t")
                                         for t in value.split(b",")) if t]
        lang = tags or None
    return [dsp, lang, part.value(b"content-location")]


def _cte_token(part: Part) -> bytes | None:
    """The Content-Transfer-Encoding mechanism as written (RFC 2045 6.1)."""
    value = part.value(b"content-transfer-encoding")
    if value is None:
        return None
    m = _TOKEN.match(value, _skip_cfws(value, 0))
    return m.group() if m is not None else None


# --- BODY[section] --------------------------------------------------------------------------

def section(src: bytes | Part, sec: Section) -> bytes | None:
    """BODY[section] (RFC 9051 6.4.5); None when the section does not exist.  Part numbers
    as in `locate`; HEADER, HEADER.FIELDS[.NOT] and TEXT after part numbers need a
    message/rfc822 part and mean its message; MIME is the part's own header."""
    node = _as_part(src)
    text = sec.text.upper()
    if sec.parts:
        found = locate(node, sec.parts)
        if found is None:
            return None
        if text == "":
            return found.body
        if text == "MIME":
            return found.header
        if found.kind is not Kind.MESSAGE:
            return None
        node = found.children[0]
    elif text == "MIME":
        return None
    if text == "":
        return node.raw[node.start:node.end]
    if text == "HEADER":
        return node.header
    if text == "TEXT":
        return node.body
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        names = {f.lower().encode("utf-8", "replace") for f in sec.fields}
        keep = text == "HEADER.FIELDS"
        out = [_field_line(node.raw, fstart, fend) for name, fstart, _, fend in node.fields
               if (name in names) == keep]
        out.append(b"\r\n")  # the blank line ends the subset too
        return b"".join(out)
    return None


def _field_line(raw: bytes, start: int, end: int) -> bytes:
    line = raw[start:end]
    return line if line.endswith(b"\n") else line + b"\r\n"


# --- BINARY[section] (RFC 3516) -------------------------------------------------------------

_IDENTITY = (b"7bit", b"8bit", b"binary")
_DECODED = (b"base64", b"quoted-printable")


def binary(src: bytes | Part, parts: tuple[int, ...]) -> bytes | None:
    """BINARY[parts] (RFC 3516 4.2): the section with its Content-Transfer-Encoding undone;
    None when the part does not exist.  For a multipart or message/rfc822 part (or the whole
    message) every base64 or quoted-printable part inside is decoded and its header says
    "Content-Transfer-Encoding: binary" (as Dovecot does).  UnknownCTE for an encoding not
    known here (RFC 3516 4.3: NO [UNKNOWN-CTE])."""
    root = _as_part(src)
    node = locate(root, parts) if parts else root
    if node is None:
        return None
    try:
        if _plain(node):
            return node.body if parts else node.raw[node.start:node.end]
        return _binary_body(node) if parts else _binary_entity(node)
    except UnknownCTE:
        raise
    except Exception:  # never raise on stored mail
        if _STRICT:
            raise
        return node.body if parts else node.raw[node.start:node.end]


def binary_size(src: bytes | Part, parts: tuple[int, ...]) -> int | None:
    """BINARY.SIZE[parts] (RFC 3516 4.2): the octets BINARY[parts] would send."""
    data = binary(src, parts)
    return None if data is None else len(data)


def _cte(part: Part) -> bytes | None:
    token = _cte_token(part)
    return token.lower() if token else None


def _plain(part: Part) -> bool:
    """Whether nothing in `part` needs decoding (UnknownCTE for a leaf nobody can decode)."""
    cte = _cte(part)
    if cte in _DECODED:
        return False
    if part.kind is Kind.LEAF:
        if cte is not None and cte not in _IDENTITY:
            raise UnknownCTE(cte.decode("ascii", "replace"))
        return True
    # RFC 2045 6.4: a multipart or message can only be 7bit, 8bit or binary, whatever it says
    return all(_plain(child) for child in part.children)


def _binary_body(part: Part) -> bytes:
    raw = part.raw
    cte = _cte(part)
    if cte == b"base64":
        return _decode_base64(part.body)
    if cte == b"quoted-printable":
        return _decode_qp(part.body)
    if part.kind is Kind.LEAF:
        if cte is not None and cte not in _IDENTITY:
            raise UnknownCTE(cte.decode("ascii", "replace"))
        return part.body
    if part.kind is Kind.MESSAGE:
        return _binary_entity(part.children[0])
    out: list[bytes] = []
    pos = part.body_start
    for child in part.children:
        out.append(raw[pos:child.start])  # preamble or delimiter line
        out.append(_binary_entity(child))
        pos = child.end
    out.append(raw[pos:part.end])
    return b"".join(out)


def _binary_entity(part: Part) -> bytes:
    """Header and body of an entity, decoded; a decoded part's header says binary."""
    body = _binary_body(part)
    if _cte(part) not in _DECODED:
        return part.header + body
    raw = part.raw
    out: list[bytes] = []
    pos = part.start
    replaced = False
    for name, fstart, _, fend in part.fields:
        if name != b"content-transfer-encoding":
            continue
        out.append(raw[pos:fstart])
        if not replaced:
            line_end = b"\r\n" if raw.endswith(b"\r\n", fstart, fend) else (
                b"\n" if raw.endswith(b"\n", fstart, fend) else b"")
            out.append(b"Content-Transfer-Encoding: binary" + line_end)
            replaced = True
        pos = fend
    out.append(raw[pos:part.body_start])
    out.append(body)
    return b"".join(out)


_NOT_BASE64 = bytes(c for c in range(256) if not re.fullmatch(rb"[A-Za-z0-9+/=]", bytes([c])))


def _decode_base64(data: bytes) -> bytes:
    """RFC 2045 6.8 base64, ignoring octets outside the alphabet; a run that ends in "="
    padding may be followed by another (concatenated encodings)."""
    out: list[bytes] = []
    for run in data.translate(None, _NOT_BASE64).split(b"="):
        if len(run) % 4 == 1:
            run = run[:-1]  # a lone sextet carries no whole octet
        if run:
            out.append(binascii.a2b_base64(run + b"=" * (-len(run) % 4)))
    return b"".join(out)


_TRAILING_WSP = re.compile(rb"[ \t]+(?=\r?\n|\Z)")


def _decode_qp(data: bytes) -> bytes:
    """RFC 2045 6.7 quoted-printable: white space at the end of a line is dropped (rule 3),
    "=" at the end of a line is a soft line break (rule 5), =XX an octet, and anything
    malformed is kept as it is."""
    return binascii.a2b_qp(_TRAILING_WSP.sub(b"", data))


# --- writing values ---------------------------------------------------------------------------



