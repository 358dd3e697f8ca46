"""Garbage collection of message files: expunged ones and crash orphans, never live ones."""

from __future__ import annotations

import os
import time
from pathlib import Path

from netpost.mail.message import parse_meta
from netpost.store.blobs import FileBlobStore
from netpost.store.committer import GroupCommitter
from netpost.store.sqlite import SQLiteStore


def test_collects_expunged_and_orphans_but_not_live(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "db"))
    blobs = FileBlobStore(str(tmp_path / "blobs"))
    committer = GroupCommitter(store, blobs)
    store.add_domain("example.org")
    account = store.add_account("a@example.org", "x")
    inbox = store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    live, gone = b"Subject: live\r\n\r\nkeep\r\n", b"Subject: gone\r\n\r\nbye\r\n"
    committer.deliver_sync(live, parse_meta(live, time.time()), [inbox.id])
    [uid] = committer.deliver_sync(gone, parse_meta(gone, time.time()), [inbox.id])
    store.expunge(inbox.id, [uid])
    # A crash between writing a file and committing its message leaves a file with no row.
    [orphan] = blobs.put_many([b"Subject: orphan\r\n\r\nlost\r\n"])
    old = time.time() - 7200
    os.utime(blobs.local_path(orphan), (old, old))
    [young] = blobs.put_many([b"Subject: young\r\n\r\nin flight elsewhere\r\n"])

    assert committer.collect_garbage_sync().bodies == 1  # the expunged message's file
    assert committer.collect_garbage_sync(orphans_older_than=3600).bodies == 1  # the old orphan
    remaining = {sha for sha, _ in blobs.stored()}
    assert not blobs.exists(orphan) and blobs.exists(young)
    assert len(remaining) == 2  # the live message and the young file
    [row] = store.messages(inbox.id)
    assert blobs.read(row.blob) == live
    committer.close_sync()
    store.close()
