"""Network Time Security for NTP (RFC 8915 §5-6): cookies, and the authenticated exchange.

Pure code apart from the random nonces: the cookie keys are handed in (`CookieKeys`, kept on
disk by `ntp/keys.py`), the request is a decoded `NTPPacket` with its octets.

A cookie (RFC 8915 §6 leaves its format to the server) is
    key id (4) || nonce (16) || AES-SIV-CMAC-256(server key, C2S key || S2C key; nonce)
so any key still kept opens it, and nothing but this server can read it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from netpost.ntp.packet import (
    HEADER_SIZE,
    ExtensionField,
    ExtensionType,
    NTPPacket,
    NTPParseError,
    encode_header,
)

AEAD_AES_SIV_CMAC_256 = 15  # RFC 8915 §5.1 / IANA AEAD registry (RFC 5297)
KEY_SIZE = 32  # AES-SIV-CMAC-256 keys (C2S, S2C, the server's cookie keys)
NONCE_SIZE = 16
COOKIE_SIZE = 4 + NONCE_SIZE + 16 + 2 * KEY_SIZE  # key id, nonce, SIV tag, the two keys
MIN_UNIQUE_ID_SIZE = 32  # RFC 8915 §5.3
MAX_COOKIES = 8  # RFC 8915 §4: the NTS-KE server sends eight
AUTHENTICATOR_HEAD = struct.Struct("!HH")  # nonce length, ciphertext length (RFC 8915 §5.6)


@dataclass(frozen=True)
class CookieKey:
    key_id: int
    key: bytes
    created: float  # Unix time


class CookieKeys:
    """The server's cookie keys, newest first: cookies are made with the newest and opened
    with any kept (so cookies made before a rotation still work, RFC 8915 §6)."""

    def __init__(self, keys: Sequence[CookieKey]) -> None:
        if not keys:
            raise ValueError("at least one cookie key is needed")
        self.keys = list(keys)
        self._by_id = {k.key_id: AESSIV(k.key) for k in self.keys}

    @property
    def current(self) -> CookieKey:
        return self.keys[0]

    def make_cookie(self, c2s: bytes, s2c: bytes) -> bytes:
        key = self.current
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._by_id[key.key_id].encrypt(c2s + s2c, [nonce])
        return struct.pack("!I", key.key_id) + nonce + sealed

    def open_cookie(self, cookie: bytes) -> tuple[bytes, bytes] | None:
        """(C2S, S2C) from a cookie, or None if no kept key opens it."""
        if len(cookie) != COOKIE_SIZE:
            return None
        aead = self._by_id.get(struct.unpack_from("!I", cookie)[0])
        if aead is None:
            return None
        nonce = cookie[4:4 + NONCE_SIZE]
        try:
            keys = aead.decrypt(cookie[4 + NONCE_SIZE:], [nonce])
        except InvalidTag:
            return None
        return keys[:KEY_SIZE], keys[KEY_SIZE:]


@dataclass(frozen=True)
class NTSRequest:
    """An authenticated NTS request: the keys its cookie held and what to echo."""

    unique_id: ExtensionField
    c2s: bytes
    s2c: bytes
    cookies_wanted: int  # 1 + the cookie placeholders (RFC 8915 §5.5)


@dataclass(frozen=True)
class NTSReject:
    """A request that carried NTS fields but failed: answer with an NTS NAK (RFC 8915 §5.7)
    when the unique identifier is known, else drop."""

    reason: str
    unique_id: ExtensionField | None


def is_nts(packet: NTPPacket) -> bool:
    return any(ef.field_type == ExtensionType.NTS_COOKIE for ef in packet.extensions)


def check_request(packet: NTPPacket, data: bytes, keys: CookieKeys) -> NTSRequest | NTSReject:
    """RFC 8915 §5.7: the server's checks of an NTS-protected request."""
    unique_id: ExtensionField | None = None
    cookie: bytes | None = None
    placeholders = 0
    offset = HEADER_SIZE
    for index, ef in enumerate(packet.extensions):
        kind = ef.field_type
        if kind == ExtensionType.UNIQUE_IDENTIFIER:
            if unique_id is not None or len(ef.value) < MIN_UNIQUE_ID_SIZE:
                return NTSReject("bad unique identifier", None)
            unique_id = ef
        elif kind == ExtensionType.NTS_COOKIE:
            if cookie is not None:
                return NTSReject("more than one cookie", unique_id)
            cookie = ef.value
        elif kind == ExtensionType.NTS_COOKIE_PLACEHOLDER:
            placeholders += 1
        elif kind == ExtensionType.NTS_AUTHENTICATOR:
            if index != len(packet.extensions) - 1 or packet.mac:
                return NTSReject("fields after the authenticator", unique_id)
            if unique_id is None or cookie is None:
                return NTSReject("no unique identifier or cookie", unique_id)
            opened = keys.open_cookie(cookie)
            if opened is None:
                return NTSReject("cookie not valid", unique_id)
            c2s, s2c = opened
            try:
                nonce, ciphertext = _authenticator_parts(ef.value)
                AESSIV(c2s).decrypt(ciphertext, [data[:offset], nonce])
            except (NTPParseError, InvalidTag, ValueError):
                return NTSReject("authenticator does not verify", unique_id)
            return NTSRequest(unique_id, c2s, s2c, min(1 + placeholders, MAX_COOKIES))
        # RFC 7822 §3: other fields are ignored (but covered by the authenticator).
        offset += 4 + len(ef.value)
    return NTSReject("no authenticator", unique_id)


