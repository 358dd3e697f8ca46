"""The SMTP engine's DSN extension (RFC 3461, RFC 6533) and ETRN (RFC 1985), driven by bytes."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netpost.smtp.protocol import (
    EtrnRequest,
    Event,
    MailFrom,
    RcptTo,
    Reply,
    SMTPConnection,
    etrn_no_messages,
    etrn_not_allowed,
    etrn_pending_count,
    etrn_pending_started,
    etrn_queuing_started,
    etrn_unable,
    orcpt_encode,
    utf8_addr_decode,
    utf8_addr_encode,
    xtext_decode,
    xtext_encode,
)
from tests.smtp.test_protocol import Client, in_txn, ready

PROPS = settings(max_examples=300, deadline=None)
XTEXT_RE = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
REPLY_RE = re.compile(r"^[2-5]\d\d[ -]")


def mail_event(c: Client) -> MailFrom:
    events = [e for e in c.events if isinstance(e, MailFrom)]
    return events[-1]


def rcpt_event(c: Client) -> RcptTo:
    events = [e for e in c.events if isinstance(e, RcptTo)]
    return events[-1]


# --- EHLO -------------------------------------------------------------------------------------


def test_ehlo_offers_dsn_and_not_etrn_by_default() -> None:
    lines = Client().lines(b"EHLO client.example\r\n")
    assert "250-DSN" in lines
    assert not any("ETRN" in line for line in lines)


def test_ehlo_offers_etrn_when_enabled() -> None:
    lines = Client(etrn_enabled=True).lines(b"EHLO client.example\r\n")
    assert "250-DSN" in lines and "250-ETRN" in lines


# --- xtext (RFC 3461 4) -----------------------------------------------------------------------


def test_xtext_examples() -> None:
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_decode("a+2Bb+3Dc+20d") == "a+b=c d"
    assert xtext_encode("é") == "+C3+A9"
    assert xtext_decode("+C3+A9") == "é"
    assert xtext_decode("") == ""


@pytest.mark.parametrize("bad", ["a+2b", "a+2", "+", "a=b", "a b", "é", "+FF", "+C3"])
def test_xtext_decode_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        xtext_decode(bad)


@PROPS
@given(st.text())
def test_xtext_roundtrip_and_valid(s: str) -> None:
    encoded = xtext_encode(s)
    assert XTEXT_RE.fullmatch(encoded) is not None
    assert encoded.isascii()
    assert xtext_decode(encoded) == s


NO_NUL = st.characters(codec="utf-8", exclude_characters="\x00")  # no surrogates


@PROPS
@given(st.text(NO_NUL))  # RFC 6533 3: HEXPOINT has no form for NUL
def test_utf8_addr_roundtrip(s: str) -> None:
    for unitext in (False, True):
        encoded = utf8_addr_encode(s, unitext=unitext)
        assert "+" not in encoded and "=" not in encoded and " " not in encoded
        if not unitext:
            assert encoded.isascii()
        if s:
            assert utf8_addr_decode(encoded) == s


def test_utf8_addr_examples() -> None:
    assert utf8_addr_encode("jø@x.example", unitext=False) == "j\\x{F8}@x.example"
    assert utf8_addr_encode("jø@x.example", unitext=True) == "jø@x.example"
    assert utf8_addr_encode("a+b@x", unitext=True) == "a\\x{2B}b@x"
    assert utf8_addr_decode("j\\x{f8}@x.example") == "jø@x.example"
    for bad in ("a\\x{D800}b", "a\\x{110000}", "a\\x{}", "a+b", "a\\b", "", "a\\x{0}"):
        with pytest.raises(ValueError):
            utf8_addr_decode(bad)


def test_orcpt_encode() -> None:
    assert orcpt_encode("rfc822", "a+b@x.example") == "rfc822;a+2Bb@x.example"
    assert orcpt_encode("utf-8", "ø@x.example") == "utf-8;\\x{F8}@x.example"
    assert orcpt_encode("utf-8", "ø@x.example", smtputf8=True) == "utf-8;ø@x.example"


# --- MAIL FROM: RET and ENVID (RFC 3461 4.3, 4.4) ----------------------------------------------


def test_mail_ret_and_envid_decoded() -> None:
    c = ready()
    assert c.one(b"MAIL FROM:<a@example.org> RET=hdrs ENVID=QQ314159+2Bx\r\n") == "250 2.0.0 OK"
    ev = mail_event(c)
    assert ev.ret == "HDRS"
    assert ev.envid == "QQ314159+x"
    assert ev.params["ENVID"] == "QQ314159+2Bx"


def test_mail_without_dsn_params_has_none() -> None:
    c = ready()
    c.feed(b"MAIL FROM:<a@example.org>\r\n")
    ev = mail_event(c)
    assert ev.ret is None and ev.envid is None


def test_envid_100_characters_ok_101_refused() -> None:
    c = ready()
    assert c.one(b"MAIL FROM:<a@example.org> ENVID=" + b"x" * 100 + b"\r\n") == "250 2.0.0 OK"
    c = ready()
    assert c.one(b"MAIL FROM:<a@example.org> ENVID=" + b"x" * 101 + b"\r\n") == (
        "501 5.5.4 Bad ENVID parameter syntax"
    )


@pytest.mark.parametrize(
    ("params", "reply"),
    [
        (b"RET=FULLER", "501 5.5.4 Syntax: RET=FULL or RET=HDRS"),
        (b"RET", "501 5.5.4 Syntax: RET=FULL or RET=HDRS"),
        (b"RET=", "501 5.5.4 Syntax error in parameters"),
        (b"RET=FULL RET=HDRS", "501 5.5.4 Syntax error in parameters"),
        (b"RET=FULL ret=full", "501 5.5.4 Syntax error in parameters"),
        (b"ENVID", "501 5.5.4 Bad ENVID parameter syntax"),
        (b"ENVID=a+2b", "501 5.5.4 Bad ENVID parameter syntax"),  # lower-case hex
        (b"ENVID=a+", "501 5.5.4 Bad ENVID parameter syntax"),
        (b"ENVID=a+0D+0AX-Injected:+20yes", "501 5.5.4 Bad ENVID parameter syntax"),
        (b"ENVID=+C3+A9", "501 5.5.4 Bad ENVID parameter syntax"),  # not US-ASCII
        ("ENVID=é".encode(), "501 5.5.4 Bad ENVID parameter syntax"),
        (b"ENVID=a ENVID=b", "501 5.5.4 Syntax error in parameters"),
        (b"ENVID=a=b", "501 5.5.4 Syntax error in parameters"),
    ],
)
def test_mail_dsn_param_errors(params: bytes, reply: str) -> None:
    c = ready()
    assert c.one(b"MAIL FROM:<a@example.org> " + params + b"\r\n") == reply
    assert not c.conn.in_transaction


def test_mail_dsn_params_need_ehlo() -> None:
    c = Client()
    c.feed(b"HELO client.example\r\n")
    assert c.one(b"MAIL FROM:<a@example.org> RET=FULL\r\n") == (
        "555 5.5.4 Parameter RET requires EHLO"
    )


def test_envid_space_is_allowed_encoded() -> None:
    c = ready()
    assert c.one(b"MAIL FROM:<> ENVID=a+20b\r\n") == "250 2.0.0 OK"
    assert mail_event(c).envid == "a b"


# --- RCPT TO: NOTIFY and ORCPT (RFC 3461 4.1, 4.2; RFC 6533 3) --------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("NEVER", {"NEVER"}),
        ("never", {"NEVER"}),
        ("SUCCESS", {"SUCCESS"}),
        ("FAILURE,DELAY", {"FAILURE", "DELAY"}),
        ("success,Failure,DELAY", {"SUCCESS", "FAILURE", "DELAY"}),
    ],
)
def test_notify_values(value: str, expected: set[str]) -> None:
    c = in_txn()
    assert c.one(f"RCPT TO:<c@example.net> NOTIFY={value}\r\n".encode()) == "250 2.0.0 OK"
    assert rcpt_event(c).notify == frozenset(expected)


@pytest.mark.parametrize(
    "params",
    [
        b"NOTIFY=NEVER,SUCCESS",
        b"NOTIFY=SUCCESS,NEVER",
        b"NOTIFY=NEVER,NEVER",
        b"NOTIFY=SOMETIMES",
        b"NOTIFY=SUCCESS,",
        b"NOTIFY=,FAILURE",
        b"NOTIFY",
    ],
)
def test_notify_errors(params: bytes) -> None:
    c = in_txn()
    assert c.one(b"RCPT TO:<c@example.net> " + params + b"\r\n") == (
        "501 5.5.4 Syntax: NOTIFY=NEVER or NOTIFY=SUCCESS,FAILURE,DELAY"
    )


def test_rcpt_repeated_params_refused() -> None:
    c = in_txn()
    assert c.one(b"RCPT TO:<c@example.net> NOTIFY=NEVER NOTIFY=NEVER\r\n") == (
        "501 5.5.4 Syntax error in parameters"
    )
    assert c.one(b"RCPT TO:<c@example.net> ORCPT=rfc822;a@b ORCPT=rfc822;a@b\r\n") == (
        "501 5.5.4 Syntax error in parameters"
    )


def test_rcpt_unknown_param_still_555() -> None:
    c = in_txn()
    assert c.one(b"RCPT TO:<c@example.net> NOTIFY=NEVER FOO=1\r\n") == (
        "555 5.5.4 Unsupported parameter FOO"
    )


def test_rcpt_params_need_ehlo() -> None:
    c = Client()
    c.feed(b"HELO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    assert c.one(b"RCPT TO:<c@example.net> NOTIFY=NEVER\r\n") == (
        "555 5.5.4 Parameter NOTIFY requires EHLO"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"rfc822;c@example.net", ("rfc822", "c@example.net")),
        (b"RFC822;c+2Bx@example.net", ("rfc822", "c+x@example.net")),
        (b"rfc822;Joe+20Q+2E+20P+20<c@example.net>", ("rfc822", "Joe Q. P <c@example.net>")),
        # another registered type; "=" travels as +3D (a raw "=" is not an esmtp-value)
        (b"X400;/C+3DUS/ADMD+3Dx", ("x400", "/C=US/ADMD=x")),
        (b"utf-8;j\\x{F8}@example.net", ("utf-8", "jø@example.net")),
    ],
)
def test_orcpt_values(value: bytes, expected: tuple[str, str]) -> None:
    c = in_txn()
    assert c.one(b"RCPT TO:<c@example.net> ORCPT=" + value + b"\r\n") == "250 2.0.0 OK"
    assert rcpt_event(c).orcpt == expected


def test_orcpt_utf8_unitext_needs_smtputf8() -> None:
    line = "RCPT TO:<c@example.net> ORCPT=utf-8;jø@example.net\r\n".encode()
    c = in_txn()
    assert c.one(line) == "501 5.5.4 Bad ORCPT parameter syntax"
    c = ready()
    assert c.one(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n") == "250 2.0.0 OK"
    assert c.one(line) == "250 2.0.0 OK"
    assert rcpt_event(c).orcpt == ("utf-8", "jø@example.net")


@pytest.mark.parametrize(
    "value",
    [
        b"ORCPT",
        b"ORCPT=c@example.net",  # no addr-type
        b"ORCPT=rfc822;",  # empty address
        b"ORCPT=;c@example.net",
        b"ORCPT=rfc822;c+2b@example.net",  # lower-case hex
        b"ORCPT=rfc822;c+0D+0Ax@example.net",  # controls once decoded
        b"ORCPT=rfc822;+C3+B8@example.net",  # rfc822 type: printable US-ASCII only
        b"ORCPT=utf-8;a+b@example.net",  # "+" is not a QCHAR
        b"ORCPT=utf-8;a\\x{A}b@example.net",  # a control once decoded
        b"ORCPT=utf-8;a\\x{DC00}b@example.net",  # a surrogate
        b"ORCPT=rfc 822;a",
    ],
)
def test_orcpt_errors(value: bytes) -> None:
    c = in_txn()
    out = c.one(b"RCPT TO:<c@example.net> " + value + b"\r\n")
    assert out.startswith("501 5.5.4"), out


def test_message_data_carries_dsn_fields_aligned_with_recipients() -> None:
    c = ready()
    out = c.replies(
        b"MAIL FROM:<a@example.org> RET=FULL ENVID=id1\r\n"
        b"RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;B@example.net\r\n"
        b"RCPT TO:<bad@>\r\n"
        b"RCPT TO:<c@example.net>\r\n"
        b"RCPT TO:<d@example.net> NOTIFY=NEVER\r\n"
        b"DATA\r\n"
    )
    assert out[0] == "250 2.0.0 OK" and out[2].startswith("553")
    assert c.one(b"hi\r\n.\r\n") == "250 2.0.0 OK"
    (msg,) = c.messages()
    assert msg.recipients == ("b@example.net", "c@example.net", "d@example.net")
    assert msg.ret == "FULL" and msg.envid == "id1"
    assert msg.rcpt_notify == (frozenset({"SUCCESS", "FAILURE"}), None, frozenset({"NEVER"}))
    assert msg.rcpt_orcpt == (("rfc822", "B@example.net"), None, None)


def test_rejected_rcpt_dsn_fields_not_kept() -> None:
    def refuse_c(conn: SMTPConnection, event: Event) -> None:
        if isinstance(event, RcptTo) and event.address.startswith("c@"):
            conn.send(Reply(550, "5.1.1", "No such user"))
        else:
            conn.send(Reply(250, "2.0.0", "OK"))

    c = Client(refuse_c)
    c.feed(b"EHLO client.example\r\n")
    c.feed(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<c@example.net> NOTIFY=NEVER\r\n"
        b"RCPT TO:<b@example.net> NOTIFY=DELAY\r\nBDAT 2 LAST\r\nhi"
    )
    (msg,) = c.messages()
    assert msg.recipients == ("b@example.net",)
    assert msg.rcpt_notify == (frozenset({"DELAY"}),)
    assert msg.rcpt_orcpt == (None,)


def test_dsn_state_reset_between_transactions() -> None:
    c = ready()
    c.feed(b"MAIL FROM:<a@example.org> RET=HDRS ENVID=x\r\n")
    c.feed(b"RCPT TO:<b@example.net> NOTIFY=NEVER\r\n")
    c.feed(b"RSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nx\r\n.\r\n")
    (msg,) = c.messages()
    assert msg.ret is None and msg.envid is None
    assert msg.rcpt_notify == (None,) and msg.rcpt_orcpt == (None,)


# --- ETRN (RFC 1985) --------------------------------------------------------------------------


def test_etrn_disabled() -> None:
    c = ready()
    assert c.one(b"ETRN example.com\r\n") == "502 5.5.1 ETRN not available"
    assert not any(isinstance(e, EtrnRequest) for e in c.events)


@pytest.mark.parametrize(
    ("node", "domain", "subdomains", "queue"),
    [
        ("example.com", "example.com", False, None),
        ("Example.COM", "example.com", False, None),
        ("@example.com", "example.com", True, None),
        ("#outbound-1", None, False, "outbound-1"),
    ],
)
def test_etrn_event(node: str, domain: str | None, subdomains: bool, queue: str | None) -> None:
    def answer(conn: SMTPConnection, event: Event) -> None:
        if isinstance(event, EtrnRequest):
            conn.send(etrn_queuing_started(event.node))
        else:
            conn.send(Reply(250, "2.0.0", "OK"))

    c = Client(answer, etrn_enabled=True)
    c.feed(b"EHLO client.example\r\n")
    assert c.one(f"ETRN {node}\r\n".encode()) == f"250 2.0.0 OK, queuing for node {node} started"
    (ev,) = [e for e in c.events if isinstance(e, EtrnRequest)]
    assert ev == EtrnRequest(node)
    assert (ev.domain, ev.subdomains, ev.queue) == (domain, subdomains, queue)
    assert not c.conn.in_transaction


def test_etrn_needs_helo_first() -> None:
    c = Client(etrn_enabled=True)
    assert c.one(b"ETRN example.com\r\n") == "503 5.5.1 Send HELO/EHLO first"
    c.feed(b"HELO client.example\r\n")
    assert c.one(b"ETRN example.com\r\n") == "250 2.0.0 OK"  # the test client's default answer


def test_etrn_not_in_transaction() -> None:
    c = in_txn(etrn_enabled=True)
    assert c.one(b"ETRN example.com\r\n") == (
        "503 5.5.1 ETRN not permitted during a mail transaction"
    )
    assert c.conn.in_transaction  # the transaction goes on
    assert c.one(b"RSET\r\n") == "250 2.0.0 OK"
    assert c.one(b"ETRN example.com\r\n") == "250 2.0.0 OK"


@pytest.mark.parametrize(
    "arg",
    [b"", b" ", b"example..com", b"@", b"#", b"a b", b"[192.0.2.1]", b"-bad.example",
     b"@@example.com", "exämple.com".encode(), b"example.com extra", b"# q"],
)
def test_etrn_syntax(arg: bytes) -> None:
    c = ready(etrn_enabled=True)
    assert c.one(b"ETRN " + arg + b"\r\n") == "501 5.5.4 Syntax Error in Parameters"


def test_etrn_pipelined_then_mail() -> None:
    c = ready(etrn_enabled=True)
    out = c.replies(b"ETRN example.com\r\nMAIL FROM:<a@example.org>\r\n")
    assert out == ["250 2.0.0 OK", "250 2.0.0 OK"]


def test_etrn_reply_helpers() -> None:
    n = "example.com"
    assert etrn_queuing_started(n).to_bytes() == (
        b"250 2.0.0 OK, queuing for node example.com started\r\n"
    )
    assert etrn_no_messages(n).code == 251
    assert etrn_no_messages(n).text == "OK, no messages waiting for node example.com"
    assert etrn_pending_started(n).code == 252
    assert etrn_pending_started(n).text == "OK, pending messages for node example.com started"
    r = etrn_pending_count(n, 7)
    assert (r.code, r.text) == (253, "OK, 7 pending messages for node example.com started")
    r = etrn_unable(n)
    assert (r.code, r.text) == (458, "Unable to queue messages for node example.com")
    r = etrn_not_allowed(n, "not a client domain")
    assert (r.code, r.enhanced, r.text) == (
        459, "4.7.1", "Node example.com not allowed: not a client domain"
    )


def test_etrn_refusals_count_as_errors() -> None:
    def refuse(conn: SMTPConnection, event: Event) -> None:
        conn.send(etrn_not_allowed("x.example", "no"))

    c = Client(refuse, etrn_enabled=True, max_errors=3)
    c.feed(b"EHLO client.example\r\n")
    out = c.replies(b"ETRN x.example\r\n" * 3)
    assert out[-1] == "421 4.7.0 Too many errors, closing connection"
    assert c.conn.closed


# --- property: arbitrary parameters never raise ------------------------------------------------

PARAM_WORDS = st.sampled_from(
    ["RET", "ENVID", "NOTIFY", "ORCPT", "SIZE", "BODY", "SMTPUTF8", "ret", "X"]
)
PARAM_VALUES = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.sampled_from(["FULL", "HDRS", "NEVER", "SUCCESS,DELAY", "rfc822;a@b", "utf-8;\\x{F8}",
                     "+2B", "+", "+zz", "utf-8;\\x{", "a=b"]),
)


@PROPS
@given(
    st.lists(st.tuples(PARAM_WORDS, PARAM_VALUES), max_size=5),
    st.lists(st.tuples(PARAM_WORDS, PARAM_VALUES), max_size=5),
    st.booleans(),
    st.text(max_size=30),
)
def test_arbitrary_dsn_params_only_get_replies(
    mail: list[tuple[str, str | None]],
    rcpt: list[tuple[str, str | None]],
    etrn: bool,
    junk: str,
) -> None:
    def render(params: list[tuple[str, str | None]]) -> str:
        return "".join(f" {k}" if v is None else f" {k}={v}" for k, v in params)

    c = Client(etrn_enabled=etrn)
    c.feed(b"EHLO client.example\r\n")
    data = (
        f"MAIL FROM:<a@example.org>{render(mail)}\r\n"
        f"RCPT TO:<b@example.net>{render(rcpt)}\r\n"
        f"RCPT TO:<c@example.net> {junk}\r\n"
        f"ETRN {junk}\r\n"
    ).encode("utf-8", "surrogatepass")
    out = c.feed(data).decode("utf-8", "replace").split("\r\n")[:-1]
    assert out and all(REPLY_RE.match(line) for line in out)
    for ev in c.events:
        if isinstance(ev, MailFrom):
            assert ev.ret in (None, "FULL", "HDRS")
            assert ev.envid is None or ev.envid.isprintable()
        if isinstance(ev, RcptTo):
            assert ev.notify is None or ev.notify == {"NEVER"} or (
                ev.notify <= {"SUCCESS", "FAILURE", "DELAY"} and ev.notify
            )
            if ev.orcpt is not None:
                assert "\r" not in ev.orcpt[1] and "\n" not in ev.orcpt[1]
