"""SMTP client engine: scripted server bytes, every branch."""

from __future__ import annotations

import base64

import pytest

from netpost.smtp.client import (
    Closed,
    ConnectionFailed,
    Event,
    Extensions,
    NeedTLS,
    OutRecipient,
    Ready,
    ReplyReader,
    SMTPClient,
    SMTPProtocolError,
    TransactionDone,
    TransactionResult,
    dot_stuff,
    normalize_crlf,
    orcpt_param,
    xtext_encode,
)

EHLO_FULL = (b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
             b"250-SMTPUTF8\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n")
EHLO_PLAIN = b"250-mx.example.net\r\n250 ENHANCEDSTATUSCODES\r\n"  # no PIPELINING


def events(client: SMTPClient) -> list[Event]:
    out = []
    while (e := client.next_event()) is not None:
        out.append(e)
    return out


def sent(client: SMTPClient) -> list[bytes]:
    return client.data_to_send().split(b"\r\n")[:-1]


def ready(ehlo: bytes = EHLO_FULL, **kw: object) -> SMTPClient:
    kw.setdefault("starttls", False)
    c = SMTPClient("out.example.org", **kw)  # type: ignore[arg-type]
    c.receive_data(b"220 mx.example.net ESMTP\r\n")
    assert sent(c) == [b"EHLO out.example.org"]
    c.receive_data(ehlo)
    assert [type(e) for e in events(c)] == [Ready]
    return c


def done(client: SMTPClient) -> TransactionResult:
    evs = events(client)
    assert len(evs) == 1 and isinstance(evs[0], TransactionDone), evs
    return evs[0].result


def rcpts(*addresses: str) -> list[OutRecipient]:
    return [OutRecipient(a) for a in addresses]


# --- reply parser -----------------------------------------------------------------------------


def test_reply_single_and_multiline_with_enhanced_codes() -> None:
    r = ReplyReader()
    got = r.feed(b"250 2.1.5 Ok\r\n550-5.1.1 no such\r\n550-5.1.1 user\r\n550 5.1.1 here\r\n")
    assert [(x.code, x.enhanced, x.lines) for x in got] == [
        (250, "2.1.5", ("Ok",)),
        (550, "5.1.1", ("no such", "user", "here")),
    ]
    assert got[1].text == "no such user here"
    assert str(got[1]) == "550 5.1.1 no such user here"


def test_reply_enhanced_class_must_match_code() -> None:
    (x,) = ReplyReader().feed(b"250 5.1.1 odd\r\n")
    assert x.enhanced is None and x.lines == ("5.1.1 odd",)
    (y,) = ReplyReader().feed(b"354 2.0.0 go ahead\r\n")
    assert y.enhanced is None
    (z,) = ReplyReader().feed(b"250 2.0.0\r\n")
    assert z.enhanced == "2.0.0" and z.lines == ("",)
    (w,) = ReplyReader().feed(b"250 2.0.00x\r\n")  # not followed by space: plain text
    assert w.enhanced is None


def test_reply_bare_code_and_lf_line_ends() -> None:
    got = ReplyReader().feed(b"250\n221-a\n221 b\n")
    assert [(x.code, x.lines) for x in got] == [(250, ("",)), (221, ("a", "b"))]


def test_reply_across_chunks() -> None:
    r = ReplyReader()
    assert r.feed(b"25") == [] and r.partial
    assert r.feed(b"0-a\r") == []
    assert r.feed(b"\n250 b") == []
    (x,) = r.feed(b"\r\n")
    assert x.lines == ("a", "b") and not r.partial


def test_reply_control_characters_neutralized() -> None:
    (x,) = ReplyReader().feed(b"550 bad\x00\x1b[31m text\r\n")
    assert x.text == "bad  [31m text"


