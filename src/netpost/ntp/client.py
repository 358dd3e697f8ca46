"""The NTP client side: polling upstream servers (RFC 5905 §8-11, simplified).

Each upstream gets a client-mode request every poll interval (four two seconds apart at
start, as `iburst`).  A valid answer gives a sample (offset θ, delay δ, dispersion ε); the
clock filter (§10) keeps the last eight and takes the one with the least delay; the peer
jitter is the RMS of the offsets' differences from it.  Selection (§11.2, simplified):
upstreams whose correctness intervals [θ − λ, θ + λ] (λ the root distance) meet the
intersection that most of them share are the truechimers; of those the lowest stratum, then
the shortest root distance, becomes the system peer, and the server answers one stratum
below it.  The system clock is never set: the offset is reported (status and log), chronyd
or the OS disciplines the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from netpost.ntp.clock import MAX_STRATUM, PHI, ClockState, ServerClock, reference_id_of
from netpost.ntp.packet import (
    Leap,
    Mode,
    NTPPacket,
    NTPParseError,
    decode,
    encode,
    short_to_seconds,
    timestamp_from_unix,
    timestamp_to_unix,
)

log = logging.getLogger("netpost.ntp")

FILTER_STAGES = 8  # RFC 5905 §10
MAX_DISTANCE = 1.5  # RFC 5905 §7.2 MAXDIST: a root distance beyond it is not trusted
REPLY_TIMEOUT = 2.0
BURST = 4  # requests at start, two seconds apart (iburst)
BURST_INTERVAL = 2.0
UNREACHABLE_AFTER = 8  # polls without an answer before an upstream is not selectable


@dataclass(frozen=True)
class Sample:
    """One exchange (RFC 5905 §8): offset θ, delay δ, dispersion ε, at `when`."""

    offset: float
    delay: float
    dispersion: float
    when: float


def make_request(now: float, version: int = 4) -> tuple[bytes, int]:
    """A client-mode request and the transmit timestamp to match the answer by (RFC 5905
    §9.1: the answer's origin timestamp must equal it, against bogus and replayed packets).
    The transmit timestamp's low fraction bits are random (draft-ietf-ntp-data-minimization):
    they are below the clock's precision and make an answer hard to forge."""
    transmit = timestamp_from_unix(now) & ~0xFFFF | int.from_bytes(os.urandom(2), "big")
    packet = NTPPacket(version=version, mode=Mode.CLIENT, transmit_timestamp=transmit)
    return encode(packet), transmit


def read_response(data: bytes, transmit: int, sent: float, received: float
                  ) -> tuple[NTPPacket, Sample]:
    """The server's answer and its sample; ValueError saying why an answer is not usable
    (RFC 5905 §8 packet tests, §7.4 kiss codes)."""
    try:
        packet = decode(data)
    except NTPParseError as exc:
        raise ValueError(f"malformed answer: {exc}") from None
    if packet.mode != Mode.SERVER:
        raise ValueError(f"answer in mode {packet.mode}, not 4")
    if packet.origin_timestamp != transmit:
        raise ValueError("origin timestamp is not our transmit timestamp (bogus or replayed)")
    if packet.stratum == 0:
        raise ValueError(f"kiss code {packet.kiss_code!r}")
    if packet.leap == Leap.UNSYNCHRONIZED or packet.stratum > MAX_STRATUM:
        raise ValueError("server is not synchronised")
    if packet.transmit_timestamp == 0 or packet.receive_timestamp == 0:
        raise ValueError("timestamps missing")
    t2 = timestamp_to_unix(packet.receive_timestamp, received)
    t3 = timestamp_to_unix(packet.transmit_timestamp, received)
    # RFC 5905 §8: θ = ((T2 − T1) + (T3 − T4)) / 2, δ = (T4 − T1) − (T3 − T2); T1 and T4 are
    # our own send and receive times.
    offset = ((t2 - sent) + (t3 - received)) / 2
    delay = max((received - sent) - (t3 - t2), 0.0)
    root_distance = short_to_seconds(packet.root_delay) / 2 + short_to_seconds(
        packet.root_dispersion) + delay / 2
    if root_distance > MAX_DISTANCE:
        raise ValueError(f"root distance {root_distance:.3f} s is too large")
    precision = 2.0 ** packet.precision
    return packet, Sample(offset, delay, precision + PHI * (received - sent), received)


@dataclass
class Upstream:
    """One configured server and its clock filter (RFC 5905 §9-10)."""

    name: str  # as configured, HOST[:PORT]
    host: str
    port: int
    address: str | None = None  # resolved
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=FILTER_STAGES))
    last: NTPPacket | None = None  # the last valid answer
    reach: int = 0  # RFC 5905 §9.2: shift register of answered polls
    error: str | None = None  # why the last poll gave no sample

    @property
    def reachable(self) -> bool:
        return bool(self.reach & ((1 << UNREACHABLE_AFTER) - 1))

    def best(self, now: float) -> Sample | None:
        """RFC 5905 §10: the sample with the least delay of the last eight."""
        if not self.samples:
            return None
        return min(self.samples, key=lambda s: s.delay + s.dispersion + PHI * (now - s.when))

    def jitter(self, now: float) -> float:
        """RFC 5905 §10: RMS of the other samples' offsets from the best one's."""
        best = self.best(now)
        if best is None or len(self.samples) < 2:
            return 0.0
        diffs = [(s.offset - best.offset) ** 2 for s in self.samples if s is not best]
        return math.sqrt(sum(diffs) / len(diffs))

    def root_distance(self, now: float) -> float:
        """RFC 5905 §11.2 (λ): how far from true time this upstream may be."""
        best = self.best(now)
        if best is None or self.last is None:
            return math.inf
        return (short_to_seconds(self.last.root_delay) + best.delay) / 2 + short_to_seconds(
            self.last.root_dispersion) + best.dispersion + PHI * (now - best.when) \
            + self.jitter(now)


