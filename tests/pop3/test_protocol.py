"""Unit tests for the sans-I/O POP3 engine (RFC 1939, 2449, 2595, 5034, 3206)."""

from __future__ import annotations

import base64

import pytest

from netpost.auth.sasl import Credentials
from netpost.pop3.protocol import (
    AuthRequest,
    MaildropEntry,
    POP3Connection,
    POP3Settings,
    Retrieve,
    StartTLS,
    Update,
)

REFUSED = "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."

MSG1 = b"Subject: one\r\n\r\nhello\r\n"
MSG2 = b"Subject: two\r\nFrom: a@example.org\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"
MAILDROP = [
    MaildropEntry(len(MSG1), "uid-1", "k1"),
    MaildropEntry(len(MSG2), "uid-2", "k2"),
    MaildropEntry(100, "uid-3", "k3"),
]


def make(
    *, tls: bool = False, plaintext: bool = True, available: bool = True, max_errors: int = 10
) -> tuple[POP3Connection, list[tuple[str, str]]]:
    log: list[tuple[str, str]] = []
    settings = POP3Settings(
        tls_available=available, allow_plaintext_auth=plaintext, max_errors=max_errors
    )
    conn = POP3Connection(settings, tls_active=tls, trace=lambda d, line: log.append((d, line)))
    conn.greeting()
    assert conn.data_to_send() == b"+OK netpost POP3 server ready\r\n"
    return conn, log


def lines(conn: POP3Connection) -> list[str]:
    return conn.data_to_send().decode().split("\r\n")[:-1]


def run(conn: POP3Connection, data: bytes) -> list[str]:
    """Feed data and process everything that needs no session answer."""
    conn.receive_data(data)
    assert conn.next_event() is None
    return lines(conn)


def login(conn: POP3Connection, maildrop: list[MaildropEntry] = MAILDROP) -> None:
    conn.receive_data(b"USER alice\r\nPASS secret\r\n")
    event = conn.next_event()
    assert event == AuthRequest(Credentials("USER", "alice", "secret"))
    conn.accept_auth(maildrop)
    assert lines(conn) == ["+OK Send password", "+OK Logged in."]
    assert conn.state == "TRANSACTION"


def logged_in(**kw: bool) -> tuple[POP3Connection, list[tuple[str, str]]]:
    conn, log = make(**kw)  # type: ignore[arg-type]
    login(conn)
    return conn, log


# ---------------------------------------------------------------- greeting and CAPA


def test_greeting_custom_text() -> None:
    conn = POP3Connection(POP3Settings())
    conn.greeting("mx.example.org ready")
    assert conn.data_to_send() == b"+OK mx.example.org ready\r\n"
    assert conn.data_to_send() == b""
    assert conn.state == "AUTHORIZATION"
    assert not conn.closed


def test_capa_plaintext_not_allowed_offers_stls_only() -> None:
    conn, _ = make(plaintext=False)
    assert run(conn, b"CAPA\r\n") == [
        "+OK Capability list follows",
        "TOP",
        "UIDL",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "STLS",
        "IMPLEMENTATION netpost",
        ".",
    ]


def test_capa_over_tls_offers_user_and_sasl_not_stls() -> None:
    conn, _ = make(tls=True, plaintext=False)
    out = run(conn, b"capa\r\n")
    assert "USER" in out and "SASL PLAIN LOGIN" in out
    assert "STLS" not in out


def test_capa_without_tls_available() -> None:
    conn, _ = make(plaintext=True, available=False)
    out = run(conn, b"CAPA\r\n")
    assert "STLS" not in out and "USER" in out


def test_capa_in_transaction_has_no_stls() -> None:
    conn, _ = logged_in()
    out = run(conn, b"CAPA\r\n")
    assert out[0] == "+OK Capability list follows" and out[-1] == "."
    assert "STLS" not in out


def test_capa_implementation_setting() -> None:
    conn = POP3Connection(POP3Settings(implementation="netpost 0.1"))
    conn.receive_data(b"CAPA\r\n")
    conn.next_event()
    assert b"IMPLEMENTATION netpost 0.1\r\n" in conn.data_to_send()


def test_capa_with_argument_is_error() -> None:
    conn, _ = make()
    assert run(conn, b"CAPA X\r\n")[0].startswith("-ERR")


# ---------------------------------------------------------------- USER / PASS


def test_user_pass_accept() -> None:
    conn, _ = make()
    login(conn)
    assert run(conn, b"STAT\r\n") == [f"+OK 3 {len(MSG1) + len(MSG2) + 100}"]


