"""Range requests and conditional requests for static files (RFC 9110 13 and 14), sans-I/O.

`select_ranges` reads a Range field against a representation's size; `preconditions` decides
between 304, 412 and going on; `if_range_holds` decides whether a Range applies at all.
Validators are a strong ETag made from the file's identity, size and modification time, and
Last-Modified at one-second resolution (HTTP-date).
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Literal

MAX_RANGES = 16
"""Ranges a multipart/byteranges answer may carry after coalescing; a Range field asking for
more parts (or more than 4 * MAX_RANGES specs) is ignored and the whole file sent (RFC 9110
14.2 lets a server ignore a Range field, and warns of many small ranges as a denial of
service)."""


@dataclass(frozen=True)
class Unsatisfiable:
    """No range of the field overlaps the representation: 416 with `bytes */size`."""


Ranges = list[tuple[int, int]]  # (first, last) inclusive byte positions, ascending, disjoint

_INT_RANGE = re.compile(r"^(\d{1,19})-(\d{0,19})$")
_SUFFIX_RANGE = re.compile(r"^-(\d{1,19})$")


def select_ranges(field: str, size: int) -> Ranges | Unsatisfiable | None:
    """The byte ranges to send for Range field `field` of a `size`-octet representation.

    None: ignore the field and send everything (200): a unit other than bytes, a syntax error,
    first-pos > last-pos (RFC 9110 14.1.1: invalid), or too many ranges.  Unsatisfiable: every
    range starts at or beyond the end, or is a zero-length suffix (416, RFC 9110 15.5.17).
    Otherwise the satisfiable ranges, clipped to the size, sorted and coalesced where they
    overlap or touch (RFC 9110 14.2 allows it).
    """
    unit, sep, spec = field.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in spec.split(",")]
    specs = [s for s in specs if s]  # RFC 9110 5.6.1: empty list elements are ignored
    if not specs or len(specs) > 4 * MAX_RANGES:
        return None
    wanted: Ranges = []
    for s in specs:
        m = _INT_RANGE.match(s)
        if m is not None:
            first = int(m.group(1))
            last = int(m.group(2)) if m.group(2) else None
            if last is not None and last < first:
                return None  # invalid: the whole field is ignored
            if first >= size:
                continue  # unsatisfiable on its own
            wanted.append((first, size - 1 if last is None else min(last, size - 1)))
            continue
        m = _SUFFIX_RANGE.match(s)
        if m is None:
            return None
        length = int(m.group(1))
        if length == 0 or size == 0:
            continue
        wanted.append((max(0, size - length), size - 1))
    if not wanted:
        return Unsatisfiable()
    wanted.sort()
    merged: Ranges = [wanted[0]]
    for first, last in wanted[1:]:
        prev_first, prev_last = merged[-1]
        if first <= prev_last + 1:
            merged[-1] = (prev_first, max(prev_last, last))
        else:
            merged.append((first, last))
    if len(merged) > MAX_RANGES:
        return None
    return merged


# -- validators --------------------------------------------------------------------------------


def etag_of(st: os.stat_result) -> str:
    """A strong entity tag for a file: changes when its content is replaced (a new inode, as
    an upload's rename makes), grows, shrinks or is written (mtime in nanoseconds)."""
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()
    return '"' + hashlib.sha256(key).hexdigest()[:24] + '"'


def http_date(ts: float) -> str:
    """IMF-fixdate (RFC 9110 5.6.7), e.g. "Sun, 06 Nov 1994 08:49:37 GMT"."""
    return email.utils.formatdate(max(0.0, ts), usegmt=True)


def parse_http_date(text: str) -> float | None:
    """POSIX seconds of an HTTP-date (any of the three forms), None if it is not one."""
    try:
        parsed = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def _tags(field: str) -> list[str] | Literal["*"]:
    """The entity tags of an If-Match / If-None-Match field ("*" for any)."""
    if field.strip() == "*":
        return "*"
    return [t.strip() for t in field.split(",") if t.strip()]


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def _strong_match(tags: list[str] | Literal["*"], etag: str) -> bool:
    if tags == "*":
        return True
    return any(not t.startswith("W/") and t == etag for t in tags)


def _weak_match(tags: list[str] | Literal["*"], etag: str) -> bool:
    if tags == "*":
        return True
    return any(_opaque(t) == _opaque(etag) for t in tags)


Precondition = Literal["ok", "not-modified", "failed"]


def preconditions(method: str, headers: dict[str, str], etag: str, mtime: float) -> Precondition:
    """RFC 9110 13.2.2, in its order: If-Match, If-Unmodified-Since, If-None-Match,
    If-Modified-Since.  "not-modified" is a 304 (GET/HEAD), "failed" a 412.

    `headers` maps lower-case field names to values (repeated fields joined with ", ").
    """
    seconds = int(mtime)  # Last-Modified has one-second resolution
    if "if-match" in headers:
        if not _strong_match(_tags(headers["if-match"]), etag):
            return "failed"
    elif "if-unmodified-since" in headers:
        date = parse_http_date(headers["if-unmodified-since"])
        if date is not None and seconds > date:
            return "failed"
    if "if-none-match" in headers:
        if _weak_match(_tags(headers["if-none-match"]), etag):
            return "not-modified" if method in ("GET", "HEAD") else "failed"
    elif "if-modified-since" in headers and method in ("GET", "HEAD"):
        date = parse_http_date(headers["if-modified-since"])
        if date is not None and seconds <= date:
            return "not-modified"
    return "ok"


def if_range_holds(field: str, etag: str, mtime: float) -> bool:
    """Whether a Range applies under If-Range (RFC 9110 13.1.5): a strong ETag that matches,
    or exactly the Last-Modified date."""
    field = field.strip()
    if field.startswith('"') or field.startswith("W/"):
        return field == etag  # W/ never matches: a strong comparison is required
    date = parse_http_date(field)
    return date is not None and int(date) == int(mtime)


def content_range(first: int, last: int, size: int) -> str:
    return f"bytes {first}-{last}/{size}"
