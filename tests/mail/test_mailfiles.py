"""mbox and Maildir reading and writing: round trips (property-based), flags, quoting, dates."""

from __future__ import annotations

import io
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from netpost.mail.mailfiles import (
    FileMessage,
    maildir_flags,
    make_maildir,
    mbox_entry,
    read_maildir,
    read_mbox,
    write_maildir,
)

line = st.one_of(
    st.sampled_from([b"From here", b">From there", b">>From x", b"", b".", b"From:",
                     b"Status: RO"]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
flags = st.frozensets(st.sampled_from(["\\Seen", "\\Answered", "\\Flagged", "\\Draft",
                                       "\\Deleted", "$Label1", "Junk"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(line, max_size=8), st.lists(line, max_size=8), flags),
                min_size=1, max_size=5))
def test_mbox_round_trip(messages: list[tuple[list[bytes], list[bytes], frozenset[str]]]) -> None:
    written = []
    out = io.BytesIO()
    for head, body, f in messages:
        header = [b"Subject: s" + h.replace(b":", b"") for h in head if h]  # real fields
        content = b"\r\n".join([*header, b"", *body]) + b"\r\n"
        written.append((content, f))
        out.write(mbox_entry(content, f, 1_700_000_000.0))
    back = [m for m, _ in read_mbox(io.BytesIO(out.getvalue()))]
    assert [(m.content, m.flags) for m in back] == written
    assert all(m.internaldate == 1_700_000_000.0 for m in back)


def test_mbox_details() -> None:
    raw = (b"From a@example.com Mon Jan  1 00:00:00 2024\n"
           b"Status: RO\nX-Status: AFT\nX-Keywords: $Label1 bad(word\nX-UID: 7\n"
           b"Subject: one\n  folded\n\nbody\n>From here\n\n"
           b"From b@example.com Tue Feb  2 10:00:00 2021\r\n"
           b"Date: Tue, 02 Feb 2021 10:00:00 +0000\r\n\r\nsecond\r\n")
    (m1, o1), (m2, o2) = read_mbox(io.BytesIO(raw))
    assert m1.content == b"Subject: one\r\n  folded\r\n\r\nbody\r\nFrom here\r\n"
    assert m1.flags == {"\\Seen", "\\Answered", "\\Flagged", "\\Draft", "$Label1"}
    assert m1.internaldate == 1704067200.0
    assert m2.content == b"Date: Tue, 02 Feb 2021 10:00:00 +0000\r\n\r\nsecond\r\n"
    assert m2.flags == frozenset() and o2 == len(raw) and 0 < o1 < o2
    assert list(read_mbox(io.BytesIO(b"no mbox here\n"))) == []


def test_mbox_from_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "box"
    path.write_bytes(mbox_entry(b"Subject: x\r\n\r\nFrom y\r\n", frozenset({"\\Seen"}), 0.0) * 3)
    with path.open("rb") as f:  # mapped, not read
        got = list(read_mbox(f))
    assert len(got) == 3 and got[0][0].content == b"Subject: x\r\n\r\nFrom y\r\n"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with empty.open("rb") as f:
        assert list(read_mbox(f)) == []


def test_maildir(tmp_path: Path) -> None:
    make_maildir(str(tmp_path))
    write_maildir(str(tmp_path), "1.U1_1.host", b"Subject: a\r\n\r\nx\r\n",
                  frozenset({"\\Seen", "\\Flagged", "$Forwarded", "Junk"}), 1_000_000.0)
    (tmp_path / "new" / "2.host").write_bytes(b"Subject: b\n\ny\n")
    got = list(read_maildir(str(tmp_path)))
    assert got[0][0] == "1.U1_1.host:2,FPS"
    assert got[0][1] == FileMessage(b"Subject: a\r\n\r\nx\r\n",
                                    frozenset({"\\Seen", "\\Flagged", "$Forwarded"}), 1_000_000.0)
    assert got[1][1].content == b"Subject: b\r\n\r\ny\r\n" and got[1][1].flags == frozenset()
    assert os.listdir(tmp_path / "tmp") == []
    assert maildir_flags("x:2,DRT") == {"\\Draft", "\\Answered", "\\Deleted"}
    assert maildir_flags("x") == frozenset()

