"""The DHCPv6 server engine (RFC 8415 18.3), driven with messages and a clock of our own."""

from __future__ import annotations

from ipaddress import IPv6Address
from typing import Any

import pytest

from netpost.dhcp import packet6 as p6
from netpost.dhcp.engine6 import (
    BindingState,
    DHCP6Engine,
    Engine6Settings,
    LeaseRecord6,
    Link6,
    Outcome6,
)
from netpost.dhcp.packet6 import (
    IANA,
    IAPD,
    IATA,
    IAAddress,
    Message,
    MessageType,
    Option,
    RelayMessage,
    Status,
    StatusCode,
)
from netpost.dhcp.subnets6 import Subnet6, parse_subnets6

SERVER_DUID = p6.duid_llt(1, bytes.fromhex("0200000000fe"), 1_700_000_000)
LINK = Link6((IPv6Address("2001:db8:99::1"),))
PEER = "fe80::1%veth0"
T0 = 1_000_000.0
POOL = "2001:db8:99::100-2001:db8:99::10f"


def subnets(**extra: Any) -> tuple[Subnet6, ...]:
    table: dict[str, Any] = {
        "prefix": "2001:db8:99::/64", "pools": [POOL], "valid_lifetime": 4000,
        "preferred_lifetime": 3000, "dns_servers": ["2001:db8:99::53"],
        "domain_list": ["lan.test"], "ntp_servers": ["2001:db8:99::123"],
        "reservations": [{"duid": "00:03:00:01:02:00:00:00:00:99", "address":
                          "2001:db8:99::5", "hostname": "printer"}]}
    table.update(extra)
    return parse_subnets6([table])


def engine(**extra: Any) -> DHCP6Engine:
    return DHCP6Engine(subnets(**extra), SERVER_DUID, Engine6Settings(client_rate=1000,
                                                                      client_burst=1000))


def duid(n: int) -> bytes:
    return p6.duid_ll(1, bytes.fromhex(f"0200000000{n:02x}"))


def ia_na(iaid: int, *addresses: str) -> tuple[int, bytes]:
    inner = tuple((Option.IAADDR, IAAddress(IPv6Address(a), 0, 0).encode()) for a in addresses)
    return Option.IA_NA, IANA(iaid, 0, 0, inner).encode()


def msg(kind: MessageType, n: int = 1, *options: tuple[int, bytes], server: bool | None = None,
        ia: bool = True) -> Message:
    opts: list[tuple[int, bytes]] = [(Option.CLIENTID, duid(n))]
    if server if server is not None else kind in (MessageType.REQUEST, MessageType.RENEW,
                                                  MessageType.RELEASE, MessageType.DECLINE):
        opts.append((Option.SERVERID, SERVER_DUID))
    opts += options
    if ia and not any(c == Option.IA_NA for c, _ in options) and kind not in (
            MessageType.INFORMATION_REQUEST, MessageType.CONFIRM):
        opts.append(ia_na(1))
    m = Message(kind, 0x10000 + n, tuple(opts))
    decoded = p6.decode(p6.encode(m))  # what the engine sees has been on the wire
    assert isinstance(decoded, Message)
    return decoded


def reply_of(outcome: Outcome6 | None) -> Message:
    assert outcome is not None and isinstance(outcome.reply, Message)
    return outcome.reply


def ias(reply: Message) -> list[IANA]:
    return p6.ia_na_options(reply)


def only_address(reply: Message) -> IAAddress:
    (ia,) = ias(reply)
    (address,) = ia.addresses
    return address


def status(reply: Message) -> int | None:
    value = reply.option(Option.STATUS_CODE)
    return None if value is None else StatusCode.decode(value).code


