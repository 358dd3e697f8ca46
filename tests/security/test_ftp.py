"""FTP/FTPS against a real `netpost serve`: users stay in their tree, no FTP bounce, no data
connection theft, no password before TLS, bad input answered, failed logins slowed, quota.

RFC 2577 (FTP security considerations) is the checklist: bounce (3), restricted access (4),
protecting passwords (5), port stealing (8); RFC 4217 for TLS on data connections.
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import random
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD, Server, client_tls
from tests.security import ALICE, BOB, CAROL, Raw, alive, launch, server_log, stop

QUOTA = 1024 * 1024
LONG = 100_000


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the defaults (no login before TLS, PROT P, TLS session reuse) and a quota."""
    s = launch(tmp_path_factory, "ftpsec", f"[ftp]\nquota = {QUOTA}\n")
    yield s
    stop(s)
    log = server_log(s)
    assert "Traceback" not in log and "session failed" not in log, log[-5000:]


# --- clients ------------------------------------------------------------------------------------


class FTPS(ftplib.FTP_TLS):
    """ftplib's FTP_TLS whose protected data connections resume the control connection's TLS
    session, as lftp, curl and FileZilla do (the server requires it)."""

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            assert isinstance(self.sock, ssl.SSLSocket)
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


def ftps(srv: Server, user: str = ALICE, cls: type[ftplib.FTP_TLS] = FTPS) -> ftplib.FTP_TLS:
    """Logged in over AUTH TLS with PROT P."""
    f = cls(context=client_tls(), timeout=20)
    f.connect("127.0.0.1", srv.port("ftp"))
    f.login(user, PASSWORD)  # AUTH TLS first
    f.prot_p()
    return f


def tree(srv: Server, user: str = ALICE) -> Path:
    path = srv.data / "files" / user
    path.mkdir(parents=True, exist_ok=True)
    return path


def upload(f: ftplib.FTP, name: str, data: bytes) -> str:
    return f.storbinary(f"STOR {name}", io.BytesIO(data))


def download(f: ftplib.FTP, name: str) -> bytes:
    out = io.BytesIO()
    f.retrbinary(f"RETR {name}", out.write)
    return out.getvalue()


def listing(f: ftplib.FTP, path: str = "") -> list[str]:
    lines: list[str] = []
    f.retrlines(f"LIST {path}".strip(), lines.append)
    return lines


def refused(f: ftplib.FTP, command: str) -> str:
    """Run `command` (a transfer or a plain command); it must fail with a 5xx reply."""
    with pytest.raises(ftplib.error_perm) as info:
        if command.split()[0] in ("RETR", "LIST", "NLST", "MLSD"):
            f.retrbinary(command, lambda _: None)
        elif command.split()[0] in ("STOR", "APPE"):
            f.storbinary(command, io.BytesIO(b"should never be stored\n"))
        else:
            f.sendcmd(command)
    return str(info.value)


