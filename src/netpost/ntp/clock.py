"""What the server says about its clock (RFC 5905 §7.3, §9): leap indicator, stratum, reference
id, reference time, root delay and dispersion, precision.

netpost reads the system clock and never sets it (chronyd or the OS does).  It serves either
as one stratum below the upstream server it selected (`ntp/client.py`), or, with no upstream
selected, at a configured local stratum (as chrony's `local stratum`), or not at all: a server
with neither answers "unsynchronised" (leap 3, stratum 0), which clients ignore.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from dataclasses import dataclass

from netpost.ntp.packet import Leap

PHI = 15e-6  # RFC 5905 §7.2: the frequency tolerance, s/s; dispersion grows by it
LOCAL_REFERENCE_ID = bytes([127, 127, 1, 1])  # what ntpd and chrony show for a local clock
MAX_STRATUM = 15  # RFC 5905 §7.3: 16 means unsynchronised


@dataclass(frozen=True)
class ClockState:
    """The system variables a server puts in every reply (RFC 5905 §11.2)."""

    leap: int
    stratum: int  # 0 = unsynchronised ("kiss" in a packet, RFC 5905 §7.3)
    reference_id: bytes
    reference_time: float  # Unix time of the last update
    root_delay: float  # seconds
    root_dispersion: float  # seconds, at reference_time

    def dispersion_at(self, now: float) -> float:
        """RFC 5905 §10: dispersion grows at PHI from the last update."""
        return self.root_dispersion + PHI * max(0.0, now - self.reference_time)


UNSYNCHRONIZED = ClockState(Leap.UNSYNCHRONIZED, 0, b"\0\0\0\0", 0.0, 0.0, 0.0)


def local_state(stratum: int, now: float) -> ClockState:
    """Serving the system clock as it is, at `stratum` (chrony's `local stratum N`)."""
    return ClockState(Leap.NO_WARNING, stratum, LOCAL_REFERENCE_ID, now, 0.0, 0.0)


def reference_id_of(address: str) -> bytes:
    """RFC 5905 §7.3: the upstream's IPv4 address, or the first four octets of the MD5 of
    its IPv6 address."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.packed
    return hashlib.md5(ip.packed, usedforsecurity=False).digest()[:4]


def measure_precision() -> int:
    """RFC 5905 §7.3: log2 seconds of the time it takes to read the system clock (at least
    its resolution), as chronyd measures it."""
    resolution = time.clock_getres(time.CLOCK_REALTIME)
    best = math.inf
    for _ in range(100):
        a = time.time_ns()
        b = time.time_ns()
        while b == a:
            b = time.time_ns()
        best = min(best, (b - a) / 1e9)
    return max(-30, math.ceil(math.log2(max(best, resolution))))


class ServerClock:
    """The state served now; the upstream poller (or nobody) updates it."""

    def __init__(self, local_stratum: int) -> None:
        self.local_stratum = local_stratum
        self.precision = measure_precision()
        self._synced: ClockState | None = None
        self._local: ClockState | None = None

    def update(self, state: ClockState | None) -> None:
        """A new selection from the upstream poller; None = no upstream selected."""
        self._synced = state

    @property
    def synchronized(self) -> bool:
        return self._synced is not None

    def state(self, now: float) -> ClockState:
        if self._synced is not None:
            return self._synced
        if self.local_stratum:
            # The local reference is "updated" once a second (as the reference timestamp
            # says), not made anew for every request.
            local = self._local
            if local is None or not 0 <= now - local.reference_time < 1.0:
                local = self._local = local_state(self.local_stratum, now)
            return local
        return UNSYNCHRONIZED
