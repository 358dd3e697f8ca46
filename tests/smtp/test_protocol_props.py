"""Property tests for the sans-I/O SMTP engine."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from netpost.smtp.protocol import (
    AuthRequest,
    Event,
    MessageData,
    Reply,
    SMTPConnection,
    SMTPSettings,
    StartTLS,
)

LINE_RE = re.compile(rb"^[2-5]\d\d[ -]")
PROPS = settings(max_examples=200, deadline=None)

TOKENS = [
    b"EHLO a.example\r\n", b"HELO b\r\n", b"MAIL FROM:<a@example.org>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n", b"RCPT TO:<b@example.net>\r\n",
    b"RCPT TO:<postmaster>\r\n", b"DATA\r\n", b"\r\n.\r\n", b".\r\n", b"..", b"\r", b"\n",
    b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"BDAT 0 LAST\r\n", b"RSET\r\n", b"NOOP\r\n",
    b"QUIT\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n", b"*\r\n",
    b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\n", b"dTE=\r\n", b"VRFY x\r\n",
    b"HELP\r\n", b"EXPN x\r\n", "MAIL FROM:<ü@ä.example>\r\n".encode(), b"x" * 300,
]


def answerer(data: st.DataObject) -> Callable[[SMTPConnection, Event], None]:
    def answer(conn: SMTPConnection, event: Event) -> None:
        if isinstance(event, StartTLS):
            conn.tls_started()
        elif isinstance(event, AuthRequest):
            if data.draw(st.booleans(), label="auth ok"):
                conn.accept_auth(event.credentials.authcid)
            else:
                conn.reject_auth()
        else:
            conn.send(data.draw(st.sampled_from([
                Reply(250, "2.0.0", "OK"), Reply(550, "5.1.1", "no"),
                Reply(451, "4.3.0", "later"), Reply(421, "4.3.2", "bye"),
            ]), label="reply"))
    return answer


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    parts = []
    last = 0
    for p in points:
        parts.append(stream[last:p])
        last = p
    parts.append(stream[last:])
    return [p for p in parts if p]


@PROPS
@given(
    pieces=st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(TOKENS)), max_size=40),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
    small=st.booleans(),
    tls=st.booleans(),
    data=st.data(),
)
def test_arbitrary_input_never_raises(
    pieces: list[bytes], cuts: list[int], small: bool, tls: bool, data: st.DataObject
) -> None:
    opts: dict[str, int] = (
        {"max_command_line": 64, "max_message_size": 20, "max_recipients": 2, "max_errors": 8}
        if small else {}
    )
    conn = SMTPConnection(
        SMTPSettings("mx.example", allow_plaintext_auth=not tls, **opts),  # type: ignore[arg-type]
        tls_active=tls, trace=lambda d, line: None,
    )
    answer = answerer(data)
    conn.greeting()
    out = bytearray(conn.data_to_send())
    for part in split(b"".join(pieces), cuts):
        conn.receive_data(part)
        while (event := conn.next_event()) is not None:
            answer(conn, event)
        out += conn.data_to_send()
        if conn.closed:
            break
    conn.receive_data(b"")
    assert conn.closed
    assert out.endswith(b"\r\n")
    for line in bytes(out).split(b"\r\n")[:-1]:
        assert LINE_RE.match(line), line


BODY_LINES = st.lists(
    st.one_of(
        st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        st.sampled_from([b"", b".", b"..", b".x", b"...", b". ", b"From x"]),
    ),
    max_size=20,
)


def stuff(lines: list[bytes]) -> bytes:
    # RFC 5321 4.5.2: the client doubles a leading period.
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def session(**kw: object) -> SMTPConnection:
    conn = SMTPConnection(SMTPSettings("mx.example", **kw))  # type: ignore[arg-type]
    conn.receive_data(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    while conn.next_event() is not None:
        conn.send(Reply(250, "2.0.0", "OK"))
    conn.data_to_send()
    return conn


@PROPS
@given(lines=BODY_LINES, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_data_round_trip(lines: list[bytes], cuts: list[int]) -> None:
    original = b"".join(line + b"\r\n" for line in lines)
    conn = session()
    events: list[Event] = []
    for part in split(b"DATA\r\n" + stuff(lines) + b".\r\nNOOP\r\n", cuts):
        conn.receive_data(part)
        while (event := conn.next_event()) is not None:
            events.append(event)
            conn.send(Reply(250, "2.0.0", "OK"))
    assert not conn.closed
    assert len(events) == 1
    assert isinstance(events[0], MessageData)
    assert events[0].data == original
    assert conn.data_to_send().count(b"\r\n") == 3  # 354, 250 (message), 250 (NOOP)


@PROPS
@given(
    chunks=st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")
                                               + b"\r\n"), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_bdat_round_trip(chunks: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(
        f"BDAT {len(c)}{' LAST' if i == len(chunks) - 1 else ''}\r\n".encode() + c
        for i, c in enumerate(chunks)
    )
    conn = session()
    events: list[Event] = []
    for part in split(stream, cuts):
        conn.receive_data(part)
        while (event := conn.next_event()) is not None:
            events.append(event)
            conn.send(Reply(250, "2.0.0", "OK"))
    assert len(events) == 1
    assert isinstance(events[0], MessageData)
    assert events[0].data == b"".join(chunks)


SIMPLE = [b"NOOP\r\n", b"RSET\r\n", b"HELP\r\n", b"VRFY bob\r\n", b"EHLO c.example\r\n",
          b"HELO c.example\r\n", b"NOOP x\r\n"]


@st.composite
def pipelined_session(draw: st.DrawFn) -> tuple[bytes, int]:
    """A valid pipelined session and the number of replies it must produce."""
    stream = b"EHLO c.example\r\n"
    replies = 1
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            stream += draw(st.sampled_from(SIMPLE))
            replies += 1
            continue
        stream += b"MAIL FROM:<s@example.org>\r\n"
        n = draw(st.integers(1, 4))
        stream += b"RCPT TO:<r@example.net>\r\n" * n
        replies += 1 + n
        body = stuff(draw(BODY_LINES))
        if draw(st.booleans()):
            stream += b"DATA\r\n" + body + b".\r\n"
            replies += 2
        else:
            stream += f"BDAT {len(body)} LAST\r\n".encode() + body
            replies += 1
    if draw(st.booleans()):
        stream += b"QUIT\r\n"
        replies += 1
    return stream, replies


@PROPS
@given(sess=pipelined_session())
def test_pipelined_reply_count(sess: tuple[bytes, int]) -> None:
    stream, expected = sess
    conn = SMTPConnection(SMTPSettings("mx.example"))
    conn.receive_data(stream)
    while conn.next_event() is not None:
        conn.send(Reply(250, "2.0.0", "OK"))
    out = conn.data_to_send()
    finals = [line for line in out.split(b"\r\n")[:-1] if line[3:4] == b" "]
    assert len(finals) == expected
    assert all(line[:1] in (b"2", b"3") for line in finals), out
