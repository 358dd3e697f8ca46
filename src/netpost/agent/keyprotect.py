"""Passphrase protection of OpenPGP v4 secret keys (RFC 4880 5.5.3, 3.7.1.3), which
pysequoia cannot apply to the keys it generates (it can use protected keys, not make them).

Only the secret key material changes: each secret (sub)key packet's cleartext secret fields
become "S2K usage 254": AES-256 in CFB mode under a key derived from the passphrase by the
iterated and salted S2K with SHA-256, the cleartext followed by its SHA-1 hash (5.5.3).
The public parts, and so every self-signature over them, are untouched and copied byte for
byte: nothing is signed here. This is the form GnuPG 2.2, sq and Sequoia (pysequoia) read.

`secret_fields` is the way back, for the one place netpost needs a secret key's material
itself (`inner.py`); it reads what GnuPG exports too (AES, SHA-1 or SHA-2 S2K).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from netpost.agent import AgentError
from netpost.agent.rfc4880 import (
    AES_KEY_SIZES,
    S2K_ITERATED_SALTED,
    TAG_SECRET_KEY,
    TAG_SECRET_SUBKEY,
    FormatError,
    cfb_decrypt,
    cfb_encrypt,
    checksum16,
    header,
    packets,
    public_fields,
    read_s2k,
    s2k_count,
    s2k_key,
)

S2K_USAGE_SHA1, S2K_USAGE_CHECKSUM = 254, 255
SYM_AES256 = 9
HASH_SHA256 = 8
COUNT_OCTET = 0xFF  # 65,011,712 octets hashed: the most RFC 4880 can say, Sequoia's choice


def _cleartext(body: bytes, at: int) -> bytes:
    """The cleartext secret fields after S2K usage 0 at `at`, their checksum checked."""
    secret, checksum = body[at + 1:-2], body[-2:]
    if len(body) < at + 3 or checksum16(secret) != checksum:
        raise FormatError("the secret key material's checksum does not match")
    return secret


def _protect_body(body: bytes, passphrase: bytes) -> bytes:
    _, at = public_fields(body)
    if at >= len(body):
        raise FormatError("truncated key packet")
    if body[at] != 0:
        raise FormatError("the secret key is already protected")
    secret = _cleartext(body, at)
    if not secret:
        raise FormatError("the secret key packet holds no secret key material")
    salt, iv = os.urandom(8), os.urandom(16)
    key = s2k_key(passphrase, salt, s2k_count(COUNT_OCTET), 32)
    sealed = cfb_encrypt(key, iv, secret + hashlib.sha1(secret).digest())
    return (body[:at] + bytes([S2K_USAGE_SHA1, SYM_AES256, S2K_ITERATED_SALTED, HASH_SHA256])
            + salt + bytes([COUNT_OCTET]) + iv + sealed)


def protect(tsk: bytes, passphrase: str) -> bytes:
    """The binary transferable secret key `tsk` (unprotected) with every secret key and
    subkey protected by `passphrase`; all other packets as they were."""
    if not passphrase:
        raise AgentError("an empty passphrase protects nothing")
    secret = passphrase.encode("utf-8")
    out = []
    count = 0
    try:
        for p in packets(tsk):
            if p.tag in (TAG_SECRET_KEY, TAG_SECRET_SUBKEY):
                sealed = _protect_body(p.body, secret)
                out.append(header(p.tag, len(sealed)) + sealed)
                count += 1
            else:
                out.append(p.raw)
    except FormatError as exc:
        raise AgentError(f"cannot protect the secret key: {exc}") from None
    if count == 0:
        raise AgentError("cannot protect the secret key: it has no secret key material")
    return b"".join(out)


def secret_fields(body: bytes, passphrase: str | None) -> bytes:
    """The cleartext secret fields (their MPIs, without checksum) of a v4 secret key packet
    body, unprotected with `passphrase` when they are protected. FormatError for a wrong
    passphrase and for what this does not read (e.g. RFC 9580's AEAD protection, CAST5)."""
    _, at = public_fields(body)
    if at >= len(body):
        raise FormatError("truncated key packet")
    usage = body[at]
    if usage == 0:
        return _cleartext(body, at)
    if usage not in (S2K_USAGE_SHA1, S2K_USAGE_CHECKSUM):
        raise FormatError(f"secret key protection with S2K usage {usage}")
    if at + 2 > len(body):
        raise FormatError("truncated key packet")
    sym = body[at + 1]
    if sym not in AES_KEY_SIZES:
        raise FormatError(f"secret key protection with symmetric algorithm {sym}")
    s2k, at = read_s2k(body, at + 2)
    if passphrase is None:
        raise FormatError("the secret key is protected and no passphrase was given")
    iv, sealed = body[at:at + 16], body[at + 16:]
    check_size = 20 if usage == S2K_USAGE_SHA1 else 2
    if len(iv) != 16 or len(sealed) <= check_size:
        raise FormatError("truncated key packet")
    plain = cfb_decrypt(s2k.key(passphrase.encode("utf-8"), AES_KEY_SIZES[sym]), iv, sealed)
    secret, check = plain[:-check_size], plain[-check_size:]
    expected = hashlib.sha1(secret).digest() if usage == S2K_USAGE_SHA1 else checksum16(secret)
    if not hmac.compare_digest(expected, check):
        raise FormatError("wrong passphrase")
    return secret
