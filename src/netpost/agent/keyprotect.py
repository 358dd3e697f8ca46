"""Passphrase protection of OpenPGP v4 secret keys (RFC 4880 5.5.3, 3.7.1.3), which
pysequoia cannot apply to the keys it generates (it can use protected keys, not make them).

Only the secret key material changes: each secret (sub)key packet's cleartext secret fields
become "S2K usage 254": AES-256 in CFB mode under a key derived from the passphrase by the
iterated and salted S2K with SHA-256, the cleartext followed by its SHA-1 hash (5.5.3).
The public parts, and so every self-signature over them, are untouched and copied byte for
byte: nothing is signed here. This is the form GnuPG 2.2, sq and Sequoia (pysequoia) read.

The secret fields are not interpreted: they are the octets between the S2K usage octet and
the two-octet checksum, whatever the algorithm. The public fields are walked only to find
where they end.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from netpost.agent import AgentError

TAG_SECRET_KEY, TAG_SECRET_SUBKEY = 5, 7
S2K_USAGE_SHA1 = 254
SYM_AES256 = 9
S2K_ITERATED_SALTED = 3
HASH_SHA256 = 8
COUNT_OCTET = 0xFF  # 65,011,712 octets hashed: the most RFC 4880 can say, Sequoia's choice

# Public key fields by algorithm (RFC 4880 5.5.2, RFC 6637 9, RFC 9580 5.5.5): "m" an MPI,
# "o" a length-prefixed OID, "k" ECDH's length-prefixed KDF parameters, a number that many
# fixed octets.
PUBLIC_FIELDS: dict[int, tuple[str | int, ...]] = {
    1: ("m", "m"), 2: ("m", "m"), 3: ("m", "m"),  # RSA: n, e
    16: ("m", "m", "m"),  # Elgamal: p, g, y
    17: ("m", "m", "m", "m"),  # DSA: p, q, g, y
    18: ("o", "m", "k"),  # ECDH
    19: ("o", "m"),  # ECDSA
    22: ("o", "m"),  # EdDSA (legacy)
    25: (32,), 26: (56,), 27: (32,), 28: (57,),  # X25519, X448, Ed25519, Ed448
}


def s2k_count(octet: int) -> int:
    """The number of octets the iterated S2K hashes (RFC 4880 3.7.1.3)."""
    return (16 + (octet & 15)) << ((octet >> 4) + 6)


def s2k_key(passphrase: bytes, salt: bytes, count: int, size: int) -> bytes:
    """Iterated and salted S2K with SHA-256 (RFC 4880 3.7.1.3): salt and passphrase
    repeated to `count` octets (at least once whole); more key than one hash gives comes
    from further contexts preloaded with one more zero octet each (3.7.1.1)."""
    unit = salt + passphrase
    total = max(count, len(unit))
    block = unit * max(1, (1 << 20) // len(unit))
    out = b""
    for zeros in range(size):
        if len(out) >= size:
            break
        h = hashlib.sha256(b"\0" * zeros)
        left = total
        while left >= len(block):
            h.update(block)
            left -= len(block)
        h.update((unit * (left // len(unit) + 1))[:left])
        out += h.digest()
    return out[:size]


def cfb_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES in full-block CFB mode (NIST SP 800-38A 6.3; RFC 4880 13.9 without its resync),
    from the block cipher itself: `cryptography` has moved CFB to its "decrepit" corner."""
    block = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    out = bytearray()
    feedback = iv
    for at in range(0, len(data), 16):
        chunk = data[at:at + 16]
        mask = block.update(feedback)
        sealed = bytes(a ^ b for a, b in zip(chunk, mask, strict=False))
        out += sealed
        feedback = sealed
    return bytes(out)


def _mpi_end(body: bytes, at: int) -> int:
    if at + 2 > len(body):
        raise ValueError("truncated MPI")
    bits = int.from_bytes(body[at:at + 2], "big")
    return at + 2 + (bits + 7) // 8


