"""The DHCPv6 listener's handler: datagrams to the engine, leases to the store, replies out.

The socket (`open_socket`) is an IPv6 one bound to [::]:547 on the link's interface, joined to
All_DHCP_Relay_Agents_and_Servers (ff02::1:2, RFC 8415 7.1) there, with IPV6_RECVPKTINFO on so
that each datagram says whether it came to the group or to one of our addresses (unicast,
RFC 8415 18.4).  Replies go to the client's link-local address, port 546, or to the relay that
forwarded the message, port 547.

As in the v4 handler, a REPLY that gives or extends an address waits until its leases are
durable (committer.py: one task at a time commits, a batch per transaction -- group commit).
The server's DUID (RFC 8415 11) is made once, from the interface's Ethernet address and the
time (DUID-LLT, 11.2, as the RFC suggests for a server with stable storage), and kept in the
data directory: clients that hold our SERVERID keep talking to us after a restart.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from ipaddress import IPv6Address
from pathlib import Path

from netpost.dhcp import packet6 as p6
from netpost.dhcp.committer import AdminChanges, LeaseCommitter
from netpost.dhcp.engine6 import BindingState, DHCP6Engine, LeaseRecord6, Link6, Outcome6
from netpost.net.datagram import RECEIVE_BUFFER, Datagram, DatagramHandler, DatagramListener
from netpost.store.interfaces import Lease, Leases, LeaseState

log = logging.getLogger("netpost.dhcp")

DUID_FILE = Path("dhcp6") / "server-duid"
ARPHRD_ETHER = 1  # linux/if_arp.h; also the DUID hardware type (RFC 826 / IANA: 1)


@dataclass
class DHCP6Counters:
    malformed: int = 0


# --- the link ----------------------------------------------------------------------------------


def interface_addresses6(name: str) -> tuple[IPv6Address, ...]:
    """The global IPv6 addresses of an interface (/proc/net/if_inet6: address, index, prefix
    length, scope, flags, name; scope 00 is global)."""
    found: list[IPv6Address] = []
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return ()
    for line in lines:
        fields = line.split()
        if len(fields) == 6 and fields[5] == name and fields[3] == "00":
            found.append(IPv6Address(bytes.fromhex(fields[0])))
    return tuple(found)


def hardware_address(name: str) -> bytes | None:
    """The interface's Ethernet address, or None (not Ethernet, or unknown)."""
    base = Path("/sys/class/net") / name
    try:
        if int((base / "type").read_text()) != ARPHRD_ETHER:
            return None
        mac = bytes.fromhex((base / "address").read_text().strip().replace(":", ""))
    except (OSError, ValueError):
        return None
    return mac if len(mac) == 6 and any(mac) else None


