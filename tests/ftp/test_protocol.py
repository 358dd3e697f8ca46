"""The FTP control-connection engine, driven directly (no sockets)."""

from __future__ import annotations

import pytest

from netpost.ftp.protocol import (
    Abort,
    ActiveTarget,
    FileRequest,
    FTPConnection,
    FTPSettings,
    Login,
    PassiveRequest,
    StartTLS,
    TransferRequest,
)

CLIENT = "192.0.2.10"


def conn(**kw: object) -> FTPConnection:
    kw.setdefault("client_address", CLIENT)
    settings = FTPSettings(**kw)  # type: ignore[arg-type]
    c = FTPConnection(settings)
    c.greeting()
    c.data_to_send()
    return c


def send(c: FTPConnection, line: str | bytes) -> object:
    c.receive_data(line if isinstance(line, bytes) else line.encode() + b"\r\n")
    return c.next_event()


def replies(c: FTPConnection) -> list[str]:
    return c.data_to_send().decode().splitlines()


def logged_in(**kw: object) -> FTPConnection:
    c = conn(allow_plaintext_login=True, **kw)
    assert send(c, "USER alice") is None
    event = send(c, "PASS secret")
    assert event == Login("alice", "secret")
    c.accept_login("alice@example.test")
    c.data_to_send()
    return c


def test_greeting_and_login() -> None:
    c = FTPConnection(FTPSettings(client_address=CLIENT, allow_plaintext_login=True))
    c.greeting()
    assert replies(c) == ["220 netpost FTP server ready"]
    assert send(c, "USER bob") is None
    assert replies(c) == ["331 Password required for bob"]
    assert isinstance(send(c, "PASS x"), Login)
    c.reject_login()
    assert replies(c) == ["530 Login incorrect"]


def test_no_login_before_tls_unless_allowed() -> None:
    c = conn()
    assert send(c, "USER bob") is None
    assert replies(c) == ["530 Log in over TLS: send AUTH TLS first"]
    assert send(c, "PASS secret") is None
    assert replies(c)[0].startswith("503")
    assert send(c, "AUTH TLS") == StartTLS()
    assert replies(c) == ["234 Proceed with negotiation"]
    c.receive_data(b"USER injected\r\n")  # pipelined in plaintext: dropped (CVE-2011-0411)
    c.tls_started()
    assert c.next_event() is None and replies(c) == []
    assert send(c, "USER bob") is None
    assert replies(c) == ["331 Password required for bob"]


def test_three_failed_logins_close() -> None:
    c = conn(allow_plaintext_login=True)
    for _ in range(3):
        send(c, "USER bob")
        assert isinstance(send(c, "PASS bad"), Login)
        c.reject_login()
    assert replies(c)[-1] == "421 Too many failed logins, closing connection"
    assert c.closed


def test_commands_need_login() -> None:
    c = conn(allow_plaintext_login=True)
    for line in ("CWD /", "LIST", "RETR x", "PASV", "MKD d"):
        assert send(c, line) is None
        assert replies(c)[0].startswith("530 ")
    for line in ("SYST", "FEAT", "NOOP", "HELP"):
        assert send(c, line) is None
        assert replies(c)[-1][:3] in ("215", "211", "200", "214")


def test_feat_lists_extensions() -> None:
    c = conn()
    send(c, "FEAT")
    lines = replies(c)
    assert lines[0] == "211-Features:" and lines[-1] == "211 End"
    for feature in (" AUTH TLS", " EPSV", " MLST type*;size*;modify*;perm*;unique*;", " UTF8",
                    " REST STREAM", " SIZE", " MDTM", " PBSZ", " PROT"):
        assert feature in lines


def test_pwd_cwd_and_file_requests() -> None:
    c = logged_in()
    send(c, "PWD")
    assert replies(c) == ['257 "/" is the current directory']
    event = send(c, "CWD docs")
    assert event == FileRequest("CWD", "docs")
    c.set_cwd("/docs")
    c.reply(250, "Directory changed to /docs")
    assert replies(c) == ["250 Directory changed to /docs"]
    assert send(c, "CDUP") == FileRequest("CWD", "..")
    c.reply(250, "ok")
    assert send(c, "XMKD new dir") == FileRequest("MKD", "new dir")


def test_rename_sequence() -> None:
    c = logged_in()
    assert send(c, "RNTO b") is None
    assert replies(c)[0].startswith("503")
    assert send(c, "RNFR a") == FileRequest("RNFR", "a")
    c.reply(350, "Ready for RNTO")
    assert send(c, "RNTO b") == FileRequest("RNTO", "b", "a")
    c.reply(250, "Renamed")
    assert send(c, "RNTO c") is None  # the RNFR is spent
    assert replies(c)[-1].startswith("503")


def test_port_to_another_host_or_privileged_port_refused() -> None:
    c = logged_in()
    assert send(c, "PORT 10,0,0,1,200,10") is None
    assert replies(c)[0].startswith("504")  # RFC 2577: no FTP bounce
    assert send(c, "PORT 192,0,2,10,0,21") is None
    assert replies(c)[0].startswith("504")  # privileged port
    assert send(c, "EPRT |1|192.0.2.11|5000|") is None
    assert replies(c)[0].startswith("504")
    assert send(c, "PORT 192,0,2,10,200,10") is None
    assert replies(c) == ["200 PORT command successful"]
    event = send(c, "RETR f")
    assert isinstance(event, TransferRequest)
    assert event.active == ActiveTarget(CLIENT, 200 * 256 + 10)


