"""The DHCPv4 listener's handler: datagrams to the engine, leases to the store, replies out.

Each batch the listener hands over is decoded and decided at once; replies that promise a
lease (ACKs) wait until their leases are durable (committer.py: one task at a time commits;
while a transaction runs, the next ones gather, and go together in the next transaction --
group commit -- so a burst of REQUESTs costs a few fsyncs, not one each).  OFFERs, NAKs and
INFORM answers promise nothing and go at once.

Malformed datagrams are dropped and counted (`DatagramStats.dropped` and `malformed`), so are
replies too big for the client; nothing a client sends stops the server.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from netpost.dhcp.committer import AdminChanges, LeaseCommitter
from netpost.dhcp.engine import BindingState, DHCPEngine, LeaseRecord, Link, Outcome
from netpost.dhcp.packet import (
    Message,
    MessageType,
    PacketError,
    decode,
    describe_key,
    encode,
    summary,
)
from netpost.dhcp.ping import Pinger
from netpost.net.datagram import IP_PKTINFO, Datagram, DatagramHandler, DatagramListener
from netpost.store.interfaces import Lease, Leases, LeaseState

log = logging.getLogger("netpost.dhcp")

PING_TRIES = 3  # addresses probed for one DISCOVER before giving up
REPORT_INTERVAL = 300.0  # seconds between the counters' log lines (when something happened)
SIOCGIFADDR = 0x8915  # linux/sockios.h


@dataclass
class DHCPCounters:
    malformed: int = 0  # not a DHCP message
    oversized: int = 0  # a reply the client's maximum size could not take
    ping_answered: int = 0  # offered addresses that answered a ping (quarantined)


def interface_address(name: str) -> IPv4Address:
    """The IPv4 address of a network interface (SIOCGIFADDR), or OSError."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("256s", name.encode()[:15])
        answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
    return IPv4Address(answer[20:24])


_STATES: dict[str, LeaseState] = {"bound": "bound", "released": "released",
                                  "declined": "declined", "expired": "expired"}


_new = object.__new__
_set = object.__setattr__


def to_lease(record: LeaseRecord) -> Lease:
    """The store's `Lease` for a record, every field given: made as packet.make_message
    makes a Message (the frozen dataclass's __init__ sets its ten fields one
    `object.__setattr__` at a time; this is one of them per ACK)."""
    lease: Lease = _new(Lease)
    _set(lease, "__dict__", {
        # inet_ntoa: the same dotted quad as str(), for a fifth of the time
        "address": socket.inet_ntoa(record.address.packed), "client": record.client,
        "state": _STATES[record.state], "starts": record.starts, "expires": record.expires,
        "iaid": None, "hardware": record.hardware.hex(":"), "hostname": record.hostname,
        "subnet": record.subnet, "relay": record.relay})
    return lease


def to_record(lease: Lease) -> LeaseRecord:
    hardware = bytes.fromhex(lease.hardware.replace(":", "")) if lease.hardware else b""
    return LeaseRecord(IPv4Address(lease.address), lease.client, lease.state, lease.starts,
                       lease.expires, lease.subnet, hardware, lease.hostname, lease.relay)


