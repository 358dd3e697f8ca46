"""The DHCPv4 server engine (RFC 2131 4.3), driven with messages and a clock of our own."""

from __future__ import annotations

from ipaddress import IPv4Address

from netpost.dhcp.engine import (
    BindingState,
    DHCPEngine,
    EngineSettings,
    LeaseRecord,
    Link,
    Outcome,
)
from netpost.dhcp.packet import (
    BOOTREQUEST,
    ZERO,
    Message,
    MessageType,
    Option,
    decode,
    encode,
)
from netpost.dhcp.subnets import parse_subnets

SERVER = IPv4Address("10.99.0.1")
LINK = Link(SERVER, ntp_here=True)
T0 = 1_000_000.0


def subnets(pool: str = "10.99.0.10-10.99.0.20", **extra: object) -> tuple:  # type: ignore[type-arg]
    table = {"network": "10.99.0.0/24", "pools": [pool], "router": "10.99.0.1",
             "dns_servers": ["10.99.0.1"], "domain_name": "lan.test", "search": ["lan.test"],
             "routes": ["10.20.0.0/16 via 10.99.0.1"], "mtu": 1400, "lease_time": 3600,
             "options": {"66": "tftp.lan.test"},
             "reservations": [{"hardware": "02:00:00:00:00:99", "address": "10.99.0.5",
                               "hostname": "printer"}]}
    table.update(extra)
    return parse_subnets([table])


def mac(n: int) -> bytes:
    return bytes.fromhex(f"0200000000{n:02x}")


def msg(kind: MessageType, n: int = 1, *, flags: int = 0, ciaddr: str = "0.0.0.0",
        giaddr: str = "0.0.0.0", **options: bytes) -> Message:
    opts: dict[int, bytes] = {Option.MESSAGE_TYPE: bytes((kind,))}
    opts.update({int(k[1:]): v for k, v in options.items()})
    m = Message(op=BOOTREQUEST, xid=n, chaddr=mac(n), flags=flags, ciaddr=IPv4Address(ciaddr),
                giaddr=IPv4Address(giaddr), options=opts)
    return decode(encode(m))  # what the engine sees has been on the wire


def ip(text: str) -> bytes:
    return IPv4Address(text).packed


def dora(engine: DHCPEngine, n: int, now: float = T0) -> Outcome:
    offer = engine.handle(msg(MessageType.DISCOVER, n, o55=bytes((1, 3, 42, 119))), LINK, now)
    assert offer is not None and offer.reply is not None
    ack = engine.handle(msg(MessageType.REQUEST, n, o50=offer.reply.yiaddr.packed,
                            o54=SERVER.packed), LINK, now)
    assert ack is not None and ack.reply is not None
    assert ack.reply.message_type is MessageType.ACK
    return ack


def test_discover_offer_request_ack() -> None:
    engine = DHCPEngine(subnets())
    offer = engine.handle(msg(MessageType.DISCOVER, flags=0x8000,
                              o55=bytes((1, 3, 6, 15, 26, 42, 66, 119, 121))), LINK, T0)
    assert offer is not None and offer.reply is not None and offer.lease is None
    reply = offer.reply
    assert reply.message_type is MessageType.OFFER
    assert reply.yiaddr == IPv4Address("10.99.0.10")
    assert offer.destination == ("255.255.255.255", 68)
    o = reply.options
    assert o[Option.SERVER_IDENTIFIER] == SERVER.packed
    assert o[Option.LEASE_TIME] == (3600).to_bytes(4, "big")
    assert o[Option.RENEWAL_TIME] == (1800).to_bytes(4, "big")  # T1 = 0.5 (RFC 2131 4.4.5)
    assert o[Option.REBINDING_TIME] == (3150).to_bytes(4, "big")  # T2 = 0.875
    assert o[Option.SUBNET_MASK] == ip("255.255.255.0")
    assert o[Option.ROUTER] == ip("10.99.0.1")
    assert o[Option.NTP_SERVERS] == SERVER.packed  # netpost's own NTP by default
    assert o[Option.INTERFACE_MTU] == (1400).to_bytes(2, "big")
    assert o[66] == b"tftp.lan.test"
    assert Option.DOMAIN_SEARCH in o and Option.CLASSLESS_STATIC_ROUTE in o
    ack = engine.handle(msg(MessageType.REQUEST, o50=reply.yiaddr.packed, o54=SERVER.packed,
                            o12=b"laptop"), LINK, T0 + 1)
    assert ack is not None and ack.reply is not None and ack.lease is not None
    assert ack.reply.message_type is MessageType.ACK
    assert ack.lease.address == IPv4Address("10.99.0.10") and ack.lease.state == "bound"
    assert ack.lease.hostname == "laptop" and ack.lease.expires == T0 + 1 + 3600


