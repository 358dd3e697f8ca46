"""Subnets, pools and reservations: the [[dhcp.subnets]] tables of the configuration.

    [[dhcp.subnets]]
    network = "10.99.0.0/24"
    pools = ["10.99.0.10-10.99.0.250"]
    router = "10.99.0.1"
    dns_servers = ["10.99.0.1"]
    domain_name = "lan.test"
    search = ["lan.test"]                        # option 119 (RFC 3397)
    routes = ["10.20.0.0/16 via 10.99.0.1"]      # option 121 (RFC 3442)
    mtu = 1500                                   # option 26
    ntp_servers = "auto"                         # option 42; auto: netpost's own NTP
    lease_time = 3600
    options = { 66 = "tftp.lan.test", 150 = "hex:0a630001" }

    [[dhcp.subnets.reservations]]
    hardware = "02:00:00:00:00:05"                # or client_id = "01:02:00:00:00:00:05"
    address = "10.99.0.5"
    hostname = "printer"

`parse_subnets` checks everything (ValueError with the key at fault), so a bad table stops
`netpost serve` at start with one line instead of surprising a client later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from netpost.dhcp import options as opt
from netpost.dhcp.packet import Option

AUTO = "auto"


@dataclass(frozen=True)
class Reservation:
    """A fixed address for one client, by hardware address or client identifier."""

    address: IPv4Address
    hardware: bytes | None = None  # chaddr (Ethernet: 6 octets)
    client_id: bytes | None = None  # option 61 as the client sends it (RFC 4361 form too)
    hostname: str = ""


@dataclass(frozen=True)
class Subnet:
    network: IPv4Network
    ranges: tuple[tuple[int, int], ...]  # dynamic pools, first and last address as integers
    lease_time: int  # seconds
    renewal_time: int  # T1 (RFC 2131 4.4.5: 0.5 x lease time by default)
    rebinding_time: int  # T2 (0.875 x lease time)
    options: Mapping[int, bytes]  # code -> value, sent to every client of this subnet
    reservations: tuple[Reservation, ...] = ()
    ntp_auto: bool = False  # option 42 = netpost's own address on this link
    name: str = ""  # network text, for logs and the lease table
    reserved_addresses: frozenset[int] = field(default=frozenset())
    # the network's first and last address as integers (made once: asked per message)
    first: int = field(init=False, repr=False, compare=False)
    last: int = field(init=False, repr=False, compare=False)
    size: int = field(init=False, repr=False, compare=False)  # addresses in the pools

    def __post_init__(self) -> None:
        object.__setattr__(self, "first", int(self.network.network_address))
        object.__setattr__(self, "last", int(self.network.broadcast_address))
        object.__setattr__(self, "size", sum(last - first + 1 for first, last in self.ranges))

    def contains(self, address: IPv4Address | int) -> bool:
        return self.first <= int(address) <= self.last

    def in_pool(self, address: int) -> bool:
        for first, last in self.ranges:
            if first <= address <= last:
                return True
        return False

    def dynamic(self, address: int) -> bool:
        """In a pool and not reserved: the engine may hand it to any client."""
        return self.in_pool(address) and address not in self.reserved_addresses

    def reservation_for(self, hardware: bytes, client_id: bytes | None) -> Reservation | None:
        for r in self.reservations:
            if client_id is not None and r.client_id == client_id:
                return r
            if r.hardware is not None and r.hardware == hardware:
                return r
        return None


def _hex_octets(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text.replace(":", "").replace("-", "").replace(" ", ""))
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not hex octets like 02:00:00:00:00:05") from None


def _range(text: str, network: IPv4Network) -> tuple[int, int]:
    first_text, sep, last_text = text.partition("-")
    first = IPv4Address(first_text.strip())
    last = IPv4Address(last_text.strip()) if sep else first
    if int(first) > int(last):
        raise ValueError(f"pool {text!r}: the first address is after the last")
    for a in (first, last):
        if a not in network:
            raise ValueError(f"pool {text!r}: {a} is not in {network}")
        if network.prefixlen < 31 and a in (network.network_address, network.broadcast_address):
            raise ValueError(f"pool {text!r}: {a} is the network or broadcast address")
    return int(first), int(last)


_SUBNET_KEYS = {"network", "pools", "router", "dns_servers", "domain_name", "search", "routes",
                "mtu", "ntp_servers", "lease_time", "renewal_time", "rebinding_time", "options",
                "reservations"}


def _strings(table: Mapping[str, Any], key: str) -> list[str]:
    value = table.get(key, [])
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}: expected a string or a list of strings")
    return value


def _number(table: Mapping[str, Any], key: str, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key}: expected a non-negative integer, got {value!r}")
    return value


def parse_subnet(table: Mapping[str, Any], lease_time: int) -> Subnet:
    if not isinstance(table, Mapping):
        raise ValueError("each [[dhcp.subnets]] entry must be a table")
    unknown = set(table) - _SUBNET_KEYS
    if unknown:
        known = ", ".join(sorted(_SUBNET_KEYS))
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: {known})")
    if "network" not in table or not isinstance(table["network"], str):
        raise ValueError("a subnet needs network = \"ADDRESS/PREFIX\"")
    network = IPv4Network(table["network"], strict=True)
    where = f"subnet {network}"
    try:
        ranges = tuple(_range(p, network) for p in _strings(table, "pools"))
        lease = _number(table, "lease_time", lease_time)
        if lease < 10:
            raise ValueError("lease_time: at least 10 seconds")
        t1 = _number(table, "renewal_time", lease // 2)
        t2 = _number(table, "rebinding_time", lease * 7 // 8)
        if not 0 < t1 < t2 < lease:
            raise ValueError("need 0 < renewal_time < rebinding_time < lease_time")
        options: dict[int, bytes] = {Option.SUBNET_MASK: network.netmask.packed}
        if "router" in table:
            options[Option.ROUTER] = opt.addresses(_strings(table, "router"))
        if "dns_servers" in table:
            options[Option.DNS_SERVERS] = opt.addresses(_strings(table, "dns_servers"))
        if "domain_name" in table:
            name = table["domain_name"]
            if not isinstance(name, str):
                raise ValueError("domain_name: expected a string")
            opt.domain_labels(name)
            options[Option.DOMAIN_NAME] = name.rstrip(".").encode()
        if "search" in table:
            options[Option.DOMAIN_SEARCH] = opt.search_list(_strings(table, "search"))
        if "routes" in table:
            options[Option.CLASSLESS_STATIC_ROUTE] = opt.static_routes(_strings(table, "routes"))
        if "mtu" in table:
            mtu = _number(table, "mtu", 1500)
            if not 68 <= mtu <= 65535:
                raise ValueError("mtu: 68 to 65535 (RFC 2132 5.1)")
            options[Option.INTERFACE_MTU] = opt.u16(mtu)
        ntp = table.get("ntp_servers", AUTO)
        ntp_auto = ntp == AUTO
        if not ntp_auto:
            servers = _strings(table, "ntp_servers")
            if servers:
                options[Option.NTP_SERVERS] = opt.addresses(servers)
        extra = table.get("options", {})
        if not isinstance(extra, Mapping):
            raise ValueError("options: expected a table of CODE = VALUE")
        for code_text, value in extra.items():
            if not str(code_text).isdigit():
                raise ValueError(f"options: {code_text!r} is not an option number")
            options[int(code_text)] = opt.option_value(int(code_text), value)
        reservations = tuple(_reservation(r, network) for r in table.get("reservations", []))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    seen: set[int] = set()
    for r in reservations:
        if int(r.address) in seen:
            raise ValueError(f"{where}: {r.address} is reserved twice")
        seen.add(int(r.address))
    return Subnet(network=network, ranges=ranges, lease_time=lease, renewal_time=t1,
                  rebinding_time=t2, options=options, reservations=reservations,
                  ntp_auto=ntp_auto, name=str(network), reserved_addresses=frozenset(seen))


def _reservation(table: Any, network: IPv4Network) -> Reservation:
    if not isinstance(table, Mapping):
        raise ValueError("reservations: each entry must be a table")
    unknown = set(table) - {"hardware", "client_id", "address", "hostname"}
    if unknown:
        raise ValueError(f"reservation: unknown key {sorted(unknown)[0]!r}")
    address = IPv4Address(str(table.get("address", "")))
    if address not in network:
        raise ValueError(f"reservation {address} is not in {network}")
    hardware = (_hex_octets(str(table["hardware"]), "hardware") if "hardware" in table
                else None)
    client_id = (_hex_octets(str(table["client_id"]), "client_id") if "client_id" in table
                 else None)
    if hardware is None and client_id is None:
        raise ValueError(f"reservation {address}: give hardware or client_id")
    hostname = str(table.get("hostname", ""))
    return Reservation(address, hardware, client_id, hostname)


def parse_subnets(value: Any, lease_time: int = 3600) -> tuple[Subnet, ...]:
    """The subnets of `[[dhcp.subnets]]` (a list of tables), checked; ValueError."""
    if isinstance(value, tuple) and all(isinstance(s, Subnet) for s in value):
        return value
    if not isinstance(value, list):
        raise ValueError("subnets: expected [[dhcp.subnets]] tables")
    subnets = tuple(parse_subnet(t, lease_time) for t in value)
    for i, a in enumerate(subnets):
        for b in subnets[i + 1:]:
            if a.network.overlaps(b.network):
                raise ValueError(f"subnets {a.network} and {b.network} overlap")
    return subnets


def find_subnet(subnets: Sequence[Subnet], address: IPv4Address) -> Subnet | None:
    for s in subnets:
        if s.contains(address):
            return s
    return None