def test_pass_may_contain_spaces() -> None:
    conn, _ = make()
    conn.receive_data(b"user bob\r\npass  my secret pass \r\n")
    event = conn.next_event()
    assert event == AuthRequest(Credentials("USER", "bob", " my secret pass "))


def test_user_pass_reject_then_retry() -> None:
    conn, _ = make()
    conn.receive_data(b"USER bob\r\nPASS wrong\r\n")
    assert isinstance(conn.next_event(), AuthRequest)
    conn.reject_auth()
    assert lines(conn) == ["+OK Send password", "-ERR [AUTH] Authentication failed"]
    assert conn.state == "AUTHORIZATION"
    # The USER is consumed by a failed PASS (RFC 1939 7).
    assert run(conn, b"PASS again\r\n")[0].startswith("-ERR")
    conn.receive_data(b"USER bob\r\nPASS right\r\n")
    assert conn.next_event() == AuthRequest(Credentials("USER", "bob", "right"))
    conn.reject_auth("[IN-USE] Maildrop locked")
    assert lines(conn)[-1] == "-ERR [IN-USE] Maildrop locked"


def test_pass_without_user() -> None:
    conn, _ = make()
    assert run(conn, b"PASS x\r\n")[0].startswith("-ERR")


def test_user_and_pass_missing_arguments() -> None:
    conn, _ = make()
    assert run(conn, b"USER\r\n")[0].startswith("-ERR")
    out = run(conn, b"USER bob\r\nPASS\r\n")
    assert out[0] == "+OK Send password" and out[1].startswith("-ERR")


def test_user_invalid_utf8() -> None:
    conn, _ = make()
    assert run(conn, b"USER \xff\xfe\r\n")[0].startswith("-ERR")


@pytest.mark.parametrize(
    "line", [b"USER bob\r\n", b"PASS x\r\n", b"AUTH PLAIN\r\n", b"AUTH\r\n", b"AUTH LOGIN eA==\r\n"]
)
def test_plaintext_refused_before_tls(line: bytes) -> None:
    conn, _ = make(plaintext=False)
    assert run(conn, line) == [REFUSED]


def test_plaintext_allowed_after_tls() -> None:
    conn, _ = make(tls=True, plaintext=False)
    conn.receive_data(b"USER bob\r\nPASS pw\r\n")
    assert conn.next_event() == AuthRequest(Credentials("USER", "bob", "pw"))


def test_auth_commands_invalid_in_transaction() -> None:
    conn, _ = logged_in()
    for line in (b"USER x\r\n", b"PASS x\r\n", b"AUTH PLAIN\r\n", b"STLS\r\n"):
        out = run(conn, line)
        assert len(out) == 1 and out[0].startswith("-ERR")
    assert conn.state == "TRANSACTION"


def test_transaction_commands_invalid_in_authorization() -> None:
    conn, _ = make()
    for cmd in (b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"NOOP", b"RSET", b"TOP 1 1", b"UIDL"):
        out = run(conn, cmd + b"\r\n")
        assert out == [f"-ERR {cmd.split()[0].decode()} not valid in AUTHORIZATION state"]


# ---------------------------------------------------------------- AUTH (RFC 5034)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_auth_lists_mechanisms() -> None:
    conn, _ = make()
    assert run(conn, b"AUTH\r\n") == ["+OK Supported mechanisms follow", "PLAIN", "LOGIN", "."]


def test_auth_plain_initial_response() -> None:
    conn, log = make()
    conn.receive_data(b"AUTH PLAIN " + b64(b"\x00alice\x00s3cret") + b"\r\n")
    assert conn.next_event() == AuthRequest(Credentials("PLAIN", "alice", "s3cret"))
    assert ("C", "AUTH PLAIN <redacted>") in log
    conn.accept_auth([])
    assert lines(conn) == ["+OK Logged in."]


def test_auth_plain_with_authzid_and_challenge() -> None:
    conn, log = make()
    assert run(conn, b"auth plain\r\n") == ["+ "]
    conn.receive_data(b64(b"admin\x00alice\x00pw") + b"\r\n")
    assert conn.next_event() == AuthRequest(Credentials("PLAIN", "alice", "pw", "admin"))
    assert ("C", "<redacted>") in log
    assert not any("pw" in line or "YWRt" in line for _, line in log)


