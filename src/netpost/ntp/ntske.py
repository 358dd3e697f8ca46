"""NTS Key Establishment (RFC 8915 §4): the records, and the server's answer to one request.

Pure code: `NTSKEConnection` takes the octets the client sent over TLS and, once the client's
End of Message record has come, says what to send back.  The keys come from the TLS exporter
(RFC 8915 §5.1), which the session (`ntp/ntske_server.py`) reads from the TLS connection.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass

from netpost.ntp.nts import AEAD_AES_SIV_CMAC_256

RECORD_HEADER = struct.Struct("!HH")  # critical bit + record type, body length
CRITICAL = 0x8000
NTPV4 = 0  # RFC 8915 §7.3: the NTS Next Protocol id of NTPv4
ALPN = "ntske/1"  # RFC 8915 §4
EXPORTER_LABEL = b"EXPORTER-network-time-security"  # RFC 8915 §5.1
MAX_REQUEST = 16 * 1024  # a real request is a few dozen octets


class RecordType(enum.IntEnum):
    """RFC 8915 §4.1 and §7.6."""

    END_OF_MESSAGE = 0
    NEXT_PROTOCOL = 1
    ERROR = 2
    WARNING = 3
    AEAD_ALGORITHM = 4
    NEW_COOKIE = 5
    SERVER = 6
    PORT = 7


class ErrorCode(enum.IntEnum):
    """RFC 8915 §4.1.3."""

    UNRECOGNIZED_CRITICAL_RECORD = 0
    BAD_REQUEST = 1
    INTERNAL_SERVER_ERROR = 2


@dataclass(frozen=True)
class Record:
    record_type: int
    body: bytes
    critical: bool = False

    def encode(self) -> bytes:
        kind = self.record_type | (CRITICAL if self.critical else 0)
        return RECORD_HEADER.pack(kind, len(self.body)) + self.body


def encode_records(records: list[Record]) -> bytes:
    return b"".join(r.encode() for r in records)


def decode_records(data: bytes) -> tuple[list[Record], int]:
    """The whole records at the start of `data` and the octets they take."""
    records = []
    pos = 0
    while len(data) - pos >= RECORD_HEADER.size:
        kind, length = RECORD_HEADER.unpack_from(data, pos)
        if len(data) - pos - 4 < length:
            break
        records.append(Record(kind & ~CRITICAL, bytes(data[pos + 4:pos + 4 + length]),
                              bool(kind & CRITICAL)))
        pos += 4 + length
    return records, pos


def exporter_context(aead: int, server_to_client: bool) -> bytes:
    """RFC 8915 §5.1: next protocol id, AEAD id, 0 for C2S / 1 for S2C."""
    return struct.pack("!HHB", NTPV4, aead, 1 if server_to_client else 0)


class NTSKEConnection:
    """The server side of one NTS-KE exchange (RFC 8915 §4.1)."""

    def __init__(self, *, ntp_server: str | None, ntp_port: int | None) -> None:
        self.ntp_server = ntp_server  # sent when clients must use another address
        self.ntp_port = ntp_port  # sent when the NTP port is not 123
        self._buffer = bytearray()
        self._records: list[Record] = []
        self.done = False

    def receive_data(self, data: bytes) -> bool:
        """Take octets from the client; True once the request is complete (or too long)."""
        if self.done:
            return True
        self._buffer += data
        records, used = decode_records(bytes(self._buffer))
        del self._buffer[:used]
        self._records += records
        if any(r.record_type == RecordType.END_OF_MESSAGE for r in records):
            self.done = True
        elif len(self._buffer) + sum(4 + len(r.body) for r in self._records) > MAX_REQUEST:
            self.done = True
        return self.done

    def response(self, cookies: Callable[[int], list[bytes]]) -> bytes:
        """The reply to the request received; `cookies(aead)` makes the eight cookies from
        the keys exported for that algorithm."""
        error = self._check()
        if error is not None:
            return encode_records([Record(RecordType.ERROR, struct.pack("!H", error), True),
                                   Record(RecordType.END_OF_MESSAGE, b"", True)])
        protocols = _uint16s(self._find(RecordType.NEXT_PROTOCOL))
        algorithms = _uint16s(self._find(RecordType.AEAD_ALGORITHM))
        out = []
        # RFC 8915 §4.1.2: no protocol in common -> an empty Next Protocol record, no cookies.
        if NTPV4 not in protocols:
            out.append(Record(RecordType.NEXT_PROTOCOL, b"", True))
        elif AEAD_AES_SIV_CMAC_256 not in algorithms:
            # RFC 8915 §4.1.5: no algorithm in common -> an empty AEAD record.
            out += [Record(RecordType.NEXT_PROTOCOL, struct.pack("!H", NTPV4), True),
                    Record(RecordType.AEAD_ALGORITHM, b"", True)]
        else:
            out += [Record(RecordType.NEXT_PROTOCOL, struct.pack("!H", NTPV4), True),
                    Record(RecordType.AEAD_ALGORITHM,
                           struct.pack("!H", AEAD_AES_SIV_CMAC_256), True)]
            if self.ntp_server:
                out.append(Record(RecordType.SERVER, self.ntp_server.encode("ascii"), True))
            if self.ntp_port is not None and self.ntp_port != 123:
                out.append(Record(RecordType.PORT, struct.pack("!H", self.ntp_port), True))
            out += [Record(RecordType.NEW_COOKIE, c) for c in cookies(AEAD_AES_SIV_CMAC_256)]
        out.append(Record(RecordType.END_OF_MESSAGE, b"", True))
        return encode_records(out)

    def internal_error(self) -> bytes:
        return encode_records([
            Record(RecordType.ERROR, struct.pack("!H", ErrorCode.INTERNAL_SERVER_ERROR), True),
            Record(RecordType.END_OF_MESSAGE, b"", True)])

    def _find(self, kind: RecordType) -> bytes:
        for r in self._records:
            if r.record_type == kind:
                return r.body
        return b""

    def _check(self) -> ErrorCode | None:
        """RFC 8915 §4.1: the request's shape."""
        if not self._records or self._records[-1].record_type != RecordType.END_OF_MESSAGE:
            return ErrorCode.BAD_REQUEST
        seen: set[int] = set()
        for r in self._records:
            known = r.record_type in (RecordType.END_OF_MESSAGE, RecordType.NEXT_PROTOCOL,
                                      RecordType.AEAD_ALGORITHM, RecordType.SERVER,
                                      RecordType.PORT, RecordType.WARNING)
            if not known and r.record_type in (RecordType.ERROR, RecordType.NEW_COOKIE):
                return ErrorCode.BAD_REQUEST  # servers send these, clients do not
            if not known and r.critical:
                return ErrorCode.UNRECOGNIZED_CRITICAL_RECORD
            if r.record_type in (RecordType.NEXT_PROTOCOL, RecordType.AEAD_ALGORITHM):
                if r.record_type in seen or len(r.body) % 2:
                    return ErrorCode.BAD_REQUEST
                seen.add(r.record_type)
        # RFC 8915 §4.1.2: exactly one Next Protocol record.
        if RecordType.NEXT_PROTOCOL not in seen:
            return ErrorCode.BAD_REQUEST
        return None


def _uint16s(body: bytes) -> list[int]:
    return [v for (v,) in struct.iter_unpack("!H", body[:len(body) & ~1])]