@pytest.mark.parametrize("data, reason", [
    (b"hello\r\n", "malformed"),
    (b"2500 x\r\n", "malformed"),
    (b"150 x\r\n", "malformed"),
    (b"260 x\r\n", "malformed"),  # second digit 0-5 (RFC 5321 4.2)
    (b"25\r\n", "malformed"),
    (b"250-a\r\n251 b\r\n", "code changed"),
    (b"250 " + b"x" * 5000 + b"\r\n", "longer than 4096"),
    (b"250 " + b"x" * 5000, "longer than 4096"),
    (b"250-x\r\n" * 201, "longer than 200 lines"),
])
def test_reply_errors(data: bytes, reason: str) -> None:
    r = ReplyReader()
    with pytest.raises(SMTPProtocolError) as info:
        r.feed(data)
    assert reason in info.value.reason
    with pytest.raises(SMTPProtocolError):
        r.feed(b"250 ok\r\n")  # stays broken


# --- encodings --------------------------------------------------------------------------------


def test_xtext_and_orcpt() -> None:
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_encode("<id@x>") == "<id@x>"
    assert xtext_encode("é") == "+C3+A9"
    assert orcpt_param("u+x@example.org") == "rfc822;u+2Bx@example.org"
    assert orcpt_param("jöe@example.org") == "utf-8;j\\x{F6}e@example.org"  # RFC 6533 3


def test_dot_stuffing_and_crlf() -> None:
    assert dot_stuff(b".start\r\nmid\r\n.\r\n..two\r\n") == b"..start\r\nmid\r\n..\r\n...two\r\n"
    assert dot_stuff(b".\r\n") == b"..\r\n"
    assert dot_stuff(b"") == b""
    assert normalize_crlf(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert normalize_crlf(b"x") == b"x\r\n"
    assert normalize_crlf(b"") == b""
    assert normalize_crlf(b"a\r\n") == b"a\r\n"


def test_extensions_parse() -> None:
    (reply,) = ReplyReader().feed(
        b"250-mx.example Hello\r\n250-SIZE 0\r\n250-AUTH=LOGIN\r\n250-auth plain login\r\n"
        b"250-STARTTLS\r\n250 X-FOO bar baz\r\n")
    ext = Extensions.from_ehlo(reply)
    assert ext.greeting_domain == "mx.example"
    assert ext.size is None and ext.has("SIZE")  # RFC 1870 4: 0 = no fixed limit
    assert ext.auth == {"PLAIN", "LOGIN"} and ext.starttls
    assert ext.keywords["X-FOO"] == "bar baz" and not ext.pipelining


# --- session setup ----------------------------------------------------------------------------


def test_greeting_554_fails_permanently_and_quits() -> None:
    c = SMTPClient("me.example")
    c.receive_data(b"554 5.7.1 no service for you\r\n")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and not e.temporary and e.reply is not None
    assert e.reply.code == 554 and "no service" in e.reason
    assert sent(c) == [b"QUIT"]  # RFC 5321 3.1
    assert not c.usable


def test_greeting_421_temporary_no_quit() -> None:
    c = SMTPClient("me.example")
    c.receive_data(b"421 4.3.2 busy\r\n")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and e.temporary
    assert sent(c) == []


def test_greeting_unexpected_code_fails() -> None:
    c = SMTPClient("me.example")
    c.receive_data(b"250 hi\r\n")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and e.temporary


def test_eof_before_greeting_and_after_rcpt() -> None:
    c = SMTPClient("me.example")
    assert c.waiting_for == "greeting"
    c.receive_data(b"")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and e.reason == "connection closed before the greeting"
    c = ready(EHLO_PLAIN)
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"hi\r\n")
    assert sent(c) == [b"MAIL FROM:<a@x.example>"]
    c.receive_data(b"250 ok\r\n")
    assert sent(c) == [b"RCPT TO:<b@y.example>"]
    assert c.waiting_for == "reply to RCPT"
    c.receive_data(b"")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and e.reason == "connection lost after RCPT"


def test_garbage_reply_is_connection_failure() -> None:
    c = SMTPClient("me.example")
    c.receive_data(b"\x00\xffgarbage\r\n")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and e.temporary and "protocol error" in e.reason
    c.receive_data(b"220 late\r\n")  # ignored
    assert events(c) == []


