"""The DHCPv4 server's decisions (RFC 2131 4.3), sans I/O: a message in, a reply out.

`DHCPEngine.handle(message, link, now)` says what to answer and where, and which binding
must be durable before the answer goes (an ACK's lease: the promise that an acknowledged
lease survives a restart).  It keeps every binding in memory, loaded from the lease store at
start; the caller commits the `Outcome.lease` records (a batch in one transaction) and only
then sends the replies that wait for them.

What it guarantees:
- an address is bound to one client at a time: `by_address` has one entry per address, and
  offers hold their address for `offer_hold` seconds;
- expired and released addresses return to the pool; a client gets its old address back when
  it is still free (RFC 2131 4.3.1);
- a declined address (RFC 2131 4.3.3) is quarantined for `decline_hold` seconds;
- per-client and per-relay token buckets bound how fast one client or one relay is served.

No sockets, clock or store: `now` comes in, records go out.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import NamedTuple

from netpost.dhcp.options import parse_client_fqdn, u32
from netpost.dhcp.packet import (
    BOOTREPLY,
    BOOTREQUEST,
    BROADCAST,
    BROADCAST_FLAG,
    ZERO,
    Message,
    MessageType,
    Option,
    client_key,
    encode_options,
    make_message,
    option_instances,
    printable,
    relay_suboptions,
)
from netpost.dhcp.subnets import Subnet, find_subnet

log = logging.getLogger("netpost.dhcp")

SERVER_PORT = 67
CLIENT_PORT = 68

# Options sent whether asked for or not (when the subnet has them): what a host needs to use
# the address at all.  Others go to clients that list them in option 55 (RFC 2131 4.3.1).
ALWAYS_SENT = (Option.SUBNET_MASK, Option.ROUTER, Option.DNS_SERVERS, Option.DOMAIN_NAME)
# Options the engine itself writes: a request list naming them takes nothing from the subnet.
_ENGINE_OPTIONS = frozenset((Option.MESSAGE_TYPE, Option.SERVER_IDENTIFIER, Option.LEASE_TIME,
                             Option.RENEWAL_TIME, Option.REBINDING_TIME,
                             Option.CLIENT_IDENTIFIER, Option.RELAY_AGENT_INFORMATION,
                             Option.MESSAGE))


class BindingState(enum.Enum):
    OFFERED = "offered"  # held for a client between OFFER and REQUEST (memory only)
    BOUND = "bound"  # ACKed and committed
    RELEASED = "released"  # the client gave it back (RFC 2131 4.3.4)
    DECLINED = "declined"  # a client found it in use (4.3.3): quarantined until `expires`
    EXPIRED = "expired"  # seen expired at start


@dataclass(slots=True)  # one per address in use: tens of thousands, no __dict__ each
class Binding:
    address: int
    client: bytes  # packet.client_key: the identity the binding belongs to
    state: BindingState
    starts: float
    expires: float
    subnet: Subnet
    hardware: bytes = b""
    hostname: str = ""
    relay: str = ""  # giaddr and option 82 circuit id, as text

    def active(self, now: float) -> bool:
        """Holds its address now (an offer, a lease, a quarantine)."""
        return self.state in (BindingState.OFFERED, BindingState.BOUND,
                              BindingState.DECLINED) and self.expires > now


class LeaseRecord(NamedTuple):
    """A binding as the lease store keeps it (the handler maps it to the store's `Lease`).
    A NamedTuple, as `Outcome`: one or two of each per DORA, made in a fifth of a frozen
    dataclass's time."""

    address: IPv4Address
    client: bytes
    state: str  # BindingState value (never "offered")
    starts: float
    expires: float
    subnet: str
    hardware: bytes
    hostname: str
    relay: str


class Outcome(NamedTuple):
    """What to do about one message: `lease` (if any) must be durable before `reply` (if any)
    goes to `destination`.  `max_size` is the client's limit for the reply's octets."""

    reply: Message | None = None
    destination: tuple[str, int] | None = None
    lease: LeaseRecord | None = None
    max_size: int = 576


@dataclass(frozen=True)
class Link:
    """Where a message came in: the address of netpost on that link (the server identifier,
    RFC 2131 4.3.1's "address of the interface") and where NTP is served, if anywhere."""

    server_address: IPv4Address
    ntp_here: bool = False
    packed: bytes = field(init=False, repr=False, compare=False)  # server_address's octets

    def __post_init__(self) -> None:
        object.__setattr__(self, "packed", self.server_address.packed)


@dataclass(frozen=True)
class EngineSettings:
    offer_hold: float = 30.0  # seconds an offered address waits for the client's REQUEST
    decline_hold: float = 3600.0  # seconds a declined address stays out of the pool
    client_rate: float = 10.0  # messages per second from one client (chaddr)
    client_burst: int = 20
    relay_rate: float = 5000.0  # messages per second through one relay (giaddr)
    relay_burst: int = 10000
    max_leases_per_circuit: int = 0  # bound leases per relay agent circuit id; 0: no limit
    authoritative: bool = True  # NAK requests for addresses of our subnets we cannot give
    exhaustion_log_interval: float = 60.0


@dataclass
class EngineStats:
    received: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    rate_limited_client: int = 0
    rate_limited_relay: int = 0
    circuit_limited: int = 0
    pool_exhausted: int = 0  # DISCOVERs that found no free address (the alarm counter)
    no_subnet: int = 0  # messages from links or relays with no configured subnet
    ignored: int = 0  # not for us (another server chosen, BOOTREPLY, no message type)


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class _Limiter:
    """Token buckets per key, bounded in number."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.buckets: dict[Hashable, _Bucket] = {}

    def allow(self, key: Hashable, now: float) -> bool:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self.buckets.clear()
            self.buckets[key] = _Bucket(self.burst - 1.0, now)
            return True
        elapsed = now - bucket.stamp
        if elapsed > 0.0:  # a clock set back gives no tokens, takes none
            tokens = bucket.tokens + elapsed * self.rate
            bucket.tokens = tokens if tokens < self.burst else float(self.burst)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True


class DHCPEngine:
    def __init__(self, subnets: Sequence[Subnet], settings: EngineSettings | None = None,
                 leases: Iterable[LeaseRecord] = ()) -> None:
        self.subnets = tuple(subnets)
        self.settings = settings or EngineSettings()
        self.stats = EngineStats()
        self.by_address: dict[int, Binding] = {}
        self.by_client: dict[tuple[int, bytes], Binding] = {}  # (subnet index, client) -> binding
        self._subnet_index = {id(s): i for i, s in enumerate(self.subnets)}
        self._cursor: dict[int, int] = {}  # subnet index -> next address to try
        self._clients = _Limiter(self.settings.client_rate, self.settings.client_burst)
        self._relays = _Limiter(self.settings.relay_rate, self.settings.relay_burst)
        self._circuits: dict[str, int] = {}
        self._last_alarm: dict[int, float] = {}
        self._option_cache: dict[tuple[int, bytes, bytes, bool], dict[int, bytes]] = {}
        # (kind, lease time, subnet, request list, link) -> the reply's options before the
        # client's own (61, 82), and their octets (`Message.wire_options`)
        self._blocks: dict[tuple[int, int | None, int, bytes, bytes, bool],
                           tuple[dict[int, bytes], bytes]] = {}
        self._full_until: dict[int, tuple[float, int]] = {}  # subnet -> (until, _freed then)
        self._freed = 0  # bumped whenever a binding ends early (release, forget)
        self._last_where: IPv4Address | None = None  # _subnet_of's last question...
        self._last_subnet: Subnet | None = None  # ...and answer
        for record in leases:
            self._load(record)

    # -- the lease table ---------------------------------------------------------------------

    def _load(self, record: LeaseRecord) -> None:
        subnet = find_subnet(self.subnets, record.address)
        if subnet is None:
            return  # a subnet no longer configured: its leases stay in the store, unused
        try:
            state = BindingState(record.state)
        except ValueError:
            return
        binding = Binding(int(record.address), record.client, state, record.starts,
                          record.expires, subnet, record.hardware, record.hostname,
                          record.relay)
        self._place(binding)

    def _place(self, binding: Binding) -> None:
        old = self.by_address.get(binding.address)
        if old is not None:
            self._forget(old)
        key = (self._subnet_index[id(binding.subnet)], binding.client)
        previous = self.by_client.get(key)
        if previous is not None and previous is not binding and binding.client:
            # One binding per client and subnet: the old address goes back to the pool.
            if self.by_address.get(previous.address) is previous:
                del self.by_address[previous.address]
            self._circuit_done(previous)
        self.by_address[binding.address] = binding
        if binding.client:
            self.by_client[key] = binding
        if binding.state is BindingState.BOUND and binding.relay:
            self._circuits[binding.relay] = self._circuits.get(binding.relay, 0) + 1

    def _forget(self, binding: Binding) -> None:
        self._freed += 1
        if self.by_address.get(binding.address) is binding:
            del self.by_address[binding.address]
        key = (self._subnet_index[id(binding.subnet)], binding.client)
        if self.by_client.get(key) is binding:
            del self.by_client[key]
        self._circuit_done(binding)

    def _circuit_done(self, binding: Binding) -> None:
        if binding.state is BindingState.BOUND and binding.relay in self._circuits:
            self._circuits[binding.relay] -= 1
            if self._circuits[binding.relay] <= 0:
                del self._circuits[binding.relay]

    def binding(self, address: IPv4Address) -> Binding | None:
        return self.by_address.get(int(address))

    def bindings(self) -> list[Binding]:
        return list(self.by_address.values())

    def external_release(self, address: IPv4Address, client: bytes, now: float) -> bool:
        """An administrator ended the lease (`netpost leases release`): the address returns
        to the pool and no longer belongs to the client, whose next renewal gets a NAK."""
        binding = self.by_address.get(int(address))
        if binding is None or binding.client != client or binding.state is not BindingState.BOUND:
            return False
        self._forget(binding)
        self._place(Binding(binding.address, b"", BindingState.RELEASED, binding.starts, now,
                            binding.subnet))
        return True

    def quarantine(self, address: IPv4Address, now: float) -> None:
        """Someone without a lease uses `address` (it answered a ping before an OFFER):
        keep it out of the pool for `decline_hold` seconds, as a DECLINE would."""
        held = self.by_address.get(int(address))
        subnet = held.subnet if held is not None else find_subnet(self.subnets, address)
        if subnet is None:
            return
        if held is not None:
            self._forget(held)
        self._place(Binding(int(address), b"", BindingState.DECLINED, now,
                            now + self.settings.decline_hold, subnet))

    # -- the entry point ---------------------------------------------------------------------

    def handle(self, message: Message, link: Link, now: float,
               unicast: bool | None = None) -> Outcome | None:
        """The outcome for one decoded message, or None (nothing to do).  `unicast`: the
        message was sent to our address (True), broadcast (False), or not known (None);
        it tells RENEWING from REBINDING (RFC 2131 4.3.2)."""
        kind = message.message_type
        if message.op != BOOTREQUEST or kind is None:
            self.stats.ignored += 1
            return None
        name = _TYPE_NAMES[kind]
        received = self.stats.received
        received[name] = received.get(name, 0) + 1
        giaddr = message.giaddr
        if giaddr is not ZERO and not self._relays.allow(int(giaddr), now):
            self.stats.rate_limited_relay += 1
            return None
        if not self._clients.allow(message.chaddr, now):
            self.stats.rate_limited_client += 1
            return None
        if kind is MessageType.DISCOVER:
            return self._discover(message, link, now)
        if kind is MessageType.REQUEST:
            return self._request(message, link, now, unicast)
        if kind is MessageType.DECLINE:
            return self._decline(message, link, now)
        if kind is MessageType.RELEASE:
            return self._release(message, link, now)
        if kind is MessageType.INFORM:
            return self._inform(message, link)
        self.stats.ignored += 1  # OFFER, ACK, NAK are for clients
        return None

    # -- RFC 2131 4.3.1: DHCPDISCOVER --------------------------------------------------------

    def _subnet_of(self, message: Message, link: Link) -> Subnet | None:
        """RFC 2131 4.3.1: the subnet of giaddr when relayed, else of the receiving link.
        The last answer is kept: message after message comes through the same relay or
        link (one shared address object each: packet._address, Link)."""
        giaddr = message.giaddr
        where = giaddr if giaddr is not ZERO else link.server_address
        if where is self._last_where:
            subnet = self._last_subnet
        else:
            subnet = find_subnet(self.subnets, where)
            self._last_where, self._last_subnet = where, subnet
        if subnet is None:
            self.stats.no_subnet += 1
        return subnet

    def _discover(self, message: Message, link: Link, now: float) -> Outcome | None:
        subnet = self._subnet_of(message, link)
        if subnet is None:
            return None
        client = client_key(message)
        address = self._choose(subnet, message, client, now)
        if address is None:
            self._exhausted(subnet, now)
            return None
        held = self.by_address.get(address)
        if held is None or held.client != client or held.state is not BindingState.BOUND \
                or not held.active(now):
            # Held for this client until it REQUESTs it (a bound lease stays as it is).
            self._place(Binding(address, client, BindingState.OFFERED, now,
                                now + self.settings.offer_hold, subnet, message.chaddr,
                                self._hostname(message, subnet, address),
                                self._relay_text(message)))
        reply = self._reply(message, MessageType.OFFER, link, subnet, IPv4Address(address),
                            self._lease_time(message, subnet))
        return self._out(reply, message)

    def _choose(self, subnet: Subnet, message: Message, client: bytes,
                now: float) -> int | None:
        """RFC 2131 4.3.1's order: the client's reservation, its current or previous
        address, the address it asks for, then a free one from the pool."""
        reservation = subnet.reservation_for(message.chaddr, message.client_identifier) \
            if subnet.reservations else None
        if reservation is not None:
            address = int(reservation.address)
            return address if self._free_for(address, client, now) else None
        index = self._subnet_index[id(subnet)]
        previous = self.by_client.get((index, client))
        if previous is not None and self._usable(subnet, previous.address, client, now):
            return previous.address
        requested = message.requested_address
        if requested is not None and subnet.contains(requested):
            if self._usable(subnet, int(requested), client, now):
                return int(requested)
        return self._free_address(subnet, index, now)

    def _free_for(self, address: int, client: bytes, now: float) -> bool:
        return _free(self.by_address.get(address), client, now)

    def _usable(self, subnet: Subnet, address: int, client: bytes, now: float) -> bool:
        """In a pool of the subnet, not reserved, and free or already this client's."""
        return subnet.dynamic(address) and self._free_for(address, client, now)

    def _free_address(self, subnet: Subnet, index: int, now: float) -> int | None:
        """A never-used pool address, or one whose offer lapsed (walking on from where the
        last search stopped), else the pool address that has been free longest.  When a
        search finds nothing, the pool is known full until its first binding ends: DISCOVERs
        meanwhile cost nothing (a flood on a full pool must not cost a walk each)."""
        full = self._full_until.get(index)
        if full is not None and now < full[0] and full[1] == self._freed:
            return None
        size = subnet.size
        cursor = self._cursor.get(index, 0)
        ranges = subnet.ranges
        by_address = self.by_address
        reserved = subnet.reserved_addresses
        single = ranges[0][0] if len(ranges) == 1 else None
        for step in range(size):
            offset = (cursor + step) % size
            address = single + offset if single is not None else _nth(ranges, offset)
            held = by_address.get(address)
            if (held is None or held.state is BindingState.OFFERED and held.expires <= now) \
                    and address not in reserved:
                self._cursor[index] = offset + 1
                return address
        best: Binding | None = None
        first_end = float("inf")
        for binding in by_address.values():
            if binding.subnet is not subnet or not subnet.dynamic(binding.address):
                continue
            if binding.active(now):
                first_end = min(first_end, binding.expires)
            elif best is None or binding.expires < best.expires:
                best = binding
        if best is None:
            self._full_until[index] = (first_end, self._freed)
            return None
        return best.address

    def _exhausted(self, subnet: Subnet, now: float) -> None:
        self.stats.pool_exhausted += 1
        index = self._subnet_index[id(subnet)]
        last = self._last_alarm.get(index)
        if last is None or now - last >= self.settings.exhaustion_log_interval:
            self._last_alarm[index] = now
            log.warning("dhcp: pool of %s exhausted: no free address (%d DISCOVERs unanswered "
                        "so far)", subnet.name, self.stats.pool_exhausted)

    # -- RFC 2131 4.3.2: DHCPREQUEST ---------------------------------------------------------

    def _request(self, message: Message, link: Link, now: float,
                 unicast: bool | None = None) -> Outcome | None:
        server_id = message.options.get(Option.SERVER_IDENTIFIER)
        if server_id is not None and len(server_id) != 4:
            server_id = None  # not an address: as if absent
        requested = message.requested_address
        client = client_key(message)
        if server_id is not None:
            # SELECTING: the client answers an OFFER (ours or another server's).
            if server_id != link.packed:
                self._withdraw_offer(message, client, link, now)
                self.stats.ignored += 1
                return None
            subnet = self._subnet_of(message, link)
            if subnet is None:
                return None
            address = requested if requested is not None else message.ciaddr
            return self._commit(message, link, subnet, client, address, now)
        if message.ciaddr is ZERO:
            # INIT-REBOOT: the client checks an address it had.
            if requested is None:
                self.stats.ignored += 1
                return None
            subnet = self._subnet_of(message, link)
            if subnet is None:
                return None
            if not subnet.contains(requested):
                return self._nak(message, link, "requested address is not on this network")
            binding = self.by_address.get(int(requested))
            reservation = subnet.reservation_for(message.chaddr, message.client_identifier)
            if (binding is not None and binding.client == client) or (
                    reservation is not None and reservation.address == requested):
                return self._commit(message, link, subnet, client, requested, now)
            mine = self.by_client.get((self._subnet_index[id(subnet)], client))
            if mine is None and (binding is None or not binding.active(now)):
                # 4.3.2: "If the DHCP server has no record of this client, then it MUST
                # remain silent".
                self.stats.ignored += 1
                return None
            return self._nak(message, link, "address not available to this client")
        # RENEWING (unicast to us) or REBINDING (broadcast): ciaddr is the client's address.
        subnet = find_subnet(self.subnets, message.ciaddr)
        if subnet is None:
            self.stats.no_subnet += 1
            return None
        binding = self.by_address.get(int(message.ciaddr))
        if binding is not None and binding.client == client and binding.state in (
                BindingState.BOUND, BindingState.RELEASED, BindingState.EXPIRED,
                BindingState.OFFERED):
            return self._commit(message, link, subnet, client, message.ciaddr, now)
        if binding is not None and binding.active(now):
            return self._nak(message, link, "address is leased to another client")
        if unicast is False:
            # REBINDING (broadcast, RFC 2131 4.4.5): the client asks any server; the one that
            # holds its lease answers.  We have no lease of this client here: silence.
            self.stats.ignored += 1
            return None
        # RENEWING (unicast to us; or not known how it came)
        if binding is None and self.settings.authoritative and \
                self._usable(subnet, int(message.ciaddr), client, now):
            # We lost the record (a new data directory) but the address is free: keep the
            # client where it is rather than renumber it.
            return self._commit(message, link, subnet, client, message.ciaddr, now)
        if self.settings.authoritative:
            return self._nak(message, link, "no lease for this address")
        self.stats.ignored += 1
        return None

    def _withdraw_offer(self, message: Message, client: bytes, link: Link, now: float) -> None:
        """RFC 2131 4.3.2: a REQUEST naming another server declines our offer."""
        subnet = find_subnet(self.subnets, message.giaddr if message.giaddr is not ZERO
                             else link.server_address)
        if subnet is None:
            return
        binding = self.by_client.get((self._subnet_index[id(subnet)], client))
        if binding is not None and binding.state is BindingState.OFFERED:
            self._forget(binding)

    def _commit(self, message: Message, link: Link, subnet: Subnet, client: bytes,
                address: IPv4Address, now: float) -> Outcome:
        """ACK `address` to the client if it may have it, else NAK."""
        value = int(address)
        held = self.by_address.get(value)
        free = _free(held, client, now)  # _free_for, with the binding at hand (used below)
        reservation = subnet.reservation_for(message.chaddr, message.client_identifier) \
            if subnet.reservations else None
        if reservation is not None:
            allowed = int(reservation.address) == value and free
        else:
            allowed = free and subnet.dynamic(value)  # _usable
        if not allowed:
            return self._nak(message, link, "requested address not available")
        relay = self._relay_text(message)
        limit = self.settings.max_leases_per_circuit
        renewing = held is not None and held.client == client and held.state is BindingState.BOUND
        if limit and relay and not renewing and self._circuits.get(relay, 0) >= limit:
            self.stats.circuit_limited += 1
            return self._nak(message, link, "too many leases on this circuit")
        lease_time = self._lease_time(message, subnet)
        binding = Binding(value, client, BindingState.BOUND, now, now + lease_time, subnet,
                          message.chaddr, self._hostname(message, subnet, value), relay)
        self._place(binding)
        record = LeaseRecord(address, client, _BOUND, now, binding.expires,
                             subnet.name, message.chaddr, binding.hostname, relay)
        reply = self._reply(message, MessageType.ACK, link, subnet, address, lease_time)
        return self._out(reply, message, record)

    def _nak(self, message: Message, link: Link, why: str) -> Outcome:
        """RFC 2131 4.3.2 / table 3: a DHCPNAK carries only the server identifier, a message
        and the client identifier; via a relay it has the broadcast bit set (4.1)."""
        options: dict[int, bytes] = {
            Option.MESSAGE_TYPE: bytes((MessageType.NAK,)),
            Option.SERVER_IDENTIFIER: link.server_address.packed,
            Option.MESSAGE: why.encode(),
        }
        client_id = message.client_identifier
        if client_id is not None:
            options[Option.CLIENT_IDENTIFIER] = client_id
        self._echo_agent(message, options)
        flags = message.flags
        if message.giaddr is not ZERO:
            flags |= BROADCAST_FLAG
            destination = (str(message.giaddr), SERVER_PORT)
        else:
            destination = (str(BROADCAST), CLIENT_PORT)  # 4.1: NAKs are broadcast
        reply = Message(op=BOOTREPLY, xid=message.xid, chaddr=message.chaddr,
                        htype=message.htype, flags=flags, giaddr=message.giaddr,
                        options=options)
        self._count_sent(MessageType.NAK)
        return Outcome(reply, destination, None, message.max_message_size)

    # -- RFC 2131 4.3.3 - 4.3.5 --------------------------------------------------------------

    def _decline(self, message: Message, link: Link, now: float) -> Outcome | None:
        """The client found its offered address in use: quarantine it (no reply)."""
        requested = message.requested_address
        if requested is None or message.server_identifier not in (None, link.server_address):
            self.stats.ignored += 1
            return None
        binding = self.by_address.get(int(requested))
        client = client_key(message)
        if binding is None or binding.client != client:
            self.stats.ignored += 1
            return None
        self._forget(binding)
        declined = Binding(binding.address, b"", BindingState.DECLINED, now,
                           now + self.settings.decline_hold, binding.subnet)
        self._place(declined)
        log.warning("dhcp: %s declined %s (in use by another host?): out of the pool for %d s",
                    message.hardware_address, requested, self.settings.decline_hold)
        record = LeaseRecord(requested, b"", BindingState.DECLINED.value, now, declined.expires,
                             binding.subnet.name, message.chaddr, "", "")
        return Outcome(lease=record)

    def _release(self, message: Message, link: Link, now: float) -> Outcome | None:
        """RFC 2131 4.3.4: the client gives its lease back (ciaddr); no reply.  The binding
        stays with the client so that it gets the same address next time if still free."""
        binding = self.by_address.get(int(message.ciaddr))
        client = client_key(message)
        if binding is None or binding.client != client or binding.state is not \
                BindingState.BOUND:
            self.stats.ignored += 1
            return None
        self._circuit_done(binding)
        binding.state = BindingState.RELEASED
        binding.expires = now
        self._freed += 1
        record = LeaseRecord(message.ciaddr, client, BindingState.RELEASED.value, binding.starts,
                             now, binding.subnet.name, binding.hardware, binding.hostname,
                             binding.relay)
        return Outcome(lease=record)

    def _inform(self, message: Message, link: Link) -> Outcome | None:
        """RFC 2131 4.3.5: configuration only, no lease, no lease time; sent to ciaddr."""
        where = message.giaddr if message.giaddr is not ZERO else message.ciaddr
        subnet = find_subnet(self.subnets, where) if where is not ZERO else None
        if subnet is None:
            subnet = self._subnet_of(message, link)
        if subnet is None:
            return None
        reply = self._reply(message, MessageType.ACK, link, subnet, ZERO, None)
        return self._out(reply, message)

    # -- building replies ---------------------------------------------------------------------

    def _lease_time(self, message: Message, subnet: Subnet) -> int:
        """The configured lease time, or less when the client asks for less (RFC 2131 3.5)."""
        asked = message.lease_time
        if asked is not None and 60 <= asked < subnet.lease_time:
            return asked
        return subnet.lease_time

    def _hostname(self, message: Message, subnet: Subnet, address: int) -> str:
        """Option 12, else the name in option 81 (RFC 4702), else the reservation's."""
        name = message.hostname
        if not name:
            fqdn_value = message.options.get(Option.CLIENT_FQDN)
            fqdn = parse_client_fqdn(fqdn_value) if fqdn_value is not None else None
            name = fqdn.name if fqdn is not None and fqdn.name else ""
        if not name:
            for r in subnet.reservations:
                if int(r.address) == address and r.hostname:
                    return r.hostname
        return name[:253]

    @staticmethod
    def _relay_text(message: Message) -> str:
        if message.giaddr is ZERO:
            return ""
        agent = message.options.get(Option.RELAY_AGENT_INFORMATION)
        circuit = relay_suboptions(agent).get(1) if agent is not None else None
        relay = address_text(message.giaddr)
        return relay + f" circuit {circuit.hex()}" if circuit else relay

    @staticmethod
    def _echo_agent(message: Message, options: dict[int, bytes]) -> None:
        """RFC 3046 2.2: option 82 goes back to the relay as it came."""
        agent = message.options.get(Option.RELAY_AGENT_INFORMATION)
        if agent is not None and message.giaddr is not ZERO:
            options[Option.RELAY_AGENT_INFORMATION] = agent

    def _reply(self, message: Message, kind: MessageType, link: Link, subnet: Subnet,
               yiaddr: IPv4Address, lease_time: int | None) -> Message:
        """An OFFER or ACK (RFC 2131 table 3) with the subnet's options."""
        asked = message.options
        wanted = asked.get(Option.PARAMETER_REQUEST_LIST, b"")
        if type(wanted) is not bytes:
            wanted = bytes(wanted)
        options, wire = self._block(kind, lease_time, subnet, wanted, link)
        wire_options: bytes | None = wire
        client_id = message.client_identifier
        agent = asked.get(Option.RELAY_AGENT_INFORMATION) \
            if message.giaddr is not ZERO else None
        if client_id is not None or agent is not None:
            options = dict(options)  # the block is shared by every reply: not changed
            if client_id is not None:
                if Option.CLIENT_IDENTIFIER in options:
                    wire_options = None  # configured as an option too: encode places it
                options[Option.CLIENT_IDENTIFIER] = client_id  # RFC 6842: echo it back
                if wire_options is not None:
                    wire_options += _option_octets(Option.CLIENT_IDENTIFIER, client_id)
            if agent is not None:
                if Option.RELAY_AGENT_INFORMATION in options:
                    wire_options = None
                options[Option.RELAY_AGENT_INFORMATION] = agent  # RFC 3046 2.2: echoed
                if wire_options is not None:
                    wire_options += _option_octets(Option.RELAY_AGENT_INFORMATION, agent)
        self._count_sent(kind)
        return make_message(BOOTREPLY, message.xid, message.chaddr, message.htype, 0, 0,
                            message.flags, message.ciaddr if kind is MessageType.ACK else ZERO,
                            yiaddr, ZERO, message.giaddr, b"", b"", options, wire_options)

    def _block(self, kind: MessageType, lease_time: int | None, subnet: Subnet, wanted: bytes,
               link: Link) -> tuple[dict[int, bytes], bytes]:
        """The options of an OFFER or ACK before the client's own (61, 82), and their
        octets: the same few serve every client, so they are made once."""
        key = (kind, lease_time, id(subnet), wanted, link.packed, link.ntp_here)
        known = self._blocks.get(key)
        if known is not None:
            return known
        options: dict[int, bytes] = {
            Option.MESSAGE_TYPE: bytes((kind,)),
            Option.SERVER_IDENTIFIER: link.packed,
        }
        if lease_time is not None:
            options[Option.LEASE_TIME] = u32(lease_time)
            scale = lease_time / subnet.lease_time
            options[Option.RENEWAL_TIME] = u32(int(subnet.renewal_time * scale))
            options[Option.REBINDING_TIME] = u32(int(subnet.rebinding_time * scale))
        options.update(self._subnet_options(subnet, wanted, link))
        if len(self._blocks) >= 4096:
            self._blocks.clear()  # clients with odd request lists or lease times: bounded
        known = self._blocks[key] = (options, encode_options(options))
        return known

    def _subnet_options(self, subnet: Subnet, wanted: bytes, link: Link) -> dict[int, bytes]:
        """The subnet's options for a client asking for `wanted` (option 55), in the order
        they are sent; the same few lists serve every client, so they are kept."""
        key = (id(subnet), wanted, link.packed, link.ntp_here)
        cached = self._option_cache.get(key)
        if cached is not None:
            return cached
        options: dict[int, bytes] = {}
        configured = subnet.options
        for always in ALWAYS_SENT:
            value = configured.get(always)
            if value is not None:
                options[always] = value
        ntp_here = subnet.ntp_auto and link.ntp_here
        for code in wanted:
            if code in options or code in _ENGINE_OPTIONS:
                continue
            if code == Option.NTP_SERVERS and ntp_here:
                options[code] = link.server_address.packed
                continue
            value = configured.get(code)
            if value is not None:
                options[code] = value
        if not wanted:
            for configured_code, configured_value in configured.items():
                options.setdefault(configured_code, configured_value)
            if ntp_here:
                options.setdefault(Option.NTP_SERVERS, link.server_address.packed)
        if len(self._option_cache) >= 4096:
            self._option_cache.clear()  # clients with odd request lists: stay bounded
        self._option_cache[key] = options
        return options

    def _count_sent(self, kind: MessageType) -> None:
        name = _TYPE_NAMES[kind]
        self.stats.sent[name] = self.stats.sent.get(name, 0) + 1

    def _out(self, reply: Message, message: Message, lease: LeaseRecord | None = None) -> Outcome:
        return Outcome(reply, reply_destination(message, reply), lease,
                       message.max_message_size)


def _free(held: Binding | None, client: bytes, now: float) -> bool:
    """An address whose binding is `held` may go to `client`: nobody holds it, or the client
    does itself (and has not declined it)."""
    if held is None or not held.active(now):
        return True
    return held.client == client and held.state is not BindingState.DECLINED


def reply_destination(request: Message, reply: Message) -> tuple[str, int]:
    """RFC 2131 4.1, where a server sends a reply:
    - giaddr set: to the relay, on the server port;
    - else ciaddr set: unicast to ciaddr (a client that has its address: RENEWING, INFORM);
    - else broadcast.  The RFC's other case -- unicast to yiaddr and chaddr when the
      broadcast bit is clear -- needs an ARP entry for an address the client does not use yet
      (raw sockets or SIOCSARP); 4.1 allows broadcasting instead ("If unicasting is not
      possible, the message MAY be sent as an IP broadcast"), and every client listens for
      broadcasts while it has no address."""
    if request.giaddr is not ZERO:
        return address_text(request.giaddr), SERVER_PORT
    if request.ciaddr is not ZERO:
        return str(request.ciaddr), CLIENT_PORT
    return _BROADCAST_TEXT, CLIENT_PORT


def _option_octets(code: int, value: bytes) -> bytes:
    """One option as `encode` writes it (several instances past 255 octets, RFC 3396)."""
    if 0 < len(value) <= 255:
        return bytes((code, len(value))) + value
    return b"".join(option_instances(code, value))


_BROADCAST_TEXT = str(BROADCAST)
_BOUND = BindingState.BOUND.value  # an enum member's .value is a descriptor call each time
_TYPE_NAMES = {kind: kind.name for kind in MessageType}
_TEXTS: dict[int, str] = {}  # relays' addresses as text


def address_text(address: IPv4Address) -> str:
    """str(address), kept for the few addresses met again and again (relays)."""
    value = int(address)
    text = _TEXTS.get(value)
    if text is None:
        if len(_TEXTS) >= 1024:
            _TEXTS.clear()
        text = _TEXTS[value] = str(address)
    return text


def _nth(ranges: tuple[tuple[int, int], ...], offset: int) -> int:
    for first, last in ranges:
        size = last - first + 1
        if offset < size:
            return first + offset
        offset -= size
    raise IndexError(offset)


def describe(message: Message) -> str:
    """Who a message is from, for logs: MAC and hostname."""
    name = message.hostname
    return message.hardware_address + (f" ({printable(name.encode())})" if name else "")
