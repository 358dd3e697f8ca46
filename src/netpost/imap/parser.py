"""IMAP command input, sans-I/O: framing with literals, the lexer, sequence sets.

`CommandReader` cuts the client's octets into commands: a command is lines joined by literals
(RFC 9051 4.3: `{n}` synchronizing, `{n+}` non-synchronizing (RFC 7888 LITERAL+), `~{n}` a
literal8 (RFC 3516)).  It bounds the line length, the literal size and the whole command, and
says when a synchronizing literal needs the server's "+" continuation.

`tokenize` turns a complete command into tokens: `Atom`, `String` (quoted or literal) and
Python lists for parenthesized lists.  Bracketed parts of an atom (`BODY[HEADER.FIELDS (A B)]`)
stay inside the atom.  Command-specific grammar is `netpost.imap.commands`' job.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "Atom",
    "CommandReader",
    "Frame",
    "Limits",
    "ParseError",
    "SequenceSet",
    "String",
    "Token",
    "parse_sequence_set",
    "tokenize",
]


class ParseError(Exception):
    """The command's syntax is wrong: the text is what the tagged BAD says."""


@dataclass(frozen=True, slots=True)
class Atom:
    """An atom as sent (case kept): a keyword, number, flag, NIL, sequence set, fetch item."""

    value: str

    def upper(self) -> str:
        return self.value.upper()


@dataclass(frozen=True, slots=True)
class String:
    """A quoted string or a literal (`literal8` for `~{n}`)."""

    value: bytes
    literal: bool = False
    literal8: bool = False


Token = Atom | String | list["Token"]


@dataclass(frozen=True)
class Limits:
    max_line: int = 64 * 1024  # octets of one line of a command (literals not counted)
    max_literal: int = 50 * 1024 * 1024  # octets of one literal (APPENDLIMIT)
    max_command: int = 64 * 1024 * 1024  # octets of a whole command incl. literals
    max_depth: int = 16  # nesting of parenthesized lists
    max_tokens: int = 100_000  # tokens in one command


@dataclass
class Frame:
    """One complete command as received: its lines and the literals between them.

    `lines[i]` is followed by `literals[i]` (so len(literals) == len(lines) - 1).  `error`
    is set instead when the command broke a bound; `tag` is what could be read of its tag.
    """

    lines: list[bytes] = field(default_factory=list)
    literals: list[bytes] = field(default_factory=list)
    literal8: list[bool] = field(default_factory=list)
    error: str | None = None
    tag: str = "*"
    size: int = 0  # octets received for it


# A line that ends in a literal's announcement: {n}, {n+} or ~{n} (RFC 9051 9, RFC 7888).
_LITERAL_AT_END = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\r?\n\Z")
_TAG = re.compile(rb"[^\x00-\x20\x7f-\xff(){%*\"\\\]+]+")  # no CTL, SP or 8-bit


@dataclass(frozen=True, slots=True)
class Continue:
    """A synchronizing literal was announced and accepted: send "+ ..." now."""


@dataclass(frozen=True, slots=True)
class Reject:
    """A synchronizing literal is refused: answer the tag, the client will not send it."""

    tag: str
    text: str