def test_unsolicited_reply_fails() -> None:
    c = ready()
    c.receive_data(b"250 surprise\r\n")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and "unexpected reply" in e.reason


def test_ehlo_5xx_falls_back_to_helo() -> None:
    c = SMTPClient("me.example")
    c.receive_data(b"220 old\r\n")
    assert sent(c) == [b"EHLO me.example"]
    c.receive_data(b"502 5.5.1 what\r\n")
    assert sent(c) == [b"HELO me.example"]  # RFC 5321 3.2
    c.receive_data(b"250 old.example\r\n")
    (e,) = events(c)
    assert isinstance(e, Ready) and not e.extensions.esmtp
    # no extensions: no SIZE/BODY parameters, one command at a time
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"hi\r\n")
    assert sent(c) == [b"MAIL FROM:<a@x.example>"]


def test_helo_refused() -> None:
    c = SMTPClient("me.example")
    c.receive_data(b"220 old\r\n500 no\r\n")
    c.data_to_send()
    c.receive_data(b"550 go away\r\n")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and not e.temporary and "HELO refused" in e.reason


def test_ehlo_4xx_is_temporary() -> None:
    c = SMTPClient("me.example")
    c.receive_data(b"220 x\r\n")
    c.data_to_send()
    c.receive_data(b"451 later\r\n")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and e.temporary


def test_starttls_then_ehlo_again_discards_knowledge() -> None:
    lines: list[tuple[str, str]] = []
    c = SMTPClient("me.example", trace=lambda d, t: lines.append((d, t)))
    c.receive_data(b"220 x\r\n")
    c.data_to_send()
    c.receive_data(b"250-x\r\n250-STARTTLS\r\n250 SIZE 10\r\n")
    assert sent(c) == [b"STARTTLS"]
    # a reply injected after the 220, before the handshake, is dropped (RFC 3207 5)
    c.receive_data(b"220 go ahead\r\n250 injected\r\n")
    assert [type(e) for e in events(c)] == [NeedTLS]
    c.receive_data(b"250 still plaintext\r\n")
    assert events(c) == [] and sent(c) == []
    c.tls_started()
    assert c.extensions.size is None  # RFC 3207 4.2
    assert sent(c) == [b"EHLO me.example"]
    c.receive_data(b"250-x\r\n250 SIZE 99\r\n")
    (e,) = events(c)
    assert isinstance(e, Ready) and e.extensions.size == 99 and c.tls_active
    assert ("S", "250 injected") not in lines


def test_starttls_not_offered_opportunistic_goes_on() -> None:
    c = SMTPClient("me.example", starttls=True)
    c.receive_data(b"220 x\r\n250 x\r\n")
    c.data_to_send()
    assert [type(e) for e in events(c)] == [Ready]


def test_starttls_required_not_offered() -> None:
    c = SMTPClient("me.example", require_tls=True)
    c.receive_data(b"220 x\r\n250 x\r\n")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and e.reason.startswith("TLS required")
    assert sent(c)[-1] == b"QUIT"


def test_starttls_454_opportunistic_and_required() -> None:
    c = SMTPClient("me.example")
    c.receive_data(b"220 x\r\n250-x\r\n250 STARTTLS\r\n")
    c.data_to_send()
    c.receive_data(b"454 4.7.0 TLS not available\r\n")
    assert [type(e) for e in events(c)] == [Ready] and not c.tls_active
    c = SMTPClient("me.example", require_tls=True)
    c.receive_data(b"220 x\r\n250-x\r\n250 STARTTLS\r\n454 4.7.0 no\r\n")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and e.reason.startswith("TLS required")