def test_auth_login() -> None:
    conn, log = make()
    assert run(conn, b"AUTH LOGIN\r\n") == ["+ VXNlcm5hbWU6"]
    assert run(conn, b64(b"alice") + b"\r\n") == ["+ UGFzc3dvcmQ6"]
    conn.receive_data(b64(b"pass word") + b"\r\n")
    assert conn.next_event() == AuthRequest(Credentials("LOGIN", "alice", "pass word"))
    conn.reject_auth()
    assert lines(conn) == ["-ERR [AUTH] Authentication failed"]
    assert [line for d, line in log if d == "C"] == ["AUTH LOGIN", "<redacted>", "<redacted>"]


def test_auth_login_initial_response() -> None:
    conn, log = make()
    assert run(conn, b"AUTH LOGIN " + b64(b"alice") + b"\r\n") == ["+ UGFzc3dvcmQ6"]
    conn.receive_data(b64(b"pw") + b"\r\n")
    assert conn.next_event() == AuthRequest(Credentials("LOGIN", "alice", "pw"))
    assert ("C", "AUTH LOGIN <redacted>") in log


@pytest.mark.parametrize("mech", [b"PLAIN", b"LOGIN"])
def test_auth_cancel(mech: bytes) -> None:
    conn, _ = make()
    run(conn, b"AUTH " + mech + b"\r\n")
    assert run(conn, b"*\r\n") == ["-ERR Authentication cancelled"]
    # Back to commands.
    assert run(conn, b"CAPA\r\n")[0] == "+OK Capability list follows"


def test_auth_bad_base64() -> None:
    conn, _ = make()
    run(conn, b"AUTH PLAIN\r\n")
    out = run(conn, b"!!notbase64!!\r\n")
    assert len(out) == 1 and out[0].startswith("-ERR")
    assert run(conn, b"NOOP\r\n") == ["-ERR NOOP not valid in AUTHORIZATION state"]


def test_auth_bad_initial_response_and_malformed_plain() -> None:
    conn, _ = make()
    assert run(conn, b"AUTH PLAIN %%%\r\n")[0].startswith("-ERR")
    assert run(conn, b"AUTH PLAIN " + b64(b"no-nuls") + b"\r\n")[0].startswith("-ERR")
    assert run(conn, b"AUTH PLAIN =\r\n")[0].startswith("-ERR")


def test_auth_empty_identity_rejected() -> None:
    # The shared SASL rule (as in SMTP): an empty LOGIN username or PLAIN authcid is bad data.
    conn, _ = make()
    assert run(conn, b"AUTH LOGIN =\r\n") == ["-ERR Invalid authentication data: empty username"]
    run(conn, b"AUTH LOGIN\r\n")
    assert run(conn, b"=\r\n") == ["-ERR Invalid authentication data: empty username"]
    out = run(conn, b"AUTH PLAIN " + b64(b"zid\x00\x00pw") + b"\r\n")
    assert out[0].startswith("-ERR Invalid authentication data: ")
    assert run(conn, b"CAPA\r\n")[0] == "+OK Capability list follows"


def test_auth_star_initial_response_is_not_a_cancel() -> None:
    conn, _ = make()
    out = run(conn, b"AUTH PLAIN *\r\n")
    assert out == ["-ERR Invalid authentication data: invalid base64 in SASL data"]


def test_auth_unknown_mechanism_and_syntax() -> None:
    conn, _ = make()
    assert run(conn, b"AUTH CRAM-MD5\r\n") == ["-ERR Unsupported authentication mechanism"]
    assert run(conn, b"AUTH PLAIN a b\r\n")[0].startswith("-ERR")


def test_auth_sasl_line_may_exceed_command_limit() -> None:
    conn, _ = make()
    run(conn, b"AUTH PLAIN\r\n")
    password = "p" * 400
    conn.receive_data(b64(b"\x00alice\x00" + password.encode()) + b"\r\n")
    assert conn.next_event() == AuthRequest(Credentials("PLAIN", "alice", password))


# ---------------------------------------------------------------- STLS (RFC 2595)


def test_stls_discards_pipelined_input() -> None:
    conn, log = make(plaintext=False)
    conn.receive_data(b"STLS\r\nUSER evil\r\nPASS injected\r\nCAP")
    assert conn.next_event() == StartTLS()
    assert lines(conn) == ["+OK Begin TLS negotiation"]
    assert conn.next_event() is None
    conn.tls_started()
    assert conn.tls_active
    assert conn.next_event() is None
    assert conn.data_to_send() == b""
    assert not any("evil" in line for _, line in log)
    # After TLS: no STLS offered, USER allowed.
    out = run(conn, b"CAPA\r\n")
    assert "STLS" not in out and "USER" in out
    conn.receive_data(b"USER bob\r\nPASS pw\r\n")
    assert conn.next_event() == AuthRequest(Credentials("USER", "bob", "pw"))


