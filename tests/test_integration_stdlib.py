"""End to end over real sockets and real TLS with the standard library's smtplib and poplib."""

from __future__ import annotations

import email
import poplib
import smtplib
import socket
import time

import pytest

from tests.conftest import DOMAIN, PASSWORD, Server, client_tls


def make_message(subject: str, body: str = "hello\r\n.leading dot\r\nbye\r\n",
                 sender: str = f"alice@{DOMAIN}", to: str = f"bob@{DOMAIN}") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@test>\r\n\r\n{body}").encode()


def pop_all(server: Server, user: str, *, delete: bool = False, tls: bool = True) -> list[bytes]:
    pop = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls(), timeout=30) \
        if tls else poplib.POP3("127.0.0.1", server.port("pop3"), timeout=30)
    try:
        if not tls:
            pop.stls(client_tls())
        pop.user(user)
        pop.pass_(PASSWORD)
        count, _ = pop.stat()
        out = []
        for i in range(1, count + 1):
            _, lines, _ = pop.retr(i)
            out.append(b"\r\n".join(lines) + b"\r\n")
            if delete:
                pop.dele(i)
        pop.quit()
        return out
    finally:
        pop.close()


def body_of(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[1]


def test_mx_delivery_and_pop3_download(server: Server) -> None:
    msg = make_message("mx one")
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as s:
        code, caps = s.ehlo("client.example")
        assert code == 250
        assert b"PIPELINING" in caps and b"CHUNKING" in caps and b"STARTTLS" in caps
        assert b"AUTH" not in caps  # the MX offers no AUTH
        s.sendmail("someone@example.org", [f"carol@{DOMAIN}"], msg)
    got = pop_all(server, f"carol@{DOMAIN}", delete=True)
    assert len(got) == 1
    assert got[0].startswith(b"Return-Path: <someone@example.org>\r\nReceived: from client.example")
    assert got[0].endswith(msg)  # byte-identical after the trace fields
    assert pop_all(server, f"carol@{DOMAIN}") == []  # download-and-delete removed it


def test_submission_starttls_auth_and_keep(server: Server) -> None:
    msg = make_message("submitted", sender=f"alice@{DOMAIN}", to=f"bob@{DOMAIN}")
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as s:
        s.ehlo("laptop")
        assert not s.has_extn("auth")  # no AUTH before TLS
        s.starttls(context=client_tls())
        s.ehlo("laptop")
        assert "PLAIN" in s.esmtp_features["auth"]
        s.login(f"alice@{DOMAIN}", PASSWORD)
        s.sendmail(f"alice@{DOMAIN}", [f"bob@{DOMAIN}"], msg)
    first = pop_all(server, f"bob@{DOMAIN}", tls=False)  # STLS this time; keep the mail
    again = pop_all(server, f"bob@{DOMAIN}")
    assert first == again and any(m.endswith(msg) for m in first)
    raw = next(m for m in first if m.endswith(msg))
    parsed = email.message_from_bytes(raw)
    assert "ESMTPSA" in parsed["Received"] and "authenticated as alice@" in parsed["Received"]


def test_submissions_implicit_tls_and_login(server: Server) -> None:
    msg = make_message("implicit")
    with smtplib.SMTP_SSL("127.0.0.1", server.port("submissions"), context=client_tls(),
                          timeout=30) as s:
        s.ehlo("laptop")
        s.login(f"alice@{DOMAIN}", PASSWORD)
        # One recipient refused, the other accepted: sendmail returns the refused one.
        refused = s.sendmail(f"alice@{DOMAIN}", [f"bob@{DOMAIN}", f"nobody@{DOMAIN}"], msg)
        assert list(refused) == [f"nobody@{DOMAIN}"] and refused[f"nobody@{DOMAIN}"][0] == 550
        # Another domain: queued for the relay (RFC 6409: submission relays for its users).
        assert s.sendmail(f"alice@{DOMAIN}", ["someone@elsewhere.example"], msg) == {}


def test_submission_requires_auth_and_sender_ownership(server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as s:
        s.starttls(context=client_tls())
        s.ehlo("laptop")
        code, text = s.mail(f"alice@{DOMAIN}")
        assert code == 530 and b"5.7.0" in text
        s.login(f"alice@{DOMAIN}", PASSWORD)
        code, text = s.mail(f"bob@{DOMAIN}")
        assert code == 553 and b"5.7.1" in text


def test_mx_refuses_relay_and_unknown_users(server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as s:
        s.ehlo("relay.test")
        assert s.mail("spammer@example.org")[0] == 250
        code, text = s.rcpt("victim@elsewhere.example")
        assert code == 554 and b"5.7.1" in text
        code, text = s.rcpt(f"nobody@{DOMAIN}")
        assert code == 550 and b"5.1.1" in text
        assert s.rcpt(f"bob@{DOMAIN}")[0] == 250  # each RCPT is answered on its own


def test_auth_before_tls_is_refused(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port("submission")), timeout=10) as sock:
        f = sock.makefile("rwb")
        f.readline()
        f.write(b"EHLO x\r\nAUTH PLAIN AGFsaWNlAHg=\r\n")
        f.flush()
        while not f.readline().startswith(b"250 "):
            pass
        reply = f.readline()
        assert reply.startswith(b"538 5.7.11"), reply
    pop = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=10)
    with pytest.raises(poplib.error_proto) as info:
        pop.user(f"alice@{DOMAIN}")
    assert b"TLS" in info.value.args[0]
    pop.close()


def test_failed_logins_slow_down(server: Server) -> None:
    def attempt() -> float:
        pop = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls(),
                              timeout=30)
        pop.user("mallory@example.test")
        start = time.monotonic()
        with pytest.raises(poplib.error_proto) as info:
            pop.pass_("wrong")
        assert b"[AUTH]" in info.value.args[0]
        pop.close()
        return time.monotonic() - start

    times = [attempt() for _ in range(4)]
    # failure_delay 0.2 doubling: the later attempts wait clearly longer than the first.
    assert times[-1] > times[0] + 0.5, times
    # A wrong password for a real user gets the very same reply.
    pop = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls(), timeout=30)
    pop.user(f"alice@{DOMAIN}")
    with pytest.raises(poplib.error_proto) as info:
        pop.pass_("wrong")
    assert info.value.args[0] == b"-ERR [AUTH] Authentication failed"
    pop.close()