def test_auth_plain_after_tls_and_redacted() -> None:
    lines: list[tuple[str, str]] = []
    c = SMTPClient("me.example", auth=("user", "secret"), tls_active=True,
                   trace=lambda d, t: lines.append((d, t)))
    c.receive_data(b"220 x\r\n250-x\r\n250 AUTH LOGIN PLAIN\r\n")
    token = base64.b64encode(b"\0user\0secret")
    assert sent(c)[-1] == b"AUTH PLAIN " + token
    c.receive_data(b"235 2.7.0 ok\r\n")
    assert [type(e) for e in events(c)] == [Ready] and c.authenticated
    assert ("C", "AUTH PLAIN <redacted>") in lines
    assert not any(token.decode() in t or "secret" in t for _, t in lines)


def test_auth_login_steps() -> None:
    lines: list[tuple[str, str]] = []
    c = SMTPClient("me.example", auth=("user", "secret"), tls_active=True,
                   trace=lambda d, t: lines.append((d, t)))
    c.receive_data(b"220 x\r\n250-x\r\n250 AUTH LOGIN\r\n")
    assert sent(c)[-1] == b"AUTH LOGIN"
    c.receive_data(b"334 VXNlcm5hbWU6\r\n")
    assert sent(c) == [base64.b64encode(b"user")]
    c.receive_data(b"334 UGFzc3dvcmQ6\r\n")
    assert sent(c) == [base64.b64encode(b"secret")]
    c.receive_data(b"235 ok\r\n")
    assert [type(e) for e in events(c)] == [Ready]
    assert [t for d, t in lines if d == "C"][-2:] == ["<redacted>", "<redacted>"]


def test_auth_failure_is_temporary() -> None:
    c = SMTPClient("me.example", auth=("user", "bad"), tls_active=True)
    c.receive_data(b"220 x\r\n250-x\r\n250 AUTH PLAIN\r\n535 5.7.8 bad credentials\r\n")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and e.temporary and "authentication failed" in e.reason


def test_auth_never_in_plaintext_unless_allowed() -> None:
    c = SMTPClient("me.example", auth=("user", "secret"), starttls=False)
    c.receive_data(b"220 x\r\n250-x\r\n250 AUTH PLAIN\r\n")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and "needs TLS" in e.reason
    assert b"AUTH" not in b"".join(sent(c))
    c = SMTPClient("me.example", auth=("user", "secret"), starttls=False,
                   allow_plaintext_auth=True)
    c.receive_data(b"220 x\r\n250-x\r\n250 AUTH PLAIN\r\n")
    assert sent(c)[-1].startswith(b"AUTH PLAIN ")


def test_auth_no_common_mechanism() -> None:
    c = SMTPClient("me.example", auth=("u", "p"), tls_active=True)
    c.receive_data(b"220 x\r\n250-x\r\n250 AUTH CRAM-MD5\r\n")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and "CRAM-MD5" in e.reason


# --- transactions -----------------------------------------------------------------------------


def test_pipelined_transaction_in_one_write_with_params() -> None:
    c = ready()
    recipients = [OutRecipient("b@y.example", ("SUCCESS", "failure"), "b@y.example"),
                  OutRecipient("c@y.example", ("NEVER",)), OutRecipient("d@y.example")]
    c.start_transaction("a@x.example", recipients, b"Subject: x\r\n\r\nhello", ret="hdrs",
                        envid="id+1")
    assert sent(c) == [
        b"MAIL FROM:<a@x.example> SIZE=21 RET=HDRS ENVID=id+2B1",
        b"RCPT TO:<b@y.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@y.example",
        b"RCPT TO:<c@y.example> NOTIFY=NEVER",
        b"RCPT TO:<d@y.example>",
        b"DATA",
    ]
    assert c.phase == "MAIL"
    c.receive_data(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown\r\n")
    assert c.data_to_send() == b""  # still waiting for the rest of the group
    c.receive_data(b"450 4.2.1 try later\r\n354 go\r\n")
    assert c.data_to_send() == b"Subject: x\r\n\r\nhello\r\n.\r\n"
    assert c.phase == "end of data"
    c.receive_data(b"250 2.0.0 queued as X\r\n")
    result = done(c)
    assert [(r.address, r.status, r.code) for r in result.recipients] == [
        ("b@y.example", "delivered", 250), ("c@y.example", "permanent", 550),
        ("d@y.example", "temporary", 450)]
    assert result.sent and result.reply is not None and result.reply.text == "queued as X"
    assert result.summary.startswith("1 delivered, 1 deferred, 1 failed")
    # next transaction: no RSET needed after the end of data
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"x\r\n")
    assert sent(c)[0].startswith(b"MAIL FROM:")


