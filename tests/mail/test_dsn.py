"""Delivery status notifications, read back with the standard email parser."""

from __future__ import annotations

import email
import email.parser
import email.policy
import re
from email.message import EmailMessage, Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netpost.mail.dsn import MAX_RETURNED, RecipientStatus, build_dsn, wants_dsn

ORIGINAL = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: lunch\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=s1;\r\n"
    b"\tbh=abc; b=def\r\n"
    b"\r\n"
    b"See you at noon.\r\n"
)
T0 = 1_700_000_000.0

FAILED = RecipientStatus(
    "bob@example.net",
    ("rfc822", "Bob@example.net"),
    "failed",
    "5.1.1",
    remote_mta="mx.example.net",
    diagnostic="smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected",
    last_attempt=T0 + 30,
)
DELAYED = RecipientStatus(
    "carol@example.com",
    None,
    "delayed",
    "4.4.1",
    remote_mta=None,
    diagnostic="Connection timed out",
    last_attempt=T0 + 3600,
    will_retry_until=T0 + 5 * 86400,
)
DELIVERED = RecipientStatus(
    "dave@example.com", None, "delivered", "2.0.0", remote_mta="mx.example.com",
    diagnostic="250 2.0.0 Ok: queued as 123",
)


def make(
    recipients: list[RecipientStatus],
    *,
    original: bytes = ORIGINAL,
    ret: str | None = None,
    envid: str | None = "QQ314159",
    envelope_from: str = "alice@example.org",
) -> bytes:
    return build_dsn(
        reporting_mta="mail.example.org",
        original=original,
        envelope_from=envelope_from,
        envid=envid,
        ret=ret,
        recipients=recipients,
        arrival=T0,
        now=T0 + 3600,
        postmaster="postmaster@example.org",
    )


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(msg: EmailMessage) -> list[Message]:
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return payload


def status_groups(part: Message) -> list[Message]:
    """message/delivery-status: Python gives one sub-message per group of fields."""
    assert part.get_content_type() == "message/delivery-status"
    groups = part.get_payload()
    assert isinstance(groups, list)
    return groups


def global_groups(part: Message) -> list[Message]:
    """message/global-delivery-status: Python parses it like any message/* part, as one
    message whose header is the per-message group and whose body holds the other groups."""
    assert part.get_content_type() == "message/global-delivery-status"
    inner = part.get_payload(0)
    assert isinstance(inner, Message)
    body = inner.get_payload(decode=True)
    assert isinstance(body, bytes)
    text = body.decode("utf-8")  # raw UTF-8 (RFC 6533 3)
    parser = email.parser.Parser(policy=email.policy.default)
    rest = [parser.parsestr(g, headersonly=True)
            for g in re.split(r"\r\n\r\n", text.strip("\r\n"))]
    return [inner, *rest]


def check_wire(data: bytes) -> None:
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF line ends only
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))  # RFC 5322 2.1.1


# --- structure --------------------------------------------------------------------------------


def test_failure_report_structure_and_fields() -> None:
    data = make([FAILED])
    check_wire(data)
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["From"].addresses[0].display_name == "Mail Delivery System"
    assert msg["From"].addresses[0].addr_spec == "postmaster@example.org"
    assert msg["To"].addresses[0].addr_spec == "alice@example.org"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Message-ID"].endswith("@mail.example.org>")
    assert msg["Date"].datetime.timestamp() == T0 + 3600
    assert not msg.defects

    text, report, returned = parts(msg)
    assert text.get_content_type() == "text/plain"
    assert isinstance(text, EmailMessage)
    body = " ".join(text.get_content().split())  # unwrapped
    assert "could not be delivered" in body
    assert "bob@example.net" in body
    assert "550 5.1.1 <bob@example.net>: Recipient address rejected" in body
    assert "mx.example.net" in body
    assert "What you can do" in body

    per_message, rcpt = status_groups(report)
    assert per_message["Reporting-MTA"] == "dns; mail.example.org"
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == T0
    assert rcpt["Final-Recipient"] == "rfc822; bob@example.net"
    assert rcpt["Original-Recipient"] == "rfc822; Bob@example.net"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx.example.net"
    assert rcpt["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected"
    )
    assert email.utils.parsedate_to_datetime(rcpt["Last-Attempt-Date"]).timestamp() == T0 + 30
    assert rcpt["Will-Retry-Until"] is None

    # No RET and a failure: the whole original, byte for byte (a DKIM signature survives).
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload(0)
    assert isinstance(inner, Message)
    assert inner["Subject"] == "lunch"
    assert ORIGINAL in data