class FTPRaw(Raw):
    """Raw lines to an FTP port (optionally from another loopback address), FTP replies in."""

    def __init__(self, port: int, *, tls: bool = False, source: str = "127.0.0.1",
                 timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            self.sock = client_tls().wrap_socket(self.sock)
        self.buf = b""
        self.eof = False

    def reply(self) -> tuple[int, list[bytes]]:
        """One FTP reply (RFC 959 4.2: "ddd-" ... "ddd "); (-1, ...) at end of stream."""
        lines: list[bytes] = []
        first: bytes | None = None
        while True:
            line = self.line()
            if not line.endswith(b"\n"):
                return -1, lines + ([line] if line else [])
            assert line.endswith(b"\r\n"), line
            line = line[:-2]
            lines.append(line)
            if first is None:
                first = line[:3]
                assert first.isdigit() and line[3:4] in (b" ", b"-"), line
                if line[3:4] == b" ":
                    return int(first), lines
            elif line[:3] == first and line[3:4] == b" ":
                return int(first), lines

    def auth_tls(self) -> None:
        code, lines = self.cmd("AUTH TLS")
        assert code == 234, lines
        self.starttls()

    def login(self, user: str = ALICE, password: str = PASSWORD) -> tuple[int, list[bytes]]:
        code, lines = self.cmd(f"USER {user}")
        assert code == 331, lines
        return self.cmd(f"PASS {password}")


def raw_session(srv: Server, port: str = "ftp", source: str = "127.0.0.1") -> FTPRaw:
    """Greeted and logged in as ALICE over TLS (AUTH TLS on ftp, implicit on ftps)."""
    c = FTPRaw(srv.port(port), tls=port == "ftps", source=source)
    assert c.reply()[0] == 220
    if port == "ftp":
        c.auth_tls()
    code, lines = c.login()
    assert code == 230, lines
    return c


# --- restricted access (RFC 2577 4): path traversal -----------------------------------------------


def test_parent_directories_stop_at_the_users_root(srv: Server) -> None:
    (tree(srv, BOB) / "bob-secret.txt").write_bytes(b"bob's only\n")
    with contextlib.closing(ftps(srv)) as f:
        upload(f, "mine.txt", b"alice's\n")
        for path in ("../..", "..", "/..", "../../../../../..", "/../../etc", "sub/../../.."):
            with contextlib.suppress(ftplib.error_perm):
                f.cwd(path)
            assert f.pwd() == "/", (path, f.pwd())
            f.cwd("/")
        f.cwd("../..")
        assert f.pwd() == "/"
        names = [line.split()[-1] for line in listing(f)]
        assert "mine.txt" in names, names  # alice's own tree, not files/ or the data dir
        for outside in ("netpost.db", "files", "tls", "netpost.toml", BOB, ALICE):
            assert outside not in names, names
        f.sendcmd("CDUP")
        assert f.pwd() == "/"
        # Files beside the tree: the database, the server's key, the config, another user's.
        for path in ("../../netpost.db", "../netpost.db", "/../../netpost.db",
                     "../../../../../../../../etc/passwd", "/etc/passwd", "/etc/hostname",
                     "../../tls/key.pem", "../../netpost.toml", f"../{BOB}/bob-secret.txt",
                     f"/../{BOB}/bob-secret.txt", "..%2f..%2fnetpost.db", "..\\..\\netpost.db",
                     "/proc/self/environ", "~/../../netpost.db"):
            reply = refused(f, f"RETR {path}")
            assert reply.startswith("550"), (path, reply)
            for verb in ("SIZE", "MDTM"):
                assert refused(f, f"{verb} {path}").startswith("550"), (verb, path)
        # The same walk upward while writing lands in the user's own tree.
        upload(f, "../../../escaped.txt", b"stays inside\n")
        assert (tree(srv) / "escaped.txt").read_bytes() == b"stays inside\n"
        assert not (srv.data / "escaped.txt").exists()
        assert not (srv.data / "files" / "escaped.txt").exists()
        for path in (f"../{BOB}/bob-secret.txt", "/etc/passwd"):
            assert refused(f, f"DELE {path}").startswith("550")
        assert (tree(srv, BOB) / "bob-secret.txt").exists()
        f.quit()


def test_absolute_paths_are_the_users_own(srv: Server) -> None:
    with contextlib.closing(ftps(srv)) as f:
        f.mkd("/etc")
        upload(f, "/etc/passwd", b"not the real one\n")
        assert download(f, "/etc/passwd") == b"not the real one\n"
        assert (tree(srv) / "etc" / "passwd").read_bytes() == b"not the real one\n"
        assert Path("/etc/passwd").read_bytes() != b"not the real one\n"
        f.delete("/etc/passwd")
        f.rmd("/etc")
        f.quit()


def test_control_characters_and_bad_bytes_in_names_are_refused(srv: Server) -> None:
    with raw_session(srv) as c:
        for raw in (b"RETR a\x00b", b"STOR a\x00b", b"MKD x\x1by", b"CWD a\rb", b"DELE \x7f",
                    b"RNFR a\x08", b"STOR name\r\x00", b"SIZE \xff\xfe", b"MKD caf\xe9",
                    b"MKD c1\xc2\x85name", b"RNFR \x1b[2J", b"MDTM tab\tname"):
            code, lines = c.cmd(raw)
            assert code in (501, 550, 553), (raw, lines)
        code, lines = c.cmd("PWD")
        assert code == 257 and lines == [b'257 "/" is the current directory'], lines
    # Nothing was created: a name with a control character never reaches the disk.
    assert all(not any(ord(ch) < 0x20 or 0x7f <= ord(ch) <= 0x9f for ch in p.name)
               for p in tree(srv).rglob("*")), list(tree(srv).rglob("*"))


def test_names_planted_on_disk_never_break_a_listing(srv: Server) -> None:
    home = tree(srv, CAROL)
    (home / "bad\r\n226 fake").write_bytes(b"x")
    (home / "tab\tname").write_bytes(b"x")
    (home / "fine.txt").write_bytes(b"x")
    (home / ".netpost-upload.123.abc").write_bytes(b"half an upload")
    with contextlib.closing(ftps(srv, CAROL)) as f:
        for command in ("LIST", "NLST", "MLSD"):
            lines: list[str] = []
            f.retrlines(command, lines.append)
            names = [line.split(" ", 1)[1] if command == "MLSD" else line.split()[-1]
                     for line in lines]
            assert names == ["fine.txt"], (command, lines)
        assert refused(f, "RETR .netpost-upload.123.abc").startswith(("550", "553"))
        assert refused(f, "STOR .netpost-upload.123.abc").startswith(("550", "553"))
        f.quit()
    assert (home / ".netpost-upload.123.abc").read_bytes() == b"half an upload"


# --- a symbolic link planted inside the tree ------------------------------------------------------


@pytest.fixture()
def planted(srv: Server, tmp_path: Path) -> Iterator[Path]:
    """`out` (a directory outside the tree with a secret), links to it from alice's tree."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_bytes(b"outside secret\n")
    home = tree(srv)
    links = {"out-dir": out, "out-file": out / "secret.txt", "etc-link": Path("/etc"),
             "passwd-link": Path("/etc/passwd"), "data-link": srv.data,
             "db-link": srv.data / "netpost.db", "up-link": Path("..")}
    for name, target in links.items():
        (home / name).symlink_to(target)
    (home / "inside.txt").write_bytes(b"inside\n")
    (home / "in-link").symlink_to("inside.txt")  # stays inside: followed
    yield out
    for name in (*links, "in-link", "inside.txt"):
        with contextlib.suppress(FileNotFoundError):
            (home / name).unlink()


def test_symlink_out_of_the_tree_is_not_followed(srv: Server, planted: Path) -> None:
    before = sorted(p.name for p in planted.iterdir())
    mode = (planted / "secret.txt").stat().st_mode
    with contextlib.closing(ftps(srv)) as f:
        names = [line.split()[-1] for line in listing(f)]
        assert "inside.txt" in names and "in-link" in names, names
        for name in ("out-dir", "out-file", "etc-link", "passwd-link", "data-link", "db-link",
                     "up-link"):
            assert name not in names, (name, names)  # not listed at all
        assert download(f, "in-link") == b"inside\n"
        for path in ("out-file", "out-dir/secret.txt", "passwd-link", "etc-link/passwd",
                     "etc-link/hostname", "db-link", "data-link/netpost.db",
                     "data-link/tls/key.pem", "up-link/netpost.db", "/out-dir/../out-file"):
            assert refused(f, f"RETR {path}").startswith("550"), path
            assert refused(f, f"SIZE {path}").startswith("550"), path
        for path in ("out-dir", "etc-link", "data-link", "up-link"):
            assert refused(f, f"LIST {path}").startswith("550"), path
            assert refused(f, f"NLST {path}").startswith("550"), path
            assert refused(f, f"MLSD {path}").startswith("550"), path
            assert refused(f, f"MLST {path}").startswith("550"), path
            assert refused(f, f"STAT {path}").startswith("550"), path
            assert refused(f, f"CWD {path}").startswith("550"), path
            assert f.pwd() == "/"
        # Writing through the links: new files, overwrites, appends, directories, renames.
        for command in ("STOR out-dir/new.txt", "STOR out-file", "APPE out-file",
                        "STOR passwd-link", "STOR data-link/evil", "STOR etc-link/evil",
                        "STOR up-link/evil", "APPE db-link"):
            assert refused(f, command).startswith(("550", "553")), command
        for command in ("MKD out-dir/newdir", "MKD etc-link/newdir", "RMD out-dir/sub",
                        "DELE out-dir/secret.txt", "DELE data-link/netpost.db",
                        "SITE CHMOD 777 out-file", "SITE CHMOD 777 out-dir/secret.txt"):
            assert refused(f, command).startswith(("550", "553")), command
        upload(f, "moving.txt", b"moving\n")
        f.sendcmd("RNFR moving.txt")
        assert refused(f, "RNTO out-dir/moved.txt").startswith(("550", "553"))
        assert refused(f, "RNFR out-dir/secret.txt").startswith("550")
        f.delete("moving.txt")
        # Removing a link removes the link itself, never its target.
        f.delete("out-file")
        f.quit()
    assert sorted(p.name for p in planted.iterdir()) == before
    assert (planted / "secret.txt").read_bytes() == b"outside secret\n"
    assert (planted / "secret.txt").stat().st_mode == mode
    assert (srv.data / "netpost.db").stat().st_size > 0
    assert list(srv.data.rglob("evil")) == [] and not Path("/etc/evil").exists()


# --- FTP bounce (RFC 2577 3) ----------------------------------------------------------------------


def privileged_listener() -> socket.socket | None:
    for port in range(1023, 1000, -1):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        s.listen(4)
        return s
    return None


def test_port_and_eprt_to_another_host_or_a_privileged_port_are_refused(srv: Server) -> None:
    third = socket.socket()
    third.bind(("127.0.0.2", 0))
    third.listen(4)
    tport = third.getsockname()[1]
    low = privileged_listener()
    assert low is not None, "no privileged port free (tests run as root)"
    lport = low.getsockname()[1]
    try:
        with raw_session(srv) as c:
            assert c.cmd("PBSZ 0")[0] == 200 and c.cmd("PROT P")[0] == 200
            commands = [
                f"PORT 127,0,0,2,{tport >> 8},{tport & 255}",
                f"PORT 127,000,0,002,{tport >> 8},{tport & 255}",
                f"EPRT |1|127.0.0.2|{tport}|",
                f"EPRT |2|::ffff:127.0.0.2|{tport}|",
                "PORT 10,0,0,1,0,80", "PORT 10,0,0,1,39,16", "EPRT |1|10.0.0.1|10000|",
                "PORT 192,0,2,1,4,1", "EPRT |2|2001:db8::1|2000|", "EPRT |2|::1|2000|",
                "PORT 0,0,0,0,39,16",
                # The client's own address, but a privileged port (SMTP's, FTP's, ours).
                f"PORT 127,0,0,1,{lport >> 8},{lport & 255}", "PORT 127,0,0,1,0,25",
                "PORT 127,0,0,1,0,21", f"EPRT |1|127.0.0.1|{lport}|", "EPRT |1|127.0.0.1|22|",
                f"EPRT |2|::ffff:127.0.0.1|{lport}|",
            ]
            for command in commands:
                code, lines = c.cmd(command)
                assert code == 504, (command, lines)
                # No target was set: a transfer now has nowhere to go.
                code, lines = c.cmd("LIST")
                assert code == 425, (command, lines)
                code, lines = c.cmd("RETR anything")
                assert code in (425, 550), (command, lines)
            for command in ("PORT 127,0,0,1,1,2,3", "PORT 256,0,0,1,4,1", "EPRT |1|host|1|",
                            "EPRT |3|127.0.0.1|2000|", "EPRT |1|127.0.0.1|0|"):
                code, lines = c.cmd(command)
                assert code in (501, 504, 522), (command, lines)
        # No connection reached either listener.
        for s in (third, low):
            s.settimeout(0.5)
            with pytest.raises(TimeoutError):
                s.accept()
    finally:
        third.close()
        low.close()


def test_port_to_the_client_itself_works(srv: Server) -> None:
    """The control: active mode to the client's own address and an unprivileged port."""
    with contextlib.closing(ftps(srv)) as f:
        f.set_pasv(False)
        upload(f, "active.txt", b"active mode\n")
        assert download(f, "active.txt") == b"active mode\n"
        f.delete("active.txt")
        f.quit()


# --- data connection theft (RFC 2577 8, "port stealing") ------------------------------------------


def test_passive_port_taken_from_another_address_is_refused(srv: Server) -> None:
    content = os.urandom(300_000)
    with contextlib.closing(ftps(srv)) as f:
        upload(f, "stolen.bin", content)
        host, port = ftplib.parse227(f.sendcmd("PASV"))
        assert host == "127.0.0.1"
        # The thief (another host: 127.0.0.2) connects before the client.
        thief = socket.create_connection((host, port), timeout=10,
                                         source_address=("127.0.0.2", 0))
        f.putcmd("RETR stolen.bin")
        conn = socket.create_connection((host, port), timeout=10)
        assert f.getresp().startswith("150")
        # Whatever the thief sends, it gets nothing and is closed.
        with contextlib.suppress(OSError):
            thief.sendall(b"\x16\x03\x01\x00\x05hello")
        got = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := thief.recv(65536):
                got += chunk
        thief.close()
        assert got == b""
        assert isinstance(f.sock, ssl.SSLSocket)
        data_tls = f.context.wrap_socket(conn, session=f.sock.session)
        received = b""
        while chunk := data_tls.recv(65536):
            received += chunk
        data_tls.close()
        assert f.voidresp().startswith("226")
        assert received == content
        # The port is spent: nobody can connect to it any more.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, port), timeout=5,
                                     source_address=("127.0.0.2", 0)).close()
        f.delete("stolen.bin")
        f.quit()
    time.sleep(0.2)
    assert "refused a data connection from 127.0.0.2" in server_log(srv)


