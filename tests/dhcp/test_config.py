"""[dhcp] and `--listen dhcp=IFACE`: parsed and checked when the config is loaded."""

from __future__ import annotations

import tomllib

import pytest

from netpost.config import STANDARD_PORT, Config, ConfigError, from_dict, parse_listen
from netpost.dhcp.service import DHCPConfig
from netpost.dhcp.subnets import parse_subnets

TOML = """
[listen]
dhcp = "veth0"

[dhcp]
lease_time = 7200

[[dhcp.subnets]]
network = "10.99.0.0/24"
pools = ["10.99.0.10-10.99.0.250"]
router = "10.99.0.1"
options = { 66 = "tftp.lan.test", 150 = "hex:0a630001" }

[[dhcp.subnets.reservations]]
hardware = "02:00:00:00:00:05"
address = "10.99.0.5"
hostname = "printer"
"""


def test_dhcp_is_off_by_default() -> None:
    assert Config.defaults().listen_address("dhcp") is None


def test_interface_listen_forms() -> None:
    a = parse_listen("veth0", "x")
    assert a is not None and (a.host, a.port, a.interface) == ("0.0.0.0", STANDARD_PORT, "veth0")
    b = parse_listen(":1067%veth0", "x")
    assert b is not None and (b.host, b.port, b.interface) == ("0.0.0.0", 1067, "veth0")
    assert str(b) == "0.0.0.0:1067%veth0"
    with pytest.raises(ConfigError):
        parse_listen("a/b", "x")


def test_subnets_from_toml() -> None:
    cfg = from_dict(tomllib.loads(TOML))
    dhcp = cfg.section("dhcp", DHCPConfig)
    (subnet,) = parse_subnets(list(dhcp.subnets), dhcp.lease_time)
    assert subnet.lease_time == 7200 and subnet.size == 241
    assert subnet.options[66] == b"tftp.lan.test" and subnet.options[150] == b"\x0a\x63\x00\x01"
    assert subnet.reservations[0].hostname == "printer"
    address = cfg.listen_address("dhcp")
    assert address is not None and address.interface == "veth0"


@pytest.mark.parametrize("table, message", [
    ({"network": "10.99.0.0/24", "pools": ["10.98.0.1-10.98.0.9"]}, "not in 10.99.0.0/24"),
    ({"network": "10.99.0.0/24", "colour": "red"}, "unknown key 'colour'"),
    ({"network": "10.99.0.1/24"}, "host bits set"),
    ({"network": "10.99.0.0/24", "options": {"53": "x"}}, "cannot be set"),
    ({"network": "10.99.0.0/24", "routes": ["10.0.0.0/8"]}, "via ROUTER"),
])
def test_bad_subnets_are_named(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"dhcp": {"subnets": [table]}})
    assert message in str(info.value) and "dhcp.subnets" in str(info.value)


def test_tcp_listeners_take_no_interface() -> None:
    with pytest.raises(ConfigError, match="only for UDP"):
        from_dict({"listen": {"smtp": "eth0"}})
