"""The shared group commit of DHCP leases (dhcp/committer.py): replies wait for their leases'
transaction, a batch per transaction, failures send nothing; and the look for leases the
command line released."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, cast

from netpost.dhcp.committer import AdminChanges, LeaseCommitter
from netpost.net.datagram import DatagramListener
from netpost.store.interfaces import Lease


class FakeListener:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.refuse = False

    def send(self, data: bytes, peer: tuple[str, int]) -> None:
        self.sent.append((data, peer))

    def spawn(self, work: Coroutine[Any, Any, None]) -> bool:
        if self.refuse:
            work.close()
            return False
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def idle(self) -> None:
        while self.tasks:
            await asyncio.gather(*self.tasks)


class FakeLeases:
    """commit_leases records each transaction; `gate` (when set) holds a transaction until
    released, `fail` makes the next one raise."""

    def __init__(self) -> None:
        self.transactions: list[list[str]] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail = False
        self.serial = 0
        self.changed: list[Lease] = []

    def commit_leases(self, leases: Sequence[Lease]) -> None:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            self.fail = False
            raise OSError("disk full")
        self.transactions.append([lease.address for lease in leases])

    def leases_changed_since(self, serial: int) -> tuple[list[Lease], int]:
        return [lease for i, lease in enumerate(self.changed, 1) if i > serial], self.serial


def lease(address: str, state: str = "bound") -> Lease:
    return Lease(address=address, client=b"c", state=state,  # type: ignore[arg-type]
                 starts=1.0, expires=2.0)


def committer(listener: FakeListener, leases: FakeLeases, **kw: Any) -> LeaseCommitter:
    return LeaseCommitter(leases, cast(DatagramListener, listener), "test", **kw)  # type: ignore[arg-type]


def test_replies_wait_for_their_transaction_and_go_together() -> None:
    async def main() -> None:
        listener, leases = FakeListener(), FakeLeases()
        c = committer(listener, leases, gather_time=0.01)
        for i in range(3):
            c.hold([lease(f"10.0.0.{i}")], b"ack%d" % i, ("10.0.0.254", 67))
        c.hold([lease("10.0.0.9", "released")], None, None)  # a RELEASE: recorded, no reply
        assert c.waiting == 4
        c.flush()
        assert listener.sent == []  # nothing before the commit
        await listener.idle()
        assert leases.transactions == [["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.9"]]
        assert [d for d, _ in listener.sent] == [b"ack0", b"ack1", b"ack2"]
        assert c.counters.commits == 1 and c.counters.committed == 4
        assert c.waiting == 0 and c.counters.batches == [4]

    asyncio.run(main())


def test_replies_held_during_a_transaction_go_in_the_next() -> None:
    async def main() -> None:
        listener, leases = FakeListener(), FakeLeases()
        leases.gate = threading.Event()
        c = committer(listener, leases, gather_time=0.0)
        c.hold([lease("10.0.0.1")], b"a1", ("h", 68))
        c.flush()
        while not leases.started.is_set():
            await asyncio.sleep(0.001)
        c.hold([lease("10.0.0.2")], b"a2", ("h", 68))
        c.hold([lease("10.0.0.3"), lease("10.0.0.4")], b"a3", ("h", 68))
        c.flush()  # a commit runs already: no second task
        assert len(listener.tasks) == 1
        assert c.waiting == 3  # one in the transaction, two held for the next
        assert listener.sent == []
        leases.gate.set()
        await listener.idle()
        assert leases.transactions == [["10.0.0.1"], ["10.0.0.2", "10.0.0.3", "10.0.0.4"]]
        assert [d for d, _ in listener.sent] == [b"a1", b"a2", b"a3"]
        assert c.counters.commits == 2 and c.counters.batches == [1, 3]

    asyncio.run(main())


def test_a_failed_transaction_sends_nothing_and_the_next_goes_on() -> None:
    async def main() -> None:
        listener, leases = FakeListener(), FakeLeases()
        leases.fail = True
        c = committer(listener, leases, gather_time=0.0)
        c.hold([lease("10.0.0.1")], b"lost", ("h", 68))
        c.flush()
        await listener.idle()
        assert listener.sent == [] and leases.transactions == []
        assert c.counters.commit_failures == 1 and c.waiting == 0
        c.hold([lease("10.0.0.2")], b"kept", ("h", 68))
        c.flush()
        await listener.idle()
        assert listener.sent == [(b"kept", ("h", 68))]

    asyncio.run(main())


def test_enough_waiting_does_not_wait_to_gather() -> None:
    async def main() -> None:
        listener, leases = FakeListener(), FakeLeases()
        c = committer(listener, leases, gather_time=30.0, gather_enough=2)
        c.hold([lease("10.0.0.1")], b"1", ("h", 68))
        c.hold([lease("10.0.0.2")], b"2", ("h", 68))
        c.flush()
        await asyncio.wait_for(listener.idle(), 5)  # not 30 s
        assert len(listener.sent) == 2

    asyncio.run(main())


def test_a_refused_task_is_tried_again_on_the_next_flush() -> None:
    async def main() -> None:
        listener, leases = FakeListener(), FakeLeases()
        c = committer(listener, leases, gather_time=0.0)
        c.hold([lease("10.0.0.1")], b"1", ("h", 68))
        listener.refuse = True
        c.flush()
        assert listener.sent == [] and c.waiting == 1
        listener.refuse = False
        c.flush()
        await listener.idle()
        assert listener.sent == [(b"1", ("h", 68))]

    asyncio.run(main())


def test_admin_changes_are_looked_for_once_per_interval_and_filtered() -> None:
    leases = FakeLeases()
    leases.changed = [lease("10.0.0.1", "released")]
    leases.serial = 1
    admin = AdminChanges(leases, 4, "test", interval=3600.0)  # type: ignore[arg-type]
    # What was released before the server started is in the leases it loaded.
    leases.changed += [lease("10.0.0.2", "released"), lease("2001:db8::2", "released"),
                       lease("10.0.0.3", "bound")]
    leases.serial = 4
    assert admin.poll() == []  # not time yet
    admin.interval = 0.0
    assert [x.address for x in admin.poll()] == ["10.0.0.2"]
    assert admin.poll() == []  # nothing new since


def test_a_big_batch_goes_out_paced_in_order() -> None:
    async def main() -> None:
        listener, leases = FakeListener(), FakeLeases()
        c = committer(listener, leases, gather_time=0.0, send_slice=10, send_pause=0.01)
        for i in range(35):
            c.hold([lease(f"10.0.1.{i}")], b"%d" % i, ("relay", 67))
        c.flush()
        while not listener.sent:
            await asyncio.sleep(0.001)
        assert len(listener.sent) == 10  # the first slice at once, the rest paced
        assert leases.transactions and len(leases.transactions[0]) == 35
        await listener.idle()
        assert [d for d, _ in listener.sent] == [b"%d" % i for i in range(35)]

    asyncio.run(main())


async def paced_backlog(listener: FakeListener, replies: int) -> LeaseCommitter:
    """A committer pacing at 10,000 replies/s, `replies` held and committed at once: returns
    when the first slice (10) has gone, the rest waiting for the pacing task."""
    c = committer(listener, FakeLeases(), gather_time=0.0, send_slice=10, send_pause=0.001,
                  min_pace=10_000.0)
    for i in range(replies):
        c.hold([lease(f"10.{i // 40_000}.{i // 200 % 200}.{i % 200}")], b"%d" % i,
               ("relay", 67))
    c.flush()
    while not listener.sent:
        await asyncio.sleep(0)
    return c


def test_pacing_keeps_up_when_the_loop_is_slow() -> None:
    """The pace is replies per second of clock time: when a turn of the event loop takes
    longer than the pause (a busy server), each turn sends that much more -- a fixed slice per
    turn fell behind the requests and the backlog grew without end."""
    async def main() -> None:
        listener = FakeListener()
        await paced_backlog(listener, 400)
        turns = 0
        while len(listener.sent) < 400:
            time.sleep(0.01)  # a turn of the loop that takes 10 pauses
            await asyncio.sleep(0)
            turns += 1
            assert turns < 100
        # 10,000/s: some 100 a slow turn, not one slice (that would take 39 turns)
        assert turns < 15, turns
        assert [d for d, _ in listener.sent] == [b"%d" % i for i in range(400)]

    asyncio.run(main())


def test_pace_follows_the_arrival_rate() -> None:
    """Replies are paced at a margin over the rate requests come in (a slow commit's backlog
    drains without a burst), never below the floor."""
    listener, leases = FakeListener(), FakeLeases()
    c = committer(listener, leases, min_pace=100.0, pace_margin=1.5)
    assert c.pace == 100.0  # nothing measured yet: the floor
    started = time.monotonic()
    held = 0
    while time.monotonic() - started < 0.3:  # some 2,000 requests a second for 0.3 s
        for _ in range(10):
            c._arrived += 1
        held += 10
        c._measure_rate()
        time.sleep(0.005)
    true_rate = held / (time.monotonic() - started)  # whatever a loaded machine made of it
    assert 0.5 * true_rate < c.arrival_rate < 1.5 * true_rate, (c.arrival_rate, true_rate)
    assert c.pace == max(100.0, 1.5 * c.arrival_rate)
    time.sleep(0.06)
    c._measure_rate()  # the last window, with the last requests
    time.sleep(0.3)  # a quiet spell: the next window says so at once
    c._measure_rate()
    assert c.arrival_rate == 0.0 and c.pace == 100.0


def test_a_stall_does_not_release_the_backlog_in_one_burst() -> None:
    """After the loop stalled (100 ms here), one turn sends at most 10 ms' worth at the pace,
    not everything that waited."""
    async def main() -> None:
        listener = FakeListener()
        await paced_backlog(listener, 1000)
        await asyncio.sleep(0.002)  # the pacing task's first turn: its clock starts
        before = len(listener.sent)
        time.sleep(0.1)  # a stall: 1,000 replies' worth at 10,000/s
        while len(listener.sent) == before:
            await asyncio.sleep(0)
        assert len(listener.sent) - before <= 10_000 * 0.01 + 1
        await listener.idle()
        assert len(listener.sent) == 1000

    asyncio.run(main())