def test_no_address_twice_and_exhaustion() -> None:
    engine = DHCPEngine(subnets("10.99.0.10-10.99.0.14"))
    given = {dora(engine, n).reply.yiaddr for n in range(1, 6)}  # type: ignore[union-attr]
    assert len(given) == 5
    assert engine.handle(msg(MessageType.DISCOVER, 6), LINK, T0) is None
    assert engine.stats.pool_exhausted == 1
    # once a lease expires its address returns to the pool
    later = T0 + 3601
    again = engine.handle(msg(MessageType.DISCOVER, 6), LINK, later)
    assert again is not None and again.reply is not None and again.reply.yiaddr in given


def test_offers_hold_their_address_until_they_lapse() -> None:
    engine = DHCPEngine(subnets("10.99.0.10-10.99.0.10"))
    assert engine.handle(msg(MessageType.DISCOVER, 1), LINK, T0) is not None
    assert engine.handle(msg(MessageType.DISCOVER, 2), LINK, T0 + 1) is None
    assert engine.handle(msg(MessageType.DISCOVER, 2), LINK, T0 + 31) is not None
    # client 1 is too late now
    late = engine.handle(msg(MessageType.REQUEST, 1, o50=ip("10.99.0.10"), o54=SERVER.packed),
                         LINK, T0 + 32)
    assert late is not None and late.reply is not None
    assert late.reply.message_type is MessageType.NAK


def test_request_for_another_server_withdraws_the_offer() -> None:
    engine = DHCPEngine(subnets("10.99.0.10-10.99.0.10"))
    engine.handle(msg(MessageType.DISCOVER, 1), LINK, T0)
    assert engine.handle(msg(MessageType.REQUEST, 1, o50=ip("10.99.0.10"),
                             o54=ip("10.99.0.2")), LINK, T0) is None
    assert engine.handle(msg(MessageType.DISCOVER, 2), LINK, T0 + 1) is not None


def test_init_reboot_rules() -> None:
    engine = DHCPEngine(subnets())
    address = dora(engine, 1).reply.yiaddr  # type: ignore[union-attr]
    ok = engine.handle(msg(MessageType.REQUEST, 1, o50=address.packed), LINK, T0 + 5)
    assert ok is not None and ok.reply is not None and ok.reply.message_type is MessageType.ACK
    wrong_net = engine.handle(msg(MessageType.REQUEST, 1, o50=ip("192.168.1.7")), LINK, T0)
    assert wrong_net is not None and wrong_net.reply is not None
    assert wrong_net.reply.message_type is MessageType.NAK
    assert wrong_net.destination == ("255.255.255.255", 68)
    # someone else's address
    taken = engine.handle(msg(MessageType.REQUEST, 2, o50=address.packed), LINK, T0)
    assert taken is not None and taken.reply is not None
    assert taken.reply.message_type is MessageType.NAK
    # no record of the client, free address: silent (RFC 2131 4.3.2)
    assert engine.handle(msg(MessageType.REQUEST, 3, o50=ip("10.99.0.15")), LINK, T0) is None


