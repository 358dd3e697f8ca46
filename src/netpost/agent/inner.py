"""The signed message inside a compressed, encrypted OpenPGP message, so that pysequoia can
check its signature.

GnuPG's `--sign --encrypt` (and sq's default) writes: PKESK, then SEIPD holding compressed
data holding one-pass signature, literal data and signature. pysequoia 0.1.35 decrypts that
but its decrypting verifier refuses a signature under a compression layer ("Unexpected
message structure"), while `pysequoia.verify` checks the same signed message once it is out
of the encryption. This module takes it out: the session key from the PKESK with the
recipient's secret key (RFC 4880 5.1 with RSA, RFC 6637 8 with ECDH on Curve25519 and the
NIST curves), SEIPD version 1 decrypted and its MDC checked (5.13, 5.14), the compressed
data inflated (5.6: ZIP, ZLIB, BZip2) to at most a limit, compressed data inside it refused.
Everything else, SEIPDv2 and AEAD among them, and any malformed input, is a FormatError
(nothing else escapes) and the caller says the signature was not checked. Hostile input is
bounded: each secret key is unlocked once per message, at most MAX_PKESK_TRIES PKESKs are
tried, and the decompressor is never asked for more than the limit.

What is done with the result keeps it honest: pysequoia verifies the signature, and the
content it signs must be exactly the content pysequoia's own decryption produced, so a
mistake here can only make netpost say "NOT verified", never "good".
"""

from __future__ import annotations

import base64
import bz2
import hashlib
import hmac
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import keywrap
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519

from netpost.agent.keyprotect import secret_fields
from netpost.agent.rfc4880 import (
    AES_KEY_SIZES,
    TAG_COMPRESSED,
    TAG_MARKER,
    TAG_PKESK,
    TAG_SECRET_KEY,
    TAG_SECRET_SUBKEY,
    TAG_SEIPD,
    FormatError,
    cfb_decrypt,
    checksum16,
    fingerprint,
    packets,
    pkesk_v3,
    public_fields,
    read_mpi,
)

RSA_ALGOS, ECDH = (1, 2), 18
# RFC 6637 9: the KDF hashes ECDH keys may name (SHA2-256, -384, -512)
ECDH_KDF_HASHES = {8: "sha256", 9: "sha384", 10: "sha512"}
# PKESKs tried in one message: each try is a public key operation on attacker data
MAX_PKESK_TRIES = 64
CURVE25519 = bytes.fromhex("2b060104019755010501")
NIST_CURVES: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("2a8648ce3d030107"): ec.SECP256R1(),
    bytes.fromhex("2b81040022"): ec.SECP384R1(),
    bytes.fromhex("2b81040023"): ec.SECP521R1(),
}


@dataclass
class _Key:
    body: bytes
    algo: int
    fields: list[bytes]
    fpr: bytes

    @property
    def key_id(self) -> bytes:
        return self.fpr[-8:]


def dearmor(data: bytes) -> bytes:
    """Binary OpenPGP data from ASCII armor (RFC 4880 6.2), or `data` when it is binary."""
    if data[:1] and data[0] & 0x80:
        return data
    lines = data.decode("ascii", "replace").splitlines()
    try:
        start = next(i for i, line in enumerate(lines)
                     if line.strip() == "-----BEGIN PGP MESSAGE-----")
        blank = next(i for i in range(start + 1, len(lines)) if not lines[i].strip())
        end = next(i for i in range(blank, len(lines))
                   if lines[i].strip() == "-----END PGP MESSAGE-----")
    except StopIteration:
        raise FormatError("no ASCII-armored OpenPGP message") from None
    text = "".join(line.strip() for line in lines[blank + 1:end]
                   if not (line.startswith("=") and len(line.strip()) == 5))
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise FormatError("damaged ASCII armor") from None


def _unpad_session_key(m: bytes) -> tuple[int, bytes]:
    """(symmetric algorithm, session key) from algorithm || key || checksum (5.1)."""
    if len(m) < 4:
        raise FormatError("malformed session key")
    sym, key, check = m[0], m[1:-2], m[-2:]
    if sym not in AES_KEY_SIZES or len(key) != AES_KEY_SIZES[sym]:
        raise FormatError(f"message encrypted with symmetric algorithm {sym}")
    if not hmac.compare_digest(checksum16(key), check):
        raise FormatError("the session key's checksum does not match")
    return sym, key


