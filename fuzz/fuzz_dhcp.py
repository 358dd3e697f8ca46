#!/usr/bin/env python3
"""Fuzz target: the DHCPv4 codec and server engine must take any datagram without raising
anything but PacketError, and what they decode must encode stably.

Coverage-guided with atheris (`pip install atheris`):
    python fuzz/fuzz_dhcp.py -max_total_time=300 fuzz/corpus/dhcp
Without atheris it replays the files given (or the corpus directory) once each.
"""

from __future__ import annotations

import sys
from ipaddress import IPv4Address
from pathlib import Path

from netpost.dhcp.engine import DHCPEngine, Link
from netpost.dhcp.packet import PacketError, decode, encode
from netpost.dhcp.subnets import parse_subnets

SUBNETS = parse_subnets([{"network": "10.99.0.0/24", "pools": ["10.99.0.10-10.99.0.20"],
                          "router": "10.99.0.1", "search": ["lan.test"],
                          "reservations": [{"hardware": "02:00:00:00:00:05",
                                            "address": "10.99.0.5"}]}])
LINK = Link(IPv4Address("10.99.0.1"), ntp_here=True)
ENGINE = DHCPEngine(SUBNETS)
CLOCK = [1_000_000.0]


def one_input(data: bytes) -> None:
    try:
        message = decode(data)
    except PacketError:
        return
    once = encode(message)
    assert decode(once) == message
    CLOCK[0] += 1.0
    outcome = ENGINE.handle(message, LINK, CLOCK[0])
    if outcome is not None and outcome.reply is not None:
        try:
            encode(outcome.reply, max_size=outcome.max_size)
        except PacketError:
            pass  # too many options for the client's size: the server drops the reply


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fuzz.replay import fuzz_main

    fuzz_main(one_input, "fuzz/corpus/dhcp")
