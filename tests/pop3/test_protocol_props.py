"""Property tests for the POP3 engine: robustness on arbitrary input, exact message transfer."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from netpost.pop3.protocol import (
    AuthRequest,
    Event,
    MaildropEntry,
    POP3Connection,
    POP3Settings,
    Retrieve,
    StartTLS,
    Update,
)

FAST = settings(max_examples=200, deadline=None)

CONTENTS = [
    b"Subject: a\r\n\r\n.\r\n..\r\nbody\r\n",
    b".starts with dot\nno crlf\n\n.x",
    b"",
]
MAILDROP = [MaildropEntry(len(c), f"u{i}", i) for i, c in enumerate(CONTENTS)]

# First lines of the engine's multi-line responses (RFC 1939 3); all others are single lines.
MULTILINE = re.compile(
    rb"\+OK (Capability list follows|Supported mechanisms follow|Unique-ID listing follows"
    rb"|Top of message follows|\d+ messages \(\d+ octets\)|\d+ octets)"
)

COMMANDS = st.sampled_from(
    [
        b"USER alice\r\n",
        b"PASS good\r\n",
        b"PASS bad\r\n",
        b"AUTH PLAIN AGFsaWNlAGdvb2Q=\r\n",
        b"AUTH LOGIN\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH\r\n",
        b"*\r\n",
        b"YWxpY2U=\r\n",
        b"CAPA\r\n",
        b"STLS\r\n",
        b"STAT\r\n",
        b"LIST\r\n",
        b"LIST 1\r\n",
        b"UIDL\r\n",
        b"UIDL 2\r\n",
        b"RETR 1\r\n",
        b"RETR 2\r\n",
        b"TOP 1 1\r\n",
        b"TOP 2 0\r\n",
        b"DELE 1\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b"LIST 99999999999999999999\r\n",
    ]
)
TOKENS = st.lists(st.one_of(COMMANDS, st.binary(max_size=40), st.just(b"x" * 300)), max_size=30)


def answer(conn: POP3Connection, event: Event) -> None:
    if isinstance(event, AuthRequest):
        if event.credentials.password == "good":
            conn.accept_auth(MAILDROP)
        else:
            conn.reject_auth()
    elif isinstance(event, Retrieve):
        if event.number == 3:
            conn.send_error("[SYS/TEMP] Message unavailable")
        else:
            conn.send_message(CONTENTS[event.number - 1])
    elif isinstance(event, StartTLS):
        conn.tls_started()
    else:
        assert isinstance(event, Update)
        conn.update_done(event.deleted == ())


def check_output(out: bytes) -> None:
    """Every response is a status line; multi-line ones end with "." (RFC 1939 3)."""
    assert out == b"" or out.endswith(b"\r\n")
    lines = out.split(b"\r\n")[:-1]
    i = 0
    while i < len(lines):
        status = lines[i]
        assert status.startswith((b"+OK", b"-ERR", b"+ ")), status
        i += 1
        if MULTILINE.fullmatch(status):
            while lines[i] != b".":
                i += 1
            i += 1


@FAST
@given(tokens=TOKENS, data=st.data(), tls=st.booleans(), plaintext=st.booleans())
def test_arbitrary_streams_never_raise(
    tokens: list[bytes], data: st.DataObject, tls: bool, plaintext: bool
) -> None:
    stream = b"".join(tokens)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    traced: list[tuple[str, str]] = []
    conn = POP3Connection(
        POP3Settings(allow_plaintext_auth=plaintext, max_errors=8),
        tls_active=tls,
        trace=lambda d, line: traced.append((d, line)),
    )
    conn.greeting()
    out = bytearray(conn.data_to_send())
    for chunk in chunks:
        if not chunk:
            continue
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not None:
            answer(conn, event)
        out += conn.data_to_send()
        if conn.closed:
            break
        assert len(conn._partial) <= 2048
    conn.receive_data(b"")
    assert conn.closed
    out += conn.data_to_send()
    check_output(bytes(out))
    assert all(d in ("C", "S") for d, _ in traced)
    for direction, line in traced:
        keyword, _, rest = line.partition(" ")
        if direction == "C" and keyword.upper() == "PASS" and rest:
            assert rest == "<redacted>"
        if direction == "C" and keyword.upper() == "AUTH" and " " in rest.strip(" "):
            assert rest.endswith(" <redacted>")


def reference_normalise(content: bytes) -> bytes:
    content = re.sub(rb"\r?\n", b"\r\n", content)
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    return content


def reference_top(content: bytes, n: int) -> bytes:
    lines = reference_normalise(content).split(b"\r\n")[:-1]
    if b"" in lines:
        blank = lines.index(b"")
        lines = lines[: blank + 1 + n]
    return b"".join(line + b"\r\n" for line in lines)


def read_multiline(out: bytes) -> tuple[bytes, bytes]:
    """A client's reader: the status line, then the unstuffed content up to the "." line."""
    status, _, rest = out.partition(b"\r\n")
    lines = rest.split(b"\r\n")
    end = lines.index(b".")
    assert lines[end + 1 :] == [b""], "nothing may follow the terminator"
    body = [line[1:] if line.startswith(b".") else line for line in lines[:end]]
    return status, b"".join(line + b"\r\n" for line in body)


