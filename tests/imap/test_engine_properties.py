"""Property tests for the sans-I/O IMAP engine (docs/engines.md) and its framing helpers.

Arbitrary bytes in arbitrary chunks never raise and always get well-formed responses; the
same input cut at other points gives the same events and output; literals of every kind
({n}, {n+}, ~{n}) deliver their octets exactly; sequence sets, modified UTF-7 and the
response strings round-trip; and every bound (line, literal, nesting, errors) is answered
with a tagged BAD/NO without buffering what it refuses.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from netpost.auth.sasl import Credentials
from netpost.imap import commands as cmds
from netpost.imap.parser import (
    MAX_NUMBER,
    Atom,
    CommandReader,
    Continue,
    Frame,
    Limits,
    ParseError,
    String,
    Token,
    format_sequence_set,
    parse_sequence_set,
    tokenize,
)
from netpost.imap.protocol import (
    Event,
    IdleDone,
    IMAPConnection,
    IMAPSettings,
    LoginRequest,
    Request,
    StartTLS,
)
from netpost.imap.wire import (
    MUTF7Error,
    Raw,
    Value,
    astring,
    decode_mutf7,
    encode_mutf7,
    encode_value,
    quoted_or_literal,
)

PROPS = settings(max_examples=200, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DEFAULT = IMAPSettings(allow_plaintext_auth=True)
SMALL = IMAPSettings(allow_plaintext_auth=True, max_line=96, max_literal=40, max_errors=6)

DEFAULT_LIMITS = Limits()

LOGIN = b"L1 LOGIN alice good\r\n"
PREFIXES = [b"", LOGIN, LOGIN + b"S1 SELECT INBOX\r\n"]

COMMANDS = [
    b"a1 CAPABILITY\r\n", b"a2 NOOP\r\n", b"a3 LOGOUT\r\n", b"a4 LOGIN alice good\r\n",
    b'a5 LOGIN "alice" {4}\r\ngood\r\n', b"a6 LOGIN alice bad\r\n",
    b"a7 LOGIN {5+}\r\nalice {4+}\r\ngood\r\n", b"a8 AUTHENTICATE PLAIN\r\n",
    b"AGFsaWNlAGdvb2Q=\r\n", b"a9 AUTHENTICATE PLAIN AGFsaWNlAGdvb2Q=\r\n",
    b"b1 AUTHENTICATE LOGIN\r\n", b"YWxpY2U=\r\n", b"Z29vZA==\r\n", b"*\r\n", b"=\r\n",
    b"b2 AUTHENTICATE PLAIN =\r\n", b"b3 SELECT INBOX\r\n", b"b4 EXAMINE INBOX (CONDSTORE)\r\n",
    b"b5 SELECT INBOX (QRESYNC (1 2 1:5 (1:3 1:3)))\r\n",
    b"b6 FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT \"To\")]<0.10>)\r\n",
    b"b7 UID FETCH 1:* (UID) (CHANGEDSINCE 1 VANISHED)\r\n", b"b8 UID SEARCH ALL\r\n",
    b"b9 SEARCH CHARSET UTF-8 SUBJECT {2+}\r\n\xc3\xa4\r\n", b"c1 STORE 1 +FLAGS (\\Seen)\r\n",
    b"c2 APPEND INBOX (\\Seen) {5+}\r\nhello\r\n", b"c3 APPEND INBOX {5}\r\nhello\r\n",
    b"c4 APPEND INBOX ~{3+}\r\n\x00\x01\x02\r\n",
    b'c5 APPEND INBOX "01-Jan-2020 00:00:00 +0000" {1+}\r\nx {1+}\r\ny\r\n',
    b"c6 IDLE\r\n", b"DONE\r\n", b"c7 ENABLE QRESYNC UTF8=ACCEPT IMAP4rev2\r\n",
    b'c8 ID ("name" "x" "version" NIL)\r\n', b"c9 ID NIL\r\n", b"d1 CLOSE\r\n",
    b'd2 LIST "" *\r\n', b'd3 LIST (SUBSCRIBED) "" ("a" "b") RETURN (STATUS (MESSAGES))\r\n',
    b"d4 STATUS INBOX (MESSAGES UIDNEXT)\r\n", b"d5 CREATE &AOQ- (USE (\\Sent))\r\n",
    b"d6 RENAME a b\r\n", b"d7 UID EXPUNGE 1:3\r\n", b"d8 COPY 1 Trash\r\n",
    b"d9 UID MOVE 1:* Trash\r\n", b"e1 SETQUOTA \"\" (STORAGE 100)\r\n", b"e2 UNSELECT\r\n",
    b"e3 FETCH 1 " + b"(" * 20 + b")" * 20 + b"\r\n", b"e4 APPEND INBOX {999999999}\r\n",
    b"e5 APPEND INBOX {60+}\r\n", b"e6 LOGIN a {0}\r\n\r\n", b"e7 STARTTLS\r\n",
    b"e8 FETCH 1 BODY[1.2.MIME]\r\n", b"e9 NAMESPACE\r\n", b"UID FETCH\r\n",
    b"x" * 120, b"{", b"}", b"{3}\r\n", b"~{2+}\r\n", b"(", b")", b'"', b"\\", b" ",
    b"\r\n", b"\n", b"\r", b"\x00", b"\xff",
]
COMPRESS = b"f1 COMPRESS DEFLATE\r\n"
STREAMS = st.lists(st.one_of(st.sampled_from(COMMANDS), st.binary(max_size=30)), max_size=30)


def answer(conn: IMAPConnection, event: Event, *, any_login: bool = False) -> None:
    """What a session would do, deterministically (logins succeed with password "good")."""
    if isinstance(event, StartTLS):
        conn.tls_started()
    elif isinstance(event, LoginRequest):
        conn.login_done(event.tag, any_login or event.credentials.password == "good")
    elif isinstance(event, IdleDone):
        if event.tag:
            conn.complete(event.tag, "OK", "IDLE terminated")
        else:
            conn.defer()  # the engine answered the bad line itself (server.idle_done)
    else:
        assert isinstance(event, Request)
        cmd = event.command
        if cmd.name == "IDLE":
            conn.start_idle(cmd.tag)
            return
        if cmd.name in ("SELECT", "EXAMINE"):
            conn.set_selected(True, readonly=cmd.name == "EXAMINE")
            conn.untagged(b"0 EXISTS")
        elif cmd.name in ("CLOSE", "UNSELECT"):
            conn.set_selected(False)
        elif cmd.name == "APPEND":
            assert isinstance(cmd, cmds.Append)
            conn.complete(cmd.tag, "OK", f"[APPENDUID 1 1:{len(cmd.messages)}] APPEND done")
            return
        conn.complete(cmd.tag, "OK", f"{cmd.name} completed")


@dataclass
class Run:
    events: list[Event] = field(default_factory=list)
    output: bytes = b""
    closed: bool = False
    max_buffer: int = 0  # largest reader buffer seen after a chunk was handled


def drive(chunks: Iterable[bytes], config: IMAPSettings = DEFAULT, *, tls: bool = True,
          any_login: bool = False) -> Run:
    """Feed chunks as a session does; handle events until the engine is quiet each time."""
    conn = IMAPConnection(config, tls_active=tls, trace=lambda d, line: None)
    conn.greeting("imap.test")
    run = Run()
    out = bytearray(conn.data_to_send())

    def settle() -> None:
        while True:
            while (event := conn.next_event()) is not None:
                run.events.append(event)
                answer(conn, event, any_login=any_login)
            data = conn.data_to_send()  # may turn COMPRESS on and release held input
            out.extend(data)
            if not data:
                return

    for chunk in chunks:
        if not chunk:
            continue
        conn.receive_data(chunk)
        settle()
        if conn.closed:
            break
        reader = conn._reader
        run.max_buffer = max(run.max_buffer, len(reader._buf), len(reader._literal))
    conn.receive_data(b"")
    settle()
    assert conn.closed
    run.output = bytes(out)
    run.closed = conn.closed
    return run


def split(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


# A tagged response's tag: ASTRING-CHARs except "+" (RFC 9051 9), as the engine echoes it.
TAG = rb"[^\x00-\x20\x7f-\xff(){%*\"\\+]+"
RESPONSE = re.compile(rb"\* [A-Z0-9]|\+ |\+\Z|" + TAG + rb" (OK|NO|BAD)( |\Z)")
LITERAL_END = re.compile(rb"~?\{(\d+)\}\Z")


def check_output(out: bytes, stream: bytes) -> list[bytes]:
    """Split the output into responses (untagged ones may hold literals); each is a status,
    untagged data or a continuation; tagged ones carry a tag the client sent."""
    responses: list[bytes] = []
    pos = 0
    while pos < len(out):
        end = out.find(b"\r\n", pos)
        assert end >= 0, f"response not ended by CRLF: {out[pos:pos + 200]!r}"
        line = out[pos:end]
        response = line
        while (m := LITERAL_END.search(line)) is not None and response.startswith(b"* "):
            size = int(m.group(1))
            literal_start = end + 2
            end = out.find(b"\r\n", literal_start + size)
            assert end >= 0
            line = out[literal_start + size:end]
            response += b"\r\n" + out[literal_start:literal_start + size] + line
        pos = end + 2
        assert RESPONSE.match(response), response[:200]
        text = response if not response.startswith(b"* ") else line
        assert b"\r" not in text and b"\n" not in text and b"\x00" not in text, response
        if not response.startswith((b"* ", b"+")):
            tag = response.split(b" ", 1)[0]
            assert tag in stream, (tag, stream)
        responses.append(response)
    return responses


# --- robustness -----------------------------------------------------------------------------


@PROPS
@given(pieces=STREAMS, cuts=st.lists(st.integers(0), max_size=12), small=st.booleans(),
       tls=st.booleans(), prefix=st.sampled_from(PREFIXES), compress=st.booleans(),
       any_login=st.booleans())
def test_arbitrary_streams_never_raise(pieces: list[bytes], cuts: list[int], small: bool,
                                       tls: bool, prefix: bytes, compress: bool,
                                       any_login: bool) -> None:
    if compress:
        pieces.insert(len(pieces) // 2, COMPRESS)
    stream = prefix + b"".join(pieces)
    config = SMALL if small else DEFAULT
    run = drive(split(stream, cuts), config, tls=tls, any_login=any_login)
    assert run.output.startswith(b"* OK [CAPABILITY ")
    if not compress:
        check_output(run.output, stream)
        # Nothing is buffered whole: a partial line or literal stays within its bound.
        assert run.max_buffer <= max(config.max_line, config.max_literal), run.max_buffer


@PROPS
@given(pieces=STREAMS, cuts=st.lists(st.integers(0), max_size=12), small=st.booleans(),
       prefix=st.sampled_from(PREFIXES))
def test_chunking_does_not_matter(pieces: list[bytes], cuts: list[int], small: bool,
                                  prefix: bytes) -> None:
    # TLS is active (STARTTLS is refused) and there is no COMPRESS: both change how later
    # bytes are read by design (dropped after STARTTLS, inflated after COMPRESS).
    stream = prefix + b"".join(pieces)
    config = SMALL if small else DEFAULT
    whole = drive([stream], config)
    cut = drive(split(stream, cuts), config)
    bytewise = drive([stream[i:i + 1] for i in range(len(stream))], config)
    assert cut.events == whole.events
    assert cut.output == whole.output
    assert bytewise.events == whole.events
    assert bytewise.output == whole.output


# Complete commands, each answered by exactly one tagged response in whatever state.
WELL_FORMED = [c.split(b" ", 1)[1] for c in COMMANDS
               if re.match(rb"[a-e]\d ", c) and not re.search(
                   rb"IDLE|LOGOUT|STARTTLS|AUTHENTICATE|\{999|\{60", c)]


@PROPS
@given(commands=st.lists(st.sampled_from(WELL_FORMED), max_size=25),
       prefix=st.sampled_from(PREFIXES), cuts=st.lists(st.integers(0), max_size=8))
def test_pipelined_commands_get_one_tagged_response_each(commands: list[bytes], prefix: bytes,
                                                         cuts: list[int]) -> None:
    stream = prefix + b"".join(b"T%d " % i + c for i, c in enumerate(commands))
    run = drive(split(stream, cuts))
    tags = [r.split(b" ", 1)[0] for r in check_output(run.output, stream)
            if not r.startswith((b"* ", b"+"))]
    expected = [b"L1"] * (b"L1" in prefix) + [b"S1"] * (b"S1" in prefix)
    expected += [b"T%d" % i for i in range(len(commands))]
    if b"* BYE Too many" in run.output:  # max_errors BAD/NO answers end the session
        assert tags == expected[:len(tags)]
        assert re.search(rb"\r\n\* BYE Too many (invalid|failed) commands\r\n\Z", run.output)
    else:
        assert tags == expected
    assert not any(b"Invalid tag" in r or b"Unknown command" in r
                   for r in run.output.split(b"\r\n"))


@PROPS
@given(commands=st.lists(st.sampled_from(WELL_FORMED), max_size=12),
       cuts=st.lists(st.integers(0), max_size=8), wait=st.booleans())
def test_compressed_session_answers_as_a_plain_one(commands: list[bytes], cuts: list[int],
                                                   wait: bool) -> None:
    body = b"".join(b"T%d " % i + c for i, c in enumerate(commands))
    plain = drive([LOGIN, body])
    conn = IMAPConnection(DEFAULT, tls_active=True)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    inflate = zlib.decompressobj(-15)
    head = LOGIN + COMPRESS
    compressed = deflate.compress(body) + deflate.flush(zlib.Z_SYNC_FLUSH)
    # The client may wait for the OK or pipeline compressed commands right behind COMPRESS.
    chunks = [head, *split(compressed, cuts)] if wait else split(head + compressed, cuts)
    out = bytearray()
    for chunk in filter(None, chunks):  # b"" would be the peer closing
        conn.receive_data(chunk)
        while True:
            while (event := conn.next_event()) is not None:
                answer(conn, event)
            data = conn.data_to_send()
            if not data:
                break
            out += inflate.decompress(data) if b"f1 OK DEFLATE active\r\n" in out else data
    before, sep, after = bytes(out).partition(b"f1 OK DEFLATE active\r\n")
    assert sep, out

    def answers(output: bytes) -> list[bytes]:
        return [line for line in output.split(b"\r\n") if not line.startswith(b"* CAPABILITY")]

    assert answers(after) == answers(plain.output.partition(b"] Logged in\r\n")[2])


# --- literals -------------------------------------------------------------------------------

LITERAL_KINDS = st.sampled_from(["{%d}", "{%d+}", "~{%d}", "~{%d+}"])


def literal(kind: str, data: bytes) -> bytes:
    return (kind % len(data)).encode() + b"\r\n" + data


@PROPS
@given(messages=st.lists(st.tuples(LITERAL_KINDS, st.binary(max_size=300),
                                   st.lists(st.sampled_from(["\\Seen", "$Label", "\\Draft"]),
                                            max_size=2), st.booleans()),
                         min_size=1, max_size=4),
       cuts=st.lists(st.integers(0), max_size=10))
def test_append_literals_arrive_exactly(messages: list[tuple[str, bytes, list[str], bool]],
                                        cuts: list[int]) -> None:
    command = b"A1 APPEND INBOX"
    for kind, data, flags, dated in messages:
        if flags:
            command += b" (" + " ".join(flags).encode() + b")"
        if dated:
            command += b' "24-Nov-2026 10:00:00 +0100"'
        command += b" " + literal(kind, data)
    stream = LOGIN + command + b"\r\nA2 NOOP\r\n"
    run = drive(split(stream, cuts))
    appends = [e.command for e in run.events if isinstance(e, Request)]
    assert len(appends) == 2, run.output
    append = appends[0]
    assert isinstance(append, cmds.Append) and append.mailbox == "INBOX"
    assert [(m.content, m.binary, m.flags, m.internaldate is not None)
            for m in append.messages] == [
        (data, kind.startswith("~"), flags, dated) for kind, data, flags, dated in messages]
    syncs = sum(1 for kind, _, _, _ in messages if "+" not in kind)
    assert run.output.split(b"\r\n").count(b"+ Ready for literal data") == syncs
    assert b"A1 OK [APPENDUID" in run.output and b"A2 OK" in run.output


UTF8_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)


@PROPS
@given(user=UTF8_TEXT, password=UTF8_TEXT, kinds=st.tuples(LITERAL_KINDS, LITERAL_KINDS),
       cuts=st.lists(st.integers(0), max_size=6))
def test_login_literals_arrive_exactly(user: str, password: str, kinds: tuple[str, str],
                                       cuts: list[int]) -> None:
    stream = (b"L LOGIN " + literal(kinds[0], user.encode()) + b" " +
              literal(kinds[1], password.encode()) + b"\r\n")
    run = drive(split(stream, cuts))
    assert [e for e in run.events if isinstance(e, LoginRequest)] == [
        LoginRequest("L", Credentials("LOGIN", user, password))]


@PROPS
@given(data=st.binary(max_size=200), kind=LITERAL_KINDS)
def test_search_literal_is_a_string_token(data: bytes, kind: str) -> None:
    run = drive([LOGIN, b"S SELECT INBOX\r\n",
                 b"Q UID SEARCH BODY " + literal(kind, data) + b" ALL\r\n"])
    search = [e.command for e in run.events if isinstance(e, Request)][-1]
    assert isinstance(search, cmds.Search) and search.uid
    assert search.args == [Atom("BODY"), String(data, literal=True,
                                                literal8=kind.startswith("~")), Atom("ALL")]


# --- sequence sets ----------------------------------------------------------------------------

NUMBERS = st.lists(st.one_of(st.integers(1, 3000),
                             st.integers(MAX_NUMBER - 50, MAX_NUMBER)), unique=True, max_size=80)


@PROPS
@given(numbers=NUMBERS)
def test_sequence_set_format_parse_round_trip(numbers: list[int]) -> None:
    numbers.sort()
    text = format_sequence_set(numbers)
    if not numbers:
        assert text == ""
        return
    assert re.fullmatch(r"\d+(:\d+)?(,\d+(:\d+)?)*", text)
    seq = parse_sequence_set(text)
    assert [n for a, b in seq.ranges for n in range(a, b + 1)] == numbers
    # The form is the compact one: ranges ascend with gaps between them.
    assert all(a <= b for a, b in seq.ranges)
    assert all(b + 1 < c for (_, b), (c, _) in zip(seq.ranges, seq.ranges[1:], strict=False))


ELEMENT = st.one_of(st.integers(0, 40), st.sampled_from([0, MAX_NUMBER]))


@PROPS
@given(ranges=st.lists(st.tuples(ELEMENT, st.one_of(st.none(), ELEMENT)), min_size=1,
                       max_size=8),
       largest=st.integers(0, 45), limit=st.integers(0, 50))
def test_sequence_set_members_match_reference(ranges: list[tuple[int, int | None]],
                                              largest: int, limit: int) -> None:
    def elem(n: int) -> str:
        return "*" if n == 0 else str(n)

    text = ",".join(elem(a) if b is None else f"{elem(a)}:{elem(b)}" for a, b in ranges)
    seq = parse_sequence_set(text)
    expected: set[int] = set()
    for a, b in ranges:
        lo, hi = (largest if a == 0 else a), (largest if (a if b is None else b) == 0
                                               else (a if b is None else b))
        lo, hi = min(lo, hi), max(lo, hi)
        expected.update(n for n in range(max(lo, 1), min(hi, limit) + 1))
    members = seq.members(largest, limit)
    assert members == sorted(expected)
    assert all(seq.contains(n, largest) for n in members)
    if members:
        assert parse_sequence_set(format_sequence_set(members)).members(largest, limit) == \
            members


@PROPS
@given(text=st.one_of(st.text(max_size=30),
                      st.text(alphabet="0123456789:,*$-", max_size=30)))
def test_sequence_set_parse_only_raises_parse_error(text: str) -> None:
    try:
        seq = parse_sequence_set(text)
    except ParseError:
        return
    assert seq.saved or all(0 <= a <= MAX_NUMBER and 0 <= b <= MAX_NUMBER
                            for a, b in seq.ranges)


# --- modified UTF-7 and response strings -----------------------------------------------------


@PROPS
@given(name=st.text(max_size=60))
def test_mutf7_round_trip(name: str) -> None:
    encoded = encode_mutf7(name)
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert decode_mutf7(encoded) == name
    assert encode_mutf7(decode_mutf7(encoded)) == encoded


@PROPS
@given(text=st.one_of(st.text(max_size=30),
                      st.text(alphabet="&-+,AOQ5AZz09/abc", max_size=30)))
def test_mutf7_decode_accepts_only_canonical_forms(text: str) -> None:
    try:
        name = decode_mutf7(text)
    except MUTF7Error:
        return
    # What is accepted is the one encoding of its name, except that adjacent runs
    # ("&AOQ-&AOQ-" for "ää", encoded "&AOQA5A-") are accepted too.
    again = encode_mutf7(name)
    assert again == text or (re.search(r"-&[^-]", text) and decode_mutf7(again) == name)


def tokens_of(command: bytes, limits: Limits = DEFAULT_LIMITS) -> list[Token]:
    """The tokens after the tag of one command framed by a CommandReader."""
    reader = CommandReader(limits)
    reader.feed(command)
    while isinstance(item := reader.next(), Continue):
        pass
    assert isinstance(item, Frame) and item.error is None, item
    assert reader.next() is None
    return tokenize(item, limits, skip=2)


@PROPS
@given(data=st.one_of(st.binary(max_size=1100), st.text(max_size=50).map(str.encode)),
       utf8=st.booleans())
def test_quoted_or_literal_re_tokenizes(data: bytes, utf8: bool) -> None:
    wire = quoted_or_literal(data, utf8=utf8)
    assert tokens_of(b"t X " + wire + b"\r\n") == [
        Atom("X"), String(data, literal=wire.startswith(b"{"))]


@PROPS
@given(data=st.binary(max_size=40))
def test_astring_re_tokenizes(data: bytes) -> None:
    wire = astring(data)
    # "BODY[" as an atom is fine for RFC 9051 clients; our lexer reads a section there.
    assume(not re.match(rb"(?i)(BODY|BINARY)(\.PEEK|\.SIZE)?\[", wire))
    (token,) = tokens_of(b"t " + wire + b"\r\n")
    if isinstance(token, Atom):
        assert token.value.encode() == data and data.upper() != b"NIL"
    else:
        assert token == String(data, literal=wire.startswith(b"{"))


VALUES = st.recursive(
    st.one_of(st.none(), st.integers(0, 2**63), st.binary(max_size=30)),
    lambda inner: st.lists(inner, max_size=4), max_leaves=20)


def as_tokens(value: Value) -> Token:
    if value is None:
        return Atom("NIL")
    if isinstance(value, int):
        return Atom(str(value))
    if isinstance(value, bytes):
        return String(value, literal=quoted_or_literal(value).startswith(b"{"))
    return [as_tokens(v) for v in value]


@PROPS
@given(value=VALUES)
def test_encoded_values_re_tokenize(value: Value) -> None:
    assume(not isinstance(value, Raw))
    assert tokens_of(b"t " + encode_value(value) + b"\r\n") == [as_tokens(value)]


# --- bounds ---------------------------------------------------------------------------------


def engine(config: IMAPSettings = DEFAULT, login: bool = True) -> IMAPConnection:
    conn = IMAPConnection(config, tls_active=True)
    if login:
        conn.receive_data(LOGIN)
        event = conn.next_event()
        assert isinstance(event, LoginRequest)
        conn.login_done(event.tag, True)
    conn.data_to_send()
    return conn


def feed(conn: IMAPConnection, data: bytes) -> bytes:
    conn.receive_data(data)
    while (event := conn.next_event()) is not None:
        answer(conn, event)
    return conn.data_to_send()


@pytest.mark.parametrize("login", [False, True])
@pytest.mark.parametrize("piece", [1000, 64 * 1024 + 7, 1024 * 1024])
def test_ten_megabyte_line_is_refused_without_buffering(login: bool, piece: int) -> None:
    conn = engine(login=login)
    limit = conn.settings.max_line
    out = feed(conn, b"T1 APPEND INBOX (")
    line = b"\\Seen " * (10 * 1024 * 1024 // 6)
    for i in range(0, len(line), piece):
        out += feed(conn, line[i:i + piece])
        assert len(conn._reader._buf) <= limit + piece
    out += feed(conn, b") {5+}\r\nT9 XX\r\nT2 NOOP\r\n")
    assert out == b"T1 BAD Command line too long\r\nT2 OK NOOP completed\r\n"
    assert not conn.closed


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_overlong_line_ending_in_literal_discards_the_literal(chunk: int) -> None:
    # The literal of a refused line is still a literal: its octets are not commands.
    stream = (LOGIN + b"T1 APPEND INBOX (" + b"x" * 200 + b") {17+}\r\nT9 DELETE INBOX\r\n"
              b"\r\nT2 NOOP\r\n")
    run = drive(split(stream, range(chunk, len(stream), chunk)), SMALL)
    assert run.output.split(b"\r\n")[2:] == [b"T1 BAD Command line too long",
                                             b"T2 OK NOOP completed", b""]
    assert [e for e in run.events if isinstance(e, Request)] == [
        Request(cmds.Simple("T2", "NOOP"))]


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_overlong_continuation_line_keeps_the_tag(chunk: int) -> None:
    stream = b"T1 APPEND INBOX {3+}\r\nabc " + b"x" * 200 + b"\r\nT2 NOOP\r\n"
    run = drive(split(stream, range(chunk, len(stream), chunk)), SMALL)
    assert run.output.split(b"\r\n")[1:] == [b"T1 BAD Command line too long",
                                             b"T2 OK NOOP completed", b""]


@pytest.mark.parametrize("mode", [b"c6 IDLE\r\n", b"a8 AUTHENTICATE PLAIN\r\n"])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_overlong_idle_or_sasl_line_is_one_bad_line(mode: bytes, chunk: int) -> None:
    stream = (LOGIN if b"IDLE" in mode else b"") + mode + b"x" * 200 + b"\r\nT2 NOOP\r\n"
    run = drive(split(stream, range(chunk, len(stream), chunk)), SMALL)
    lines = run.output.split(b"\r\n")
    assert lines[-4] in (b"+ idling", b"+ ")
    assert lines[-3].startswith(mode.split(b" ")[0] + b" BAD ")
    assert lines[-2:] == [b"T2 OK NOOP completed", b""]
    assert b"Invalid tag" not in run.output


def test_synchronizing_literal_over_the_limit_gets_no_continuation() -> None:
    conn = engine()
    limit = conn.settings.max_literal
    out = feed(conn, b"T1 APPEND INBOX {%d}\r\n" % (limit + 1))
    assert out.startswith(b"T1 NO [TOOBIG]") and b"+ " not in out
    assert feed(conn, b"T2 NOOP\r\n") == b"T2 OK NOOP completed\r\n"


@pytest.mark.parametrize("kind", [b"{%d+}", b"~{%d+}"])
def test_non_synchronizing_literal_over_the_limit_is_discarded(kind: bytes) -> None:
    config = IMAPSettings(allow_plaintext_auth=True, max_literal=1024 * 1024)
    conn = engine(config)
    size = 3 * 1024 * 1024 + 5
    out = feed(conn, b"T1 APPEND INBOX " + kind % size + b"\r\n")
    for i in range(0, size, 256 * 1024):
        out += feed(conn, (b"T9 NOOP\r\n" + b"z" * 256 * 1024)[:min(256 * 1024, size - i)])
        assert len(conn._reader._literal) == 0 and len(conn._reader._buf) == 0
    out += feed(conn, b"\r\nT2 NOOP\r\n")
    assert out.startswith(b"T1 NO [TOOBIG] Literal of 3145733 octets")
    assert out.endswith(b"\r\nT2 OK NOOP completed\r\n") and out.count(b"\r\n") == 2


def test_many_literals_over_the_command_limit() -> None:
    config = IMAPSettings(allow_plaintext_auth=True, max_literal=1000)
    conn = engine(config)  # max_command is max_literal + 1 MiB
    out = feed(conn, b"T1 APPEND INBOX" + b" {1000+}\r\n" + b"m" * 1000)
    for _ in range(1100):
        out += feed(conn, b" {1000+}\r\n" + b"m" * 1000)
    out += feed(conn, b"\r\nT2 NOOP\r\n")
    assert out == (b"T1 NO [TOOBIG] Command is larger than the limit of 1049576 octets"
                   b"\r\nT2 OK NOOP completed\r\n")


@pytest.mark.parametrize("depth", [17, 100, 10_000])
@pytest.mark.parametrize("command", [b"FETCH 1 ", b"SEARCH ", b"LIST ", b"APPEND INBOX "])
def test_deep_nesting_is_a_syntax_error(depth: int, command: bytes) -> None:
    conn = engine()
    feed(conn, b"S SELECT INBOX\r\n")
    out = feed(conn, b"T1 " + command + b"(" * depth + b")" * depth + b"\r\n")
    assert out == b"T1 BAD Syntax error: Too deeply nested lists\r\n"
    assert feed(conn, b"T2 NOOP\r\n") == b"T2 OK NOOP completed\r\n"


def test_too_many_tokens_is_a_syntax_error() -> None:
    conn = engine(IMAPSettings(allow_plaintext_auth=True, max_line=1024 * 1024))
    feed(conn, b"S SELECT INBOX\r\n")
    out = feed(conn, b"T1 SEARCH" + b" 1" * 100_001 + b"\r\n")
    assert out == b"T1 BAD Syntax error: Too many arguments\r\n"


def test_too_many_errors_end_the_session() -> None:
    conn = engine(login=False)
    out = b""
    for i in range(conn.settings.max_errors):
        out += feed(conn, b"X%d FROB\r\n" % i)
    assert out.count(b" BAD ") == conn.settings.max_errors
    assert out.endswith(b"* BYE Too many invalid commands\r\n") and conn.closed


def test_a_refused_command_keeps_no_lines() -> None:
    # " {0+}" lines continue a command for ever; once it broke a bound none is kept.
    reader = CommandReader(Limits(max_command=1000, max_tokens=50))
    reader.feed(b"T1 LOGIN {0+}\r\n")
    for _ in range(2000):
        reader.feed(b" {0+}\r\n")
        assert reader.next() is None
        assert len(reader._frame.lines) <= 51 and len(reader._frame.literals) <= 51
    reader.feed(b"\r\n")
    frame = reader.next()
    assert isinstance(frame, Frame) and frame.tag == "T1"
    assert frame.error == "Too many literals in one command"


def test_many_empty_literals_are_bounded_before_login() -> None:
    conn = engine(login=False)
    out = feed(conn, b"T1 LOGIN {0+}\r\n")
    piece = b" {0+}\r\n" * 10_000
    for _ in range(12):
        out += feed(conn, piece)
    assert len(conn._reader._frame.lines) <= Limits().max_tokens + 1
    out += feed(conn, b"\r\nT2 NOOP\r\n")
    assert out == b"T1 BAD Too many literals in one command\r\nT2 OK NOOP completed\r\n"
