"""The DHCPv6 server's decisions (RFC 8415 18.3), sans I/O: a message in, a reply out.

`DHCP6Engine.handle(message, peer, link, now, unicast)` says what to answer, where, and which
bindings must be durable before the answer goes.  Like the v4 engine it keeps every binding in
memory, loaded from the lease store at start; the caller commits `Outcome6.leases` (a batch in
one transaction) and only then sends the reply.

Stateful address assignment only: one address per IA_NA, a binding per (DUID, IAID).  IA_TA
and IA_PD are answered NoAddrsAvail / NoPrefixAvail (RFC 8415 18.3.9, 18.3.10).

What it guarantees:
- an address is bound to one client at a time: `by_address` has one entry per address, and
  an ADVERTISE holds its addresses for `offer_hold` seconds;
- a REPLY that gives or extends an address goes only after its lease is committed;
- a declined address (18.3.8) is out of the pool for `decline_hold` seconds;
- messages for another server (SERVERID not ours) are ignored (16);
- per-client and per-relay token buckets bound how fast one client or relay is served.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv6Address

from netpost.dhcp import packet6 as p6
from netpost.dhcp.engine import _Limiter
from netpost.dhcp.packet6 import (
    IANA,
    IAPD,
    IATA,
    AnyMessage,
    ClientFQDN,
    IAAddress,
    Message,
    MessageType,
    Option,
    PacketError,
    RelayMessage,
    Status,
)
from netpost.dhcp.subnets6 import Subnet6, find_subnet6

log = logging.getLogger("netpost.dhcp")


class BindingState(enum.Enum):
    OFFERED = "offered"  # advertised, waiting for the REQUEST (memory only)
    BOUND = "bound"
    RELEASED = "released"  # 18.3.7
    DECLINED = "declined"  # 18.3.8: quarantined until `expires`
    EXPIRED = "expired"


@dataclass(slots=True)  # one per address in use: tens of thousands, no __dict__ each
class Binding6:
    address: int
    duid: bytes  # b"" for a quarantined address
    iaid: int
    state: BindingState
    starts: float
    expires: float  # end of the valid lifetime
    subnet: Subnet6
    hostname: str = ""
    relay: str = ""

    def active(self, now: float) -> bool:
        return self.state in (BindingState.OFFERED, BindingState.BOUND,
                              BindingState.DECLINED) and self.expires > now


@dataclass(frozen=True)
class LeaseRecord6:
    """A binding as the lease store keeps it."""

    address: IPv6Address
    duid: bytes
    iaid: int
    state: str  # BindingState value (never "offered")
    starts: float
    expires: float
    subnet: str
    hostname: str = ""
    relay: str = ""


@dataclass(frozen=True)
class Outcome6:
    """`leases` must be durable before `reply` (if any) goes to `destination`."""

    reply: AnyMessage | None = None
    destination: tuple[str, int] | None = None
    leases: tuple[LeaseRecord6, ...] = ()


@dataclass(frozen=True)
class Link6:
    """The link a listener serves: netpost's addresses on it (which say its subnet, RFC 8415
    13.1) and where netpost's NTP is reachable from it, if anywhere."""

    addresses: tuple[IPv6Address, ...] = ()
    ntp_address: IPv6Address | None = None


@dataclass(frozen=True)
class Engine6Settings:
    offer_hold: float = 30.0
    decline_hold: float = 3600.0
    client_rate: float = 10.0  # messages per second from one DUID
    client_burst: int = 20
    relay_rate: float = 5000.0
    relay_burst: int = 10000
    exhaustion_log_interval: float = 60.0


@dataclass
class Engine6Stats:
    received: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    rate_limited_client: int = 0
    rate_limited_relay: int = 0
    pool_exhausted: int = 0
    no_subnet: int = 0
    ignored: int = 0  # not for us, or invalid (RFC 8415 16)
    use_multicast: int = 0


