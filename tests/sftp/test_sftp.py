"""SFTP over SSH against a real `netpost serve`, driven with asyncssh's client: round trips,
names, confinement, refused channels, logins (password and keys added with the CLI), uploads
that never show half a file, and the same tree over FTP."""

from __future__ import annotations

import asyncio
import ftplib
import hashlib
import io
import os
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncssh
import pytest

from tests.conftest import DOMAIN, Server, client_tls, start_server

T = TypeVar("T")
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
PASSWORD = "sftp-pass-alice"
CONFIG = """
[auth]
failure_delay = 0.3
failure_max_delay = 1.2
[trace]
listeners = ["all"]
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("sftp") / "d", config=CONFIG)
    try:
        assert server.cli("domain", "add", DOMAIN).returncode == 0
        server.add_user(ALICE, PASSWORD)
        server.add_user(BOB, "sftp-pass-bob")
        yield server
    finally:
        server.stop()
    log = "".join(server.output)
    assert "Traceback" not in log and " ERROR " not in log, log[-5000:]


def tree_of(srv: Server, address: str = ALICE) -> Path:
    return srv.data / "files" / address


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 120)

    return asyncio.run(main())


async def connect(srv: Server, user: str = ALICE, password: str | None = PASSWORD,
                  **kwargs: object) -> asyncssh.SSHClientConnection:
    options: dict[str, object] = {"known_hosts": None, "username": user}
    if password is not None:
        options.update(password=password, client_keys=None)
    options.update(kwargs)
    return await asyncssh.connect("127.0.0.1", srv.port("sftp"), **options)  # type: ignore[arg-type]


def with_sftp(srv: Server, work: Callable[[asyncssh.SFTPClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with await connect(srv) as conn, conn.start_sftp_client() as sftp:
            return await work(sftp)

    return run(main())


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 1 << 20, 50 << 20])
def test_round_trip_is_byte_identical(srv: Server, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    local = tmp_path / "up.bin"
    local.write_bytes(data)
    back = tmp_path / "down.bin"
    name = f"round-{size}.bin"

    async def work(sftp: asyncssh.SFTPClient) -> int:
        await sftp.put(str(local), name)
        await sftp.get(name, str(back))
        return (await sftp.stat(name)).size or 0

    started = time.monotonic()
    assert with_sftp(srv, work) == size
    elapsed = time.monotonic() - started
    assert digest(back.read_bytes()) == digest(data)
    assert digest((tree_of(srv) / name).read_bytes()) == digest(data)
    if size == 50 << 20:
        print(f"50 MiB up and down in {elapsed:.2f} s")


def test_names_dirs_rename_remove(srv: Server) -> None:
    name = "my file ü 日本.txt"

    async def work(sftp: asyncssh.SFTPClient) -> tuple[list[str], list[str], bytes]:
        await sftp.mkdir("dir with space")
        async with sftp.open(f"dir with space/{name}", "wb") as f:
            await f.write("grüße".encode())
        listed = sorted(await sftp.listdir("dir with space"))
        await sftp.rename(f"dir with space/{name}", "dir with space/renamed é")
        with pytest.raises(asyncssh.SFTPError):
            await sftp.rmdir("dir with space")  # not empty
        async with sftp.open("dir with space/renamed é", "rb") as f:
            content = await f.read()
        await sftp.remove("dir with space/renamed é")
        await sftp.rmdir("dir with space")
        return listed, await sftp.listdir("/"), content

    listed, root, content = with_sftp(srv, work)
    assert listed == [".", "..", name]
    assert "dir with space" not in root
    assert content == "grüße".encode()


def test_rename_over_existing_is_refused_but_posix_rename_replaces(srv: Server) -> None:
    async def work(sftp: asyncssh.SFTPClient) -> bytes:
        for n, text in (("a.txt", b"A"), ("b.txt", b"B")):
            async with sftp.open(n, "wb") as f:
                await f.write(text)
        with pytest.raises(asyncssh.SFTPError):
            await sftp.rename("a.txt", "b.txt")
        await sftp.posix_rename("a.txt", "b.txt")
        async with sftp.open("b.txt", "rb") as f:
            data: bytes = await f.read()
        await sftp.remove("b.txt")
        assert not await sftp.exists("a.txt")
        return data

    assert with_sftp(srv, work) == b"A"


def test_writes_at_offsets_and_append(srv: Server) -> None:
    async def work(sftp: asyncssh.SFTPClient) -> tuple[bytes, bytes]:
        async with sftp.open("offsets.bin", "wb") as f:
            await f.write(b"world", 6)  # out of order: a gap first
            await f.write(b"hello ", 0)
            await f.write(b"!", 11)
        async with sftp.open("offsets.bin", "rb") as f:
            first = await f.read()
        async with sftp.open("offsets.bin", "ab") as f:
            await f.write(b" again")
        async with sftp.open("offsets.bin", "rb") as f:
            second = await f.read()
        await sftp.remove("offsets.bin")
        return first, second

    assert with_sftp(srv, work) == (b"hello world!", b"hello world! again")


def test_resumed_upload_writes_into_the_existing_file(srv: Server) -> None:
    """An open for writing without TRUNC (OpenSSH's reput) keeps what is there."""

    async def work(sftp: asyncssh.SFTPClient) -> bytes:
        async with sftp.open("resume.bin", "wb") as f:
            await f.write(b"0123456789")
        f2 = await sftp.open("resume.bin", asyncssh.FXF_WRITE, encoding=None)
        await f2.write(b"abc", 10)
        await f2.write(b"X", 2)
        await f2.close()
        async with sftp.open("resume.bin", "rb") as f:
            data: bytes = await f.read()
        await sftp.remove("resume.bin")
        return data

    assert with_sftp(srv, work) == b"01X3456789abc"


def test_interrupted_upload_leaves_nothing_under_its_name(srv: Server) -> None:
    async def upload_then_drop() -> None:
        conn = await connect(srv)
        sftp = await conn.start_sftp_client()
        f = await sftp.open("interrupted.bin", "wb")
        for _ in range(16):
            await f.write(b"x" * 65536, _ * 65536)
        conn.abort()  # the TCP connection goes away, no CLOSE
        await asyncio.sleep(0.1)

    async def overwrite_then_drop() -> None:
        conn = await connect(srv)
        sftp = await conn.start_sftp_client()
        f = await sftp.open("kept.txt", "wb")
        await f.write(b"half of a new vers")
        conn.abort()

    async def exists(sftp: asyncssh.SFTPClient) -> bool:
        async with sftp.open("kept.txt", "wb") as f:
            await f.write(b"the old version")
        return bool(await sftp.exists("interrupted.bin"))

    run(upload_then_drop())
    assert with_sftp(srv, exists) is False
    run(overwrite_then_drop())
    deadline = time.monotonic() + 10
    tree = tree_of(srv)
    while time.monotonic() < deadline and any(p.name.startswith(".netpost-upload.")
                                              for p in tree.iterdir()):
        time.sleep(0.05)
    assert not (tree / "interrupted.bin").exists()
    assert (tree / "kept.txt").read_bytes() == b"the old version"
    assert not [p.name for p in tree.iterdir() if p.name.startswith(".netpost-upload.")]
    trace = (srv.data / "trace.log").read_text()
    assert "upload of /interrupted.bin abandoned" in trace


def test_channel_closed_without_close_abandons_the_upload(srv: Server) -> None:
    """The SFTP channel ends (EOF and channel close) while the connection stays: the open
    upload is abandoned as well, and the connection still works."""

    async def main() -> bool:
        async with await connect(srv) as conn:
            sftp = await conn.start_sftp_client()
            f = await sftp.open("channel-gone.bin", "wb")
            await f.write(b"y" * 100_000, 0)
            sftp.exit()  # no CLOSE for the handle
            await sftp.wait_closed()
            await asyncio.sleep(0.2)
            async with conn.start_sftp_client() as again:
                return bool(await again.exists("channel-gone.bin"))

    assert run(main()) is False
    assert not (tree_of(srv) / "channel-gone.bin").exists()
    assert "upload of /channel-gone.bin abandoned" in (srv.data / "trace.log").read_text()


def test_confinement(srv: Server, tmp_path: Path) -> None:
    tree = tree_of(srv)
    tree.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside, tree / "escape")
    os.symlink(outside / "secret.txt", tree / "escape-file")
    (tree / "inner.txt").write_text("inner")
    os.symlink("inner.txt", tree / "inner-link")

    async def work(sftp: asyncssh.SFTPClient) -> None:
        assert await sftp.realpath("../../..") == "/"
        assert await sftp.realpath("/a/../../b") == "/b"
        assert await sftp.getcwd() == "/"  # the tree is the whole world
        root = await sftp.listdir("/../..")
        assert "escape" not in root and "escape-file" not in root
        assert "inner-link" in root
        for path in ("/etc/passwd", "../../../../etc/passwd", "/../etc/hostname"):
            with pytest.raises((asyncssh.SFTPNoSuchFile, asyncssh.SFTPPermissionDenied)):
                await sftp.stat(path)
            with pytest.raises((asyncssh.SFTPNoSuchFile, asyncssh.SFTPPermissionDenied)):
                await sftp.open(path, "rb")
        for path in ("escape/secret.txt", "escape-file"):
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.open(path, "rb")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.open(path, "wb")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.listdir("escape")
        async with sftp.open("inner-link", "rb") as f:
            assert await f.read() == b"inner"
        # No links can be made; readlink shows none; setstat only permission bits and times.
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.symlink("/etc/passwd", "mylink")
        with pytest.raises(asyncssh.SFTPError):
            await sftp.link("inner.txt", "hardlink")
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await sftp.readlink("inner-link")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.chown("inner.txt", 0, 0)
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.truncate("inner.txt", 1)
        await sftp.chmod("inner.txt", 0o604)
        await sftp.utime("inner.txt", (1_000_000_000, 1_000_000_000))
        attrs = await sftp.stat("inner.txt")
        assert attrs.permissions is not None and stat.S_IMODE(attrs.permissions) == 0o604
        assert attrs.mtime == 1_000_000_000
        # Statvfs would describe the host's file system: not offered.
        with pytest.raises(asyncssh.SFTPError):
            await sftp.statvfs("/")
        # The reserved names of upload temporary files are refused.
        with pytest.raises(asyncssh.SFTPError):
            await sftp.open(".netpost-upload.x", "wb")

    try:
        with_sftp(srv, work)
        assert (outside / "secret.txt").read_text() == "secret"
        assert not (tree / "mylink").exists() and not (tree / "hardlink").exists()
        assert stat.S_IMODE((tree / "inner.txt").stat().st_mode) == 0o604
    finally:
        for name in ("escape", "escape-file", "inner-link", "inner.txt"):
            (tree / name).unlink(missing_ok=True)


