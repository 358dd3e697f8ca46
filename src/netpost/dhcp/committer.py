"""Group commit of DHCP leases, shared by the v4 and v6 handlers, and the look for leases the
command line changed.

`LeaseCommitter.hold(leases, reply, destination)` keeps a reply that promises leases (a
DHCPv4 ACK, a DHCPv6 REPLY with addresses) until those leases are durable.  One task at a
time commits: it waits up to `gather_time` for more replies to join (unless `gather_enough`
wait already), writes every held lease in ONE `Leases.commit_leases` transaction (in a thread:
SQLite's fsync must not stop the event loop), and only then sends the replies of that batch.
Replies held while a transaction runs go in the next one -- so a burst of requests costs a few
fsyncs, not one each.  When a transaction fails, its replies are never sent (the clients ask
again) and the failure is counted and logged.

A committed batch can be a few hundred replies, and a relay agent (or perfdhcp) takes them
all on one socket: sent in one go they overflowed its receive buffer.  The first `send_slice`
go at once; the rest are paced by their own task (the next transaction does not wait for
them) at `pace_margin` times the rate requests arrive (measured over `rate_window`), never
slower than `min_pace`: the replies leave about as fast as their requests came, as a server
without group commit would send them, and a backlog left by a slow commit drains without a
burst.  The pace is kept by the clock, not by counting wake-ups: one turn of a busy event loop
can take several milliseconds.

`AdminChanges.poll()` returns, at most once per `interval`, the leases an administrator
changed since the last look (`netpost leases release`), for the handler to apply to its
engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from netpost.net.datagram import DatagramListener
from netpost.store.interfaces import Lease, Leases

log = logging.getLogger("netpost.dhcp")

GATHER_TIME = 0.005  # seconds a commit waits for more leases to join it...
GATHER_ENOUGH = 64  # ...unless this many replies are waiting already
SEND_SLICE = 24  # replies of a committed batch sent at once; the rest paced:
SEND_PAUSE = 0.001  # seconds between the pacing task's turns
PACE_MARGIN = 1.25  # replies per second, as a multiple of the requests' arrival rate...
MIN_PACE = 2000.0  # ...and never fewer than this
RATE_WINDOW = 0.05  # seconds over which the arrival rate is measured
MAX_CATCH_UP = 0.01  # seconds' worth of replies one turn of the pacing task may send
SYNC_INTERVAL = 1.0  # seconds between looks for leases the command line changed
RECENT_BATCHES = 64  # commit sizes kept for the counters


@dataclass
class CommitCounters:
    commits: int = 0  # transactions
    committed: int = 0  # leases in them
    commit_failures: int = 0
    batches: list[int] = field(default_factory=list)  # recent commit sizes (leases)
    commit_seconds: float = 0.0  # time in transactions (thread hand-off included)
    slowest_commit: float = 0.0  # the longest, in seconds


class LeaseCommitter:
    """Replies held until their leases are committed, a batch per transaction."""

    def __init__(self, leases: Leases, listener: DatagramListener, name: str = "dhcp", *,
                 gather_time: float = GATHER_TIME, gather_enough: int = GATHER_ENOUGH,
                 send_slice: int = SEND_SLICE, send_pause: float = SEND_PAUSE,
                 pace_margin: float = PACE_MARGIN, min_pace: float = MIN_PACE) -> None:
        self.leases = leases
        self.listener = listener
        self.name = name  # for the log: "dhcp" or "dhcp6"
        self.gather_time = gather_time
        self.gather_enough = gather_enough
        self.send_slice = max(1, send_slice)
        self.send_pause = send_pause
        self.pace_margin = pace_margin
        self.min_pace = min_pace
        self.arrival_rate = 0.0  # replies held per second, lately
        self._arrived = 0  # replies held since _rate_since
        self._rate_since = time.monotonic()
        self.counters = CommitCounters()
        self._held: list[Lease] = []
        self._replies: list[tuple[bytes | None, tuple[str, int] | None]] = []
        self._committing = False
        self._in_flight = 0  # replies of the transaction running
        self._outbox: deque[tuple[bytes, tuple[str, int]]] = deque()  # committed, not sent
        self._sending = False

    def hold(self, leases: Sequence[Lease], reply: bytes | None,
             destination: tuple[str, int] | None) -> None:
        """Keep `reply` (may be None: a DECLINE or RELEASE promises nothing but is recorded)
        until `leases` are durable, then send it to `destination`.  Call `flush` after a
        batch of datagrams to start the commit."""
        self._held.extend(leases)
        self._replies.append((reply, destination))
        self._arrived += 1

    @property
    def waiting(self) -> int:
        """Replies waiting for their commit now: held, or in the transaction running."""
        return len(self._replies) + self._in_flight

    def flush(self) -> None:
        """Start committing what is held, unless a commit task runs already (it takes what
        is held when its transaction ends)."""
        self._measure_rate()
        if not self._replies or self._committing:
            return
        self._committing = True
        if not self.listener.spawn(self._commit_held()):
            self._committing = False

    def _measure_rate(self) -> None:
        now = time.monotonic()
        elapsed = now - self._rate_since
        if elapsed < RATE_WINDOW:
            return
        rate = self._arrived / elapsed
        # a moving average over a few windows; a long quiet spell counts as one window
        self.arrival_rate = rate if elapsed > 4 * RATE_WINDOW else \
            (self.arrival_rate + rate) / 2
        self._arrived = 0
        self._rate_since = now

    @property
    def pace(self) -> float:
        """Replies per second the pacing task sends."""
        return max(self.min_pace, self.pace_margin * self.arrival_rate)

    async def _commit_held(self) -> None:
        """Commit what is held in one transaction, send its replies, repeat while more
        gathered meanwhile."""
        counters = self.counters
        try:
            while self._replies:
                if len(self._replies) < self.gather_enough and self.gather_time > 0:
                    # Let a few more requests join this transaction: one fsync and one thread
                    # hand-off for many leases costs the replies `gather_time` of latency.
                    await asyncio.sleep(self.gather_time)
                leases, self._held = self._held, []
                replies, self._replies = self._replies, []
                self._in_flight = len(replies)
                started = time.monotonic()
                try:
                    if leases:
                        await asyncio.to_thread(self.leases.commit_leases, leases)
                except Exception:
                    counters.commit_failures += 1
                    log.exception("%s: %d leases not committed; their replies are not sent "
                                  "(the clients will ask again)", self.name, len(leases))
                    continue
                finally:
                    self._in_flight = 0
                took = time.monotonic() - started
                counters.commit_seconds += took
                counters.slowest_commit = max(counters.slowest_commit, took)
                counters.commits += 1
                counters.committed += len(leases)
                counters.batches = [*counters.batches[-(RECENT_BATCHES - 1):], len(leases)]
                self._outbox.extend((data, destination) for data, destination in replies
                                    if data is not None and destination is not None)
                self._send_some()
        finally:
            self._committing = False

    def _send_some(self) -> None:
        """Send the first slice of the committed replies now, unless the pacing task has a
        backlog still (they queue behind it); the rest by the pacing task."""
        outbox, send = self._outbox, self.listener.send
        if self._sending:
            return
        for _ in range(min(self.send_slice, len(outbox))):
            send(*outbox.popleft())
        if outbox:
            self._sending = True
            if not self.listener.spawn(self._send_paced()):
                self._sending = False
                while outbox:  # no task to be had (stopping): all at once, as before
                    send(*outbox.popleft())

    async def _send_paced(self) -> None:
        outbox, send, clock = self._outbox, self.listener.send, time.monotonic
        last, due = clock(), 0.0
        try:
            while outbox:
                await asyncio.sleep(self.send_pause)
                now = clock()
                # as many as the time since the last turn allows at the pace: a slow turn of
                # the loop must not slow the replies down; but a stall (a long commit, a
                # collection) earns at most MAX_CATCH_UP of them, not one burst of all
                pace = self.pace
                due = min(due + (now - last) * pace, max(1.0, pace * MAX_CATCH_UP))
                last = now
                n = min(int(due), len(outbox))
                due -= n
                for _ in range(n):
                    send(*outbox.popleft())
        finally:
            self._sending = False


class AdminChanges:
    """What `netpost leases release` changed, looked for at most once per `interval`."""

    def __init__(self, leases: Leases, family: int, name: str = "dhcp",
                 interval: float = SYNC_INTERVAL) -> None:
        self.leases = leases
        self.family = family
        self.name = name
        self.interval = interval
        _, self._serial = leases.leases_changed_since(0)
        self._looked = time.monotonic()

    def poll(self) -> list[Lease]:
        """Released leases of our family changed since the last look; [] when it is not
        time to look yet, or the store cannot say (logged)."""
        tick = time.monotonic()
        if tick - self._looked < self.interval:
            return []
        self._looked = tick
        try:
            changed, self._serial = self.leases.leases_changed_since(self._serial)
        except Exception:
            log.exception("%s: cannot read lease changes", self.name)
            return []
        return [lease for lease in changed
                if lease.state == "released" and lease.family == self.family]
