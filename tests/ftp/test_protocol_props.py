"""Property tests for the sans-I/O FTP engine and the LIST/MLSx line formatters.

The session driver (canned answers to every event, reply checks) is the fuzz target's,
fuzz/fuzz_ftp.py, so the fuzzer and these properties drive the engine the same way.
"""

from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from fuzz.fuzz_ftp import check_replies, run, settings_for
from netpost.files.tree import Entry, format_facts, format_list
from netpost.ftp.protocol import FTPConnection, FTPSettings, TransferRequest

PROPS = settings(max_examples=300, deadline=None)

TOKENS = [
    b"USER alice\r\n", b"user bob\r\n", b"PASS ok\r\n", b"PASS bad\r\n", b"AUTH TLS\r\n",
    b"AUTH SSL\r\n", b"PBSZ 0\r\n", b"PROT P\r\n", b"PROT C\r\n", b"CCC\r\n", b"PASV\r\n",
    b"EPSV\r\n", b"EPSV ALL\r\n", b"EPSV 2\r\n", b"PORT 192,0,2,7,4,1\r\n",
    b"PORT 10,0,0,1,4,1\r\n", b"PORT 192,0,2,7,0,25\r\n", b"EPRT |1|192.0.2.7|2000|\r\n",
    b"EPRT |2|2001:db8::7|2000|\r\n", b"EPRT |2|::ffff:192.0.2.7|1500|\r\n",
    b"EPRT |1|198.51.100.1|2000|\r\n", b"LIST\r\n", b"LIST -la\r\n", b"NLST -a sub\r\n",
    b"MLSD\r\n", b"RETR a\r\n", b"STOR b\r\n", b"APPE c\r\n", b"STOU\r\n", b"STOU hint\r\n",
    b"REST 100\r\n", b"REST x\r\n", b"TYPE A\r\n", b"TYPE I\r\n", b"CWD /x\r\n", b"CDUP\r\n",
    b"XPWD\r\n", b"PWD\r\n", b"MKD d\r\n", b"RMD d\r\n", b"DELE f\r\n", b"RNFR a\r\n",
    b"RNTO b\r\n", b"SIZE a\r\n", b"MDTM a\r\n", b"MLST a\r\n", b"STAT\r\n", b"STAT 213 x\r\n",
    b"ABOR\r\n", b"\xff\xf4\xff\xf2ABOR\r\n", b"NOOP\r\n", b"QUIT\r\n", b"FEAT\r\n",
    b"OPTS UTF8 ON\r\n", b"HELP\r\n", b"SYST\r\n", b"SITE CHMOD 755 a\r\n", b"SITE HELP\r\n",
    b"MODE S\r\n", b"STRU F\r\n", b"ALLO 9\r\n", b"REIN\r\n", b"ACCT x\r\n", b"SMNT /\r\n",
    "MKD caf\u00e9\r\n".encode(), b"MKD caf\xe9\r\n", b"RETR a\x00b\r\n", b"\r", b"\n",
    b"\r\n", b"x" * 120, b" ",
]

stream = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=30)), max_size=50)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


@PROPS
@given(flags=st.integers(0, 255), pieces=stream, cuts=st.lists(st.integers(0), max_size=12))
def test_any_bytes_never_raise_and_replies_are_well_formed(
        flags: int, pieces: list[bytes], cuts: list[int]) -> None:
    data = b"".join(pieces)
    session = run(settings_for(flags), split(data, cuts), defer_transfers=bool(flags & 128),
                  idle=bool(cuts) and cuts[0] % 2 == 0)
    out = b"".join(session.out)
    check_replies(out)
    assert out.startswith(b"220 ")
    assert session.conn.closed
    # Every line the server said is in the trace, and no password is.
    said = [line for d, line in session.trace if d == "S"]
    assert len(said) == out.count(b"\r\n")


@PROPS
@given(raw=st.binary(max_size=400), flags=st.integers(0, 255), step=st.integers(1, 64))
def test_random_bytes_never_raise(raw: bytes, flags: int, step: int) -> None:
    session = run(settings_for(flags), [raw[i:i + step] for i in range(0, len(raw), step)],
                  defer_transfers=bool(flags & 128))
    check_replies(b"".join(session.out))


@PROPS
@given(pieces=stream, cuts=st.lists(st.integers(0), max_size=20),
       implicit=st.booleans(), short=st.booleans(), ipv4=st.booleans())
