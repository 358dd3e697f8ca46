"""SSH keys: the server's host key (made on first start) and each account's authorized
public keys (added with `netpost user key add`).

Where they are kept, and why files rather than a store table:

    DATA/ssh/host_ed25519                   the host key (OpenSSH format, mode 0600)
    DATA/ssh/authorized_keys/<address>      the account's keys, one OpenSSH public key a line

A file per account in the authorized_keys format is what an operator already knows how to read,
back up and edit (`ssh-keygen -lf` shows the fingerprints `key list` prints); it needs no schema
migration; and the SFTP server reads it only at a login.  Every change is written to a
temporary file, fsync'd and renamed, so a reader sees the old list or the new one.  Key options
(`command=...`, `from=...`) are not kept: a key logs its account in to SFTP, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncssh

from netpost.files.trees import account_dir
from netpost.fsutil import write_atomic

HOST_KEY_NAME = "host_ed25519"


class BadKey(Exception):
    """A key that cannot be read or added; str() is fit for the user."""


def ensure_host_key(data_dir: Path) -> tuple[asyncssh.SSHKey, Path, bool]:
    """(key, path, made_now): DATA/ssh/host_ed25519, made (Ed25519, 0600) if missing."""
    path = data_dir / "ssh" / HOST_KEY_NAME
    if path.exists():
        return asyncssh.read_private_key(str(path)), path, False
    key = asyncssh.generate_private_key("ssh-ed25519", comment="netpost host key")
    write_atomic(path, key.export_private_key("openssh"), 0o600)
    return key, path, True


def fingerprint(key: asyncssh.SSHKey) -> str:
    """`SHA256:...`, as `ssh-keygen -lf` and OpenSSH's prompts show it."""
    return key.get_fingerprint("sha256")


@dataclass(frozen=True)
class AuthorizedKey:
    key: asyncssh.SSHKey
    line: str  # "ssh-ed25519 AAAA... comment", as stored

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)

    @property
    def comment(self) -> str:
        parts = self.line.split(None, 2)
        return parts[2] if len(parts) > 2 else ""


def parse_public_keys(text: str) -> list[AuthorizedKey]:
    """The public keys in `text` (a .pub file, or authorized_keys lines; options and blank or
    # lines are skipped); BadKey naming the first line that is not a key."""
    keys: list[AuthorizedKey] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = asyncssh.import_public_key(_key_part(line))
        except (asyncssh.KeyImportError, ValueError):
            key = None
        if key is None:
            raise BadKey(f"line {number} is not an SSH public key "
                            "(like 'ssh-ed25519 AAAA... comment')")
        keys.append(AuthorizedKey(key, _key_part(line)))
    return keys


_KEY_TYPES = ("ssh-", "ecdsa-", "sk-")


def _key_part(line: str) -> str:
    """The "type base64 [comment]" part of an authorized_keys line (options dropped)."""
    words = line.split()
    for i, word in enumerate(words):
        if word.startswith(_KEY_TYPES) and i + 1 < len(words):
            return " ".join(words[i:])
    return line


class AuthorizedKeys:
    """The accounts' authorized public keys under DATA/ssh/authorized_keys/."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "ssh" / "authorized_keys"

    def path(self, address: str) -> Path:
        return self.dir / account_dir(address)

    def list_keys(self, address: str) -> list[AuthorizedKey]:
        """The account's keys (none if it has no file); a line that no longer parses is
        skipped."""
        try:
            text = self.path(address).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        keys: list[AuthorizedKey] = []
        for line in text.splitlines():
            try:
                keys.extend(parse_public_keys(line))
            except BadKey:
                continue
        return keys

    def add(self, address: str, text: str) -> list[AuthorizedKey]:
        """Add the keys in `text`; returns those that were new."""
        new = parse_public_keys(text)
        if not new:
            raise BadKey("no SSH public key found")
        keys = self.list_keys(address)
        have = {k.key.public_data for k in keys}
        added = []
        for k in new:
            if k.key.public_data not in have:
                have.add(k.key.public_data)
                keys.append(k)
                added.append(k)
        if added:
            self._save(address, keys)
        return added

    def remove(self, address: str, fp: str) -> AuthorizedKey | None:
        """Remove the key with fingerprint `fp` ("SHA256:..." or without the prefix)."""
        want = fp if fp.startswith("SHA256:") else f"SHA256:{fp}"
        keys = self.list_keys(address)
        kept = [k for k in keys if k.fingerprint != want]
        if len(kept) == len(keys):
            return None
        self._save(address, kept)
        return next(k for k in keys if k.fingerprint == want)

    def drop(self, address: str) -> None:
        """Forget every key of the account (it is being removed)."""
        self.path(address).unlink(missing_ok=True)

    def _save(self, address: str, keys: list[AuthorizedKey]) -> None:
        data = "".join(k.line + "\n" for k in keys).encode("utf-8")
        write_atomic(self.path(address), data, 0o600)
