"""OpenPGP for the agent with pysequoia (Sequoia's Python binding): a local key ring and
the operations PGP/MIME needs.

Why pysequoia and not python-gnupg driving gpg: it installs from PyPI as one wheel with no
agent, no home directory and no pinentry to configure; it covers key generation, import,
export, sign, verify, encrypt and decrypt in-process (RFC 9580 / RFC 4880 keys), so a test or
a user needs no running gpg-agent; its errors are exceptions, not status-fd lines to parse.
gpg and sq are still what the tests check interoperation against.

The key ring is a directory: `certs/<fingerprint>.pgp` (public certificates, binary) and
`secret/<fingerprint>.pgp` (transferable secret keys, mode 0600). Keys generated here are
passphrase-protected unless asked not to be: pysequoia generates them and can use protected
keys but cannot protect one, so `keyprotect` applies RFC 4880's secret key protection to the
generated key's secret material (the signed public parts are not touched). Imported
protected keys keep their passphrase. The passphrase is asked for when a key is used.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path
from typing import TypeVar

import pysequoia

from netpost.agent import AgentError
from netpost.fsutil import write_atomic

os.environ.setdefault("RUST_BACKTRACE", "0")
T = TypeVar("T")


@contextlib.contextmanager
def no_panic() -> Iterator[None]:
    """A Rust panic inside pysequoia (pyo3's PanicException, a BaseException: sequoia 2.4
    panics on some truncated messages) as a RuntimeError, which the callers already turn
    into one line for the user, instead of a traceback."""
    try:
        yield
    except Exception:
        raise
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise RuntimeError(f"pysequoia failed on malformed input ({first_line(exc)})") \
            from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def cert_addresses(cert: pysequoia.Cert) -> list[str]:
    return [parseaddr(str(u))[1].lower() for u in cert.user_ids if parseaddr(str(u))[1]]


def cert_label(cert: pysequoia.Cert) -> str:
    uids = [str(u) for u in cert.user_ids]
    return f"{uids[0] if uids else '(no user ID)'} ({cert.fingerprint.upper()})"


def key_ids_of(cert: pysequoia.Cert) -> set[str]:
    """Fingerprints and key IDs of the certificate's primary key and subkeys."""
    from pysequoia.packet import PacketPile

    ids = set()
    for packet in PacketPile.from_bytes(bytes(cert)):
        for value in (packet.fingerprint, packet.key_id):
            if value:
                ids.add(value.lower())
    return ids


def usable_problem(cert: pysequoia.Cert, now: datetime | None = None) -> str | None:
    """Why `cert` cannot be used now (revoked, expired), or None."""
    if cert.is_revoked:
        return "is revoked"
    expiry = cert.expiration
    if expiry is not None and expiry <= (now or datetime.now(UTC)):
        return f"expired on {expiry:%Y-%m-%d}"
    return None


