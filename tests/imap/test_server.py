"""The IMAP server end to end with the standard library's imaplib over real TLS."""

from __future__ import annotations

import imaplib
import smtplib
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import DOMAIN, PASSWORD, Server, client_tls

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def message(subject: str, body: str = "hello\r\n") -> bytes:
    return (f"From: Bob <{BOB}>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
            f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@test>\r\n\r\n{body}").encode()


def imaps(server: Server, user: str = ALICE) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=client_tls(),
                          timeout=30)
    m.login(user, PASSWORD)
    return m


@pytest.fixture()
def box(server: Server) -> Iterator[tuple[imaplib.IMAP4_SSL, str]]:
    """A fresh mailbox of alice's, selected."""
    name = f"t{time.monotonic_ns()}"
    m = imaps(server)
    assert m.create(name)[0] == "OK"
    assert m.select(name)[0] == "OK"
    yield m, name
    try:
        m.logout()
    except (imaplib.IMAP4.error, OSError):
        pass


def test_plaintext_port_offers_starttls_and_refuses_login(server: Server) -> None:
    m = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=30)
    caps = m.capabilities
    assert "STARTTLS" in caps and "LOGINDISABLED" in caps
    assert not any(c.startswith("AUTH=") for c in caps)
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        m.login(ALICE, PASSWORD)
    m.starttls(ssl_context=client_tls())
    assert "AUTH=PLAIN" in m.capabilities and "LOGINDISABLED" not in m.capabilities
    assert m.login(ALICE, PASSWORD)[0] == "OK"
    m.logout()


def test_wrong_password_is_refused(server: Server) -> None:
    m = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=client_tls())
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login(ALICE, "wrong")
    m.logout()


def test_authenticate_plain(server: Server) -> None:
    m = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=client_tls())
    typ, _ = m.authenticate("PLAIN", lambda _: f"\0{ALICE}\0{PASSWORD}".encode())
    assert typ == "OK"
    m.logout()


def test_list_shows_special_use_mailboxes(server: Server) -> None:
    m = imaps(server)
    typ, lines = m.list()
    assert typ == "OK"
    text = b"\n".join(x for x in lines if isinstance(x, bytes)).decode()
    for name, attr in (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"),
                       ("Junk", "\\Junk"), ("Archive", "\\Archive")):
        assert any(attr in line and line.endswith(f"\"{name}\"")
                   for line in text.splitlines()), text
    assert "INBOX" in text
    m.logout()


def test_append_fetch_store_search_expunge(box: tuple[imaplib.IMAP4_SSL, str]) -> None:
    m, name = box
    date = imaplib.Time2Internaldate(time.mktime((2026, 11, 23, 10, 0, 0, 0, 0, -1)))
    typ, data = m.append(name, "(\\Flagged keyword1)", date, message("first"))
    assert typ == "OK" and b"APPENDUID" in data[0]
    m.append(name, None, None, message("second", "the body text\r\n"))
    typ, data = m.select(name)
    assert data == [b"2"]
    typ, data = m.fetch("1:2", "(UID FLAGS RFC822.SIZE)")
    assert typ == "OK" and len(data) == 2
    assert b"\\Flagged" in data[0] and b"keyword1" in data[0]
    typ, data = m.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1].strip() == b"Subject: second"
    typ, data = m.fetch("2", "(BODY[TEXT])")
    assert data[0][1] == b"the body text\r\n"
    typ, data = m.fetch("2", "(FLAGS)")
    assert b"\\Seen" in data[0]  # BODY[] set \Seen (RFC 9051 6.4.5)
    assert m.search(None, "SUBJECT", "second") == ("OK", [b"2"])
    assert m.search(None, 'BODY "body text"') == ("OK", [b"2"])
    assert m.search(None, "FLAGGED") == ("OK", [b"1"])
    assert m.search(None, "UNSEEN") == ("OK", [b"1"])
    typ, data = m.store("1", "+FLAGS", "(\\Deleted)")
    assert typ == "OK" and b"\\Deleted" in data[0]
    typ, data = m.expunge()
    assert data == [b"1"]
    typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1].strip() == b"Subject: second"


def test_copy_move_uidplus(server: Server, box: tuple[imaplib.IMAP4_SSL, str]) -> None:
    m, name = box
    for i in range(3):
        m.append(name, None, None, message(f"m{i}"))
    m.create(name + "/sub")
    m.select(name)
    typ, data = m.uid("COPY", "1:2", name + "/sub")
    assert typ == "OK"
    assert m.response("COPYUID")[1][0].endswith(b" 1:2 1:2")
    typ, data = m._simple_command("MOVE", "3", name + "/sub")  # type: ignore[attr-defined]
    assert typ == "OK"
    assert m.status(name + "/sub", "(MESSAGES UIDNEXT)")[1][0].endswith(
        b"(MESSAGES 3 UIDNEXT 4)")
    typ, data = m.select(name)
    assert data == [b"2"]
    typ, data = m.list(name + "/", "*")
    assert any(b"sub" in x for x in data if isinstance(x, bytes))
    assert m.copy("1", "nonexistent")[0] == "NO"


