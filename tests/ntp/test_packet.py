"""The NTP packet engine: RFC 5905 formats, extension fields, and any octets in."""

from __future__ import annotations

import struct
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from netpost.ntp.packet import (
    HEADER_SIZE,
    ExtensionField,
    ExtensionType,
    Mode,
    NTPPacket,
    NTPParseError,
    decode,
    encode,
    first_octet,
    padded_field,
    short_from_seconds,
    short_to_seconds,
    timestamp_from_unix,
    timestamp_from_unix_ns,
    timestamp_to_unix,
)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
extension = st.builds(
    ExtensionField, st.integers(0, 0xFFFF),
    st.integers(3, 40).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)))
packets = st.builds(
    NTPPacket, leap=st.integers(0, 3), version=st.integers(0, 7), mode=st.integers(0, 7),
    stratum=st.integers(0, 255), poll=st.integers(-128, 127), precision=st.integers(-128, 127),
    root_delay=u32, root_dispersion=u32, reference_id=st.binary(min_size=4, max_size=4),
    reference_timestamp=u64, origin_timestamp=u64, receive_timestamp=u64,
    transmit_timestamp=u64)


@given(st.binary(max_size=600))
@settings(max_examples=3000)
def test_any_octets_decode_or_raise_parse_error_and_round_trip(data: bytes) -> None:
    try:
        packet = decode(data)
    except NTPParseError:
        return
    assert encode(packet) == data


@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE), st.binary(max_size=300))
@settings(max_examples=2000)
def test_header_then_anything(header: bytes, rest: bytes) -> None:
    try:
        packet = decode(header + rest)
    except NTPParseError:
        return
    assert encode(packet) == header + rest
    assert encode(decode(encode(packet))) == encode(packet)


@given(packets, st.lists(extension, max_size=5))
def test_v4_packets_with_extension_fields_round_trip(packet: NTPPacket,
                                                     fields: list[ExtensionField]) -> None:
    packet = NTPPacket(**{**packet.__dict__, "version": 4, "extensions": tuple(fields)})
    assert decode(encode(packet)) == packet


@given(packets, st.sampled_from([20, 24]), st.binary(min_size=24, max_size=24))
def test_packets_with_a_mac_round_trip(packet: NTPPacket, size: int, mac: bytes) -> None:
    packet = NTPPacket(**{**packet.__dict__, "version": 3, "mac": mac[:size]})
    assert decode(encode(packet)) == packet


def test_header_fields_in_their_places() -> None:
    p = NTPPacket(leap=3, version=4, mode=Mode.SERVER, stratum=2, poll=6, precision=-20,
                  root_delay=0x10000, root_dispersion=0x8000, reference_id=b"\x7f\0\0\1",
                  reference_timestamp=1, origin_timestamp=2, receive_timestamp=3,
                  transmit_timestamp=4)
    data = encode(p)
    assert len(data) == 48
    assert data[0] == 0b11_100_100  # RFC 5905 figure 8: LI, VN, Mode
    assert data[1:4] == bytes([2, 6, 0xEC])
    assert struct.unpack("!II", data[4:12]) == (0x10000, 0x8000)
    assert data[12:16] == b"\x7f\0\0\1"
    assert struct.unpack("!QQQQ", data[16:48]) == (1, 2, 3, 4)
    assert first_octet(data) == (4, 4)


def test_short_and_truncated_packets_are_parse_errors() -> None:
    for data in (b"", b"\x23", bytes(47), bytes(49), bytes(48 + 12), bytes(48 + 17)):
        try:
            decode(data)
        except NTPParseError:
            continue
        raise AssertionError(f"{len(data)} octets decoded")


def test_v3_trailer_is_only_a_mac() -> None:
    head = encode(NTPPacket(version=3))
    assert decode(head + bytes(20)).mac == bytes(20)
    ef = padded_field(ExtensionType.UNIQUE_IDENTIFIER, bytes(32)).encode()
    try:
        decode(head + ef)
    except NTPParseError:
        pass
    else:
        raise AssertionError("NTPv3 has no extension fields")


def test_extension_fields_and_mac_together() -> None:
    ef = padded_field(0x0104, b"x" * 30)
    assert len(ef.value) == 32
    p = NTPPacket(extensions=(ef,), mac=b"\0\0\0\1" + bytes(16))
    assert decode(encode(p)) == p
    assert p.extension(0x0104) == ef and p.extension(0x0204) is None


def test_kiss_code() -> None:
    assert NTPPacket(stratum=0, reference_id=b"RATE").kiss_code == "RATE"
    assert NTPPacket(stratum=2, reference_id=b"RATE").kiss_code is None


def test_timestamps() -> None:
    # RFC 5905 §6: 1970-01-01 is 2,208,988,800 s after the prime epoch.
    assert timestamp_from_unix(0.0) == 2_208_988_800 << 32
    assert timestamp_from_unix_ns(1_500_000_000) == (2_208_988_801 << 32) | (1 << 31)
    now = time.time()
    assert abs(timestamp_to_unix(timestamp_from_unix(now), now) - now) < 1e-6
    # Era 1 (after 2036-02-07): the seconds wrap and are read back near `near`.
    later = 2**32 + 1000.5 - 2_208_988_800  # NTP seconds 2**32 + 1000.5
    ts = timestamp_from_unix(later)
    assert ts >> 32 == 1000
    assert abs(timestamp_to_unix(ts, later + 3600) - later) < 1e-6


@given(st.integers(0, 2**62))
def test_ns_timestamps_are_monotonic_within_an_era(ns: int) -> None:
    a, b = timestamp_from_unix_ns(ns), timestamp_from_unix_ns(ns + 1000)
    assert b >= a or (b >> 32) == 0  # only the era's wrap goes back


def test_short_format() -> None:
    assert short_from_seconds(1.5) == 0x18000
    assert short_to_seconds(0x18000) == 1.5
    assert short_from_seconds(-1) == 0
    assert short_from_seconds(1e9) == 0xFFFFFFFF


def test_padded_field_minimum_and_alignment() -> None:
    assert len(padded_field(1, b"").encode()) == 16
    assert len(padded_field(1, b"abcde").encode()) == 16
    assert len(padded_field(1, bytes(13)).encode()) == 20
    assert ExtensionType.NTS_AUTHENTICATOR == 0x0404