def test_report_without_envid_has_no_field() -> None:
    (per_message, _) = status_groups(parts(parse(make([FAILED], envid=None)))[1])
    assert "Original-Envelope-Id" not in per_message


def test_delay_report() -> None:
    data = make([DELAYED])
    msg = parse(data)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    text, report, returned = parts(msg)
    assert isinstance(text, EmailMessage)
    body = text.get_content()
    assert "not been delivered yet" in body
    assert "keep trying until" in body
    assert "Connection timed out" in body
    _, rcpt = status_groups(report)
    assert rcpt["Action"] == "delayed"
    assert rcpt["Status"] == "4.4.1"
    assert rcpt["Diagnostic-Code"] == "smtp; Connection timed out"
    assert "Remote-MTA" not in rcpt
    until = email.utils.parsedate_to_datetime(rcpt["Will-Retry-Until"])
    assert until.timestamp() == T0 + 5 * 86400
    # A delay notice returns the header only unless RET=FULL asked for the message.
    assert returned.get_content_type() == "text/rfc822-headers"


def test_success_report() -> None:
    msg = parse(make([DELIVERED]))
    assert msg["Subject"] == "Successful Mail Delivery Report"
    _, rcpt = status_groups(parts(msg)[1])
    assert (rcpt["Action"], rcpt["Status"]) == ("delivered", "2.0.0")
    assert parts(msg)[2].get_content_type() == "text/rfc822-headers"


def test_mixed_report_has_a_group_per_recipient() -> None:
    msg = parse(make([FAILED, DELAYED, DELIVERED]))
    assert msg["Subject"] == "Mail Delivery Status Report"
    groups = status_groups(parts(msg)[1])
    assert [g["Final-Recipient"] for g in groups[1:]] == [
        "rfc822; bob@example.net", "rfc822; carol@example.com", "rfc822; dave@example.com"
    ]
    assert [g["Action"] for g in groups[1:]] == ["failed", "delayed", "delivered"]


# --- what is returned (RFC 3461 4.3) ----------------------------------------------------------