# the 20th error in one read: one 421 and nothing after it (it was answered twice)
@example(pieces=[b"\n" * 21], cuts=[], implicit=False, short=False, ipv4=True)
def test_chunking_never_changes_replies_or_events(
        pieces: list[bytes], cuts: list[int], implicit: bool, short: bool, ipv4: bool) -> None:
    # No AUTH TLS here: bytes that arrive in the same read as AUTH TLS are dropped on purpose
    # (CVE-2011-0411), so there the cut matters by design.
    settings = FTPSettings(client_address="192.0.2.7" if ipv4 else "2001:db8::7",
                           tls_available=False, tls_active=implicit,
                           allow_plaintext_login=True, max_line=64 if short else 4096)
    data = b"".join(pieces)
    whole = run(settings, [data])
    cut = run(settings, split(data, cuts))
    one_by_one = run(settings, [data[i:i + 1] for i in range(len(data))])
    assert b"".join(cut.out) == b"".join(whole.out)
    assert cut.events == whole.events
    assert b"".join(one_by_one.out) == b"".join(whole.out)
    assert one_by_one.events == whole.events


def test_list_options_are_not_a_path() -> None:
    """`LIST -la`, `NLST -a dir` (sent by many clients): the options are dropped."""
    for line, path in ((b"LIST -la\r\n", ""), (b"LIST -a -l sub dir\r\n", "sub dir"),
                       (b"NLST -a\r\n", ""), (b"LIST sub\r\n", "sub"), (b"MLSD -x\r\n", "-x")):
        conn = FTPConnection(FTPSettings(client_address="192.0.2.7",
                                         allow_plaintext_login=True))
        conn.receive_data(b"USER a\r\nPASS ok\r\n")
        conn.next_event()
        conn.accept_login("a@example.test")
        conn.receive_data(b"PORT 192,0,2,7,4,1\r\n" + line)
        event = conn.next_event()
        assert isinstance(event, TransferRequest) and event.path == path, (line, event)


def test_continuation_lines_starting_with_digits_are_padded() -> None:
    conn = FTPConnection(FTPSettings(client_address="192.0.2.7"))
    conn._reply(213, ["Status:", "213 end?", "213", "213abc", "2", "End"])
    assert conn.data_to_send() == (b"213-Status:\r\n 213 end?\r\n 213\r\n 213abc\r\n2\r\n"
                                   b"213 End\r\n")


# --- LIST and MLSx lines ------------------------------------------------------------------------

names = st.text(min_size=1, max_size=40).filter(lambda n: "/" not in n)
entries = st.builds(
    Entry, name=names, is_dir=st.booleans(), size=st.integers(0, 2**63),
    mtime=st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(-1e12, 1e12)),
    mode=st.integers(0, 0o7777))


def shown(name: str) -> str:
    """The name as a listing shows it: control characters and lone surrogates as "?"."""
    return "".join("?" if ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or 0xd800 <= ord(c) <= 0xdfff
                   else c for c in name)


def one_line(line: str) -> None:
    encoded = line.encode("utf-8", "surrogateescape")
    assert b"\r" not in encoded and b"\n" not in encoded, line
    assert "\x00" not in line


@PROPS
@given(entry=entries, now=st.floats(0, 4e9))
@example(Entry("bad\r\n226 x", False, 1, 0.0, 0o644), 0.0)
@example(Entry("\udcff\x85", True, 0, math.nan, 0o7777), 1e9)
def test_list_line_is_one_line_ending_in_the_name(entry: Entry, now: float) -> None:
    line = format_list(entry, now)
    one_line(line)
    assert line.endswith(" " + shown(entry.name)), line
    assert line[0] == ("d" if entry.is_dir else "-")
    fields = line.split(None, 8)
    assert len(fields) >= 8 and fields[4] == str(entry.size), line


@PROPS
@given(entry=entries, kind=st.sampled_from([None, "file", "dir", "cdir", "pdir"]),
       vpath=st.text(max_size=40), override=st.one_of(st.none(), st.text(max_size=40)),
       facts=st.one_of(st.none(), st.lists(st.sampled_from(
           ["type", "size", "modify", "perm", "unique", "TYPE", "bogus"]))))
@example(Entry("x\r\n", False, 1, 0.0, 0o644), None, "/x\r\n", None, None)
def test_facts_line_is_one_line_ending_in_the_name(
        entry: Entry, kind: str | None, vpath: str, override: str | None,
        facts: list[str] | None) -> None:
    line = format_facts(entry, vpath, kind=kind, name=override, facts=facts)
    one_line(line)
    name = shown(entry.name if override is None else override)
    facts_part, sep, rest = line.partition(" ")
    assert sep == " " and rest == name, line  # RFC 3659 7.2: facts, one space, the name
    for fact in filter(None, facts_part.split(";")):
        key, eq, value = fact.partition("=")
        assert eq and key.isalpha() and ";" not in value and " " not in value, fact
    assert facts_part == "" or facts_part.endswith(";")