def bind(e: DHCP6Engine, n: int, now: float = T0, iaid: int = 1) -> IPv6Address:
    advertise = reply_of(e.handle(msg(MessageType.SOLICIT, n, ia_na(iaid)), PEER, LINK, now))
    assert advertise.kind is MessageType.ADVERTISE
    offered = only_address(advertise).address
    outcome = e.handle(msg(MessageType.REQUEST, n, ia_na(iaid, str(offered))), PEER, LINK, now)
    reply = reply_of(outcome)
    assert reply.kind is MessageType.REPLY
    assert outcome is not None and [r.address for r in outcome.leases] == [offered]
    return only_address(reply).address


def test_solicit_advertise_request_reply() -> None:
    e = engine()
    outcome = e.handle(msg(MessageType.SOLICIT, 1, (Option.ORO, b"\x00\x17\x00\x18")), PEER,
                       LINK, T0)
    advertise = reply_of(outcome)
    assert outcome is not None
    assert outcome.destination == (PEER, 546)
    assert outcome.leases == ()  # an ADVERTISE promises nothing
    assert advertise.kind is MessageType.ADVERTISE
    assert advertise.transaction_id == 0x10001
    assert advertise.server_id == SERVER_DUID and advertise.client_id == duid(1)
    (ia,) = ias(advertise)
    assert (ia.iaid, ia.t1, ia.t2) == (1, 1500, 2400)  # RFC 8415 21.4: 0.5 and 0.8 x preferred
    address = only_address(advertise)
    assert address.address == IPv6Address("2001:db8:99::100")
    assert (address.preferred_lifetime, address.valid_lifetime) == (3000, 4000)
    assert p6.parse_addresses6(advertise.option(Option.DNS_SERVERS) or b"") == \
        [IPv6Address("2001:db8:99::53")]
    assert p6.parse_wire_names(advertise.option(Option.DOMAIN_LIST) or b"") == ["lan.test"]
    assert p6.parse_ntp_server(advertise.option(Option.NTP_SERVER) or b"") == \
        ["2001:db8:99::123"]
    # another client is not advertised the held address
    other = reply_of(e.handle(msg(MessageType.SOLICIT, 2), PEER, LINK, T0))
    assert only_address(other).address != address.address
    # REQUEST -> REPLY with a lease to commit first
    outcome = e.handle(msg(MessageType.REQUEST, 1, ia_na(1, str(address.address))), PEER,
                       LINK, T0 + 1)
    reply = reply_of(outcome)
    assert reply.kind is MessageType.REPLY
    assert only_address(reply).address == address.address
    assert outcome is not None
    (lease,) = outcome.leases
    assert (lease.duid, lease.iaid, lease.state, lease.expires) == (duid(1), 1, "bound",
                                                                    T0 + 1 + 4000)
    assert e.binding(address.address) is not None


def test_rapid_commit() -> None:
    e = engine()
    outcome = e.handle(msg(MessageType.SOLICIT, 1, (Option.RAPID_COMMIT, b"")), PEER, LINK, T0)
    reply = reply_of(outcome)
    assert reply.kind is MessageType.REPLY and reply.rapid_commit
    assert outcome is not None and len(outcome.leases) == 1
    # not allowed by the subnet: an ADVERTISE as usual
    e = engine(rapid_commit=False)
    advertise = reply_of(e.handle(msg(MessageType.SOLICIT, 1, (Option.RAPID_COMMIT, b"")),
                                  PEER, LINK, T0))
    assert advertise.kind is MessageType.ADVERTISE and not advertise.rapid_commit


def test_the_same_address_again_and_one_per_ia() -> None:
    e = engine()
    first = bind(e, 1)
    assert bind(e, 1, T0 + 10) == first  # same DUID and IAID: same binding
    second_ia = bind(e, 1, T0 + 10, iaid=2)
    assert second_ia != first  # another IA of the same client: another address
    assert bind(e, 2) not in (first, second_ia)