def test_stls_forgets_previous_user() -> None:
    conn, _ = make(plaintext=True)
    run(conn, b"USER bob\r\n")
    conn.receive_data(b"STLS\r\n")
    assert conn.next_event() == StartTLS()
    conn.tls_started()
    assert run(conn, b"PASS pw\r\n")[-1].startswith("-ERR")


def test_stls_refusals() -> None:
    conn, _ = make(tls=True)
    assert run(conn, b"STLS\r\n") == ["-ERR Command not permitted when TLS active"]
    conn, _ = make(available=False)
    assert run(conn, b"STLS\r\n") == ["-ERR STLS not available"]
    conn, _ = make()
    assert run(conn, b"STLS now\r\n")[0].startswith("-ERR")


def test_input_between_stls_and_tls_started_is_dropped() -> None:
    conn, _ = make()
    conn.receive_data(b"STLS\r\n")
    assert conn.next_event() == StartTLS()
    conn.receive_data(b"USER injected\r\n")
    conn.tls_started()
    assert conn.next_event() is None
    assert lines(conn) == ["+OK Begin TLS negotiation"]


# ---------------------------------------------------------------- TRANSACTION commands


def test_stat_list_uidl_exact_octets() -> None:
    conn, _ = logged_in()
    total = len(MSG1) + len(MSG2) + 100
    assert run(conn, b"STAT\r\n") == [f"+OK 3 {total}"]
    assert run(conn, b"LIST\r\n") == [
        f"+OK 3 messages ({total} octets)",
        f"1 {len(MSG1)}",
        f"2 {len(MSG2)}",
        "3 100",
        ".",
    ]
    assert run(conn, b"LIST 2\r\n") == [f"+OK 2 {len(MSG2)}"]
    assert run(conn, b"UIDL\r\n") == [
        "+OK Unique-ID listing follows",
        "1 uid-1",
        "2 uid-2",
        "3 uid-3",
        ".",
    ]
    assert run(conn, b"uidl 3\r\n") == ["+OK 3 uid-3"]


def test_empty_maildrop() -> None:
    conn, _ = make()
    login(conn, [])
    assert run(conn, b"STAT\r\nLIST\r\nUIDL\r\n") == [
        "+OK 0 0",
        "+OK 0 messages (0 octets)",
        ".",
        "+OK Unique-ID listing follows",
        ".",
    ]
    assert run(conn, b"RETR 1\r\n")[0].startswith("-ERR No such message")


@pytest.mark.parametrize(
    "line",
    [
        b"LIST 0",
        b"LIST 4",
        b"LIST x",
        b"LIST -1",
        b"LIST +1",
        b"LIST 1 2",
        b"LIST  1",
        b"UIDL 99999999999999999999999",
        b"RETR",
        b"RETR 1 2",
        b"RETR abc",
        b"DELE",
        b"DELE 9",
        b"TOP 1",
        b"TOP 1 x",
        b"TOP 1 -1",
        b"TOP 9 1",
        b"STAT 1",
        b"NOOP x",
        b"RSET 1",
        b"QUIT now",
    ],
)
def test_bad_arguments(line: bytes) -> None:
    conn, _ = logged_in()
    out = run(conn, line + b"\r\n")
    assert len(out) == 1 and out[0].startswith("-ERR"), out
    assert conn.state == "TRANSACTION" and not conn.closed


def test_dele_hides_message_and_rset_unmarks() -> None:
    conn, _ = logged_in()
    assert run(conn, b"DELE 2\r\n") == ["+OK Message 2 deleted"]
    assert run(conn, b"DELE 2\r\n") == ["-ERR Message 2 already deleted"]
    assert run(conn, b"STAT\r\n") == [f"+OK 2 {len(MSG1) + 100}"]
    assert run(conn, b"LIST\r\n") == [
        f"+OK 2 messages ({len(MSG1) + 100} octets)",
        f"1 {len(MSG1)}",
        "3 100",
        ".",
    ]
    assert run(conn, b"UIDL\r\n") == ["+OK Unique-ID listing follows", "1 uid-1", "3 uid-3", "."]
    for line in (b"LIST 2", b"UIDL 2", b"RETR 2", b"TOP 2 0"):
        assert run(conn, line + b"\r\n") == ["-ERR Message 2 already deleted"]
    total = len(MSG1) + len(MSG2) + 100
    assert run(conn, b"RSET\r\n") == [f"+OK maildrop has 3 messages ({total} octets)"]
    assert run(conn, b"STAT\r\n") == [f"+OK 3 {total}"]
    conn.receive_data(b"QUIT\r\n")
    assert conn.next_event() == Update(())