def test_bad_commands_get_bad(box: tuple[imaplib.IMAP4_SSL, str]) -> None:
    m, _ = box
    with pytest.raises(imaplib.IMAP4.error, match="Unknown command|BAD"):
        m.xatom("FOOBAR")
    with pytest.raises(imaplib.IMAP4.error):
        m.fetch("1:*", "(NOSUCHITEM)")


def test_idle_sees_smtp_delivery(server: Server) -> None:
    m = imaps(server)
    m.select("INBOX")
    tag = m._new_tag()  # type: ignore[attr-defined]
    m.send(tag + b" IDLE\r\n")
    assert m.readline().startswith(b"+")
    sent = time.monotonic()

    def deliver() -> None:
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as s:
            s.sendmail(BOB, [ALICE], message("idle wake"))

    threading.Thread(target=deliver).start()
    m.sock.settimeout(10)
    seen = b""
    while b"EXISTS" not in seen:
        seen += m.readline()
    elapsed = time.monotonic() - sent
    m.send(b"DONE\r\n")
    while not (line := m.readline()).startswith(tag):
        pass
    assert b"OK" in line
    assert elapsed < 2  # the change feed wakes IDLE right after the commit
    m.logout()


def test_two_sessions_see_each_others_changes(box: tuple[imaplib.IMAP4_SSL, str],
                                              server: Server) -> None:
    a, name = box
    a.append(name, None, None, message("shared"))
    a.select(name)
    b = imaps(server)
    b.select(name)
    b.store("1", "+FLAGS", "(\\Answered)")
    typ, _ = a.noop()
    responses = a.untagged_responses.get("FETCH", [])
    assert any(b"\\Answered" in r for r in responses if isinstance(r, bytes)), responses
    b.store("1", "+FLAGS", "(\\Deleted)")
    b.expunge()
    a.noop()
    assert a.untagged_responses.get("EXPUNGE") == [b"1"]
    b.logout()


