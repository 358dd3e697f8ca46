"""Property tests for the SMTP client engine and its reply parser."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netpost.smtp.client import (
    ConnectionFailed,
    Event,
    OutRecipient,
    Ready,
    ReplyReader,
    ServerReply,
    SMTPClient,
    SMTPProtocolError,
    TransactionDone,
    dot_stuff,
    normalize_crlf,
)
from netpost.smtp.protocol import (
    MailFrom,
    MessageData,
    RcptTo,
    Reply,
    SMTPConnection,
    SMTPSettings,
)

PROPS = settings(max_examples=300, deadline=None)

REPLY_TOKENS = [
    b"220 hi\r\n", b"250 ok\r\n", b"250-x\r\n", b"250 2.0.0 done\r\n", b"354 go\r\n",
    b"550 5.1.1 no\r\n", b"421 bye\r\n", b"334 VXNlcg==\r\n", b"235 ok\r\n", b"\r\n", b"\n",
    b"2", b"25", b"250", b"-", b" ", b"\xff", b"\x00", b"x" * 100, b"221 bye\r\n",
]


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    parts, last = [], 0
    for p in points:
        parts.append(stream[last:p])
        last = p
    parts.append(stream[last:])
    return [p for p in parts if p]


def parse_all(chunks: list[bytes]) -> tuple[list[ServerReply], str | None]:
    reader = ReplyReader(max_line=200, max_lines=10)
    replies: list[ServerReply] = []
    for chunk in chunks:
        try:
            replies += reader.feed(chunk)
        except SMTPProtocolError as exc:
            replies += exc.replies
            return replies, exc.reason
    return replies, None


streams = st.one_of(
    st.binary(max_size=600),
    st.lists(st.sampled_from(REPLY_TOKENS), max_size=40).map(b"".join),
)


@PROPS
@given(streams, st.lists(st.integers(min_value=0), max_size=20))
def test_reader_raises_only_protocol_errors_and_ignores_chunking(
        stream: bytes, cuts: list[int]) -> None:
    whole = parse_all([stream])  # any other exception fails the test
    assert parse_all(split(stream, cuts)) == whole
    assert parse_all([bytes([b]) for b in stream]) == whole


def reply_lines(draw: st.DrawFn) -> tuple[int, str | None, list[str]]:
    code = draw(st.integers(min_value=200, max_value=559).filter(lambda c: c % 100 < 60))
    enhanced = draw(st.one_of(st.none(), st.tuples(
        st.integers(0, 999), st.integers(0, 999)).map(lambda t: f"{code // 100}.{t[0]}.{t[1]}")))
    if code // 100 == 3:
        enhanced = None
    texts = draw(st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF,
                                                exclude_characters="\x7f"), max_size=30)
                          .map(str.strip).filter(lambda t: not t[:1].isdigit()),
                          min_size=1, max_size=5))
    return code, enhanced, texts


@st.composite
def wellformed(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, str | None, tuple[str, ...]]]]:
    replies = [reply_lines(draw) for _ in range(draw(st.integers(1, 6)))]
    wire = b""
    expected = []
    for code, enhanced, texts in replies:
        for i, text in enumerate(texts):
            sep = " " if i == len(texts) - 1 else "-"
            body = f"{enhanced} {text}" if enhanced else text
            wire += f"{code}{sep}{body}\r\n".encode()
        if enhanced is not None:
            e = enhanced.split(".")
            norm = f"{e[0]}.{int(e[1])}.{int(e[2])}"
        else:
            norm = None
        expected.append((code, norm, tuple(texts)))
    return wire, expected


@PROPS
@given(wellformed(), st.lists(st.integers(min_value=0), max_size=10))
def test_wellformed_replies_parse_exactly(
        case: tuple[bytes, list[tuple[int, str | None, tuple[str, ...]]]],
        cuts: list[int]) -> None:
    wire, expected = case
    reader = ReplyReader()
    got: list[ServerReply] = []
    for chunk in split(wire, cuts):
        got += reader.feed(chunk)
    assert [(r.code, r.enhanced, r.lines) for r in got] == expected
    assert not reader.partial


PREFIXES = {
    "greeting": b"",
    "ehlo": b"220 x\r\n",
    "auth": b"220 x\r\n250-x\r\n250 AUTH LOGIN\r\n",
    "mail": b"220 x\r\n250-x\r\n250 PIPELINING\r\n",
    "data": b"220 x\r\n250-x\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n354 go\r\n",
}


@PROPS
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=10),
       st.sampled_from(sorted(PREFIXES)))
def test_engine_takes_any_server_bytes(stream: bytes, cuts: list[int], where: str) -> None:
    """Arbitrary bytes at any point of a session: events only, never an exception."""
    auth = ("u", "p") if where == "auth" else None
    c = SMTPClient("me.example", starttls=False, auth=auth, allow_plaintext_auth=True)
    evs: list[Event] = []
    started = 0

    def drain() -> None:
        nonlocal started
        while (e := c.next_event()) is not None:
            evs.append(e)
        if c.state == "ready" and started < 2:
            started += 1
            c.start_transaction("a@x.example", [OutRecipient("b@y.example")], b"x\r\n")
        c.data_to_send()

    for chunk in [PREFIXES[where], *split(stream, cuts), b""][0 if PREFIXES[where] else 1:]:
        c.receive_data(chunk)
        drain()
        drain()
    assert not c.usable  # the stream ended: the engine knows the connection is gone
    assert sum(isinstance(e, ConnectionFailed) for e in evs) <= 1


def loopback(body: bytes, *, pipelining: bool) -> bytes:
    """Send `body` from the client engine to the server engine; return what DATA delivered."""
    server = SMTPConnection(SMTPSettings(hostname="mx.test", tls_available=False,
                                         auth_enabled=False, max_message_size=1 << 22))
    client = SMTPClient("me.example", starttls=False)
    server.greeting()
    delivered: list[bytes] = []
    result = None
    for _ in range(50):
        replies = server.data_to_send()
        if not pipelining:
            replies = replies.replace(b"250-PIPELINING\r\n", b"")
        client.receive_data(replies)
        while (e := client.next_event()) is not None:
            if isinstance(e, Ready):
                assert e.extensions.pipelining == pipelining
                if result is None:
                    client.start_transaction("a@x.example", [OutRecipient("b@y.example")],
                                             body)
            elif isinstance(e, TransactionDone):
                result = e.result
            else:
                raise AssertionError(e)
        out = client.data_to_send()
        if result is not None and not out:
            break
        server.receive_data(out)
        while (ev := server.next_event()) is not None:
            if isinstance(ev, MessageData):
                delivered.append(ev.data)
                server.send(Reply(250, "2.0.0", "stored"))
            elif isinstance(ev, MailFrom | RcptTo):
                server.send(Reply(250, "2.1.0", "ok"))
    assert result is not None and result.sent, result
    assert len(delivered) == 1
    return delivered[0]


line = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
dotty = st.sampled_from([b".", b"..", b".x", b"", b"x.", b". "])
crlf_bodies = st.lists(st.one_of(line, dotty), max_size=30).map(
    lambda lines: b"".join(x + b"\r\n" for x in lines))


@PROPS
@given(crlf_bodies, st.booleans())
def test_dot_stuffed_body_unstuffs_to_the_original(body: bytes, pipelining: bool) -> None:
    assert loopback(body, pipelining=pipelining) == body


@PROPS
@given(st.binary(max_size=300))
def test_any_body_arrives_as_crlf_normalized(body: bytes) -> None:
    expected = normalize_crlf(body)
    assert loopback(body, pipelining=True) == expected
    stuffed = dot_stuff(expected)
    assert b"\r\n.\r\n" not in b"\r\n" + stuffed  # the end marker never appears early