def test_noop() -> None:
    conn, _ = logged_in()
    assert run(conn, b"noop\r\n") == ["+OK"]


def test_deletions_reported_only_at_quit() -> None:
    conn, _ = logged_in()
    conn.receive_data(b"DELE 3\r\nDELE 1\r\nNOOP\r\n")
    assert conn.next_event() is None  # DELE produces no event
    conn.receive_data(b"QUIT\r\n")
    event = conn.next_event()
    assert event == Update((MAILDROP[0], MAILDROP[2]))
    assert conn.state == "UPDATE"
    assert not conn.closed
    conn.update_done()
    assert lines(conn)[-1] == "+OK netpost POP3 server signing off"
    assert conn.closed


def test_quit_with_nothing_deleted_gives_empty_update() -> None:
    conn, _ = logged_in()
    conn.receive_data(b"QUIT\r\n")
    assert conn.next_event() == Update(())
    conn.update_done(True, "bye")
    assert lines(conn) == ["+OK bye"]
    assert conn.closed


def test_update_failure() -> None:
    conn, _ = logged_in()
    conn.receive_data(b"DELE 1\r\nQUIT\r\n")
    assert isinstance(conn.next_event(), Update)
    conn.update_done(False)
    assert lines(conn)[-1] == "-ERR [SYS/TEMP] Some deleted messages not removed"
    assert conn.closed


def test_update_failure_custom_text() -> None:
    conn, _ = logged_in()
    conn.receive_data(b"QUIT\r\n")
    conn.next_event()
    conn.update_done(False, "[SYS/TEMP] Some deleted messages not removed")
    assert lines(conn) == ["-ERR [SYS/TEMP] Some deleted messages not removed"]


def test_quit_in_authorization() -> None:
    conn, _ = make()
    conn.receive_data(b"QUIT\r\nCAPA\r\n")
    assert conn.next_event() is None
    assert lines(conn) == ["+OK netpost POP3 server signing off"]
    assert conn.closed


def test_peer_eof_gives_no_update() -> None:
    conn, _ = logged_in()
    conn.receive_data(b"DELE 1\r\n")
    assert conn.next_event() is None
    conn.receive_data(b"")
    assert conn.closed
    assert conn.next_event() is None
    assert lines(conn) == ["+OK Message 1 deleted"]


def test_eof_drops_unprocessed_input() -> None:
    conn, _ = logged_in()
    conn.receive_data(b"DELE 1\r\nQUIT\r\n")
    conn.receive_data(b"")
    assert conn.next_event() is None
    assert conn.closed


def test_close_nothing_deleted() -> None:
    conn, _ = logged_in()
    run(conn, b"DELE 1\r\n")
    conn.close("-ERR [SYS/TEMP] shutting down")
    assert lines(conn) == ["-ERR [SYS/TEMP] shutting down"]
    assert conn.closed
    conn.receive_data(b"QUIT\r\n")
    assert conn.next_event() is None
    conn.close("again")  # idempotent
    assert conn.data_to_send() == b""


def test_close_adds_err_prefix() -> None:
    conn, _ = make()
    conn.close("Idle timeout, closing connection")
    assert lines(conn) == ["-ERR Idle timeout, closing connection"]


def test_close_while_event_pending_then_answer_is_ignored() -> None:
    conn, _ = logged_in()
    conn.receive_data(b"RETR 1\r\n")
    assert isinstance(conn.next_event(), Retrieve)
    conn.close("[SYS/TEMP] shutting down")
    conn.send_message(MSG1)  # the session's late answer is dropped
    assert lines(conn) == ["-ERR [SYS/TEMP] shutting down"]


# ---------------------------------------------------------------- RETR / TOP


def retrieve(conn: POP3Connection, command: bytes, content: bytes) -> bytes:
    conn.receive_data(command + b"\r\n")
    event = conn.next_event()
    assert isinstance(event, Retrieve)
    conn.send_message(content)
    return conn.data_to_send()


