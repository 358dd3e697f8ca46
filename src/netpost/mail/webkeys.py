"""Each local user's OpenPGP public key, as netpost publishes it by the Web Key Directory
(draft-koch-openpgp-webkey-service; served by `web/wkd.py`, set with
`netpost user pgp-key set ADDRESS FILE`).

    DATA/openpgpkey/<domain>/hu/<z-base-32 of SHA-1 of the local part>   binary key

Files, like SSH keys (sftp/keys.py): the layout is WKD's own, so an operator can also serve
the directory with any web server; each change is written to a temporary name, fsync'd and
renamed, so a reader sees the old key or the new one.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from netpost.agent.wkd import wkd_hash

_HASH = re.compile(r"^[ybndrfg8ejkmcpqxot1uwisza345h769]{32}$")
_DOMAIN = re.compile(r"^[a-z0-9.-]{1,253}$")


class BadKey(Exception):
    """A key that cannot be published; str() is fit for the user."""


class WebKeys:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "openpgpkey"

    def path_of(self, address: str) -> Path:
        local, _, domain = address.rpartition("@")
        return self.root / domain.lower() / "hu" / wkd_hash(local)

    def get(self, domain: str, hu: str) -> bytes | None:
        """The key published under `hu` for `domain`, or None (bad names are None too)."""
        domain = domain.lower()
        if not _HASH.match(hu) or not _DOMAIN.match(domain) or ".." in domain:
            return None
        try:
            return (self.root / domain / "hu" / hu).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def has_domain(self, domain: str) -> bool:
        domain = domain.lower()
        return bool(_DOMAIN.match(domain)) and ".." not in domain and \
            (self.root / domain).is_dir()

    def set(self, address: str, key: bytes) -> str:
        """Publish `key` (armored or binary) for `address`; returns its fingerprint.
        Refused: not one OpenPGP certificate, a secret key, no user ID with `address`."""
        import pysequoia

        from netpost.agent.pgp import cert_addresses, first_line, usable_problem

        try:
            certs = pysequoia.Cert.split_bytes(key)
        except (RuntimeError, ValueError) as exc:
            raise BadKey(f"not an OpenPGP key: {first_line(exc)}") from None
        if len(certs) != 1:
            raise BadKey(f"expected one OpenPGP certificate, found {len(certs)}")
        cert = certs[0]
        if cert.has_secret_keys:
            raise BadKey("that is a secret key: publish the public key only "
                         "(e.g. 'netpost mail key export')")
        if address.lower() not in cert_addresses(cert):
            raise BadKey(f"the key has no user ID with {address} (it has: "
                         + ", ".join(str(u) for u in cert.user_ids) + ")")
        problem = usable_problem(cert)
        if problem is not None:
            raise BadKey(f"the key {problem}")
        path = self.path_of(address)
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent.parent / "policy").touch()  # the policy file (section 4.5)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as f:
            f.write(bytes(cert))  # WKD serves the binary form (section 3.1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return cert.fingerprint.upper()

    def remove(self, address: str) -> bool:
        try:
            self.path_of(address).unlink()
            return True
        except FileNotFoundError:
            return False