# RFC 8415 16: which message types a server takes, and whether each must (True), must not
# (False) or may (None) carry a Server Identifier.
_SERVER_ID_RULE: dict[MessageType, bool | None] = {
    MessageType.SOLICIT: False, MessageType.REQUEST: True, MessageType.CONFIRM: False,
    MessageType.RENEW: True, MessageType.REBIND: False, MessageType.RELEASE: True,
    MessageType.DECLINE: True, MessageType.INFORMATION_REQUEST: None,
}
# RFC 8415 18.4: unicast is answered UseMulticast unless the server sent UNICAST.
_UNICAST_CHECKED = frozenset((MessageType.REQUEST, MessageType.RENEW, MessageType.RELEASE,
                              MessageType.DECLINE))
_IA_CODES = (Option.IA_NA, Option.IA_TA, Option.IA_PD)


class DHCP6Engine:
    def __init__(self, subnets: Sequence[Subnet6], server_duid: bytes,
                 settings: Engine6Settings | None = None,
                 leases: Iterable[LeaseRecord6] = ()) -> None:
        self.subnets = tuple(subnets)
        self.server_duid = server_duid
        self.settings = settings or Engine6Settings()
        self.stats = Engine6Stats()
        self.by_address: dict[int, Binding6] = {}
        self.by_ia: dict[tuple[int, bytes, int], Binding6] = {}  # (subnet, DUID, IAID)
        self._subnet_index = {id(s): i for i, s in enumerate(self.subnets)}
        self._cursor: dict[int, int] = {}
        self._clients = _Limiter(self.settings.client_rate, self.settings.client_burst)
        self._relays = _Limiter(self.settings.relay_rate, self.settings.relay_burst)
        self._last_alarm: dict[int, float] = {}
        for record in leases:
            self._load(record)

    # -- the lease table ---------------------------------------------------------------------

    def _load(self, record: LeaseRecord6) -> None:
        subnet = find_subnet6(self.subnets, record.address)
        if subnet is None:
            return
        try:
            state = BindingState(record.state)
        except ValueError:
            return
        self._place(Binding6(int(record.address), record.duid, record.iaid, state,
                             record.starts, record.expires, subnet, record.hostname,
                             record.relay))

    def _key(self, binding: Binding6) -> tuple[int, bytes, int]:
        return self._subnet_index[id(binding.subnet)], binding.duid, binding.iaid

    def _place(self, binding: Binding6) -> None:
        old = self.by_address.get(binding.address)
        if old is not None:
            self._forget(old)
        if binding.duid:
            key = self._key(binding)
            previous = self.by_ia.get(key)
            if previous is not None and previous is not binding:
                # One address per IA: the old one goes back to the pool.
                if self.by_address.get(previous.address) is previous:
                    del self.by_address[previous.address]
            self.by_ia[key] = binding
        self.by_address[binding.address] = binding

    def _forget(self, binding: Binding6) -> None:
        if self.by_address.get(binding.address) is binding:
            del self.by_address[binding.address]
        if binding.duid and self.by_ia.get(self._key(binding)) is binding:
            del self.by_ia[self._key(binding)]

    def binding(self, address: IPv6Address) -> Binding6 | None:
        return self.by_address.get(int(address))

    def bindings(self) -> list[Binding6]:
        return list(self.by_address.values())

    def external_release(self, address: IPv6Address, duid: bytes, now: float) -> bool:
        """An administrator ended the lease (`netpost leases release`): the address returns
        to the pool and no longer belongs to the client (its RENEW gets NoBinding)."""
        binding = self.by_address.get(int(address))
        if binding is None or binding.duid != duid or binding.state is not BindingState.BOUND:
            return False
        self._forget(binding)
        self._place(Binding6(binding.address, b"", 0, BindingState.RELEASED, binding.starts,
                             now, binding.subnet))
        return True

    # -- the entry point ---------------------------------------------------------------------

    def handle(self, message: AnyMessage, peer: str, link: Link6, now: float,
               unicast: bool = False) -> Outcome6 | None:
        """The outcome for one decoded datagram from `peer` (its source address), or None.
        `unicast`: it was sent to one of our addresses, not to All_DHCP_Relay_Agents_and_
        Servers.  PacketError when an option the decision needs is malformed."""
        relays: list[RelayMessage] = []
        if isinstance(message, RelayMessage):
            if message.msg_type != MessageType.RELAY_FORW:
                self.stats.ignored += 1
                return None
            if not self._relays.allow(peer, now):
                self.stats.rate_limited_relay += 1
                return None
            client_message, relays = p6.innermost(message)
        else:
            client_message = message
        kind = client_message.kind
        if kind is None or kind not in _SERVER_ID_RULE:
            self.stats.ignored += 1  # ADVERTISE, REPLY, RECONFIGURE are for clients
            return None
        name = _NAMES[kind]
        self.stats.received[name] = self.stats.received.get(name, 0) + 1
        if not self._valid(client_message, kind):
            self.stats.ignored += 1
            return None
        client = client_message.client_id or b""
        if not self._clients.allow(client, now):
            self.stats.rate_limited_client += 1
            return None
        subnet = self._subnet_of(relays, link)
        if subnet is None:
            # A link (or relay) we have no [[dhcp.subnets6]] for: not ours to answer, not even
            # an INFORMATION-REQUEST (another server may serve it).
            self.stats.no_subnet += 1
            return None
        if unicast and not relays and kind in _UNICAST_CHECKED and subnet.unicast is None:
            self.stats.use_multicast += 1
            return self._out(self._use_multicast(client_message), peer, relays)
        relay_text = self._relay_text(relays)
        if kind is MessageType.INFORMATION_REQUEST:
            return self._out(self._information(client_message, subnet, link), peer, relays)
        if kind is MessageType.CONFIRM:
            return self._out(self._confirm(client_message, subnet), peer, relays)
        if kind is MessageType.SOLICIT:
            reply, leases = self._solicit(client_message, subnet, link, relay_text, now)
        elif kind is MessageType.REQUEST:
            reply, leases = self._request(client_message, subnet, link, relay_text, now)
        elif kind in (MessageType.RENEW, MessageType.REBIND):
            reply, leases = self._extend(client_message, subnet, link, relay_text, now)
        elif kind is MessageType.RELEASE:
            reply, leases = self._release(client_message, subnet, now)
        else:
            reply, leases = self._decline(client_message, subnet, now)
        return self._out(reply, peer, relays, tuple(leases))

    def _valid(self, message: Message, kind: MessageType) -> bool:
        """RFC 8415 16: a client identifier (except INFORMATION-REQUEST), a server
        identifier exactly when the type needs one, and ours."""
        client = message.client_id
        if client is None and kind is not MessageType.INFORMATION_REQUEST:
            return False
        if client is not None and not p6.duid_valid(client):
            return False
        server = message.server_id
        rule = _SERVER_ID_RULE[kind]
        if rule is True and server != self.server_duid:
            return False
        if rule is False and server is not None:
            return False
        if rule is None and server is not None and server != self.server_duid:
            return False
        if kind is MessageType.INFORMATION_REQUEST and any(
                message.has(code) for code in _IA_CODES):
            return False  # 16.12
        return True

    def _subnet_of(self, relays: list[RelayMessage], link: Link6) -> Subnet6 | None:
        """RFC 8415 13.1: relayed, the link-address of the relay nearest the client (or the
        next one out when that one is unspecified or link-local); else, or when no relay
        names a usable link-address, the link the message came in on."""
        for relay in reversed(relays):
            address = relay.link_address
            if address.is_unspecified or address.is_link_local:
                continue
            return find_subnet6(self.subnets, address)
        for address in link.addresses:
            subnet = find_subnet6(self.subnets, address)
            if subnet is not None:
                return subnet
        # A link whose addresses are in no configured prefix: with one subnet, it is that one.
        return self.subnets[0] if len(self.subnets) == 1 and not link.addresses else None

    @staticmethod
    def _relay_text(relays: list[RelayMessage]) -> str:
        if not relays:
            return ""
        nearest = relays[-1]
        text = f"{nearest.link_address}"
        if nearest.interface_id:
            text += f" interface-id {nearest.interface_id.hex()}"
        return text

    # -- 18.3.1, 18.3.2: SOLICIT and REQUEST -------------------------------------------------

    def _solicit(self, message: Message, subnet: Subnet6, link: Link6, relay: str,
                 now: float) -> tuple[Message, list[LeaseRecord6]]:
        rapid = message.rapid_commit and subnet.rapid_commit  # 18.3.1
        ias, leases, any_address = self._assign(message, subnet, relay, now, commit=rapid)
        if not any_address and self._has_ia_na(message):
            self._exhausted(subnet, now)
        if rapid:
            options = [*ias, (Option.RAPID_COMMIT, b"")]
            return self._reply(MessageType.REPLY, message, subnet, link, options), leases
        extra: list[tuple[int, bytes]] = list(ias)
        if subnet.preference:
            extra.append((Option.PREFERENCE, bytes((subnet.preference,))))
        return self._reply(MessageType.ADVERTISE, message, subnet, link, extra), []

    def _request(self, message: Message, subnet: Subnet6, link: Link6, relay: str,
                 now: float) -> tuple[Message, list[LeaseRecord6]]:
        ias, leases, any_address = self._assign(message, subnet, relay, now, commit=True,
                                                request=True)
        if not any_address and self._has_ia_na(message):
            self._exhausted(subnet, now)
        return self._reply(MessageType.REPLY, message, subnet, link, ias), leases

    @staticmethod
    def _has_ia_na(message: Message) -> bool:
        return message.has(Option.IA_NA)

    def _assign(self, message: Message, subnet: Subnet6, relay: str, now: float,
                commit: bool, request: bool = False
                ) -> tuple[list[tuple[int, bytes]], list[LeaseRecord6], bool]:
        """An address for each IA_NA (held, or bound when `commit`); IA_TA and IA_PD get
        their NoAddrsAvail / NoPrefixAvail (18.3.9, 18.3.10).  In a REQUEST, an IA naming an
        address not on this link gets NotOnLink (18.3.2); in a SOLICIT such a hint is only
        ignored."""
        duid = message.client_id or b""
        hostname = self._hostname(message)
        out: list[tuple[int, bytes]] = []
        leases: list[LeaseRecord6] = []
        any_address = False
        for code, value in message.options:
            if code == Option.IA_NA:
                ia = IANA.decode(value)
                hints = listed_addresses(ia)
                if request and not all(subnet.contains(a) for a in hints):
                    out.append(self._ia_status(ia.iaid, Status.NOT_ON_LINK,
                                               "address not on this link"))
                    continue
                address = self._choose(subnet, duid, ia.iaid, hints, now)
                if address is None:
                    out.append(self._ia_status(ia.iaid, Status.NO_ADDRS_AVAIL,
                                               "no addresses available"))
                    continue
                any_address = True
                if commit:
                    binding = self._bind(subnet, duid, ia.iaid, address, hostname, relay, now)
                    leases.append(self._record(binding))
                else:
                    held = self.by_address.get(address)
                    if held is None or held.duid != duid or held.iaid != ia.iaid or \
                            held.state is not BindingState.BOUND or not held.active(now):
                        self._place(Binding6(address, duid, ia.iaid, BindingState.OFFERED,
                                             now, now + self.settings.offer_hold, subnet,
                                             hostname, relay))
                out.append(self._ia_na(ia.iaid, subnet, address, subnet.preferred_lifetime,
                                       subnet.valid_lifetime))
            elif code == Option.IA_TA:
                iaid = IATA.decode(value).iaid
                out.append((Option.IA_TA, IATA(iaid, (p6.status_option(
                    Status.NO_ADDRS_AVAIL, "no temporary addresses here"),)).encode()))
            elif code == Option.IA_PD:
                iaid = IAPD.decode(value).iaid
                out.append((Option.IA_PD, IAPD(iaid, 0, 0, (p6.status_option(
                    Status.NO_PREFIX_AVAIL, "no prefix delegation here"),)).encode()))
        return out, leases, any_address

    def _choose(self, subnet: Subnet6, duid: bytes, iaid: int, hints: list[int],
                now: float) -> int | None:
        """The IA's reservation, its current or previous address, an address it asks for
        (18.3.1: a hint), then a free one from the pool."""
        reservation = subnet.reservation_for(duid, iaid)
        if reservation is not None:
            address = int(reservation.address)
            return address if self._free_for(address, duid, iaid, now) else None
        index = self._subnet_index[id(subnet)]
        previous = self.by_ia.get((index, duid, iaid))
        if previous is not None and self._usable(subnet, previous.address, duid, iaid, now):
            return previous.address
        for hint in hints:
            if self._usable(subnet, hint, duid, iaid, now):
                return hint
        return self._free_address(subnet, index, now)

    def _free_for(self, address: int, duid: bytes, iaid: int, now: float) -> bool:
        held = self.by_address.get(address)
        if held is None or not held.active(now):
            return True
        return held.duid == duid and held.iaid == iaid and \
            held.state is not BindingState.DECLINED

    def _usable(self, subnet: Subnet6, address: int, duid: bytes, iaid: int,
                now: float) -> bool:
        return (subnet.in_pool(address) and address not in subnet.reserved_addresses
                and self._free_for(address, duid, iaid, now))

    def _free_address(self, subnet: Subnet6, index: int, now: float) -> int | None:
        """The next free pool address after the last one given (pools may be a /64: never
        walked whole; among len(bindings) + 1 candidates one is free if any is)."""
        size = subnet.size
        if size == 0:
            return None
        tries = min(size, len(self.by_address) + len(subnet.reserved_addresses) + 1)
        cursor = self._cursor.get(index, 0)
        for step in range(tries):
            offset = (cursor + step) % size
            address = _nth(subnet.ranges, offset)
            if address in subnet.reserved_addresses:
                continue
            held = self.by_address.get(address)
            if held is None or not held.active(now):
                self._cursor[index] = offset + 1
                return address
        return None

    def _bind(self, subnet: Subnet6, duid: bytes, iaid: int, address: int, hostname: str,
              relay: str, now: float) -> Binding6:
        binding = Binding6(address, duid, iaid, BindingState.BOUND, now,
                           now + subnet.valid_lifetime, subnet, hostname, relay)
        self._place(binding)
        return binding

    def _exhausted(self, subnet: Subnet6, now: float) -> None:
        self.stats.pool_exhausted += 1
        index = self._subnet_index[id(subnet)]
        last = self._last_alarm.get(index)
        if last is None or now - last >= self.settings.exhaustion_log_interval:
            self._last_alarm[index] = now
            log.warning("dhcp6: pool of %s exhausted (%d addresses): clients get "
                        "NoAddrsAvail", subnet.name, subnet.size)

    # -- 18.3.4, 18.3.5: RENEW and REBIND ----------------------------------------------------

    def _extend(self, message: Message, subnet: Subnet6, link: Link6, relay: str,
                now: float) -> tuple[Message, list[LeaseRecord6]]:
        """Each IA_NA: its binding extended (addresses the client lists that are not the
        binding's get lifetimes 0); without a binding, addresses not on this link get
        lifetimes 0 and the IA gets NoBinding (18.3.4, 18.3.5)."""
        duid = message.client_id or b""
        index = self._subnet_index[id(subnet)]
        out: list[tuple[int, bytes]] = []
        leases: list[LeaseRecord6] = []
        for code, value in message.options:
            if code == Option.IA_NA:
                ia = IANA.decode(value)
                listed = listed_addresses(ia)
                binding = self.by_ia.get((index, duid, ia.iaid))
                if binding is not None and binding.state is BindingState.OFFERED:
                    binding = None
                if binding is not None and self.by_address.get(binding.address) is binding \
                        and self._still_appropriate(subnet, binding, duid, ia.iaid, now):
                    bound = self._bind(subnet, duid, ia.iaid, binding.address,
                                       self._hostname(message) or binding.hostname,
                                       relay or binding.relay, now)
                    leases.append(self._record(bound))
                    gone = [(a, 0, 0) for a in listed if a != bound.address]
                    out.append(self._ia_na_many(ia.iaid, subnet, [
                        (bound.address, subnet.preferred_lifetime, subnet.valid_lifetime),
                        *gone]))
                    continue
                off_link = [a for a in listed if not subnet.contains(a)]
                inner: list[tuple[int, bytes]] = [
                    (Option.IAADDR, IAAddress(IPv6Address(a), 0, 0).encode())
                    for a in off_link]
                inner.append(p6.status_option(Status.NO_BINDING, "no binding for this IA"))
                out.append((Option.IA_NA, IANA(ia.iaid, 0, 0, tuple(inner)).encode()))
            elif code in (Option.IA_TA, Option.IA_PD):
                out.append(self._no_binding(code, value))
        return self._reply(MessageType.REPLY, message, subnet, link, out), leases

    def _still_appropriate(self, subnet: Subnet6, binding: Binding6, duid: bytes, iaid: int,
                           now: float) -> bool:
        reservation = subnet.reservation_for(duid, iaid)
        if reservation is not None:
            return int(reservation.address) == binding.address
        return subnet.in_pool(binding.address) and \
            binding.address not in subnet.reserved_addresses

    def _no_binding(self, code: int, value: bytes) -> tuple[int, bytes]:
        status = (p6.status_option(Status.NO_BINDING, "no binding for this IA"),)
        if code == Option.IA_TA:
            return Option.IA_TA, IATA(IATA.decode(value).iaid, status).encode()
        if code == Option.IA_PD:
            return Option.IA_PD, IAPD(IAPD.decode(value).iaid, 0, 0, status).encode()
        return Option.IA_NA, IANA(IANA.decode(value).iaid, 0, 0, status).encode()

    # -- 18.3.7, 18.3.8: RELEASE and DECLINE -------------------------------------------------

    def _release(self, message: Message, subnet: Subnet6,
                 now: float) -> tuple[Message, list[LeaseRecord6]]:
        duid = message.client_id or b""
        out: list[tuple[int, bytes]] = []
        leases: list[LeaseRecord6] = []
        for code, value in message.options:
            if code == Option.IA_NA:
                ia = IANA.decode(value)
                released = False
                for a in ia.addresses:
                    binding = self.by_address.get(int(a.address))
                    if binding is not None and binding.duid == duid and \
                            binding.iaid == ia.iaid and binding.state is BindingState.BOUND:
                        binding.state = BindingState.RELEASED
                        binding.expires = now
                        leases.append(self._record(binding))
                        released = True
                if not released:
                    out.append(self._no_binding(code, value))
            elif code in (Option.IA_TA, Option.IA_PD):
                out.append(self._no_binding(code, value))
        out.append(p6.status_option(Status.SUCCESS, "release received"))
        return self._reply(MessageType.REPLY, message, subnet, None, out,
                           config=False), leases

    def _decline(self, message: Message, subnet: Subnet6,
                 now: float) -> tuple[Message, list[LeaseRecord6]]:
        duid = message.client_id or b""
        out: list[tuple[int, bytes]] = []
        leases: list[LeaseRecord6] = []
        for code, value in message.options:
            if code == Option.IA_NA:
                ia = IANA.decode(value)
                declined = False
                for a in ia.addresses:
                    binding = self.by_address.get(int(a.address))
                    if binding is None or binding.duid != duid or binding.iaid != ia.iaid:
                        continue
                    self._forget(binding)
                    quarantine = Binding6(binding.address, b"", 0, BindingState.DECLINED, now,
                                          now + self.settings.decline_hold, binding.subnet)
                    self._place(quarantine)
                    leases.append(self._record(quarantine))
                    declined = True
                    log.warning("dhcp6: %s declined %s (in use by another host?): out of the "
                                "pool for %d s", p6.describe_duid(duid), a.address,
                                self.settings.decline_hold)
                if not declined:
                    out.append(self._no_binding(code, value))
            elif code in (Option.IA_TA, Option.IA_PD):
                out.append(self._no_binding(code, value))
        out.append(p6.status_option(Status.SUCCESS, "decline received"))
        return self._reply(MessageType.REPLY, message, subnet, None, out,
                           config=False), leases

    # -- 18.3.3, 18.3.6: CONFIRM and INFORMATION-REQUEST -------------------------------------

    def _confirm(self, message: Message, subnet: Subnet6) -> Message | None:
        """Success when every address the client lists is on this link, NotOnLink when one
        is not; no reply when it lists none (18.3.3)."""
        addresses: list[IPv6Address] = []
        for code, value in message.options:
            if code == Option.IA_NA:
                addresses += [a.address for a in IANA.decode(value).addresses]
            elif code == Option.IA_TA:
                addresses += [IAAddress.decode(v).address
                              for v in p6.every(IATA.decode(value).options, Option.IAADDR)]
        if not addresses:
            self.stats.ignored += 1
            return None
        if all(subnet.contains(a) for a in addresses):
            status = p6.status_option(Status.SUCCESS, "all addresses on link")
        else:
            status = p6.status_option(Status.NOT_ON_LINK, "not on this link")
        return self._reply(MessageType.REPLY, message, subnet, None, [status], config=False)

    def _information(self, message: Message, subnet: Subnet6, link: Link6) -> Message:
        extra: list[tuple[int, bytes]] = []
        if subnet.information_refresh_time:
            extra.append((Option.INFORMATION_REFRESH_TIME,
                          p6.u32(subnet.information_refresh_time)))
        return self._reply(MessageType.REPLY, message, subnet, link, extra)

    def _use_multicast(self, message: Message) -> Message:
        """RFC 8415 18.4: only a status, the server and client identifiers."""
        options: list[tuple[int, bytes]] = [
            p6.status_option(Status.USE_MULTICAST, "send to ff02::1:2"),
            (Option.SERVERID, self.server_duid)]
        if message.client_id is not None:
            options.append((Option.CLIENTID, message.client_id))
        self._count_sent(MessageType.REPLY)
        return Message(MessageType.REPLY, message.transaction_id, tuple(options))

    # -- building replies ---------------------------------------------------------------------

    def _ia_na(self, iaid: int, subnet: Subnet6, address: int, preferred: int,
               valid: int) -> tuple[int, bytes]:
        return self._ia_na_many(iaid, subnet, [(address, preferred, valid)])

    def _ia_na_many(self, iaid: int, subnet: Subnet6,
                    addresses: list[tuple[int, int, int]]) -> tuple[int, bytes]:
        """IA_NA (21.4) with an IAADDR (21.6) per (address, preferred, valid), packed at
        once: every ADVERTISE and REPLY has one."""
        head = _IA_NA_HEAD.pack(iaid, subnet.renewal_time, subnet.rebinding_time)
        if len(addresses) == 1:  # nearly always
            a, preferred, valid = addresses[0]
            return Option.IA_NA, head + _IAADDR.pack(Option.IAADDR, 24, a.to_bytes(16, "big"),
                                                     preferred, valid)
        return Option.IA_NA, head + b"".join(
            _IAADDR.pack(Option.IAADDR, 24, a.to_bytes(16, "big"), preferred, valid)
            for a, preferred, valid in addresses)

    @staticmethod
    def _ia_status(iaid: int, status: Status, text: str) -> tuple[int, bytes]:
        return Option.IA_NA, IANA(iaid, 0, 0, (p6.status_option(status, text),)).encode()

    @staticmethod
    def _hostname(message: Message) -> str:
        value = message.option(Option.CLIENT_FQDN)
        if value is None:
            return ""
        try:
            return ClientFQDN.decode(value).name[:253]
        except PacketError:
            return ""

    def _reply(self, kind: MessageType, message: Message, subnet: Subnet6 | None,
               link: Link6 | None, extra: Sequence[tuple[int, bytes]],
               config: bool = True) -> Message:
        """SERVERID, CLIENTID, `extra`, then the subnet's configuration options (18.3.9,
        18.3.10); CLIENT_FQDN answered with N set: netpost updates no DNS (RFC 4704 5)."""
        options: list[tuple[int, bytes]] = [(Option.SERVERID, self.server_duid)]
        if message.client_id is not None:
            options.append((Option.CLIENTID, message.client_id))
        options += extra
        if config and subnet is not None:
            options += subnet.options
            if subnet.unicast is not None:
                options.append((Option.UNICAST, subnet.unicast.packed))
            if subnet.ntp_auto and link is not None and link.ntp_address is not None:
                options.append((Option.NTP_SERVER, p6.ntp_server([str(link.ntp_address)])))
            fqdn = message.option(Option.CLIENT_FQDN)
            if fqdn:
                # The client's name as it sent it, flags S=0 O=0 N=1 (RFC 4704 5).
                options.append((Option.CLIENT_FQDN, bytes((ClientFQDN.N,)) + fqdn[1:]))
        self._count_sent(kind)
        return Message(kind, message.transaction_id, tuple(options))

    def _record(self, binding: Binding6) -> LeaseRecord6:
        return LeaseRecord6(IPv6Address(binding.address), binding.duid, binding.iaid,
                            binding.state.value, binding.starts, binding.expires,
                            binding.subnet.name, binding.hostname, binding.relay)

    def _count_sent(self, kind: MessageType) -> None:
        name = _NAMES[kind]
        self.stats.sent[name] = self.stats.sent.get(name, 0) + 1

    def _out(self, reply: Message | None, peer: str, relays: list[RelayMessage],
             leases: tuple[LeaseRecord6, ...] = ()) -> Outcome6 | None:
        """To the client (port 546), or wrapped in a RELAY-REPL for each relay, outermost
        to the relay it came from on port 547 (RFC 8415 19.3, 9.2)."""
        if reply is None:
            return None
        if not relays:
            return Outcome6(reply, (peer, p6.CLIENT_PORT), leases)
        wrapped: AnyMessage = reply
        for relay in reversed(relays):
            options: list[tuple[int, bytes]] = []
            if relay.interface_id is not None:
                options.append((Option.INTERFACE_ID, relay.interface_id))  # 19.3: echoed
            options.append((Option.RELAY_MSG, p6.encode(wrapped)))
            wrapped = RelayMessage(MessageType.RELAY_REPL, relay.hop_count, relay.link_address,
                                   relay.peer_address, tuple(options))
        return Outcome6(wrapped, (peer, p6.SERVER_PORT), leases)


_IA_NA_HEAD = struct.Struct("!III")  # IAID, T1, T2
_IAADDR = struct.Struct("!HH16sII")  # option code and length, address, lifetimes
_NAMES = {kind: kind.name for kind in MessageType}


def listed_addresses(ia: IANA) -> list[int]:
    """The addresses of an IA_NA's IAADDR options, as integers (decode checked the framing;
    a short IAADDR is PacketError as in `IAAddress.decode`)."""
    out = []
    for value in p6.every(ia.options, Option.IAADDR):
        if len(value) < 24:
            raise PacketError("IAADDR is shorter than 24 octets")
        out.append(int.from_bytes(value[:16], "big"))
    return out


def _nth(ranges: tuple[tuple[int, int], ...], offset: int) -> int:
    for first, last in ranges:
        size = last - first + 1
        if offset < size:
            return first + offset
        offset -= size
    raise IndexError(offset)