def test_garbage_never_crashes(server: Server) -> None:
    ctx = client_tls()
    with socket.create_connection(("127.0.0.1", server.port("imaps")), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            s.recv(1000)
            s.sendall(b"a1 LOGIN " + b"x" * 100_000 + b"\r\n")
            s.sendall(b'a2 FETCH {5}\r\n')
            s.sendall(b"\x00\xff\r\n" * 100)
            s.sendall(b"a3 NOOP\r\n")
            data = b""
            s.settimeout(5)
            try:
                while b"a3 " not in data and len(data) < 1_000_000:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except (TimeoutError, ssl.SSLError):
                pass
            assert b"a1 BAD" in data or b"BYE" in data


def test_quota(server: Server) -> None:
    r = server.cli("user", "quota", BOB, "2K")
    assert r.returncode == 0, r.stderr
    m = imaps(server, BOB)
    typ, data = m.getquotaroot("INBOX")
    assert typ == "OK"
    assert data[0] == [b'"INBOX" ""'] and data[1][0].startswith(b'"" (STORAGE 0 2)')
    assert m.append("INBOX", None, None, message("fits"))[0] == "OK"
    typ, data = m.append("INBOX", None, None, message("too big", "x" * 4000 + "\r\n"))
    assert typ == "NO" and b"OVERQUOTA" in data[0]
    assert server.cli("user", "quota", BOB, "default").returncode == 0
    assert m.append("INBOX", None, None, message("no limit", "x" * 4000 + "\r\n"))[0] == "OK"
    assert server.cli("user", "quota", BOB, "lots").returncode != 0
    m.logout()


def test_trace_redacts_passwords_and_bodies(server: Server) -> None:
    secret_body = "this body must not be in the trace"
    m = imaps(server)
    m.append("INBOX", None, None, message("traced", secret_body + "\r\n"))
    m.select("INBOX")
    m.fetch("1:*", "(BODY.PEEK[])")
    m.fetch("1:*", "(BODY.PEEK[TEXT]<0.20>)")  # a short quoted string
    m.logout()
    time.sleep(0.5)
    log = (server.data / "trace.log").read_text()
    assert f"LOGIN {ALICE.split('@')[0]}" not in log and "LOGIN <redacted>" in log
    assert "BODY.PEEK[]" in log and "literal" in log
    assert PASSWORD not in log
    assert secret_body not in log and secret_body[:20] not in log


class Raw:
    """A bare IMAPS connection for what imaplib cannot say (COMPRESS, QRESYNC, literals)."""

    def __init__(self, server: Server, user: str = ALICE) -> None:
        raw = socket.create_connection(("127.0.0.1", server.port("imaps")), timeout=10)
        self.sock = client_tls().wrap_socket(raw)
        self.inflate: Any = None
        self.deflate: Any = None
        self.buf = b""
        self.read_until(b"\r\n")
        self.command(f"a LOGIN {user} \"{PASSWORD}\"")

    def send(self, data: bytes) -> None:
        if self.deflate is not None:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def read_until(self, end: bytes) -> bytes:
        while end not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, self.buf
            self.buf += self.inflate.decompress(chunk) if self.inflate else chunk
        i = self.buf.index(end) + len(end)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def command(self, line: str, tag: str = "a") -> bytes:
        self.send(line.encode() + b"\r\n")
        text = b""
        while True:
            text += self.read_until(b"\r\n")
            last = text.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
            if last.startswith(tag.encode() + b" "):
                return text


def test_compress_deflate(server: Server) -> None:
    c = Raw(server)
    assert b"a OK" in c.command("a COMPRESS DEFLATE")
    c.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    c.inflate = zlib.decompressobj(-15)
    out = c.command("b LIST \"\" INBOX", "b")
    assert b'* LIST (\\HasNoChildren) "/" "INBOX"' in out and b"b OK" in out
    assert b"COMPRESSIONACTIVE" in c.command("c COMPRESS DEFLATE", "c")


def test_synchronizing_literal_gets_a_continuation(server: Server) -> None:
    c = Raw(server)
    body = b"Subject: literal\r\n\r\nsync\r\n"
    c.send(b"a APPEND INBOX {%d}\r\n" % len(body))
    assert c.read_until(b"\r\n").startswith(b"+ ")
    c.send(body + b"\r\n")
    assert b"a OK [APPENDUID" in c.read_until(b"\r\n")
    # Too big: refused before the client sends it (RFC 7888 / RFC 9051 7.5).
    c.send(b"b APPEND INBOX {999999999999}\r\n")
    assert b"b NO [TOOBIG]" in c.read_until(b"\r\n")


def test_qresync_and_condstore(box: tuple[imaplib.IMAP4_SSL, str], server: Server) -> None:
    m, name = box
    for i in range(4):
        m.append(name, None, None, message(f"q{i}"))
    c = Raw(server)
    assert b"ENABLED QRESYNC" in c.command("a ENABLE QRESYNC")
    out = c.command(f"a SELECT {name}")
    uidvalidity = int(out.split(b"[UIDVALIDITY ")[1].split(b"]")[0])
    modseq = int(out.split(b"[HIGHESTMODSEQ ")[1].split(b"]")[0])
    m.select(name)
    m.store("2", "+FLAGS", "(\\Flagged)")
    m.store("3", "+FLAGS", "(\\Deleted)")
    m.expunge()
    out = c.command("a NOOP")
    assert b"* VANISHED 3" in out and b"FLAGS (\\Flagged)" in out and b"MODSEQ" in out
    c.command("a UNSELECT")
    out = c.command(f"a SELECT {name} (QRESYNC ({uidvalidity} {modseq}))")
    assert b"* VANISHED (EARLIER) 3" in out, out
    assert b"UID 2 FLAGS (\\Flagged) MODSEQ" in out, out
    out = c.command(f"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert b"VANISHED (EARLIER) 3" in out and b"UID 2" in out and b"UID 1 " not in out
    out = c.command("a UID STORE 1 (UNCHANGEDSINCE 1) +FLAGS (\\Seen)")
    assert b"[MODIFIED 1]" in out, out


def test_imap4rev2(server: Server) -> None:
    c = Raw(server)
    assert b"ENABLED IMAP4rev2" in c.command("a ENABLE IMAP4rev2")
    out = c.command("a SELECT INBOX")
    assert b"RECENT" not in out and b'* LIST () "/" "INBOX"' in out
    out = c.command("a SEARCH ALL")
    assert b'* ESEARCH (TAG "a")' in out  # rev2 answers SEARCH with ESEARCH


def test_commands_pipelined_behind_compress(server: Server) -> None:
    c = Raw(server)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    noop = deflate.compress(b"n NOOP\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH)
    c.sock.sendall(b"z COMPRESS DEFLATE\r\n" + noop)
    assert b"z OK" in c.read_until(b"\r\n")
    c.deflate = deflate
    c.inflate = zlib.decompressobj(-15)
    c.buf = c.inflate.decompress(c.buf)  # what came after the OK is compressed
    assert b"n OK" in c.read_until(b"NOOP completed\r\n")


def test_every_session_learns_a_keyword_even_if_its_message_is_gone(
        server: Server, box: tuple[imaplib.IMAP4_SSL, str]) -> None:
    # RFC 9051 7.3.5: FLAGS lists the flags defined in the mailbox.  B must be told of $Gone
    # although the only message that had it was expunged before B looked (imaptest's
    # checkpoint compares every session's keyword list).
    b, name = box
    a = imaps(server)
    assert a.select(name)[0] == "OK"
    assert a.append(name, "", None, message("gone"))[0] == "OK"
    assert a.store("1", "+FLAGS", "($Gone)")[0] == "OK"
    assert a.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert a.expunge()[0] == "OK"
    assert b.noop()[0] == "OK"
    flags = b.response("FLAGS")[1]
    assert flags and flags[-1] and b"$Gone" in flags[-1], flags
    c = imaps(server)  # a session that selects later finds it in SELECT's FLAGS
    c.select(name)
    assert b"$Gone" in (c.response("FLAGS")[1][-1] or b"")
    for m in (a, c):
        m.logout()
