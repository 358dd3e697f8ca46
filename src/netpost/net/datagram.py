"""UDP listeners: batched receive, per-source rate limits, the trace, graceful stop.

A datagram service (NTP, DHCP) gives its listener a `DatagramHandler`.  Datagrams that arrive
while the loop is busy are queued and handed over together (`receive` gets a batch), so a
handler can answer many with one piece of work (one group commit for a batch of DHCP leases).
A handler answers with `listener.send`; work that must wait (a store commit before a DHCP ACK)
goes in `listener.spawn`, whose tasks the supervisor lets finish on shutdown.

A source (IP address; IPv6 by /64) that sends faster than `rate` datagrams per second, after
a burst of `burst`, has the excess dropped and counted: a UDP server must never be an
amplifier, and a flood must not starve other clients.  Malformed input is the handler's to
drop and count; an exception out of a handler is logged and counted, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from netpost.config import ListenAddress
from netpost.net.session import ListenerSpec, client_key
from netpost.net.trace import TraceLog

log = logging.getLogger("netpost.net")

MAX_QUEUED = 4096  # datagrams waiting for the handler; more are dropped (and counted)
MAX_BATCH = 256  # datagrams per `receive` call
MAX_TASKS = 1024  # spawned tasks in flight; more are refused
MAX_SOURCES = 100_000  # rate-limit buckets kept
RECEIVE_BUFFER = 4 * 1024 * 1024  # SO_RCVBUF of link sockets (the kernel caps it at rmem_max)


@dataclass(frozen=True)
class Datagram:
    data: bytes
    peer: tuple[str, int]  # (address, port) it came from
    received: float  # wall-clock time of arrival (time.time()), e.g. NTP's receive timestamp


@dataclass
class DatagramStats:
    received: int = 0
    sent: int = 0
    rate_limited: int = 0
    overflowed: int = 0  # dropped because the queue was full
    errors: int = 0  # handler exceptions
    dropped: int = 0  # malformed or ignored, as the handler counts them


class DatagramHandler(ABC):
    """What a UDP service provides: answers to a batch of datagrams."""

    # False for a protocol whose clients share a source address, so that the per-source
    # limit would starve them together (DHCP: every client without an address is 0.0.0.0);
    # such a handler limits by its own key (DHCP: the hardware address).
    source_rate_limited: bool = True
    # True for a protocol that answers to 255.255.255.255 (SO_BROADCAST; DHCP, RFC 2131 4.1).
    sends_broadcast: bool = False

    def __init__(self, listener: DatagramListener) -> None:
        self.listener = listener

    @abstractmethod
    def receive(self, batch: list[Datagram]) -> None:
        """Handle datagrams in arrival order; reply with `self.listener.send`."""

    def describe(self, data: bytes, direction: str) -> str:
        """The trace line for a datagram ("C" in, "S" out); override with the protocol's
        own summary (message type, transaction id), secrets left out."""
        return f"<datagram: {len(data)} octets>"


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class DatagramListener(asyncio.DatagramProtocol):
    """One UDP socket and its handler."""

    def __init__(self, spec: ListenerSpec, factory: Callable[[DatagramListener], DatagramHandler],
                 *, rate: float, burst: int, trace_log: TraceLog | None) -> None:
        self.spec = spec
        self.rate = rate
        self.burst = burst
        self.stats = DatagramStats()
        self.trace = trace_log.datagrams(spec.name) if trace_log and spec.traced else None
        self.stopping = False
        self.bound: ListenAddress | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self._queue: list[Datagram] = []
        self._scheduled = False
        self._buckets: dict[str, _Bucket] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.handler = factory(self)

    # -- the supervisor's side -----------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        addr = self.spec.address
        if addr.interface is not None or self.handler.sends_broadcast:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: self, sock=self._link_socket())
        else:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: self, local_addr=(addr.host, addr.port), reuse_port=False)
        self.transport = transport
        sock = transport.get_extra_info("sockname")
        self.bound = ListenAddress(sock[0], sock[1], addr.interface)

    def _link_socket(self) -> socket.socket:
        """An IPv4 socket for a service of the link: bound to its interface (so that it gets
        the broadcasts of that link only and its own broadcasts leave there), allowed to
        broadcast, with room for a burst of datagrams."""
        addr = self.spec.address
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            if addr.interface is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                addr.interface.encode())
            sock.bind((addr.host, addr.port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    def stop_accepting(self) -> None:
        """Datagrams from now on are dropped; spawned work may still finish and send."""
        self.stopping = True
        self._queue.clear()

    def kill_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self.transport is not None:
            self.transport.close()

    # -- the handler's side --------------------------------------------------------------------

    def send(self, data: bytes, peer: tuple[str, int]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.trace is not None:
            self.trace(_peer_text(peer), "S", self.handler.describe(data, "S"))
        self.transport.sendto(data, peer)
        self.stats.sent += 1

    def spawn(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work` as a task the supervisor waits for at shutdown; False (and `work` is
        closed) when too many are in flight already or the listener is stopping."""
        if self.stopping or len(self._tasks) >= MAX_TASKS or self._loop is None:
            work.close()
            return False
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return True

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.stats.errors += 1
            log.error("%s: handler task failed", self.spec.name, exc_info=task.exception())

    # -- asyncio.DatagramProtocol --------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        now = time.time()
        self.stats.received += 1
        if self.stopping:
            return
        peer = (str(addr[0]), int(addr[1]))
        if self.handler.source_rate_limited and \
                not self._allow(client_key(peer[0]), time.monotonic()):
            self.stats.rate_limited += 1
            return
        if len(self._queue) >= MAX_QUEUED:
            self.stats.overflowed += 1
            return
        self._queue.append(Datagram(data, peer, now))
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like, from an earlier sendto: nothing to answer.
        log.debug("%s: %s", self.spec.name, exc)

    def _drain(self) -> None:
        self._scheduled = False
        while self._queue and not self.stopping:
            batch = self._queue[:MAX_BATCH]
            del self._queue[:MAX_BATCH]
            if self.trace is not None:
                for d in batch:
                    self.trace(_peer_text(d.peer), "C", self.handler.describe(d.data, "C"))
            try:
                self.handler.receive(batch)
            except Exception:
                self.stats.errors += 1
                log.exception("%s: handler failed on a batch of %d", self.spec.name, len(batch))

    def _allow(self, source: str, now: float) -> bool:
        """Token bucket per source: `rate` per second, up to `burst` at once."""
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= MAX_SOURCES:
                self._buckets.clear()  # a spoofed-source flood: start afresh, stay bounded
            self._buckets[source] = _Bucket(self.burst - 1.0, now)
            return True
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True


def _peer_text(peer: tuple[str, int]) -> str:
    host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
    return f"{host}:{peer[1]}"