def test_renewing_and_rebinding() -> None:
    engine = DHCPEngine(subnets())
    address = str(dora(engine, 1).reply.yiaddr)  # type: ignore[union-attr]
    renew = engine.handle(msg(MessageType.REQUEST, 1, ciaddr=address), LINK, T0 + 1800)
    assert renew is not None and renew.reply is not None and renew.lease is not None
    assert renew.reply.message_type is MessageType.ACK
    assert renew.destination == (address, 68)  # unicast to ciaddr (4.1)
    assert renew.lease.expires == T0 + 1800 + 3600
    other = engine.handle(msg(MessageType.REQUEST, 2, ciaddr=address), LINK, T0 + 1800)
    assert other is not None and other.reply is not None
    assert other.reply.message_type is MessageType.NAK


def test_release_and_decline() -> None:
    engine = DHCPEngine(subnets("10.99.0.10-10.99.0.11"))
    address = dora(engine, 1).reply.yiaddr  # type: ignore[union-attr]
    out = engine.handle(msg(MessageType.RELEASE, 1, ciaddr=str(address)), LINK, T0 + 10)
    assert out is not None and out.reply is None and out.lease is not None
    assert out.lease.state == "released"
    # the releasing client gets the same address back
    assert dora(engine, 1, T0 + 20).reply.yiaddr == address  # type: ignore[union-attr]
    # DECLINE: the address is quarantined, the client gets another one
    out = engine.handle(msg(MessageType.DECLINE, 1, o50=address.packed, o54=SERVER.packed),
                        LINK, T0 + 30)
    assert out is not None and out.lease is not None and out.lease.state == "declined"
    binding = engine.binding(address)
    assert binding is not None and binding.state is BindingState.DECLINED
    assert dora(engine, 1, T0 + 40).reply.yiaddr != address  # type: ignore[union-attr]
    assert engine.handle(msg(MessageType.DISCOVER, 2), LINK, T0 + 50) is None  # pool used up


def test_inform_gets_options_without_a_lease() -> None:
    engine = DHCPEngine(subnets())
    out = engine.handle(msg(MessageType.INFORM, ciaddr="10.99.0.77", o55=bytes((6, 15))),
                        LINK, T0)
    assert out is not None and out.reply is not None and out.lease is None
    assert out.reply.message_type is MessageType.ACK
    assert Option.LEASE_TIME not in out.reply.options
    assert out.reply.yiaddr == IPv4Address(0)
    assert out.destination == ("10.99.0.77", 68)


def test_reservation_by_mac() -> None:
    engine = DHCPEngine(subnets())
    offer = engine.handle(msg(MessageType.DISCOVER, 0x99), LINK, T0)
    assert offer is not None and offer.reply is not None
    assert offer.reply.yiaddr == IPv4Address("10.99.0.5")
    ack = dora(engine, 0x99)
    assert ack.lease is not None and ack.lease.hostname == "printer"


def test_relayed_requests_go_back_to_the_relay_with_option_82() -> None:
    engine = DHCPEngine(subnets())
    agent = b"\x01\x04port\x02\x03rid"
    offer = engine.handle(msg(MessageType.DISCOVER, giaddr="10.99.0.254", o82=agent), LINK, T0)
    assert offer is not None and offer.reply is not None
    assert offer.destination == ("10.99.0.254", 67)
    assert offer.reply.options[Option.RELAY_AGENT_INFORMATION] == agent
    assert list(offer.reply.options)[-1] == Option.RELAY_AGENT_INFORMATION
    unknown = engine.handle(msg(MessageType.DISCOVER, 2, giaddr="172.16.0.1"), LINK, T0)
    assert unknown is None and engine.stats.no_subnet == 1


def test_per_client_rate_limit() -> None:
    engine = DHCPEngine(subnets(), EngineSettings(client_rate=1, client_burst=3))
    answered = [engine.handle(msg(MessageType.DISCOVER), LINK, T0) for _ in range(5)]
    assert sum(a is not None for a in answered) == 3
    assert engine.stats.rate_limited_client == 2
    assert engine.handle(msg(MessageType.DISCOVER, 2), LINK, T0) is not None


def test_leases_load_back() -> None:
    engine = DHCPEngine(subnets())
    record = dora(engine, 1).lease
    assert record is not None
    restarted = DHCPEngine(subnets(), leases=[record])
    renew = restarted.handle(msg(MessageType.REQUEST, 1, o50=record.address.packed), LINK,
                             T0 + 60)
    assert renew is not None and renew.reply is not None
    assert renew.reply.message_type is MessageType.ACK
    assert restarted.handle(msg(MessageType.DISCOVER, 2), LINK, T0).reply.yiaddr != \
        record.address  # type: ignore[union-attr]
    assert isinstance(record, LeaseRecord)


