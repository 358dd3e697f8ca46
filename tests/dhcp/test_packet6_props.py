"""Property tests of the DHCPv6 codec: any octets decode or raise PacketError (nothing else);
what decodes encodes back to the same octets, and decodes again to the same message."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st

from netpost.dhcp import packet6 as p6
from netpost.dhcp.engine6 import DHCP6Engine, Link6
from netpost.dhcp.packet6 import PacketError, RelayMessage, decode, encode
from netpost.dhcp.subnets6 import parse_subnets6

FAST = settings(max_examples=500, deadline=None)

CODES = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 14, 18, 23, 24, 25, 26, 32, 39, 56,
                         999])


@st.composite
def options(draw: st.DrawFn, depth: int = 0) -> bytes:
    """Option lists that are mostly well framed, nesting IA_NA/IAADDR/RELAY_MSG sometimes."""
    out = bytearray()
    for code in draw(st.lists(CODES, max_size=6)):
        fixed = p6.NESTING.get(code)
        if fixed is not None and depth < 3 and draw(st.booleans()):
            value = draw(st.binary(min_size=fixed, max_size=fixed)) + draw(options(depth + 1))
        elif code == p6.Option.RELAY_MSG and depth < 3:
            value = draw(messages(depth + 1))
        else:
            value = draw(st.binary(max_size=40))
        out += struct.pack("!HH", code, len(value)) + value
    if draw(st.integers(0, 9)) == 0:
        out += draw(st.binary(max_size=6))  # trailing garbage, sometimes
    return bytes(out)


@st.composite
def messages(draw: st.DrawFn, depth: int = 0) -> bytes:
    kind = draw(st.integers(0, 14))
    if kind in (12, 13):
        head = bytes((kind,)) + draw(st.binary(min_size=33, max_size=33))
    else:
        head = bytes((kind,)) + draw(st.binary(min_size=3, max_size=3))
    return head + draw(options(depth))


def _stable(data: bytes) -> None:
    try:
        m = decode(data)
    except PacketError:
        return
    once = encode(m)
    assert once == data
    assert decode(once) == m
    p6.summary(data)  # the trace line never raises
    if isinstance(m, RelayMessage):
        try:
            p6.innermost(m)
        except PacketError:
            pass


@FAST
@given(st.binary(max_size=600))
def test_arbitrary_octets(data: bytes) -> None:
    _stable(data)


@FAST
@given(messages())
def test_structured_messages(data: bytes) -> None:
    _stable(data)


@FAST
@given(messages())
def test_typed_helpers_raise_only_packet_error(data: bytes) -> None:
    try:
        m = decode(data)
    except PacketError:
        return
    if isinstance(m, RelayMessage):
        return
    try:
        for ia in p6.ia_na_options(m):
            assert isinstance(ia.addresses, list)
            assert ia.status is None or isinstance(ia.status.code, int)
        assert isinstance(m.oro, tuple)
        assert m.elapsed_time is None or m.elapsed_time >= 0
        for code, value in m.options:
            if code == p6.Option.CLIENT_FQDN:
                p6.ClientFQDN.decode(value)
            elif code == p6.Option.NTP_SERVER:
                p6.parse_ntp_server(value)
            elif code == p6.Option.DOMAIN_LIST:
                p6.parse_wire_names(value)
            elif code == p6.Option.DNS_SERVERS:
                p6.parse_addresses6(value)
    except PacketError:
        pass


SUBNETS = parse_subnets6([{"prefix": "::/0", "pools": ["::10-::13"]}])


@FAST
@given(st.lists(messages(), max_size=8), st.booleans())
def test_engine_answers_or_ignores(datas: list[bytes], unicast: bool) -> None:
    """Whatever arrives, the engine replies with a message that encodes, or nothing, and
    never binds one address to two IAs."""
    engine = DHCP6Engine(SUBNETS, p6.duid_ll(1, b"\x02\0\0\0\0\xfe"))
    link = Link6((IPv6Address("2001:db8::1"),))
    for i, data in enumerate(datas):
        try:
            m = decode(data)
            outcome = engine.handle(m, "fe80::1", link, 1000.0 + i, unicast)
        except PacketError:
            continue
        if outcome is not None and outcome.reply is not None:
            assert decode(encode(outcome.reply)) == outcome.reply
    owners = [(b.duid, b.iaid) for b in engine.bindings() if b.duid and b.active(1000.0)]
    assert len(engine.by_address) == len(engine.bindings())
    assert len(owners) == len(set(owners))
