"""Blob layout 2: small bodies as rows of blobs.db, large ones as files; garbage collection
with space handed back; the migration from 0.1's one-file-per-body layout; `check`."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netpost.mail.message import parse_meta
from netpost.store.blobs import FileBlobStore
from netpost.store.committer import GroupCommitter
from netpost.store.dbblobs import SQLiteBlobStore
from netpost.store.embedded import embedded_maintenance, lock_data_dir, open_stores
from netpost.store.interfaces import BlobRef, StoreError, blob_ref
from netpost.store.migrate import MARKER, migrate_layout
from netpost.store.sqlite import SQLiteStore
from netpost.store.tiered import TieredBlobStore


def _tiered(tmp_path: Path, threshold: int = 1000) -> TieredBlobStore:
    return TieredBlobStore(SQLiteBlobStore(str(tmp_path / "blobs.db")),
                           FileBlobStore(str(tmp_path / "blobs")), threshold)


def test_small_rows_large_files(tmp_path: Path) -> None:
    store = _tiered(tmp_path)
    small, large = b"s" * 1000, b"L" * 1001
    staged = store.stage_many([large, small, small])
    store.finish(staged)
    assert staged.refs == [blob_ref(large), blob_ref(small), blob_ref(small)]
    assert store.small.exists(blob_ref(small)) and not store.large.exists(blob_ref(small))
    assert store.large.exists(blob_ref(large)) and not store.small.exists(blob_ref(large))
    assert store.read(blob_ref(small)) == small and store.read(blob_ref(large)) == large
    assert store.local_path(blob_ref(small)) is None  # a row: no sendfile
    assert store.local_path(blob_ref(large)) == store.large.local_path(blob_ref(large))
    with store.open(blob_ref(small)) as f:
        assert f.read() == small
    assert sorted(sha for sha, _ in store.stored()) == sorted(
        {blob_ref(small).sha256, blob_ref(large).sha256})
    store.delete_many([blob_ref(small), blob_ref(large)])
    assert list(store.stored()) == []
    store.close()


def test_reads_look_in_both_places(tmp_path: Path) -> None:
    # After a threshold change or half-way through a migration a body may be in either.
    store = _tiered(tmp_path)
    small_as_file = store.large.put(b"x" * 10)
    large_as_row = store.small.put(b"y" * 5000)
    assert store.read(small_as_file) == b"x" * 10
    assert store.read(large_as_row) == b"y" * 5000
    with pytest.raises(FileNotFoundError):
        store.read(BlobRef("0" * 64, 10))
    store.close()


def test_streaming_writer_spills_to_a_file(tmp_path: Path) -> None:
    store = _tiered(tmp_path, threshold=100)
    w = store.create()
    w.write(b"a" * 60)
    w.write(b"b" * 60)  # past the threshold: a file
    ref = w.commit()
    assert store.large.exists(ref) and store.read(ref) == b"a" * 60 + b"b" * 60
    w = store.create()
    w.write(b"small")
    ref = w.commit()
    assert store.small.exists(ref)
    w = store.create()
    w.write(b"c" * 500)
    w.abort()
    assert len(list(store.stored())) == 2 and os.listdir(tmp_path / "blobs" / "tmp") == []
    store.close()


def test_gc_hands_space_back(tmp_path: Path) -> None:
    stores = open_stores(tmp_path)
    stores.domains.add_domain("example.com")
    account = stores.accounts.add_account("bob@example.com", "x")
    inbox = stores.mailboxes.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    bodies = [b"Subject: %d\r\n\r\n" % i + os.urandom(20_000) for i in range(200)]
    committer: Any = stores.delivery
    for body in bodies:
        committer.deliver_sync(body, parse_meta(body, 0.0), [inbox.id])
    db = tmp_path / "blobs.db"
    big = db.stat().st_size + (tmp_path / "blobs.db-wal").stat().st_size
    assert big > 200 * 20_000
    stores.messages.expunge(inbox.id, list(range(1, 191)))
    report = stores.maintenance.collect_garbage_sync()
    assert report.bodies == 190 and report.octets == sum(len(b) for b in bodies[:190])
    assert report.reclaimed > 150 * 20_000
    assert db.stat().st_size < big / 5
    assert "removed 190 unreferenced message bodies" in report.describe()
    for uid, body in zip(range(191, 201), bodies[190:], strict=True):
        row = stores.messages.message(inbox.id, uid)
        assert row is not None and stores.blobs.read(row.blob) == body
    stores.close()


# --- any interleaving keeps every referenced body readable ----------------------------------------

actions = st.lists(st.one_of(
    st.tuples(st.just("deliver"), st.integers(0, 7), st.integers(0, 1)),
    st.tuples(st.just("expunge"), st.integers(0, 1), st.integers(1, 30)),
    st.tuples(st.just("gc"), st.booleans()),
    st.tuples(st.just("reclaim")),
), max_size=30)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions)
def test_put_delete_gc_reclaim_keep_referenced_bodies(tmp_path: Path, program: list[Any]) -> None:
    root = tmp_path / f"p{os.urandom(4).hex()}"
    root.mkdir()
    meta = SQLiteStore(str(root / "meta.db"))
    blobs = _tiered(root, threshold=3000)
    committer = GroupCommitter(meta, blobs)
    try:
        meta.add_domain("example.com")
        account = meta.add_account("bob@example.com", "x").id
        boxes = [meta.create_mailbox(account, f"B{i}").id for i in range(2)]
        # Eight bodies, half of them over the threshold (files), some shared between boxes.
        contents = [bytes([65 + i]) * (100 if i % 2 else 5000) for i in range(8)]
        for op in program:
            if op[0] == "deliver":
                data = contents[op[1]]
                committer.deliver_sync(data, parse_meta(data, 0.0), [boxes[op[2]]])
            elif op[0] == "expunge":
                meta.expunge(boxes[op[1]], [op[2]])
            elif op[0] == "gc":
                committer.collect_garbage_sync(0.0 if op[1] else None)
            else:
                blobs.reclaim()
            for box in boxes:
                for row in meta.messages(box):
                    assert blobs.read(row.blob) in contents  # readable, byte-identical
        committer.collect_garbage_sync(0.0)
        live = {row.blob.sha256 for box in boxes for row in meta.messages(box)}
        assert {sha for sha, _ in blobs.stored()} == live  # and nothing else is left
    finally:
        committer.close_sync()
        blobs.close()
        meta.close()


# --- migration from 0.1 ---------------------------------------------------------------------------


def make_old_layout(data: Path, count: int, large_every: int = 0) -> list[bytes]:
    """A data directory as netpost 0.1 wrote it: metadata + one file per body."""
    data.mkdir(parents=True)
    meta = SQLiteStore(str(data / "netpost.db"))
    files = FileBlobStore(str(data / "blobs"))
    committer = GroupCommitter(meta, files)
    meta.add_domain("example.com")
    account = meta.add_account("bob@example.com", "x")
    inbox = meta.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    bodies = []
    for i in range(count):
        size = 200_000 if large_every and i % large_every == 0 else 500 + i
        body = (b"Subject: old %d\r\n\r\n" % i).ljust(size, b"z")
        bodies.append(body)
    for i in range(0, count, 100):
        for body in bodies[i:i + 100]:
            committer.deliver_sync(body, parse_meta(body, 0.0), [inbox.id])
    committer.close_sync()
    files.close()
    meta.close()
    return bodies


def _all_bodies(data: Path) -> list[bytes]:
    stores = open_stores(data)
    try:
        account = stores.accounts.get_account("bob@example.com")
        assert account is not None
        inbox = stores.mailboxes.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        return [stores.blobs.read(row.blob) for row in stores.messages.messages(inbox.id)]
    finally:
        stores.close()


def test_migration_moves_small_files_and_resumes(tmp_path: Path) -> None:
    data = tmp_path / "old"
    bodies = make_old_layout(data, 600, large_every=100)
    assert not (data / "blobs" / MARKER).exists()
    stores = open_stores(data)
    maintenance = embedded_maintenance(stores)
    assert maintenance.needs_migration()
    # Interrupted after the first batch (as a crash would): every body still reads.
    seen: list[tuple[int, int]] = []

    def stop_after_first(done: int, total: int) -> None:
        seen.append((done, total))
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        maintenance.migrate(stop_after_first)
    stores.close()
    assert _all_bodies(data) == bodies
    stores = open_stores(data)
    maintenance = embedded_maintenance(stores)
    assert maintenance.needs_migration()
    report = maintenance.migrate()
    assert report.moved == 600 - 6 - 256 and not report.corrupt  # the rest of the small ones
    assert not maintenance.needs_migration()
    stores.close()
    assert _all_bodies(data) == bodies
    left = [p for p in (data / "blobs").rglob("*") if p.is_file() and len(p.name) == 64]
    assert len(left) == 6  # the six large bodies stay files


def test_migration_leaves_a_damaged_file_and_says_so(tmp_path: Path) -> None:
    small = SQLiteBlobStore(str(tmp_path / "blobs.db"))
    large = FileBlobStore(str(tmp_path / "blobs"))
    good, bad = large.put(b"good body"), large.put(b"bad body")
    with open(large.local_path(bad), "r+b") as f:
        f.write(b"B")
    report = migrate_layout(small, large, 1000)
    assert report.moved == 1 and report.corrupt == [bad.sha256]
    assert small.exists(good) and large.exists(bad) and not large.exists(good)
    assert not (tmp_path / "blobs" / MARKER).exists()  # not complete: a re-run tries again
    small.close()
    large.close()


# --- check ----------------------------------------------------------------------------------------


def test_check_finds_and_repairs_without_deleting_messages(tmp_path: Path) -> None:
    stores = open_stores(tmp_path, small_body_limit=1000)
    stores.domains.add_domain("example.com")
    account = stores.accounts.add_account("bob@example.com", "x")
    inbox = stores.mailboxes.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    committer: Any = stores.delivery
    bodies = [b"Subject: %d\r\n\r\n" % i + bytes([97 + i]) * (50 if i < 4 else 5000)
              for i in range(6)]
    for body in bodies:
        committer.deliver_sync(body, parse_meta(body, 0.0), [inbox.id])
    maintenance = embedded_maintenance(stores)
    clean = maintenance.check()
    assert clean.problems == 0 and clean.bodies == 6 and clean.lines()[-1] == "no problems found"
    refs = [row.blob for row in stores.messages.messages(inbox.id)]
    blobs: Any = stores.blobs
    # Damage: a row's bytes flipped (with a good file copy), a body lost everywhere, a wrong
    # reference count, an orphan file and an orphan row.
    blobs.large.put(bodies[0])  # a good copy elsewhere
    db = sqlite3.connect(str(tmp_path / "blobs.db"))
    db.execute("UPDATE bodies SET data = ? WHERE sha256 = ?",
               (b"X" * refs[0].size, bytes.fromhex(refs[0].sha256)))
    db.execute("DELETE FROM bodies WHERE sha256 = ?", (bytes.fromhex(refs[1].sha256),))
    db.commit()
    db.close()
    os.unlink(blobs.large.local_path(refs[5]))
    meta = sqlite3.connect(str(tmp_path / "netpost.db"))
    meta.execute("UPDATE blobs SET refcount = 7 WHERE sha256 = ?", (refs[2].sha256,))
    meta.commit()
    meta.close()
    blobs.large.put(b"orphan file " * 200)
    blobs.small.put(b"orphan row")
    found = maintenance.check()
    assert found.refcounts_wrong == [refs[2].sha256]
    assert found.bad_copies == [refs[0].sha256]
    assert sorted(sha for sha, _ in found.lost) == sorted([refs[1].sha256, refs[5].sha256])
    assert dict(found.lost)[refs[1].sha256] == [("bob@example.com", "INBOX", 2)]
    assert len(found.orphans) == 2
    assert any(line.startswith("LOST:") for line in found.lines())
    repaired = maintenance.check(repair=True)
    assert repaired.problems == found.problems  # what it found, now repaired where it can be
    after = maintenance.check()
    assert after.refcounts_wrong == [] and after.bad_copies == [] and after.orphans == []
    assert len(after.lost) == 2  # lost content cannot be made up ...
    assert len(stores.messages.messages(inbox.id)) == 6  # ... and its messages are kept
    assert stores.blobs.read(refs[0]) == bodies[0]
    stores.close()


def test_the_lock_keeps_two_maintainers_apart(tmp_path: Path) -> None:
    with lock_data_dir(tmp_path, "netpost serve"):
        with pytest.raises(StoreError, match=r"in use by netpost serve \(pid \d+\)"):
            with lock_data_dir(tmp_path, "netpost gc"):
                pass
    with lock_data_dir(tmp_path, "netpost gc"):  # free again
        pass
