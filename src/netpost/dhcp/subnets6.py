"""DHCPv6 subnets, pools and reservations: the [[dhcp.subnets6]] tables of the configuration.

    [[dhcp.subnets6]]
    prefix = "2001:db8:99::/64"
    pools = ["2001:db8:99::100-2001:db8:99::1ff"]
    valid_lifetime = 3600            # default: [dhcp] lease_time
    preferred_lifetime = 3000        # default: the valid lifetime
    renewal_time = 1500              # T1, default 0.5 x preferred (RFC 8415 21.4)
    rebinding_time = 2400            # T2, default 0.8 x preferred
    dns_servers = ["2001:db8:99::1"] # RFC 3646 option 23
    domain_list = ["lan.test"]       # RFC 3646 option 24
    ntp_servers = "auto"             # RFC 5908 option 56; auto: netpost's own NTP
    rapid_commit = true              # answer a SOLICIT with Rapid Commit by a REPLY
    preference = 0                   # RFC 8415 21.8, in ADVERTISE when above 0
    information_refresh_time = 86400 # RFC 8415 21.23, for INFORMATION-REQUEST
    unicast = ""                     # an address of ours: offer UNICAST (RFC 8415 21.12)

    [[dhcp.subnets6.reservations]]
    duid = "00:03:00:01:02:00:00:00:00:05"
    iaid = 1                         # optional: this IA only
    address = "2001:db8:99::5"
    hostname = "printer"

`parse_subnets6` checks everything (ValueError naming the key at fault).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv6Address, IPv6Network
from typing import Any

from netpost.dhcp import packet6 as p6
from netpost.dhcp.subnets import _hex_octets, _number, _strings

AUTO = "auto"


@dataclass(frozen=True)
class Reservation6:
    """A fixed address for one client (DUID), for one of its IAs or any."""

    address: IPv6Address
    duid: bytes
    iaid: int | None = None
    hostname: str = ""


@dataclass(frozen=True)
class Subnet6:
    prefix: IPv6Network
    ranges: tuple[tuple[int, int], ...]  # dynamic pools, first and last as integers
    valid_lifetime: int
    preferred_lifetime: int
    renewal_time: int  # T1
    rebinding_time: int  # T2
    options: tuple[tuple[int, bytes], ...]  # sent to every client of this subnet
    reservations: tuple[Reservation6, ...] = ()
    ntp_auto: bool = False  # NTP_SERVER = netpost's own address on this link
    rapid_commit: bool = True
    preference: int = 0
    information_refresh_time: int = 0  # 0: not sent
    unicast: IPv6Address | None = None
    name: str = ""
    reserved_addresses: frozenset[int] = field(default=frozenset())
    # the prefix's first and last address as integers (made once: asked per message)
    first: int = field(init=False, repr=False, compare=False)
    last: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "first", int(self.prefix.network_address))
        object.__setattr__(self, "last", int(self.prefix.broadcast_address))

    def contains(self, address: IPv6Address | int) -> bool:
        return self.first <= int(address) <= self.last

    def in_pool(self, address: int) -> bool:
        for first, last in self.ranges:
            if first <= address <= last:
                return True
        return False

    @property
    def size(self) -> int:
        return sum(last - first + 1 for first, last in self.ranges)

    def reservation_for(self, duid: bytes, iaid: int) -> Reservation6 | None:
        for r in self.reservations:
            if r.duid == duid and (r.iaid is None or r.iaid == iaid):
                return r
        return None


_KEYS = {"prefix", "pools", "valid_lifetime", "preferred_lifetime", "renewal_time",
         "rebinding_time", "dns_servers", "domain_list", "ntp_servers", "rapid_commit",
         "preference", "information_refresh_time", "unicast", "reservations"}


def _range(text: str, prefix: IPv6Network) -> tuple[int, int]:
    first_text, sep, last_text = text.partition("-")
    first = IPv6Address(first_text.strip())
    last = IPv6Address(last_text.strip()) if sep else first
    if int(first) > int(last):
        raise ValueError(f"pool {text!r}: the first address is after the last")
    for a in (first, last):
        if a not in prefix:
            raise ValueError(f"pool {text!r}: {a} is not in {prefix}")
    return int(first), int(last)


def parse_subnet6(table: Mapping[str, Any], valid_lifetime: int) -> Subnet6:
    if not isinstance(table, Mapping):
        raise ValueError("each [[dhcp.subnets6]] entry must be a table")
    unknown = set(table) - _KEYS
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_KEYS))})")
    if not isinstance(table.get("prefix"), str):
        raise ValueError("a v6 subnet needs prefix = \"PREFIX/LENGTH\"")
    prefix = IPv6Network(table["prefix"], strict=True)
    try:
        ranges = tuple(_range(p, prefix) for p in _strings(table, "pools"))
        valid = _number(table, "valid_lifetime", valid_lifetime)
        if valid < 10:
            raise ValueError("valid_lifetime: at least 10 seconds")
        preferred = _number(table, "preferred_lifetime", valid)
        if not 0 < preferred <= valid:
            raise ValueError("need 0 < preferred_lifetime <= valid_lifetime (RFC 8415 21.6)")
        t1 = _number(table, "renewal_time", preferred // 2)
        t2 = _number(table, "rebinding_time", preferred * 4 // 5)
        if not 0 < t1 <= t2 <= preferred:  # RFC 8415 21.4: T1 <= T2
            raise ValueError("need 0 < renewal_time <= rebinding_time <= preferred_lifetime")
        options: list[tuple[int, bytes]] = []
        if "dns_servers" in table:
            options.append((p6.Option.DNS_SERVERS, p6.addresses6(_strings(table, "dns_servers"))))
        if "domain_list" in table:
            options.append((p6.Option.DOMAIN_LIST, p6.domain_list(_strings(table, "domain_list"))))
        ntp = table.get("ntp_servers", AUTO)
        ntp_auto = ntp == AUTO
        if not ntp_auto:
            servers = _strings(table, "ntp_servers")
            if servers:
                options.append((p6.Option.NTP_SERVER, p6.ntp_server(servers)))
        rapid_commit = table.get("rapid_commit", True)
        if not isinstance(rapid_commit, bool):
            raise ValueError("rapid_commit: true or false")
        preference = _number(table, "preference", 0)
        if preference > 255:
            raise ValueError("preference: 0 to 255")
        refresh = _number(table, "information_refresh_time", 0)
        if 0 < refresh < 600:
            raise ValueError("information_refresh_time: at least 600 (RFC 8415 21.23)")
        unicast_text = table.get("unicast", "")
        if not isinstance(unicast_text, str):
            raise ValueError("unicast: an address of this server")
        unicast = IPv6Address(unicast_text) if unicast_text else None
        reservations = tuple(_reservation(r, prefix) for r in table.get("reservations", []))
    except ValueError as exc:
        raise ValueError(f"subnet {prefix}: {exc}") from None
    seen: set[int] = set()
    for r in reservations:
        if int(r.address) in seen:
            raise ValueError(f"subnet {prefix}: {r.address} is reserved twice")
        seen.add(int(r.address))
    return Subnet6(prefix=prefix, ranges=ranges, valid_lifetime=valid,
                   preferred_lifetime=preferred, renewal_time=t1, rebinding_time=t2,
                   options=tuple(options), reservations=reservations, ntp_auto=ntp_auto,
                   rapid_commit=rapid_commit, preference=preference,
                   information_refresh_time=refresh, unicast=unicast, name=str(prefix),
                   reserved_addresses=frozenset(seen))


def _reservation(table: Any, prefix: IPv6Network) -> Reservation6:
    if not isinstance(table, Mapping):
        raise ValueError("reservations: each entry must be a table")
    unknown = set(table) - {"duid", "iaid", "address", "hostname"}
    if unknown:
        raise ValueError(f"reservation: unknown key {sorted(unknown)[0]!r}")
    address = IPv6Address(str(table.get("address", "")))
    if address not in prefix:
        raise ValueError(f"reservation {address} is not in {prefix}")
    if "duid" not in table:
        raise ValueError(f"reservation {address}: give the client's duid")
    duid = _hex_octets(str(table["duid"]), "duid")
    if not p6.duid_valid(duid):
        raise ValueError(f"reservation {address}: a DUID is 3 to 130 octets")
    iaid = table.get("iaid")
    if iaid is not None and (isinstance(iaid, bool) or not isinstance(iaid, int)
                             or not 0 <= iaid <= 0xFFFFFFFF):
        raise ValueError(f"reservation {address}: iaid is a 32-bit number")
    return Reservation6(address, duid, iaid, str(table.get("hostname", "")))


def parse_subnets6(value: Any, valid_lifetime: int = 3600) -> tuple[Subnet6, ...]:
    """The subnets of `[[dhcp.subnets6]]` (a list of tables), checked; ValueError."""
    if isinstance(value, tuple) and all(isinstance(s, Subnet6) for s in value):
        return value
    if not isinstance(value, list):
        raise ValueError("subnets6: expected [[dhcp.subnets6]] tables")
    subnets = tuple(parse_subnet6(t, valid_lifetime) for t in value)
    for i, a in enumerate(subnets):
        for b in subnets[i + 1:]:
            if a.prefix.overlaps(b.prefix):
                raise ValueError(f"subnets6 {a.prefix} and {b.prefix} overlap")
    return subnets


def find_subnet6(subnets: Sequence[Subnet6], address: IPv6Address) -> Subnet6 | None:
    for s in subnets:
        if s.contains(address):
            return s
    return None
