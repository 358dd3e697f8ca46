#!/usr/bin/env python3
"""Fuzz target: the DHCPv6 codec must take any datagram without raising anything but
PacketError, and what it decodes must encode back to the same octets.

Coverage-guided with atheris (`pip install atheris`), always bounded:
    python fuzz/fuzz_dhcp6.py -max_total_time=300 fuzz/corpus/dhcp6
Without atheris it replays the files given (or the corpus directory) once each.
"""

from __future__ import annotations

import sys
from pathlib import Path

from netpost.dhcp import packet6 as p6


def one_input(data: bytes) -> None:
    try:
        message = p6.decode(data)
    except p6.PacketError:
        return
    once = p6.encode(message)
    assert once == data
    assert p6.decode(once) == message
    p6.summary(data)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fuzz.replay import fuzz_main

    fuzz_main(one_input, "fuzz/corpus/dhcp6")
