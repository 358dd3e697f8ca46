"""Group commit: the durable delivery path between asyncio sessions and the stores.

`GroupCommitter` is the embedded backend's `DeliveryTarget` (begin / add mailbox / body /
commit) and `Maintenance`; it works over any `MetadataBatches` + `StagingBlobStore` pair.
A transaction's commit (or `deliver`) queues the message; a writer thread takes everything
queued while the previous batch was being committed, writes the batch's blobs (`stage_many`:
files fsync'd in parallel, each directory once), appends all the metadata in one SQLite
transaction, and only then resolves each caller's future on its own event loop.  The blob
half and the metadata half can run as a two-stage pipeline (see `_run`): it overlapped one
batch's file fsyncs with the next one's, which paid when every body was a file.  With small
bodies as rows, one thread doing both halves is faster for the small batches of SMTP
(measured: about 30 % more ingest; three Python threads handing batches over spent their time
waiting for each other and the GIL), so only bulk batches (`PIPELINE_BATCH`, an import) still
take the pipeline, and `pipeline=True` forces it for all.  A caller that
gets UIDs back holds a durable message ("accepted means durable"); a caller that gets an
exception must answer with a temporary failure (SMTP 451).

If a batch fails as a whole, its deliveries are retried one by one so that one bad delivery
(an unknown mailbox, say) fails only its own caller.

Garbage collection of unreferenced blobs also runs on the writer thread
(`collect_garbage`), so it can never delete a file that a delivery in flight is reusing.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from netpost.store.interfaces import (
    BlobRef,
    Delivery,
    GarbageReport,
    MessageMeta,
    MetadataBatches,
    MetaSource,
    OutboundEnvelope,
    StagedBlobs,
    StagingBlobStore,
    StoreError,
)

PIPELINE_BATCH = 200  # batches this large go to the commit thread (see _stage)


@dataclass
class _Job:
    data: bytes
    meta: MetaSource  # a MessageMeta once staged
    mailbox_ids: Sequence[int]
    # The caller's future: on its event loop (`loop` set), or a concurrent one (`loop` None).
    future: asyncio.Future[list[int]] | concurrent.futures.Future[list[int]]
    loop: asyncio.AbstractEventLoop | None
    flags: frozenset[str] = frozenset()
    outbound: OutboundEnvelope | None = None


Outcome = tuple[_Job, list[int] | None, BaseException | None]


def _meta(job: _Job) -> MessageMeta:
    meta = job.meta
    if not isinstance(meta, MessageMeta):
        meta = job.meta = meta()
    return meta


def _settle(outcomes: list[Outcome]) -> None:
    for job, uids, exc in outcomes:
        fut = job.future
        if fut.done():  # the caller was cancelled
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            assert uids is not None
            fut.set_result(uids)


def _resolve(outcomes: list[Outcome]) -> None:
    """Hand results to their callers: one wake-up per event loop for a whole batch (not one
    per message: each call_soon_threadsafe writes to the loop's self-pipe)."""
    by_loop: dict[asyncio.AbstractEventLoop | None, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, part in by_loop.items():
        if loop is None:
            _settle(part)
            continue
        try:
            loop.call_soon_threadsafe(_settle, part)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more


@dataclass
class _Task:
    """Work other than a delivery that must run on the writer thread."""

    fn: Callable[[], object]
    future: concurrent.futures.Future[object] = field(default_factory=concurrent.futures.Future)


# Upper bounds of the /metrics histograms of group commits: messages per batch, seconds.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1.0, 2.5)


@dataclass
class CommitStats:
    batches: int = 0
    deliveries: int = 0
    failures: int = 0
    largest_batch: int = 0
    # Histograms (non-cumulative counts per bucket, the last for "above every bound").
    batch_counts: list[int] = field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))
    latency_counts: list[int] = field(
        default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe(self, size: int, seconds: float) -> None:
        self.batch_counts[bisect.bisect_left(BATCH_BUCKETS, size)] += 1
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class GroupCommitter:
    """Durable, batched delivery of messages into mailboxes."""

    def __init__(
        self,
        store: MetadataBatches,
        blobs: StagingBlobStore,
        *,
        max_batch: int = 1000,
        pipeline: bool = False,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.blobs = blobs
        self.max_batch = max_batch
        self.stats = CommitStats()
        self._cond = threading.Condition()
        self._queue: list[_Job | _Task] = []
        self._closing = False
        # (jobs, staged blobs) from the staging thread to the commit thread; None ends it.
        # Bounded: at most one batch waits while another commits.
        self._staged: queue.Queue[tuple[list[_Job], StagedBlobs | None] | None] = queue.Queue(1)
        self._commit_thread = threading.Thread(
            target=self._run_commits, name="group-commit", daemon=True
        )
        self._commit_thread.start()
        self._thread = threading.Thread(target=self._run, name="group-stage", daemon=True)
        self._thread.start()

    # -- callers -----------------------------------------------------------------------------

    def _enqueue(self, item: _Job | _Task) -> None:
        with self._cond:
            if self._closing:
                raise StoreError("the delivery committer is closed")
            self._queue.append(item)
            self._cond.notify()

    def begin(self) -> CommitTransaction:
        """A delivery transaction (the `DeliveryTarget` role)."""
        return CommitTransaction(self)

    async def deliver(
        self, data: bytes, meta: MetaSource, mailbox_ids: Sequence[int],
        flags: frozenset[str] = frozenset(), outbound: OutboundEnvelope | None = None,
    ) -> list[int]:
        """Store `data` in each mailbox (and in the outbound queue with `outbound`); return
        the UIDs once blob and metadata are durable."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[int]] = loop.create_future()
        self._enqueue(_Job(data, meta, tuple(mailbox_ids), fut, loop, flags, outbound))
        return await fut

    def deliver_sync(self, data: bytes, meta: MessageMeta, mailbox_ids: Sequence[int]) -> list[int]:
        """Blocking form of `deliver`, for the command line and tests (not on an event loop)."""
        fut: concurrent.futures.Future[list[int]] = concurrent.futures.Future()
        self._enqueue(_Job(data, meta, tuple(mailbox_ids), fut, None))
        return fut.result()

    def collect_garbage_sync(self, orphans_older_than: float | None = None) -> GarbageReport:
        """Delete blobs no message references any more and hand the space back.  Runs on the
        writer thread, between batches.  With `orphans_older_than` (seconds) also delete blobs
        that have no row at all and are at least that old: left by a crash between writing
        a body and committing its message (this scans every blob)."""
        result = self.run_exclusive(lambda: self._collect_garbage(orphans_older_than))
        assert isinstance(result, GarbageReport)
        return result

    async def collect_garbage(self, orphans_older_than: float | None = None) -> GarbageReport:
        task = _Task(lambda: self._collect_garbage(orphans_older_than))
        self._enqueue(task)
        result = await asyncio.wrap_future(task.future)
        assert isinstance(result, GarbageReport)
        return result

    def run_exclusive(self, fn: Callable[[], object]) -> object:
        """Run `fn` on the writer thread with the pipeline empty (no delivery in flight), as
        garbage collection does; for maintenance such as the layout migration."""
        task = _Task(fn)
        self._enqueue(task)
        return task.future.result()

    async def close(self) -> None:
        """Commit everything queued, then stop the writer thread."""
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # -- writer threads ----------------------------------------------------------------------
    #
    # The writer thread takes everything queued and stages the batch's bodies (rows committed,
    # files fsync'd and renamed), then commits the metadata in one transaction and resolves
    # the callers.  With `pipeline`, a second thread does the second half, so that batch N+1's
    # staging overlaps batch N's commit.

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return  # closing and drained
                    batch = self._queue[: self.max_batch]
                    del self._queue[: self.max_batch]
                jobs: list[_Job] = []
                for item in batch:
                    if isinstance(item, _Job):
                        jobs.append(item)
                        continue
                    # Keep order: commit the deliveries queued before this task first, and
                    # run the task with the pipeline empty (GC must not race a delivery).
                    self._stage(jobs)
                    jobs = []
                    self._staged.join()
                    self._run_task(item)
                self._stage(jobs)
        finally:
            self._staged.put(None)
            self._commit_thread.join()

    def _stage(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        for job in jobs:  # header parsing the caller handed over (a MetaSource), done here
            _meta(job)
        try:
            staged: StagedBlobs | None = self.blobs.stage_many([job.data for job in jobs])
        except Exception:
            staged = None  # _commit retries them one by one
        if self.pipeline or len(jobs) >= PIPELINE_BATCH:
            # A bulk batch (an import): its metadata commit overlaps the next batch's staging.
            self._staged.put((jobs, staged))
        else:
            # Small batches (SMTP under load: a dozen messages): on this thread, no hand-over
            # and no GIL ping-pong; after any bulk batch still queued, to keep the order.
            self._staged.join()
            self._commit(jobs, staged)

    def _run_commits(self) -> None:
        while True:
            item = self._staged.get()
            try:
                if item is None:
                    return
                jobs, staged = item
                self._commit(jobs, staged)
            finally:
                self._staged.task_done()

    @staticmethod
    def _run_task(task: _Task) -> None:
        try:
            result = task.fn()
        except BaseException as e:  # handed to the caller
            task.future.set_exception(e)
        else:
            task.future.set_result(result)

    def _commit(self, jobs: list[_Job], staged: StagedBlobs | None) -> None:
        started = time.perf_counter()
        try:
            if staged is None:
                raise StoreError("blob staging failed")
            self.blobs.finish(staged)
            deliveries = [
                Delivery(ref, _meta(job), job.mailbox_ids, job.flags, job.outbound)
                for ref, job in zip(staged.refs, jobs, strict=True)
            ]
            uids = self.store.deliver(deliveries)
        except Exception as e:
            if len(jobs) == 1 and staged is not None:
                self._fail(jobs[0], e)
                return
            for job in jobs:  # isolate the failing delivery
                try:
                    one = self.blobs.stage_many([job.data])
                except Exception as e1:
                    self._fail(job, e1)
                    continue
                self._commit([job], one)
            return
        self.stats.batches += 1
        self.stats.deliveries += len(jobs)
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        self.stats.observe(len(jobs), time.perf_counter() - started)
        _resolve([(job, job_uids, None) for job, job_uids in zip(jobs, uids, strict=True)])

    def _fail(self, job: _Job, exc: BaseException) -> None:
        self.stats.failures += 1
        _resolve([(job, None, exc)])

    def _collect_garbage(self, orphans_older_than: float | None = None) -> GarbageReport:
        report = GarbageReport()
        if orphans_older_than is not None:
            report += self._sweep_orphans(orphans_older_than)
        refs = self.store.unreferenced_blobs()
        for i in range(0, len(refs), 500):
            part = refs[i:i + 500]
            # Content first, then rows: a crash in between leaves rows GC retries, not content
            # nobody knows about.  No delivery can reuse a blob meanwhile: we are the writer.
            self.blobs.delete_many(part)
            self.store.forget_blobs([ref.sha256 for ref in part])
            report += GarbageReport(len(part), sum(ref.size for ref in part))
        if report.bodies:
            report += GarbageReport(reclaimed=self.blobs.reclaim())
        return report

    def _sweep_orphans(self, min_age: float) -> GarbageReport:
        # Runs with the pipeline empty (a _Task): no delivery can be about to reference one
        # of these blobs.  The age bound spares blobs of another process sharing the store.
        limit = time.time() - min_age
        removed = GarbageReport()
        batch: list[str] = []

        def flush() -> GarbageReport:
            known = self.store.known_blobs(batch)
            orphans = [BlobRef(sha, 0) for sha in batch if sha not in known]
            self.blobs.delete_many(orphans)
            batch.clear()
            return GarbageReport(len(orphans))

        for sha, mtime in list(self.blobs.stored()):
            if mtime < limit:
                batch.append(sha)
                if len(batch) >= 500:
                    removed += flush()
        if batch:
            removed += flush()
        return removed


class CommitTransaction:
    """One message's way through the group committer (`DeliveryTransaction`): nothing is
    written before `commit`, so `abort` only forgets."""

    def __init__(self, committer: GroupCommitter) -> None:
        self._committer = committer
        self._mailbox_ids: list[int] = []
        self._outbound: OutboundEnvelope | None = None
        self._body: tuple[bytes, MetaSource, frozenset[str]] | None = None
        self._done = False

    def add_mailbox(self, mailbox_id: int) -> None:
        if mailbox_id not in self._mailbox_ids:  # one copy per mailbox
            self._mailbox_ids.append(mailbox_id)

    def add_outbound(self, envelope: OutboundEnvelope) -> None:
        self._outbound = envelope

    def body(self, data: bytes, meta: MetaSource, flags: frozenset[str] = frozenset()) -> None:
        self._body = (data, meta, flags)

    async def commit(self) -> list[int]:
        if self._done:
            raise StoreError("this delivery is already committed or aborted")
        if self._body is None:
            raise StoreError("a delivery needs a body before it is committed")
        self._done = True
        data, meta, flags = self._body
        return await self._committer.deliver(data, meta, self._mailbox_ids, flags,
                                             self._outbound)

    def abort(self) -> None:
        self._done = True
        self._body = None