def test_pipelined_no_recipient_accepted_data_503() -> None:
    c = ready()
    c.start_transaction("a@x.example", rcpts("b@y.example", "c@y.example"), b"body\r\n")
    c.data_to_send()
    c.receive_data(b"250 ok\r\n550 5.1.1 no\r\n451 4.3.0 later\r\n554 5.5.1 no valid rcpt\r\n")
    assert c.data_to_send() == b""  # no body
    result = done(c)
    assert [r.status for r in result.recipients] == ["permanent", "temporary"]
    assert not result.sent and result.reply is None
    # the MAIL was accepted and never ended: RSET goes first, pipelined with MAIL
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"x\r\n")
    out = sent(c)
    assert out[:2] == [b"RSET", b"MAIL FROM:<a@x.example> SIZE=3"]
    c.receive_data(b"250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert c.data_to_send() == b"x\r\n.\r\n"
    c.receive_data(b"250 ok\r\n")
    assert done(c).sent


def test_pipelined_data_354_without_recipients_gets_lone_dot() -> None:
    c = ready()
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"secret body\r\n")
    c.data_to_send()
    c.receive_data(b"250 ok\r\n550 no\r\n354 go ahead anyway\r\n")
    assert c.data_to_send() == b".\r\n"  # RFC 2920 3.1
    c.receive_data(b"554 no recipients\r\n")
    result = done(c)
    assert result.recipients[0].status == "permanent" and result.recipients[0].code == 550


def test_pipelined_mail_refused() -> None:
    c = ready()
    c.start_transaction("a@x.example", rcpts("b@y.example", "c@y.example"), b"x\r\n")
    c.data_to_send()
    c.receive_data(b"553 5.1.7 bad sender\r\n503 need MAIL\r\n503 need MAIL\r\n503 need MAIL\r\n")
    result = done(c)
    assert [(r.status, r.code, r.enhanced) for r in result.recipients] == [
        ("permanent", 553, "5.1.7")] * 2
    assert result.reply is not None and result.reply.code == 553
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"x\r\n")
    assert sent(c)[0].startswith(b"MAIL")  # no RSET: MAIL never succeeded


def test_unpipelined_one_command_at_a_time() -> None:
    c = ready(EHLO_PLAIN)
    c.start_transaction("a@x.example", rcpts("b@y.example", "c@y.example"), b"hi\r\n")
    assert sent(c) == [b"MAIL FROM:<a@x.example>"]
    c.receive_data(b"250 ok\r\n")
    assert sent(c) == [b"RCPT TO:<b@y.example>"]
    c.receive_data(b"550 no\r\n")
    assert sent(c) == [b"RCPT TO:<c@y.example>"]
    c.receive_data(b"250 ok\r\n")
    assert sent(c) == [b"DATA"]
    assert c.phase == "DATA"
    c.receive_data(b"354 go\r\n")
    assert c.data_to_send() == b"hi\r\n.\r\n"
    c.receive_data(b"451 4.3.0 disk full\r\n")
    result = done(c)
    assert [(r.status, r.code) for r in result.recipients] == [
        ("permanent", 550), ("temporary", 451)]
    assert not result.sent


def test_unpipelined_no_data_when_all_rejected() -> None:
    c = ready(EHLO_PLAIN)
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"hi\r\n")
    c.data_to_send()
    c.receive_data(b"250 ok\r\n")
    c.data_to_send()
    c.receive_data(b"550 no\r\n")
    assert c.data_to_send() == b""
    assert done(c).recipients[0].status == "permanent"
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"hi\r\n")
    assert sent(c) == [b"RSET"]  # one at a time: RSET, then MAIL
    c.receive_data(b"250 ok\r\n")
    assert sent(c) == [b"MAIL FROM:<a@x.example>"]


