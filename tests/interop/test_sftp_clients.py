"""Real SSH clients against netpost's SFTP: OpenSSH's sftp (public key and, through sshpass,
password), scp (its SFTP mode; the legacy SCP protocol is refused), curl's sftp:// (libssh2),
and ssh itself for what must be refused (commands, shells, forwarding).  Round trips are
checked byte for byte on the client and in the account's tree on the server's disk.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DOMAIN, Server, require_tool, start_server

pytestmark = pytest.mark.interop

ALICE = f"alice@{DOMAIN}"
PASSWORD = "sftp interop pass"
MIB = 1024 * 1024
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20"]


class Setup:
    def __init__(self, srv: Server, key: Path, work: Path) -> None:
        self.srv = srv
        self.key = key
        self.work = work

    @property
    def port(self) -> int:
        return self.srv.port("sftp")

    @property
    def tree(self) -> Path:
        return self.srv.data / "files" / ALICE

    def key_options(self) -> list[str]:
        return [*SSH_OPTIONS, "-o", "IdentitiesOnly=yes", "-o", "PasswordAuthentication=no",
                "-o", "KbdInteractiveAuthentication=no", "-i", str(self.key)]

    def sftp_batch(self, commands: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        batch = self.work / "batch"
        batch.write_text(commands)
        r = subprocess.run([require_tool("sftp"), "-b", str(batch), "-P", str(self.port),
                            *self.key_options(), f"{ALICE}@127.0.0.1"],
                           capture_output=True, text=True, timeout=300, cwd=self.work)
        if check:
            assert r.returncode == 0, r.stdout + r.stderr
        return r

    def ssh(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([require_tool("ssh"), "-p", str(self.port), *self.key_options(),
                               *args], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("sftp-interop")
    srv = start_server(base / "data")
    try:
        assert srv.cli("domain", "add", DOMAIN).returncode == 0
        srv.add_user(ALICE, PASSWORD)
        key = base / "id_ed25519"
        subprocess.run([require_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C",
                        "interop", "-f", str(key)], check=True)
        r = srv.cli("user", "key", "add", ALICE, str(key) + ".pub")
        assert r.returncode == 0, r.stderr
        work = base / "work"
        work.mkdir()
        yield Setup(srv, key, work)
    finally:
        srv.stop()
    log = "".join(srv.output)
    assert "Traceback" not in log and " ERROR " not in log, log[-5000:]


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def make(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(os.urandom(n))
            left -= n
    return path


def test_openssh_sftp_round_trips_with_a_key(setup: Setup) -> None:
    files = {"empty.bin": 0, "one.bin": 1, "one-mib.bin": MIB, "big 50 MiB.bin": 50 * MIB,
             "grüße 日本.txt": 5000}
    for name, size in files.items():
        make(setup.work / name, size)
    puts = "".join(f'put "{name}" "up/{name}"\n' for name in files)
    gets = "".join(f'get "up/{name}" "back-{name}"\n' for name in files)
    r = setup.sftp_batch(f"mkdir up\n{puts}ls -l up\n{gets}")
    for name in files:
        assert sha(setup.work / f"back-{name}") == sha(setup.work / name), name
        assert sha(setup.tree / "up" / name) == sha(setup.work / name), name
        assert name in r.stdout
    setup.sftp_batch('rename "up/one.bin" "up/renamed one.bin"\nrm "up/empty.bin"\n'
                     "mkdir gone\nrmdir gone\n")
    r = setup.sftp_batch("ls -1 up\n")
    listed = r.stdout.splitlines()[1:]
    assert "up/renamed one.bin" in listed and "up/empty.bin" not in listed
    assert not (setup.tree / "gone").exists()


def test_openssh_sftp_resumes_an_upload(setup: Setup) -> None:
    """`reput` opens the existing partial file with APPEND and sends the rest."""
    src = make(setup.work / "resume.bin", 3 * MIB)
    setup.tree.mkdir(parents=True, exist_ok=True)
    (setup.tree / "resume.bin").write_bytes(src.read_bytes()[:MIB + 123])
    setup.sftp_batch("reput resume.bin resume.bin\n")
    assert sha(setup.tree / "resume.bin") == sha(src)
    trace = (setup.srv.data / "trace.log").read_text()
    assert "C: OPEN /resume.bin WRITE|APPEND|CREAT" in trace
    assert f"C: CLOSE /resume.bin ({3 * MIB - MIB - 123} octets written)" in trace


def test_openssh_sftp_stays_in_the_tree(setup: Setup) -> None:
    r = setup.sftp_batch("cd ../../..\npwd\nls -a /\n-get /etc/passwd passwd\n"
                         "-get ../../../../etc/hostname hostname\n-ln -s /etc escape\n"
                         "-chown 0 one-mib.bin\n")
    assert "Remote working directory: /" in r.stdout
    assert not (setup.work / "passwd").exists() and not (setup.work / "hostname").exists()
    assert not (setup.tree / "escape").exists()


def test_openssh_sftp_with_a_password_through_sshpass(setup: Setup) -> None:
    sshpass = require_tool("sshpass")
    make(setup.work / "pw.bin", 300_000)
    # sftp -b turns BatchMode on, which forbids passwords: the commands come on stdin instead.
    commands = "put pw.bin pw.bin\nget pw.bin pw-back.bin\n"
    r = subprocess.run([sshpass, "-p", PASSWORD, require_tool("sftp"), "-P", str(setup.port),
                        *SSH_OPTIONS, "-o", "PubkeyAuthentication=no",
                        "-o", "PreferredAuthentications=password", f"{ALICE}@127.0.0.1"],
                       input=commands, capture_output=True, text=True, timeout=120,
                       cwd=setup.work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sha(setup.work / "pw-back.bin") == sha(setup.work / "pw.bin")
    assert sha(setup.tree / "pw.bin") == sha(setup.work / "pw.bin")
    # A wrong password is refused.
    r = subprocess.run([sshpass, "-p", "not the password", require_tool("sftp"),
                        "-P", str(setup.port), *SSH_OPTIONS, "-o", "PubkeyAuthentication=no",
                        "-o", "PreferredAuthentications=password",
                        "-o", "NumberOfPasswordPrompts=1", f"{ALICE}@127.0.0.1"],
                       input="ls\n", capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    trace = (setup.srv.data / "trace.log").read_text()
    assert PASSWORD not in trace and "not the password" not in trace


def test_curl_sftp_upload_and_download(setup: Setup) -> None:
    curl = require_tool("curl")
    if "sftp" not in subprocess.run([curl, "-V"], capture_output=True, text=True).stdout:
        pytest.fail("this curl has no sftp:// support (libssh2)")
    src = make(setup.work / "curl up.bin", 2 * MIB)
    url = f"sftp://127.0.0.1:{setup.port}/curl%20dir/curl%20up.bin"
    common = [curl, "-sS", "--fail", "-k", "-u", f"{ALICE}:{PASSWORD}"]
    r = subprocess.run([*common, "--ftp-create-dirs", "-T", str(src), url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sha(setup.tree / "curl dir" / "curl up.bin") == sha(src)
    back = setup.work / "curl back.bin"
    r = subprocess.run([*common, "-o", str(back), url], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert sha(back) == sha(src)
    listing = subprocess.run([*common, f"sftp://127.0.0.1:{setup.port}/curl%20dir/"],
                             capture_output=True, text=True, timeout=60)
    assert "curl up.bin" in listing.stdout
    r = subprocess.run([*common, "-o", str(setup.work / "x"),
                        f"sftp://127.0.0.1:{setup.port}/../../etc/passwd"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0


def test_scp_over_sftp_works_and_legacy_scp_is_refused(setup: Setup) -> None:
    scp = require_tool("scp")
    src = make(setup.work / "scp.bin", 700_000)
    base = [scp, "-P", str(setup.port), *setup.key_options()]
    r = subprocess.run([*base, str(src), f"{ALICE}@127.0.0.1:scp.bin"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr  # OpenSSH 9's scp speaks SFTP
    assert sha(setup.tree / "scp.bin") == sha(src)
    # Again over the existing file, shorter: scp writes in place and then cuts it (FSETSTAT).
    small = make(setup.work / "scp-small.bin", 1000)
    r = subprocess.run([*base, str(small), f"{ALICE}@127.0.0.1:scp.bin"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sha(setup.tree / "scp.bin") == sha(small)
    r = subprocess.run([*base, "-O", str(src), f"{ALICE}@127.0.0.1:legacy.bin"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0  # the SCP protocol needs exec: refused
    assert not (setup.tree / "legacy.bin").exists()


def test_ssh_commands_shells_and_forwarding_are_refused(setup: Setup) -> None:
    dest = f"{ALICE}@127.0.0.1"
    r = setup.ssh(dest, "id")
    assert r.returncode != 0 and "uid=" not in r.stdout
    r = setup.ssh("-tt", dest)
    assert r.returncode != 0
    r = setup.ssh("-W", f"127.0.0.1:{setup.srv.port('smtp')}", dest)
    assert r.returncode != 0 and "ESMTP" not in r.stdout
    r = setup.ssh("-N", "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:1",
                  dest)
    assert r.returncode != 0
