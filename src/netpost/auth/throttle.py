"""Slow down repeated login failures from one client address.

Each failure doubles the delay the address gets before its next failure is answered,
from `base` up to `maximum`; a success or `window` seconds without failures forgives it.
Replies are identical for unknown users and wrong passwords: only the delay grows.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("netpost.auth")


class FailureThrottle:
    def __init__(self, base: float, maximum: float, window: float, max_tracked: int = 100_000):
        self.base = base
        self.maximum = maximum
        self.window = window
        self.max_tracked = max_tracked
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, last failure)
        self.failed_logins: dict[str, int] = {}  # protocol -> failures since start (/metrics)

    def failures(self, address: str, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        count, last = self._failures.get(address, (0, 0.0))
        if count and now - last > self.window:
            del self._failures[address]
            return 0
        return count

    def record_failure(self, address: str, who: str, protocol: str) -> float:
        """Count a failure; return the delay (seconds) to wait before answering it."""
        now = time.monotonic()
        count = self.failures(address, now) + 1
        self.failed_logins[protocol] = self.failed_logins.get(protocol, 0) + 1
        # Re-insert so that the dict's order is the order of last failure: when the table is
        # full, the first key is the address forgiven first (bounded memory, O(1)).
        self._failures.pop(address, None)
        if len(self._failures) >= self.max_tracked:
            del self._failures[next(iter(self._failures))]
        self._failures[address] = (count, now)
        delay: float = min(self.maximum, self.base * 2.0 ** (count - 1))
        log.warning("%s login failed for %r from %s (failure %d, delaying %.1fs)",
                    protocol, who, address, count, delay)
        return delay

    def record_success(self, address: str) -> None:
        self._failures.pop(address, None)
