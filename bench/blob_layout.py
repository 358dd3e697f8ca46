#!/usr/bin/env python3
"""Blob layouts for durable ingest, measured side by side (the choice behind issue 5).

usage: bench/blob_layout.py [--messages 5000] [--size 10240] [--batch 1,16,64] [--dir DIR]

Writes MESSAGES distinct bodies of SIZE octets in durable batches of BATCH (what one group
commit covers) with each layout, in a fresh directory on the same file system, and prints
messages/s and bytes on disk per message:

  files   one file per body: tmp name, fsync, rename, one fsync per directory (netpost <= 0.1)
  sqlite  bodies as rows of a separate SQLite file (WAL, synchronous=FULL): one commit
  pack    bodies appended to a segment file: one fsync per batch (the index commit not counted)

Layouts run interleaved per batch size; the median of --rounds rounds is shown.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from netpost.store.blobs import FileBlobStore  # noqa: E402


def bodies(n: int, size: int) -> list[bytes]:
    return [hashlib.sha256(b"%d" % i).digest() * (size // 32) for i in range(n)]


def disk_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.stat(os.path.join(root, f)).st_blocks * 512
    return total


def run_files(d: Path, items: list[bytes], batch: int) -> None:
    store = FileBlobStore(str(d))
    for i in range(0, len(items), batch):
        store.put_many(items[i:i + batch])
    store.close()


def run_sqlite(d: Path, items: list[bytes], batch: int) -> None:
    d.mkdir()
    conn = sqlite3.connect(str(d / "blobs.db"), isolation_level=None)
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, sha256 BLOB UNIQUE, data BLOB)")
    for i in range(0, len(items), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT OR IGNORE INTO blobs (sha256, data) VALUES (?, ?)",
                         [(hashlib.sha256(b).digest(), b) for b in items[i:i + batch]])
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def run_pack(d: Path, items: list[bytes], batch: int) -> None:
    d.mkdir()
    fd = os.open(d / "segment-000001", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        for i in range(0, len(items), batch):
            for b in items[i:i + batch]:
                hashlib.sha256(b).digest()
                os.write(fd, b)
            os.fsync(fd)
    finally:
        os.close(fd)


LAYOUTS = {"files": run_files, "sqlite": run_sqlite, "pack": run_pack}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--size", type=int, default=10240)
    ap.add_argument("--batch", default="1,16,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir in /tmp)")
    a = ap.parse_args()
    items = bodies(a.messages, a.size)
    root = Path(tempfile.mkdtemp(prefix="blob-layout-", dir=a.dir))
    print(f"{a.messages} x {a.size} octets in {root}, median of {a.rounds} rounds")
    print(f"| batch | {' | '.join(f'{n} msgs/s' for n in LAYOUTS)} | "
          f"{' | '.join(f'{n} disk/msg' for n in LAYOUTS)} |")
    print("|---" * (1 + 2 * len(LAYOUTS)) + "|")
    try:
        for batch in (int(b) for b in a.batch.split(",")):
            rates: dict[str, list[float]] = {n: [] for n in LAYOUTS}
            disk: dict[str, int] = {}
            for r in range(a.rounds):
                for name, fn in LAYOUTS.items():
                    d = root / f"{name}-{batch}-{r}"
                    t = time.perf_counter()
                    fn(d, items, batch)
                    rates[name].append(a.messages / (time.perf_counter() - t))
                    disk[name] = disk_bytes(d)
                    shutil.rmtree(d)
            cells = [f"{statistics.median(rates[n]):,.0f}" for n in LAYOUTS]
            sizes = [f"{disk[n] / a.messages / a.size:.2f}x" for n in LAYOUTS]
            print(f"| {batch} | {' | '.join(cells)} | {' | '.join(sizes)} |", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