def test_hint_honoured_when_free() -> None:
    e = engine()
    advertise = reply_of(e.handle(msg(MessageType.SOLICIT, 1, ia_na(1, "2001:db8:99::10a")),
                                  PEER, LINK, T0))
    assert only_address(advertise).address == IPv6Address("2001:db8:99::10a")
    outside = reply_of(e.handle(msg(MessageType.SOLICIT, 2, ia_na(1, "2001:db8:7::1")),
                                PEER, LINK, T0))
    assert only_address(outside).address == IPv6Address("2001:db8:99::100")


def test_reservation_by_duid() -> None:
    e = engine()
    reserved = p6.duid_ll(1, bytes.fromhex("020000000099"))
    m = Message(MessageType.SOLICIT, 5, ((Option.CLIENTID, reserved), ia_na(7)))
    assert only_address(reply_of(e.handle(m, PEER, LINK, T0))).address == \
        IPv6Address("2001:db8:99::5")


def test_exhaustion_never_gives_an_address_twice(caplog: pytest.LogCaptureFixture) -> None:
    e = engine(pools=["2001:db8:99::100-2001:db8:99::102"])
    given = {n: bind(e, n) for n in range(1, 4)}
    assert len(set(given.values())) == 3
    reply = reply_of(e.handle(msg(MessageType.SOLICIT, 9), PEER, LINK, T0))
    (ia,) = ias(reply)
    assert ia.addresses == [] and ia.status is not None
    assert ia.status.code == Status.NO_ADDRS_AVAIL  # RFC 8415 18.3.9: in the IA
    request = reply_of(e.handle(msg(MessageType.REQUEST, 9, ia_na(1, str(given[1]))), PEER,
                                LINK, T0))
    (ia,) = ias(request)
    assert ia.addresses == [] and ia.status is not None and \
        ia.status.code == Status.NO_ADDRS_AVAIL
    assert e.stats.pool_exhausted == 2
    assert "pool of 2001:db8:99::/64 exhausted" in caplog.text
    # after the valid lifetime the addresses return to the pool
    later = T0 + 4001
    assert bind(e, 9, later) in given.values()


def test_renew_extends_and_zeroes_other_addresses() -> None:
    e = engine()
    address = bind(e, 1)
    outcome = e.handle(msg(MessageType.RENEW, 1, ia_na(1, str(address), "2001:db8:99::1ff")),
                       PEER, LINK, T0 + 1500)
    reply = reply_of(outcome)
    (ia,) = ias(reply)
    lifetimes = {a.address: (a.preferred_lifetime, a.valid_lifetime) for a in ia.addresses}
    assert lifetimes == {address: (3000, 4000), IPv6Address("2001:db8:99::1ff"): (0, 0)}
    assert outcome is not None and outcome.leases[0].expires == T0 + 1500 + 4000


def test_renew_and_rebind_without_binding() -> None:
    e = engine()
    for kind in (MessageType.RENEW, MessageType.REBIND):
        reply = reply_of(e.handle(msg(kind, 1, ia_na(1, "2001:db8:99::100", "2001:db8:5::1")),
                                  PEER, LINK, T0))
        (ia,) = ias(reply)
        assert ia.status is not None and ia.status.code == Status.NO_BINDING
        # 18.3.5: an address not on this link is given lifetimes 0
        assert [(a.address, a.valid_lifetime) for a in ia.addresses] == \
            [(IPv6Address("2001:db8:5::1"), 0)]


def test_rebind_extends_a_binding() -> None:
    e = engine()
    address = bind(e, 1)
    reply = reply_of(e.handle(msg(MessageType.REBIND, 1, ia_na(1, str(address))), PEER, LINK,
                              T0 + 2500))
    assert only_address(reply).address == address
    assert only_address(reply).valid_lifetime == 4000


