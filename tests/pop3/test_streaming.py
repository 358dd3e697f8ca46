"""RETR in parts (messages too large to hold in memory): any split of a message into parts
goes out byte for byte as the whole-message path sends it, dot-stuffing across boundaries
included; and end to end over real sockets."""

from __future__ import annotations

import poplib
import smtplib

from hypothesis import given, settings
from hypothesis import strategies as st

from netpost.pop3.protocol import MaildropEntry, POP3Connection, Retrieve
from tests.conftest import DOMAIN, PASSWORD, Server, client_tls
from tests.pop3.test_protocol import login, make


def _retr(conn: POP3Connection) -> Retrieve:
    conn.receive_data(b"RETR 1\r\n")
    event = conn.next_event()
    assert isinstance(event, Retrieve)
    return event


def _whole(content: bytes) -> bytes:
    conn, _ = make()
    login(conn, [MaildropEntry(len(content), "u1", 1)])
    conn.data_to_send()
    _retr(conn)
    conn.send_message(content, crlf=True)
    return conn.data_to_send()


def _parts(content: bytes, cuts: list[int]) -> bytes:
    conn, _ = make()
    login(conn, [MaildropEntry(len(content), "u1", 1)])
    conn.data_to_send()
    _retr(conn)
    assert conn.begin_message(len(content))
    edges = [0, *sorted(set(c % (len(content) + 1) for c in cuts)), len(content)]
    out = [conn.data_to_send()]
    for a, b in zip(edges, edges[1:], strict=False):
        conn.message_part(content[a:b])
        out.append(conn.data_to_send())
    conn.end_message()
    out.append(conn.data_to_send())
    return b"".join(out)


crlf_lines = st.lists(st.sampled_from([b"", b".", b"..", b".a", b"a.", b"abc", b"x" * 30]),
                      min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(crlf_lines, st.booleans(), st.lists(st.integers(0, 400), max_size=6))
def test_any_split_sends_what_the_whole_message_sends(
        lines: list[bytes], final_crlf: bool, cuts: list[int]) -> None:
    content = b"\r\n".join(lines) + (b"\r\n" if final_crlf else b"")
    if not content:
        return
    parts, whole = _parts(content, cuts), _whole(content)
    if content.endswith(b"\r\n"):
        assert parts == whole
    else:  # the whole path counts the CRLF it adds; the status of a stream cannot know yet
        assert parts.partition(b"\r\n")[2] == whole.partition(b"\r\n")[2]


def test_a_boundary_between_cr_and_lf_before_a_dot() -> None:
    content = b"a\r\n.b\r\n"
    for cut in range(len(content) + 1):
        assert _parts(content, [cut]) == _whole(content)


def test_large_message_is_streamed_end_to_end(server: Server) -> None:
    user = f"alice@{DOMAIN}"
    line = b"." + b"d" * 75  # every line needs stuffing
    body = b"\r\n".join([line] * 80_000) + b"\r\n"  # about 6 MiB
    message = b"Subject: big\r\n\r\n" + body
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=60) as smtp:
        smtp.sendmail("a@example.org", [user], message)
    pop = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), timeout=60, context=client_tls())
    pop.user(user)
    pop.pass_(PASSWORD)
    count = pop.stat()[0]
    _, got, octets = pop.retr(count)
    data = b"\r\n".join(got) + b"\r\n"  # poplib removes the stuffing
    assert data.endswith(message) and octets > len(message)
    pop.quit()
