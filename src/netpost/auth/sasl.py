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


class SASLBase64Error(SASLError):
    """The client's SASL line is not valid base64 (SMTP answers it with its own code)."""


class SASLCancelled(Exception):
    """The client sent "*" instead of a response: the exchange is cancelled."""


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
        raise SASLBase64Error("invalid base64 in SASL data") from exc


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


class SASLExchange:
    """One PLAIN or LOGIN exchange, sans-I/O; the protocol engine wraps it in its own replies.

        exchange = SASLExchange("LOGIN", initial_response)  # None: the command had none
        step = exchange.start()
        while isinstance(step, str):  # a challenge: send it base64 (SMTP "334 ", POP3 "+ ")
            step = exchange.step(next_client_line)
        credentials = step

    start() and step() return either the next challenge (base64 text, "" for PLAIN's empty
    one) or the final Credentials.  They raise SASLBase64Error for a line that is not
    base64, SASLError for data of the wrong shape and (step() only) SASLCancelled for "*".
    Any of those, or Credentials, ends the exchange.

    One rule for both protocols: the identity must not be empty, for PLAIN (RFC 4616
    section 2 requires a non-empty authcid) and for LOGIN's username alike.
    """

    def __init__(self, mechanism: str, initial_response: str | bytes | None = None) -> None:
        mechanism = mechanism.upper()
        if mechanism not in MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._initial = initial_response  # cleared by start(): it may hold a password
        self.started = False
        self.done = False
        self._username: str | None = None  # LOGIN: set once the username arrived

    def start(self) -> str | Credentials:
        """Begin the exchange, consuming the command's initial response if it had one.

        RFC 4954 section 4 / RFC 5034 section 4: "=" is an empty initial response; "*" is
        no cancellation here, just bad base64.
        """
        if self.started:
            raise RuntimeError("SASL exchange already started")
        self.started = True
        initial, self._initial = self._initial, None
        if initial is None:
            return "" if self.mechanism == "PLAIN" else LOGIN_USERNAME_CHALLENGE
        return self._consume(initial)

    def step(self, line: str | bytes) -> str | Credentials:
        """The client's answer to the last challenge (a line without its line ending)."""
        if not self.started or self.done:
            raise RuntimeError("no SASL challenge is outstanding")
        raw = line.encode("ascii", "replace") if isinstance(line, str) else line
        if raw.strip() == b"*":
            self.done = True
            raise SASLCancelled
        return self._consume(raw)

    def _consume(self, response: str | bytes) -> str | Credentials:
        try:
            data = b64decode(response)
            if self.mechanism == "PLAIN":
                credentials = parse_plain(data)
            elif self._username is None:
                username = decode_utf8(data, "username")
                if not username:
                    raise SASLError("empty username")
                self._username = username
                return LOGIN_PASSWORD_CHALLENGE
            else:
                credentials = Credentials("LOGIN", self._username, decode_utf8(data, "password"))
        except SASLError:
            self.done = True
            raise
        self.done = True
        return credentials