def test_unpipelined_mail_refused_stops() -> None:
    c = ready(EHLO_PLAIN)
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"hi\r\n")
    c.data_to_send()
    c.receive_data(b"451 4.7.1 greylisted\r\n")
    assert c.data_to_send() == b""
    assert done(c).recipients[0].status == "temporary"


def test_data_refused_fails_accepted_recipients() -> None:
    c = ready()
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"hi\r\n")
    c.data_to_send()
    c.receive_data(b"250 ok\r\n250 ok\r\n554 5.3.0 no data today\r\n")
    assert c.data_to_send() == b""
    result = done(c)
    assert result.recipients[0].status == "permanent" and result.recipients[0].code == 554


def test_421_mid_transaction_gives_results_then_failure() -> None:
    c = ready()
    c.start_transaction("a@x.example", rcpts("b@y.example", "c@y.example"), b"hi\r\n")
    c.data_to_send()
    c.receive_data(b"250 ok\r\n550 5.1.1 no\r\n421 4.3.2 shutting down\r\n")
    evs = events(c)
    assert isinstance(evs[0], TransactionDone) and isinstance(evs[1], ConnectionFailed)
    assert [(r.status, r.code) for r in evs[0].result.recipients] == [
        ("permanent", 550), ("temporary", 421)]
    assert not c.usable
    with pytest.raises(RuntimeError):
        c.start_transaction("a@x.example", rcpts("b@y.example"), b"hi\r\n")


def test_smtputf8_required_not_offered() -> None:
    c = ready(EHLO_PLAIN)
    c.start_transaction("a@x.example", rcpts("jöe@y.example"), b"hi\r\n")
    assert c.data_to_send() == b""
    r = done(c).recipients[0]
    assert r.permanent and r.reply is None and r.text.startswith("SMTPUTF8 required")
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"hi\r\n", smtputf8=True)
    assert done(c).recipients[0].enhanced == "5.6.7"


def test_smtputf8_offered_sends_param() -> None:
    c = ready()
    c.start_transaction("ä@x.example", rcpts("jöe@y.example"), "Subject: ü\r\n".encode())
    assert sent(c)[0] == "MAIL FROM:<ä@x.example> SIZE=13 BODY=8BITMIME SMTPUTF8".encode()


def test_eightbit_without_8bitmime_fails() -> None:
    c = ready(EHLO_PLAIN)
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"caf\xc3\xa9\r\n")
    assert c.data_to_send() == b""
    r = done(c).recipients[0]
    assert r.permanent and "8BITMIME" in r.text
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"ascii\r\n", eightbit=True)
    assert done(c).recipients[0].permanent


def test_size_limit_checked_before_sending() -> None:
    c = ready()  # SIZE 1000
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"x" * 1200)
    assert c.data_to_send() == b""
    r = done(c).recipients[0]
    assert (r.code, r.enhanced, r.status) == (552, "5.3.4", "permanent")


def test_no_dsn_params_without_dsn() -> None:
    c = ready(EHLO_PLAIN)
    c.start_transaction("a@x.example", [OutRecipient("b@y.example", ("SUCCESS",), "b@y")],
                        b"x\r\n", ret="FULL", envid="e")
    assert sent(c) == [b"MAIL FROM:<a@x.example>"]
    c.receive_data(b"250 ok\r\n")
    assert sent(c) == [b"RCPT TO:<b@y.example>"]


def test_null_sender() -> None:
    c = ready(EHLO_PLAIN)
    c.start_transaction("", rcpts("b@y.example"), b"x\r\n")
    assert sent(c) == [b"MAIL FROM:<>"]