def _authenticator_parts(body: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext) of an NTS Authenticator field's body (RFC 8915 §5.6)."""
    if len(body) < AUTHENTICATOR_HEAD.size:
        raise NTPParseError("authenticator too short")
    nonce_len, ct_len = AUTHENTICATOR_HEAD.unpack_from(body)
    nonce_end = 4 + nonce_len + (-nonce_len % 4)
    if nonce_len < NONCE_SIZE or ct_len < 16 or nonce_end + ct_len > len(body):
        raise NTPParseError("authenticator lengths do not fit")
    return body[4:4 + nonce_len], body[nonce_end:nonce_end + ct_len]


def authenticator(key: bytes, associated: bytes, plaintext: bytes) -> ExtensionField:
    """An NTS Authenticator and Encrypted Extension Fields field over `associated` (the
    packet so far), encrypting `plaintext` (encoded extension fields)."""
    nonce = os.urandom(NONCE_SIZE)
    ciphertext = AESSIV(key).encrypt(plaintext, [associated, nonce])
    body = (AUTHENTICATOR_HEAD.pack(len(nonce), len(ciphertext)) + nonce + ciphertext
            + bytes(-len(ciphertext) % 4))
    return ExtensionField(ExtensionType.NTS_AUTHENTICATOR, body)


def response_size(unique_id: ExtensionField, cookies: int) -> int:
    """Octets of an NTS response with `cookies` new cookies (fixed-size cookies)."""
    cookie_fields = cookies * (4 + COOKIE_SIZE)
    return HEADER_SIZE + 4 + len(unique_id.value) + 4 + 4 + NONCE_SIZE + 16 + cookie_fields


def seal_response(header: NTPPacket, request: NTSRequest, keys: CookieKeys,
                  limit: int) -> bytes | None:
    """RFC 8915 §5.7: the response's octets: `header` (its extensions ignored), the unique
    identifier echoed, and an authenticator encrypting fresh cookies, as many as were asked
    for that keep the response within `limit` octets (no amplification); None when not even
    one without cookies fits."""
    cookies = request.cookies_wanted
    while cookies and response_size(request.unique_id, cookies) > limit:
        cookies -= 1
    if response_size(request.unique_id, cookies) > limit:
        return None
    head = encode_header(header) + request.unique_id.encode()
    fresh = b"".join(
        ExtensionField(ExtensionType.NTS_COOKIE, keys.make_cookie(request.c2s, request.s2c))
        .encode() for _ in range(cookies))
    return head + authenticator(request.s2c, head, fresh).encode()


# -- the client's side (RFC 8915 §5.7), for an NTS client and the tests ------------------------

def client_request(header: NTPPacket, c2s: bytes, cookie: bytes, placeholders: int = 0,
                   unique_id: bytes | None = None) -> bytes:
    """An NTS-protected request: `header`, a unique identifier, the cookie, placeholders
    as long as the cookie, and the authenticator over them (nothing encrypted)."""
    uid = ExtensionField(ExtensionType.UNIQUE_IDENTIFIER,
                         unique_id if unique_id is not None else os.urandom(32))
    fields = [uid, ExtensionField(ExtensionType.NTS_COOKIE, cookie)]
    fields += [ExtensionField(ExtensionType.NTS_COOKIE_PLACEHOLDER, bytes(len(cookie)))
               for _ in range(placeholders)]
    head = encode_header(header) + b"".join(f.encode() for f in fields)
    return head + authenticator(c2s, head, b"").encode()


def open_response(data: bytes, packet: NTPPacket, s2c: bytes, unique_id: bytes) -> list[bytes]:
    """The new cookies of an NTS response; ValueError when it is not authentic or not the
    answer to the request with `unique_id`."""
    offset = HEADER_SIZE
    seen_uid = False
    for ef in packet.extensions:
        if ef.field_type == ExtensionType.UNIQUE_IDENTIFIER:
            seen_uid = ef.value == unique_id
        elif ef.field_type == ExtensionType.NTS_AUTHENTICATOR:
            if not seen_uid:
                raise ValueError("unique identifier missing or wrong")
            try:
                nonce, ciphertext = _authenticator_parts(ef.value)
                plaintext = AESSIV(s2c).decrypt(ciphertext, [data[:offset], nonce])
            except (NTPParseError, InvalidTag) as exc:
                raise ValueError(f"authenticator does not verify: {exc!r}") from None
            return _cookies_in(plaintext)
        offset += 4 + len(ef.value)
    raise ValueError("no authenticator")


def _cookies_in(plaintext: bytes) -> list[bytes]:
    cookies = []
    pos = 0
    while pos + 4 <= len(plaintext):
        kind, length = struct.unpack_from("!HH", plaintext, pos)
        if length < 4 or pos + length > len(plaintext):
            raise ValueError("bad encrypted extension field")
        if kind == ExtensionType.NTS_COOKIE:
            cookies.append(plaintext[pos + 4:pos + length])
        pos += length
    return cookies