def test_release_and_decline() -> None:
    e = engine()
    address = bind(e, 1)
    outcome = e.handle(msg(MessageType.RELEASE, 1, ia_na(1, str(address))), PEER, LINK, T0 + 5)
    reply = reply_of(outcome)
    assert status(reply) == Status.SUCCESS
    assert outcome is not None and outcome.leases[0].state == "released"
    # the released address is free for others but comes back to its client first
    assert bind(e, 1, T0 + 6) == address
    # an IA without a binding: NoBinding in the IA
    reply = reply_of(e.handle(msg(MessageType.RELEASE, 2, ia_na(1, str(address))), PEER, LINK,
                              T0 + 7))
    (ia,) = ias(reply)
    assert ia.status is not None and ia.status.code == Status.NO_BINDING
    # DECLINE: quarantined, nobody gets it for decline_hold
    outcome = e.handle(msg(MessageType.DECLINE, 1, ia_na(1, str(address))), PEER, LINK, T0 + 8)
    assert status(reply_of(outcome)) == Status.SUCCESS
    assert outcome is not None and outcome.leases[0].state == "declined"
    binding = e.binding(address)
    assert binding is not None and binding.state is BindingState.DECLINED
    assert bind(e, 1, T0 + 9) != address


def test_confirm() -> None:
    e = engine()
    on = reply_of(e.handle(msg(MessageType.CONFIRM, 1, ia_na(1, "2001:db8:99::100")), PEER,
                           LINK, T0))
    assert status(on) == Status.SUCCESS
    off = reply_of(e.handle(msg(MessageType.CONFIRM, 1, ia_na(1, "2001:db8:99::100",
                                                               "2001:db8:1::1")), PEER, LINK,
                            T0))
    assert status(off) == Status.NOT_ON_LINK
    assert e.handle(msg(MessageType.CONFIRM, 1, ia_na(1)), PEER, LINK, T0) is None


def test_information_request() -> None:
    e = engine(information_refresh_time=7200)
    m = Message(MessageType.INFORMATION_REQUEST, 3, ((Option.ORO, b"\x00\x17"),))
    reply = reply_of(e.handle(m, PEER, LINK, T0))
    assert reply.kind is MessageType.REPLY and reply.option(Option.DNS_SERVERS) is not None
    assert reply.option(Option.INFORMATION_REFRESH_TIME) == (7200).to_bytes(4, "big")
    assert ias(reply) == []
    # with an IA option it is invalid (RFC 8415 16.12)
    bad = Message(MessageType.INFORMATION_REQUEST, 3, (ia_na(1),))
    assert e.handle(bad, PEER, LINK, T0) is None


def test_server_identifier_rules() -> None:
    e = engine()
    wrong = p6.duid_en(9, b"other")
    m = Message(MessageType.REQUEST, 1, ((Option.CLIENTID, duid(1)),
                                         (Option.SERVERID, wrong), ia_na(1)))
    assert e.handle(m, PEER, LINK, T0) is None  # for another server
    assert e.handle(msg(MessageType.SOLICIT, 1, server=True), PEER, LINK, T0) is None
    assert e.handle(msg(MessageType.REQUEST, 1, server=False), PEER, LINK, T0) is None
    no_client = Message(MessageType.SOLICIT, 1, (ia_na(1),))
    assert e.handle(no_client, PEER, LINK, T0) is None
    assert e.handle(Message(MessageType.ADVERTISE, 1, ()), PEER, LINK, T0) is None
    assert e.stats.ignored == 5


def test_unicast_answered_use_multicast() -> None:
    e = engine()
    address = bind(e, 1)
    reply = reply_of(e.handle(msg(MessageType.RENEW, 1, ia_na(1, str(address))), PEER, LINK,
                              T0, unicast=True))
    assert status(reply) == Status.USE_MULTICAST
    assert [c for c, _ in reply.options] == [Option.STATUS_CODE, Option.SERVERID,
                                             Option.CLIENTID]
    # with UNICAST offered, unicast is served (and the option is sent)
    e = engine(unicast="2001:db8:99::1")
    advertise = reply_of(e.handle(msg(MessageType.SOLICIT, 1), PEER, LINK, T0))
    assert advertise.option(Option.UNICAST) == IPv6Address("2001:db8:99::1").packed
    address = bind(e, 1)
    reply = reply_of(e.handle(msg(MessageType.RENEW, 1, ia_na(1, str(address))), PEER, LINK,
                              T0, unicast=True))
    assert only_address(reply).address == address