def _public_end(body: bytes) -> int:
    """Where the public fields of a v4 key packet body end (the S2K usage octet)."""
    if not body or body[0] != 4:
        raise ValueError(f"key version {body[0] if body else '?'} (only v4 keys)")
    if len(body) < 6:
        raise ValueError("truncated key packet")
    fields = PUBLIC_FIELDS.get(body[5])
    if fields is None:
        raise ValueError(f"public key algorithm {body[5]}")
    at = 6
    for kind in fields:
        if isinstance(kind, int):
            at += kind
        elif kind == "m":
            at = _mpi_end(body, at)
        else:  # "o" and "k": one length octet, then that many
            if at >= len(body):
                raise ValueError("truncated key packet")
            at += 1 + body[at]
    if at >= len(body):
        raise ValueError("truncated key packet")
    return at


def _protect_body(body: bytes, passphrase: bytes) -> bytes:
    at = _public_end(body)
    if body[at] != 0:
        raise ValueError("the secret key is already protected")
    secret, checksum = body[at + 1:-2], body[-2:]
    if len(secret) == 0 or sum(secret) & 0xFFFF != int.from_bytes(checksum, "big"):
        raise ValueError("the secret key material's checksum does not match")
    salt, iv = os.urandom(8), os.urandom(16)
    key = s2k_key(passphrase, salt, s2k_count(COUNT_OCTET), 32)
    sealed = cfb_encrypt(key, iv, secret + hashlib.sha1(secret).digest())
    return (body[:at] + bytes([S2K_USAGE_SHA1, SYM_AES256, S2K_ITERATED_SALTED, HASH_SHA256])
            + salt + bytes([COUNT_OCTET]) + iv + sealed)


def _header(tag: int, length: int) -> bytes:
    """A new-format packet header (RFC 4880 4.2.2)."""
    if length < 192:
        size = bytes([length])
    elif length < 8384:
        size = bytes([((length - 192) >> 8) + 192, (length - 192) & 0xFF])
    else:
        size = b"\xff" + length.to_bytes(4, "big")
    return bytes([0xC0 | tag]) + size


def packets(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(tag, the packet as it was, its body) for each packet of binary OpenPGP data."""
    out = []
    at = 0
    while at < len(data):
        first = data[at]
        if not first & 0x80:
            raise ValueError("not OpenPGP packet data")
        if first & 0x40:  # new format
            tag = first & 0x3F
            if at + 1 >= len(data):
                raise ValueError("truncated packet header")
            o1 = data[at + 1]
            if o1 < 192:
                head, length = 2, o1
            elif o1 < 224:
                if at + 2 >= len(data):
                    raise ValueError("truncated packet header")
                head, length = 3, ((o1 - 192) << 8) + data[at + 2] + 192
            elif o1 == 255:
                head, length = 6, int.from_bytes(data[at + 2:at + 6], "big")
            else:
                raise ValueError("partial body length in a key")
        else:  # old format
            tag = (first >> 2) & 0x0F
            kind = first & 3
            if kind == 3:
                raise ValueError("indeterminate length in a key")
            n = 1 << kind
            head, length = 1 + n, int.from_bytes(data[at + 1:at + 1 + n], "big")
        end = at + head + length
        if end > len(data):
            raise ValueError("truncated packet")
        out.append((tag, data[at:end], data[at + head:end]))
        at = end
    return out


def protect(tsk: bytes, passphrase: str) -> bytes:
    """The binary transferable secret key `tsk` (unprotected) with every secret key and
    subkey protected by `passphrase`; all other packets as they were."""
    if not passphrase:
        raise AgentError("an empty passphrase protects nothing")
    secret = passphrase.encode("utf-8")
    out = []
    count = 0
    try:
        for tag, raw, body in packets(tsk):
            if tag in (TAG_SECRET_KEY, TAG_SECRET_SUBKEY):
                sealed = _protect_body(body, secret)
                out.append(_header(tag, len(sealed)) + sealed)
                count += 1
            else:
                out.append(raw)
    except ValueError as exc:
        raise AgentError(f"cannot protect the secret key: {exc}") from None
    if count == 0:
        raise AgentError("cannot protect the secret key: it has no secret key material")
    return b"".join(out)
