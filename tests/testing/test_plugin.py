"""The pytest plugin shipped with netpost (netpost.testing), used as a project would: the
`netpost` fixture, smtplib to send, imaplib and poplib to read, the helpers to look."""

from __future__ import annotations

import gc
import imaplib
import poplib
import smtplib
from collections.abc import Callable

import httpx
import pytest

from netpost.testing import NetpostError, RunningNetpost


def test_smtp_in_imap_out(netpost: RunningNetpost) -> None:
    with smtplib.SMTP(*netpost.address("smtp"), timeout=30) as s:
        s.sendmail("app@shop.example", ["alice@example.test"],
                   b"From: app@shop.example\r\nSubject: Your order\r\n\r\nThanks!\r\n")
    [msg] = netpost.wait_for_messages("alice@example.test", 1)
    assert msg["Subject"] == "Your order" and msg.get_content() == "Thanks!\n"
    imap = imaplib.IMAP4(*netpost.address("imap"))
    try:
        imap.login("alice@example.test", netpost.accounts["alice@example.test"])
        imap.select("INBOX")
        typ, data = imap.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and b"Your order" in data[0][1]  # type: ignore[index]
    finally:
        imap.logout()
    assert netpost.messages("bob@example.test") == []


def test_submission_pop3_and_the_web_api(netpost: RunningNetpost) -> None:
    with smtplib.SMTP(*netpost.address("submission"), timeout=30) as s:
        s.login("bob@example.test", "secret")
        s.sendmail("bob@example.test", ["alice@example.test"],
                   b"From: bob@example.test\r\nSubject: hi\r\n\r\nx\r\n")
    netpost.wait_for_messages("alice@example.test", 1)
    pop = poplib.POP3(*netpost.address("pop3"), timeout=30)
    try:
        pop.user("alice@example.test")
        pop.pass_("secret")
        assert pop.stat()[0] == 1
    finally:
        pop.quit()
    token = netpost.api_token("alice@example.test")
    r = httpx.get(netpost.url("/api/v1/mailboxes"), headers={"Authorization": f"Bearer {token}"})
    assert r.json()["mailboxes"][0]["messages"] == 1


def test_factory_with_chosen_listeners_and_accounts(
        netpost_factory: Callable[..., RunningNetpost]) -> None:
    server = netpost_factory(listeners=("smtp",), accounts={"ops@corp.test": "pw"})
    assert set(server.addresses) == {"smtp"}
    with pytest.raises(NetpostError, match="not running"):
        server.address("imap")
    server.add_account("dev@other.test")
    with smtplib.SMTP(*server.address("smtp"), timeout=30) as s:
        s.sendmail("x@y.example", ["ops@corp.test", "dev@other.test"], b"Subject: s\r\n\r\nb\r\n")
    assert len(server.wait_for_messages("ops@corp.test", 1)) == 1
    assert len(server.wait_for_messages("dev@other.test", 1)) == 1
    with pytest.raises(NetpostError, match="expected 2"):
        server.wait_for_messages("ops@corp.test", 2, timeout=0.3)
    # The relay is off: nothing leaves the machine.
    with smtplib.SMTP(*server.address("smtp"), timeout=30) as s, \
            pytest.raises(smtplib.SMTPRecipientsRefused):
        s.sendmail("x@y.example", ["someone@gmail.com"], b"Subject: s\r\n\r\nb\r\n")


def test_the_host_process_collector_is_left_alone(
        netpost_factory: Callable[..., RunningNetpost]) -> None:
    """`netpost serve` freezes its start-up objects and raises the young-generation threshold
    (server.settle_garbage_collector); a server in a test's thread must not do that to the
    test process."""
    before = gc.get_threshold(), gc.get_freeze_count()
    netpost_factory(listeners=("smtp",))
    assert (gc.get_threshold(), gc.get_freeze_count()) == before