def test_retr() -> None:
    conn, log = logged_in()
    conn.receive_data(b"RETR 2\r\n")
    event = conn.next_event()
    assert event == Retrieve(2, MAILDROP[1], None)
    conn.send_message(MSG2)
    assert conn.data_to_send() == f"+OK {len(MSG2)} octets\r\n".encode() + MSG2 + b".\r\n"
    assert log[-2:] == [("S", f"+OK {len(MSG2)} octets"), ("S", f"<message: {len(MSG2)} octets>")]


def test_retr_byte_stuffing() -> None:
    conn, _ = logged_in()
    content = b".first\r\nSubject: x\r\n\r\n.\r\n..\r\nmid.dle\r\n.end"
    out = retrieve(conn, b"RETR 1", content)
    assert out == (
        f"+OK {len(content) + 2} octets\r\n".encode()
        + b"..first\r\nSubject: x\r\n\r\n..\r\n...\r\nmid.dle\r\n..end\r\n.\r\n"
    )


def test_retr_normalises_bare_lf_and_missing_final_crlf() -> None:
    conn, _ = logged_in()
    out = retrieve(conn, b"RETR 1", b"A: b\n\nbody\n.\nlast")
    assert out == b"+OK 23 octets\r\nA: b\r\n\r\nbody\r\n..\r\nlast\r\n.\r\n"


def test_retr_crlf_fast_path_same_output_and_trace() -> None:
    content = b".first\r\nSubject: x\r\n\r\n.\r\n..\r\nmid.dle\r\n.end"
    safe_conn, safe_log = logged_in()
    safe = retrieve(safe_conn, b"RETR 1", content)
    for dot_lines in (True, None):
        conn, log = logged_in()
        conn.receive_data(b"RETR 1\r\n")
        assert isinstance(conn.next_event(), Retrieve)
        if dot_lines is None:
            conn.send_message(content, crlf=True)
        else:
            conn.send_message(content, crlf=True, dot_lines=dot_lines)
        assert b"".join(conn.chunks_to_send()) == safe
        assert conn.data_to_send() == b""
        assert log == safe_log


def test_retr_without_dot_lines_is_sent_uncopied() -> None:
    conn, _ = logged_in()
    conn.receive_data(b"RETR 2\r\n")
    assert isinstance(conn.next_event(), Retrieve)
    conn.send_message(MSG2, crlf=True, dot_lines=False)
    chunks = conn.chunks_to_send()
    assert chunks == [f"+OK {len(MSG2)} octets\r\n".encode(), MSG2, b".\r\n"]
    assert chunks[1] is MSG2


def test_retr_empty_message() -> None:
    conn, _ = logged_in()
    assert retrieve(conn, b"RETR 1", b"") == b"+OK 0 octets\r\n.\r\n"


