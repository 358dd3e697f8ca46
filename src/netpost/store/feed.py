"""The in-process change feed: committed changes fanned out to subscribers on event loops.

The store publishes each write's `changes` rows right after COMMIT, from whichever thread
committed (the group-commit thread, a worker thread), in commit order.  Each `Subscription`
belongs to one account and one event loop: publishing hands it the entries with
`call_soon_threadsafe`, so a waiting IMAP IDLE or web view wakes within a loop iteration.

A subscriber that falls too far behind (more than `buffer` entries unread) is not allowed to
hold memory without bound: its buffer is dropped and its next read catches up from the durable
`ChangeLog` from its cursor on.  Across processes the PostgreSQL backend will use LISTEN/NOTIFY
for the wake-up and the same catch-up from its table.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence

from netpost.store.interfaces import Change, ChangeLog

DEFAULT_BUFFER = 10_000  # entries a subscriber may have unread before it catches up from the log
CATCH_UP_PAGE = 1000


class LocalSubscription:
    """One account's changes for one subscriber, in order, from `cursor` on."""

    def __init__(self, feed: LocalChangeFeed, account_id: int, cursor: int, *, gap: bool,
                 buffer: int) -> None:
        self.account_id = account_id
        self.cursor = cursor
        self._feed = feed
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._buffer: deque[Change] = deque()
        self._limit = buffer
        self._gap = gap  # entries may be missing from the buffer: read the log first
        self.closed = False
        if gap:
            self._event.set()

    # Runs on the subscriber's loop (scheduled by LocalChangeFeed.publish).
    def _offer(self, changes: Sequence[Change]) -> None:
        if self.closed:
            return
        if len(self._buffer) + len(changes) > self._limit:
            self._buffer.clear()
            self._gap = True
        else:
            self._buffer.extend(changes)
        self._event.set()

    def poll(self) -> list[Change]:
        out: list[Change] = []
        if self._gap:
            self._gap = False
            while True:
                page = self._feed.log.changes_since(self.account_id, self.cursor, CATCH_UP_PAGE)
                out.extend(page)
                if page:
                    self.cursor = page[-1].id
                if len(page) < CATCH_UP_PAGE:
                    break
        while self._buffer:
            change = self._buffer.popleft()
            if change.id > self.cursor:  # entries read from the log already are skipped
                out.append(change)
                self.cursor = change.id
        self._event.clear()
        return out

    async def wait(self, timeout: float | None = None) -> list[Change]:
        changes = self.poll()
        if changes or self.closed:
            return changes
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return []
        return self.poll()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._feed._remove(self)
            self._event.set()

    def __enter__(self) -> LocalSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalChangeFeed:
    """`ChangeFeed` for one process: publish from any thread, subscribe on an event loop."""

    def __init__(self, log: ChangeLog, *, buffer: int = DEFAULT_BUFFER) -> None:
        self.log = log
        self._buffer = buffer
        self._lock = threading.Lock()
        self._subscribers: dict[int, list[LocalSubscription]] = {}
        self.published = 0  # entries handed to publish (for metrics)

    def subscribe(self, account_id: int, *, after: int | None = None) -> LocalSubscription:
        """Must be called on the event loop that will wait on the subscription."""
        if after is None:
            # Register first, then read the position: an entry committed in between is in the
            # buffer and at or below the position, so poll() skips it; none is missed.
            sub = LocalSubscription(self, account_id, 0, gap=False, buffer=self._buffer)
            self._add(sub)
            sub.cursor = self.log.last_change(account_id)
        else:
            sub = LocalSubscription(self, account_id, after, gap=True, buffer=self._buffer)
            self._add(sub)
        return sub

    def publish(self, changes: Sequence[Change]) -> None:
        self.published += len(changes)
        with self._lock:
            if not self._subscribers:
                return
            by_account: dict[int, list[Change]] = {}
            for change in changes:
                if change.account_id in self._subscribers:
                    by_account.setdefault(change.account_id, []).append(change)
            targets = [(sub, part) for account, part in by_account.items()
                       for sub in self._subscribers[account]]
        for sub, part in targets:
            try:
                sub._loop.call_soon_threadsafe(sub._offer, part)
            except RuntimeError:  # that loop is closed: nobody is waiting there any more
                self._remove(sub)

    def _add(self, sub: LocalSubscription) -> None:
        with self._lock:
            self._subscribers.setdefault(sub.account_id, []).append(sub)

    def _remove(self, sub: LocalSubscription) -> None:
        with self._lock:
            subs = self._subscribers.get(sub.account_id)
            if subs is not None and sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._subscribers[sub.account_id]