LINE = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
DOTTY_LINE = st.one_of(LINE, st.sampled_from([b".", b"..", b".x", b"", b" .", b"..."]))
CONTENT = st.one_of(
    st.binary(max_size=200),
    st.tuples(
        st.lists(DOTTY_LINE, max_size=15),
        st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=15, max_size=15),
        st.booleans(),
    ).map(
        lambda t: b"".join(line + sep for line, sep in zip(t[0], t[1], strict=False))[
            : None if t[2] else -1
        ]
    ),
)


def logged_in() -> POP3Connection:
    conn = POP3Connection(POP3Settings(allow_plaintext_auth=True))
    conn.receive_data(b"USER a\r\nPASS b\r\n")
    assert isinstance(conn.next_event(), AuthRequest)
    conn.accept_auth([MaildropEntry(1, "u", None)])
    conn.data_to_send()
    return conn


@FAST
@given(content=CONTENT)
def test_retr_round_trips(content: bytes) -> None:
    conn = logged_in()
    conn.receive_data(b"RETR 1\r\n")
    assert isinstance(conn.next_event(), Retrieve)
    conn.send_message(content)
    status, body = read_multiline(conn.data_to_send())
    expected = reference_normalise(content)
    assert body == expected
    assert status == f"+OK {len(expected)} octets".encode()


@FAST
@given(content=CONTENT, n=st.integers(0, 20))
def test_top_matches_reference(content: bytes, n: int) -> None:
    conn = logged_in()
    conn.receive_data(f"TOP 1 {n}\r\n".encode())
    assert conn.next_event() == Retrieve(1, MaildropEntry(1, "u", None), n)
    conn.send_message(content)
    status, body = read_multiline(conn.data_to_send())
    assert status == b"+OK Top of message follows"
    assert body == reference_top(content, n)


def retr_output(content: bytes, command: bytes, **kw: bool) -> bytes:
    conn = logged_in()
    conn.receive_data(command)
    assert isinstance(conn.next_event(), Retrieve)
    conn.send_message(content, **kw)
    return conn.data_to_send()


@FAST
@given(content=CONTENT, n=st.one_of(st.none(), st.integers(0, 20)), final=st.booleans())
def test_crlf_fast_path_matches_safe_path(content: bytes, n: int | None, final: bool) -> None:
    # What the session promises with crlf=True: CRLF line ends only (the final one may be
    # missing); dot_lines is what delivery records (parse_meta).
    crlf = reference_normalise(content)
    if not final:
        crlf = crlf.removesuffix(b"\r\n")
    dots = crlf.startswith(b".") or b"\r\n." in crlf
    command = b"RETR 1\r\n" if n is None else f"TOP 1 {n}\r\n".encode()
    safe = retr_output(crlf, command)
    assert retr_output(crlf, command, crlf=True) == safe
    assert retr_output(crlf, command, crlf=True, dot_lines=dots) == safe
