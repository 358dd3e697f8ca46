#!/usr/bin/env python3
"""Fuzz target: the NTP packet engine, the NTS checks and the NTS-KE records must take any
octets and never raise anything but NTPParseError (the packet) or nothing at all (the rest).

Coverage-guided with atheris (`pip install atheris`):
    python fuzz/fuzz_ntp.py -max_total_time=300 fuzz/corpus/ntp
Without atheris it replays the files given (or the corpus directory) once each.
"""

from __future__ import annotations

import sys
from pathlib import Path

from netpost.ntp import nts
from netpost.ntp.ntske import NTSKEConnection
from netpost.ntp.packet import NTPParseError, decode, encode

KEYS = nts.CookieKeys([nts.CookieKey(1, bytes(range(32)), 0.0)])


def one_input(data: bytes) -> None:
    try:
        packet = decode(data)
    except NTPParseError:
        packet = None
    if packet is not None:
        assert encode(packet) == data, "encode(decode(x)) must give x back"
        if nts.is_nts(packet):
            nts.check_request(packet, data, KEYS)
    conn = NTSKEConnection(ntp_server=None, ntp_port=10123)
    if conn.receive_data(data):
        conn.response(lambda aead: [b"c" * 100] * 8)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fuzz.replay import fuzz_main

    fuzz_main(one_input, "fuzz/corpus/ntp")
