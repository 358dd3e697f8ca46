"""Mail in files: mbox (mboxrd) and Maildir, read and written.  Pure: no store, no network.

mbox: messages separated by "From " lines after an empty line (RFC 4155); a body line that
would look like one is quoted with ">" (mboxrd: ">From " becomes ">>From ", and reading takes
one ">" off).  The
Status, X-Status and X-Keywords fields carry flags (as mutt, Pine and Dovecot write them); they
and the other fields that only describe the mbox copy (X-UID, X-IMAP, X-IMAPbase,
Content-Length) are taken off on import, as Dovecot hides them from IMAP, so that a message
reads the same wherever it was kept and a re-import of an export finds it already there.

Maildir: one file per message in cur/ or new/, flags in the name after ":2," (D draft,
F flagged, P passed, R replied, S seen, T trashed); the internal date is the file's mtime.
"""

from __future__ import annotations

import calendar
import email.utils
import io
import mmap
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from netpost.mail.message import header_end, to_crlf

# Header fields that belong to the mbox file, not to the message.
_MBOX_LOCAL = (b"status", b"x-status", b"x-keywords", b"x-uid", b"x-imap", b"x-imapbase",
               b"content-length")
_UNQUOTE = re.compile(rb"(?m)^>(>*From )")
_QUOTE = re.compile(rb"(?m)^(>*From )")
_KEYWORD = re.compile(r"[!#$&'+\-.0-9A-Z^_`a-z|~]{1,64}")  # an IMAP atom, no wildcards

_STATUS_FLAGS = {ord("R"): "\\Seen"}
_XSTATUS_FLAGS = {ord("A"): "\\Answered", ord("F"): "\\Flagged", ord("T"): "\\Draft",
                  ord("D"): "\\Deleted"}
MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded", "R": "\\Answered",
                 "S": "\\Seen", "T": "\\Deleted"}


@dataclass(frozen=True)
class FileMessage:
    content: bytes  # CRLF line ends, without the mbox's own fields
    flags: frozenset[str]
    internaldate: float | None  # POSIX seconds, None when the file does not say


# --- mbox ---------------------------------------------------------------------------------------


def _split_mbox(f: BinaryIO) -> Iterator[tuple[bytes, bytes, int]]:
    """(From_ line, raw message, file offset after it) for each message.  A file is mapped
    into memory (the page cache does the reading; no line loop in Python)."""
    try:
        data: bytes | mmap.mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, io.UnsupportedOperation):  # empty, or not a real file
        data = f.read()
    try:
        yield from _split(data)
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def _split(data: bytes | mmap.mmap) -> Iterator[tuple[bytes, bytes, int]]:
    size = len(data)
    if data[:5] == b"From ":
        start = 0
    else:
        first = data.find(b"\nFrom ")
        if first < 0:
            return
        start = first + 1
    while start < size:
        eol = data.find(b"\n", start)
        if eol < 0:
            yield data[start:], b"", size
            return
        nxt = _next_separator(data, eol)
        end = size if nxt < 0 else nxt + 1
        yield data[start:eol + 1], data[eol + 1:end], end
        start = end


def _next_separator(data: bytes | mmap.mmap, pos: int) -> int:
    """The newline before the next From_ line: one that follows an empty line (as Dovecot and
    mutt read it), so an unquoted "From " inside a paragraph stays in the body."""
    while True:
        nxt = data.find(b"\nFrom ", pos)
        if nxt < 0:
            return -1
        before = data[max(nxt - 2, 0):nxt]
        if before.endswith(b"\n") or before == b"\n\r" or nxt == pos:
            return nxt
        pos = nxt + 1


_LOCAL_FIELD = re.compile(
    rb"(?im)^(?:status|x-status|x-keywords|x-uid|x-imap|x-imapbase|content-length)[ \t]*:")


def _mbox_fields(head: bytes) -> tuple[bytes, frozenset[str]]:
    """The header section without the mbox's own fields, and the flags those fields gave."""
    if not _LOCAL_FIELD.search(head):
        return head, frozenset()
    kept: list[bytes] = []
    flags: set[str] = set()
    dropping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):  # folded: belongs to the field before
            if not dropping:
                kept.append(line)
            continue
        name, colon, value = line.partition(b":")
        name = name.strip().lower()
        dropping = bool(colon) and name in _MBOX_LOCAL
        if not dropping:
            kept.append(line)
            continue
        text = value.decode("latin-1").strip()
        if name == b"status":
            flags.update(_STATUS_FLAGS[c] for c in text.encode() if c in _STATUS_FLAGS)
        elif name == b"x-status":
            flags.update(_XSTATUS_FLAGS[c] for c in text.encode() if c in _XSTATUS_FLAGS)
        elif name == b"x-keywords":
            flags.update(k for k in re.split(r"[\s,]+", text) if _KEYWORD.fullmatch(k))
    return b"\n".join(kept), frozenset(flags)


_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}


