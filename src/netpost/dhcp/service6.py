"""The `dhcp6` listener (UDP 547, off by default) of the DHCP service, with [[dhcp.subnets6]].

Turn it on for one link with `netpost serve --listen dhcp6=eth0` (or `[listen] dhcp6 =
"eth0"`): the listener binds [::]:547 on that interface, joins ff02::1:2 there and answers
as the server DUID kept in the data directory.  The link's subnet is the [[dhcp.subnets6]]
table whose prefix holds one of the interface's global addresses (or the only table, when the
interface has no global address); relayed messages find theirs by the relay's link-address.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from ipaddress import IPv6Address
from typing import Any

from netpost.config import ConfigError
from netpost.dhcp.engine6 import DHCP6Engine, Engine6Settings, Link6
from netpost.dhcp.server6 import (
    DHCP6Handler,
    bind_host6,
    interface_addresses6,
    load_records6,
    server_duid,
)
from netpost.dhcp.subnets6 import parse_subnets6
from netpost.net.datagram import DatagramListener
from netpost.registry import BuildContext, ListenerDecl, TLSMode, Transport

log = logging.getLogger("netpost.dhcp")

NTP_PORT = 123

LISTENER = ListenerDecl("dhcp6", "dhcp6", 547, "DHCPv6 address desk", transport=Transport.UDP,
                        tls=TLSMode.NONE, enabled=False)


def build6(ctx: BuildContext) -> Callable[[DatagramListener], DHCP6Handler]:
    dhcp: Any = ctx.settings  # service.DHCPConfig
    subnets = parse_subnets6(list(dhcp.subnets6), dhcp.lease_time)
    leases = ctx.services.stores.leases
    settings = Engine6Settings(offer_hold=dhcp.offer_hold, decline_hold=dhcp.decline_hold,
                               client_rate=dhcp.client_rate, client_burst=dhcp.client_burst,
                               relay_rate=dhcp.relay_rate, relay_burst=dhcp.relay_burst)

    def factory(listener: DatagramListener) -> DHCP6Handler:
        address = listener.spec.address
        interface = address.interface
        addresses = interface_addresses6(interface) if interface is not None else ()
        host = bind_host6(address.host)
        if not addresses and host != "::":
            try:
                addresses = (IPv6Address(host),)
            except ValueError:
                raise ConfigError(f"dhcp6: {address.host} is not an IPv6 address") from None
        if not subnets:
            log.warning("dhcp6: no [[dhcp.subnets6]] configured: %s answers no one", address)
        ntp = ctx.config.listen_address("ntp") if "ntp" in ctx.config.listen else None
        ntp_address = None
        if ntp is not None and ntp.port == NTP_PORT and addresses and (
                ntp.host == "::" or ntp.host in map(str, addresses)):
            ntp_address = addresses[0]
        duid = server_duid(ctx.services.data_dir, interface)
        engine = DHCP6Engine(subnets, duid, settings, load_records6(leases))
        return DHCP6Handler(listener, engine, Link6(addresses, ntp_address), leases)

    return factory


def subnet6_tables(value: Any) -> tuple[Any, ...]:
    """[[dhcp.subnets6]] as read from TOML, checked now (`DHCPConfig.validate` checks them
    again with the section's lease time)."""
    parse_subnets6(value)
    return tuple(value)
