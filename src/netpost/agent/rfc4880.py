"""The few OpenPGP (RFC 4880) building blocks netpost handles itself, beside pysequoia: packet
framing (4.2), MPIs (3.2), v4 key packets' public fields (5.5.2) and fingerprints (12.2),
string-to-key (3.7) and OpenPGP's CFB mode (13.9). Cryptographic primitives come from the
`cryptography` package; nothing here signs or verifies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

TAG_PKESK, TAG_SECRET_KEY, TAG_COMPRESSED, TAG_SECRET_SUBKEY = 1, 5, 8, 7
TAG_MARKER, TAG_SEIPD = 10, 18

# symmetric algorithm ID -> key size (AES only: what GnuPG, Sequoia and netpost use)
AES_KEY_SIZES = {7: 16, 8: 24, 9: 32}
HASHES = {1: "md5", 2: "sha1", 3: "ripemd160", 8: "sha256", 9: "sha384", 10: "sha512",
          11: "sha224"}

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


class FormatError(ValueError):
    """Input this module cannot take apart (malformed, or a kind it does not handle)."""


@dataclass
class Packet:
    tag: int
    raw: bytes  # the whole packet as it was
    body: bytes  # its body, partial lengths joined


def _length(data: bytes, at: int) -> tuple[int, int, bool]:
    """A new-format length at `at`: (octets it takes, length, whether partial)."""
    if at >= len(data):
        raise FormatError("truncated packet header")
    o1 = data[at]
    if o1 < 192:
        return 1, o1, False
    if o1 < 224:
        if at + 1 >= len(data):
            raise FormatError("truncated packet header")
        return 2, ((o1 - 192) << 8) + data[at + 1] + 192, False
    if o1 == 255:
        if at + 5 > len(data):
            raise FormatError("truncated packet header")
        return 5, int.from_bytes(data[at + 1:at + 5], "big"), False
    return 1, 1 << (o1 & 0x1F), True


def packets(data: bytes, partial: bool = False) -> list[Packet]:
    """The packets of binary OpenPGP data; with `partial`, new-format partial body lengths
    and old-format indeterminate lengths (as messages use) are taken too."""
    out = []
    at = 0
    while at < len(data):
        start, first = at, data[at]
        if not first & 0x80:
            raise FormatError("not OpenPGP packet data")
        if first & 0x40:  # new format
            tag = first & 0x3F
            at += 1
            joined = bytearray()  # partial chunks can be one octet each: no list of them
            while True:
                size, length, more = _length(data, at)
                if more and not partial:
                    raise FormatError("partial body length where none may be")
                at += size
                if at + length > len(data):
                    raise FormatError("truncated packet")
                joined += data[at:at + length]
                at += length
                if not more:
                    break
            body = bytes(joined)
        else:  # old format
            tag = (first >> 2) & 0x0F
            kind = first & 3
            if kind == 3:
                if not partial:
                    raise FormatError("indeterminate length where none may be")
                body, at = data[at + 1:], len(data)
            else:
                n = 1 << kind
                if at + 1 + n > len(data):
                    raise FormatError("truncated packet header")
                length = int.from_bytes(data[at + 1:at + 1 + n], "big")
                at += 1 + n
                if at + length > len(data):
                    raise FormatError("truncated packet")
                body, at = data[at:at + length], at + length
        out.append(Packet(tag, data[start:at], body))
    return out


def pkesk_v3(body: bytes) -> tuple[bytes, int, bytes] | None:
    """(key ID, public key algorithm, encrypted session key) of a version 3 PKESK body
    (5.1; a zero key ID is a wildcard), or None for another version or a truncated one."""
    if len(body) < 10 or body[0] != 3:
        return None
    return body[1:9], body[9], body[10:]


def header(tag: int, length: int) -> bytes:
    """A new-format packet header (RFC 4880 4.2.2)."""
    if length < 192:
        size = bytes([length])
    elif length < 8384:
        size = bytes([((length - 192) >> 8) + 192, (length - 192) & 0xFF])
    else:
        size = b"\xff" + length.to_bytes(4, "big")
    return bytes([0xC0 | tag]) + size


def read_mpi(data: bytes, at: int) -> tuple[bytes, int]:
    """(the MPI's value octets, where the next field starts)."""
    if at + 2 > len(data):
        raise FormatError("truncated MPI")
    end = at + 2 + (int.from_bytes(data[at:at + 2], "big") + 7) // 8
    if end > len(data):
        raise FormatError("truncated MPI")
    return data[at + 2:end], end


def public_fields(body: bytes) -> tuple[list[bytes], int]:
    """The public fields of a v4 key packet body (MPIs as value octets, OIDs and KDF
    parameters without their length octet), and where they end."""
    if not body or body[0] != 4:
        raise FormatError(f"key version {body[0] if body else '?'} (only v4 keys)")
    if len(body) < 6:
        raise FormatError("truncated key packet")
    kinds = PUBLIC_FIELDS.get(body[5])
    if kinds is None:
        raise FormatError(f"public key algorithm {body[5]}")
    at = 6
    fields = []
    for kind in kinds:
        if isinstance(kind, int):
            if at + kind > len(body):
                raise FormatError("truncated key packet")
            fields.append(body[at:at + kind])
            at += kind
        elif kind == "m":
            value, at = read_mpi(body, at)
            fields.append(value)
        else:  # "o" and "k": one length octet, then that many
            if at >= len(body) or at + 1 + body[at] > len(body):
                raise FormatError("truncated key packet")
            fields.append(body[at + 1:at + 1 + body[at]])
            at += 1 + body[at]
    return fields, at


def fingerprint(body: bytes) -> bytes:
    """The v4 fingerprint of the key whose (public or secret) packet body this is."""
    _, end = public_fields(body)
    return hashlib.sha1(b"\x99" + end.to_bytes(2, "big") + body[:end]).digest()


def s2k_count(octet: int) -> int:
    """The number of octets the iterated S2K hashes (RFC 4880 3.7.1.3)."""
    return (16 + (octet & 15)) << ((octet >> 4) + 6)


S2K_SIMPLE, S2K_SALTED, S2K_ITERATED_SALTED = 0, 1, 3


@dataclass
class S2K:
    """A string-to-key specifier (RFC 4880 3.7.1): hash, salt (empty for the simple kind)
    and the octet count (0 unless iterated)."""

    hash_name: str
    salt: bytes
    count: int

    def key(self, passphrase: bytes, size: int) -> bytes:
        return s2k_key(passphrase, self.salt, self.count, size, self.hash_name)


def read_s2k(data: bytes, at: int) -> tuple[S2K, int]:
    """The S2K specifier at `at` and where the next field starts; FormatError for a kind
    or hash this does not take (GnuPG's 101 "no secret key here" among them)."""
    if at + 2 > len(data):
        raise FormatError("truncated S2K specifier")
    kind, hash_id = data[at], data[at + 1]
    name = HASHES.get(hash_id)
    if name is None or name not in hashlib.algorithms_available:
        raise FormatError(f"S2K hash algorithm {hash_id}")
    at += 2
    if kind == S2K_SIMPLE:
        return S2K(name, b"", 0), at
    if kind not in (S2K_SALTED, S2K_ITERATED_SALTED):
        raise FormatError(f"S2K specifier {kind}")
    end = at + 8 + (kind == S2K_ITERATED_SALTED)
    if end > len(data):
        raise FormatError("truncated S2K specifier")
    count = s2k_count(data[at + 8]) if kind == S2K_ITERATED_SALTED else 0
    return S2K(name, data[at:at + 8], count), end


def s2k_key(passphrase: bytes, salt: bytes, count: int, size: int,
            hash_name: str = "sha256") -> bytes:
    """String-to-key (RFC 4880 3.7.1): salt and passphrase hashed, repeated to `count`
    octets when iterated (at least once whole; count 0 for the simple and salted kinds);
    more key than one hash gives comes from contexts preloaded with zero octets."""
    if not 0 <= count <= s2k_count(0xFF) or not 0 < size <= 64:
        raise FormatError("S2K count or key size out of range")
    unit = salt + passphrase
    total = max(count, len(unit)) if unit else 0  # nothing to repeat: hashed once, empty
    block = unit * max(1, (1 << 20) // max(1, len(unit)))
    out = b""
    zeros = 0
    try:
        while len(out) < size:
            h = hashlib.new(hash_name, b"\0" * zeros)
            left = total
            while left >= len(block) > 0:
                h.update(block)
                left -= len(block)
            if left:
                h.update((unit * (left // len(unit) + 1))[:left])
            out += h.digest()
            zeros += 1
    except ValueError:  # a hash this OpenSSL does not offer (RIPEMD-160 on OpenSSL 3)
        raise FormatError(f"S2K hash algorithm {hash_name}") from None
    return out[:size]


def checksum16(data: bytes) -> bytes:
    """The two-octet checksum RFC 4880 puts after cleartext secret key material (5.5.3)
    and session keys (5.1): the sum of the octets modulo 65536."""
    return (sum(data) & 0xFFFF).to_bytes(2, "big")


def _xor(a: bytes, b: bytes) -> bytes:
    n = min(len(a), len(b))
    return (int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")).to_bytes(n, "big")


def cfb_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES in full-block CFB mode (NIST SP 800-38A 6.3, as RFC 4880 uses it for secret keys
    and, with a zero IV, for SEIPD), from the block cipher: `cryptography` has moved its CFB
    mode to the "decrepit" corner."""
    block = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    out = bytearray()
    feedback = iv
    for at in range(0, len(data), 16):
        sealed = _xor(data[at:at + 16], block.update(feedback))
        out += sealed
        feedback = sealed
    return bytes(out)


def cfb_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """The inverse of cfb_encrypt; every block's mask is known from the ciphertext, so all
    are made in one call."""
    whole = len(data) - len(data) % 16
    feed = iv + data[:whole] if whole < len(data) else iv + data[:max(0, whole - 16)]
    block = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    mask = block.update(feed) + block.finalize()
    return _xor(data, mask)