def test_accounts_see_only_their_own_tree(srv: Server) -> None:
    async def work() -> list[str]:
        async with await connect(srv, BOB, "sftp-pass-bob") as conn, \
                conn.start_sftp_client() as sftp:
            async with sftp.open("bobs.txt", "wb") as f:
                await f.write(b"bob")
            with pytest.raises(asyncssh.SFTPError):
                await sftp.stat(f"/../{ALICE}/round-1.bin")
            return list(await sftp.listdir("/"))

    assert run(work()) == [".", "..", "bobs.txt"]
    assert (tree_of(srv, BOB) / "bobs.txt").read_bytes() == b"bob"


def test_shell_exec_and_forwarding_are_refused(srv: Server) -> None:
    async def work() -> None:
        async with await connect(srv) as conn:
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_process("id")
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_process()  # a shell
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_process(subsystem="other")
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection("127.0.0.1", srv.port("smtp"))
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 1)
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_unix_connection("/run/anything.sock")
            # The connection still serves SFTP afterwards.
            async with conn.start_sftp_client() as sftp:
                assert await sftp.realpath(".") == "/"

    run(work())


def test_wrong_password_refused_and_slowed(srv: Server) -> None:
    async def attempt(password: str) -> float:
        started = time.monotonic()
        try:
            conn = await connect(srv, ALICE, password)
        except asyncssh.PermissionDenied:
            return time.monotonic() - started
        conn.close()
        raise AssertionError("logged in with a wrong password")

    first = run(attempt("wrong-1"))
    second = run(attempt("wrong-2"))
    assert first >= 0.3
    assert second >= 0.6  # earlier failures from this address make the next one wait more
    unknown = run(attempt("whatever"))
    assert unknown >= 0.3
    trace = (srv.data / "trace.log").read_text()
    assert "wrong-1" not in trace and "wrong-2" not in trace and PASSWORD not in trace
    assert "S: login refused" in trace


