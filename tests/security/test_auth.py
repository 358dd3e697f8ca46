"""Passwords only over TLS, plaintext injection around STARTTLS/STLS, login failure slow-down."""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterator

import pytest

from tests.conftest import PASSWORD, Server
from tests.security import (
    ALICE,
    Raw,
    launch,
    plain,
    server_log,
    smtp_session,
    starttls_session,
    stop,
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = launch(tmp_path_factory, "auth")
    yield s
    stop(s)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_smtp_auth_before_tls_is_refused(srv: Server) -> None:
    with smtp_session(srv.port("submission")) as c:
        code, lines = c.cmd("EHLO client.test")
        assert not any(b"AUTH" in line for line in lines), lines  # not offered before TLS
        for command in (f"AUTH PLAIN {plain(ALICE)}", "AUTH PLAIN", "AUTH LOGIN",
                        f"AUTH LOGIN {b64(ALICE)}"):
            code, lines = c.cmd(command)
            assert lines[-1].startswith(b"538 5.7.11"), (command, lines)
        # Still unauthenticated.
        assert c.cmd(f"MAIL FROM:<{ALICE}>")[0] == 530
        # STARTTLS, then AUTH works on the same connection.
        assert c.cmd("STARTTLS")[0] == 220
        c.starttls()
        code, lines = c.cmd("EHLO client.test")
        assert any(b"AUTH" in line and b"PLAIN" in line for line in lines), lines
        code, lines = c.cmd(f"AUTH PLAIN {plain(ALICE)}")
        assert code == 235, lines
        assert c.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250


def test_smtp_auth_login_after_starttls(srv: Server) -> None:
    with starttls_session(srv.port("submission")) as c:
        assert c.cmd("AUTH LOGIN")[0] == 334
        assert c.cmd(b64(ALICE))[0] == 334
        code, lines = c.cmd(b64(PASSWORD))
        assert code == 235, lines


def test_mx_offers_no_auth(srv: Server) -> None:
    with starttls_session(srv.port("smtp")) as c:
        code, lines = c.cmd(f"AUTH PLAIN {plain(ALICE)}")
        assert code in (502, 503), lines


def test_starttls_plaintext_injection_is_discarded(srv: Server) -> None:
    """CVE-2011-0411: commands pipelined after STARTTLS in plaintext are never executed."""
    with smtp_session(srv.port("submission")) as c:
        c.send(b"STARTTLS\r\nAUTH PLAIN " + plain(ALICE).encode()
               + b"\r\nMAIL FROM:<alice@example.test>\r\n")
        code, lines = c.reply()
        assert code == 220, lines
        c.starttls()
        code, lines = c.cmd("NOOP")  # the first reply inside TLS answers our NOOP
        assert code == 250, lines
        code, lines = c.cmd(f"MAIL FROM:<{ALICE}>")
        assert code in (503, 530), lines  # no EHLO after TLS and not authenticated


def test_pop3_user_and_auth_before_stls_are_refused(srv: Server) -> None:
    with Raw(srv.port("pop3")) as c:
        assert c.line().startswith(b"+OK")
        for command in (f"USER {ALICE}", f"PASS {PASSWORD}", f"AUTH PLAIN {plain(ALICE)}",
                        "AUTH PLAIN", f"APOP {ALICE} 0123456789abcdef0123456789abcdef"):
            reply = c.pop(command)
            assert reply.startswith(b"-ERR"), (command, reply)
            if not command.startswith(("PASS", "APOP")):
                assert b"TLS" in reply, (command, reply)
        assert c.pop("STAT").startswith(b"-ERR")  # not logged in
        # STLS, then the same login works.
        assert c.pop("STLS").startswith(b"+OK")
        c.starttls()
        assert c.pop(f"USER {ALICE}").startswith(b"+OK")
        assert c.pop(f"PASS {PASSWORD}").startswith(b"+OK")
        assert c.pop("STAT").startswith(b"+OK")
        assert c.pop("QUIT").startswith(b"+OK")


def test_pop3_auth_plain_after_stls(srv: Server) -> None:
    with Raw(srv.port("pop3")) as c:
        c.line()
        assert c.pop("STLS").startswith(b"+OK")
        c.starttls()
        reply = c.pop(f"AUTH PLAIN {plain(ALICE)}")
        assert reply.startswith(b"+OK"), reply
        assert c.pop("NOOP").startswith(b"+OK")


def test_stls_plaintext_injection_is_discarded(srv: Server) -> None:
    with Raw(srv.port("pop3")) as c:
        c.line()
        c.send(f"STLS\r\nUSER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
        assert c.line().startswith(b"+OK")
        c.starttls()
        # Not logged in: the injected USER/PASS were dropped.
        reply = c.pop("STAT")
        assert reply.startswith(b"-ERR"), reply


def test_passwords_never_reach_the_trace(srv: Server) -> None:
    with starttls_session(srv.port("submission")) as c:
        assert c.cmd(f"AUTH PLAIN {plain(ALICE)}")[0] == 235
    with Raw(srv.port("pop3s"), tls=True) as c:
        c.line()
        c.pop(f"USER {ALICE}")
        assert c.pop(f"PASS {PASSWORD}").startswith(b"+OK")
    time.sleep(0.3)
    trace = (srv.data / "trace.log").read_text(errors="replace")
    assert "<redacted>" in trace
    assert PASSWORD not in trace and plain(ALICE) not in trace and b64(PASSWORD) not in trace
    assert PASSWORD not in server_log(srv)


# --- failure slow-down --------------------------------------------------------------------------


@pytest.fixture()
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own: the throttle state is per client address."""
    s = launch(tmp_path_factory, "throttle")
    yield s
    stop(s)


def smtp_login(srv: Server, user: str, password: str) -> tuple[float, bytes]:
    with smtp_session(srv.port("submissions"), tls=True) as c:
        start = time.monotonic()
        _, lines = c.cmd(f"AUTH PLAIN {plain(user, password)}")
        return time.monotonic() - start, lines[-1]


def pop_login(srv: Server, user: str, password: str) -> tuple[float, bytes]:
    with Raw(srv.port("pop3s"), tls=True) as c:
        c.line()
        c.pop(f"USER {user}")
        start = time.monotonic()
        reply = c.pop(f"PASS {password}")
        return time.monotonic() - start, reply


def test_smtp_failures_slow_down_and_look_alike(fresh: Server) -> None:
    times = []
    replies = set()
    for i in range(4):
        user = ALICE if i % 2 else "nobody@example.test"
        took, reply = smtp_login(fresh, user, "wrong password")
        times.append(took)
        replies.add(reply)
    # failure_delay 0.2 doubling (to at most 1.6): each failure waits longer than the last.
    assert all(b > a + 0.2 for a, b in itertools.pairwise(times)), times
    assert times[0] >= 0.15 and times[-1] > times[0] + 1.0, times
    # Unknown user and wrong password get the very same answer.
    assert replies == {b"535 5.7.8 Authentication credentials invalid"}, replies
    # A correct password still gets in, and is forgiven: the next failure is quick again.
    took, reply = smtp_login(fresh, ALICE, PASSWORD)
    assert reply.startswith(b"235"), reply
    took, _ = smtp_login(fresh, ALICE, "wrong again")
    assert took < 1.0, took
    time.sleep(0.2)
    failures = [line for line in fresh.output if "login failed" in line]
    assert len(failures) == 5, server_log(fresh)[-2000:]
    assert any("nobody@example.test" in line for line in failures)
    assert any(ALICE in line for line in failures)
    assert not any("wrong" in line for line in failures)  # no passwords in the log


def test_pop3_failures_slow_down_and_look_alike(fresh: Server) -> None:
    t_unknown, r_unknown = pop_login(fresh, "nobody@example.test", "wrong")
    t_wrong, r_wrong = pop_login(fresh, ALICE, "wrong")
    assert r_unknown == r_wrong == b"-ERR [AUTH] Authentication failed"
    assert t_unknown >= 0.15 and t_wrong > t_unknown + 0.2, (t_unknown, t_wrong)
    time.sleep(0.2)
    failures = [line for line in fresh.output if "login failed" in line]
    assert len(failures) == 2, server_log(fresh)[-2000:]
