"""SASL mechanisms PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login), sans-I/O.

Shared by SMTP AUTH (RFC 4954) and POP3 AUTH (RFC 5034). Both protocols carry SASL data
base64-encoded; "*" from the client cancels an exchange; "=" is an empty initial response.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

MECHANISMS = ("PLAIN", "LOGIN")


class SASLError(Exception):
    """The client's SASL data is malformed (bad base64, wrong shape)."""


@dataclass(frozen=True)
class Credentials:
    mechanism: str
    authcid: str  # the identity whose password it is
    password: str
    authzid: str = ""  # identity to act as; empty means the same as authcid


def b64decode(text: str | bytes) -> bytes:
    """Decode a base64 SASL line strictly; "=" means empty (RFC 4954 section 4)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = raw.strip()
    if raw == b"=":
        return b""
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SASLError("invalid base64 in SASL data") from exc


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parse_plain(message: bytes) -> Credentials:
    """RFC 4616 section 2: message = [authzid] NUL authcid NUL passwd, UTF-8."""
    parts = message.split(b"\x00")
    if len(parts) != 3 or not parts[1]:
        raise SASLError("PLAIN data must be authzid NUL authcid NUL password")
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError as exc:
        raise SASLError("PLAIN data is not UTF-8") from exc
    return Credentials("PLAIN", authcid, password, authzid)


def decode_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SASLError(f"{what} is not UTF-8") from exc


# The LOGIN mechanism's two server challenges, base64 of "Username:" and "Password:".
LOGIN_USERNAME_CHALLENGE = b64encode(b"Username:")
LOGIN_PASSWORD_CHALLENGE = b64encode(b"Password:")