def test_ret_hdrs_returns_the_header_only() -> None:
    data = make([FAILED], ret="HDRS")
    returned = parts(parse(data))[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    text = returned.get_payload(decode=True)
    assert isinstance(text, bytes)
    assert b"Subject: lunch\r\n" in text
    assert b"See you at noon" not in data
    assert b"\tbh=abc; b=def" in text  # folded fields kept as they were


def test_ret_full_returns_the_message_even_for_a_delay() -> None:
    returned = parts(parse(make([DELAYED], ret="FULL")))[2]
    assert returned.get_content_type() == "message/rfc822"


def test_huge_original_returns_header_only() -> None:
    big = ORIGINAL + b"x" * 70 + b"\r\n"
    big += (b"y" * 998 + b"\r\n") * (MAX_RETURNED // 1000 + 1)
    assert len(big) > MAX_RETURNED
    for ret in (None, "FULL"):
        data = make([FAILED], original=big, ret=ret)
        assert len(data) < 16 * 1024
        msg = parse(data)
        text, _, returned = parts(msg)
        assert returned.get_content_type() == "text/rfc822-headers"
        assert isinstance(text, EmailMessage)
        assert "only its header" in text.get_content()


def test_eight_bit_body_declared() -> None:
    original = b"Subject: caf\xc3\xa9 body\r\n\r\nna\xc3\xafve\r\n"
    data = make([FAILED], original=original)
    returned = parts(parse(data))[2]
    # UTF-8 in the header: message/global (RFC 6532 3.7); 8bit declared.
    assert returned.get_content_type() == "message/global"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert original in data
    plain8 = b"Subject: x\r\n\r\nna\xc3\xafve\r\n"
    returned = parts(parse(make([FAILED], original=plain8)))[2]
    assert returned.get_content_type() == "message/rfc822"
    assert returned["Content-Transfer-Encoding"] == "8bit"


def test_original_without_body_or_header() -> None:
    for original in (b"Subject: only\r\n", b"\r\njust a body\r\n", b""):
        for ret in (None, "HDRS"):
            msg = parse(make([FAILED], original=original, ret=ret))
            assert len(parts(msg)) == 3


# --- non-ASCII (RFC 6533) ---------------------------------------------------------------------


def test_non_ascii_recipient_uses_global_delivery_status() -> None:
    rcpt = RecipientStatus(
        "jøran@例え.jp", ("utf-8", "Jøran@例え.jp"), "failed", "5.1.1",
        remote_mta="mx.xn--r8jz45g.jp", diagnostic="550 5.1.1 ingen slik bruker: jøran",
    )
    data = make([rcpt], original=b"Subject: hei\r\n\r\nhei\r\n", envelope_from="åse@example.no")
    check_wire(data)
    msg = parse(data)
    assert str(msg["To"]) == "åse@example.no"
    assert b"To: \xc3\xa5se@example.no\r\n" in data  # raw UTF-8 (RFC 6532), no encoded word
    text, report, _ = parts(msg)
    assert report["Content-Transfer-Encoding"] == "8bit"
    per_message, group = global_groups(report)
    assert per_message["Reporting-MTA"] == "dns; mail.example.org"
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert group["Final-Recipient"] == "utf-8; jøran@例え.jp"
    assert group["Original-Recipient"] == "utf-8; Jøran@例え.jp"
    assert group["Action"] == "failed"
    assert group["Remote-MTA"] == "dns; mx.xn--r8jz45g.jp"
    assert group["Diagnostic-Code"] == "smtp; 550 5.1.1 ingen slik bruker: jøran"
    assert isinstance(text, EmailMessage)
    assert "jøran@例え.jp" in text.get_content()


def test_non_ascii_diagnostic_in_ascii_report_is_escaped() -> None:
    rcpt = RecipientStatus("bob@example.net", None, "failed", "5.7.1",
                           diagnostic="550 5.7.1 refusé")
    msg = parse(make([rcpt]))
    text, report, _ = parts(msg)
    _, group = status_groups(report)
    assert group["Diagnostic-Code"] == "smtp; 550 5.7.1 refus\\x{E9}"
    assert isinstance(text, EmailMessage)
    assert "refusé" in text.get_content()


# --- hostile values ---------------------------------------------------------------------------


def test_reply_text_cannot_inject_fields_or_parts() -> None:
    evil = RecipientStatus(
        "bob@example.net", ("rfc822", "x@y\r\nAction: delivered"), "failed", "5.0.0",
        remote_mta="mx\r\nX-Evil: 1",
        diagnostic="smtp; 550 no\r\nStatus: 2.0.0\r\n\r\nFinal-Recipient: rfc822; a@b\n--boundary",
    )
    data = make([evil], envid="id\r\nX-Evil: 2")
    check_wire(data)
    msg = parse(data)
    groups = status_groups(parts(msg)[1])
    assert len(groups) == 2
    assert groups[1].get_all("Action") == ["failed"]
    assert groups[1].get_all("Status") == ["5.0.0"]
    assert groups[1].get_all("Final-Recipient") == ["rfc822; bob@example.net"]
    assert "X-Evil" not in groups[0] and "X-Evil" not in groups[1]
    assert "X-Evil" not in msg
    assert groups[0]["Original-Envelope-Id"] == "id X-Evil: 2"


def test_long_diagnostic_is_cut_below_the_line_limit() -> None:
    rcpt = RecipientStatus("bob@example.net", None, "failed", "5.0.0",
                           diagnostic="550 " + "x" * 5000)
    data = make([rcpt])
    check_wire(data)
    _, group = status_groups(parts(parse(data))[1])
    assert group["Diagnostic-Code"].startswith("smtp; 550 xxx")
    assert group["Diagnostic-Code"].endswith("...")
    assert "=?" not in group["Diagnostic-Code"]  # never turned into encoded words


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        make([FAILED], envelope_from="")  # RFC 3461 6.2: never to the null reverse-path
    with pytest.raises(ValueError):
        make([])
    with pytest.raises(ValueError):
        make([FAILED], ret="SOME")
    with pytest.raises(ValueError):
        RecipientStatus("a@b", None, "bounced", "5.0.0")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RecipientStatus("a@b", None, "failed", "550")


# --- wants_dsn (RFC 3461 4.1) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("notify", "action", "expected"),
    [
        (None, "failed", True),
        (None, "delayed", True),
        (None, "delivered", False),
        (None, "relayed", False),
        (frozenset({"NEVER"}), "failed", False),
        (frozenset({"NEVER"}), "delayed", False),
        (frozenset({"SUCCESS"}), "delivered", True),
        (frozenset({"SUCCESS"}), "relayed", True),
        (frozenset({"SUCCESS"}), "expanded", True),
        (frozenset({"SUCCESS"}), "failed", False),
        (frozenset({"FAILURE"}), "failed", True),
        (frozenset({"FAILURE"}), "delayed", False),
        (frozenset({"DELAY"}), "delayed", True),
        (frozenset({"FAILURE", "DELAY"}), "delivered", False),
    ],
)
def test_wants_dsn(notify: frozenset[str] | None, action: str, expected: bool) -> None:
    assert wants_dsn(notify, action) is expected


def test_wants_dsn_unknown_action() -> None:
    with pytest.raises(ValueError):
        wants_dsn(None, "bounced")


# --- property: any recipients and replies give a parseable report -----------------------------

LOCAL = st.text(
    st.sampled_from("abcxyz09._-+ø語"), min_size=1, max_size=20
)
ADDRESSES = st.builds(lambda lp, d: f"{lp}@{d}", LOCAL,
                      st.sampled_from(["example.net", "例え.jp", "x.example"]))
REPLY = st.text(max_size=300)  # anything: CR, LF, NUL, non-ASCII, "--", ":" ...
STATUS = st.sampled_from(["5.1.1", "4.4.7", "2.0.0", "5.7.1", "4.2.2"])
ACTION = st.sampled_from(["failed", "delayed", "delivered", "relayed", "expanded"])
WHEN = st.none() | st.floats(min_value=0, max_value=4e9)
RECIPIENT = st.builds(
    RecipientStatus,
    ADDRESSES,
    st.none() | st.tuples(st.sampled_from(["rfc822", "utf-8", "x400"]), REPLY),
    ACTION,
    STATUS,
    remote_mta=st.none() | st.text(max_size=60),
    diagnostic=st.none() | REPLY,
    last_attempt=WHEN,
    will_retry_until=WHEN,
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(RECIPIENT, min_size=1, max_size=5),
    st.none() | st.sampled_from(["FULL", "HDRS"]),
    st.none() | st.text(max_size=120),
    st.binary(max_size=400),
)
def test_any_report_parses(
    recipients: list[RecipientStatus], ret: str | None, envid: str | None, original: bytes
) -> None:
    data = make(recipients, ret=ret, envid=envid, original=ORIGINAL + original)
    check_wire(data)
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    text, report, returned = parts(msg)
    assert text.get_content_type() == "text/plain"
    assert returned.get_content_type() in (
        "message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"
    )
    ascii_only = all(
        r.final_recipient.isascii()
        and (r.original_recipient is None or r.original_recipient[1].isascii())
        for r in recipients
    )
    if ascii_only:
        groups = status_groups(report)
    else:
        groups = global_groups(report)
    assert len(groups) == 1 + len(recipients)
    assert groups[0].get_all("Reporting-MTA") == ["dns; mail.example.org"]
    for group, r in zip(groups[1:], recipients, strict=True):
        assert group.get_all("Action") == [r.action]
        assert group.get_all("Status") == [r.status]
        (final,) = group.get_all("Final-Recipient") or []
        assert final.endswith("; " + r.final_recipient.replace("\\", "\\"))
        assert len(group.get_all("Diagnostic-Code") or []) == (1 if r.diagnostic else 0)
        assert len(group.keys()) == len(set(group.keys()))  # no field twice


def test_quoted_local_part_sender() -> None:
    msg = parse(make([FAILED], envelope_from='"john smith"@example.org'))
    assert msg["To"].addresses[0].addr_spec == '"john smith"@example.org'


def test_bare_line_ends_in_original_become_crlf() -> None:
    data = make([FAILED], original=b"Subject: x\n\nline1\rline2\n")
    check_wire(data)
    returned = parts(parse(data))[2]
    inner = returned.get_payload(0)
    assert isinstance(inner, Message)
    assert inner["Subject"] == "x"
    assert b"line1\r\nline2\r\n" in data