def test_public_key_login_after_user_key_add(srv: Server, tmp_path: Path) -> None:
    key_path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice laptop",
                    "-f", str(key_path)], check=True)
    other = asyncssh.generate_private_key("ssh-ed25519")

    async def login(key: asyncssh.SSHKey | str, user: str = ALICE) -> str:
        async with await connect(srv, user, None, client_keys=[key],
                                 preferred_auth="publickey") as conn, \
                conn.start_sftp_client() as sftp:
            return str(await sftp.realpath("."))

    with pytest.raises(asyncssh.PermissionDenied):
        run(login(str(key_path)))
    r = srv.cli("user", "key", "add", ALICE, str(key_path) + ".pub")
    assert r.returncode == 0, r.stderr
    fp = r.stdout.split()[2]
    assert fp.startswith("SHA256:")
    listed = srv.cli("user", "key", "list", ALICE).stdout
    assert fp in listed and "alice laptop" in listed
    assert run(login(str(key_path))) == "/"
    with pytest.raises(asyncssh.PermissionDenied):
        run(login(other))  # a key that was not added
    with pytest.raises(asyncssh.PermissionDenied):
        run(login(str(key_path), BOB))  # alice's key is not bob's
    r = srv.cli("user", "key", "add", ALICE, "-",
                stdin=other.export_public_key().decode())
    assert r.returncode == 0, r.stderr
    assert run(login(other)) == "/"
    assert srv.cli("user", "key", "remove", ALICE, fp).returncode == 0
    with pytest.raises(asyncssh.PermissionDenied):
        run(login(str(key_path)))
    assert srv.cli("user", "key", "add", ALICE, "/etc/hostname").returncode == 1
    keyfile = srv.data / "ssh" / "authorized_keys" / ALICE
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600