def test_eprt_ipv6_and_epsv() -> None:
    c = logged_in(client_address="2001:db8::1")
    assert send(c, "EPRT |2|2001:db8::1|6000|") is None
    assert replies(c) == ["200 EPRT command successful"]
    assert send(c, "PASV") is None
    assert replies(c)[0].startswith("522")
    assert send(c, "EPSV") == PassiveRequest(extended=True)
    c.passive_ready("2001:db8::2", 40000)
    assert replies(c) == ["229 Entering Extended Passive Mode (|||40000|)"]


def test_pasv_reply_format() -> None:
    c = logged_in()
    assert send(c, "PASV") == PassiveRequest(extended=False)
    c.passive_ready("127.0.0.1", 50000)
    assert replies(c) == ["227 Entering Passive Mode (127,0,0,1,195,80)"]


def test_transfer_needs_data_connection_and_rest_is_one_shot() -> None:
    c = logged_in()
    assert send(c, "RETR f") is None
    assert replies(c)[0].startswith("425")
    send(c, "PASV")
    c.passive_ready("127.0.0.1", 50000)
    send(c, "REST 100")
    assert replies(c)[-1].startswith("350")
    event = send(c, "RETR f")
    assert isinstance(event, TransferRequest) and event.offset == 100 and event.active is None
    c.transfer_started("Opening")
    c.transfer_done(226, "Transfer complete")
    send(c, "PASV")
    c.passive_ready("127.0.0.1", 50001)
    send(c, "REST 5")
    send(c, "NOOP")  # REST applies only to the command right after it
    event = send(c, "RETR f")
    assert isinstance(event, TransferRequest) and event.offset == 0


def test_abor_stat_noop_during_transfer_and_held_commands() -> None:
    c = logged_in()
    send(c, "PASV")
    c.passive_ready("127.0.0.1", 50000)
    assert isinstance(send(c, "STOR big"), TransferRequest)
    c.transfer_started("Opening BINARY mode data connection")
    c.data_to_send()
    c.receive_data(b"PWD\r\nSTAT\r\nNOOP\r\n\xff\xf4\xff\xf2ABOR\r\n")
    assert c.next_event() == Abort()
    assert replies(c) == ["213 Transfer in progress", "200 NOOP ok"]
    c.transfer_done(426, "Connection closed; transfer aborted")
    assert replies(c) == ["426 Connection closed; transfer aborted", "226 ABOR command successful"]
    assert c.next_event() is None  # PWD, held during the transfer, is answered now
    assert replies(c) == ['257 "/" is the current directory']


def test_quit_during_transfer_waits_for_its_reply() -> None:
    c = logged_in()
    send(c, "EPSV")
    c.passive_ready("127.0.0.1", 50000)
    send(c, "RETR f")
    c.transfer_started("Opening")
    c.data_to_send()
    assert send(c, "QUIT") is None and not c.closed
    c.transfer_done(226, "Transfer complete")
    assert replies(c) == ["226 Transfer complete", "221 Goodbye"]
    assert c.closed


def test_tls_data_protection_required() -> None:
    c = conn()
    assert send(c, "AUTH TLS") == StartTLS()
    c.tls_started()
    send(c, "USER a")
    assert isinstance(send(c, "PASS b"), Login)
    c.accept_login("a")
    c.data_to_send()
    send(c, "PROT P")
    assert replies(c)[0].startswith("503")  # PBSZ first
    send(c, "PBSZ 0")
    send(c, "PROT C")
    assert replies(c) == ["200 PBSZ=0", "534 Data connections must be protected here: use PROT P"]
    send(c, "EPSV")
    c.passive_ready("127.0.0.1", 50000)
    send(c, "LIST")
    assert replies(c)[-1].startswith("521")
    send(c, "PROT P")
    assert replies(c) == ["200 Data connections will be protected (TLS)"]
    event = send(c, "LIST")
    assert isinstance(event, TransferRequest) and event.protected
    send(c, "CCC")


def test_bad_input() -> None:
    c = logged_in()
    send(c, "BOGUS")
    assert replies(c)[0].startswith("500")
    send(c, b"CWD \xc3\x28\r\n")
    assert replies(c)[0].startswith("501")
    c.receive_data(b"NOOP " + b"x" * 10_000 + b"\r\nNOOP\r\n")
    assert c.next_event() is None
    assert replies(c) == ["500 Command line too long", "200 NOOP ok"]
    c.receive_data(b"A" * 100_000)  # an endless line is dropped as it comes
    assert c.next_event() is None and replies(c) == ["500 Command line too long"]
    c.receive_data(b"A" * 100_000 + b"\r\nNOOP\r\n")
    assert c.next_event() is None and replies(c) == ["200 NOOP ok"]


def test_too_many_errors_close() -> None:
    c = logged_in(max_errors=3)
    for _ in range(3):
        send(c, "BOGUS")
    assert replies(c)[-1].startswith("421") and c.closed


@pytest.mark.parametrize("line", ["TYPE A", "TYPE I", "TYPE L 8", "MODE S", "STRU F"])
def test_parameters_accepted(line: str) -> None:
    c = logged_in()
    send(c, line)
    assert replies(c)[0].startswith("200")


@pytest.mark.parametrize("line", ["TYPE E", "MODE B", "STRU R"])
def test_parameters_not_supported(line: str) -> None:
    c = logged_in()
    send(c, line)
    assert replies(c)[0].startswith("504")


def test_trace_redacts_password() -> None:
    seen: list[tuple[str, str]] = []
    c = FTPConnection(FTPSettings(client_address=CLIENT, allow_plaintext_login=True),
                      trace=lambda d, line: seen.append((d, line)))
    c.receive_data(b"USER a\r\nPASS hunter2\r\n")
    c.next_event()
    assert ("C", "PASS <redacted>") in seen
    assert not any("hunter2" in line for _, line in seen)