def test_protected_data_connection_must_reuse_the_tls_session(srv: Server) -> None:
    """Stock ftplib does not resume the control connection's TLS session on data connections:
    refused with 522 (like vsftpd's require_ssl_reuse); the control connection goes on."""
    (tree(srv) / "reuse.txt").write_bytes(b"only over a resumed session\n")
    with contextlib.closing(ftps(srv, cls=ftplib.FTP_TLS)) as f:
        for command in ("LIST", "RETR reuse.txt", "STOR fresh.txt"):
            got = b""
            try:
                conn = f.transfercmd(command)  # 150, then the TLS handshake
            except ssl.SSLError:
                pass  # the server may drop it while the client still finishes its handshake
            else:
                with contextlib.suppress(OSError):
                    if command.startswith("STOR"):
                        conn.sendall(b"x" * 1000)
                    while chunk := conn.recv(65536):
                        got += chunk
                conn.close()
            assert got == b"", (command, got)
            reply = f.getmultiline()
            assert reply.startswith("522"), (command, reply)
        assert f.sendcmd("NOOP").startswith("200")
        f.quit()
    assert not (tree(srv) / "fresh.txt").exists()
    assert not [p for p in tree(srv).iterdir() if p.name.startswith(".netpost-upload.")]
    # The same commands with a resumed session work.
    with contextlib.closing(ftps(srv)) as f:
        assert download(f, "reuse.txt") == b"only over a resumed session\n"
        f.delete("reuse.txt")
        f.quit()


