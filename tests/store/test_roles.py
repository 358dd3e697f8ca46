"""The message and mailbox roles of the SQLite backend: flags, copy, move, mailbox management,
and the change log they write.  A property test replays the change log of any sequence of
operations and checks it reproduces the mailboxes, with reference counts and MODSEQs right."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netpost.store.interfaces import BlobRef, Delivery, MessageMeta, StoreError
from netpost.store.sqlite import SQLiteStore


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "mail.db"))
    s.add_domain("example.com")
    s.add_account("bob@example.com", "x")
    yield s
    s.close()


def _account(store: SQLiteStore) -> int:
    account = store.get_account("bob@example.com")
    assert account is not None
    return account.id


def _box(store: SQLiteStore, name: str) -> int:
    box = store.get_mailbox(_account(store), name)
    assert box is not None
    return box.id


def _deliver(store: SQLiteStore, mailbox_id: int, n: int = 1,
             flags: frozenset[str] = frozenset()) -> list[int]:
    uids = []
    for i in range(n):
        sha = f"{mailbox_id:04x}{i:04x}".ljust(64, "0")
        meta = MessageMeta(size=10 + i, internaldate=1_700_000_000 + i)
        uids += store.deliver([Delivery(BlobRef(sha, 10 + i), meta, [mailbox_id], flags)])[0]
    return uids


def test_set_flags_modes_and_modseq(store: SQLiteStore) -> None:
    inbox = _box(store, "INBOX")
    u1, u2 = _deliver(store, inbox, 2, frozenset({"\\Draft"}))
    assert store.message(inbox, u1).flags == {"\\Draft"}  # type: ignore[union-attr]
    before = store.get_mailbox_by_id(inbox).highestmodseq  # type: ignore[union-attr]
    r = store.set_flags(inbox, [u1, u2, 99], frozenset({"\\Seen", "$Label"}), "add")
    assert [(uid, flags) for uid, flags, _ in r.changed] == [
        (u1, {"\\Draft", "\\Seen", "$Label"}), (u2, {"\\Draft", "\\Seen", "$Label"})]
    modseq = r.changed[0][2]
    assert modseq == before + 1 and all(m == modseq for _, _, m in r.changed)  # one per STORE
    assert store.message(inbox, u1).modseq == modseq  # type: ignore[union-attr]
    # Nothing changes: no new MODSEQ.
    assert store.set_flags(inbox, [u1], frozenset({"\\Seen"}), "add").changed == []
    assert store.get_mailbox_by_id(inbox).highestmodseq == modseq  # type: ignore[union-attr]
    r = store.set_flags(inbox, [u1], frozenset({"\\Draft"}), "remove")
    assert r.changed[0][1] == {"\\Seen", "$Label"}
    r = store.set_flags(inbox, [u2], frozenset({"\\Flagged"}), "replace")
    assert r.changed[0][1] == {"\\Flagged"}


def test_unchanged_since(store: SQLiteStore) -> None:
    # RFC 7162 3.1.3: a message modified after UNCHANGEDSINCE is not touched and reported.
    inbox = _box(store, "INBOX")
    u1, u2 = _deliver(store, inbox, 2)
    m1 = store.message(inbox, u1).modseq  # type: ignore[union-attr]
    r = store.set_flags(inbox, [u1, u2], frozenset({"\\Seen"}), "add", unchanged_since=m1)
    assert [uid for uid, _, _ in r.changed] == [u1] and r.failed == [u2]


def test_copy_and_move(store: SQLiteStore) -> None:
    inbox, archive = _box(store, "INBOX"), _box(store, "Archive")
    uids = _deliver(store, inbox, 3, frozenset({"\\Seen"}))
    store.headers(inbox, uids[0])
    pairs = store.copy(inbox, [uids[2], uids[0], 42], archive)
    assert pairs == [(uids[0], 1), (uids[2], 2)]  # UID order, missing ones skipped
    copied = store.message(archive, 1)
    original = store.message(inbox, uids[0])
    assert copied is not None and original is not None
    assert (copied.blob, copied.flags, copied.internaldate, copied.size) == \
        (original.blob, original.flags, original.internaldate, original.size)
    moved = store.move(inbox, [uids[1]], archive)
    assert moved == [(uids[1], 3)]
    assert [m.uid for m in store.messages(inbox)] == [uids[0], uids[2]]
    assert [m.uid for m in store.messages(archive)] == [1, 2, 3]
    with pytest.raises(StoreError, match="mailbox they are in"):
        store.move(inbox, [uids[0]], inbox)
    with pytest.raises(StoreError, match="no mailbox"):
        store.copy(inbox, [uids[0]], 9999)
    # Each copy holds a reference: expunging every one leaves the blobs collectable.
    store.expunge(inbox, uids)
    assert store.unreferenced_blobs() == []
    store.expunge(archive, [1, 2, 3])
    assert len(store.unreferenced_blobs()) == 3


def test_mailbox_management(store: SQLiteStore) -> None:
    account = _account(store)
    work = store.create_mailbox(account, "Work")
    store.create_mailbox(account, "Work/2026")
    store.create_mailbox(account, "Workshop")
    uid = _deliver(store, work.id)[0]
    store.rename_mailbox(account, "Work", "Jobs")
    names = {m.name for m in store.list_mailboxes(account)}
    assert {"Jobs", "Jobs/2026", "Workshop"} <= names and "Work" not in names
    renamed = store.get_mailbox(account, "Jobs")
    assert renamed is not None
    assert renamed.id == work.id and renamed.uidvalidity == work.uidvalidity  # UIDs kept
    assert store.message(work.id, uid) is not None
    with pytest.raises(StoreError, match="already exists"):
        store.rename_mailbox(account, "Jobs", "Workshop")
    with pytest.raises(StoreError, match="below itself"):
        store.rename_mailbox(account, "Jobs", "Jobs/sub")
    with pytest.raises(StoreError, match="INBOX cannot be renamed"):
        store.rename_mailbox(account, "inbox", "Old")
    with pytest.raises(StoreError, match="no mailbox"):
        store.rename_mailbox(account, "Nope", "Other")
    store.set_subscribed(account, "Jobs", False)
    assert store.get_mailbox(account, "Jobs").subscribed is False  # type: ignore[union-attr]
    store.delete_mailbox(account, "Jobs")
    assert store.get_mailbox(account, "Jobs") is None
    assert len(store.unreferenced_blobs()) == 1  # its message's content is collectable
    with pytest.raises(StoreError, match="INBOX cannot be deleted"):
        store.delete_mailbox(account, "INBOX")
    for bad in ("", "a//b", "/a", "a/", "a\x00b"):
        with pytest.raises(StoreError):
            store.create_mailbox(account, bad)
    assert store.create_mailbox(account, "inbox/Sub").name == "INBOX/Sub"


def test_feed_positions_are_never_reused(store: SQLiteStore) -> None:
    account = _account(store)
    box = store.create_mailbox(account, "Temp")
    _deliver(store, box.id, 3)
    last = store.last_change(account)
    store.delete_mailbox(account, "Temp")  # its feed entries go with it
    assert store.last_change(account) < last
    _deliver(store, _box(store, "INBOX"))
    assert store.last_change(account) > last  # AUTOINCREMENT: a cursor stays meaningful


def test_schema_v1_is_migrated(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    s = SQLiteStore(path)
    s.add_domain("example.com")
    s.add_account("bob@example.com", "x")  # account 1, INBOX is mailbox 1
    s.close()
    conn = sqlite3.connect(path)
    conn.executescript("""
        DROP TABLE changes;
        CREATE TABLE changes (id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL,
            modseq INTEGER NOT NULL, mailbox_id INTEGER NOT NULL, uid INTEGER NOT NULL,
            kind TEXT NOT NULL);
        INSERT INTO changes VALUES (7, 1, 2, 1, 1, 'append');
        ALTER TABLE mailboxes DROP COLUMN recent_uid;
        ALTER TABLE accounts DROP COLUMN quota;
        DROP TABLE subscriptions;
        DROP TABLE queue_recipients;
        DROP TABLE queue_messages;
        DROP TABLE shares;
        DROP TABLE leases;
        DELETE FROM meta WHERE key = 'lease_serial';
        PRAGMA user_version = 1;
    """)
    conn.close()
    s = SQLiteStore(path)
    assert [c.id for c in s.changes_since(1)] == [7]
    assert "INBOX" in s.subscriptions(1)  # v3 keeps the subscriptions the mailboxes had
    sql = sqlite3.connect(path).execute(
        "SELECT sql FROM sqlite_master WHERE name = 'changes'").fetchone()[0]
    assert "AUTOINCREMENT" in sql
    s.close()


# --- property: the change log replays to the mailboxes ------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.integers(0, 2), st.integers(0, 5)),
        st.tuples(st.just("flags"), st.integers(0, 2), st.lists(st.integers(1, 12), max_size=4),
                  st.sampled_from(["add", "remove", "replace"]),
                  st.frozensets(st.sampled_from(["\\Seen", "\\Flagged", "$A"]), max_size=2)),
        st.tuples(st.just("copy"), st.integers(0, 2), st.lists(st.integers(1, 12), max_size=4),
                  st.integers(0, 2)),
        st.tuples(st.just("move"), st.integers(0, 2), st.lists(st.integers(1, 12), max_size=4),
                  st.integers(0, 2)),
        st.tuples(st.just("expunge"), st.integers(0, 2),
                  st.lists(st.integers(1, 12), max_size=4)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_change_log_replays_to_the_mailboxes(tmp_path: Path, program: list[Any]) -> None:
    path = tmp_path / "prop.db"
    if path.exists():
        path.unlink()
    store = SQLiteStore(str(path))
    try:
        store.add_domain("example.com")
        account = store.add_account("bob@example.com", "x").id
        boxes = [store.create_mailbox(account, f"Box{i}").id for i in range(3)]
        contents = [f"{i:064x}" for i in range(6)]
        for op in program:
            kind, box = op[0], boxes[op[1]]
            if kind == "deliver":
                sha = contents[op[2]]
                store.deliver([Delivery(BlobRef(sha, 5), MessageMeta(5, 0.0), [box])])
            elif kind == "flags":
                store.set_flags(box, op[2], op[4], op[3])
            elif kind in ("copy", "move"):
                target = boxes[op[3]]
                if kind == "move" and target == box:
                    continue
                getattr(store, kind)(box, op[2], target)
            else:
                store.expunge(box, op[2])
        # Replay: appends add a UID, expunges remove it; flags entries carry the new MODSEQ.
        live: dict[int, dict[int, int]] = {b: {} for b in boxes}
        last_uid = {b: 0 for b in boxes}
        modseq_seen = {b: 0 for b in boxes}
        for change in store.changes_since(account, 0, 100_000):
            assert change.modseq >= modseq_seen[change.mailbox_id]  # never goes back
            modseq_seen[change.mailbox_id] = change.modseq
            if change.kind == "append":
                assert change.uid > last_uid[change.mailbox_id]  # UIDs strictly ascending
                last_uid[change.mailbox_id] = change.uid
                live[change.mailbox_id][change.uid] = change.modseq
            elif change.kind == "expunge":
                del live[change.mailbox_id][change.uid]
            else:
                live[change.mailbox_id][change.uid] = change.modseq
        refs: dict[str, int] = {}
        for b in boxes:
            rows = store.messages(b)
            assert {m.uid: m.modseq for m in rows} == live[b]
            mailbox = store.get_mailbox_by_id(b)
            assert mailbox is not None
            assert mailbox.uidnext == last_uid[b] + 1
            assert mailbox.highestmodseq >= max([1, *live[b].values()])
            for m in rows:
                refs[m.blob.sha256] = refs.get(m.blob.sha256, 0) + 1
        conn = sqlite3.connect(str(path))
        counted = dict(conn.execute("SELECT sha256, refcount FROM blobs").fetchall())
        conn.close()
        assert {sha: n for sha, n in counted.items() if n} == refs  # refcounts are exact
    finally:
        store.close()
