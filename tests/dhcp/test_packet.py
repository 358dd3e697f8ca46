"""The DHCPv4 codec (RFC 2131 format, RFC 2132 options, overload, RFC 3396, RFC 3046)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from netpost.dhcp import options as opt
from netpost.dhcp.packet import (
    BOOTREQUEST,
    MAGIC_COOKIE,
    Message,
    MessageType,
    Option,
    PacketError,
    client_key,
    decode,
    encode,
    relay_suboptions,
    summary,
)

MAC = bytes.fromhex("020000000001")


def discover(**options: bytes) -> Message:
    opts = {Option.MESSAGE_TYPE: bytes((MessageType.DISCOVER,))}
    opts.update({int(k.removeprefix("o")): v for k, v in options.items()})
    return Message(op=BOOTREQUEST, xid=0x1234, chaddr=MAC, flags=0x8000, options=opts)


def test_round_trip_of_a_discover() -> None:
    m = discover(o55=bytes((1, 3, 6)), o12=b"host")
    data = encode(m)
    assert data[236:240] == MAGIC_COOKIE
    back = decode(data)
    assert back == m
    assert back.message_type is MessageType.DISCOVER
    assert back.broadcast and back.hostname == "host"
    assert back.parameter_request_list == bytes((1, 3, 6))


def test_long_option_split_and_concatenated_rfc3396() -> None:
    value = bytes(range(256)) * 2  # 512 octets: three instances
    data = encode(discover(o77=value))
    assert data.count(bytes((77, 255))) == 2
    assert decode(data).options[77] == value


def test_overload_fields_are_read_and_written() -> None:
    # Options in `file` and `sname` (option 52 = 3), read options field, file, sname.
    m = discover()
    raw = bytearray(encode(m))
    raw[108:108 + 7] = bytes((12, 3)) + b"abc" + b"\xff\x00"  # file carries hostname
    raw[44:44 + 5] = bytes((12, 2)) + b"de" + b"\xff"  # sname continues it (RFC 3396)
    raw[-1:] = bytes((52, 1, 3, 255))
    back = decode(bytes(raw))
    assert back.options[Option.HOSTNAME] == b"abcde"
    assert back.file == b"" and back.sname == b""
    assert Option.OVERLOAD not in back.options
    # encode with a small limit moves options into file/sname and says so in option 52
    big = discover(o43=b"x" * 250, o60=b"y" * 200)
    data = encode(big, max_size=576)
    assert len(data) <= 576 - 28
    assert decode(data) == big


def test_too_big_for_the_client_is_an_error() -> None:
    with pytest.raises(PacketError):
        encode(discover(o43=b"x" * 900), max_size=576)


@pytest.mark.parametrize("data", [b"", b"\x01" * 239, b"\x01" * 236 + b"abcd",
                                  bytes(236) + MAGIC_COOKIE,  # op 0
                                  b"\x01\x01\x11" + bytes(233) + MAGIC_COOKIE,  # hlen 17
                                  b"\x01\x01\x06" + bytes(233) + MAGIC_COOKIE + b"\x35\x05\x01"])
def test_malformed_is_packet_error(data: bytes) -> None:
    with pytest.raises(PacketError):
        decode(data)


def test_client_identity_rfc4361() -> None:
    duid_id = b"\xff" + b"\x00\x00\x00\x01" + b"\x00\x01\x00\x01" + b"abcd"
    assert client_key(discover(o61=duid_id)) == b"id:" + duid_id
    assert client_key(discover()) == b"hw:\x01" + MAC


def test_relay_agent_suboptions() -> None:
    assert relay_suboptions(b"\x01\x02ab\x02\x01c") == {1: b"ab", 2: b"c"}
    assert relay_suboptions(b"\x01\x05ab") == {}


def test_search_list_rfc3397_compression() -> None:
    value = opt.search_list(["eng.apple.com", "marketing.apple.com"])
    # RFC 3397 4's example
    assert value == (b"\x03eng\x05apple\x03com\x00" + b"\x09marketing\xc0\x04")
    assert opt.parse_search_list(value) == ["eng.apple.com", "marketing.apple.com"]


def test_classless_routes_rfc3442() -> None:
    assert opt.static_routes(["10.0.0.0/8 via 10.99.0.1", "0.0.0.0/0 via 10.99.0.254"]) == (
        b"\x08\x0a" + IPv4Address("10.99.0.1").packed + b"\x00" + IPv4Address(
            "10.99.0.254").packed)


def test_client_fqdn() -> None:
    fqdn = opt.parse_client_fqdn(b"\x05\x00\x00\x04host\x03lan\x00")
    assert fqdn is not None and fqdn.name == "host.lan"
    ascii_form = opt.parse_client_fqdn(b"\x01\x00\x00host.lan")
    assert ascii_form is not None and ascii_form.name == "host.lan"


def test_summary_for_the_trace() -> None:
    line = summary(encode(discover(o50=IPv4Address("10.0.0.5").packed)))
    assert line.startswith("DHCPDISCOVER xid=0x00001234 chaddr=02:00:00:00:00:01")
    assert "requested=10.0.0.5" in line and "broadcast" in line
    assert summary(b"junk").startswith("<malformed")
