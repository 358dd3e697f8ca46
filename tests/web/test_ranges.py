"""Range selection and conditional requests (web/ranges.py), without a server."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from netpost.web.ranges import (
    MAX_RANGES,
    Unsatisfiable,
    etag_of,
    http_date,
    if_range_holds,
    parse_http_date,
    preconditions,
    select_ranges,
)


def test_single_ranges() -> None:
    assert select_ranges("bytes=0-99", 1000) == [(0, 99)]
    assert select_ranges("bytes=-500", 1000) == [(500, 999)]
    assert select_ranges("bytes=500-", 1000) == [(500, 999)]
    assert select_ranges("bytes=990-2000", 1000) == [(990, 999)]  # clipped to the end
    assert select_ranges("bytes=-5000", 1000) == [(0, 999)]  # suffix longer than the file
    assert select_ranges("BYTES = 0-0", 1000) == [(0, 0)]
    assert select_ranges("bytes=0-", 0) == Unsatisfiable()


def test_unsatisfiable() -> None:
    assert select_ranges("bytes=1000-", 1000) == Unsatisfiable()
    assert select_ranges("bytes=5000-6000", 1000) == Unsatisfiable()
    assert select_ranges("bytes=-0", 1000) == Unsatisfiable()
    assert select_ranges("bytes=-10", 0) == Unsatisfiable()
    # One satisfiable range is enough: the others are dropped.
    assert select_ranges("bytes=5000-6000, 0-1", 1000) == [(0, 1)]


def test_ignored_fields() -> None:
    for field in ("items=0-1", "bytes", "bytes=", "bytes=abc", "bytes=5-1", "bytes=1-2-3",
                  "bytes=0x10-20", "bytes=--1", "bytes= 1 - 2", "bytes=99999999999999999999-"):
        assert select_ranges(field, 1000) is None, field
    many = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES + 1))
    assert select_ranges(many, 10_000) is None  # more parts than a multipart answer may have


def test_multiple_ranges_sorted_and_coalesced() -> None:
    assert select_ranges("bytes=20-29,0-9", 100) == [(0, 9), (20, 29)]
    assert select_ranges("bytes=0-9,5-14,15-19", 100) == [(0, 19)]  # overlapping, touching
    assert select_ranges("bytes=0-9,-10", 100) == [(0, 9), (90, 99)]
    assert select_ranges("bytes=0-9,,", 100) == [(0, 9)]


@given(st.integers(0, 5000), st.lists(st.tuples(st.integers(0, 6000), st.integers(0, 6000)),
                                      min_size=1, max_size=8))
def test_ranges_property(size: int, pairs: list[tuple[int, int]]) -> None:
    field = "bytes=" + ",".join(f"{min(a, b)}-{max(a, b)}" for a, b in pairs)
    got = select_ranges(field, size)
    wanted = {i for a, b in pairs for i in range(min(a, b), min(max(a, b), size - 1) + 1)}
    if not wanted:
        assert got == Unsatisfiable()
        return
    assert isinstance(got, list)
    covered = {i for a, b in got for i in range(a, b + 1)}
    assert covered == wanted
    for (_, b1), (a2, _) in zip(got, got[1:], strict=False):
        assert b1 + 1 < a2  # ascending, disjoint, not touching


def test_dates() -> None:
    assert http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"
    for text in ("Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
                 "Sun Nov  6 08:49:37 1994"):
        assert parse_http_date(text) == 784111777, text
    assert parse_http_date("yesterday") is None
    assert parse_http_date("") is None


def test_preconditions() -> None:
    etag, mtime = '"abc"', 784111777.5
    date = "Sun, 06 Nov 1994 08:49:37 GMT"
    older = "Sat, 05 Nov 1994 08:49:37 GMT"
    assert preconditions("GET", {}, etag, mtime) == "ok"
    assert preconditions("GET", {"if-none-match": '"abc"'}, etag, mtime) == "not-modified"
    assert preconditions("HEAD", {"if-none-match": 'W/"abc"'}, etag, mtime) == "not-modified"
    assert preconditions("GET", {"if-none-match": '"x", "abc"'}, etag, mtime) == "not-modified"
    assert preconditions("GET", {"if-none-match": "*"}, etag, mtime) == "not-modified"
    assert preconditions("GET", {"if-none-match": '"x"'}, etag, mtime) == "ok"
    assert preconditions("GET", {"if-modified-since": date}, etag, mtime) == "not-modified"
    assert preconditions("GET", {"if-modified-since": older}, etag, mtime) == "ok"
    assert preconditions("GET", {"if-modified-since": "garbage"}, etag, mtime) == "ok"
    # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
    assert preconditions("GET", {"if-none-match": '"x"', "if-modified-since": date},
                         etag, mtime) == "ok"
    assert preconditions("GET", {"if-match": '"x"'}, etag, mtime) == "failed"
    assert preconditions("GET", {"if-match": 'W/"abc"'}, etag, mtime) == "failed"  # strong
    assert preconditions("GET", {"if-match": '"abc"'}, etag, mtime) == "ok"
    assert preconditions("GET", {"if-unmodified-since": older}, etag, mtime) == "failed"
    assert preconditions("GET", {"if-unmodified-since": date}, etag, mtime) == "ok"


def test_if_range() -> None:
    etag, mtime = '"abc"', 784111777.5
    assert if_range_holds('"abc"', etag, mtime)
    assert not if_range_holds('W/"abc"', etag, mtime)
    assert not if_range_holds('"old"', etag, mtime)
    assert if_range_holds("Sun, 06 Nov 1994 08:49:37 GMT", etag, mtime)
    assert not if_range_holds("Sat, 05 Nov 1994 08:49:37 GMT", etag, mtime)


def test_etag_changes_with_the_file(tmp_path: object) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "f"
    p.write_bytes(b"one")
    first = etag_of(os.stat(p))
    assert first.startswith('"') and first.endswith('"')
    assert etag_of(os.stat(p)) == first
    tmp = Path(str(tmp_path)) / "g"
    tmp.write_bytes(b"two")
    os.utime(tmp, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns))
    os.replace(tmp, p)  # same size and mtime, a new inode (an upload's rename)
    assert etag_of(os.stat(p)) != first
