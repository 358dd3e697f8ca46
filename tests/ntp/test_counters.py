"""What the NTP handler drops is counted: a real listener and handler in this process, real
datagrams over 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket

from netpost.config import ListenAddress
from netpost.net.datagram import DatagramListener
from netpost.net.session import ListenerSpec
from netpost.ntp.clock import ServerClock
from netpost.ntp.packet import NTPPacket, encode
from netpost.ntp.server import NTPHandler, NTPStats, RateLimit


async def scenario() -> NTPStats:
    stats = NTPStats()
    spec = ListenerSpec("ntp", "ntp", ListenAddress("127.0.0.1", 0), False, False)
    listener = DatagramListener(
        spec, lambda lst: NTPHandler(lst, ServerClock(10), rate_limit=RateLimit(0.1, 3),
                                     keys=None, stats=stats),
        rate=1000, burst=1000, trace_log=None)
    await listener.start()
    assert listener.bound is not None
    good = encode(NTPPacket(mode=3, transmit_timestamp=99))
    datagrams = [good, b"", b"\x23" * 10, bytes([0x16]) + bytes(11), bytes([0x17]) + bytes(47),
                 encode(NTPPacket(mode=1)), good, good, good, good]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", listener.bound.port))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
    listener.stop_accepting()
    await listener.wait_closed()
    assert listener.stats.received == len(datagrams)
    assert listener.stats.sent == 4  # three answers and one KoD
    return stats


def test_drops_are_counted() -> None:
    stats = asyncio.run(scenario())
    assert stats.malformed == 2  # empty, 10 octets
    assert stats.control_ignored == 2  # modes 6 and 7
    assert stats.ignored == 1  # mode 1
    assert stats.requests == 5 and stats.replies == 3
    assert stats.kod_rate == 1 and stats.rate_dropped == 1
