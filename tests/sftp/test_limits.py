"""SFTP under netpost's limits: connections per address, the idle timeout, the login grace,
and the file tree's quota (shared with FTP: [ftp] quota)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.conftest import DOMAIN, Server, start_server

ALICE = f"alice@{DOMAIN}"
PASSWORD = "limits-pass"
CONFIG = """
[auth]
failure_delay = 0.2
failure_max_delay = 0.4
[limits]
max_connections_per_ip = 2
[ftp]
quota = 100000
[sftp]
idle_timeout = 2.0
login_grace = 2.0
[trace]
listeners = ["all"]
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("sftp-limits") / "d", config=CONFIG)
    try:
        assert server.cli("domain", "add", DOMAIN).returncode == 0
        server.add_user(ALICE, PASSWORD)
        yield server
    finally:
        server.stop()
    log = "".join(server.output)
    assert "Traceback" not in log and " ERROR " not in log, log[-5000:]


async def connect(srv: Server) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect("127.0.0.1", srv.port("sftp"), username=ALICE,
                                  password=PASSWORD, client_keys=None, known_hosts=None)


def test_connections_per_address_are_limited(srv: Server) -> None:
    async def main() -> None:
        first, second = await connect(srv), await connect(srv)
        try:
            # Refused at once, before the key exchange (no work spent on it).
            with pytest.raises((asyncssh.DisconnectError, ConnectionError, OSError)):
                third = await connect(srv)
                third.close()
        finally:
            first.close()
            second.close()
            await first.wait_closed()
            await second.wait_closed()
        await asyncio.sleep(0.2)
        again = await connect(srv)  # released: room again
        again.close()

    asyncio.run(main())
    assert "refused: too many connections from your address" in (
        srv.data / "trace.log").read_text()


def test_idle_connection_is_closed(srv: Server) -> None:
    async def main() -> float:
        conn = await connect(srv)
        sftp = await conn.start_sftp_client()
        await sftp.listdir("/")
        started = time.monotonic()
        await asyncio.wait_for(conn.wait_closed(), 15)
        return time.monotonic() - started

    waited = asyncio.run(main())
    assert 1.5 <= waited < 10
    assert "idle for 2 s: disconnected" in (srv.data / "trace.log").read_text()


def test_a_client_that_does_not_log_in_is_dropped(srv: Server) -> None:
    with socket.create_connection(("127.0.0.1", srv.port("sftp")), timeout=15) as s:
        started = time.monotonic()
        assert s.recv(100).startswith(b"SSH-2.0-")
        while s.recv(4096):
            pass
        assert time.monotonic() - started < 10


def test_quota_refuses_the_upload_and_leaves_nothing(srv: Server) -> None:
    async def main() -> list[str]:
        async with await connect(srv) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("fits.bin", "wb") as f:
                await f.write(b"x" * 60_000)
            f = await sftp.open("too-big.bin", "wb")
            with pytest.raises(asyncssh.SFTPFailure, match="quota"):
                for i in range(10):
                    await f.write(b"y" * 10_000, i * 10_000)
            with pytest.raises(asyncssh.SFTPFailure, match="aborted"):
                await f.close()  # the upload is gone: not stored under its name
            return list(await sftp.listdir("/"))

    names = asyncio.run(main())
    assert "too-big.bin" not in names and "fits.bin" in names
    tree = srv.data / "files" / ALICE
    assert sorted(p.name for p in tree.iterdir()) == ["fits.bin"]


def test_host_key_is_made_once_and_kept_across_restarts(tmp_path: Path) -> None:
    data = tmp_path / "d"
    first = start_server(data, config=CONFIG)
    first.stop()
    key_file = data / "ssh" / "host_ed25519"
    made = key_file.read_bytes()
    assert "made an SSH host key" in "".join(first.output)
    second = start_server(data, config=CONFIG)
    try:
        assert key_file.read_bytes() == made
        text = "".join(second.output)
        assert "made an SSH host key" not in text
        fp = asyncssh.read_private_key(str(key_file)).get_fingerprint("sha256")
        assert f"SSH host key ssh-ed25519 {fp}" in text
    finally:
        second.stop()