@dataclass
class Keyring:
    root: Path
    passphrase_command: str | None = None
    asked: set[str] = field(default_factory=set)
    found: list[pysequoia.Cert] = field(default_factory=list)
    # the passphrase that unlocked a secret key, by fingerprint (for `inner`)
    passphrases: dict[str, str] = field(default_factory=dict)

    @property
    def cert_dir(self) -> Path:
        return self.root / "certs"

    @property
    def secret_dir(self) -> Path:
        return self.root / "secret"

    def _write(self, path: Path, data: bytes, mode: int = 0o644) -> None:
        write_atomic(path, data, mode)

    # --- reading ---------------------------------------------------------------------------
    def certs(self) -> list[pysequoia.Cert]:
        out = []
        for path in sorted(self.cert_dir.glob("*.pgp")):
            try:
                out.append(pysequoia.Cert.from_bytes(path.read_bytes()))
            except (OSError, RuntimeError, ValueError) as exc:
                raise AgentError(f"key ring file {path} is damaged: {first_line(exc)}") from None
        return out

    def secret_keys(self) -> list[pysequoia.Tsk]:
        out = []
        for path in sorted(self.secret_dir.glob("*.pgp")):
            try:
                out.append(pysequoia.Tsk.from_bytes(path.read_bytes()))
            except (OSError, RuntimeError, ValueError) as exc:
                raise AgentError(f"key ring file {path} is damaged: {first_line(exc)}") from None
        return out

    def find(self, query: str) -> list[pysequoia.Cert]:
        """Certificates whose fingerprint ends with `query` or that have its address."""
        q = query.lower().replace(" ", "").removeprefix("0x")
        address = parseaddr(query)[1].lower()
        return [c for c in self.certs()
                if c.fingerprint.endswith(q) or (address and address in cert_addresses(c))]

    def cert_for(self, address: str) -> pysequoia.Cert:
        """The usable certificate of `address`, or a one-line reason there is none."""
        found = [c for c in self.certs() if address.lower() in cert_addresses(c)]
        if not found:
            raise AgentError(f"no OpenPGP key for {address} in the key ring (import it with "
                             f"'netpost mail key import' or fetch it with 'netpost mail key "
                             f"locate {address}')")
        problems = []
        for cert in found:
            problem = usable_problem(cert)
            if problem is None:
                return cert
            problems.append(f"{cert.fingerprint.upper()} {problem}")
        raise AgentError(f"the key of {address} cannot be used: {'; '.join(problems)}")

    def secret_for(self, address: str) -> pysequoia.Tsk:
        for tsk in self.secret_keys():
            cert = tsk.extract_certificate()
            if address.lower() in cert_addresses(cert):
                problem = usable_problem(cert)
                if problem is not None:
                    raise AgentError(f"your key {cert.fingerprint.upper()} {problem}")
                return tsk
        raise AgentError(f"no secret key for {address} in the key ring (make one with "
                         f"'netpost mail key generate' or import yours)")

    def lookup(self, key_ids: list[str]) -> list[pysequoia.Cert]:
        """pysequoia's `store` callback: the certificates having any of these key IDs or
        fingerprints (primary or subkey). Remembers what was asked and found, so that a
        failed check can say "no key" apart from "bad signature"."""
        wanted = {k.lower() for k in key_ids}
        found = [c for c in self.certs() if key_ids_of(c) & wanted]
        self.asked.update(wanted)
        self.found.extend(found)
        return found

    # --- changing --------------------------------------------------------------------------
    def add(self, data: bytes) -> list[str]:
        """Import certificates and secret keys (armored or binary); merged with what is
        there. Returns one line per key."""
        try:
            with no_panic():
                certs = pysequoia.Cert.split_bytes(data)
        except (RuntimeError, ValueError) as exc:
            raise AgentError(f"not an OpenPGP key: {first_line(exc)}") from None
        if not certs:
            raise AgentError("no OpenPGP key found in the input")
        lines = []
        for cert in certs:
            fpr = cert.fingerprint
            path = self.cert_dir / f"{fpr}.pgp"
            public = cert
            if cert.has_secret_keys:
                spath = self.secret_dir / f"{fpr}.pgp"
                if spath.exists():  # merge with the secret key file's own contents
                    cert = pysequoia.Cert.split_bytes(spath.read_bytes())[0].merge(cert)
                tsk = cert.secrets  # bytes(Cert) would drop the secret key material
                assert tsk is not None
                public = tsk.extract_certificate()
                self._write(spath, bytes(tsk), 0o600)
            if path.exists():
                public = pysequoia.Cert.from_bytes(path.read_bytes()).merge(public)
            self._write(path, bytes(public))
            kind = "secret key" if cert.has_secret_keys else "key"
            problem = usable_problem(public)
            lines.append(f"imported {kind} {cert_label(public)}"
                         + (f" (it {problem})" if problem else ""))
        return lines

    def generate(self, user_id: str, passphrase: str | None) -> pysequoia.Tsk:
        """A new key for `user_id`, protected by `passphrase` (None: not protected)."""
        # RFC 4880 (v4) keys: what GnuPG 2.2 and sq 0.27, still common, can use
        tsk = pysequoia.Tsk.generate(user_id, profile=pysequoia.Profile.RFC4880)
        if passphrase is not None:
            from netpost.agent.keyprotect import protect

            tsk = pysequoia.Tsk.from_bytes(protect(bytes(tsk), passphrase))
        fpr = tsk.extract_certificate().fingerprint
        self._write(self.secret_dir / f"{fpr}.pgp", bytes(tsk), 0o600)
        self._write(self.cert_dir / f"{fpr}.pgp", bytes(tsk.extract_certificate()))
        return tsk

    def export(self, query: str, secret: bool = False) -> str:
        found = self.find(query)
        if not found:
            raise AgentError(f"no key matching {query!r} in the key ring")
        if not secret:
            return "".join(str(c) for c in found)
        out = []
        for c in found:
            path = self.secret_dir / f"{c.fingerprint}.pgp"
            if path.exists():
                out.append(str(pysequoia.Tsk.from_bytes(path.read_bytes())))
        if not out:
            raise AgentError(f"no secret key matching {query!r} in the key ring")
        return "".join(out)

    # --- secret key use --------------------------------------------------------------------
    def _from_command(self) -> str:
        assert self.passphrase_command
        try:
            out = subprocess.run(shlex.split(self.passphrase_command), capture_output=True,
                                 text=True, timeout=60, check=False)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            raise AgentError(f"pgp_passphrase_command failed: {exc}") from None
        if out.returncode != 0:
            raise AgentError(f"pgp_passphrase_command exited with {out.returncode}")
        return out.stdout.split("\n", 1)[0].rstrip("\r")

    def passphrase(self, label: str) -> str:
        if self.passphrase_command:
            return self._from_command()
        if sys.stdin.isatty():
            import getpass

            return getpass.getpass(f"Passphrase for {label}: ")
        raise AgentError(f"the secret key {label} is passphrase-protected and there is no "
                         "terminal to ask (set pgp_passphrase_command)")

    def new_passphrase(self, user_id: str) -> str:
        """The passphrase for a key being made: from the passphrase command, or typed twice
        on the terminal."""
        if self.passphrase_command:
            chosen = self._from_command()
            if not chosen:
                raise AgentError("pgp_passphrase_command printed an empty passphrase (use "
                                 "--no-passphrase for a key without one)")
            return chosen
        if not sys.stdin.isatty():
            raise AgentError("no terminal to ask for the new key's passphrase: set "
                             "pgp_passphrase_command (or NETPOST_PGP_PASSPHRASE_COMMAND), or "
                             "use --no-passphrase for a key without one")
        import getpass

        chosen = getpass.getpass(f"Passphrase for the new key {user_id}: ")
        if not chosen:
            raise AgentError("an empty passphrase protects nothing (use --no-passphrase for "
                             "a key without one)")
        if getpass.getpass("The same passphrase again: ") != chosen:
            raise AgentError("the two passphrases differ; no key was made")
        return chosen

    def _unlocked(self, tsk: pysequoia.Tsk, make: Callable[[str | None], T]) -> T:
        """`make(passphrase)`: first without one, then asking when the key is protected;
        a wrong passphrase is one clear line."""
        label = cert_label(tsk.extract_certificate())
        try:
            return make(None)
        except RuntimeError as exc:
            if "encrypted" not in str(exc):
                raise AgentError(f"{label}: {first_line(exc)}") from None
        passphrase = self.passphrase(label)
        try:
            made = make(passphrase)
        except RuntimeError:
            raise AgentError(f"wrong passphrase for the secret key {label}") from None
        self.passphrases[tsk.extract_certificate().fingerprint] = passphrase
        return made

    def signer(self, address: str) -> pysequoia.PySigner:
        tsk = self.secret_for(address)
        return self._unlocked(tsk, tsk.signer)

    def decryptor(self, tsk: pysequoia.Tsk) -> pysequoia.PyDecryptor:
        return self._unlocked(tsk, tsk.decryptor)