def test_ia_ta_and_ia_pd_answered() -> None:
    e = engine()
    m = msg(MessageType.SOLICIT, 1, (Option.IA_TA, IATA(4).encode()),
            (Option.IA_PD, IAPD(5, 0, 0).encode()))
    reply = reply_of(e.handle(m, PEER, LINK, T0))
    ta = IATA.decode(reply.option(Option.IA_TA) or b"")
    pd = IAPD.decode(reply.option(Option.IA_PD) or b"")
    assert StatusCode.decode(p6.first(ta.options, Option.STATUS_CODE) or b"").code == \
        Status.NO_ADDRS_AVAIL
    assert StatusCode.decode(p6.first(pd.options, Option.STATUS_CODE) or b"").code == \
        Status.NO_PREFIX_AVAIL
    assert len(ias(reply)) == 1  # the IA_NA still gets its address


def test_relayed_and_nested_relays() -> None:
    e = DHCP6Engine(subnets() + parse_subnets6([{"prefix": "2001:db8:7::/64",
                                                 "pools": ["2001:db8:7::10-2001:db8:7::20"]}]),
                    SERVER_DUID)
    inner = msg(MessageType.SOLICIT, 1)
    near = RelayMessage(MessageType.RELAY_FORW, 0, IPv6Address("2001:db8:7::1"),
                        IPv6Address("fe80::c"), ((Option.INTERFACE_ID, b"port7"),
                                                 (Option.RELAY_MSG, p6.encode(inner))))
    far = RelayMessage(MessageType.RELAY_FORW, 1, IPv6Address("::"), IPv6Address("2001:db8::2"),
                       ((Option.RELAY_MSG, p6.encode(near)),))
    outcome = e.handle(p6.decode(p6.encode(far)), "2001:db8::2", LINK, T0)
    assert outcome is not None and outcome.destination == ("2001:db8::2", 547)
    outer = outcome.reply
    assert isinstance(outer, RelayMessage) and outer.msg_type == MessageType.RELAY_REPL
    assert (outer.hop_count, outer.peer_address) == (1, IPv6Address("2001:db8::2"))
    reply, relays = p6.innermost(outer)
    assert relays[1].interface_id == b"port7"  # RFC 8415 19.3: echoed
    assert relays[1].peer_address == IPv6Address("fe80::c")
    # the subnet is the nearest relay's link-address, not the server's link
    assert only_address(reply).address == IPv6Address("2001:db8:7::10")


def test_leases_loaded_at_start_keep_their_addresses() -> None:
    record = LeaseRecord6(IPv6Address("2001:db8:99::100"), duid(1), 1, "bound", T0, T0 + 4000,
                          "2001:db8:99::/64")
    e = DHCP6Engine(subnets(), SERVER_DUID, leases=[record])
    assert only_address(reply_of(e.handle(msg(MessageType.SOLICIT, 2), PEER, LINK, T0))) \
        .address != record.address
    reply = reply_of(e.handle(msg(MessageType.RENEW, 1, ia_na(1, str(record.address))), PEER,
                              LINK, T0 + 10))
    assert only_address(reply).address == record.address


def test_external_release() -> None:
    e = engine()
    address = bind(e, 1)
    assert e.external_release(address, duid(1), T0 + 1)
    reply = reply_of(e.handle(msg(MessageType.RENEW, 1, ia_na(1, str(address))), PEER, LINK,
                              T0 + 2))
    (ia,) = ias(reply)
    assert ia.status is not None and ia.status.code == Status.NO_BINDING


