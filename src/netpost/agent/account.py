"""The account file: where the servers are, who logs in, how the password is found.

A TOML file, by default `$XDG_CONFIG_HOME/netpost/mail.toml` (~/.config/netpost/mail.toml),
or the one given with `--account FILE`:

    address = "alice@example.org"          # the From address
    name = "Alice Liddell"                 # optional display name
    server = "mail.example.org"            # default host of every protocol below
    user = "alice@example.org"             # login name (default: address)
    password_command = "pass show mail"    # its first line of output is the password;
                                           # without it the password is asked for
    tls_fingerprint = "sha256:AB:CD:..."   # optional pin of a self-signed certificate
    pgp_passphrase_command = "pass show pgp"  # optional: prints the PGP key's passphrase
                                           # (else it is asked for on the terminal)

    [imap]                 # each table optional; defaults shown
    port = 993             # tls = "implicit"; "starttls" on 143; "none" only if
    tls = "implicit"       # allow_plaintext = true
    [smtp]                 # submission: 465 implicit TLS, or 587 with tls = "starttls"
    port = 465
    [pop3]
    port = 995

TLS is on by default and the certificate is verified against the system's CAs (or `ca_file`)
and the host name, unless `tls_fingerprint` pins it: then exactly that certificate (SHA-256 of
its DER form) is accepted, checked right after the handshake and before a byte of the
protocol is read.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shlex
import ssl
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from netpost.agent import AgentError

TLSMode = Literal["implicit", "starttls", "none"]
DEFAULT_PORTS: dict[str, dict[TLSMode, int]] = {
    "imap": {"implicit": 993, "starttls": 143, "none": 143},
    "smtp": {"implicit": 465, "starttls": 587, "none": 587},
    "pop3": {"implicit": 995, "starttls": 110, "none": 110},
}


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "netpost"


def data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "netpost"


def default_account_path() -> Path:
    return config_home() / "mail.toml"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: TLSMode


@dataclass(frozen=True)
class Account:
    address: str
    name: str
    user: str
    imap: Endpoint
    smtp: Endpoint
    pop3: Endpoint
    password_command: str | None = None
    tls_fingerprint: str | None = None  # lowercase hex, no colons
    ca_file: str | None = None
    keyring: Path = field(default_factory=lambda: data_home() / "keyring")
    sent_folder: str = "Sent"
    autocrypt: bool = False  # Autocrypt Level 1: send our key, learn senders' keys
    pgp_passphrase_command: str | None = None  # prints the PGP key's passphrase
    _password: list[str] = field(default_factory=list, repr=False, compare=False)

    def password(self) -> str:
        """The password: from password_command, else asked for on the terminal (once)."""
        if self._password:
            return self._password[0]
        if self.password_command:
            try:
                out = subprocess.run(shlex.split(self.password_command), capture_output=True,
                                     text=True, timeout=60, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise AgentError(f"password_command failed: {exc}") from None
            if out.returncode != 0:
                raise AgentError(f"password_command exited with status {out.returncode}: "
                                 f"{out.stderr.strip()[:200]}")
            password = out.stdout.split("\n", 1)[0].rstrip("\r")
        elif sys.stdin.isatty():
            password = getpass.getpass(f"Password for {self.user}: ")
        else:
            raise AgentError("no password_command in the account file and no terminal to ask "
                             "for the password")
        self._password.append(password)
        return password

    def ssl_context(self) -> ssl.SSLContext:
        if self.tls_fingerprint:
            # Pinned: the chain and name are not checked, the exact certificate is
            # (check_pin, called right after every handshake).
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def check_pin(self, sock: Any, where: str) -> None:
        """Refuse the connection unless the peer's certificate is the pinned one."""
        if not self.tls_fingerprint:
            return
        der = sock.getpeercert(binary_form=True)
        got = hashlib.sha256(der or b"").hexdigest()
        if got != self.tls_fingerprint:
            raise AgentError(f"{where}: the server's certificate has SHA-256 fingerprint "
                             f"{format_fingerprint(got)}, not the pinned "
                             f"{format_fingerprint(self.tls_fingerprint)}; refusing to talk "
                             "to it")


def format_fingerprint(hexdigest: str) -> str:
    return "sha256:" + ":".join(hexdigest[i:i + 2] for i in range(0, len(hexdigest), 2)).upper()


def parse_fingerprint(text: str) -> str:
    value = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise AgentError(f"tls_fingerprint {text!r} is not a SHA-256 fingerprint "
                         "(64 hex digits, colons allowed, e.g. from 'netpost mail pin')")
    return value


def _endpoint(raw: dict[str, Any], proto: str, server: str | None, allow_plain: bool,
              path: Path) -> Endpoint:
    table = raw.get(proto, {})
    if not isinstance(table, dict):
        raise AgentError(f"{path}: [{proto}] must be a table")
    tls = table.get("tls", "implicit")
    if tls not in ("implicit", "starttls", "none"):
        raise AgentError(f"{path}: [{proto}] tls must be implicit, starttls or none")
    if tls == "none" and not allow_plain:
        raise AgentError(f"{path}: [{proto}] tls = \"none\" sends the password in clear; "
                         "set allow_plaintext = true to allow it")
    host = table.get("host", server)
    if not isinstance(host, str) or not host:
        raise AgentError(f"{path}: no server for {proto} (set server = \"...\")")
    port = table.get("port", DEFAULT_PORTS[proto][tls])
    if not isinstance(port, int) or not 0 < port < 65536:
        raise AgentError(f"{path}: [{proto}] port must be a number from 1 to 65535")
    return Endpoint(host, port, tls)


KNOWN_KEYS = {"address", "name", "server", "user", "password_command", "tls_fingerprint",
              "ca_file", "allow_plaintext", "keyring", "pgp_passphrase_command", "sent_folder",
              "autocrypt", "imap", "smtp", "pop3"}


def load_account(path: Path) -> Account:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgentError(f"no account file {path} (see 'netpost mail --help' and "
                         "docs/agent.md for its form)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentError(f"{path}: {exc}") from None
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise AgentError(f"{path}: unknown setting {unknown[0]!r}")
    address = raw.get("address")
    if not isinstance(address, str) or "@" not in address:
        raise AgentError(f"{path}: address = \"you@example.org\" is required")
    server = raw.get("server")
    allow_plain = bool(raw.get("allow_plaintext", False))
    pin = raw.get("tls_fingerprint")
    keyring = raw.get("keyring")
    return Account(
        address=address,
        name=str(raw.get("name", "")),
        user=str(raw.get("user", address)),
        imap=_endpoint(raw, "imap", server, allow_plain, path),
        smtp=_endpoint(raw, "smtp", server, allow_plain, path),
        pop3=_endpoint(raw, "pop3", server, allow_plain, path),
        password_command=raw.get("password_command"),
        tls_fingerprint=parse_fingerprint(pin) if isinstance(pin, str) else None,
        ca_file=raw.get("ca_file"),
        keyring=(path.parent / Path(keyring).expanduser() if isinstance(keyring, str)
                 else data_home() / "keyring"),
        sent_folder=str(raw.get("sent_folder", "Sent")),
        autocrypt=bool(raw.get("autocrypt", False)),
        pgp_passphrase_command=(str(raw["pgp_passphrase_command"])
                                if raw.get("pgp_passphrase_command") else None),
    )
