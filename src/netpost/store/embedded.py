"""The embedded backend: SQLite metadata, content-addressed files, an in-process change feed.

`open_stores` is the only place that names the concrete classes; everything else takes the
roles of `netpost.store.interfaces`.  Layout of a data directory:

    DATA/netpost.db      metadata (SQLite, WAL)
    DATA/blobs/ab/<sha>  message content
"""

from __future__ import annotations

from pathlib import Path

from netpost.store.blobs import FileBlobStore
from netpost.store.committer import GroupCommitter
from netpost.store.feed import LocalChangeFeed
from netpost.store.interfaces import AdminStores, Stores
from netpost.store.sqlite import SQLiteStore

DB_NAME = "netpost.db"
BLOB_DIR = "blobs"


def _metadata(data_dir: Path) -> SQLiteStore:
    data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(str(data_dir / DB_NAME))


def open_stores(data_dir: Path) -> Stores:
    """Every role, with the group-commit threads running; `close()` when done."""
    meta = _metadata(data_dir)
    try:
        blobs = FileBlobStore(str(data_dir / BLOB_DIR))
    except BaseException:
        meta.close()
        raise
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
                  maintenance=committer, closer=close)


def open_admin(data_dir: Path) -> AdminStores:
    """The account roles only, for the command line (no threads, no blob directory)."""
    meta = _metadata(data_dir)
    return AdminStores(domains=meta, accounts=meta, aliases=meta, mailboxes=meta,
                       closer=meta.close)
