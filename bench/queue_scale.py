#!/usr/bin/env python3
"""Queue scale: a queue run costs in proportion to the due recipients, not to the queue.

usage: bench/queue_scale.py [--sizes 10000,100000] [--due 1000] [--batch 500] [--rounds 20]
                            [--body 1024] [--keep]

Issue 7: "Queue of 100,000 deferred messages: a queue run picks due messages in time
proportional to the due ones, not the queue; memory stays bounded (say what it is)."

For each size S (a fresh data dir under $BENCH_ROOT/queue-scale/, the embedded store opened
in this process with netpost.store.embedded.open_stores; the netpost source is
$NETPOST_SRC or this repo's src/):
  fill   S messages of --body octets (distinct bodies), one remote recipient each
         (rcpt<i mod 50>@remote<i mod 20>.test), entered as a relay-bound delivery
         (`stores.delivery.deliver(data, meta, [], outbound=OutboundEnvelope(...))`, the group
         committer, 1,000 in flight); then claimed and recorded "deferred" through the
         MailQueue role (claim_due + record, as a failed attempt would), next attempts spread
         over the next 1-5 hours; then --due more messages entered the same way, due now.
         The queue holds S deferred + due recipients.
  run    --rounds queue runs: claim_due(now, --batch) until nothing is due (the --due
         recipients in --due/--batch claims), then record them all "deferred" with
         next_attempt = now - 1 (due again for the next round) in one record() call. Each
         claim, record, an empty claim (nothing due) and next_due() are timed separately.
  scan   for contrast, queue_counts() (a GROUP BY over every recipient: what a claim would
         cost if it read the queue) and the claim query's plan (EXPLAIN QUERY PLAN).
  memory this process's VmRSS before the store is opened, after the fill, after the runs, and
         VmHWM growth during the runs (the fill's peak is the committer's, not the queue's).
Median [min-max] per figure; the claim ratio (largest size / smallest) should be ~1.0.
One JSON line per size in $OUT (default $BENCH_ROOT/results/<time>-queue/), summary on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import os
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

SRC = Path(os.environ.get("NETPOST_SRC", B.REPO / "src"))
sys.path.insert(0, str(SRC))

from netpost.store.embedded import open_stores  # noqa: E402
from netpost.store.interfaces import (  # noqa: E402
    MessageMeta,
    OutboundEnvelope,
    OutboundRecipient,
    Outcome,
    Stores,
)

FILL_WINDOW = 1000  # deliveries in flight (the committer batches up to 1,000)


def rss_mib(field: str = "VmRSS") -> float:
    return round(B.rss(os.getpid(), field) / 2**20, 1)


def body(i: int, size: int) -> bytes:
    head = (f"From: <sender@bench.test>\r\nTo: <rcpt{i % 50}@remote{i % 20}.test>\r\n"
            f"Subject: queued {i}\r\nMessage-ID: <q{i}@bench.test>\r\n\r\n").encode()
    line = (hashlib.sha256(str(i).encode()).hexdigest() + "\r\n").encode()
    return head + (line * (size // len(line) + 1))[: max(size - len(head), 2)]


async def enter(stores: Stores, first: int, count: int, size: int, arrival: float) -> None:
    """Queue messages first..first+count-1 through the group committer."""
    async def one(i: int) -> None:
        data = body(i, size)
        env = OutboundEnvelope(queue_id=f"Q{i:08d}", mail_from="sender@bench.test",
                               recipients=[OutboundRecipient(f"rcpt{i % 50}@remote{i % 20}.test")],
                               arrival=arrival, origin="sender@bench.test")
        meta = MessageMeta(size=len(data), internaldate=arrival)
        await stores.delivery.deliver(data, meta, [], outbound=env)  # type: ignore[attr-defined]

    for start in range(first, first + count, FILL_WINDOW):
        await asyncio.gather(*(one(i) for i in range(start, min(start + FILL_WINDOW,
                                                                first + count))))


def defer_all(stores: Stores, now: float, batch: int = 5000) -> int:
    """Claim everything due and record it deferred, next attempt 1-5 h from now."""
    n = 0
    while True:
        entries = stores.queue.claim_due(now, batch)
        if not entries:
            return n
        outcomes = [Outcome(r.id, "deferred", now, next_attempt=now + 3600 + (r.id % 14400),
                            error="451 4.3.0 try later (bench)", status="4.3.0")
                    for e in entries for r in e.recipients]
        stores.queue.record(outcomes)
        n += len(outcomes)


CPU: list[float] = []  # process CPU seconds of each timed() call, in order


def timed(fn):  # type: ignore[no-untyped-def]
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    CPU.append(time.process_time() - c)
    return time.perf_counter() - t, out


def one_size(size: int, a: argparse.Namespace) -> dict:
    data = B.BENCH_ROOT / "queue-scale" / f"q{size}"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    rss0 = rss_mib()
    stores = open_stores(data)
    try:
        t0 = time.perf_counter()
        now = time.time()
        asyncio.run(enter(stores, 0, size, a.body, now - 60))
        deferred = defer_all(stores, now)
        asyncio.run(enter(stores, size, a.due, a.body, now - 30))
        fill_s = time.perf_counter() - t0
        counts = stores.queue.queue_counts()
        B.note(f"  {size}: filled in {fill_s:.1f} s: {counts}")
        assert deferred == size and counts.get("deferred") == size, counts
        assert counts.get("queued") == a.due, counts
        rss_filled = rss_mib()
        hwm0 = B.rss(os.getpid(), "VmHWM")

        claims: list[float] = []
        claim_cpu: list[float] = []
        records: list[float] = []
        empties: list[float] = []
        nexts: list[float] = []
        runs: list[float] = []
        for _ in range(a.rounds):
            now = time.time()
            got: list[int] = []
            t_run = time.perf_counter()
            while True:
                dt, entries = timed(lambda now=now: stores.queue.claim_due(now, a.batch))
                if not entries:
                    empties.append(dt)
                    break
                claims.append(dt)
                claim_cpu.append(CPU[-1])
                got += [r.id for e in entries for r in e.recipients]
            runs.append(time.perf_counter() - t_run)
            assert len(got) == a.due, (len(got), a.due)
            outcomes = [Outcome(rid, "deferred", now, next_attempt=now - 1, error="451 bench")
                        for rid in got]
            dt, _ = timed(lambda outcomes=outcomes: stores.queue.record(outcomes))
            records.append(dt)
            dt, nd = timed(stores.queue.next_due)
            nexts.append(dt)
        rss_after = rss_mib()
        hwm_growth = round((B.rss(os.getpid(), "VmHWM") - hwm0) / 2**20, 1)
        scans = [timed(stores.queue.queue_counts)[0] for _ in range(5)]
        conn = sqlite3.connect(str(data / "netpost.db"))
        plan = [r[-1] for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM queue_recipients WHERE state IN "
            "('queued','deferred') AND next_attempt <= ? ORDER BY next_attempt LIMIT ?",
            (time.time(), a.batch))]
        conn.close()
    finally:
        stores.close()
    disk = sum(f.stat().st_size for f in data.iterdir() if f.is_file())
    if not a.keep:
        shutil.rmtree(data, ignore_errors=True)
    ms = 1000.0
    return {
        "queue_deferred": size, "due": a.due, "batch": a.batch, "rounds": a.rounds,
        "body_octets": a.body, "fill_s": round(fill_s, 1),
        "claim_ms": [round(x * ms, 3) for x in claims],
        "claim_ms_median": round(statistics.median(claims) * ms, 3),
        "claim_cpu_ms_median": round(statistics.median(claim_cpu) * ms, 3),
        "run_ms_median": round(statistics.median(runs) * ms, 3),
        "record_ms_median": round(statistics.median(records) * ms, 3),
        "empty_claim_ms_median": round(statistics.median(empties) * ms, 3),
        "next_due_ms_median": round(statistics.median(nexts) * ms, 3),
        "queue_counts_ms_median": round(statistics.median(scans) * ms, 3),
        "claim_plan": plan,
        "rss_mib_before_open": rss0, "rss_mib_filled": rss_filled,
        "rss_mib_after_runs": rss_after, "hwm_growth_mib_during_runs": hwm_growth,
        "data_dir_octets": disk, "next_due_after": nd,
    }


def in_child(size: int, a: argparse.Namespace) -> dict:
    """one_size in a forked process, so that each size's RSS starts from the same point."""
    ctx = mp.get_context("fork")
    q: mp.Queue = ctx.Queue()

    def child() -> None:
        B._cleanups.clear()
        q.put(one_size(size, a))

    p = ctx.Process(target=child)
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--sizes", default="10000,100000", help="deferred recipients per queue")
    ap.add_argument("--due", type=int, default=1000, help="due recipients (default 1000)")
    ap.add_argument("--batch", type=int, default=500, help="claim_due limit (relay: 500)")
    ap.add_argument("--rounds", type=int, default=20, help="queue runs per size")
    ap.add_argument("--body", type=int, default=1024, help="message octets (default 1024)")
    ap.add_argument("--keep", action="store_true", help="keep the data dirs")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    out = B.results_dir("queue")
    vers = B.versions()
    vers["netpost (source tree)"] = B._cmd(["git", "-C", str(SRC), "rev-parse", "--short",
                                            "HEAD"]) + f" {SRC}"
    vers["sqlite"] = sqlite3.sqlite_version
    B.append_jsonl(out / "versions.jsonl", vers)
    B.note(f"results in {out}")
    results = []
    for size in sizes:
        B.note(f"size {size}")
        res = in_child(size, a)
        results.append(res)
        B.append_jsonl(out / "queue_scale.jsonl", res)
        B.note(f"  claim {res['claim_ms_median']} ms, run {res['run_ms_median']} ms, "
               f"record {res['record_ms_median']} ms, queue_counts "
               f"{res['queue_counts_ms_median']} ms, RSS {res['rss_mib_after_runs']} MiB")
    rows = [["deferred in queue", "claim_due(500) ms", "of it CPU ms", "queue run (1,000 due) ms",
             "record(1,000) ms", "empty claim ms", "next_due ms", "queue_counts ms (full scan)",
             "RSS MiB: open → filled → after runs", "HWM growth in runs"]]
    for r in results:
        rows.append([f"{r['queue_deferred']:,}",
                     B.mmm(r["claim_ms"], "{:.2f}"), f"{r['claim_cpu_ms_median']:.2f}",
                     f"{r['run_ms_median']:.2f}",
                     f"{r['record_ms_median']:.2f}", f"{r['empty_claim_ms_median']:.3f}",
                     f"{r['next_due_ms_median']:.3f}", f"{r['queue_counts_ms_median']:.1f}",
                     f"{r['rss_mib_before_open']:.0f} → {r['rss_mib_filled']:.0f} → "
                     f"{r['rss_mib_after_runs']:.0f}", f"{r['hwm_growth_mib_during_runs']} MiB"])
    lines = [f"Queue scale: {a.due} due among N deferred, claim_due(now, {a.batch}), "
             f"{a.rounds} runs per size, median [min-max]", "", B.table(rows), "",
             f"- claim plan: {' / '.join(results[-1]['claim_plan'])}"]
    if len(results) > 1:
        lo, hi = results[0], results[-1]
        scan = hi["queue_counts_ms_median"] / lo["queue_counts_ms_median"]
        lines.append(f"- claim time {hi['queue_deferred']:,} / {lo['queue_deferred']:,} "
                     f"deferred: {hi['claim_ms_median'] / lo['claim_ms_median']:.2f}× "
                     f"(queue {hi['queue_deferred'] / lo['queue_deferred']:.0f}× larger; "
                     f"queue_counts {scan:.1f}×)")
    summary = "\n".join(lines)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