def test_circuit_limit() -> None:
    engine = DHCPEngine(subnets(), EngineSettings(max_leases_per_circuit=1))
    agent = b"\x01\x02p1"

    def relayed(kind: MessageType, n: int, **o: bytes) -> Message:
        return msg(kind, n, giaddr="10.99.0.254", o82=agent, **o)

    for n, expect in ((1, MessageType.ACK), (2, MessageType.NAK)):
        offer = engine.handle(relayed(MessageType.DISCOVER, n), LINK, T0)
        assert offer is not None and offer.reply is not None
        out = engine.handle(relayed(MessageType.REQUEST, n, o50=offer.reply.yiaddr.packed,
                                    o54=SERVER.packed), LINK, T0)
        assert out is not None and out.reply is not None
        assert out.reply.message_type is expect


def test_administrator_release_ends_the_binding() -> None:
    engine = DHCPEngine(subnets())
    ack = dora(engine, 1)
    assert ack.lease is not None
    assert engine.external_release(ack.lease.address, ack.lease.client, T0 + 5)
    renew = engine.handle(msg(MessageType.REQUEST, 1, ciaddr=str(ack.lease.address)), LINK,
                          T0 + 10)
    assert renew is not None and renew.reply is not None
    assert renew.reply.message_type is MessageType.NAK


def test_quarantine_after_a_ping_answer() -> None:
    engine = DHCPEngine(subnets("10.99.0.10-10.99.0.11"))
    offer = engine.handle(msg(MessageType.DISCOVER, 1), LINK, T0)
    assert offer is not None and offer.reply is not None
    engine.quarantine(offer.reply.yiaddr, T0)
    again = engine.handle(msg(MessageType.DISCOVER, 1), LINK, T0 + 1)
    assert again is not None and again.reply is not None
    assert again.reply.yiaddr != offer.reply.yiaddr


def test_lapsed_offers_are_reused_and_a_full_pool_is_cheap() -> None:
    engine = DHCPEngine(subnets("10.99.0.10-10.99.0.12"),
                        EngineSettings(client_rate=1e9, client_burst=10**9))
    for n in range(1, 4):  # three offers nobody takes up
        assert engine.handle(msg(MessageType.DISCOVER, n), LINK, T0) is not None
    later = T0 + 31
    offered = engine.handle(msg(MessageType.DISCOVER, 4), LINK, later)
    assert offered is not None and offered.reply is not None  # a lapsed offer's address
    for n in (5, 6):
        dora(engine, n, later)
    assert engine.handle(msg(MessageType.DISCOVER, 7), LINK, later) is None  # full
    assert engine._full_until  # remembered: the next DISCOVERs walk nothing
    assert engine.handle(msg(MessageType.DISCOVER, 8), LINK, later + 1) is None
    # a release frees an address at once, whatever was remembered
    bound = [b for b in engine.bindings() if b.state is BindingState.BOUND]
    engine.handle(msg(MessageType.RELEASE, int(bound[0].hardware[-1]),
                      ciaddr=str(IPv4Address(bound[0].address))), LINK, later + 2)
    again = engine.handle(msg(MessageType.DISCOVER, 8), LINK, later + 3)
    assert again is not None and again.reply is not None
    assert int(again.reply.yiaddr) == bound[0].address


def test_renewing_and_rebinding_told_apart() -> None:
    engine = DHCPEngine(subnets())
    unknown = "10.99.0.50"  # on the subnet, outside our pool: another server's client?
    renew = engine.handle(msg(MessageType.REQUEST, 3, ciaddr=unknown), LINK, T0 + 1,
                          unicast=True)
    assert renew is not None and renew.reply is not None
    assert renew.reply.message_type is MessageType.NAK  # sent to us: we say no
    assert engine.handle(msg(MessageType.REQUEST, 3, ciaddr=unknown), LINK, T0 + 1,
                         unicast=False) is None  # broadcast: not ours to answer
    address = str(dora(engine, 1).reply.yiaddr)  # type: ignore[union-attr]
    rebind = engine.handle(msg(MessageType.REQUEST, 1, ciaddr=address), LINK, T0 + 3000,
                           unicast=False)
    assert rebind is not None and rebind.reply is not None
    assert rebind.reply.message_type is MessageType.ACK