def _ecdh_param(oid: bytes, kdf: bytes, fpr: bytes) -> bytes:
    """The KDF's Param (RFC 6637 8): curve OID with its length, public key algorithm,
    the KDF parameters with their length (03 01 hash KEK-algorithm), "Anonymous Sender"
    padded to 20 octets, the recipient (sub)key's v4 fingerprint."""
    return (bytes([len(oid)]) + oid + bytes([ECDH, len(kdf)]) + kdf + b"Anonymous Sender    "
            + fpr)


def _ecdh(key: _Key, secret: bytes, esk: bytes) -> tuple[int, bytes]:
    oid, _, kdf = key.fields
    if len(kdf) != 3 or kdf[0] != 1 or kdf[1] not in ECDH_KDF_HASHES \
            or kdf[2] not in AES_KEY_SIZES:
        raise FormatError("ECDH KDF parameters netpost does not handle")
    ephemeral, at = read_mpi(esk, 0)
    if at >= len(esk) or at + 1 + esk[at] != len(esk):
        raise FormatError("malformed ECDH PKESK")
    wrapped = esk[at + 1:]
    scalar, _ = read_mpi(secret, 0)
    if oid == CURVE25519:
        if len(ephemeral) != 33 or ephemeral[0] != 0x40 or len(scalar) > 32:
            raise FormatError("malformed Curve25519 key or PKESK")
        # OpenPGP stores the Curve25519 secret big-endian, the reverse of X25519's order
        native = scalar.rjust(32, b"\0")[::-1]
        shared = x25519.X25519PrivateKey.from_private_bytes(native).exchange(
            x25519.X25519PublicKey.from_public_bytes(ephemeral[1:]))
    elif oid in NIST_CURVES:
        curve = NIST_CURVES[oid]
        private = ec.derive_private_key(int.from_bytes(scalar, "big"), curve)
        shared = private.exchange(
            ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(curve, ephemeral))
    else:
        raise FormatError("ECDH on a curve netpost does not handle")
    kek = hashlib.new(ECDH_KDF_HASHES[kdf[1]],
                      b"\0\0\0\1" + shared + _ecdh_param(oid, kdf, key.fpr)).digest()
    try:
        m = keywrap.aes_key_unwrap(kek[:AES_KEY_SIZES[kdf[2]]], wrapped)
    except (keywrap.InvalidUnwrap, ValueError):
        raise FormatError("the session key does not unwrap") from None
    pad = m[-1] if m else 0
    if not 1 <= pad <= 8 or m[-pad:] != bytes([pad]) * pad:
        raise FormatError("malformed session key padding")
    return _unpad_session_key(m[:-pad])


def _rsa(key: _Key, secret: bytes, esk: bytes) -> tuple[int, bytes]:
    n, e = (int.from_bytes(v, "big") for v in key.fields)
    values = []
    at = 0
    for _ in range(3):  # d, p, q (u follows: OpenPGP's p^-1 mod q, not needed)
        value, at = read_mpi(secret, at)
        values.append(int.from_bytes(value, "big"))
    d, p, q = values
    if p < 3 or q < 3 or p * q != n:
        raise FormatError("malformed RSA secret key")
    c, at = read_mpi(esk, 0)
    size = (n.bit_length() + 7) // 8
    if at != len(esk) or len(c) > size:
        raise FormatError("malformed RSA PKESK")
    private = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, n)).private_key()
    try:
        m = private.decrypt(c.rjust(size, b"\0"), padding.PKCS1v15())
    except ValueError:
        raise FormatError("the RSA session key does not decrypt") from None
    return _unpad_session_key(m)


def _keys(tsk: bytes) -> list[_Key]:
    out = []
    for p in packets(tsk):
        if p.tag in (TAG_SECRET_KEY, TAG_SECRET_SUBKEY) and len(p.body) > 5 \
                and p.body[0] == 4 and p.body[5] in (*RSA_ALGOS, ECDH):
            fields, _ = public_fields(p.body)
            out.append(_Key(p.body, p.body[5], fields, fingerprint(p.body)))
    return out