def test_retr_send_error() -> None:
    conn, _ = logged_in()
    conn.receive_data(b"RETR 1\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), Retrieve)
    conn.send_error("[SYS/TEMP] Message unavailable")
    assert conn.next_event() is None
    assert lines(conn) == ["-ERR [SYS/TEMP] Message unavailable", "+OK"]


def test_top_zero_lines() -> None:
    conn, _ = logged_in()
    conn.receive_data(b"TOP 2 0\r\n")
    assert conn.next_event() == Retrieve(2, MAILDROP[1], 0)
    conn.send_message(MSG2)
    assert conn.data_to_send() == (
        b"+OK Top of message follows\r\nSubject: two\r\nFrom: a@example.org\r\n\r\n.\r\n"
    )


@pytest.mark.parametrize(
    ("n", "body"),
    [
        (1, b"line 1\r\n"),
        (2, b"line 1\r\nline 2\r\n"),
        (3, b"line 1\r\nline 2\r\nline 3\r\n"),
        (50, b"line 1\r\nline 2\r\nline 3\r\n"),
    ],
)
def test_top_n_lines(n: int, body: bytes) -> None:
    conn, _ = logged_in()
    out = retrieve(conn, f"TOP 2 {n}".encode(), MSG2)
    head = b"+OK Top of message follows\r\nSubject: two\r\nFrom: a@example.org\r\n\r\n"
    assert out == head + body + b".\r\n"


def test_top_stuffs_and_handles_headers_only_and_huge_count() -> None:
    conn, _ = logged_in()
    out = retrieve(conn, b"TOP 1 1", b"A: b\r\n\r\n.dot\r\nsecond\r\n")
    assert out == b"+OK Top of message follows\r\nA: b\r\n\r\n..dot\r\n.\r\n"
    out = retrieve(conn, b"TOP 1 5", b"A: b\r\nC: d\r\n")
    assert out == b"+OK Top of message follows\r\nA: b\r\nC: d\r\n.\r\n"
    out = retrieve(conn, b"TOP 1 99999999999999999999999999", b"A: b\r\n\r\nx\r\ny")
    assert out == b"+OK Top of message follows\r\nA: b\r\n\r\nx\r\ny\r\n.\r\n"
    out = retrieve(conn, b"TOP 1 1", b"\r\nbody only\r\nmore\r\n")
    assert out == b"+OK Top of message follows\r\n\r\nbody only\r\n.\r\n"
    out = retrieve(conn, b"TOP 1 1", b"A: b\r\n\r\n\r\nthird\r\n")
    assert out == b"+OK Top of message follows\r\nA: b\r\n\r\n\r\n.\r\n"


# ---------------------------------------------------------------- pipelining and ordering


def test_pipelined_batch_answers_in_order() -> None:
    conn, _ = make()
    conn.receive_data(b"CAPA\r\nUSER a\r\nPASS b\r\nSTAT\r\nRETR 1\r\nDELE 1\r\nLIST\r\nQUIT\r\n")
    event = conn.next_event()
    assert isinstance(event, AuthRequest)
    assert conn.next_event() is None  # waits for the answer; STAT not yet processed
    conn.accept_auth(MAILDROP[:2])
    event = conn.next_event()
    assert isinstance(event, Retrieve) and event.number == 1
    assert conn.next_event() is None
    conn.send_message(MSG1)
    event = conn.next_event()
    assert event == Update((MAILDROP[0],))
    conn.update_done()
    out = conn.data_to_send()
    expected = (
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
        b"PIPELINING\r\nUSER\r\nSASL PLAIN LOGIN\r\nSTLS\r\nIMPLEMENTATION netpost\r\n.\r\n"
        b"+OK Send password\r\n+OK Logged in.\r\n"
        + f"+OK 2 {len(MSG1) + len(MSG2)}\r\n".encode()
        + f"+OK {len(MSG1)} octets\r\n".encode()
        + MSG1
        + b".\r\n+OK Message 1 deleted\r\n"
        + f"+OK 1 messages ({len(MSG2)} octets)\r\n2 {len(MSG2)}\r\n.\r\n".encode()
        + b"+OK netpost POP3 server signing off\r\n"
    )
    assert out == expected
    assert conn.closed


def test_commands_split_across_reads_and_bare_lf() -> None:
    conn, _ = logged_in()
    for chunk in (b"ST", b"A", b"T\r", b"\nNO", b"OP\nrset\n"):
        conn.receive_data(chunk)
    assert conn.next_event() is None
    out = lines(conn)
    assert out[0].startswith("+OK 3 ") and out[1] == "+OK" and out[2].startswith("+OK maildrop")


def test_answer_without_pending_raises() -> None:
    conn, _ = logged_in()
    with pytest.raises(RuntimeError):
        conn.send_message(b"x")
    with pytest.raises(RuntimeError):
        conn.send_error("x")
    with pytest.raises(RuntimeError):
        conn.update_done()
    with pytest.raises(RuntimeError):
        conn.tls_started()
    with pytest.raises(RuntimeError):
        conn.accept_auth([])
    with pytest.raises(RuntimeError):
        conn.reject_auth()
    conn.receive_data(b"RETR 1\r\n")
    assert isinstance(conn.next_event(), Retrieve)
    with pytest.raises(RuntimeError):
        conn.accept_auth([])  # wrong kind of answer


# ---------------------------------------------------------------- errors and limits


def test_unknown_and_empty_commands() -> None:
    conn, _ = make()
    assert run(conn, b"FOO\r\n") == ["-ERR Unknown command"]
    assert run(conn, b"APOP a b\r\n") == ["-ERR Unknown command"]
    assert run(conn, b"\r\n") == ["-ERR Empty command"]
    assert run(conn, b"\xff\xfe\r\n") == ["-ERR Unknown command"]


def test_trailing_space_tolerated() -> None:
    conn, _ = logged_in()
    assert run(conn, b"STAT \r\n")[0].startswith("+OK 3")


def test_too_many_errors_closes() -> None:
    conn, _ = make(max_errors=3)
    conn.receive_data(b"X\r\nY\r\nZ\r\nCAPA\r\n")
    assert conn.next_event() is None
    assert lines(conn) == [
        "-ERR Unknown command",
        "-ERR Unknown command",
        "-ERR Too many errors, closing connection",
    ]
    assert conn.closed


def test_auth_failures_do_not_count_as_errors() -> None:
    conn, _ = make(max_errors=2)
    for _ in range(3):
        conn.receive_data(b"USER a\r\nPASS b\r\n")
        assert isinstance(conn.next_event(), AuthRequest)
        conn.reject_auth()
    assert not conn.closed


def test_line_too_long() -> None:
    conn, _ = logged_in()
    assert run(conn, b"NOOP " + b"x" * 300 + b"\r\nNOOP\r\n") == ["-ERR Line too long", "+OK"]
    # Exactly 255 octets including CRLF is allowed (RFC 2449 4).
    assert run(conn, b"LIST " + b"0" * 247 + b"1\r\n")[0] == f"+OK 1 {len(MSG1)}"
    assert run(conn, b"LIST " + b"0" * 248 + b"1\r\n") == ["-ERR Line too long"]


def test_100000_byte_line_split_across_calls_is_not_buffered() -> None:
    conn, log = logged_in()
    conn.receive_data(b"NOOP ")
    for _ in range(100):
        conn.receive_data(b"a" * 1000)
        assert len(conn._partial) <= 255  # white-box: the line is not kept
        assert len(conn._lines) == 0
    conn.receive_data(b"aaaa\r\nNOOP\r\n")
    assert conn.next_event() is None
    assert lines(conn) == ["-ERR Line too long", "+OK"]
    assert ("C", "<overlong line discarded>") in log


def test_100000_byte_line_in_one_call() -> None:
    conn, _ = logged_in()
    assert run(conn, b"A" * 100_000 + b"\nNOOP\n") == ["-ERR Line too long", "+OK"]


def test_overlong_sasl_line_aborts_exchange() -> None:
    conn, _ = make()
    run(conn, b"AUTH PLAIN\r\n")
    assert run(conn, b"A" * 10_000 + b"\r\n") == ["-ERR Line too long"]
    assert run(conn, b"CAPA\r\n")[0] == "+OK Capability list follows"


# ---------------------------------------------------------------- tracing


def test_trace_redacts_passwords() -> None:
    conn, log = make()
    conn.receive_data(b"USER alice\r\nPASS hunter2 x\r\n")
    conn.next_event()
    conn.reject_auth()
    assert log == [
        ("S", "+OK netpost POP3 server ready"),
        ("C", "USER alice"),
        ("S", "+OK Send password"),
        ("C", "PASS <redacted>"),
        ("S", "-ERR [AUTH] Authentication failed"),
    ]


def test_trace_redacts_even_when_refused() -> None:
    conn, log = make(plaintext=False)
    run(conn, b"PASS hunter2\r\nAUTH PLAIN AGFAYg==\r\n")
    assert ("C", "PASS <redacted>") in log
    assert ("C", "AUTH PLAIN <redacted>") in log
    assert not any("hunter2" in line or "AGFA" in line for _, line in log)


def test_trace_listing_and_message() -> None:
    conn, log = logged_in()
    log.clear()
    run(conn, b"LIST\r\n")
    assert log[0] == ("C", "LIST")
    assert log[-1] == ("S", ".")
    log.clear()
    retrieve(conn, b"RETR 1", MSG1)
    assert log == [
        ("C", "RETR 1"),
        ("S", f"+OK {len(MSG1)} octets"),
        ("S", f"<message: {len(MSG1)} octets>"),
    ]


def test_no_trace_callback() -> None:
    conn = POP3Connection(POP3Settings(allow_plaintext_auth=True))
    conn.greeting()
    conn.receive_data(b"USER a\r\nPASS b\r\n")
    assert isinstance(conn.next_event(), AuthRequest)
    conn.accept_auth(MAILDROP)
    conn.receive_data(b"RETR 1\r\n")
    assert isinstance(conn.next_event(), Retrieve)
    conn.send_message(MSG1)
    assert conn.data_to_send().endswith(MSG1 + b".\r\n")


def test_top_count_with_leading_zeros_and_long_lines_setting() -> None:
    conn = POP3Connection(POP3Settings(allow_plaintext_auth=True, max_line=20_000))
    login(conn)
    conn.receive_data(b"TOP 1 000\r\nTOP 1 " + b"9" * 6000 + b"\r\n")
    assert conn.next_event() == Retrieve(1, MAILDROP[0], 0)
    conn.send_message(MSG1)
    event = conn.next_event()
    assert isinstance(event, Retrieve) and event.lines is not None and event.lines >= 10**12