# --- passwords (RFC 2577 5, RFC 4217 4) --------------------------------------------------------


def test_login_before_auth_tls_is_refused_and_never_traced(srv: Server) -> None:
    secret = "Sesame-" + os.urandom(6).hex()
    with FTPRaw(srv.port("ftp")) as c:
        assert c.reply()[0] == 220
        code, lines = c.cmd(f"USER {ALICE}")
        assert code == 530 and b"TLS" in lines[0], lines
        code, lines = c.cmd(f"PASS {secret}")
        assert code in (503, 530), lines
        code, lines = c.cmd(f"PASS {PASSWORD}")
        assert code in (503, 530), lines
        assert c.cmd("PWD")[0] == 530  # not logged in
        assert c.cmd("LIST")[0] == 530
        # Pipelined before TLS and executed after it? No (CVE-2011-0411).
        c.send(f"AUTH TLS\r\nUSER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
        assert c.reply()[0] == 234
        c.starttls()
        assert c.cmd("PWD")[0] == 530
        code, lines = c.login(password=secret + "-wrong")
        assert code == 530, lines
        code, lines = c.login()
        assert code == 230, lines
    time.sleep(0.3)
    trace = (srv.data / "trace.log").read_text(errors="replace")
    assert "PASS <redacted>" in trace
    assert secret not in trace and PASSWORD not in trace
    assert secret not in server_log(srv) and PASSWORD not in server_log(srv)


# --- garbage, overlong lines ----------------------------------------------------------------------


@pytest.mark.parametrize("port", ["ftp", "ftps"])
@pytest.mark.parametrize("logged_in", [False, True], ids=["greeted", "logged-in"])
def test_garbage_and_overlong_lines_get_500(srv: Server, port: str, logged_in: bool) -> None:
    rng = random.Random(f"{port}{logged_in}")
    if logged_in:
        c = raw_session(srv, port)
    else:
        c = FTPRaw(srv.port(port), tls=port == "ftps")
        assert c.reply()[0] == 220
    with c:
        for _ in range(5):
            junk = bytes(b for b in rng.randbytes(rng.randint(1, 300)) if b not in b"\r\n")
            code, lines = c.cmd(b"\x80" + junk)
            assert code == 500, (junk, lines)
        assert c.cmd("NOOP")[0] == 200
        # 100 KB without a line end (one write, then in pieces), then the end of that line.
        for pieces in (False, True):
            line = b"STOR " + b"a" * LONG + b"\r\n"
            if pieces:
                c.send_pieces(line, 1024)
            else:
                c.send(line)
            code, lines = c.reply()
            assert code == 500 and b"too long" in lines[0], lines
            assert c.cmd("NOOP")[0] == 200  # one error, then the next command works
        c.send(b"\x00" * LONG + b"\r\n")
        assert c.reply()[0] == 500
        assert c.cmd("SYST")[0] == 215
        if logged_in:
            assert c.cmd("PWD")[0] == 257
        assert c.cmd("QUIT")[0] == 221
    assert alive(srv)


def test_too_many_errors_close_the_connection(srv: Server) -> None:
    with FTPRaw(srv.port("ftps"), tls=True) as c:
        assert c.reply()[0] == 220
        codes = [c.cmd(b"\x80junk")[0] for _ in range(19)]
        assert set(codes) == {500}, codes
        code, lines = c.cmd(b"\x80junk")
        assert code == 421, lines
        c.wait_closed()
    assert alive(srv)


# --- login failures ----------------------------------------------------------------------------


def test_login_failures_are_slowed_and_three_close_the_connection(srv: Server) -> None:
    # From an address of its own: the throttle counts per client address.
    source = "127.0.0.3"
    with FTPRaw(srv.port("ftp"), source=source) as c:
        assert c.reply()[0] == 220
        c.auth_tls()
        times, replies = [], []
        for user in ("nobody@example.test", ALICE, ALICE):
            start = time.monotonic()
            code, lines = c.login(user, "wrong password")
            times.append(time.monotonic() - start)
            replies.append(lines)
        # failure_delay 0.2 doubling: each failure is answered later than the one before.
        assert replies[0] == replies[1] == [b"530 Login incorrect"], replies
        assert replies[2][-1].startswith(b"421"), replies
        assert times[0] >= 0.15 and times[1] > times[0] + 0.2 and times[2] > times[1] + 0.2, times
        c.wait_closed()
    # A new connection from that address is still slowed down, but the right password works.
    with FTPRaw(srv.port("ftps"), tls=True, source=source) as c:
        assert c.reply()[0] == 220
        start = time.monotonic()
        code, lines = c.login()
        took = time.monotonic() - start
        assert code == 230, lines
        assert took >= 0.7, took
    time.sleep(0.2)
    failures = [line for line in srv.output if "login failed" in line and source in line]
    assert len(failures) == 3, server_log(srv)[-2000:]
    assert not any("wrong password" in line for line in failures)


# --- quota --------------------------------------------------------------------------------------


def test_quota_exceeded_is_552_and_leaves_no_partial_file(srv: Server) -> None:
    home = tree(srv, BOB)
    before = {p.name for p in home.iterdir()}
    first = os.urandom(QUOTA // 2)
    with contextlib.closing(ftps(srv, BOB)) as f:
        upload(f, "half.bin", first)
        for name, size in (("big.bin", QUOTA), ("huge.bin", 5 * QUOTA)):
            conn = f.transfercmd(f"STOR {name}")
            with contextlib.suppress(OSError):
                conn.sendall(os.urandom(size))
                conn.unwrap()  # type: ignore[attr-defined]
            conn.close()
            with pytest.raises(ftplib.error_perm) as info:
                f.voidresp()
            assert str(info.value).startswith("552"), info.value
            names = {line.split()[-1] for line in listing(f)}
            assert names == before | {"half.bin"}, names
        # APPE past the quota: refused too; the file keeps its first part whole (an append
        # keeps what it wrote, so that it may be resumed) and never grows past the quota.
        conn = f.transfercmd("APPE half.bin")
        with contextlib.suppress(OSError):
            conn.sendall(os.urandom(QUOTA))
            conn.unwrap()  # type: ignore[attr-defined]
        conn.close()
        with pytest.raises(ftplib.error_perm) as info:
            f.voidresp()
        assert str(info.value).startswith("552"), info.value
        assert download(f, "half.bin")[:len(first)] == first
        assert (home / "half.bin").stat().st_size <= QUOTA
        on_disk = {p.name for p in home.iterdir()}
        assert on_disk == before | {"half.bin"}, on_disk  # no big.bin, no temporary files
        # A delete gives the space back: an upload of nearly the whole quota fits again.
        f.delete("half.bin")
        fits = os.urandom(QUOTA - 4096)
        assert upload(f, "fits.bin", fits).startswith("226")
        assert download(f, "fits.bin") == fits
        f.delete("fits.bin")
        f.quit()
    assert {p.name for p in home.iterdir()} == before