def _guarded(open_: Callable[[_Key, bytes, bytes], tuple[int, bytes]], key: _Key,
             secret: bytes, esk: bytes) -> tuple[int, bytes]:
    """open_(key, secret, esk), whatever `cryptography` refuses (a point not on the curve,
    inconsistent RSA numbers, a kind this OpenSSL lacks) a FormatError."""
    try:
        return open_(key, secret, esk)
    except (ValueError, UnsupportedAlgorithm, ArithmeticError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise FormatError(f"the session key does not decrypt ({type(exc).__name__})") \
            from None


def session_key(message: list[bytes], tsk: bytes, passphrase: str | None) -> tuple[int, bytes]:
    """(symmetric algorithm, session key) from the first of the PKESK bodies in `message`
    that a key of `tsk` opens (one whose key ID is its own, or a wildcard). Each secret key
    is unlocked once (its S2K can hash 65 MB), and at most MAX_PKESK_TRIES are tried."""
    keys = _keys(tsk)
    secrets: dict[int, bytes | FormatError] = {}
    last: FormatError = FormatError("no PKESK for a key in the key ring")
    tries = 0
    for body in message:
        pkesk = pkesk_v3(body)
        if pkesk is None:
            continue
        key_id, algo, esk = pkesk
        for n, key in enumerate(keys):
            if key.algo != algo and not (algo in RSA_ALGOS and key.algo in RSA_ALGOS):
                continue
            if key_id not in (key.key_id, b"\0" * 8):
                continue
            if n not in secrets:
                try:
                    secrets[n] = secret_fields(key.body, passphrase)
                except FormatError as exc:
                    secrets[n] = exc
            secret = secrets[n]
            if isinstance(secret, FormatError):
                last = secret
                continue
            tries += 1
            if tries > MAX_PKESK_TRIES:
                raise FormatError(f"more than {MAX_PKESK_TRIES} PKESKs to try")
            try:
                return _guarded(_rsa if key.algo in RSA_ALGOS else _ecdh, key, secret, esk)
            except FormatError as exc:
                last = exc
    raise last


def _inflate(body: bytes, limit: int) -> bytes:
    """The packets a compressed data packet body (5.6) holds, at most `limit` octets of
    them: the decompressor is never asked for more, whatever the algorithm."""
    if limit < 0:
        raise ValueError("negative inflate limit")
    if not body:
        raise FormatError("empty compressed data packet")
    algo, data = body[0], body[1:]
    if algo == 0:
        out = data
    else:
        decompressor: zlib._Decompress | bz2.BZ2Decompressor
        if algo in (1, 2):
            decompressor = zlib.decompressobj(-15 if algo == 1 else 15)
        elif algo == 3:
            decompressor = bz2.BZ2Decompressor()
        else:
            raise FormatError(f"compression algorithm {algo}")
        try:
            # max_length is limit + 1 >= 1: zlib's 0 would mean "no limit"
            out = decompressor.decompress(data, limit + 1)
        except (zlib.error, OSError, EOFError, ValueError):
            raise FormatError("damaged compressed data") from None
    if len(out) > limit:
        raise FormatError("the compressed data inflates beyond the message's size")
    return out


def signed_inner(ciphertext: bytes, tsk: bytes, passphrase: str | None, limit: int) -> bytes:
    """The OpenPGP message inside the compressed data inside `ciphertext` (armored or
    binary, encrypted to a key of `tsk`), at most `limit` octets: normally one-pass
    signature, literal data, signature, for `pysequoia.verify`. Malformed or unsupported
    input of any kind is a FormatError."""
    outer = [p for p in packets(dearmor(ciphertext), partial=True) if p.tag != TAG_MARKER]
    pkesks = [p.body for p in outer if p.tag == TAG_PKESK]
    seipd = [p.body for p in outer if p.tag == TAG_SEIPD]
    if len(seipd) != 1 or not seipd[0]:
        raise FormatError("not one encrypted data packet")
    if seipd[0][0] != 1:
        raise FormatError(f"SEIPD version {seipd[0][0]}")
    _, key = session_key(pkesks, tsk, passphrase)
    # SEIPD: CFB with a zero IV over all of it, no resynchronisation (5.13, 13.9)
    plain = cfb_decrypt(key, b"\0" * 16, seipd[0][1:])
    # the prefix's repeated octets (the "quick check") are not told apart from a bad MDC:
    # one answer for both gives no oracle (RFC 4880 14); the MDC is the check that counts,
    # over prefix, content and the MDC packet's own header, before any content is used
    mdc = hashlib.sha1(plain[:-20]).digest()
    if len(plain) < 16 + 2 + 22 or plain[14:16] != plain[16:18] \
            or plain[-22:-20] != b"\xd3\x14" or not hmac.compare_digest(mdc, plain[-20:]):
        raise FormatError("the message does not decrypt, or its modification detection "
                          "code does not match")
    inner = [p for p in packets(plain[18:-22], partial=True) if p.tag != TAG_MARKER]
    if len(inner) != 1 or inner[0].tag != TAG_COMPRESSED:
        raise FormatError("the encrypted message is not one compressed data packet")
    signed = _inflate(inner[0].body, limit)
    # compressed data inside (nested compression, which GnuPG and sq never write) would be
    # inflated by pysequoia.verify past `limit`: refused here
    if any(p.tag == TAG_COMPRESSED for p in packets(signed, partial=True)):
        raise FormatError("compressed data inside compressed data")
    return signed