def test_dot_stuffing_on_the_wire() -> None:
    c = ready()
    body = b".leading\r\n.\r\nmiddle\r\n..\r\nend"
    c.start_transaction("a@x.example", rcpts("b@y.example"), body)
    c.data_to_send()
    c.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert c.data_to_send() == b"..leading\r\n..\r\nmiddle\r\n...\r\nend\r\n.\r\n"


def test_body_with_bare_lf_is_sent_as_crlf() -> None:
    c = ready()
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"a\n.\nb")
    c.data_to_send()
    c.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert c.data_to_send() == b"a\r\n..\r\nb\r\n.\r\n"  # never a bare LF "." (smuggling)


def test_bdat_when_chunking_chosen() -> None:
    c = ready(chunking=True)
    c.start_transaction("a@x.example", rcpts("b@y.example"), b".x\r\n")
    assert sent(c)[-1] == b"RCPT TO:<b@y.example>"  # no DATA in the group
    c.receive_data(b"250 ok\r\n250 ok\r\n")
    assert c.data_to_send() == b"BDAT 4 LAST\r\n.x\r\n"  # RFC 3030: no stuffing
    assert c.phase == "BDAT"
    c.receive_data(b"250 2.0.0 ok\r\n")
    assert done(c).sent


def test_bdat_failure_needs_rset() -> None:
    c = ready(chunking=True)
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"x\r\n")
    c.data_to_send()
    c.receive_data(b"250 ok\r\n250 ok\r\n")
    c.data_to_send()
    c.receive_data(b"554 5.6.0 rejected\r\n")
    assert done(c).recipients[0].permanent
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"x\r\n")
    assert sent(c)[0] == b"RSET"


def test_rset_refused_fails_connection() -> None:
    c = ready()
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"x\r\n")
    c.data_to_send()
    c.receive_data(b"250 ok\r\n550 no\r\n554 no\r\n")
    done(c)
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"x\r\n")
    c.data_to_send()
    c.receive_data(b"500 what\r\n")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and "RSET" in e.reason


def test_lost_before_end_of_data_reply() -> None:
    c = ready()
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"x\r\n")
    c.data_to_send()
    c.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    c.data_to_send()
    c.receive_data(b"")
    (e,) = events(c)
    assert isinstance(e, ConnectionFailed) and e.reason.startswith("connection lost after DATA")


def test_quit() -> None:
    c = ready()
    c.quit()
    assert sent(c) == [b"QUIT"]
    c.receive_data(b"221 bye\r\n")
    assert [type(e) for e in events(c)] == [Closed]
    c = ready()
    c.quit()
    c.receive_data(b"")  # closing instead of answering is fine after QUIT
    assert [type(e) for e in events(c)] == [Closed]


def test_trace_never_shows_content() -> None:
    lines: list[tuple[str, str]] = []
    c = ready(trace=lambda d, t: lines.append((d, t)))
    c.start_transaction("a@x.example", rcpts("b@y.example"), b"TOP SECRET\r\n")
    c.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 done\r\n")
    done(c)
    assert ("C", "<message: 12 octets>") in lines and ("S", "250 2.0.0 done") in lines
    assert not any("SECRET" in t for _, t in lines)


def test_api_misuse() -> None:
    c = SMTPClient("me.example")
    with pytest.raises(RuntimeError):
        c.start_transaction("a@x.example", rcpts("b@y.example"), b"x")
    with pytest.raises(RuntimeError):
        c.tls_started()
    c = ready()
    with pytest.raises(ValueError):
        c.start_transaction("a@x.example", [], b"x")
    with pytest.raises(ValueError):
        c.start_transaction("a@x.example\r\nRCPT TO:<evil@x>", rcpts("b@y.example"), b"x")
    with pytest.raises(ValueError):
        c.start_transaction("a@x.example", [OutRecipient("b@y", ("NEVER", "SUCCESS"))], b"x")
    with pytest.raises(ValueError):
        c.start_transaction("a@x.example", rcpts("b@y.example"), b"x", ret="ALL")
    assert c.data_to_send() == b""
