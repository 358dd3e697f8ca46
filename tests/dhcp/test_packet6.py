"""The DHCPv6 codec (RFC 8415): messages, relay messages, options and their typed values."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest

from netpost.dhcp import packet6 as p6
from netpost.dhcp.packet6 import (
    IANA,
    IAPD,
    IATA,
    ClientFQDN,
    IAAddress,
    Message,
    MessageType,
    Option,
    PacketError,
    RelayMessage,
    Status,
    StatusCode,
    decode,
    encode,
)

DUID = p6.duid_llt(1, bytes.fromhex("020000000001"), 1_700_000_000)

# A SOLICIT as dhclient -6 sends it (captured form, rebuilt field by field): CLIENTID,
# ORO (DNS, domain list), ELAPSED_TIME 0, IA_NA with IAID 0x01020304 and no addresses.
SOLICIT = (bytes.fromhex("01abcdef")
           + bytes.fromhex("0001000e") + DUID
           + bytes.fromhex("0006000400170018")
           + bytes.fromhex("000800020000")
           + bytes.fromhex("0003000c" "01020304" "00000000" "00000000"))


def test_decode_a_solicit() -> None:
    m = decode(SOLICIT)
    assert isinstance(m, Message)
    assert m.kind is MessageType.SOLICIT
    assert m.transaction_id == 0xABCDEF
    assert m.client_id == DUID
    assert m.oro == (Option.DNS_SERVERS, Option.DOMAIN_LIST)
    assert m.elapsed_time == 0
    (ia,) = p6.ia_na_options(m)
    assert (ia.iaid, ia.t1, ia.t2, ia.addresses) == (0x01020304, 0, 0, [])
    assert encode(m) == SOLICIT


def test_ia_na_with_addresses_and_status() -> None:
    addr = IAAddress(IPv6Address("2001:db8::10"), 100, 200)
    ia = IANA(7, 50, 80, ((Option.IAADDR, addr.encode()),
                          p6.status_option(Status.SUCCESS, "ok")))
    back = IANA.decode(ia.encode())
    assert back == ia
    assert back.addresses == [addr]
    assert back.status == StatusCode(0, "ok")
    m = Message(MessageType.REPLY, 1, ((Option.IA_NA, ia.encode()),))
    assert decode(encode(m)) == m


def test_ia_ta_and_ia_pd() -> None:
    assert IATA.decode(IATA(3).encode()) == IATA(3)
    assert IAPD.decode(IAPD(4, 1, 2).encode()) == IAPD(4, 1, 2)


def test_nested_relays() -> None:
    inner = Message(MessageType.SOLICIT, 5, ((Option.CLIENTID, DUID),))
    one = RelayMessage(MessageType.RELAY_FORW, 0, IPv6Address("2001:db8:1::1"),
                       IPv6Address("fe80::1"), ((Option.INTERFACE_ID, b"eth0"),
                                                (Option.RELAY_MSG, encode(inner))))
    two = RelayMessage(MessageType.RELAY_FORW, 1, IPv6Address("::"), IPv6Address("fe80::2"),
                       ((Option.RELAY_MSG, encode(one)),))
    back = decode(encode(two))
    assert back == two
    assert isinstance(back, RelayMessage)
    found, relays = p6.innermost(back)
    assert found == inner
    assert relays == [two, one]
    assert relays[1].interface_id == b"eth0"


@pytest.mark.parametrize("data", [
    b"", b"\x01\x00", b"\x00\x00\x00\x00",  # short; reserved type 0
    b"\x01\x00\x00\x01\x00\x01\x00\x05ab",  # option runs past the end
    b"\x01\x00\x00\x01\x00",  # half an option header
    b"\x01\x00\x00\x01\x00\x03\x00\x04abcd",  # IA_NA shorter than its fixed fields
    b"\x01\x00\x00\x01\x00\x03\x00\x0e" + bytes(12) + b"\x00\x05",  # IAADDR framing broken
    b"\x0c\x00" + bytes(32),  # RELAY-FORW without RELAY_MSG
    b"\x0c\x00" + bytes(32) + b"\x00\x09\x00\x02\x01\x00",  # relayed message too short
])
def test_malformed(data: bytes) -> None:
    with pytest.raises(PacketError):
        decode(data)


def test_relays_nested_too_deep() -> None:
    data = encode(Message(MessageType.SOLICIT, 1))
    for _ in range(p6.MAX_NESTING + 1):
        data = encode(RelayMessage(MessageType.RELAY_FORW, 0, p6.UNSPECIFIED, p6.UNSPECIFIED,
                                   ((Option.RELAY_MSG, data),)))
    with pytest.raises(PacketError, match="too deep"):
        decode(data)


def test_duids() -> None:
    mac = bytes.fromhex("020000000042")
    assert p6.duid_link_layer_address(p6.duid_llt(1, mac, 1e9)) == mac
    assert p6.duid_link_layer_address(p6.duid_ll(1, mac)) == mac
    assert p6.duid_link_layer_address(p6.duid_en(9, b"xyz")) is None
    assert p6.describe_duid(p6.duid_ll(1, mac)).startswith("duid-ll 02:00:00:00:00:42")
    assert p6.describe_duid(p6.duid_uuid(bytes(range(16)))) == \
        "duid-uuid 000102030405060708090a0b0c0d0e0f"
    assert p6.describe_duid(p6.duid_en(9, b"\x01")) == "duid-en 9 01"
    # RFC 8415 11.2: time counts from 2000-01-01
    assert p6.duid_llt(1, mac, p6.DUID_EPOCH + 5)[4:8] == b"\x00\x00\x00\x05"
    assert not p6.duid_valid(b"\x00\x01") and p6.duid_valid(DUID)


def test_rfc3646_and_rfc5908_values() -> None:
    dns = p6.addresses6(["2001:db8::53", "2001:db8::54"])
    assert p6.parse_addresses6(dns) == [IPv6Address("2001:db8::53"), IPv6Address("2001:db8::54")]
    names = p6.domain_list(["lan.test", "corp.example"])
    assert names == b"\x03lan\x04test\x00\x04corp\x07example\x00"  # uncompressed
    assert p6.parse_wire_names(names) == ["lan.test", "corp.example"]
    ntp = p6.ntp_server(["2001:db8::123", "ff05::101", "ntp.lan.test"])
    assert ntp[:4] == b"\x00\x01\x00\x10" and ntp[20:24] == b"\x00\x02\x00\x10"
    assert p6.parse_ntp_server(ntp) == ["2001:db8::123", "ff05::101", "ntp.lan.test"]


def test_client_fqdn() -> None:
    full = ClientFQDN(ClientFQDN.S, "host.lan.test")
    assert ClientFQDN.decode(full.encode()) == full
    partial = b"\x00\x04host"  # RFC 4704 4: a partial name has no root label
    assert ClientFQDN.decode(partial) == ClientFQDN(0, "host")
    with pytest.raises(PacketError):
        ClientFQDN.decode(b"")


def test_summary() -> None:
    assert p6.summary(SOLICIT).startswith("SOLICIT xid=0xabcdef client=")
    assert "ia_na=16909060" in p6.summary(SOLICIT)
    assert p6.summary(b"\x01").startswith("<malformed")


def test_fuzz_target_replays_its_corpus() -> None:
    from fuzz import fuzz_dhcp6
    from fuzz.replay import replay

    assert replay(fuzz_dhcp6.one_input, ["fuzz/corpus/dhcp6"]) >= 2
