"""Small message bodies as rows of their own SQLite file (``DATA/blobs.db``).

Why (measured in docs/benchmarks.md, "blob layouts"): a file per body costs an inode, a rename
and directory fsyncs, which capped durable ingest near 1,100 bodies/s whatever the batch size;
a batch of rows in one SQLite transaction (WAL, ``synchronous=FULL``) costs one fsync and ran at
13,000-15,000 bodies/s for batches of 16-64, with 1.0-1.2x the body size on disk.  SQLite also
gives atomic deletes and crash recovery for free, and ``auto_vacuum = INCREMENTAL`` hands freed
pages back to the file system without rewriting the file.

The rows are keyed by the raw 32-octet sha256; ``created`` is kept so that the orphan sweep
spares rows a concurrent writer has not referenced yet.  A body is durable when the
transaction that wrote it has committed: `stage_many` commits, `finish` has nothing left to do.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from netpost.store.interfaces import BlobRef, StagedBlobs, blob_ref
from netpost.store.sqlitedb import DURABLE, ThreadConnections

SCHEMA = """
CREATE TABLE IF NOT EXISTS bodies (
    id INTEGER PRIMARY KEY,
    sha256 BLOB NOT NULL UNIQUE,   -- 32 octets
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    data BLOB NOT NULL
)
"""


class SQLiteBlobStore:
    """A `StagingBlobStore` for bodies small enough to be rows; safe from many threads."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        # Free pages go back to the file system on `reclaim`.  Only a new, empty database
        # takes auto_vacuum, and only before journal_mode = WAL writes its first page.
        self._db = ThreadConnections(path, ("PRAGMA auto_vacuum = INCREMENTAL", *DURABLE),
                                     what="blob store", busy_timeout_ms=busy_timeout_ms)
        self._conn().execute(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        return self._db.get()

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._db.write()

    # -- writing -----------------------------------------------------------------------------

    def put_many(self, items: Sequence[bytes]) -> list[BlobRef]:
        """Store every item in one transaction; durable on return."""
        refs = [blob_ref(data) for data in items]
        now = time.time()
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO bodies (sha256, size, created, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sha256) DO NOTHING",
                [(bytes.fromhex(ref.sha256), ref.size, now, data)
                 for ref, data in zip(refs, items, strict=True)],
            )
        return refs

    def put(self, data: bytes) -> BlobRef:
        return self.put_many([data])[0]

    def stage_many(self, items: Sequence[bytes]) -> StagedBlobs:
        return StagedBlobs(self.put_many(items))

    def finish(self, staged: StagedBlobs) -> None:
        """Nothing to do: `stage_many` committed."""

    def create(self) -> _MemoryWriter:
        return _MemoryWriter(self)

    # -- reading -----------------------------------------------------------------------------

    def get(self, ref: BlobRef) -> bytes | None:
        row = self._conn().execute(
            "SELECT data FROM bodies WHERE sha256 = ?", (bytes.fromhex(ref.sha256),)).fetchone()
        return row[0] if row else None  # sqlite3 gives BLOBs as bytes already

    def get_many(self, refs: Sequence[BlobRef]) -> dict[str, bytes]:
        """sha256 -> content of those of `refs` that are rows (one query per 500)."""
        conn = self._conn()
        found: dict[str, bytes] = {}
        for i in range(0, len(refs), 500):
            part = [bytes.fromhex(r.sha256) for r in refs[i:i + 500]]
            marks = ",".join("?" * len(part))
            for sha, data in conn.execute(
                    f"SELECT sha256, data FROM bodies WHERE sha256 IN ({marks})", part):
                found[sha.hex()] = data
        return found

    def read(self, ref: BlobRef) -> bytes:
        data = self.get(ref)
        if data is None:
            raise FileNotFoundError(f"no body {ref.sha256}")
        return data

    def open(self, ref: BlobRef) -> BinaryIO:
        return io.BytesIO(self.read(ref))  # at most the size threshold: memory is fine

    def local_path(self, ref: BlobRef) -> str | None:
        return None  # not a file: no sendfile

    def exists(self, ref: BlobRef) -> bool:
        return self._conn().execute(
            "SELECT 1 FROM bodies WHERE sha256 = ?", (bytes.fromhex(ref.sha256),)
        ).fetchone() is not None

    def stored(self) -> Iterator[tuple[str, float]]:
        """(sha256 hex, time written) of every body, in pages (no long-lived read cursor)."""
        conn = self._conn()
        last = 0
        while True:
            rows = conn.execute(
                "SELECT id, sha256, created FROM bodies WHERE id > ? ORDER BY id LIMIT 1000",
                (last,)).fetchall()
            if not rows:
                return
            for row_id, sha, created in rows:
                last = row_id
                yield bytes(sha).hex(), created

    # -- deleting and reclaiming -------------------------------------------------------------

    def delete(self, ref: BlobRef) -> None:
        self.delete_many([ref])

    def delete_many(self, refs: Sequence[BlobRef]) -> None:
        if not refs:
            return
        with self._write() as conn:
            conn.executemany("DELETE FROM bodies WHERE sha256 = ?",
                             [(bytes.fromhex(r.sha256),) for r in refs])

    def reclaim(self) -> int:
        """Hand free pages back to the file system; return the octets freed."""
        conn = self._conn()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if not free:
            return 0
        # One page per step, and sqlite3.execute steps once: executescript runs it to the end.
        conn.executescript("PRAGMA incremental_vacuum;")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        left = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((free - left) * page_size)

    def file_size(self) -> int:
        conn = self._conn()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        return int(pages * conn.execute("PRAGMA page_size").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class _MemoryWriter:
    """A `BlobWriter` for a body that is a row: gathered in memory, one insert at commit."""

    def __init__(self, store: SQLiteBlobStore) -> None:
        self._store = store
        self._parts: list[bytes] | None = []

    def write(self, data: bytes) -> None:
        if self._parts is None:
            raise ValueError("the blob is already committed or aborted")
        self._parts.append(bytes(data))

    def commit(self) -> BlobRef:
        if self._parts is None:
            raise ValueError("the blob is already committed or aborted")
        data = b"".join(self._parts)
        self._parts = None
        return self._store.put(data)

    def abort(self) -> None:
        self._parts = None
