#!/usr/bin/env python3
"""Fuzz target: the DHCPv6 codec and server engine must take any datagram without raising
anything but PacketError, and what the codec decodes must encode back to the same octets.

Coverage-guided with atheris (`pip install atheris`), always bounded:
    python fuzz/fuzz_dhcp6.py -max_total_time=300 fuzz/corpus/dhcp6
Without atheris it replays the files given (or the corpus directory) once each.
"""

from __future__ import annotations

import sys
from ipaddress import IPv6Address
from pathlib import Path

from netpost.dhcp import packet6 as p6
from netpost.dhcp.engine6 import DHCP6Engine, Link6
from netpost.dhcp.subnets6 import parse_subnets6

SUBNETS = parse_subnets6([{"prefix": "2001:db8:99::/64",
                           "pools": ["2001:db8:99::10-2001:db8:99::20"],
                           "dns_servers": ["2001:db8:99::1"], "domain_list": ["lan.test"],
                           "reservations": [{"duid": "00:03:00:01:02:00:00:00:00:05",
                                             "address": "2001:db8:99::5"}]}])
SERVER_DUID = p6.duid_ll(1, bytes.fromhex("0200000000fe"))
LINK = Link6((IPv6Address("2001:db8:99::1"),), IPv6Address("2001:db8:99::1"))
ENGINE = DHCP6Engine(SUBNETS, SERVER_DUID)
CLOCK = [1_000_000.0]


def one_input(data: bytes) -> None:
    try:
        message = p6.decode(data)
    except p6.PacketError:
        return
    once = p6.encode(message)
    assert once == data
    assert p6.decode(once) == message
    p6.summary(data)
    CLOCK[0] += 1.0
    try:
        outcome = ENGINE.handle(message, "fe80::1", LINK, CLOCK[0], unicast=len(data) % 2 == 1)
    except p6.PacketError:
        return  # an option the decision needs is malformed: the handler drops it
    if outcome is not None and outcome.reply is not None:
        assert p6.decode(p6.encode(outcome.reply)) == outcome.reply


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fuzz.replay import fuzz_main

    fuzz_main(one_input, "fuzz/corpus/dhcp6")