def select(upstreams: list[Upstream], now: float) -> Upstream | None:
    """RFC 5905 §11.2.1 (Marzullo's intersection, simplified): the system peer."""
    candidates = [u for u in upstreams
                  if u.reachable and u.best(now) is not None and u.last is not None
                  and u.root_distance(now) < MAX_DISTANCE]
    if not candidates:
        return None
    edges: list[tuple[float, int]] = []
    for u in candidates:
        best = u.best(now)
        assert best is not None
        distance = u.root_distance(now)
        edges += [(best.offset - distance, -1), (best.offset + distance, +1)]
    edges.sort()
    # The point covered by the most intervals; the upstreams whose intervals cover it agree.
    depth = most = 0
    point = 0.0
    for value, kind in edges:
        depth -= kind
        if depth > most:
            most, point = depth, value
    if most <= len(candidates) // 2:
        return None  # no majority agrees: no falseticker is told from a truechimer
    truechimers = []
    for u in candidates:
        best = u.best(now)
        assert best is not None
        distance = u.root_distance(now)
        if best.offset - distance <= point <= best.offset + distance:
            truechimers.append(u)
    return min(truechimers, key=lambda u: (u.last.stratum if u.last else 16,
                                           u.root_distance(now)))


def state_from(peer: Upstream, now: float) -> ClockState:
    """RFC 5905 §11.2 (clock update): the system variables when `peer` is the system peer."""
    best = peer.best(now)
    assert best is not None and peer.last is not None and peer.address is not None
    return ClockState(
        leap=peer.last.leap,
        stratum=min(peer.last.stratum + 1, MAX_STRATUM),
        reference_id=reference_id_of(peer.address),
        reference_time=best.when,
        root_delay=short_to_seconds(peer.last.root_delay) + best.delay,
        root_dispersion=short_to_seconds(peer.last.root_dispersion) + best.dispersion
        + peer.jitter(now),
    )


@dataclass(frozen=True)
class UpstreamStatus:
    name: str
    address: str | None
    reach: int
    stratum: int | None
    offset: float | None  # seconds, + = the upstream is ahead of the system clock
    delay: float | None
    jitter: float | None
    selected: bool
    error: str | None


