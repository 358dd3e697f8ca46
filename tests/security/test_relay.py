"""No open relay: the MX accepts no mail for other domains, in any spelling; submission takes
it only from a logged-in user (into the outbound queue)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import DOMAIN, Server
from tests.security import (
    ALICE,
    BOB,
    CAROL,
    launch,
    mailbox,
    plain,
    smtp_session,
    starttls_session,
    stop,
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = launch(tmp_path_factory, "relay")
    yield s
    stop(s)


# Recipient spellings that must never end up relayed, with the acceptable answers.
RELAY_DENIED = ("554", "5.7.1")
UNKNOWN_USER = ("550", "5.1.1")
BAD_SYNTAX = ("553", "5.1.3")
TRICKY = [
    ("victim@elsewhere.example", [RELAY_DENIED]),
    ("victim@ELSEWHERE.EXAMPLE", [RELAY_DENIED]),
    ("bob@example.org", [RELAY_DENIED]),
    (f"bob@{DOMAIN}.elsewhere.example", [RELAY_DENIED]),
    (f"bob@sub.{DOMAIN}", [RELAY_DENIED]),
    (f"bob@{DOMAIN}.", [RELAY_DENIED, BAD_SYNTAX]),
    ("bob@[127.0.0.1]", [RELAY_DENIED, BAD_SYNTAX]),
    ("bob@[IPv6:::1]", [RELAY_DENIED, BAD_SYNTAX]),
    # Source routes: the route is ignored (RFC 5321 4.1.2), the final mailbox counts.
    (f"@{DOMAIN}:bob@example.org", [RELAY_DENIED]),
    (f"@{DOMAIN},@mx.{DOMAIN}:bob@example.org", [RELAY_DENIED]),
    # Quoted local parts, percent hack, bang paths, double @: unknown local users or bad syntax.
    (f'"bob@example.org"@{DOMAIN}', [UNKNOWN_USER, BAD_SYNTAX]),
    (f'"bob%example.org"@{DOMAIN}', [UNKNOWN_USER, BAD_SYNTAX]),
    ('"bob"@example.org', [RELAY_DENIED, BAD_SYNTAX]),
    (f"bob%example.org@{DOMAIN}", [UNKNOWN_USER, BAD_SYNTAX]),
    (f"bob%{DOMAIN}@{DOMAIN}", [UNKNOWN_USER, BAD_SYNTAX]),
    (f"example.org!bob@{DOMAIN}", [UNKNOWN_USER, BAD_SYNTAX]),
    (f"bob!example.org@{DOMAIN}", [UNKNOWN_USER, BAD_SYNTAX]),
    (f"bob@example.org@{DOMAIN}", [UNKNOWN_USER, BAD_SYNTAX, RELAY_DENIED]),
    (f"bob@{DOMAIN}@example.org", [UNKNOWN_USER, BAD_SYNTAX, RELAY_DENIED]),
    (f"bob\\@example.org@{DOMAIN}", [UNKNOWN_USER, BAD_SYNTAX]),
]


def counts(srv: Server) -> dict[str, int]:
    return {u: len(mailbox(srv, u)) for u in (ALICE, BOB, CAROL)}


@pytest.mark.parametrize(("rcpt", "allowed"), TRICKY, ids=[t[0] for t in TRICKY])
def test_mx_refuses_relay_spellings(srv: Server, rcpt: str,
                                    allowed: list[tuple[str, str]]) -> None:
    with smtp_session(srv.port("smtp")) as c:
        assert c.cmd("MAIL FROM:<spammer@example.org>")[0] == 250
        code, lines = c.cmd(f"RCPT TO:<{rcpt}>")
        reply = lines[-1].decode()
        assert (reply[:3], reply[4:9]) in allowed, reply
        # Nothing was accepted, so DATA has no recipient and nothing can be stored.
        code, lines = c.cmd("DATA")
        assert code in (503, 554), lines
        assert c.cmd("QUIT")[0] == 221


def test_mx_relay_attempts_mixed_with_a_local_recipient_store_nothing_elsewhere(
        srv: Server) -> None:
    """All tricky recipients in one transaction next to a real one: only bob gets the message,
    and the Received field names no foreign recipient."""
    before = counts(srv)
    msg = b"From: spammer@example.org\r\nSubject: relay probe\r\n\r\nrelay probe\r\n"
    with smtp_session(srv.port("smtp")) as c:
        assert c.cmd("MAIL FROM:<spammer@example.org>")[0] == 250
        assert c.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        accepted = []
        for rcpt, _ in TRICKY[:15]:  # 20 errors would end the session (max_errors)
            code, _lines = c.cmd(f"RCPT TO:<{rcpt}>")
            if code == 250:
                accepted.append(rcpt)
        assert accepted == []
        assert c.cmd("DATA")[0] == 354
        code, lines = c.cmd(msg + b".")
        assert code == 250, lines
        assert c.cmd("QUIT")[0] == 221
    after = counts(srv)
    assert after == {**before, BOB: before[BOB] + 1}
    stored = [m for m in mailbox(srv, BOB) if m.endswith(msg)]
    assert len(stored) == 1
    assert b"for <bob@example.test>" in stored[0]


def test_source_route_to_a_local_user_is_local(srv: Server) -> None:
    with smtp_session(srv.port("smtp")) as c:
        assert c.cmd("MAIL FROM:<someone@example.org>")[0] == 250
        code, lines = c.cmd(f"RCPT TO:<@mx.example.org:{BOB}>")
        assert code == 250, lines
        assert c.cmd("RSET")[0] == 250


def test_submission_without_auth_is_refused(srv: Server) -> None:
    # Before TLS.
    with smtp_session(srv.port("submission")) as c:
        code, lines = c.cmd(f"MAIL FROM:<{ALICE}>")
        assert code == 530 and b"5.7.0" in lines[-1], lines
        code, lines = c.cmd("RCPT TO:<victim@elsewhere.example>")
        assert code == 503, lines  # no transaction was started
        code, lines = c.cmd("DATA")
        assert code == 503, lines
    # After STARTTLS, still no AUTH.
    with starttls_session(srv.port("submission")) as c:
        code, lines = c.cmd(f"MAIL FROM:<{ALICE}>")
        assert code == 530 and b"5.7.0" in lines[-1], lines
        code, lines = c.cmd("RCPT TO:<victim@elsewhere.example>")
        assert code == 503, lines
    # Implicit TLS.
    with smtp_session(srv.port("submissions"), tls=True) as c:
        code, lines = c.cmd("MAIL FROM:<>")
        assert code == 530, lines


@pytest.mark.parametrize("rcpt", ["victim@elsewhere.example", f"@{DOMAIN}:bob@example.org"])
def test_submission_with_auth_queues_other_domains(srv: Server, rcpt: str) -> None:
    """A logged-in user's mail for another domain goes to the outbound queue, not to a local
    mailbox (the source route is ignored, RFC 5321 4.1.2)."""
    before = mailbox(srv, BOB)
    with starttls_session(srv.port("submission")) as c:
        code, lines = c.cmd(f"AUTH PLAIN {plain(ALICE)}")
        assert code == 235, lines
        assert c.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
        code, lines = c.cmd(f"RCPT TO:<{rcpt}>")
        assert code == 250, lines
        assert c.cmd("DATA")[0] == 354
        code, lines = c.cmd("Subject: out\r\n\r\nhello\r\n.")
        assert code == 250 and b"queued as" in lines[-1], lines
        assert c.cmd("QUIT")[0] == 221
    assert mailbox(srv, BOB) == before


@pytest.mark.parametrize("rcpt", ["bob@[127.0.0.1]", "bob@[IPv6:::1]"])
def test_submission_refuses_address_literals(srv: Server, rcpt: str) -> None:
    with starttls_session(srv.port("submission")) as c:
        assert c.cmd(f"AUTH PLAIN {plain(ALICE)}")[0] == 235
        assert c.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
        code, lines = c.cmd(f"RCPT TO:<{rcpt}>")
        reply = lines[-1].decode()
        assert reply.startswith(("550 5.7.1", "553 5.1.3")), reply
        assert c.cmd("QUIT")[0] == 221
