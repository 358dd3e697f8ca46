"""The NTPv4 packet (RFC 5905 §7.3) with extension fields (RFC 7822) and the NTS fields
(RFC 8915 §5): bytes in, `NTPPacket` out, and back.  Pure code: no clock, no socket.

Every field is kept as it was on the wire (timestamps as 64-bit integers, root delay and
dispersion as 32-bit short-format integers), so `encode(decode(data)) == data` for every
datagram that decodes.  Anything that does not decode raises `NTPParseError`, nothing else.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

HEADER = struct.Struct("!BBbbII4sQQQQ")  # RFC 5905 §7.3, figure 8: 48 octets
HEADER_SIZE = HEADER.size
EXTENSION_HEADER = struct.Struct("!HH")  # RFC 7822 §3: field type, length

# RFC 5905 §6: NTP era 0 began 1900-01-01; the Unix epoch is 2,208,988,800 s later.
NTP_UNIX_OFFSET = 2_208_988_800
NTP_ERA = 1 << 32  # seconds in an era (the 64-bit timestamp's seconds wrap in 2036)
FRACTION = 1 << 32

# RFC 7822 §3: an extension field is at least 16 octets, a multiple of 4.
MIN_EXTENSION_SIZE = 16
# RFC 5905 §7.3 / RFC 8573: a legacy MAC is a 32-bit key id and a 128- or 160-bit digest.
MAC_SIZES = (4 + 16, 4 + 20)
MAX_PACKET_SIZE = 4096  # well above any real NTS request (a few hundred octets)


class Mode(enum.IntEnum):
    """RFC 5905 §7.3, figure 10."""

    RESERVED = 0
    SYMMETRIC_ACTIVE = 1
    SYMMETRIC_PASSIVE = 2
    CLIENT = 3
    SERVER = 4
    BROADCAST = 5
    CONTROL = 6  # ntpq's mode 6: never answered (amplification; RFC 8633, BCP 223)
    PRIVATE = 7  # ntpdc's mode 7: never answered (CVE-2013-5211, monlist)


class Leap(enum.IntEnum):
    """RFC 5905 §7.3, figure 9: the leap indicator."""

    NO_WARNING = 0
    LAST_MINUTE_61 = 1
    LAST_MINUTE_59 = 2
    UNSYNCHRONIZED = 3  # alarm condition: the clock is not synchronised


class ExtensionType(enum.IntEnum):
    """RFC 8915 §5.7 and the IANA NTP extension field registry."""

    UNIQUE_IDENTIFIER = 0x0104
    NTS_COOKIE = 0x0204
    NTS_COOKIE_PLACEHOLDER = 0x0304
    NTS_AUTHENTICATOR = 0x0404  # "NTS Authenticator and Encrypted Extension Fields"


class NTPParseError(ValueError):
    """The octets are not an NTP packet this engine can read."""


@dataclass(frozen=True)
class ExtensionField:
    """RFC 7822 §3: a field type and its value; the value includes any padding."""

    field_type: int
    value: bytes

    def encode(self) -> bytes:
        return EXTENSION_HEADER.pack(self.field_type, 4 + len(self.value)) + self.value


@dataclass(frozen=True)
class NTPPacket:
    """One NTP packet in mode 1-5 (RFC 5905 §7.3), as its octets say."""

    leap: int = Leap.NO_WARNING
    version: int = 4
    mode: int = Mode.CLIENT
    stratum: int = 0
    poll: int = 0  # log2 seconds
    precision: int = 0  # log2 seconds
    root_delay: int = 0  # 32-bit short format (16.16 seconds)
    root_dispersion: int = 0  # 32-bit short format
    reference_id: bytes = b"\0\0\0\0"
    reference_timestamp: int = 0  # 64-bit timestamp format (32.32 seconds since 1900)
    origin_timestamp: int = 0
    receive_timestamp: int = 0
    transmit_timestamp: int = 0
    extensions: tuple[ExtensionField, ...] = field(default=())
    mac: bytes = b""  # key id + digest (RFC 5905 §7.3), or empty

    @property
    def kiss_code(self) -> str | None:
        """RFC 5905 §7.4: a stratum-0 packet carries a four-letter kiss code in its
        reference id ("RATE", "DENY", "NTSN"...)."""
        if self.stratum != 0:
            return None
        return self.reference_id.decode("ascii", "replace").rstrip("\0")

    def extension(self, field_type: int) -> ExtensionField | None:
        for ef in self.extensions:
            if ef.field_type == field_type:
                return ef
        return None


def encode_header(packet: NTPPacket) -> bytes:
    """The first 48 octets of `packet`."""
    first = (packet.leap & 3) << 6 | (packet.version & 7) << 3 | (packet.mode & 7)
    return HEADER.pack(first, packet.stratum, packet.poll, packet.precision,
                       packet.root_delay, packet.root_dispersion, packet.reference_id,
                       packet.reference_timestamp, packet.origin_timestamp,
                       packet.receive_timestamp, packet.transmit_timestamp)


def encode(packet: NTPPacket) -> bytes:
    """The octets of `packet`: header, extension fields, MAC."""
    return (encode_header(packet) + b"".join(ef.encode() for ef in packet.extensions)
            + packet.mac)


def decode(data: bytes) -> NTPPacket:
    """Read an NTP packet; `NTPParseError` for anything that is not one."""
    if len(data) < HEADER_SIZE:
        raise NTPParseError(f"{len(data)} octets: shorter than the 48-octet header")
    if len(data) > MAX_PACKET_SIZE:
        raise NTPParseError(f"{len(data)} octets: longer than {MAX_PACKET_SIZE}")
    (first, stratum, poll, precision, root_delay, root_dispersion, reference_id,
     reference_ts, origin_ts, receive_ts, transmit_ts) = HEADER.unpack_from(data)
    version = first >> 3 & 7
    extensions, mac = _decode_trailer(data, version)
    return NTPPacket(first >> 6, version, first & 7, stratum, poll, precision, root_delay,
                     root_dispersion, reference_id, reference_ts, origin_ts, receive_ts,
                     transmit_ts, extensions, mac)


def _decode_trailer(data: bytes, version: int) -> tuple[tuple[ExtensionField, ...], bytes]:
    """What follows the header: extension fields (NTPv4 only, RFC 7822) and/or a MAC.

    RFC 7822: a receiver tells a MAC from an extension field by their lengths.  Here the
    trailer is read as extension fields that fill it exactly; failing that, as extension
    fields followed by a MAC of one of the legal sizes; failing that, it is malformed.
    """
    rest = len(data) - HEADER_SIZE
    if rest == 0:
        return (), b""
    if version == 4:
        fields = _extension_fields(data, HEADER_SIZE, len(data))
        if fields is not None:
            return fields, b""
    for size in MAC_SIZES:
        if rest < size:
            continue
        end = len(data) - size
        fields = () if end == HEADER_SIZE else (
            _extension_fields(data, HEADER_SIZE, end) if version == 4 else None)
        if fields is not None:
            return fields, bytes(data[end:])
    raise NTPParseError(f"{rest} octets after the header are neither extension fields "
                        "nor a MAC")


def _extension_fields(data: bytes, start: int, end: int) -> tuple[ExtensionField, ...] | None:
    fields = []
    pos = start
    while pos < end:
        if end - pos < MIN_EXTENSION_SIZE:
            return None
        field_type, length = EXTENSION_HEADER.unpack_from(data, pos)
        if length < MIN_EXTENSION_SIZE or length % 4 or pos + length > end:
            return None
        fields.append(ExtensionField(field_type, bytes(data[pos + 4:pos + length])))
        pos += length
    return tuple(fields)


def padded_field(field_type: int, body: bytes) -> ExtensionField:
    """An extension field holding `body`, zero-padded to a multiple of 4 octets and to the
    16-octet minimum (RFC 7822 §3)."""
    size = max(MIN_EXTENSION_SIZE - 4, len(body) + (-len(body) % 4))
    return ExtensionField(field_type, body + bytes(size - len(body)))


def first_octet(data: bytes) -> tuple[int, int]:
    """(version, mode) of a datagram of at least one octet, without decoding the rest."""
    return data[0] >> 3 & 7, data[0] & 7


# -- time formats (RFC 5905 §6) ----------------------------------------------------------------

def timestamp_from_unix_ns(ns: int) -> int:
    """A 64-bit NTP timestamp for a Unix time in nanoseconds (era folded, RFC 5905 §6)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return ((seconds + NTP_UNIX_OFFSET) % NTP_ERA) << 32 | (nanos << 32) // 1_000_000_000


def timestamp_from_unix(t: float) -> int:
    seconds = int(t // 1)
    return ((seconds + NTP_UNIX_OFFSET) % NTP_ERA) << 32 | int((t - seconds) * FRACTION)


def timestamp_to_unix(ts: int, near: float) -> float:
    """The Unix time of a 64-bit timestamp, in the era that puts it closest to `near`
    (RFC 5905 §6: timestamps are unambiguous within 68 years of a known time)."""
    seconds = ts >> 32
    base = (int(near) + NTP_UNIX_OFFSET) % NTP_ERA
    delta = (seconds - base + NTP_ERA // 2) % NTP_ERA - NTP_ERA // 2
    return int(near) + delta + (ts & 0xFFFFFFFF) / FRACTION


def short_from_seconds(seconds: float) -> int:
    """The 32-bit short format (16.16, RFC 5905 §6), saturating at its largest value."""
    return min(max(int(seconds * 65536), 0), 0xFFFFFFFF)


def short_to_seconds(short: int) -> float:
    return short / 65536
