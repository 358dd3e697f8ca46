"""Property tests of the DHCPv4 codec: any octets parse or raise PacketError; a decoded
message survives encoding unchanged."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netpost.dhcp.packet import MAGIC_COOKIE, PacketError, decode, encode

FAST = settings(max_examples=500, deadline=None)

HEADER = st.binary(min_size=236, max_size=236).map(
    lambda b: bytes((1 + b[0] % 2,)) + b[1:2] + bytes((b[2] % 17,)) + b[3:])
OPTION = st.tuples(st.integers(1, 254), st.binary(max_size=300))


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    """Well-formed headers with option fields that are often, but not always, well formed."""
    body = bytearray()
    for code, value in draw(st.lists(OPTION, max_size=12)):
        for i in range(0, max(len(value), 1), 255):
            piece = value[i:i + 255]
            body += bytes((code, len(piece))) + piece
    if draw(st.booleans()):
        body += b"\xff"
    body += draw(st.binary(max_size=8))
    return draw(HEADER) + MAGIC_COOKIE + bytes(body)


def _stable(data: bytes) -> None:
    try:
        m = decode(data)
    except PacketError:
        return
    once = encode(m)
    assert decode(once) == m
    assert encode(decode(once)) == once


@FAST
@given(st.binary(max_size=1500))
def test_arbitrary_octets(data: bytes) -> None:
    _stable(data)


@FAST
@given(packets())
def test_structured_packets(data: bytes) -> None:
    _stable(data)


@FAST
@given(packets(), st.integers(576, 1500))
def test_encoding_within_a_size_limit(data: bytes, limit: int) -> None:
    try:
        m = decode(data)
        out = encode(m, max_size=limit)
    except PacketError:
        return
    assert len(out) <= limit - 28
    assert decode(out) == m
