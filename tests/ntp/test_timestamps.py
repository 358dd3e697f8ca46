"""Receive timestamps come from the kernel (SO_TIMESTAMPNS), not from when Python got round
to the datagram: a request that waits while the event loop is busy keeps its arrival time."""

from __future__ import annotations

import asyncio
import socket
import time

from netpost.config import ListenAddress
from netpost.net.datagram import Datagram, DatagramHandler, DatagramListener
from netpost.net.session import ListenerSpec


class Recorder(DatagramHandler):
    kernel_timestamps = True

    def __init__(self, listener: DatagramListener) -> None:
        super().__init__(listener)
        self.seen: list[tuple[Datagram, float]] = []

    def receive(self, batch: list[Datagram]) -> None:
        for d in batch:
            self.seen.append((d, time.time()))
            self.listener.send(d.data.upper(), d.peer)


async def scenario() -> None:
    spec = ListenerSpec("t", "t", ListenAddress("127.0.0.1", 0), False, False)
    listener = DatagramListener(spec, Recorder, rate=1000, burst=1000, trace_log=None)
    await listener.start()
    assert listener.kernel_timestamps and listener.bound is not None
    handler = listener.handler
    assert isinstance(handler, Recorder)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        # Linux turns receive timestamping on for the whole system when the first socket
        # asks, from a work queue: a datagram that arrives before that is stamped when it is
        # read.  One exchange first, and a moment, as a server gets in its first second.
        s.sendto(b"warm-up", ("127.0.0.1", listener.bound.port))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if handler.seen:
                break
        await asyncio.sleep(0.05)
        assert s.recvfrom(100)[0] == b"WARM-UP"
        handler.seen.clear()
        windows = []
        for i in range(5):
            before = time.time()
            s.sendto(b"x%d" % i, ("127.0.0.1", listener.bound.port))
            windows.append((before, time.time()))
        time.sleep(0.3)  # the loop is busy: the datagrams wait in the socket
        for _ in range(50):
            await asyncio.sleep(0.01)
            if len(handler.seen) == 5:
                break
        assert [d.data for d, _ in handler.seen] == [b"x%d" % i for i in range(5)]
        for (d, handled), (before, after) in zip(handler.seen, windows, strict=True):
            assert before - 0.001 <= d.received <= after + 0.001  # when it arrived...
            assert handled - d.received >= 0.25  # ...not when it was read
        await asyncio.sleep(0.05)
        assert s.recvfrom(100)[0] == b"X0"  # answers go out of the same socket
    listener.stop_accepting()
    await listener.wait_closed()
    assert listener.stats.received == 6 and listener.stats.sent == 6


def test_kernel_receive_timestamps() -> None:
    asyncio.run(scenario())