def test_reservation_by_client_id_and_fqdn_recorded() -> None:
    client_id = b"\xff\x00\x00\x00\x01\x00\x01\x00\x01abcd"  # RFC 4361: IAID + DUID
    engine = DHCPEngine(subnets(reservations=[{"client_id": client_id.hex(":"),
                                               "address": "10.99.0.7"}]))
    offer = engine.handle(msg(MessageType.DISCOVER, 3, o61=client_id), LINK, T0)
    assert offer is not None and offer.reply is not None
    assert offer.reply.yiaddr == IPv4Address("10.99.0.7")
    assert offer.reply.options[Option.CLIENT_IDENTIFIER] == client_id  # RFC 6842 echo
    fqdn = b"\x05\x00\x00\x06laptop\x03lan\x00"  # RFC 4702, wire encoding
    ack = engine.handle(msg(MessageType.REQUEST, 3, o61=client_id, o50=ip("10.99.0.7"),
                            o54=SERVER.packed, o81=fqdn), LINK, T0)
    assert ack is not None and ack.lease is not None and ack.reply is not None
    assert ack.reply.message_type is MessageType.ACK
    assert ack.lease.hostname == "laptop.lan"
    assert ack.lease.client == b"id:" + client_id
    # the same MAC without the client id is another client: not given the reserved address
    other = engine.handle(msg(MessageType.DISCOVER, 3), LINK, T0 + 1)
    assert other is not None and other.reply is not None
    assert other.reply.yiaddr != IPv4Address("10.99.0.7")


def test_two_links_of_one_engine_each_get_their_subnet() -> None:
    """The engine keeps the last link's (or relay's) subnet: alternating links and relays
    must still each get their own."""
    engine = DHCPEngine(parse_subnets([
        {"network": "10.99.0.0/24", "pools": ["10.99.0.10-10.99.0.20"]},
        {"network": "10.98.0.0/24", "pools": ["10.98.0.10-10.98.0.20"]},
        {"network": "10.97.0.0/24", "pools": ["10.97.0.10-10.97.0.20"]}]))
    other = Link(IPv4Address("10.98.0.1"))
    seen = []
    for n, (link, giaddr) in enumerate([(LINK, "0.0.0.0"), (other, "0.0.0.0"),
                                        (LINK, "10.97.0.2"), (LINK, "0.0.0.0"),
                                        (other, "10.97.0.2"), (other, "0.0.0.0")], 1):
        offer = engine.handle(msg(MessageType.DISCOVER, n, giaddr=giaddr), link, T0)
        assert offer is not None and offer.reply is not None
        seen.append(str(offer.reply.yiaddr).rsplit(".", 2)[0])
    assert seen == ["10.99", "10.98", "10.97", "10.99", "10.97", "10.98"]


def test_an_unspecified_address_is_always_the_shared_zero() -> None:
    """The engine tests address fields with `is ZERO`: a Message made with its own
    0.0.0.0 object holds the shared one."""
    m = Message(op=BOOTREQUEST, xid=1, chaddr=mac(1), ciaddr=IPv4Address("0.0.0.0"),
                yiaddr=IPv4Address(0), siaddr=IPv4Address("0.0.0.0"),
                giaddr=IPv4Address("0.0.0.0"))
    assert m.ciaddr is ZERO and m.yiaddr is ZERO and m.siaddr is ZERO and m.giaddr is ZERO
    assert decode(encode(m)).giaddr is ZERO
    relayed = Message(op=BOOTREQUEST, xid=1, chaddr=mac(1), giaddr=IPv4Address("10.97.0.2"))
    assert relayed.giaddr == IPv4Address("10.97.0.2")