def test_host_key_made_once_and_kept(srv: Server) -> None:
    path = srv.data / "ssh" / "host_ed25519"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = asyncssh.read_private_key(str(path))
    assert key.get_fingerprint("sha256") in "".join(srv.output)

    async def server_key() -> bytes:
        async with await connect(srv) as conn:
            host_key = conn.get_server_host_key()
            assert host_key is not None
            return bytes(host_key.public_data)

    assert run(server_key()) == key.public_data


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session (netpost's
    FTP requires it by default, as vsftpd's require_ssl_reuse)."""

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            assert isinstance(self.sock, ssl.SSLSocket)
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


def test_sftp_upload_is_listed_over_ftp(srv: Server) -> None:
    async def work(sftp: asyncssh.SFTPClient) -> None:
        await sftp.mkdir("shared")
        async with sftp.open("shared/from sftp.txt", "wb") as f:
            await f.write(b"seen by ftp")

    with_sftp(srv, work)
    ftp = ReusingFTP_TLS(context=client_tls(), timeout=30)
    ftp.connect("127.0.0.1", srv.port("ftp"))
    ftp.login(ALICE, PASSWORD)
    ftp.prot_p()
    try:
        assert "from sftp.txt" in ftp.nlst("shared")
        chunks: list[bytes] = []
        ftp.retrbinary("RETR shared/from sftp.txt", chunks.append)
        assert b"".join(chunks) == b"seen by ftp"
        ftp.storbinary("STOR shared/from ftp.txt", io.BytesIO(b"by ftp"))
    finally:
        ftp.quit()

    async def back(sftp: asyncssh.SFTPClient) -> bytes:
        async with sftp.open("shared/from ftp.txt", "rb") as f:
            return bytes(await f.read())

    assert with_sftp(srv, back) == b"by ftp"


def test_trace_shows_requests_without_secrets(srv: Server) -> None:
    async def work(sftp: asyncssh.SFTPClient) -> None:
        async with sftp.open("traced.txt", "wb") as f:
            await f.write(b"t")
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await sftp.remove("missing.txt")

    with_sftp(srv, work)
    trace = (srv.data / "trace.log").read_text()
    assert "C: OPEN /traced.txt WRITE|CREAT|TRUNC" in trace
    assert "C: CLOSE /traced.txt (1 octets written)" in trace
    assert "C: REMOVE /missing.txt" in trace
    assert "S: NoSuchFile: /missing.txt" in trace
    assert f"S: login {ALICE} (password)" in trace
    assert PASSWORD not in trace


def test_not_logged_in_gets_nothing(srv: Server) -> None:
    """Before a login, the SSH server answers only the SSH handshake."""
    with socket.create_connection(("127.0.0.1", srv.port("sftp")), timeout=10) as s:
        banner = s.recv(100)
        assert banner.startswith(b"SSH-2.0-netpost")


def test_user_del_forgets_the_keys(srv: Server, tmp_path: Path) -> None:
    carol = f"carol@{DOMAIN}"
    srv.add_user(carol, "carol-pass")
    key = asyncssh.generate_private_key("ssh-ed25519")
    r = srv.cli("user", "key", "add", carol, "-", stdin=key.export_public_key().decode())
    assert r.returncode == 0, r.stderr
    keyfile = srv.data / "ssh" / "authorized_keys" / carol
    assert keyfile.exists()
    assert srv.cli("user", "del", carol).returncode == 0
    assert not keyfile.exists()
    r = srv.cli("user", "key", "list", carol)
    assert r.returncode == 1 and "no user" in r.stderr
