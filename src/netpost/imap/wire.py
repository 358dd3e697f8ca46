"""IMAP response syntax: strings, literals, lists, mailbox names (RFC 9051 4, 9).

A response value is a tree of `None` (NIL), `int` (number), `bytes` (string: quoted when it
can be, else a literal), `Raw` (written as is: atoms, flags, already formatted parts) and
lists (parenthesized).  Mailbox names go out in modified UTF-7 (RFC 3501 5.1.3) unless the
client enabled UTF8=ACCEPT (RFC 6855).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

__all__ = [
    "Raw",
    "Value",
    "astring",
    "decode_mutf7",
    "encode_mutf7",
    "encode_value",
    "quoted_or_literal",
]


class Raw(bytes):
    """Octets written as they are (an atom, a flag list, a formatted part)."""


Value = None | int | bytes | list["Value"]

# A string may go quoted when it has no CR, LF, NUL or 8-bit octets (RFC 9051 9: quoted);
# long strings go as literals, which clients parse without escaping.
_QUOTABLE = re.compile(rb'[^\x00\r\n\x80-\xff]{0,1024}\Z')
_ATOM_SAFE = re.compile(rb'[!#$&\'+,\-./0-9:;<=>?@A-Z^_`a-z|}~\x5b]+\Z')


def quoted_or_literal(data: bytes, *, utf8: bool = False) -> bytes:
    """An IMAP string for `data`: "quoted" (with \\ and " escaped) or {n} literal."""
    if _QUOTABLE.match(data) or (utf8 and _quotable_utf8(data)):
        if b"\\" in data or b'"' in data:
            data = data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + data + b'"'
    return b"{%d}\r\n" % len(data) + data


def _quotable_utf8(data: bytes) -> bool:
    # RFC 6855 3: after ENABLE UTF8=ACCEPT quoted strings may hold UTF-8.
    if len(data) > 1024 or b"\r" in data or b"\n" in data or b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def astring(data: bytes) -> bytes:
    """An atom when the octets are atom characters (and not NIL), else a string."""
    if _ATOM_SAFE.match(data) and data.upper() != b"NIL":
        return data
    return quoted_or_literal(data)


def encode_value(value: Value, out: list[bytes] | None = None) -> bytes:
    """The wire form of a response value tree."""
    parts: list[bytes] = [] if out is None else out
    _encode(value, parts)
    return b"".join(parts) if out is None else b""


def _encode(value: Value, parts: list[bytes]) -> None:
    if value is None:
        parts.append(b"NIL")
    elif isinstance(value, Raw):
        parts.append(value)
    elif isinstance(value, bytes):
        parts.append(quoted_or_literal(value))
    elif isinstance(value, bool):  # pragma: no cover - not a value type
        raise TypeError("bool is not an IMAP value")
    elif isinstance(value, int):
        parts.append(b"%d" % value)
    else:
        # A packed list (mime.Packed: RFC 9051 9 "1*body", "1*address") has no SP between
        # its leading lists.
        tight = getattr(value, "packed", False)
        parts.append(b"(")
        for i, item in enumerate(value):
            if not isinstance(item, list):
                tight = False
            if i and not tight:
                parts.append(b" ")
            _encode(item, parts)
        parts.append(b")")


def flag_list(flags: Iterable[str]) -> Raw:
    return Raw(("(" + " ".join(sorted(flags)) + ")").encode())


# --- modified UTF-7 (RFC 3501 5.1.3) ---------------------------------------------------------

def encode_mutf7(name: str) -> str:
    """A mailbox name in modified UTF-7: printable ASCII as is ("&" as "&-"), other runs as
    "&" + modified base64 of UTF-16BE + "-"."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            data = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",") + "-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


class MUTF7Error(ValueError):
    """Not valid modified UTF-7."""


_MUTF7_RUN = re.compile(r"&([A-Za-z0-9+,]*)-")


def decode_mutf7(text: str) -> str:
    """The name a client sent in modified UTF-7 (MUTF7Error when it is not valid)."""
    if "&" not in text:
        if any(not 0x20 <= ord(c) <= 0x7E for c in text):
            raise MUTF7Error("8-bit characters must be encoded in modified UTF-7")
        return text
    out: list[str] = []
    pos = 0
    while pos < len(text):
        amp = text.find("&", pos)
        if amp < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:amp])
        m = _MUTF7_RUN.match(text, amp)
        if m is None:
            raise MUTF7Error("unterminated modified UTF-7 run")
        b64 = m.group(1)
        if not b64:
            out.append("&")
        else:
            padded = b64.replace(",", "/") + "=" * (-len(b64) % 4)
            try:
                data = base64.b64decode(padded, validate=True)
                decoded = data.decode("utf-16-be")
            except (ValueError, UnicodeDecodeError):
                raise MUTF7Error("invalid modified UTF-7 run") from None
            if encode_mutf7(decoded) != m.group(0):
                raise MUTF7Error("modified UTF-7 run is not in its shortest form")
            out.append(decoded)
        pos = m.end()
    return "".join(out)
