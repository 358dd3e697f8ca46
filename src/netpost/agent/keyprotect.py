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
import os

from netpost.agent import AgentError
from netpost.agent.rfc4880 import (
    AES_KEY_SIZES,
    HASHES,
    TAG_SECRET_KEY,
    TAG_SECRET_SUBKEY,
    FormatError,
    cfb_decrypt,
    cfb_encrypt,
    header,
    packets,
    public_fields,
    s2k_count,
    s2k_key,
)

S2K_USAGE_SHA1, S2K_USAGE_CHECKSUM = 254, 255
SYM_AES256 = 9
S2K_SIMPLE, S2K_SALTED, S2K_ITERATED_SALTED = 0, 1, 3
HASH_SHA256 = 8
COUNT_OCTET = 0xFF  # 65,011,712 octets hashed: the most RFC 4880 can say, Sequoia's choice


def _protect_body(body: bytes, passphrase: bytes) -> bytes:
    _, at = public_fields(body)
    if at >= len(body):
        raise FormatError("truncated key packet")
    if body[at] != 0:
        raise FormatError("the secret key is already protected")
    secret, checksum = body[at + 1:-2], body[-2:]
    if len(secret) == 0 or sum(secret) & 0xFFFF != int.from_bytes(checksum, "big"):
        raise FormatError("the secret key material's checksum does not match")
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
        secret, checksum = body[at + 1:-2], body[-2:]
        if sum(secret) & 0xFFFF != int.from_bytes(checksum, "big"):
            raise FormatError("the secret key material's checksum does not match")
        return secret
    if usage not in (S2K_USAGE_SHA1, S2K_USAGE_CHECKSUM):
        raise FormatError(f"secret key protection with S2K usage {usage}")
    if passphrase is None:
        raise FormatError("the secret key is protected and no passphrase was given")
    at += 1
    if at + 3 > len(body):
        raise FormatError("truncated key packet")
    sym, kind, hash_id = body[at], body[at + 1], body[at + 2]
    at += 3
    if sym not in AES_KEY_SIZES:
        raise FormatError(f"secret key protection with symmetric algorithm {sym}")
    if hash_id not in HASHES:
        raise FormatError(f"S2K hash algorithm {hash_id}")
    salt, count = b"", 0
    if kind in (S2K_SALTED, S2K_ITERATED_SALTED):
        salt, at = body[at:at + 8], at + 8
        if kind == S2K_ITERATED_SALTED:
            count, at = s2k_count(body[at]), at + 1
    elif kind != S2K_SIMPLE:
        raise FormatError(f"S2K specifier {kind}")
    iv, sealed = body[at:at + 16], body[at + 16:]
    if len(iv) != 16 or not sealed:
        raise FormatError("truncated key packet")
    key = s2k_key(passphrase.encode("utf-8"), salt, count, AES_KEY_SIZES[sym],
                  HASHES[hash_id])
    plain = cfb_decrypt(key, iv, sealed)
    if usage == S2K_USAGE_SHA1:
        secret, check = plain[:-20], plain[-20:]
        if hashlib.sha1(secret).digest() != check:
            raise FormatError("wrong passphrase")
    else:
        secret, check = plain[:-2], plain[-2:]
        if sum(secret) & 0xFFFF != int.from_bytes(check, "big"):
            raise FormatError("wrong passphrase")
    return secret