def _from_line_date(line: bytes) -> float | None:
    """The date of "From sender Mon Jan  1 00:00:00 2024" (asctime, taken as UTC), or None.
    Some writers put a time zone after the time or the year."""
    words = line.split()
    for i in range(2, len(words) - 3):
        month = _MONTHS.get(words[i][:3].decode("latin-1").lower())
        if month is None or len(words[i]) != 3:
            continue
        day, clock = words[i + 1], words[i + 2].split(b":")
        year = next((w for w in words[i + 3:i + 5] if w.isdigit() and len(w) == 4), None)
        if not day.isdigit() or year is None or len(clock) not in (2, 3) or \
                not all(c.isdigit() for c in clock):
            return None
        seconds = int(clock[2]) if len(clock) == 3 else 0
        try:
            return float(calendar.timegm((int(year), month, int(day), int(clock[0]),
                                          int(clock[1]), seconds, 0, 0, 0)))
        except (ValueError, OverflowError):
            return None
    return None


def _date_field(head: bytes) -> float | None:
    m = re.search(rb"(?im)^date:[ \t]*(.+)$", head)
    if not m:
        return None
    try:
        return email.utils.parsedate_to_datetime(m.group(1).decode("latin-1").strip()) \
            .timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def read_mbox(f: BinaryIO) -> Iterator[tuple[FileMessage, int]]:
    """Every message of an mbox file, with the offset reached (for a progress bar)."""
    for from_line, raw, offset in _split_mbox(f):
        # The empty line before the next From_ separates; it is not part of the message.
        if raw.endswith(b"\r\n\r\n"):
            raw = raw[:-2]
        elif raw.endswith(b"\n\n"):
            raw = raw[:-1]
        if b">From " in raw:
            raw = _UNQUOTE.sub(rb"\1", raw)
        end = header_end(raw)
        head, flags = _mbox_fields(raw[:end])
        rest = raw[end:]
        if not head and end:
            # Every field was the mbox's own: the line end after the last one goes too.
            rest = rest[2:] if rest.startswith(b"\r\n") else rest[1:]
        content = to_crlf(head + rest)
        when = _from_line_date(from_line) or _date_field(head)
        yield FileMessage(content, flags, when), offset


def mbox_entry(content: bytes, flags: frozenset[str], internaldate: float) -> bytes:
    """One message as an mboxrd entry (LF line ends), flags in Status/X-Status/X-Keywords."""
    data = content.replace(b"\r\n", b"\n")
    sender = b"MAILER-DAEMON"
    m = re.match(rb"(?i)return-path:[ \t]*<([^>\s]*)>", data)
    if m and m.group(1):
        sender = m.group(1)
    stamp = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(internaldate)).encode()
    fields = []
    status = b"RO" if "\\Seen" in flags else b"O"
    fields.append(b"Status: " + status + b"\n")
    x = "".join(c for c, f in (("A", "\\Answered"), ("F", "\\Flagged"), ("T", "\\Draft"),
                               ("D", "\\Deleted")) if f in flags)
    if x:
        fields.append(b"X-Status: " + x.encode() + b"\n")
    keywords = sorted(f for f in flags if not f.startswith("\\"))
    if keywords:
        fields.append(b"X-Keywords: " + " ".join(keywords).encode() + b"\n")
    body = _QUOTE.sub(rb">\1", data)
    if not body.endswith(b"\n"):
        body += b"\n"
    return b"From " + sender + b" " + stamp + b"\n" + b"".join(fields) + body + b"\n"


# --- Maildir ------------------------------------------------------------------------------------


def maildir_flags(name: str) -> frozenset[str]:
    info = name.rpartition(":2,")[2] if ":2," in name else ""
    return frozenset(MAILDIR_FLAGS[c] for c in info if c in MAILDIR_FLAGS)


def read_maildir(path: str) -> Iterator[tuple[str, FileMessage]]:
    """(file name, message) of every message in cur/ and new/, oldest name first."""
    for sub in ("cur", "new"):
        directory = os.path.join(path, sub)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith("."):
                continue
            full = os.path.join(directory, name)
            try:
                with open(full, "rb") as f:
                    data = f.read()
                mtime = os.stat(full).st_mtime
            except (FileNotFoundError, IsADirectoryError):
                continue
            yield name, FileMessage(to_crlf(data), maildir_flags(name), mtime)


def is_maildir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "cur")) or os.path.isdir(os.path.join(path, "new"))


def make_maildir(path: str) -> None:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)


def maildir_base(uidvalidity: int, uid: int, internaldate: float) -> str:
    """A file name (before ":2,") that is the same every time the message is exported."""
    return f"{int(internaldate)}.U{uidvalidity}_{uid}.{socket.gethostname() or 'netpost'}"


def write_maildir(path: str, base: str, content: bytes, flags: frozenset[str],
                  internaldate: float) -> None:
    """Write tmp/ -> fsync -> rename to cur/BASE:2,FLAGS (the Maildir delivery rule)."""
    info = "".join(sorted(c for c, f in MAILDIR_FLAGS.items() if f in flags))
    tmp = os.path.join(path, "tmp", base)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(content.replace(b"\r\n", b"\n"))
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.utime(tmp, (internaldate, internaldate))
    os.rename(tmp, os.path.join(path, "cur", f"{base}:2,{info}"))
