"""The agent's tests run `netpost mail` as a user would, against a netpost server the
fixture starts (tests/conftest.py), with accounts that pin its self-signed certificate."""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Server, start_server

DOMAIN = "example.test"
USERS = ("alice", "bob", "carol")


@dataclass
class MailUser:
    address: str
    account: Path  # the account file
    home: Path  # HOME and XDG dirs of this user

    def run(self, *args: str, stdin: str | bytes | None = None, check: bool = True,
            env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        r = subprocess.run([sys.executable, "-m", "netpost", "mail", "--account",
                            str(self.account), *args], input=data if data is not None else b"",
                           capture_output=True, timeout=timeout,
                           env={**user_env(self.home), **(env or {})})
        out = subprocess.CompletedProcess(r.args, r.returncode,
                                          r.stdout.decode("utf-8", "replace"),
                                          r.stderr.decode("utf-8", "replace"))
        if check:
            assert r.returncode == 0, f"{args}: {out.stderr}{out.stdout}"
        return out


def user_env(home: Path) -> dict[str, str]:
    return dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
                XDG_DATA_HOME=str(home / ".local/share"), GNUPGHOME=str(home / ".gnupg"),
                PYTHONUNBUFFERED="1")


def fingerprint(server: Server) -> str:
    pem = ssl.get_server_certificate(("127.0.0.1", server.port("imaps")))
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def pgp_passphrase(address: str) -> str:
    """The passphrase of the keys a test user generates (netpost protects them by default;
    the account's pgp_passphrase_command prints this)."""
    return f"{address.split('@')[0]} opens sesame"


def write_account(server: Server, path: Path, address: str, *, pin: str | None = None,
                  extra: str = "") -> Path:
    pwfile = path.parent / f"{address}.password"
    pwfile.write_text(PASSWORD + "\n")
    (path.parent / f"{address}.pgp-passphrase").write_text(pgp_passphrase(address) + "\n")
    path.write_text(f"""
address = "{address}"
name = "{address.split('@')[0].title()}"
server = "127.0.0.1"
password_command = "cat {pwfile}"
pgp_passphrase_command = "cat {path.parent / (address + '.pgp-passphrase')}"
tls_fingerprint = "{pin or fingerprint(server)}"
keyring = "{path.parent / (address + '.keyring')}"
{extra}
[imap]
port = {server.port("imaps")}
[smtp]
port = {server.port("submissions")}
[pop3]
port = {server.port("pop3s")}
""")
    return path


@pytest.fixture(scope="module")
def mail_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("netpost"))
    assert srv.cli("domain", "add", DOMAIN).returncode == 0
    for user in USERS:
        srv.add_user(f"{user}@{DOMAIN}", PASSWORD)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def users(mail_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, MailUser]:
    base = tmp_path_factory.mktemp("agent")
    out = {}
    for user in USERS:
        home = base / user
        home.mkdir()
        address = f"{user}@{DOMAIN}"
        out[user] = MailUser(address, write_account(mail_server, home / "mail.toml", address),
                             home)
    return out


GPG_HOMES: set[Path] = set()  # homes whose gpg may have started a gpg-agent


@pytest.fixture(autouse=True, scope="module")
def stop_gpg_agents() -> Iterator[None]:
    """gpg starts a gpg-agent per home directory; each is ended when the module is done."""
    yield
    for home in sorted(GPG_HOMES):
        subprocess.run(["gpgconf", "--kill", "all"], env=user_env(home), capture_output=True,
                       timeout=30, check=False)
    GPG_HOMES.clear()