def test_client_fqdn_recorded_and_answered() -> None:
    e = engine()
    fqdn = p6.ClientFQDN(p6.ClientFQDN.S, "laptop.lan.test").encode()
    outcome = e.handle(msg(MessageType.SOLICIT, 1, (Option.CLIENT_FQDN, fqdn),
                           (Option.RAPID_COMMIT, b"")), PEER, LINK, T0)
    assert outcome is not None and outcome.leases[0].hostname == "laptop.lan.test"
    answered = p6.ClientFQDN.decode(reply_of(outcome).option(Option.CLIENT_FQDN) or b"")
    assert answered.flags == p6.ClientFQDN.N  # netpost updates no DNS (RFC 4704)


def test_config_errors() -> None:
    for bad, match in ((dict(pools=["2001:db8:5::1-2001:db8:5::9"]), "not in"),
                       (dict(preferred_lifetime=5000), "preferred"),
                       (dict(unknown=1), "unknown key"),
                       (dict(information_refresh_time=5), "at least 600")):
        with pytest.raises(ValueError, match=match):
            subnets(**bad)


def test_relay_without_a_usable_link_address_serves_the_receiving_link() -> None:
    e = engine()
    relayed = RelayMessage(MessageType.RELAY_FORW, 0, IPv6Address("::"), IPv6Address("fe80::c"),
                           ((Option.RELAY_MSG, p6.encode(msg(MessageType.SOLICIT, 1))),))
    outcome = e.handle(relayed, "fe80::9%veth0", LINK, T0)
    assert outcome is not None and outcome.destination == ("fe80::9%veth0", 547)
    assert isinstance(outcome.reply, RelayMessage)
    reply, _ = p6.innermost(outcome.reply)
    assert only_address(reply).address == IPv6Address("2001:db8:99::100")
    # a RELAY-REPL sent to a server is not for it
    back = RelayMessage(MessageType.RELAY_REPL, 0, IPv6Address("::"), IPv6Address("fe80::c"),
                        ((Option.RELAY_MSG, p6.encode(msg(MessageType.SOLICIT, 1))),))
    assert e.handle(back, "fe80::9%veth0", LINK, T0) is None


def test_silent_on_a_link_without_a_subnet() -> None:
    """No [[dhcp.subnets6]] for the link: nothing is answered, INFORMATION-REQUEST included."""
    e = DHCP6Engine(subnets(), SERVER_DUID)
    elsewhere = Link6((IPv6Address("2001:db8:5::1"),))
    info = Message(MessageType.INFORMATION_REQUEST, 3, ())
    assert e.handle(info, PEER, elsewhere, T0) is None
    assert e.handle(msg(MessageType.SOLICIT, 1), PEER, elsewhere, T0) is None
    assert e.handle(msg(MessageType.RENEW, 1), PEER, elsewhere, T0, unicast=True) is None
    assert DHCP6Engine((), SERVER_DUID).handle(info, PEER, Link6(), T0) is None
    assert e.stats.no_subnet == 3


def test_ntp_auto_names_netpost_on_the_link() -> None:
    e = engine(ntp_servers="auto")
    here = Link6((IPv6Address("2001:db8:99::1"),), ntp_address=IPv6Address("2001:db8:99::1"))
    advertise = reply_of(e.handle(msg(MessageType.SOLICIT, 1), PEER, here, T0))
    assert p6.parse_ntp_server(advertise.option(Option.NTP_SERVER) or b"") == ["2001:db8:99::1"]
    # netpost's NTP not reachable from the link: no option 56
    advertise = reply_of(e.handle(msg(MessageType.SOLICIT, 2), PEER, LINK, T0))
    assert advertise.option(Option.NTP_SERVER) is None


def test_request_for_an_address_off_the_link_gets_not_on_link() -> None:
    e = engine()
    reply = reply_of(e.handle(msg(MessageType.REQUEST, 1, ia_na(1, "2001:db8:5::1")), PEER,
                              LINK, T0))
    (ia,) = ias(reply)
    assert ia.addresses == [] and ia.status is not None
    assert ia.status.code == Status.NOT_ON_LINK  # RFC 8415 18.3.2
    assert e.bindings() == []