def server_duid(data_dir: Path | None, interface: str | None) -> bytes:
    """Our DUID: read from DATA/dhcp6/server-duid, or made now and kept there (DUID-LLT from
    the interface's Ethernet address; DUID-UUID, RFC 6355, when there is none)."""
    path = data_dir / DUID_FILE if data_dir is not None else None
    if path is not None and path.exists():
        try:
            duid = bytes.fromhex(path.read_text().strip())
        except ValueError:
            duid = b""
        if p6.duid_valid(duid):
            return duid
        log.warning("dhcp6: %s does not hold a DUID; making a new one", path)
    mac = hardware_address(interface) if interface is not None else None
    duid = (p6.duid_llt(ARPHRD_ETHER, mac, time.time()) if mac is not None
            else p6.duid_uuid(uuid.uuid4().bytes))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        with open(temporary, "w") as out:
            out.write(duid.hex() + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        log.info("dhcp6: server DUID %s kept in %s", p6.describe_duid(duid), path)
    return duid


def bind_host6(host: str) -> str:
    """The IPv6 address to bind for a listener's host: "0.0.0.0" (an interface alone) is
    "::", the IPv4 loopback (the default `server.bind`) is "::1"."""
    if host in ("", "0.0.0.0"):
        return "::"
    if host == "127.0.0.1":
        return "::1"
    return host


def dhcp6_socket(host: str, port: int, interface: str | None) -> socket.socket:
    """[::]:547 (or `host`) on `interface`, joined to ff02::1:2 there, packet info on."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        if interface is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.bind((bind_host6(host), port))
        if interface is not None:
            index = socket.if_nametoindex(interface)
            group = p6.ALL_DHCP_RELAY_AGENTS_AND_SERVERS.packed
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                            group + struct.pack("@I", index))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# --- leases in the store -----------------------------------------------------------------------

_STATES: dict[str, LeaseState] = {"bound": "bound", "released": "released",
                                  "declined": "declined", "expired": "expired"}


def address_text6(address: IPv6Address) -> str:
    """str(address) (RFC 5952's form, as the lease table keys rows), by inet_ntop: the same
    text for every address but the IPv4-mapped and -compatible ones, which ipaddress writes
    in hex."""
    text = socket.inet_ntop(socket.AF_INET6, address.packed)
    return str(address) if "." in text else text


def to_lease(record: LeaseRecord6) -> Lease:
    mac = p6.duid_link_layer_address(record.duid)
    return Lease(address=address_text6(record.address), client=record.duid,
                 state=_STATES[record.state],
                 starts=record.starts, expires=record.expires, iaid=record.iaid,
                 hardware=mac.hex(":") if mac else "", hostname=record.hostname,
                 subnet=record.subnet, relay=record.relay)


def to_record(lease: Lease) -> LeaseRecord6:
    return LeaseRecord6(IPv6Address(lease.address), lease.client, lease.iaid or 0, lease.state,
                        lease.starts, lease.expires, lease.subnet, lease.hostname, lease.relay)


def load_records6(leases: Leases) -> list[LeaseRecord6]:
    return [to_record(lease) for lease in leases.load_leases(6)]


# --- the handler -------------------------------------------------------------------------------


class DHCP6Handler(DatagramHandler):
    """One DHCPv6 listener (one link, and the relays that reach it)."""

    # Relayed messages all come from the relay's address; the engine limits per DUID.
    source_rate_limited = False

    def __init__(self, listener: DatagramListener, engine: DHCP6Engine, link: Link6,
                 leases: Leases) -> None:
        super().__init__(listener)
        self.engine = engine
        self.link = link
        self.leases = leases
        self.counters = DHCP6Counters()
        self.committer = LeaseCommitter(leases, listener, "dhcp6")
        self._admin = AdminChanges(leases, 6, "dhcp6")
        self._multicast: dict[str, bool] = {}  # destination address -> a group?

    def open_socket(self) -> socket.socket:
        address = self.listener.spec.address
        return dhcp6_socket(address.host, address.port, address.interface)

    # -- datagrams in --------------------------------------------------------------------------

    def receive(self, batch: list[Datagram]) -> None:
        now = time.time()
        self._sync_external(now)
        multicast = self._multicast
        for datagram in batch:
            destination = datagram.destination
            unicast = False
            if destination is not None:
                group = multicast.get(destination)
                if group is None:
                    if len(multicast) >= 64:
                        multicast.clear()
                    group = multicast[destination] = IPv6Address(
                        destination.partition("%")[0]).is_multicast
                unicast = not group
            try:
                message = p6.decode(datagram.data)
                outcome = self.engine.handle(message, datagram.peer[0], self.link, now, unicast)
            except p6.PacketError as exc:
                self.counters.malformed += 1
                self.listener.stats.dropped += 1
                log.debug("dhcp6: dropped a malformed datagram from %s: %s", datagram.peer[0],
                          exc)
                continue
            except Exception:  # a bug must cost one message, not the batch or the server
                self.listener.stats.errors += 1
                log.exception("dhcp6: failed on %s", p6.summary(datagram.data))
                continue
            if outcome is not None:
                self._act(outcome)
        self.committer.flush()

    def _act(self, outcome: Outcome6) -> None:
        data = p6.encode(outcome.reply) if outcome.reply is not None else None
        if outcome.leases:
            self.committer.hold([to_lease(r) for r in outcome.leases], data,
                                outcome.destination)
        elif data is not None and outcome.destination is not None:
            self.listener.send(data, outcome.destination)

    # -- what the command line changed ---------------------------------------------------------

    def _sync_external(self, now: float) -> None:
        """Apply `netpost leases release` (a row released by someone else) to the engine."""
        for lease in self._admin.poll():
            address = IPv6Address(lease.address)
            binding = self.engine.binding(address)
            if binding is not None and binding.state is BindingState.BOUND and \
                    binding.starts == lease.starts and \
                    self.engine.external_release(address, lease.client, now):
                log.info("dhcp6: lease of %s (%s) released by the administrator",
                         lease.address, p6.describe_duid(lease.client))

    def describe(self, data: bytes, direction: str) -> str:
        return p6.summary(data)