class DHCPHandler(DatagramHandler):
    """One DHCPv4 listener (one link, or relays reaching one address)."""

    source_rate_limited = False  # clients without an address all come from 0.0.0.0
    sends_broadcast = True

    def __init__(self, listener: DatagramListener, engine: DHCPEngine, link: Link,
                 leases: Leases, pinger: Pinger | None = None,
                 ping_timeout: float = 0.0) -> None:
        super().__init__(listener)
        self.engine = engine
        self.link = link
        self.leases = leases
        self.pinger = pinger  # ping before offer, when configured
        self._server_text = str(link.server_address)
        self.ping_timeout = ping_timeout
        self.counters = DHCPCounters()
        self.committer = LeaseCommitter(leases, listener, "dhcp")
        self._admin = AdminChanges(leases, 4, "dhcp")
        self._reported = time.monotonic()
        self._reported_received = 0

    def open_socket(self) -> socket.socket | None:
        """The link socket, with IP_PKTINFO: each request says whether it was sent to our
        address or broadcast (RENEWING or REBINDING, RFC 2131 4.3.2)."""
        sock = self.listener.link_socket()
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        except BaseException:
            sock.close()
            raise
        return sock

    # -- datagrams in --------------------------------------------------------------------------

    def receive(self, batch: list[Datagram]) -> None:
        now = time.time()
        self._sync_external(now)
        self._report()
        for datagram in batch:
            try:
                message = decode(datagram.data)
            except PacketError as exc:
                self.counters.malformed += 1
                self.listener.stats.dropped += 1
                log.debug("dhcp: dropped a malformed datagram from %s: %s", datagram.peer[0], exc)
                continue
            unicast = None if datagram.destination is None else \
                datagram.destination == self._server_text
            try:
                outcome = self.engine.handle(message, self.link, now, unicast)
            except Exception:  # a bug must cost one message, not the batch or the server
                self.listener.stats.errors += 1
                log.exception("dhcp: failed on %s", summary(datagram.data))
                continue
            if outcome is None:
                continue
            if self.pinger is not None and self._fresh_offer(outcome):
                if not self.listener.spawn(self._probe_then_offer(message, outcome)):
                    self.listener.stats.dropped += 1
                continue
            self._act(outcome)
        self.committer.flush()

    def _act(self, outcome: Outcome) -> None:
        data = None
        if outcome.reply is not None:
            try:
                data = encode(outcome.reply, max_size=outcome.max_size)
            except PacketError as exc:
                self.counters.oversized += 1
                self.listener.stats.dropped += 1
                log.warning("dhcp: reply not sent: %s", exc)
        if outcome.lease is not None:
            self.committer.hold((to_lease(outcome.lease),), data, outcome.destination)
        elif data is not None and outcome.destination is not None:
            self.listener.send(data, outcome.destination)

    # -- ping before offer (RFC 2131 2.2, 3.1 step 2) ------------------------------------------

    def _fresh_offer(self, outcome: Outcome) -> bool:
        """An OFFER of an address the client does not hold already."""
        reply = outcome.reply
        if reply is None or reply.message_type is not MessageType.OFFER:
            return False
        binding = self.engine.binding(reply.yiaddr)
        return binding is not None and binding.state is BindingState.OFFERED

    async def _probe_then_offer(self, message: Message, outcome: Outcome) -> None:
        """Send the OFFER once nobody answers a ping of its address; an address that answers
        is quarantined and the next one tried (PING_TRIES at most, then no answer)."""
        assert self.pinger is not None
        for _ in range(PING_TRIES):
            reply = outcome.reply
            assert reply is not None
            if not await self.pinger.answers(str(reply.yiaddr), self.ping_timeout):
                self._act(outcome)
                return
            log.warning("dhcp: %s answers a ping but has no lease (a host with a static "
                        "address?): out of the pool for %d s", reply.yiaddr,
                        self.engine.settings.decline_hold)
            self.counters.ping_answered += 1
            now = time.time()
            self.engine.quarantine(reply.yiaddr, now)
            again = self.engine.handle(message, self.link, now)
            if again is None or not self._fresh_offer(again):
                if again is not None:
                    self._act(again)
                return
            outcome = again

    # -- what the command line changed ---------------------------------------------------------

    def _sync_external(self, now: float) -> None:
        """Apply `netpost leases release` (a row released by someone else) to the engine."""
        for lease in self._admin.poll():
            address = IPv4Address(lease.address)
            binding = self.engine.binding(address)
            if binding is not None and binding.state is BindingState.BOUND and \
                    binding.starts == lease.starts and \
                    self.engine.external_release(address, lease.client, now):
                log.info("dhcp: lease of %s (%s) released by the administrator", lease.address,
                         describe_key(lease.client))

    def report_line(self) -> str:
        """The counters in one line (the log, every REPORT_INTERVAL while busy)."""
        stats, c, k = self.engine.stats, self.counters, self.committer.counters
        received = " ".join(f"{k}={v}" for k, v in sorted(stats.received.items()))
        sent = " ".join(f"{k}={v}" for k, v in sorted(stats.sent.items()))
        batch = k.committed / k.commits if k.commits else 0.0
        took = k.commit_seconds / k.commits * 1000 if k.commits else 0.0
        return (f"dhcp counters: received {received or '-'}; sent {sent or '-'}; "
                f"commits {k.commits} ({batch:.1f} leases, {took:.1f} ms each, slowest "
                f"{k.slowest_commit * 1000:.0f} ms), failed {k.commit_failures}; "
                f"malformed {c.malformed}, oversized {c.oversized}, rate-limited "
                f"{stats.rate_limited_client} client / {stats.rate_limited_relay} relay, "
                f"circuit-limited {stats.circuit_limited}, pool exhausted "
                f"{stats.pool_exhausted}, no subnet {stats.no_subnet}, ignored {stats.ignored}")

    def close(self) -> None:
        if self.pinger is not None:
            self.pinger.close()
        if self.listener.stats.received:
            log.info("%s", self.report_line())

    def _report(self) -> None:
        tick = time.monotonic()
        if tick - self._reported < REPORT_INTERVAL:
            return
        self._reported = tick
        received = self.listener.stats.received
        if received != self._reported_received:
            self._reported_received = received
            log.info("%s", self.report_line())

    # -- the trace -----------------------------------------------------------------------------

    def describe(self, data: bytes, direction: str) -> str:
        return summary(data)


def load_records(leases: Leases) -> Sequence[LeaseRecord]:
    return [to_record(lease) for lease in leases.load_leases(4)]
