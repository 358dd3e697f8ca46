"""The in-process change feed over the embedded backend: wake-ups, order, catch-up after a gap."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from netpost.mail.message import parse_meta
from netpost.store.embedded import open_stores
from netpost.store.feed import LocalChangeFeed
from netpost.store.interfaces import Stores
from netpost.store.sqlite import SQLiteStore

RAW = b"Subject: x\r\n\r\nbody\r\n"


def _setup(tmp_path: Path) -> tuple[Stores, int, int]:
    stores = open_stores(tmp_path)
    stores.domains.add_domain("example.com")
    account = stores.accounts.add_account("bob@example.com", "x")
    inbox = stores.mailboxes.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    return stores, account.id, inbox.id


async def _deliver(stores: Stores, mailbox_id: int, n: int = 1) -> list[int]:
    uids = []
    for i in range(n):
        tx = stores.delivery.begin()
        tx.add_mailbox(mailbox_id)
        tx.body(RAW + b"%d\r\n" % i, parse_meta(RAW, time.time()))
        uids += await tx.commit()
    return uids


def test_delivery_expunge_and_flags_wake_a_subscriber_fast(tmp_path: Path) -> None:
    stores, account, inbox = _setup(tmp_path)

    async def main() -> list[float]:
        latencies = []
        sub = stores.changes.subscribe(account)
        waiter = asyncio.create_task(sub.wait(5))
        (uid,) = await _deliver(stores, inbox)
        done = time.perf_counter()
        changes = await asyncio.wait_for(waiter, 1)
        latencies.append(time.perf_counter() - done)
        assert [(c.kind, c.uid) for c in changes] == [("append", uid)]

        for work in (
            lambda: stores.messages.set_flags(inbox, [uid], frozenset({"\\Seen"}), "add"),
            lambda: stores.messages.expunge(inbox, [uid]),
        ):
            waiter = asyncio.create_task(sub.wait(5))
            await asyncio.to_thread(work)  # committed on another thread, as sessions do
            done = time.perf_counter()
            changes = await asyncio.wait_for(waiter, 1)
            latencies.append(time.perf_counter() - done)
            assert len(changes) == 1
        sub.close()
        return latencies

    try:
        latencies = asyncio.run(main())
    finally:
        stores.close()
    assert max(latencies) < 0.05, latencies


def test_order_and_cursor(tmp_path: Path) -> None:
    stores, account, inbox = _setup(tmp_path)

    async def main() -> None:
        before = stores.changes.subscribe(account)
        await _deliver(stores, inbox, 3)
        late = stores.changes.subscribe(account)  # sees only what comes after it
        uids = await _deliver(stores, inbox, 2)
        got = before.poll()
        assert [c.kind for c in got] == ["append"] * 5
        assert [c.id for c in got] == sorted(c.id for c in got)
        assert before.cursor == got[-1].id
        assert [c.uid for c in late.poll()] == uids
        assert before.poll() == [] and await before.wait(0.01) == []
        # Catch up from a cursor: everything after position 0 comes from the log.
        replay = stores.changes.subscribe(account, after=0)
        assert [c.id for c in replay.poll()] == [c.id for c in got]
        for s in (before, late, replay):
            s.close()

    try:
        asyncio.run(main())
    finally:
        stores.close()


def test_a_slow_subscriber_catches_up_from_the_log(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "db"))
    feed = LocalChangeFeed(store, buffer=3)
    store.set_publisher(feed.publish)
    store.add_domain("example.com")
    account = store.add_account("bob@example.com", "x").id
    inbox = store.get_mailbox(account, "INBOX")
    assert inbox is not None
    from netpost.store.interfaces import BlobRef, Delivery, MessageMeta

    async def main() -> None:
        sub = feed.subscribe(account)
        for i in range(10):  # 10 entries overflow a buffer of 3: it is dropped ...
            store.deliver([Delivery(BlobRef(f"{i:064x}", 1), MessageMeta(1, 0.0), [inbox.id])])
        await asyncio.sleep(0)  # let the offers run on this loop
        got = sub.poll()  # ... and the entries come from the log instead, none missing
        assert [c.uid for c in got] == list(range(1, 11))
        store.deliver([Delivery(BlobRef("f" * 64, 1), MessageMeta(1, 0.0), [inbox.id])])
        assert [c.uid for c in await sub.wait(1)] == [11]
        sub.close()
        assert feed._subscribers == {}

    try:
        asyncio.run(main())
    finally:
        store.close()


def test_subscribers_on_other_loops_and_threads(tmp_path: Path) -> None:
    stores, account, inbox = _setup(tmp_path)
    import threading

    seen: list[int] = []
    ready = threading.Event()

    def other_loop() -> None:
        async def watch() -> None:
            sub = stores.changes.subscribe(account)
            ready.set()
            changes = await sub.wait(5)
            seen.extend(c.uid for c in changes)
            sub.close()

        asyncio.run(watch())

    t = threading.Thread(target=other_loop)
    t.start()
    assert ready.wait(5)
    try:
        uids = asyncio.run(_deliver(stores, inbox))
        t.join(5)
    finally:
        stores.close()
    assert seen == uids