def test_pop3_snapshot_and_quit_semantics(server: Server) -> None:
    user = f"carol@{DOMAIN}"
    for i in range(3):
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as s:
            s.sendmail("x@example.org", [user], make_message(f"snap {i}"))
    pop = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls(), timeout=30)
    pop.user(user)
    pop.pass_(PASSWORD)
    count, octets = pop.stat()
    assert count >= 3
    sizes = [int(x.split()[1]) for x in pop.list()[1]]
    assert sum(sizes) == octets
    # New mail arriving during the session is not seen by it.
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as s:
        s.sendmail("x@example.org", [user], make_message("late"))
    assert pop.stat()[0] == count
    _, lines, n = pop.retr(1)
    assert n >= sizes[0]  # poplib counts the stuffed octets; the content itself is exact
    pop.dele(1)
    pop.sock.close()  # drop the connection without QUIT: nothing is deleted
    pop2 = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls(), timeout=30)
    pop2.user(user)
    pop2.pass_(PASSWORD)
    assert pop2.stat()[0] == count + 1
    pop2.quit()


def test_aliases_and_catch_all_are_resolved(server: Server) -> None:
    assert server.cli("alias", "add", f"team@{DOMAIN}", f"alice@{DOMAIN}").returncode == 0
    assert server.cli("alias", "add", f"team@{DOMAIN}", f"bob@{DOMAIN}").returncode == 0
    assert server.cli("domain", "add", "alias.test").returncode == 0
    assert server.cli("alias", "add", "@alias.test", f"carol@{DOMAIN}").returncode == 0
    time.sleep(1.1)  # recipient lookups are cached for a second
    before = {u: len(pop_all(server, f"{u}@{DOMAIN}")) for u in ("alice", "bob", "carol")}
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as s:
        s.sendmail("x@example.org", [f"team@{DOMAIN}"], make_message("to the team"))
        s.sendmail("x@example.org", ["anyone@alias.test"], make_message("catch all"))
    after = {u: pop_all(server, f"{u}@{DOMAIN}") for u in ("alice", "bob", "carol")}
    assert len(after["alice"]) == before["alice"] + 1
    assert len(after["bob"]) == before["bob"] + 1
    assert len(after["carol"]) == before["carol"] + 1
    assert after["carol"][-1].endswith(make_message("catch all"))
    # An account may send as an alias that delivers to it (RFC 6409 8.1 sender check).
    with smtplib.SMTP_SSL("127.0.0.1", server.port("submissions"), context=client_tls(),
                          timeout=30) as s:
        s.login(f"alice@{DOMAIN}", PASSWORD)
        assert s.mail(f"team@{DOMAIN}")[0] == 250
