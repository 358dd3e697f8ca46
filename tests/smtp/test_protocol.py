"""Unit tests for the sans-I/O SMTP engine (no sockets)."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import pytest

from netpost.auth.sasl import Credentials
from netpost.smtp.protocol import (
    AuthRequest,
    Event,
    MailFrom,
    MessageData,
    RcptTo,
    Reply,
    SMTPConnection,
    SMTPSettings,
    StartTLS,
)

OK = Reply(250, "2.0.0", "OK")
LINE_RE = re.compile(rb"^[2-5]\d\d[ -]")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def plain(authcid: str, password: str, authzid: str = "") -> str:
    return b64(f"{authzid}\0{authcid}\0{password}".encode())


def default_answer(conn: SMTPConnection, event: Event) -> None:
    if isinstance(event, AuthRequest):
        conn.accept_auth(event.credentials.authcid)
    elif isinstance(event, StartTLS):
        conn.tls_started()
    else:
        conn.send(OK)


class Client:
    """Drives an engine like the session does and records events and output."""

    def __init__(
        self,
        answer: Callable[[SMTPConnection, Event], None] = default_answer,
        *,
        tls_active: bool = False,
        greet: bool = True,
        **settings: object,
    ) -> None:
        self.trace: list[tuple[str, str]] = []
        self.conn = SMTPConnection(
            SMTPSettings(hostname="mx.example", **settings),  # type: ignore[arg-type]
            tls_active=tls_active,
            trace=lambda d, line: self.trace.append((d, line)),
        )
        self.answer = answer
        self.events: list[Event] = []
        if greet:
            self.conn.greeting()
            assert self.conn.data_to_send() == b"220 mx.example ESMTP netpost\r\n"

    def feed(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        while (event := self.conn.next_event()) is not None:
            self.events.append(event)
            self.answer(self.conn, event)
        return self.conn.data_to_send()

    def lines(self, data: bytes) -> list[str]:
        return self.feed(data).decode().split("\r\n")[:-1]

    def replies(self, data: bytes) -> list[str]:
        """Final lines of the replies (one per reply)."""
        return [line for line in self.lines(data) if line[3:4] == " "]

    def one(self, data: bytes) -> str:
        replies = self.replies(data)
        assert len(replies) == 1, replies
        return replies[0]

    def messages(self) -> list[MessageData]:
        return [e for e in self.events if isinstance(e, MessageData)]


def ready(**kw: object) -> Client:
    c = Client(**kw)  # type: ignore[arg-type]
    c.feed(b"EHLO client.example\r\n")
    return c


def in_txn(**kw: object) -> Client:
    c = ready(**kw)
    out = c.replies(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    assert out == ["250 2.0.0 OK", "250 2.0.0 OK"]
    return c


# --- Reply ------------------------------------------------------------------------------------


def test_reply_single_and_multi_line() -> None:
    assert Reply(250, "2.1.0", "Sender OK").to_bytes() == b"250 2.1.0 Sender OK\r\n"
    assert Reply(250, "2.0.0", ("a", "b")).to_bytes() == b"250-2.0.0 a\r\n250 2.0.0 b\r\n"
    assert Reply(334, None, "").to_bytes() == b"334 \r\n"
    assert Reply(250, None, ("x", "y", "z")).to_bytes() == b"250-x\r\n250-y\r\n250 z\r\n"


def test_reply_text_cannot_inject_lines() -> None:
    assert Reply(550, "5.1.1", "a\r\n250 ok").to_bytes() == b"550 5.1.1 a  250 ok\r\n"


# --- greeting, EHLO, HELO ---------------------------------------------------------------------


def test_ehlo_keywords_in_order_plaintext() -> None:
    c = Client()
    assert c.lines(b"EHLO client.example\r\n") == [
        "250-mx.example greets client.example",
        "250-PIPELINING",
        "250-SIZE 52428800",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250-ENHANCEDSTATUSCODES",
        "250-CHUNKING",
        "250-DSN",
        "250-STARTTLS",
        "250 HELP",
    ]
    assert c.conn.helo_domain == "client.example"
    assert c.conn.esmtp is True


def test_ehlo_over_tls_offers_auth_not_starttls() -> None:
    c = Client(tls_active=True, max_message_size=1000)
    lines = c.lines(b"ehlo [192.0.2.1]\r\n")
    assert "250-SIZE 1000" in lines
    assert "250-STARTTLS" not in lines
    assert lines[-2:] == ["250-AUTH PLAIN LOGIN", "250 HELP"]


def test_ehlo_auth_options() -> None:
    assert "250-AUTH PLAIN LOGIN" in Client(allow_plaintext_auth=True).lines(b"EHLO a\r\n")
    lines = Client(tls_active=True, auth_enabled=False).lines(b"EHLO a\r\n")
    assert not any("AUTH" in line for line in lines)
    assert "250-STARTTLS" not in Client(tls_available=False).lines(b"EHLO a\r\n")


def test_helo() -> None:
    c = Client()
    assert c.lines(b"HELO client.example\r\n") == ["250 mx.example"]
    assert c.conn.esmtp is False
    assert c.conn.helo_domain == "client.example"


@pytest.mark.parametrize(
    "line",
    [b"EHLO\r\n", b"HELO\r\n", b"EHLO bad<domain>\r\n", b"EHLO a b\r\n", b"EHLO [1.2.3]\r\n",
     b"EHLO -bad.example\r\n", b"EHLO [IPv6:zz]\r\n"],
)
def test_helo_needs_a_domain(line: bytes) -> None:
    c = Client()
    assert c.one(line) == (
        "501 5.5.4 Syntax: EHLO domain" if line.startswith(b"EHLO")
        else "501 5.5.4 Syntax: HELO domain"
    )
    assert c.conn.helo_domain is None


@pytest.mark.parametrize(
    "domain",
    [b"[192.0.2.1]", b"[IPv6:2001:db8::1]", b"localhost", b"my_host.local", b"host.example."],
)
def test_helo_accepts_domains_and_literals(domain: bytes) -> None:
    assert Client().lines(b"HELO " + domain + b"\r\n") == ["250 mx.example"]


def test_ehlo_resets_transaction() -> None:
    c = in_txn()
    c.feed(b"EHLO again.example\r\n")
    assert c.one(b"RCPT TO:<b@example.net>\r\n") == "503 5.5.1 Need MAIL command first"
    assert c.one(b"MAIL FROM:<a@example.org>\r\n") == "250 2.0.0 OK"


# --- simple commands --------------------------------------------------------------------------


def test_simple_commands() -> None:
    c = Client()
    assert c.one(b"NOOP\r\n") == "250 2.0.0 OK"
    assert c.one(b"noop whatever\r\n") == "250 2.0.0 OK"
    assert c.one(b"RSET\r\n") == "250 2.0.0 OK"
    assert c.one(b"RSET x\r\n") == "501 5.5.4 Syntax: RSET"
    assert c.one(b"VRFY bob\r\n").startswith("252 2.5.0 Cannot VRFY user")
    assert c.one(b"VRFY\r\n") == "501 5.5.4 Syntax: VRFY <address>"
    assert c.one(b"EXPN list\r\n") == "502 5.5.1 EXPN not supported"
    assert c.one(b"HELP\r\n").startswith("214 2.0.0 Commands: EHLO")
    assert c.one(b"FOO bar\r\n") == "500 5.5.2 Command not recognized"
    assert c.one(b"\r\n") == "500 5.5.2 Command not recognized"
    assert not c.conn.closed
    assert c.one(b"QUIT\r\n") == "221 2.0.0 mx.example closing connection"
    assert c.conn.closed
    assert c.feed(b"NOOP\r\n") == b""


def test_commands_case_insensitive_and_bare_lf() -> None:
    c = Client()
    c.feed(b"ehlo client.example\n")
    out = c.replies(b"mail from:<a@example.org>\nrcpt to:<b@example.net>\ndata\n")
    assert out == ["250 2.0.0 OK", "250 2.0.0 OK", "354 End data with <CR><LF>.<CR><LF>"]
    c.feed(b"hello\r\n.\r\n")
    assert c.messages()[0].data == b"hello\r\n"


def test_control_characters_and_bad_utf8_rejected() -> None:
    c = Client()
    assert c.one(b"NOOP\rRSET\r\n") == "500 5.5.2 Syntax error: control characters in command"
    assert c.one(b"NOOP \x00\r\n") == "500 5.5.2 Syntax error: control characters in command"
    assert c.one(b"NOOP \xff\r\n") == "500 5.5.2 Syntax error: command is not valid UTF-8"


def test_peer_eof_closes() -> None:
    c = Client()
    c.feed(b"")
    assert c.conn.closed


def assert_input_released(conn: SMTPConnection) -> None:
    assert len(conn._buf) == 0 and conn._pos == 0 and conn._line_scan == 0
    assert len(conn._chunks) == 0 and conn._chunks_total == 0
    assert conn._d_scan == conn._d_chk == conn._d_dropped == 0 and not conn._d_oversize
    assert conn._b_remaining == 0 and not conn._b_keep


def test_peer_eof_mid_data_releases_buffers() -> None:
    c = in_txn()
    c.feed(b"DATA\r\n" + b"x" * 100_000 + b"\r\n")
    assert len(c.conn._buf) > 100_000
    assert c.feed(b"") == b""
    assert c.conn.closed and not c.conn.in_transaction
    assert_input_released(c.conn)
    assert c.messages() == []


def test_peer_eof_mid_bdat_releases_buffers() -> None:
    c = in_txn()
    c.feed(b"BDAT 50000\r\n" + b"x" * 50_000 + b"BDAT 100000 LAST\r\n" + b"y" * 60_000)
    assert len(c.conn._chunks) == 110_000
    c.feed(b"")
    assert c.conn.closed and not c.conn.in_transaction
    assert_input_released(c.conn)


def test_peer_eof_mid_line_releases_buffers() -> None:
    c = ready()
    c.feed(b"MAIL FROM:<a@example.org")
    c.feed(b"")
    assert_input_released(c.conn)


def test_finished_message_not_kept_buffered() -> None:
    c = in_txn()
    out = c.replies(b"DATA\r\n" + b"x" * 100_000 + b"\r\n.\r\nNOOP\r\n")
    assert out == ["354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 OK", "250 2.0.0 OK"]
    assert len(c.conn._buf) - c.conn._pos < 10 and len(c.conn._buf) < 1000
    c.feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    c.feed(b"BDAT 100000 LAST\r\n" + b"y" * 100_000)
    assert len(c.conn._buf) < 1000 and len(c.conn._chunks) == 0
    assert [len(m.data) for m in c.messages()] == [100_002, 100_000]
    # pipelined messages in one read: all delivered, nothing left over
    c.feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n1\r\n.\r\n"
           b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n2\r\n.\r\n")
    assert [m.data for m in c.messages()[2:]] == [b"1\r\n", b"2\r\n"]
    assert len(c.conn._buf) - c.conn._pos == 0


# --- MAIL -------------------------------------------------------------------------------------


def test_mail_before_helo() -> None:
    assert Client().one(b"MAIL FROM:<a@b.example>\r\n") == "503 5.5.1 Send HELO/EHLO first"


def test_mail_event_and_params() -> None:
    c = ready()
    line = b"MAIL FROM:<a@example.org> SIZE=100 BODY=8bitmime AUTH=<> SMTPUTF8\r\n"
    assert c.one(line) == "250 2.0.0 OK"
    assert c.events == [
        MailFrom("a@example.org", {"SIZE": "100", "BODY": "8bitmime", "AUTH": "<>",
                                   "SMTPUTF8": None})
    ]
    assert c.conn.in_transaction


@pytest.mark.parametrize("param", [b"SIZE=100", b"BODY=8BITMIME", b"SMTPUTF8", b"AUTH=<>",
                                   b"X-FOO"])
def test_mail_parameters_need_ehlo(param: bytes) -> None:
    # RFC 5321 4.1.2 / RFC 1869: MAIL parameters belong to service extensions, and those
    # exist only in a session opened by EHLO.
    c = Client()
    c.feed(b"HELO client.example\r\n")
    key = param.split(b"=")[0].decode()
    assert c.one(b"MAIL FROM:<a@example.org> " + param + b"\r\n") == (
        f"555 5.5.4 Parameter {key} requires EHLO")
    assert c.events == []
    assert c.one(b"MAIL FROM:<a@example.org>\r\n") == "250 2.0.0 OK"
    c.feed(b"RSET\r\nEHLO client.example\r\n")
    assert c.one(b"MAIL FROM:<a@example.org> " + param + b"\r\n").startswith(
        "555" if key == "X-FOO" else "250")


def test_mail_syntax_error_after_helo_is_still_501() -> None:
    c = Client()
    c.feed(b"HELO client.example\r\n")
    assert c.one(b"MAIL FROM:<a@example.org>SIZE=1\r\n") == (
        "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]")


def test_mail_null_sender_and_space_after_colon() -> None:
    c = ready()
    assert c.one(b"MAIL FROM: <>\r\n") == "250 2.0.0 OK"
    assert c.events == [MailFrom("", {})]


def test_mail_source_route_and_quoted_local_part() -> None:
    c = ready()
    c.feed(b'MAIL FROM:<@relay.example,@r2.example:"a >b"@example.org>\r\n')
    assert c.events == [MailFrom('"a >b"@example.org', {})]


def test_mail_inside_transaction() -> None:
    c = in_txn()
    assert c.one(b"MAIL FROM:<x@example.org>\r\n") == "503 5.5.1 Nested MAIL command"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"MAIL a@example.org\r\n", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM:a@example.org\r\n", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM:<a@example.org\r\n", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM:<a@example.org>x\r\n",
         "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        (b"MAIL FROM:<a@example.org> =x\r\n", "501 5.5.4 Syntax error in parameters"),
        (b"MAIL FROM:<a@example.org> SIZE=1 SIZE=2\r\n", "501 5.5.4 Syntax error in parameters"),
        (b"MAIL FROM:<a@example.org> SIZE=abc\r\n", "501 5.5.4 Syntax: SIZE=<octets>"),
        (b"MAIL FROM:<a@example.org> SIZE=999999999\r\n",
         "552 5.3.4 Message size exceeds fixed maximum message size"),
        (b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n", "501 5.5.4 Unsupported BODY type"),
        (b"MAIL FROM:<a@example.org> SMTPUTF8=yes\r\n", "501 5.5.4 SMTPUTF8 takes no value"),
        (b"MAIL FROM:<a@example.org> AUTH\r\n", "501 5.5.4 Syntax: AUTH=<mailbox>"),
        (b"MAIL FROM:<a@example.org> FOO=bar\r\n", "555 5.5.4 Unsupported parameter FOO"),
        (b"MAIL FROM:<no-domain>\r\n", "553 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a@@example.org>\r\n", "553 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a..b@example.org>\r\n", "553 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a@-example.org>\r\n", "553 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<" + b"x" * 65 + b"@example.org>\r\n", "553 5.1.7 Bad sender address syntax"),
        ("MAIL FROM:<jürgen@example.org>\r\n".encode(),
         "553 5.6.7 Non-ASCII address requires SMTPUTF8"),
    ],
)
def test_mail_errors(line: bytes, reply: str) -> None:
    c = ready(max_message_size=1000)
    assert c.one(line) == reply
    assert c.events == []
    assert not c.conn.in_transaction


def test_mail_smtputf8_address() -> None:
    c = ready()
    assert c.one("MAIL FROM:<jürgen@bücher.example> SMTPUTF8\r\n".encode()) == "250 2.0.0 OK"
    assert c.one("RCPT TO:<δοκιμή@παράδειγμα.example>\r\n".encode()) == "250 2.0.0 OK"
    c.feed(b"DATA\r\nx\r\n.\r\n")
    (msg,) = c.messages()
    assert msg.smtputf8 is True
    assert msg.mail_from == "jürgen@bücher.example"
    assert msg.recipients == ("δοκιμή@παράδειγμα.example",)


def test_mail_address_literal_domain() -> None:
    c = ready()
    assert c.one(b"MAIL FROM:<a@[192.0.2.7]>\r\n") == "250 2.0.0 OK"


def test_submission_requires_auth() -> None:
    c = ready(submission=True, tls_active=True)
    assert c.one(b"MAIL FROM:<a@example.org>\r\n") == "530 5.7.0 Authentication required"
    c.feed(f"AUTH PLAIN {plain('alice', 'secret')}\r\n".encode())
    assert c.conn.authenticated_as == "alice"
    assert c.one(b"MAIL FROM:<a@example.org>\r\n") == "250 2.0.0 OK"


def test_rejected_mail_does_not_start_transaction() -> None:
    c = ready(answer=lambda conn, e: conn.send(Reply(553, "5.7.1", "not yours")))
    assert c.one(b"MAIL FROM:<a@example.org>\r\n") == "553 5.7.1 not yours"
    assert c.one(b"RCPT TO:<b@example.net>\r\n") == "503 5.5.1 Need MAIL command first"


# --- RCPT -------------------------------------------------------------------------------------


def test_rcpt_before_mail() -> None:
    assert ready().one(b"RCPT TO:<b@example.net>\r\n") == "503 5.5.1 Need MAIL command first"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"RCPT b@example.net\r\n", "501 5.5.4 Syntax: RCPT TO:<address>"),
        (b"RCPT TO:b@example.net\r\n", "501 5.5.4 Syntax: RCPT TO:<address>"),
        (b"RCPT TO:<b@example.net> XNOTIFY=NEVER\r\n", "555 5.5.4 Unsupported parameter XNOTIFY"),
        (b"RCPT TO:<>\r\n", "553 5.1.3 Bad recipient address syntax"),
        (b"RCPT TO:<bob>\r\n", "553 5.1.3 Bad recipient address syntax"),
        ("RCPT TO:<jürgen@example.org>\r\n".encode(),
         "553 5.6.7 Non-ASCII address requires SMTPUTF8"),
    ],
)
def test_rcpt_errors(line: bytes, reply: str) -> None:
    c = ready()
    c.feed(b"MAIL FROM:<a@example.org>\r\n")
    assert c.one(line) == reply
    assert [type(e) for e in c.events] == [MailFrom]


def test_rcpt_postmaster() -> None:
    c = ready()
    c.feed(b"MAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\n")
    assert c.events[-1] == RcptTo("postmaster", {})


def test_too_many_recipients() -> None:
    c = ready(max_recipients=2)
    c.feed(b"MAIL FROM:<a@example.org>\r\n")
    out = c.replies(
        b"RCPT TO:<r1@x.example>\r\nRCPT TO:<r2@x.example>\r\nRCPT TO:<r3@x.example>\r\n"
    )
    assert out == ["250 2.0.0 OK", "250 2.0.0 OK", "452 4.5.3 Too many recipients"]
    c.feed(b"DATA\r\nhi\r\n.\r\n")
    assert c.messages()[0].recipients == ("r1@x.example", "r2@x.example")


def test_rejected_recipients_are_not_in_message() -> None:
    def answer(conn: SMTPConnection, e: Event) -> None:
        if isinstance(e, RcptTo) and e.address.startswith("bad"):
            conn.send(Reply(550, "5.1.1", "no such user"))
        else:
            conn.send(OK)

    c = ready(answer=answer)
    c.feed(b"MAIL FROM:<a@example.org>\r\n")
    c.feed(b"RCPT TO:<bad@x.example>\r\nRCPT TO:<good@x.example>\r\nDATA\r\nx\r\n.\r\n")
    assert c.messages()[0].recipients == ("good@x.example",)


# --- DATA -------------------------------------------------------------------------------------


def test_data_sequence_errors() -> None:
    c = ready()
    assert c.one(b"DATA\r\n") == "503 5.5.1 Need MAIL command first"
    c.feed(b"MAIL FROM:<a@example.org>\r\n")
    assert c.one(b"DATA\r\n") == "503 5.5.1 Need RCPT command first"
    assert c.one(b"DATA x\r\n") == "501 5.5.4 Syntax: DATA"


def test_data_no_valid_recipients() -> None:
    c = ready(answer=lambda conn, e: conn.send(
        Reply(550, "5.1.1", "no") if isinstance(e, RcptTo) else OK))
    out = c.replies(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@x.example>\r\nDATA\r\n")
    assert out == ["250 2.0.0 OK", "550 5.1.1 no", "554 5.5.1 No valid recipients"]


def test_data_message_and_transaction_end() -> None:
    c = in_txn()
    assert c.one(b"DATA\r\n") == "354 End data with <CR><LF>.<CR><LF>"
    assert c.conn.in_transaction
    assert c.one(b"Subject: hi\r\n\r\nbody\r\n.\r\n") == "250 2.0.0 OK"
    (msg,) = c.messages()
    assert msg == MessageData(b"Subject: hi\r\n\r\nbody\r\n", "a@example.org",
                              ("b@example.net",), None, False,
                              rcpt_notify=(None,), rcpt_orcpt=(None,))
    assert not c.conn.in_transaction
    # back to "after EHLO": a new transaction may start, RCPT needs MAIL
    assert c.one(b"RCPT TO:<b@example.net>\r\n") == "503 5.5.1 Need MAIL command first"


def test_data_body_param_upper_cased() -> None:
    c = ready()
    c.feed(b"MAIL FROM:<a@example.org> BODY=8bitMIME\r\nRCPT TO:<b@x.example>\r\n")
    c.feed(b"DATA\r\n\xc3\xa9\r\n.\r\n")
    assert c.messages()[0].body == "8BITMIME"
    assert c.messages()[0].data == b"\xc3\xa9\r\n"


def test_data_empty_message() -> None:
    c = in_txn()
    c.feed(b"DATA\r\n.\r\n")
    assert c.messages()[0].data == b""


def test_data_empty_line_message() -> None:
    c = in_txn()
    c.feed(b"DATA\r\n\r\n.\r\n")
    assert c.messages()[0].data == b"\r\n"


def test_dot_unstuffing() -> None:
    c = in_txn()
    c.feed(b"DATA\r\n..leading\r\nmid\r\n..\r\n...x\r\n.\r\n")
    assert c.messages()[0].data == b".leading\r\nmid\r\n.\r\n..x\r\n"


def test_dot_only_first_line_variants() -> None:
    # ".." as first line is a stuffed "."; ".x" (unstuffed by a sloppy client) loses its dot
    c = in_txn()
    c.feed(b"DATA\r\n..\r\n.x\r\n.\r\n")
    assert c.messages()[0].data == b".\r\nx\r\n"


def test_data_split_at_every_boundary() -> None:
    payload = b"Subject: t\r\n\r\n..a\r\nb\r\n\r\n.\r\n"
    whole = in_txn()
    whole.feed(b"DATA\r\n" + payload + b"QUIT\r\n")
    expected = whole.messages()[0].data
    assert expected == b"Subject: t\r\n\r\n.a\r\nb\r\n\r\n"
    for i in range(len(payload) + 1):
        for j in range(i, len(payload) + 1):
            c = in_txn()
            c.feed(b"DATA\r\n")
            for part in (payload[:i], payload[i:j], payload[j:]):
                if part:
                    c.feed(part)
            assert [m.data for m in c.messages()] == [expected], (i, j)
            assert not c.conn.closed


def test_data_byte_by_byte() -> None:
    c = in_txn()
    c.feed(b"DATA\r\n")
    for byte in b".\r\n":  # the leading ".\r\n" arriving in pieces is the end
        c.feed(bytes([byte]))
    assert c.messages()[0].data == b""
    c.feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    for byte in b"a\r\n.b\r\n\r\n.\r\nNOOP\r\n":
        c.feed(bytes([byte]))
    assert c.messages()[1].data == b"a\r\nb\r\n\r\n"


def test_dot_not_at_line_start_is_content() -> None:
    c = in_txn()
    c.feed(b"DATA\r\na.\r\nb\r\n.\r\n")
    assert c.messages()[0].data == b"a.\r\nb\r\n"


def test_data_pipelined_with_following_commands() -> None:
    c = ready()
    out = c.replies(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
        b"one\r\n.\r\nMAIL FROM:<c@example.org>\r\nRCPT TO:<d@example.net>\r\nDATA\r\n"
        b"two\r\n.\r\nQUIT\r\n"
    )
    assert out == ["250 2.0.0 OK", "250 2.0.0 OK", "354 End data with <CR><LF>.<CR><LF>",
                   "250 2.0.0 OK", "250 2.0.0 OK", "250 2.0.0 OK",
                   "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 OK",
                   "221 2.0.0 mx.example closing connection"]
    assert [m.data for m in c.messages()] == [b"one\r\n", b"two\r\n"]
    assert c.messages()[1].mail_from == "c@example.org"


def test_data_size_limit() -> None:
    c = in_txn(max_message_size=100)
    c.feed(b"DATA\r\n")
    out = b""
    for _ in range(50):
        out += c.feed(b"x" * 30 + b"\r\n")
    assert out == b""
    # the content is not buffered while discarding
    assert len(c.conn._buf) < 100
    assert c.one(b".\r\n") == "552 5.3.4 Message size exceeds fixed maximum message size"
    assert c.messages() == []
    assert not c.conn.closed
    assert not c.conn.in_transaction
    assert c.one(b"NOOP\r\n") == "250 2.0.0 OK"


def test_data_size_limit_exact_fit() -> None:
    c = in_txn(max_message_size=10)
    c.feed(b"DATA\r\n12345678\r\n.\r\n")
    assert c.messages()[0].data == b"12345678\r\n"
    c2 = in_txn(max_message_size=10)
    assert c2.replies(b"DATA\r\n123456789\r\n.\r\n")[-1] == (
        "552 5.3.4 Message size exceeds fixed maximum message size")


def test_oversize_end_marker_split() -> None:
    c = in_txn(max_message_size=10)
    c.feed(b"DATA\r\n" + b"y" * 50 + b"\r")
    c.feed(b"\n.")
    assert c.replies(b"\r\nNOOP\r\n") == [
        "552 5.3.4 Message size exceeds fixed maximum message size", "250 2.0.0 OK"]


def test_oversize_with_bare_lf_still_closes() -> None:
    c = in_txn(max_message_size=10)
    c.feed(b"DATA\r\n" + b"y" * 50 + b"\r\n")
    assert c.one(b"z\n.\nMAIL FROM:<x@example.org>\r\n").startswith("554 5.6.0")
    assert c.conn.closed


SMUGGLE = "554 5.6.0 Bare CR or LF in message data; lines must end with CRLF"


@pytest.mark.parametrize(
    "content",
    [
        b"a\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<v@example.net>\r\nDATA\r\nx\r\n.\r\n",
        b"a\r.\rMAIL FROM:<evil@example.org>\r\nRCPT TO:<v@example.net>\r\nDATA\r\nx\r\n.\r\n",
        b"a\r\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<v@example.net>\r\nDATA\r\nx\r\n.\r\n",
        b"a\n.\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<v@example.net>\r\nDATA\r\nx\r\n.\r\n",
        b"a\r\n.\rMAIL FROM:<evil@example.org>\r\n",
        b"a\r.\r\nMAIL FROM:<evil@example.org>\r\n",
        b"bare\nlf\r\n.\r\n",
        b"bare\rcr\r\n.\r\n",
        b"\n.\r\n",
        b".\n",
        b"\r.\r\n",
        b"a\n.\nQUIT\r\n",
        b"x\r\r\n.\r\n",
        b"x\n\n.\r\n",
    ],
)
def test_smuggling_closes(content: bytes) -> None:
    c = in_txn()
    c.feed(b"DATA\r\n")
    out = c.replies(content)
    assert out == [SMUGGLE]
    assert c.conn.closed
    assert c.messages() == []
    assert [type(e) for e in c.events] == [MailFrom, RcptTo]
    assert c.feed(b"RSET\r\n") == b""


@pytest.mark.parametrize("split", range(1, 12))
def test_smuggling_split_across_calls(split: int) -> None:
    data = b"ab\r\n.\rMAIL FROM:<e@x.example>\r\n"
    c = in_txn()
    c.feed(b"DATA\r\n")
    out = c.feed(data[:split]) + c.feed(data[split:])
    assert out.decode() == SMUGGLE + "\r\n"
    assert c.conn.closed and c.messages() == []


def test_smuggling_in_one_packet_with_pipelined_commands() -> None:
    c = ready()
    out = c.replies(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
        b"hi\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
        b"spoofed\r\n.\r\nQUIT\r\n"
    )
    assert out == ["250 2.0.0 OK", "250 2.0.0 OK", "354 End data with <CR><LF>.<CR><LF>",
                   SMUGGLE]
    assert c.conn.closed
    assert c.messages() == []


def test_trailing_cr_waits_for_next_byte() -> None:
    c = in_txn()
    c.feed(b"DATA\r\nabc\r")
    assert not c.conn.closed
    c.feed(b"\n.\r")
    assert not c.conn.closed
    c.feed(b"\n")
    assert c.messages()[0].data == b"abc\r\n"


def test_commands_after_data_may_use_bare_lf() -> None:
    c = in_txn()
    out = c.replies(b"DATA\r\nx\r\n.\r\nNOOP\n")
    assert out[-2:] == ["250 2.0.0 OK", "250 2.0.0 OK"]
    assert not c.conn.closed


# --- BDAT -------------------------------------------------------------------------------------


def test_bdat_chunks() -> None:
    c = in_txn()
    assert c.one(b"BDAT 5\r\nhello") == "250 2.0.0 5 octets received"
    assert c.one(b"BDAT 7 LAST\r\n\r\nworld") == "250 2.0.0 OK"
    (msg,) = c.messages()
    assert msg.data == b"hello\r\nworld"
    assert c.one(b"RCPT TO:<b@example.net>\r\n") == "503 5.5.1 Need MAIL command first"


def test_bdat_zero_last_and_across_calls() -> None:
    c = in_txn()
    c.feed(b"BDAT 10\r\n0123")
    c.feed(b"45")
    assert c.replies(b"6789BDAT 0 LAST\r\n") == ["250 2.0.0 10 octets received",
                                                   "250 2.0.0 OK"]
    assert c.messages()[0].data == b"0123456789"


def test_bdat_byte_by_byte_then_command() -> None:
    c = in_txn()
    out = b""
    for byte in b"BDAT 6 last\r\nQUIT\r\nNOOP\r\n":
        out += c.feed(bytes([byte]))
    assert out == b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n"
    assert c.messages()[0].data == b"QUIT\r\n"


def test_bdat_content_is_not_dot_processed() -> None:
    c = in_txn()
    c.feed(b"BDAT 9 LAST\r\n..\r\n.\r\nab")
    assert c.messages()[0].data == b"..\r\n.\r\nab"


def test_bdat_errors() -> None:
    c = ready()
    assert c.one(b"BDAT 3 LAST\r\nabc") == "503 5.5.1 Need MAIL command first"
    assert c.one(b"BDAT x\r\n") == "501 5.5.4 Syntax: BDAT <size> [LAST]"
    assert c.one(b"BDAT 1 NOW\r\n") == "501 5.5.4 Syntax: BDAT <size> [LAST]"
    assert c.one(b"BDAT\r\n") == "501 5.5.4 Syntax: BDAT <size> [LAST]"


def test_bdat_before_any_rcpt() -> None:
    # Like DATA: 503 when RCPT was never tried; the chunk is still read off the wire.
    c = ready()
    c.feed(b"MAIL FROM:<a@example.org>\r\n")
    assert c.one(b"BDAT 4 LAST\r\nQUIT") == "503 5.5.1 Need RCPT command first"
    assert c.one(b"NOOP\r\n") == "250 2.0.0 OK"
    assert not c.conn.closed
    assert c.messages() == []
    # As for every BDAT error, the transaction is over (as before this answer was added).
    assert c.one(b"BDAT 4\r\nQUIT") == "503 5.5.1 Need MAIL command first"
    assert c.replies(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
                     b"BDAT 2 LAST\r\nhi") == ["250 2.0.0 OK"] * 3
    assert c.messages()[0].data == b"hi"


def test_bdat_no_recipients() -> None:
    c = ready(answer=lambda conn, e: conn.send(
        Reply(550, "5.1.1", "no") if isinstance(e, RcptTo) else OK))
    c.feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@x.example>\r\n")
    assert c.one(b"BDAT 4 LAST\r\nNOOP") == "554 5.5.1 No valid recipients"
    assert c.one(b"NOOP\r\n") == "250 2.0.0 OK"
    assert c.messages() == []


def test_bdat_size_limit() -> None:
    c = in_txn(max_message_size=10)
    assert c.one(b"BDAT 6\r\nabcdef") == "250 2.0.0 6 octets received"
    c.feed(b"BDAT 6 LAST\r\nghi")
    assert len(c.conn._chunks) == 6  # the oversize chunk is not kept
    assert c.one(b"jkl") == "552 5.3.4 Message size exceeds fixed maximum message size"
    assert c.messages() == []
    assert c.one(b"BDAT 1 LAST\r\nx") == "503 5.5.1 Need MAIL command first"


def test_bdat_and_data_do_not_mix() -> None:
    c = in_txn()
    c.feed(b"BDAT 2\r\nab")
    assert c.one(b"DATA\r\n") == "503 5.5.1 DATA not allowed after BDAT"
    assert c.one(b"RCPT TO:<x@example.net>\r\n") == "503 5.5.1 RCPT not allowed after BDAT"
    assert c.one(b"RSET\r\n") == "250 2.0.0 OK"
    assert c.messages() == []


def test_bdat_bare_lf_rejected_session_kept() -> None:
    c = in_txn()
    assert c.one(b"BDAT 5 LAST\r\na\nb\rc") == SMUGGLE
    assert not c.conn.closed
    assert c.messages() == []
    assert c.one(b"MAIL FROM:<a@example.org>\r\n") == "250 2.0.0 OK"


def test_bdat_pipelined_with_mail_rcpt() -> None:
    c = ready()
    out = c.replies(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
                    b"BDAT 3\r\nabcBDAT 3 LAST\r\ndefQUIT\r\n")
    assert out == ["250 2.0.0 OK", "250 2.0.0 OK", "250 2.0.0 3 octets received",
                   "250 2.0.0 OK", "221 2.0.0 mx.example closing connection"]
    assert c.messages()[0].data == b"abcdef"


# --- AUTH -------------------------------------------------------------------------------------


def auth_client(**kw: object) -> Client:
    return ready(tls_active=True, **kw)


def test_auth_plain_initial_response() -> None:
    c = auth_client()
    line = f"AUTH PLAIN {plain('bob', 'pw', 'zid')}\r\n".encode()
    assert c.one(line) == "235 2.7.0 Authentication successful"
    assert c.events == [AuthRequest(Credentials("PLAIN", "bob", "pw", "zid"))]
    assert c.conn.authenticated_as == "bob"
    assert c.one(b"AUTH PLAIN =\r\n") == "503 5.5.1 Already authenticated"


def test_auth_plain_continuation() -> None:
    c = auth_client()
    assert c.lines(b"AUTH PLAIN\r\n") == ["334 "]
    assert c.one(f"{plain('bob', 'pw')}\r\n".encode()) == "235 2.7.0 Authentication successful"
    assert c.events == [AuthRequest(Credentials("PLAIN", "bob", "pw"))]


def test_auth_login_flow() -> None:
    c = auth_client()
    assert c.lines(b"auth login\r\n") == ["334 VXNlcm5hbWU6"]
    assert c.lines(f"{b64(b'bob')}\r\n".encode()) == ["334 UGFzc3dvcmQ6"]
    assert c.one(f"{b64(b'pw')}\r\n".encode()) == "235 2.7.0 Authentication successful"
    assert c.events == [AuthRequest(Credentials("LOGIN", "bob", "pw"))]


def test_auth_login_initial_response_pipelined() -> None:
    c = auth_client()
    out = c.lines(f"AUTH LOGIN {b64(b'bob')}\r\n{b64(b'pw')}\r\nNOOP\r\n".encode())
    assert out == ["334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful", "250 2.0.0 OK"]


def test_auth_rejected() -> None:
    c = auth_client(answer=lambda conn, e: conn.reject_auth())
    assert c.one(f"AUTH PLAIN {plain('bob', 'no')}\r\n".encode()) == (
        "535 5.7.8 Authentication credentials invalid")
    assert c.conn.authenticated_as is None
    c.answer = lambda conn, e: conn.reject_auth(Reply(454, "4.7.0", "Temporary failure"))
    assert c.one(f"AUTH PLAIN {plain('bob', 'no')}\r\n".encode()) == "454 4.7.0 Temporary failure"


def test_auth_cancel_and_bad_base64() -> None:
    c = auth_client()
    c.feed(b"AUTH LOGIN\r\n")
    assert c.one(b"*\r\n") == "501 5.7.0 Authentication cancelled"
    c.feed(b"AUTH PLAIN\r\n")
    assert c.one(b"!!!notbase64\r\n") == "501 5.5.2 Invalid base64 data"
    assert c.one(b"AUTH PLAIN !!!\r\n") == "501 5.5.2 Invalid base64 data"
    assert c.one(f"AUTH PLAIN {b64(b'no-nuls')}\r\n".encode()).startswith("501 5.5.2")
    assert c.events == []
    assert c.one(b"NOOP\r\n") == "250 2.0.0 OK"


def test_auth_empty_identity_rejected() -> None:
    # The shared SASL rule (as in POP3): an empty LOGIN username or PLAIN authcid is bad data.
    c = auth_client()
    assert c.one(b"AUTH LOGIN =\r\n") == "501 5.5.2 Invalid SASL data: empty username"
    assert c.lines(b"AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"]
    assert c.one(b"=\r\n") == "501 5.5.2 Invalid SASL data: empty username"
    assert c.one(f"AUTH PLAIN {plain('', 'pw', 'zid')}\r\n".encode()).startswith(
        "501 5.5.2 Invalid SASL data: ")
    assert c.events == []
    assert c.one(b"NOOP\r\n") == "250 2.0.0 OK"


def test_auth_login_bad_base64_password_and_cancel_at_password() -> None:
    c = auth_client()
    c.feed(f"AUTH LOGIN {b64(b'bob')}\r\n".encode())
    assert c.one(b"%%%\r\n") == "501 5.5.2 Invalid base64 data"
    c.feed(f"AUTH LOGIN {b64(b'bob')}\r\n".encode())
    assert c.one(b"*\r\n") == "501 5.7.0 Authentication cancelled"
    assert c.one(b"AUTH PLAIN *\r\n") == "501 5.5.2 Invalid base64 data"  # not a cancel
    assert c.events == []
    assert c.conn.authenticated_as is None


def test_auth_errors() -> None:
    assert auth_client().one(b"AUTH CRAM-MD5\r\n") == "504 5.5.4 Unrecognized authentication type"
    assert auth_client().one(b"AUTH\r\n") == "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
    assert ready().one(b"AUTH PLAIN\r\n") == (
        "538 5.7.11 Encryption required for requested authentication mechanism")
    assert auth_client(auth_enabled=False).one(b"AUTH PLAIN\r\n") == "502 5.5.1 AUTH not available"
    assert Client(tls_active=True).one(b"AUTH PLAIN\r\n") == "503 5.5.1 Send HELO/EHLO first"
    c = auth_client()
    c.feed(b"MAIL FROM:<a@example.org>\r\n")
    assert c.one(b"AUTH PLAIN\r\n") == "503 5.5.1 AUTH not permitted during a mail transaction"


def test_auth_plaintext_allowed_in_development() -> None:
    c = ready(allow_plaintext_auth=True)
    assert c.one(f"AUTH PLAIN {plain('bob', 'pw')}\r\n".encode()).startswith("235")


def test_auth_continuation_line_limit() -> None:
    c = auth_client()
    c.feed(b"AUTH PLAIN\r\n")
    long_ok = b64(b"\0bob\0" + b"p" * 9000).encode()  # > 2048, < 12288
    assert len(long_ok) > 2048
    assert c.one(long_ok + b"\r\n") == "235 2.7.0 Authentication successful"
    c2 = auth_client()
    c2.feed(b"AUTH PLAIN\r\n")
    assert c2.replies(b"A" * 20000 + b"\r\nNOOP\r\n") == ["500 5.5.2 Line too long",
                                                          "250 2.0.0 OK"]


def test_answer_methods_misuse() -> None:
    c = auth_client()
    with pytest.raises(RuntimeError):
        c.conn.send(OK)
    with pytest.raises(RuntimeError):
        c.conn.accept_auth("x")
    with pytest.raises(RuntimeError):
        c.conn.reject_auth()
    c.conn.receive_data(b"MAIL FROM:<a@example.org>\r\n")
    assert isinstance(c.conn.next_event(), MailFrom)
    with pytest.raises(RuntimeError):
        c.conn.accept_auth("x")


def test_pending_event_blocks_processing() -> None:
    conn = SMTPConnection(SMTPSettings("mx.example"))
    conn.receive_data(b"EHLO a\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\nNOOP\r\n")
    event = conn.next_event()
    assert isinstance(event, MailFrom)
    before = conn.data_to_send()
    assert conn.next_event() is None
    assert conn.data_to_send() == b""
    conn.send(OK)
    assert conn.next_event() is None
    assert conn.data_to_send() == b"250 2.0.0 OK\r\n" * 3
    assert before.startswith(b"250-")


# --- STARTTLS ---------------------------------------------------------------------------------


def test_starttls_discards_pipelined_plaintext() -> None:
    c = Client(answer=lambda conn, e: None)
    c.feed(b"EHLO a.example\r\n")
    out = c.lines(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<x@y.example>\r\n")
    assert out == ["220 2.0.0 Ready to start TLS"]
    assert c.events == [StartTLS()]
    assert c.conn.next_event() is None
    c.conn.receive_data(b"NOOP\r\n")  # plaintext before the handshake: ignored
    assert c.conn.next_event() is None
    c.conn.tls_started()
    assert c.conn.tls_active
    assert c.conn.helo_domain is None
    assert c.one(b"MAIL FROM:<a@example.org>\r\n") == "503 5.5.1 Send HELO/EHLO first"
    lines = c.lines(b"EHLO a.example\r\n")
    assert "250-STARTTLS" not in lines
    assert "250-AUTH PLAIN LOGIN" in lines


def test_starttls_resets_state() -> None:
    c = ready(allow_plaintext_auth=True)
    c.feed(f"AUTH PLAIN {plain('bob', 'pw')}\r\nMAIL FROM:<a@example.org>\r\n".encode())
    assert c.conn.authenticated_as == "bob"
    c.feed(b"STARTTLS\r\n")
    assert c.conn.authenticated_as is None
    assert not c.conn.in_transaction
    assert not c.conn.esmtp


def test_starttls_errors() -> None:
    assert ready(tls_active=True).one(b"STARTTLS\r\n") == "503 5.5.1 TLS already active"
    assert ready(tls_available=False).one(b"STARTTLS\r\n") == "502 5.5.1 STARTTLS not available"
    assert ready().one(b"STARTTLS now\r\n") == "501 5.5.4 Syntax: STARTTLS"


# --- limits -----------------------------------------------------------------------------------


def test_line_too_long_one_call() -> None:
    c = ready()
    out = c.replies(b"NOOP " + b"x" * 100_000 + b"\r\nNOOP\r\n")
    assert out == ["500 5.5.2 Line too long", "250 2.0.0 OK"]


def test_line_too_long_many_calls_bounded_buffer() -> None:
    c = ready()
    out = c.replies(b"MAIL FROM:<" + b"x" * 1000)
    for _ in range(99):
        out += c.replies(b"y" * 1000)
        assert len(c.conn._buf) <= 2048
    out += c.replies(b">\r\nNOOP\r\n")
    assert out == ["500 5.5.2 Line too long", "250 2.0.0 OK"]


def test_line_length_limit_exact() -> None:
    c = ready(max_command_line=10)
    assert c.one(b"NOOP 1234\r\n") == "500 5.5.2 Line too long"  # 11 octets
    c2 = ready(max_command_line=11)
    assert c2.one(b"NOOP 1234\r\n") == "250 2.0.0 OK"
    c3 = ready(max_command_line=10)
    assert c3.one(b"NOOP 123\r\n") == "250 2.0.0 OK"


def test_too_many_errors() -> None:
    c = ready(max_errors=3)
    out = c.replies(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert out == ["500 5.5.2 Command not recognized"] * 3 + [
        "421 4.7.0 Too many errors, closing connection"]
    assert c.conn.closed


def test_session_rejections_count_as_errors() -> None:
    c = ready(max_errors=2, answer=lambda conn, e: conn.send(
        Reply(550, "5.1.1", "no") if isinstance(e, RcptTo) else OK))
    out = c.replies(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<a@x.example>\r\n"
                    b"RCPT TO:<b@x.example>\r\nRCPT TO:<c@x.example>\r\n")
    assert out[-1] == "421 4.7.0 Too many errors, closing connection"
    assert c.conn.closed


def reject_unknown(conn: SMTPConnection, event: Event) -> None:
    if isinstance(event, RcptTo) and event.address.startswith("gone"):
        conn.send(Reply(550, "5.1.1", "User unknown"))
    else:
        conn.send(OK)


def unknown_rcpts(n: int, start: int = 0) -> bytes:
    return b"".join(b"RCPT TO:<gone%d@x.example>\r\n" % i for i in range(start, start + n))


def test_delivered_message_resets_error_count() -> None:
    # Postfix smtpd_hard_error_limit: errors a client may make without delivering mail.
    c = ready(answer=reject_unknown)  # max_errors=20
    out = c.replies(b"MAIL FROM:<list@example.org>\r\n" + unknown_rcpts(15)
                    + b"RCPT TO:<ok@x.example>\r\nDATA\r\nhi\r\n.\r\n")
    assert out[-1] == "250 2.0.0 OK" and out.count("550 5.1.1 User unknown") == 15
    out = c.replies(b"MAIL FROM:<list@example.org>\r\n" + unknown_rcpts(15, 15)
                    + b"RCPT TO:<ok2@x.example>\r\nBDAT 2 LAST\r\nhi")
    assert not c.conn.closed
    assert "421 4.7.0 Too many errors, closing connection" not in out
    assert out[-1] == "250 2.0.0 OK"
    assert [m.recipients for m in c.messages()] == [("ok@x.example",), ("ok2@x.example",)]
    # ... and counting goes on after the reset
    out = c.replies(b"MAIL FROM:<list@example.org>\r\n" + unknown_rcpts(20, 30))
    assert out[-1] == "421 4.7.0 Too many errors, closing connection"
    assert c.conn.closed


def test_errors_without_delivery_still_close() -> None:
    c = ready(answer=reject_unknown)
    out = c.replies(b"MAIL FROM:<a@example.org>\r\n" + unknown_rcpts(20) + b"NOOP\r\n")
    assert out[1:] == ["550 5.1.1 User unknown"] * 20 + [
        "421 4.7.0 Too many errors, closing connection"]
    assert c.conn.closed


def test_rejected_message_does_not_reset_error_count() -> None:
    c = ready(max_errors=3, answer=lambda conn, e: conn.send(
        Reply(554, "5.7.1", "no") if isinstance(e, MessageData) else OK))
    out = c.replies(b"FOO\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@x.example>\r\n"
                    b"DATA\r\nx\r\n.\r\nBAR\r\n")
    assert out[-1] == "421 4.7.0 Too many errors, closing connection"


def test_close_from_session() -> None:
    c = in_txn()
    c.conn.close(Reply(421, "4.4.2", "Idle timeout, closing connection"))
    assert c.conn.closed
    assert c.conn.data_to_send() == b"421 4.4.2 Idle timeout, closing connection\r\n"
    assert c.feed(b"NOOP\r\n") == b""


# --- tracing ----------------------------------------------------------------------------------


def test_trace_redacts_auth_and_message() -> None:
    c = auth_client(answer=lambda conn, e: conn.reject_auth() if isinstance(e, AuthRequest)
                    else conn.send(OK))
    c.feed(f"AUTH PLAIN {plain('bob', 'secret')}\r\n".encode())
    c.feed(f"AUTH LOGIN\r\n{b64(b'bob')}\r\n{b64(b'secret')}\r\n".encode())
    c.feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    c.feed(b"DATA\r\nsecret body\r\n.\r\nBDAT 3 LAST\r\nxyz")
    client = [line for d, line in c.trace if d == "C"]
    assert client == [
        "EHLO client.example", "AUTH PLAIN <redacted>", "AUTH LOGIN", "<redacted>",
        "<redacted>", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA",
        "<message: 13 octets>", "BDAT 3 LAST", "<message: 3 octets>",
    ]
    assert not any("secret" in line or b64(b"bob") in line for _, line in c.trace)
    server = [line for d, line in c.trace if d == "S"]
    assert server[0] == "220 mx.example ESMTP netpost"
    assert "354 End data with <CR><LF>.<CR><LF>" in server
    assert "334 VXNlcm5hbWU6" in server


def test_trace_redacts_auth_lines_that_are_not_utf8() -> None:
    c = auth_client(answer=lambda conn, e: conn.reject_auth())
    secret = plain("bob", "secret")
    assert c.one(f"AUTH PLAIN {secret}".encode() + b"\xff\r\n") == (
        "500 5.5.2 Syntax error: command is not valid UTF-8")
    c.feed(f"auth plain \xff{secret}\r\n".encode("latin-1"))
    c.feed(f"AUTH {secret} \xff\r\n".encode("latin-1"))  # no mechanism: all redacted
    c.feed(f"AUTH\t{secret}\xff\r\n".encode("latin-1"))
    c.feed(f"AUTH \xffPLAIN {secret}\r\n".encode("latin-1"))
    c.feed(b"AUTH x-Custom\r\nAUTH CRAM-MD5\r\nAUTH\r\n")
    # SASL continuation lines are redacted whatever they contain
    assert c.lines(b"AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"]
    assert c.one(f"{b64(b'bob')}\xff\r\n".encode("latin-1")).startswith("501 5.5.2")
    assert c.lines(b"AUTH PLAIN\r\n") == ["334 "]
    c.feed(secret.encode() + b"\xfe\xff\r\n")
    client = [line for d, line in c.trace if d == "C"]
    assert client == [
        "EHLO client.example", "AUTH PLAIN <redacted>", "AUTH PLAIN <redacted>",
        "AUTH <redacted>", "AUTH <redacted>", "AUTH <redacted>", "AUTH <redacted>",
        "AUTH CRAM-MD5", "AUTH", "AUTH LOGIN", "<redacted>", "AUTH PLAIN", "<redacted>",
    ]
    assert not any(secret in line or b64(b"bob") in line for _, line in c.trace)
    assert c.events == []


def test_output_lines_well_formed() -> None:
    c = ready()
    out = c.feed(b"HELP\r\nFOO\r\nMAIL FROM:<>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n.\r\n")
    for line in out.split(b"\r\n")[:-1]:
        assert LINE_RE.match(line)