class CommandReader:
    """Cuts input into `Frame`s.  `feed` buffers; `next` hands out what is complete."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._buf = bytearray()
        self._frame = Frame()
        self._literal_left = 0  # octets of the current literal still expected
        self._literal = bytearray()
        self._discarding = False  # dropping a literal (or line) of a failed command
        self._skip_line = False  # dropping the rest of an overlong line
        self._tail = b""  # its last octets: a literal announced at its end is still read
        self._raw_overlong = False  # read_line is dropping an overlong raw line
        self._ready: deque[Frame | Continue | Reject] = deque()

    @property
    def in_literal(self) -> bool:
        return self._literal_left > 0

    def feed(self, data: bytes) -> None:
        """Buffer input; nothing is framed until `next` asks (so that a mode reading raw
        lines, IDLE's DONE or a SASL response, sees them unframed)."""
        self._buf += data

    def next(self) -> Frame | Continue | Reject | None:
        if not self._ready:
            self._process()
        return self._ready.popleft() if self._ready else None

    def take_raw(self) -> bytes:
        """Everything buffered and not yet framed (after STARTTLS it is dropped; IDLE's DONE
        and SASL responses are lines read outside the command grammar)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def read_line(self) -> bytes | None:
        """One raw line (for IDLE's DONE and SASL responses), or None if none is complete."""
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) > self.limits.max_line:
                self._buf.clear()  # dropped up to its end, which is the line's end
                self._raw_overlong = True
            return None
        line = bytes(self._buf[: nl + 1])
        del self._buf[: nl + 1]
        if self._raw_overlong or len(line) > self.limits.max_line:
            self._raw_overlong = False
            return b""  # overlong: the caller sees an invalid line
        return line

    # --------------------------------------------------------------------------------------
    def _fail(self, text: str) -> None:
        frame = self._frame
        if frame.error is None:
            frame.error = text

    def _finish(self) -> None:
        self._ready.append(self._frame)
        self._frame = Frame()

    def _process(self) -> None:
        buf = self._buf
        limits = self.limits
        while buf and not self._ready:
            if self._literal_left:
                take = min(self._literal_left, len(buf))
                if not self._discarding:
                    self._literal += buf[:take]
                del buf[:take]
                self._literal_left -= take
                if self._literal_left:
                    return
                if not self._discarding:
                    self._frame.literals.append(bytes(self._literal))
                self._literal.clear()
                continue
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > limits.max_line or self._skip_line:
                    # RFC 9051 leaves the limit to the server; say so and skip to its end.
                    if not self._skip_line and self._frame.size == 0:  # its first line
                        self._set_tag(buf[: limits.max_line + 1])
                    self._fail("Command line too long")
                    self._tail = (self._tail + bytes(buf[-32:]))[-32:]
                    buf.clear()
                    self._skip_line = True
                return
            line = bytes(buf[: nl + 1])
            del buf[: nl + 1]
            frame = self._frame
            if self._skip_line:  # the end of an overlong line: only its tail is looked at
                self._skip_line = False
                line, self._tail = (self._tail + line)[-32:], b""
            else:
                if frame.size == 0:  # the command's first line
                    self._set_tag(line[: limits.max_line + 1])
                if len(line) > limits.max_line:
                    self._fail("Command line too long")
                if len(frame.lines) > limits.max_tokens:
                    self._fail("Too many literals in one command")
                if frame.error is None or frame.size == 0:  # a failed command keeps no more
                    frame.lines.append(line)
            frame.size += len(line)
            m = _LITERAL_AT_END.search(line)
            if m is None:
                self._finish()
                continue
            size = int(m.group(2))
            synchronizing = not m.group(3)
            if frame.error is None:
                frame.literal8.append(bool(m.group(1)))
            frame.size += size
            too_big = size > limits.max_literal or frame.size > limits.max_command
            if size > limits.max_literal:
                self._fail(f"[TOOBIG] Literal of {size} octets is larger than the limit of "
                           f"{limits.max_literal}")
            elif too_big:
                self._fail(f"[TOOBIG] Command is larger than the limit of "
                           f"{limits.max_command} octets")
            if synchronizing and frame.error is not None:
                # RFC 9051 7.5: refusing a synchronizing literal ends the command; the
                # client does not send the literal.
                self._ready.append(Reject(frame.tag, frame.error))
                self._frame = Frame()
                continue
            if synchronizing:
                self._ready.append(Continue())
            self._discarding = frame.error is not None
            self._literal_left = size
            if size == 0 and not self._discarding:
                frame.literals.append(b"")

    def _set_tag(self, line: bytes | bytearray) -> None:
        m = _TAG.match(line)
        self._frame.tag = m.group().decode("ascii", "replace") if m else "*"


# --- the lexer -------------------------------------------------------------------------------

_ATOM_END = frozenset(b' ()"{\r\n')


def tokenize(frame: Frame, limits: Limits = Limits(), *, skip: int = 0) -> list[Token]:
    """The tokens of a complete frame from octet `skip` of its first line on (after the
    tag); ParseError on bad syntax."""
    out: list[Token] = []
    stack: list[list[Token]] = [out]
    count = 0
    last = len(frame.lines) - 1
    for i, raw in enumerate(frame.lines):
        line = raw.rstrip(b"\n").rstrip(b"\r")
        if i < last:
            m = _LITERAL_AT_END.search(raw)
            assert m is not None
            line = raw[: m.start()]
        pos = skip if i == 0 else 0
        n = len(line)
        while pos < n:
            c = line[pos]
            if c == 0x20:  # SP
                pos += 1
                continue
            if c == 0x28:  # (
                if len(stack) > limits.max_depth:
                    raise ParseError("Too deeply nested lists")
                new: list[Token] = []
                stack[-1].append(new)
                stack.append(new)
                pos += 1
                continue
            if c == 0x29:  # )
                if len(stack) == 1:
                    raise ParseError("Unexpected ')'")
                stack.pop()
                pos += 1
                continue
            count += 1
            if count > limits.max_tokens:
                raise ParseError("Too many arguments")
            if c == 0x22:  # "
                value, pos = _quoted(line, pos)
                stack[-1].append(String(value))
                continue
            if c == 0x7B:  # { inside a line: a literal announcement not at its end
                raise ParseError("Literal must end the line")
            end = _atom_end(line, pos)
            if end == pos:
                raise ParseError(f"Unexpected character {chr(c)!r}")
            try:
                text = line[pos:end].decode("utf-8")
            except UnicodeDecodeError:
                raise ParseError("Invalid UTF-8 in atom") from None
            if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
                raise ParseError("Control characters are not allowed in atoms")
            stack[-1].append(Atom(text))
            pos = end
        if i < last:
            count += 1
            stack[-1].append(String(frame.literals[i], literal=True,
                                    literal8=frame.literal8[i]))
    if len(stack) != 1:
        raise ParseError("Missing ')'")
    return out


def _quoted(line: bytes, pos: int) -> tuple[bytes, int]:
    """A quoted string starting at line[pos] == '"' (RFC 9051 9: quoted-specials escaped)."""
    out = bytearray()
    pos += 1
    n = len(line)
    while pos < n:
        c = line[pos]
        if c == 0x22:
            return bytes(out), pos + 1
        if c == 0x5C:  # backslash
            pos += 1
            if pos >= n or line[pos] not in b'"\\':
                raise ParseError("Invalid escape in quoted string")
            out.append(line[pos])
        else:
            out.append(c)
        pos += 1
    raise ParseError("Unterminated quoted string")


# Fetch items whose "[...]" may hold spaces and lists (RFC 9051 9: section, RFC 3516).
_SECTION_ATOMS = frozenset({b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"})


def _atom_end(line: bytes, pos: int) -> int:
    """End of an atom; a '[' opens a bracket that runs to its ']' with spaces, lists and
    quoted strings inside (BODY[HEADER.FIELDS (A "B")]<0.10>)."""
    n = len(line)
    depth = 0
    start = pos
    while pos < n:
        c = line[pos]
        if depth:
            if c == 0x5D:  # ]
                depth -= 1
            elif c == 0x5B:
                depth += 1
            elif c == 0x22:
                _, pos = _quoted(line, pos)
                continue
            pos += 1
            continue
        if c in _ATOM_END:
            return pos
        if c == 0x5B and line[start:pos].upper() in _SECTION_ATOMS:  # [
            depth += 1
        pos += 1
    if depth:
        raise ParseError("Missing ']'")
    return pos


# --- sequence sets (RFC 9051 9: sequence-set, "*" and SEARCHRES "$") -------------------------

_SEQ_NUMBER = re.compile(r"[1-9]\d{0,9}\Z")
MAX_NUMBER = 0xFFFFFFFF  # nz-number is 32-bit (RFC 9051 9: number)


@dataclass(frozen=True)
class SequenceSet:
    """Ranges of numbers; 0 stands for "*" (the largest number in use).  `saved` is "$"."""

    ranges: tuple[tuple[int, int], ...] = ()
    saved: bool = False

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """The ranges with "*" replaced by `largest`, each low <= high (RFC 9051 9: 4:2 is
        the same as 2:4)."""
        out = []
        for a, b in self.ranges:
            a = largest if a == 0 else a
            b = largest if b == 0 else b
            out.append((a, b) if a <= b else (b, a))
        return out

    def contains(self, number: int, largest: int) -> bool:
        return any(a <= number <= b for a, b in self.resolve(largest))

    def members(self, largest: int, limit: int) -> list[int]:
        """Sorted distinct numbers of the set up to `limit` (no number above it exists)."""
        seen: set[int] = set()
        for a, b in self.resolve(largest):
            seen.update(range(max(a, 1), min(b, limit) + 1))
        return sorted(seen)


def parse_sequence_set(text: str) -> SequenceSet:
    """`1:4,7,9:*` or `$` (RFC 5182 SEARCHRES); ParseError if it is not one."""
    if text == "$":
        return SequenceSet(saved=True)
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        low, sep, high = part.partition(":")
        a = _seq_number(low)
        b = _seq_number(high) if sep else a
        ranges.append((a, b))
    return SequenceSet(tuple(ranges))


def _seq_number(text: str) -> int:
    if text == "*":
        return 0
    if not _SEQ_NUMBER.match(text) or int(text) > MAX_NUMBER:
        raise ParseError(f"Invalid sequence set element {text!r}")
    return int(text)


def format_sequence_set(numbers: list[int]) -> str:
    """Compact form of sorted distinct numbers: 1:3,5,8:9 (for COPYUID, ESEARCH ALL...)."""
    if not numbers:
        return ""
    parts: list[str] = []
    start = prev = numbers[0]
    for n in numbers[1:]:
        if n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)
