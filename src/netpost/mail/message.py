"""The message model at delivery: parse the header once, keep what IMAP and POP3 need.

`parse_meta` reads only the header section (RFC 5322:2.1) with the standard `email` package
(compat32 policy: fast and tolerant) and keeps the fields ENVELOPE and SEARCH use, decoded to
text (RFC 2047 encoded words, raw UTF-8 per RFC 6532).  It never raises: garbage in gives a
`MessageMeta` with whatever could be read.
"""

from __future__ import annotations

import email.header
import email.parser
import email.policy
import re

from netpost.store.interfaces import MessageMeta

# Header fields kept beside each message (keys in MessageMeta.headers are these, lower-case).
# RFC 3501:7.4.2 ENVELOPE: date, subject, from, sender, reply-to, to, cc, bcc, in-reply-to,
# message-id; plus references for threading.
KEPT_FIELDS: tuple[str, ...] = (
    "date",
    "subject",
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "in-reply-to",
    "message-id",
    "references",
)
# Address lists may be split over several fields; the others keep their first occurrence.
_JOINED = frozenset({"to", "cc", "bcc"})
_MAX_FIELD = 1024  # characters kept per field
_MAX_LONG_FIELD = 8192  # ... for address lists and References
_LONG = frozenset({"to", "cc", "bcc", "references"})
_MAX_HEADER_BYTES = 256 * 1024  # header sections beyond this are not read further

_FOLD = re.compile(r"\r?\n(?=[ \t])")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]+")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def header_end(data: bytes) -> int:
    """Offset of the line end before the blank line that ends the header section (RFC 5322
    2.1), CRLF or bare LF; len(data) when there is none."""
    m = _HEADER_END.search(data)
    return m.start() if m else len(data)


def _header_section(data: bytes) -> bytes:
    """The bytes up to and including the blank line ending the header (or a bounded prefix)."""
    head = data[:_MAX_HEADER_BYTES]
    if head.startswith((b"\r\n", b"\n")):
        return b""  # empty header section
    m = _HEADER_END.search(head)
    return head[: m.end()] if m else head


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words; leave text as it is when they cannot be decoded."""
    if "=?" not in text:
        return text
    try:
        parts = email.header.decode_header(text)
    except Exception:
        return text
    out: list[str] = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        if charset is None or charset == "unknown-8bit":
            # Unencoded runs come back as raw-unicode-escape bytes.
            try:
                out.append(chunk.decode("raw-unicode-escape"))
            except Exception:
                out.append(chunk.decode("latin-1"))
            continue
        try:
            out.append(chunk.decode(charset, "replace"))
        except LookupError:
            out.append(chunk.decode("latin-1"))
        except Exception:
            out.append(chunk.decode("latin-1"))
    return "".join(out)


def _field_text(raw: str) -> str:
    # BytesParser hands non-ASCII octets over as surrogate escapes: take them as UTF-8
    # (RFC 6532), replacing what is not.
    try:
        text = raw.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        text = raw.encode("utf-8", "replace").decode("utf-8", "replace")
    text = _FOLD.sub("", text)  # RFC 5322:2.2.3 unfolding
    text = decode_words(text)
    return _CONTROL.sub(" ", text).strip()


def parse_headers(data: bytes) -> dict[str, str]:
    """The kept header fields of a message, decoded; never raises."""
    headers: dict[str, str] = {}
    try:
        section = _header_section(data)
        if not section:
            return headers
        parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
        msg = parser.parsebytes(section)
        for name, raw in msg.raw_items():
            key = name.strip().lower()
            if key not in KEPT_FIELDS:
                continue
            try:
                value = _field_text(str(raw))
            except Exception:
                continue
            if key in headers:
                if key not in _JOINED or not value:
                    continue
                value = f"{headers[key]}, {value}" if headers[key] else value
            limit = _MAX_LONG_FIELD if key in _LONG else _MAX_FIELD
            headers[key] = value[:limit]
    except Exception:
        pass
    return headers


def parse_meta(data: bytes, internaldate: float) -> MessageMeta:
    """What is stored beside a message at delivery: size, date, header fields, dot lines."""
    return MessageMeta(
        size=len(data),
        internaldate=internaldate,
        headers=parse_headers(data),
        has_dot_lines=data.startswith(b".") or b"\r\n." in data,
    )


def to_crlf(data: bytes) -> bytes:
    """Turn bare LF line ends into CRLF (CRLF stays as it is); for imports from files."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data  # CRLF throughout already (the common case for mail): no copies
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
