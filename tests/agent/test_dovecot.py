"""`netpost mail` against Dovecot (the peer-bench set-up in bench/peer-bench/peers/dovecot.sh:
IMAP and POP3 on loopback without TLS, plaintext logins allowed): the IMAP and POP3
commands work with another server than netpost."""

from __future__ import annotations

import imaplib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.conftest import MailUser
from tests.conftest import require_tool

pytestmark = pytest.mark.interop
PEERS = Path(__file__).resolve().parents[2] / "bench" / "peer-bench" / "peers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dovecot() -> Iterator[dict[str, int]]:
    require_tool("dovecot")
    if not Path("/usr/lib/dovecot/imap").exists() or not Path("/usr/lib/dovecot/pop3").exists():
        pytest.fail("Dovecot's imap and pop3 are not installed (Debian packages dovecot-imapd, "
                    "dovecot-pop3d; see scripts/install-test-deps.sh)")
    root = Path(tempfile.mkdtemp(prefix="netpost-agent-dovecot-"))
    root.chmod(0o755)  # Dovecot's vmail user reaches the mail under it
    ports = {"imap": free_port(), "pop3": free_port()}
    env = dict(os.environ, BENCH_ROOT=str(root), DOVECOT_IMAP_PORT=str(ports["imap"]),
               DOVECOT_POP3_PORT=str(ports["pop3"]))
    # output to a file: the daemon inherits it, and would hold a pipe open
    with open(root / "start.log", "w") as log:
        started = subprocess.run([str(PEERS / "dovecot.sh"), "start"], env=env, timeout=60,
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        assert started.returncode == 0, (root / "start.log").read_text()
        yield ports
    finally:
        subprocess.run([str(PEERS / "dovecot.sh"), "stop"], env=env, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def u1(dovecot: dict[str, int], tmp_path: Path) -> MailUser:
    account = tmp_path / "dovecot.toml"
    account.write_text(f"""address = "u1@example.test"
user = "u1"
server = "127.0.0.1"
password_command = "echo pass"
allow_plaintext = true
keyring = "{tmp_path / 'keyring'}"
imap = {{ port = {dovecot['imap']}, tls = "none" }}
pop3 = {{ port = {dovecot['pop3']}, tls = "none" }}
smtp = {{ port = 1, tls = "none" }}
""")
    return MailUser("u1@example.test", account, tmp_path)


def test_imap_and_pop3_commands_against_dovecot(u1: MailUser, dovecot: dict[str, int],
                                                tmp_path: Path) -> None:
    with imaplib.IMAP4("127.0.0.1", dovecot["imap"]) as c:
        c.login("u1", "pass")
        for n in range(25):
            c.append("INBOX", "()", None, f"From: p{n}@example.org\r\nSubject: dove {n:02d}"
                     f"\r\n\r\nbody {n}\r\n".encode())
    listed = u1.run("list").stdout.splitlines()
    assert listed[0].split()[-2] == "24" and listed[-1] == "-- INBOX: page 1 of 2, 25 messages --"
    assert [x.split()[-2] for x in u1.run("list", "-p", "2").stdout.splitlines()[:-1]] == [
        f"{n:02d}" for n in range(4, -1, -1)]
    assert "body 3" in u1.run("read", "4").stdout
    u1.run("flag", "5", "--add", "flagged")
    assert "dove 04" in u1.run("search", "--flagged").stdout
    assert "1 found" in u1.run("search", "--subject", "dove 07").stdout
    u1.run("folders", "create", "Kept")
    u1.run("move", "1:3", "Kept")
    assert "3 messages" in u1.run("list", "-f", "Kept").stdout
    u1.run("delete", "6")
    assert "21 messages" in u1.run("list").stdout
    box = tmp_path / "Maildir"
    assert "21 new" in u1.run("sync", str(box)).stdout
    u1.run("flag", "7", "--add", "seen")
    u1.run("delete", "8")
    assert "0 new, 1 with new flags, 1 removed" in u1.run("sync", str(box)).stdout
    assert len(list((box / "cur").iterdir())) == 20
    u1.run("folders", "rename", "Kept", "Old")
    u1.run("folders", "delete", "Old")
    assert "Old" not in u1.run("folders").stdout.split()
    # POP3: list, read and delete by UIDL
    pop = u1.run("list", "--pop3", "-n", "50").stdout.splitlines()
    assert "20 messages (POP3)" in pop[-1] or "of 20 messages (POP3)" in pop[-1]
    uidl = next(x.split()[0] for x in pop if "dove 24" in x)
    assert "body 24" in u1.run("read", "--pop3", uidl).stdout
    u1.run("delete", "--pop3", uidl)
    assert "dove 24" not in u1.run("list", "--pop3", "-n", "50").stdout
