"""UDP listeners: batched receive, per-source rate limits, the trace, graceful stop.

A datagram service (NTP, DHCP) gives its listener a `DatagramHandler`.  Datagrams that arrive
while the loop is busy are queued and handed over together (`receive` gets a batch), so a
handler can answer many with one piece of work (one group commit for a batch of DHCP leases).
A handler answers with `listener.send`; work that must wait (a store commit before a DHCP ACK)
goes in `listener.spawn`, whose tasks the supervisor lets finish on shutdown.

A handler that sets `kernel_timestamps` (NTP) gets a listener that reads its socket itself:
every datagram waiting is taken per wake-up with recvmsg, each with the kernel's arrival time
(SO_TIMESTAMPNS) as `Datagram.received`, and handed over as one batch at once (no queue, no
second turn of the loop); answers go straight out with sendto.  A handler
whose `open_socket` makes its own socket (DHCPv6: IPv6, a multicast group joined, packet info
on; DHCPv4: packet info on) is read the same way, and each datagram says where it was sent
(`Datagram.destination`, from IPV6_PKTINFO or IP_PKTINFO when the socket asks for it).

A source (IP address; IPv6 by /64) that sends faster than `rate` datagrams per second, after
a burst of `burst`, has the excess dropped and counted: a UDP server must never be an
amplifier, and a flood must not starve other clients.  Malformed input is the handler's to
drop and count; an exception out of a handler is logged and counted, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import socket
import struct
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NamedTuple

from netpost.config import ListenAddress
from netpost.net.session import ListenerSpec, client_key
from netpost.net.trace import TraceLog

log = logging.getLogger("netpost.net")

MAX_QUEUED = 4096  # datagrams waiting for the handler; more are dropped (and counted)
MAX_BATCH = 256  # datagrams per `receive` call
MAX_TASKS = 1024  # spawned tasks in flight; more are refused
MAX_SOURCES = 100_000  # rate-limit buckets kept
RECEIVE_BUFFER = 4 * 1024 * 1024  # SO_RCVBUF of link sockets (the kernel caps it at rmem_max)
READ_SIZE = 4096  # largest datagram a timestamping listener takes (longer ones are dropped)
# Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS; Python's socket module does not name it): 35 in
# asm-generic/socket.h, which x86-64 and arm64 use; a struct timespec of two longs on 64-bit.
SO_TIMESTAMPNS = 35 if sys.platform == "linux" and platform.machine() in (
    "x86_64", "aarch64", "arm64") else None
_TIMESPEC = struct.Struct("@qq")
_IN6_PKTINFO = struct.Struct("@16sI")  # struct in6_pktinfo: the destination, the interface
_IN_PKTINFO = struct.Struct("@i4s4s")  # struct in_pktinfo: interface, local address, destination
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; the socket module has it from 3.12
_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: `flags & IntFlag` costs ~0.5 us a datagram
_SOL_SOCKET = socket.SOL_SOCKET  # module constants: one lookup a use, not two
_IPPROTO_IP = socket.IPPROTO_IP
_IPPROTO_IPV6 = socket.IPPROTO_IPV6
_IPV6_PKTINFO = socket.IPV6_PKTINFO
# room for every control message a listener's socket may ask for (made once, not per read)
_ANCILLARY_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_IN6_PKTINFO.size) + \
    socket.CMSG_SPACE(_IN_PKTINFO.size)


class Datagram(NamedTuple):
    """One datagram as received (a NamedTuple: a third of a frozen dataclass's cost to
    make, once per datagram)."""

    data: bytes
    peer: tuple[str, int]  # (address, port) it came from
    received: float  # wall-clock time of arrival (time.time()), e.g. NTP's receive timestamp
    destination: str | None = None  # the address it was sent to, when the socket says


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
    # True for a protocol that needs each datagram's arrival time as exactly as it can be had
    # (NTP's receive timestamp): the listener then reads the socket itself, every waiting
    # datagram per wake-up, with the kernel's receive timestamp (SO_TIMESTAMPNS) where Linux
    # offers it.
    kernel_timestamps: bool = False

    def __init__(self, listener: DatagramListener) -> None:
        self.listener = listener

    def open_socket(self) -> socket.socket | None:
        """A bound, non-blocking socket made by the handler itself, or None (the listener
        makes one).  The listener then reads it with recvmsg (`Datagram.destination`)."""
        return None

    @abstractmethod
    def receive(self, batch: list[Datagram]) -> None:
        """Handle datagrams in arrival order; reply with `self.listener.send`."""

    def describe(self, data: bytes, direction: str) -> str:
        """The trace line for a datagram ("C" in, "S" out); override with the protocol's
        own summary (message type, transaction id), secrets left out."""
        return f"<datagram: {len(data)} octets>"

    def close(self) -> None:
        """The listener has stopped (its spawned work is done or cancelled): release what
        the handler holds, log its final counters."""
        return None


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
        self._sock: socket.socket | None = None  # read by the listener itself (timestamps)
        self.kernel_timestamps = False  # receive times come from the kernel
        self.handler = factory(self)

    # -- the supervisor's side -----------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        addr = self.spec.address
        own = self.handler.open_socket()
        if own is not None:
            self._sock = own
            self._loop.add_reader(own.fileno(), self._read_socket)
            name = own.getsockname()
            self.bound = ListenAddress(name[0], name[1], addr.interface)
            return
        if self.handler.kernel_timestamps and addr.interface is None:
            self._sock = self._timestamping_socket()
            self._loop.add_reader(self._sock.fileno(), self._read_socket)
            name = self._sock.getsockname()
            self.bound = ListenAddress(name[0], name[1])
            return
        if addr.interface is not None or self.handler.sends_broadcast:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: self, sock=self.link_socket())
        else:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: self, local_addr=(addr.host, addr.port), reuse_port=False)
        self.transport = transport
        sock = transport.get_extra_info("sockname")
        self.bound = ListenAddress(sock[0], sock[1], addr.interface)

    def link_socket(self) -> socket.socket:
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

    def _timestamping_socket(self) -> socket.socket:
        addr = self.spec.address
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # The system's default receive buffer, not a bigger one: a datagram that waits
            # long is worth less than one dropped (an NTP answer 100 ms late is useless).
            if SO_TIMESTAMPNS is not None:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.kernel_timestamps = True
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
        try:
            self.handler.close()
        except Exception:
            log.exception("%s: handler failed to close", self.spec.name)
        if self.transport is not None:
            self.transport.close()
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    # -- the handler's side --------------------------------------------------------------------

    def send(self, data: bytes, peer: tuple[str, int]) -> None:
        sock = self._sock
        if sock is None and (self.transport is None or self.transport.is_closing()):
            return
        if self.trace is not None:
            self.trace(_peer_text(peer), "S", self.handler.describe(data, "S"))
        if sock is None:
            self.transport.sendto(data, peer)  # type: ignore[union-attr]
        else:
            try:
                sock.sendto(data, peer)
            except BlockingIOError:
                self.stats.overflowed += 1  # the send buffer is full: UDP may drop
                return
            except OSError as exc:
                log.debug("%s: sendto %s: %s", self.spec.name, peer, exc)
                self.stats.errors += 1
                return
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
        self._accept(data, addr, time.time())

    def _read_socket(self) -> None:
        """The socket is readable: take every datagram waiting (up to a batch), each with
        its kernel receive time, and hand them to the handler at once (the batch is whole
        already: no queue, no second turn of the loop)."""
        sock = self._sock
        if sock is None:
            return
        recvmsg = sock.recvmsg
        stats = self.stats
        limited = self.handler.source_rate_limited
        batch: list[Datagram] = []
        now = 0.0  # one clock reading per wake-up, for datagrams without a kernel time
        for _ in range(MAX_BATCH):
            try:
                data, ancillary, flags, addr = recvmsg(READ_SIZE, _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # an ICMP error from an earlier sendto
                log.debug("%s: %s", self.spec.name, exc)
                continue
            stats.received += 1
            received = None
            destination = None
            for level, kind, value in ancillary:
                if level == _SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                    received = seconds + nanoseconds * 1e-9
                elif level == _IPPROTO_IP and kind == IP_PKTINFO and \
                        len(value) >= _IN_PKTINFO.size:
                    destination = socket.inet_ntoa(_IN_PKTINFO.unpack_from(value)[2])
                elif level == _IPPROTO_IPV6 and kind == _IPV6_PKTINFO and \
                        len(value) >= _IN6_PKTINFO.size:
                    destination = socket.inet_ntop(socket.AF_INET6,
                                                   _IN6_PKTINFO.unpack_from(value)[0])
            if flags & _MSG_TRUNC:
                stats.dropped += 1  # longer than READ_SIZE: no protocol here sends that
                continue
            if limited and self._over_rate(addr[0]):
                continue
            if received is None:
                received = now = now or time.time()
            batch.append(Datagram(data, addr[:2], received, destination))
        if batch and not self.stopping:
            self._deliver(batch)

    def _accept(self, data: bytes, addr: tuple[str | Any, int], now: float,
                destination: str | None = None) -> None:
        self.stats.received += 1
        if self.stopping:
            return
        peer = (str(addr[0]), int(addr[1]))
        if self.handler.source_rate_limited and self._over_rate(peer[0]):
            return
        if len(self._queue) >= MAX_QUEUED:
            self.stats.overflowed += 1
            return
        self._queue.append(Datagram(data, peer, now, destination))
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
            self._deliver(batch)

    def _deliver(self, batch: list[Datagram]) -> None:
        if self.trace is not None:
            for d in batch:
                self.trace(_peer_text(d.peer), "C", self.handler.describe(d.data, "C"))
        try:
            self.handler.receive(batch)
        except Exception:
            self.stats.errors += 1
            log.exception("%s: handler failed on a batch of %d", self.spec.name, len(batch))

    def _over_rate(self, host: str) -> bool:
        """True (and counted) when the datagram's source has used up its tokens."""
        if self._allow(client_key(host), time.monotonic()):
            return False
        self.stats.rate_limited += 1
        return True

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