@dataclass
class NTPStatus:
    """What the server and its client side report (for logs, `describe`, the web API)."""

    upstreams: list[UpstreamStatus] = field(default_factory=list)
    system_peer: str | None = None
    offset: float | None = None  # of the system clock against the system peer

    def lines(self) -> list[str]:
        out = []
        for u in self.upstreams:
            mark = "*" if u.selected else " "
            if u.offset is None:
                out.append(f"{mark} {u.name}: no sample ({u.error or 'waiting'})")
            else:
                out.append(f"{mark} {u.name}: stratum {u.stratum} offset {u.offset:+.6f} s "
                           f"delay {u.delay:.6f} s jitter {u.jitter:.6f} s "
                           f"reach {u.reach:03o}")
        return out


def parse_upstream(text: str) -> tuple[str, int]:
    """ "host", "host:port", "[v6]:port" → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
        raise ValueError(f"upstream {text!r}: want HOST or HOST:PORT")
    return host, int(port) if port else 123


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.answers.put_nowait((data, time.time()))


class Poller:
    """The upstream poller: a background worker (net/workers.py) updating `clock` and
    `status`."""

    def __init__(self, names: tuple[str, ...], clock: ServerClock, status: NTPStatus, *,
                 poll_interval: float) -> None:
        self.upstreams = [Upstream(n, *parse_upstream(n)) for n in names]
        self.clock = clock
        self.status = status
        self.poll_interval = poll_interval
        self.selected: Upstream | None = None

    async def run(self, stop: asyncio.Event) -> None:
        polls = 0
        while not stop.is_set():
            await asyncio.gather(*(self.poll(u) for u in self.upstreams))
            self.update()
            polls += 1
            delay = BURST_INTERVAL if polls < BURST else self.poll_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def poll(self, upstream: Upstream) -> None:
        upstream.reach = (upstream.reach << 1) & 0xFF
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(upstream.host, upstream.port, type=socket.SOCK_DGRAM)
            family, _, _, _, sockaddr = infos[0]
            upstream.address = str(sockaddr[0])
            transport, protocol = await loop.create_datagram_endpoint(
                _Exchange, remote_addr=(str(sockaddr[0]), int(sockaddr[1])), family=family)
        except OSError as exc:
            upstream.error = f"cannot reach: {exc}"
            return
        try:
            sent = time.time()
            request, transmit = make_request(sent)
            transport.sendto(request)
            deadline = loop.time() + REPLY_TIMEOUT
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    upstream.error = "no answer"
                    return
                try:
                    data, received = await asyncio.wait_for(protocol.answers.get(), left)
                except TimeoutError:
                    upstream.error = "no answer"
                    return
                try:
                    packet, sample = read_response(data, transmit, sent, received)
                except ValueError as exc:
                    upstream.error = str(exc)
                    if "origin" in str(exc):
                        continue  # not the answer to this request: keep waiting
                    return
                break
        finally:
            transport.close()
        upstream.reach |= 1
        upstream.last = packet
        upstream.samples.append(sample)
        upstream.error = None

    def update(self) -> None:
        now = time.time()
        peer = select(self.upstreams, now)
        if peer is not self.selected:
            if peer is None:
                log.warning("ntp: no upstream selectable; serving %s",
                            f"at local stratum {self.clock.local_stratum}"
                            if self.clock.local_stratum else "as unsynchronised")
            else:
                best = peer.best(now)
                log.info("ntp: system peer %s (stratum %d, offset %+.6f s, jitter %.6f s)",
                         peer.name, peer.last.stratum if peer.last else 0,
                         best.offset if best else 0.0, peer.jitter(now))
            self.selected = peer
        self.clock.update(state_from(peer, now) if peer is not None else None)
        statuses = []
        for u in self.upstreams:
            best = u.best(now)
            statuses.append(UpstreamStatus(
                u.name, u.address, u.reach, u.last.stratum if u.last else None,
                best.offset if best else None, best.delay if best else None,
                u.jitter(now) if best else None, u is peer, u.error))
        self.status.upstreams = statuses
        self.status.system_peer = peer.name if peer is not None else None
        best = peer.best(now) if peer is not None else None
        self.status.offset = best.offset if best is not None else None
        for line in self.status.lines():
            log.debug("ntp: %s", line)
