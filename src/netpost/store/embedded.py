"""The embedded backend: SQLite metadata, bodies in blobs.db or files, an in-process change feed.

`open_stores` is the only place that names the concrete classes; everything else takes the
roles of `netpost.store.interfaces`.  Layout of a data directory:

    DATA/netpost.db      metadata: accounts, mailboxes, messages, the change feed, DHCP
                         leases (SQLite, WAL)
    DATA/blobs.db        bodies up to [store] small_body_limit, one row each (SQLite, WAL)
    DATA/blobs/ab/<sha>  larger bodies, a file each
    DATA/netpost.lock    held by `netpost serve` and by maintenance commands (gc, migrate,
                         check, import), so that two of them never collect or move bodies at
                         the same time
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from netpost.store.blobs import FileBlobStore
from netpost.store.check import CheckReport, Progress, check_store
from netpost.store.committer import GroupCommitter
from netpost.store.dbblobs import SQLiteBlobStore
from netpost.store.feed import LocalChangeFeed
from netpost.store.interfaces import (
    Accounts,
    AdminStores,
    BlobStore,
    GarbageReport,
    MailboxCatalogue,
    Messages,
    StoreError,
    Stores,
)
from netpost.store.migrate import MigrationReport, is_migrated, mark_migrated, migrate_layout
from netpost.store.sqlite import SQLiteStore
from netpost.store.sqlleases import SQLiteLeases
from netpost.store.sqlqueue import SQLiteQueue
from netpost.store.sqlshares import SQLiteShares
from netpost.store.sqltokens import SQLiteTokens
from netpost.store.tiered import DEFAULT_THRESHOLD, TieredBlobStore

DB_NAME = "netpost.db"
BLOB_DB_NAME = "blobs.db"
BLOB_DIR = "blobs"
LOCK_NAME = "netpost.lock"


def _metadata(data_dir: Path) -> SQLiteStore:
    data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(str(data_dir / DB_NAME))


@dataclass
class EmbeddedMaintenance:
    """The `Maintenance` role, plus what only this backend has: the layout migration and
    `netpost check`."""

    meta: SQLiteStore
    blobs: TieredBlobStore
    committer: GroupCommitter

    async def collect_garbage(self, orphans_older_than: float | None = None) -> GarbageReport:
        return await self.committer.collect_garbage(orphans_older_than)

    def collect_garbage_sync(self, orphans_older_than: float | None = None) -> GarbageReport:
        return self.committer.collect_garbage_sync(orphans_older_than)

    def needs_migration(self) -> bool:
        return not is_migrated(self.blobs.large)

    def migrate(self, progress: Progress | None = None) -> MigrationReport:
        """Move small body files into blobs.db, on the writer thread with nothing in flight."""
        result = self.committer.run_exclusive(
            lambda: migrate_layout(self.blobs.small, self.blobs.large, self.blobs.threshold,
                                   progress))
        assert isinstance(result, MigrationReport)
        return result

    def check(self, *, repair: bool = False, progress: Progress | None = None) -> CheckReport:
        result = self.committer.run_exclusive(
            lambda: check_store(self.meta, self.blobs.small, self.blobs.large, repair=repair,
                                progress=progress))
        assert isinstance(result, CheckReport)
        return result


def open_stores(data_dir: Path, *, small_body_limit: int = DEFAULT_THRESHOLD) -> Stores:
    """Every role, with the group-commit threads running; `close()` when done."""
    meta = _metadata(data_dir)
    blob_dir = data_dir / BLOB_DIR
    fresh = not blob_dir.exists()
    try:
        large = FileBlobStore(str(blob_dir))
        small = SQLiteBlobStore(str(data_dir / BLOB_DB_NAME))
    except BaseException:
        meta.close()
        raise
    if fresh:
        mark_migrated(large)  # a new data directory starts in the current layout
    blobs = TieredBlobStore(small, large, small_body_limit)
    feed = LocalChangeFeed(meta)
    meta.set_publisher(feed.publish)
    committer = GroupCommitter(meta, blobs)

    def close() -> None:
        committer.close_sync()
        blobs.close()
        meta.set_publisher(None)
        meta.close()

    return Stores(domains=meta, accounts=meta, aliases=meta, mailboxes=meta, messages=meta,
                  delivery=committer, blobs=blobs, changes=feed, log=meta,
                  maintenance=EmbeddedMaintenance(meta, blobs, committer),
                  queue=SQLiteQueue(meta), shares=SQLiteShares(meta),
                  leases=SQLiteLeases(meta), tokens=SQLiteTokens(meta), closer=close)


def open_admin(data_dir: Path) -> AdminStores:
    """The account roles only, for the command line (no threads, no blob store)."""
    meta = _metadata(data_dir)
    return AdminStores(domains=meta, accounts=meta, aliases=meta, mailboxes=meta,
                       queue=SQLiteQueue(meta), shares=SQLiteShares(meta),
                       leases=SQLiteLeases(meta), tokens=SQLiteTokens(meta),
                       closer=meta.close)


@dataclass(frozen=True)
class MailReader:
    """Read-only access to the mail of a data directory another part of the process (or
    another process) is serving: what `netpost.testing` reads delivered messages with."""

    accounts: Accounts
    mailboxes: MailboxCatalogue
    messages: Messages
    blobs: BlobStore
    closer: Callable[[], None]

    def close(self) -> None:
        self.closer()


def open_reader(data_dir: Path) -> MailReader:
    """Mail roles for reading, with no writer thread and no clean-up of the server's files."""
    meta = _metadata(data_dir)
    try:
        large = FileBlobStore(str(data_dir / BLOB_DIR), fsync_workers=1,
                              tmp_max_age=float("inf"))
        small = SQLiteBlobStore(str(data_dir / BLOB_DB_NAME))
    except BaseException:
        meta.close()
        raise
    blobs = TieredBlobStore(small, large)

    def close() -> None:
        blobs.close()
        meta.close()

    return MailReader(accounts=meta, mailboxes=meta, messages=meta, blobs=blobs, closer=close)


def embedded_maintenance(stores: Stores) -> EmbeddedMaintenance:
    """The backend's own maintenance (migration, check) of stores from `open_stores`."""
    m = stores.maintenance
    if not isinstance(m, EmbeddedMaintenance):
        raise StoreError("this store has no embedded maintenance")
    return m


@contextlib.contextmanager
def lock_data_dir(data_dir: Path, what: str) -> Iterator[None]:
    """Hold DATA/netpost.lock for `what` ("netpost serve", "netpost gc", ...), or StoreError
    naming who holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another netpost"
            raise StoreError(f"{data_dir} is in use by {holder}: stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()})\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
