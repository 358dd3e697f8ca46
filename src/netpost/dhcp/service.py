"""The DHCP service's registration: the `dhcp` listener (UDP 67, off by default) and [dhcp].

Turn it on for one link with `netpost serve --listen dhcp=eth0` (or `[listen] dhcp =
"eth0"`): the listener binds 0.0.0.0:67 on that interface only (SO_BINDTODEVICE), so it gets
the link's broadcasts, and answers as the interface's IPv4 address.  `HOST:PORT%IFACE` and
`HOST:PORT` (relayed traffic only; set `server_address`) work too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from netpost.config import ConfigError, ListenAddress
from netpost.dhcp.engine import DHCPEngine, EngineSettings, Link
from netpost.dhcp.ping import Pinger
from netpost.dhcp.server import DHCPHandler, interface_address, load_records
from netpost.dhcp.service6 import LISTENER as DHCP6_LISTENER
from netpost.dhcp.service6 import build6, subnet6_tables
from netpost.dhcp.subnets import parse_subnets
from netpost.dhcp.subnets6 import parse_subnets6
from netpost.net.datagram import DatagramListener
from netpost.registry import BuildContext, ListenerDecl, Service, TLSMode, Transport, setting

log = logging.getLogger("netpost.dhcp")

NTP_PORT = 123


def _subnet_tables(value: Any) -> tuple[Any, ...]:
    """[[dhcp.subnets]] as read from TOML, checked now (with the default lease time; the
    section's own is applied by `DHCPConfig.validate`)."""
    parse_subnets(value)
    return tuple(value)


@dataclass(frozen=True)
class DHCPConfig:
    """[dhcp]: the DHCPv4 server's subnets, pools, reservations and limits."""

    subnets: tuple[Any, ...] = setting(
        (), "[[dhcp.subnets]] tables: network, pools, router, dns_servers, domain_name, "
        "search, routes, mtu, ntp_servers, lease_time, options, [[dhcp.subnets.reservations]] "
        "(see docs/dhcp.md)", parse=_subnet_tables)
    subnets6: tuple[Any, ...] = setting(
        (), "[[dhcp.subnets6]] tables (DHCPv6, listener dhcp6): prefix, pools, "
        "valid_lifetime, preferred_lifetime, dns_servers, domain_list, ntp_servers, "
        "rapid_commit, [[dhcp.subnets6.reservations]] by duid (see docs/dhcp.md)",
        parse=subnet6_tables)
    lease_time: int = setting(3600, "seconds a lease lasts unless a subnet says otherwise",
                              positive=True)
    server_address: str = setting("", "the server identifier (option 54); empty: the "
                                  "address of the listener's interface")
    authoritative: bool = setting(True, "NAK requests for addresses of our subnets that the "
                                  "client may not have (off: stay silent, another server "
                                  "may know the client)")
    offer_hold: float = setting(30.0, "seconds an offered address waits for the client's "
                                "REQUEST", positive=True)
    decline_hold: float = setting(3600.0, "seconds an address a client DECLINEd (in use by "
                                  "some other host) stays out of the pool", positive=True)
    client_rate: float = setting(10.0, "messages per second served per client hardware "
                                 "address; more are dropped", positive=True)
    client_burst: int = setting(20, "messages one client may send at once", positive=True)
    relay_rate: float = setting(5000.0, "messages per second served per relay (giaddr)",
                                positive=True)
    relay_burst: int = setting(10000, "messages one relay may forward at once", positive=True)
    max_leases_per_circuit: int = setting(0, "leases per relay agent circuit id (RFC 3046 "
                                          "option 82, e.g. a switch port); 0: no limit")
    ping_before_offer: float = setting(0.0, "seconds to wait for an ICMP echo reply from an "
                                       "address before offering it (RFC 2131 2.2); an address "
                                       "that answers is kept out of the pool; 0: off")

    def validate(self) -> None:
        parse_subnets(list(self.subnets), self.lease_time)
        parse_subnets6(list(self.subnets6), self.lease_time)
        if self.server_address:
            IPv4Address(self.server_address)


def server_identifier(dhcp: DHCPConfig, address: ListenAddress) -> IPv4Address:
    """Our address on the link: configured, the interface's, or the one bound."""
    if dhcp.server_address:
        return IPv4Address(dhcp.server_address)
    if address.interface is not None:
        try:
            return interface_address(address.interface)
        except OSError as exc:
            raise ConfigError(f"dhcp: interface {address.interface} has no IPv4 address "
                             f"({exc.strerror}); give it one or set [dhcp] server_address"
                             ) from None
    if address.host not in ("", "0.0.0.0"):
        return IPv4Address(address.host)
    raise ConfigError("dhcp: listening on 0.0.0.0 without an interface: set [dhcp] "
                     "server_address, or listen with --listen dhcp=IFACE")


def build(ctx: BuildContext, decl: ListenerDecl) -> Any:
    if decl.name == DHCP6_LISTENER.name:
        return build6(ctx)
    dhcp: DHCPConfig = ctx.settings
    subnets = parse_subnets(list(dhcp.subnets), dhcp.lease_time)
    leases = ctx.services.stores.leases
    settings = EngineSettings(
        offer_hold=dhcp.offer_hold, decline_hold=dhcp.decline_hold,
        client_rate=dhcp.client_rate, client_burst=dhcp.client_burst,
        relay_rate=dhcp.relay_rate, relay_burst=dhcp.relay_burst,
        max_leases_per_circuit=dhcp.max_leases_per_circuit,
        authoritative=dhcp.authoritative)

    def factory(listener: DatagramListener) -> DHCPHandler:
        address = listener.spec.address
        server = server_identifier(dhcp, address)
        if not subnets:
            log.warning("dhcp: no [[dhcp.subnets]] configured: %s answers no one",
                        listener.spec.address)
        ntp = ctx.config.listen_address("ntp") if "ntp" in ctx.config.listen else None
        ntp_here = ntp is not None and ntp.port == NTP_PORT and ntp.host in (
            "0.0.0.0", str(server))
        engine = DHCPEngine(subnets, settings, load_records(leases))
        pinger = None
        if dhcp.ping_before_offer > 0:
            try:
                pinger = Pinger(address.interface)
            except OSError as exc:
                raise ConfigError(f"dhcp: ping_before_offer needs an ICMP socket: "
                                  f"{exc.strerror} (run as root, or set it to 0)") from None
        return DHCPHandler(listener, engine, Link(server, ntp_here), leases, pinger,
                           dhcp.ping_before_offer)

    return factory


SERVICE = Service(
    name="dhcp",
    doc="DHCPv4 (RFC 2131) and DHCPv6 (RFC 8415): addresses and network settings for the hosts "
    "of a link. Off until a listener is given: --listen dhcp=IFACE, --listen dhcp6=IFACE.",
    settings=DHCPConfig,
    listeners=(
        ListenerDecl("dhcp", "dhcp", 67, "DHCPv4 address desk", transport=Transport.UDP,
                     tls=TLSMode.NONE, enabled=False),
        DHCP6_LISTENER,
    ),
    build=build,
)
