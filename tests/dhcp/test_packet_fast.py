"""The DHCPv4 codec's fast paths give what the plain ones give: `make_message` is
`Message(...)`, a reply's pre-encoded option block (`wire_options`) is what encoding its
options gives, and the lease table's address text is str()'s."""

from __future__ import annotations

import random
import socket
from ipaddress import IPv4Address, IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st

from netpost.dhcp.engine import DHCPEngine, EngineSettings, Link
from netpost.dhcp.packet import (
    BOOTREQUEST,
    ZERO,
    Message,
    MessageType,
    Option,
    decode,
    encode,
    make_message,
)
from netpost.dhcp.server6 import address_text6
from netpost.dhcp.subnets import parse_subnets

SERVER = IPv4Address("10.99.0.1")


def test_make_message_is_the_dataclass() -> None:
    options = {53: b"\x01"}
    fast = make_message(1, 7, b"abcdef", 1, 0, 3, 0x8000, ZERO, ZERO, ZERO, SERVER, b"s",
                        b"f", options)
    slow = Message(op=1, xid=7, chaddr=b"abcdef", secs=3, flags=0x8000, giaddr=SERVER,
                   sname=b"s", file=b"f", options=options)
    assert fast == slow and repr(fast) == repr(slow) and hash(fast.xid) == hash(slow.xid)
    assert fast.message_type is MessageType.DISCOVER and fast.wire_options is None


def request(kind: MessageType, n: int, **options: bytes) -> Message:
    opts: dict[int, bytes] = {Option.MESSAGE_TYPE: bytes((kind,))}
    opts.update({int(k.removeprefix("o")): v for k, v in options.items()})
    return decode(encode(Message(op=BOOTREQUEST, xid=n, chaddr=bytes((2, 0, 0, 0, 0, n)),
                                 giaddr=IPv4Address("10.99.0.2"), options=opts)))


def test_replies_encode_as_their_options_say() -> None:
    subnets = parse_subnets([{
        "network": "10.99.0.0/16", "pools": ["10.99.1.0-10.99.1.255"], "router": "10.99.0.1",
        "dns_servers": ["10.99.0.1"], "domain_name": "lan.test", "search": ["lan.test"],
        "options": {"61": "0x01ff", "150": "0x0a000001"}}])
    engine = DHCPEngine(subnets, EngineSettings(client_rate=1e6, client_burst=10**6))
    link = Link(SERVER)
    cases = [
        {"o55": bytes((1, 3, 6, 15, 119))},
        {"o55": bytes((1, 3, 6)), "o61": b"\x01\x02\x00\x00\x00\x00\x01"},
        {"o55": bytes((1, 3, 150)), "o82": b"\x01\x03abc"},
        {"o61": b"\x01xyz", "o82": b"\x02\x01z"},  # no request list: every option, 61 too
        {"o55": bytes((1,)), "o51": (120).to_bytes(4, "big")},  # a shorter lease asked for
    ]
    for n, options in enumerate(cases, 1):
        outcome = engine.handle(request(MessageType.DISCOVER, n, **options), link, 1000.0)
        assert outcome is not None and outcome.reply is not None
        reply = outcome.reply
        plain = Message(**{f: getattr(reply, f) for f in (
            "op", "xid", "chaddr", "htype", "hops", "secs", "flags", "ciaddr", "yiaddr",
            "siaddr", "giaddr", "sname", "file", "options")})
        assert encode(reply) == encode(plain), options
        assert decode(encode(reply)) == reply
        # the block made once is used, except where the subnet configures 61 itself
        assert (reply.wire_options is None) == (n == 4), options


def test_address_text6_is_str() -> None:
    rng = random.Random(9)
    samples = [IPv6Address(rng.getrandbits(128)) for _ in range(2000)]
    samples += [IPv6Address(rng.getrandbits(16) << rng.choice((0, 16, 48, 96))) for _ in
                range(500)]
    samples += [IPv6Address(x) for x in ("::", "::1", "2001:db8::1", "2001:db8:0:1:1:1:1:1",
                                         "2001:0:0:1::1", "::ffff:10.0.0.1", "::10.0.0.1",
                                         "fe80::1:0:0:0", "1:0:0:2:0:0:0:3")]
    for address in samples:
        assert address_text6(address) == str(address)


def test_inet_ntoa_is_str() -> None:
    rng = random.Random(4)
    for value in [0, 0xFFFFFFFF, *(rng.getrandbits(32) for _ in range(2000))]:
        address = IPv4Address(value)
        assert socket.inet_ntoa(address.packed) == str(address)


ENGINE = DHCPEngine(parse_subnets([{
    "network": "10.99.0.0/16", "pools": ["10.99.1.0-10.99.250.255"], "router": "10.99.0.1",
    "dns_servers": ["10.99.0.1"], "domain_name": "lan.test", "search": ["lan.test"],
    "options": {"61": "0x01ff", "150": "0x0a000001", "66": "tftp.lan.test"}}]),
    EngineSettings(client_rate=1e9, client_burst=10**9, relay_rate=1e9, relay_burst=10**9))


@given(st.lists(st.integers(1, 254), max_size=12).map(bytes) | st.none(),
       st.binary(min_size=2, max_size=300) | st.none(),
       st.binary(min_size=1, max_size=40) | st.none(),
       st.booleans(), st.integers(1, 250))
@settings(max_examples=300, deadline=None)
def test_any_reply_encodes_as_its_options_say(wanted: bytes | None, client_id: bytes | None,
                                              agent: bytes | None, relayed: bool,
                                              n: int) -> None:
    """Whatever the request list, client id and relay agent information, the pre-encoded
    block gives the octets plain encoding gives (and decodes to the same message)."""
    options: dict[int, bytes] = {Option.MESSAGE_TYPE: bytes((MessageType.DISCOVER,))}
    if wanted is not None:
        options[Option.PARAMETER_REQUEST_LIST] = wanted
    if client_id is not None:
        options[Option.CLIENT_IDENTIFIER] = client_id
    if agent is not None:
        options[Option.RELAY_AGENT_INFORMATION] = agent
    message = Message(op=BOOTREQUEST, xid=n, chaddr=bytes((2, 0, 0, 0, 1, n)),
                      giaddr=IPv4Address("10.99.0.2") if relayed else ZERO, options=options)
    outcome = ENGINE.handle(decode(encode(message)), Link(SERVER), 1000.0)
    assert outcome is not None and outcome.reply is not None
    reply = outcome.reply
    plain = Message(**{f: getattr(reply, f) for f in (
        "op", "xid", "chaddr", "htype", "hops", "secs", "flags", "ciaddr", "yiaddr",
        "siaddr", "giaddr", "sname", "file", "options")})
    assert encode(reply) == encode(plain)
    assert encode(reply, max_size=1500) == encode(plain, max_size=1500)
