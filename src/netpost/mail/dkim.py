"""DKIM keys and signing of outbound mail (RFC 6376).

Each local domain has one or more RSA-2048 keys, one per selector, kept under the data
directory::

    <data>/dkim/<domain>/<selector>.key    PEM (PKCS#1) private key, mode 0600
    <data>/dkim/<domain>/current           the selector new mail is signed with

Making a key for a domain that has one already is a rotation: the new selector becomes
current and the old key stays on disk (its DNS record should stay published until mail
signed with it has been delivered, then both can go).  The public half is published as a
TXT record at ``<selector>._domainkey.<domain>`` (RFC 6376 3.6.2.1); `dkim_record` gives it.

`sign` returns the DKIM-Signature field for a message, or b"" when the domain has no key
(then the caller sends the message unsigned).  Canonicalization and the field are dkimpy's; the
keys and the RSA step are `cryptography`'s.  Signing is CPU work (about 2 ms for a 10 KiB
message with RSA-2048): call it off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from netpost.fsutil import write_atomic
from netpost.mail.address import InvalidDomain, normalize_domain, parse_domain

__all__ = [
    "DKIMError",
    "DKIMKey",
    "SIGNED_FIELDS",
    "create_key",
    "current_key",
    "default_selector",
    "dkim_record",
    "list_keys",
    "sign",
]

KEY_BITS = 2048  # RFC 8301 3.2: at least 1024, SHOULD be 2048 or more
DKIM_DIR = "dkim"
CURRENT = "current"
# RFC 6376 5.4.1 lists the fields that SHOULD be signed; these are the ones a mail client
# writes.  Absent ones are not signed (dkimpy would sign their absence, which is allowed but
# makes a later legitimate addition, such as a list's Reply-To, break the signature).
SIGNED_FIELDS = (
    "From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "In-Reply-To",
    "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
)
# RFC 6376 3.1: a selector is a dot-separated list of sub-domain labels.
_SELECTOR_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}"
                          r"[a-z0-9])?)*")
_FIELD_NAME_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)


class DKIMError(Exception):
    """A key cannot be made, found or read; the text is one line for the user."""


@dataclass(frozen=True)
class DKIMKey:
    domain: str
    selector: str
    path: Path
    current: bool  # the key new mail is signed with

    @property
    def record_name(self) -> str:
        """Where the public key is published (RFC 6376 3.6.2.1)."""
        return f"{self.selector}._domainkey.{self.domain}"

    def record_value(self) -> str:
        """The TXT record's text (RFC 6376 3.6.1): the public key as base64 DER
        SubjectPublicKeyInfo."""
        public = _load_private(self.path).public_key()
        der = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def _domain(domain: str) -> str:
    try:
        return parse_domain(domain)
    except InvalidDomain:
        raise DKIMError(f"{domain!r} is not a valid domain name") from None


def _selector(selector: str) -> str:
    s = selector.strip().lower()
    if not _SELECTOR_RE.fullmatch(s) or len(s) > 63:
        raise DKIMError(f"{selector!r} is not a valid selector (letters, digits, hyphens)")
    return s


def default_selector(now: float | None = None) -> str:
    """"np" and the year and month, e.g. np202611: a new name each month a key is made."""
    return "np" + time.strftime("%Y%m", time.gmtime(time.time() if now is None else now))


def create_key(data_dir: Path, domain: str, selector: str | None = None) -> DKIMKey:
    """Make a new RSA-2048 key for `domain` and make it current (a rotation when the domain
    has a key already).  Without `selector`, `default_selector()` (with "-2", "-3"... when
    that name is taken this month).  An explicit selector that exists is a DKIMError."""
    domain = _domain(domain)
    directory = Path(data_dir) / DKIM_DIR / domain
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if selector is None:
        base = default_selector()
        name, n = base, 1
        while (directory / f"{name}.key").exists():
            n += 1
            name = f"{base}-{n}"
    else:
        name = _selector(selector)
        if (directory / f"{name}.key").exists():
            raise DKIMError(f"{domain} has a key with selector {name} already")
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,  # dkimpy: PKCS#1
                            serialization.NoEncryption())
    path = directory / f"{name}.key"
    write_atomic(path, pem, 0o600)
    write_atomic(directory / CURRENT, name.encode("ascii") + b"\n", 0o644)
    return DKIMKey(domain, name, path, current=True)


def current_key(data_dir: Path, domain: str) -> DKIMKey | None:
    """The key mail from `domain` is signed with, or None when it has none."""
    try:
        domain = parse_domain(domain)
    except InvalidDomain:
        return None
    directory = Path(data_dir) / DKIM_DIR / domain
    try:
        name = (directory / CURRENT).read_text("ascii").strip()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None
    if not _SELECTOR_RE.fullmatch(name):
        return None
    path = directory / f"{name}.key"
    return DKIMKey(domain, name, path, current=True) if path.is_file() else None


def list_keys(data_dir: Path, domain: str | None = None) -> list[DKIMKey]:
    """Every key (of `domain`, or of every domain), by domain, oldest key first."""
    root = Path(data_dir) / DKIM_DIR
    if domain is not None:
        directories = [root / _domain(domain)]
    else:
        directories = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    keys = []
    for directory in directories:
        if not directory.is_dir():
            continue
        current = current_key(data_dir, directory.name)
        paths = sorted(directory.glob("*.key"), key=lambda p: (p.stat().st_mtime_ns, p.stem))
        for path in paths:
            keys.append(DKIMKey(directory.name, path.stem, path,
                                current=current is not None and current.path == path))
    return keys


def dkim_record(data_dir: Path, domain: str) -> tuple[str, str]:
    """(name, value) of the TXT record to publish for `domain`'s current key, e.g.
    ("np202611._domainkey.example.org", "v=DKIM1; k=rsa; p=MIIB..."); DKIMError if none."""
    key = current_key(data_dir, domain)
    if key is None:
        name = normalize_domain(domain)
        raise DKIMError(f"{name} has no DKIM key (make one with 'netpost dkim new {name}')")
    return key.record_name, key.record_value()


# Key files by path and modification time: a rotation writes a new file, so a cached entry is
# never stale; the file is read and parsed once instead of once per message.
_pem_cache: dict[tuple[Path, int], bytes] = {}


def _read_pem(path: Path) -> bytes:
    stamp = path.stat().st_mtime_ns
    pem = _pem_cache.get((path, stamp))
    if pem is None:
        pem = path.read_bytes()
        if len(_pem_cache) > 1000:
            _pem_cache.clear()
        _pem_cache[(path, stamp)] = pem
    return pem


_key_cache: dict[tuple[Path, int], rsa.RSAPrivateKey] = {}


def _load_private(path: Path) -> rsa.RSAPrivateKey:
    try:
        stamp = path.stat().st_mtime_ns
        key = _key_cache.get((path, stamp))
        if key is not None:
            return key
        # A key this module wrote: the (slow, ~0.3 s) RSA consistency check adds nothing.
        loaded = serialization.load_pem_private_key(_read_pem(path), password=None,
                                                    unsafe_skip_rsa_key_validation=True)
    except (OSError, ValueError) as exc:
        raise DKIMError(f"cannot read DKIM key {path}: {exc}") from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise DKIMError(f"DKIM key {path} is not an RSA key")
    if len(_key_cache) > 1000:
        _key_cache.clear()
    _key_cache[(path, stamp)] = loaded
    return loaded


def _fields_to_sign(message: bytes) -> list[bytes]:
    """The SIGNED_FIELDS present in `message`'s header, each as often as it occurs, and From
    once more: an over-signed From means no second From can be added (RFC 6376 8.15)."""
    end = re.search(rb"\r?\n\r?\n", message)
    header = message[:end.start()] if end else message
    present = [m.group(1).lower() for m in _FIELD_NAME_RE.finditer(header)]
    wanted = {f.lower().encode("ascii") for f in SIGNED_FIELDS}
    fields = [name for name in present if name in wanted]
    return fields + [b"from"]


class _Signer(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's signer with the RSA step (RSASSA-PKCS1-v1_5, RFC 8017 8.2) done by OpenSSL
    through `cryptography`: dkimpy's own pure-Python modular exponentiation costs about 13 ms
    of CPU per message with the GIL held, OpenSSL's about 1 ms.  Canonicalization, header
    hashing and folding stay dkimpy's; the test suite checks that the field is byte for byte
    the one dkimpy makes by itself."""

    def __init__(self, message: bytes, key: rsa.RSAPrivateKey) -> None:
        super().__init__(message, signature_algorithm=b"rsa-sha256", linesep=b"\r\n")
        self._key = key

    def gen_header(self, fields: list[tuple[bytes, bytes]], include_headers: Sequence[bytes],
                   canon_policy: Any, header_name: bytes, pk: object,
                   standardize: bool = False) -> bytes:
        # The steps of dkimpy 1.1 DomainSigner.gen_header for a DKIM-Signature.
        header_value = b"; ".join(b"=".join(x) for x in fields)
        header_value = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = dkim.RE_BTAG.sub(b"\\1", header_value)  # RFC 6376 3.7: b= empty
        h = hashlib.sha256()
        headers = canon_policy.canonicalize_headers(self.headers)
        self.signed_headers = dkim.hash_headers(h, canon_policy, headers, include_headers,
                                                (header_name, b" " + header_value),
                                                dict(fields))
        signature = self._key.sign(h.digest(), padding.PKCS1v15(),
                                   Prehashed(hashes.SHA256()))
        fields = [(b"b", base64.b64encode(signature)) if name == b"b" else (name, value)
                  for name, value in fields]
        header_value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
        folded: bytes = dkim.fold(header_value, namelen=len(header_name), linesep=self.linesep)
        return folded


def sign(message: bytes, domain: str, data_dir: Path) -> bytes:
    """The DKIM-Signature field (CRLF-terminated) to put at the top of `message`, signed
    with `domain`'s current key: rsa-sha256, relaxed/relaxed (RFC 6376 3.4), d=`domain`.
    Returns b"" when `domain` has no key; DKIMError when the message has no From field
    (RFC 6376 5.4: From MUST be signed) or the key cannot be read."""
    key = current_key(data_dir, domain)
    if key is None:
        return b""
    fields = _fields_to_sign(message)
    if fields.count(b"from") < 2:
        raise DKIMError("the message has no From field to sign (RFC 6376 5.4)")
    try:
        signer = _Signer(message, _load_private(key.path))
        signature: bytes = signer.sign(
            key.selector.encode("ascii"), key.domain.encode("ascii"), _read_pem(key.path),
            canonicalize=(b"relaxed", b"relaxed"), include_headers=fields)
    except dkim.DKIMException as exc:
        raise DKIMError(f"cannot sign for {key.domain}: {exc}") from None
    except OSError as exc:
        raise DKIMError(f"cannot read DKIM key {key.path}: {exc}") from None
    return signature
