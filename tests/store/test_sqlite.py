"""SQLiteStore: account/domain/alias rules, delivery, UIDs, MODSEQ, expunge, refcounts."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from netpost.store.interfaces import (
    DEFAULT_MAILBOXES,
    BlobRef,
    Delivery,
    MessageMeta,
    StoreError,
)
from netpost.store.sqlite import SCHEMA_VERSION, SQLiteStore

BLOB_A = BlobRef("a" * 64, 100)
BLOB_B = BlobRef("b" * 64, 200)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "mail.db"))
    yield s
    s.close()


def _meta(size: int = 100, **headers: str) -> MessageMeta:
    return MessageMeta(size=size, internaldate=1_700_000_000.5, headers=headers)


def _inbox(store: SQLiteStore, address: str = "bob@example.com") -> int:
    account = store.get_account(address)
    assert account is not None
    mailbox = store.get_mailbox(account.id, "INBOX")
    assert mailbox is not None
    return mailbox.id


def _with_bob(store: SQLiteStore) -> int:
    store.add_domain("example.com")
    store.add_account("bob@example.com", "hash")
    return _inbox(store)


# -- schema and connection ----------------------------------------------------------------


def test_pragmas_and_schema_version(tmp_path: Path) -> None:
    path = str(tmp_path / "mail.db")
    store = SQLiteStore(path)
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.add_domain("example.com")
    store.close()
    reopened = SQLiteStore(path)  # no migration the second time, data kept
    assert reopened.list_domains() == ["example.com"]
    reopened.close()


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "mail.db")
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(path)


def test_one_connection_per_thread(store: SQLiteStore) -> None:
    store.add_domain("example.com")
    seen: list[object] = []

    def worker() -> None:
        seen.append(store._conn())
        assert store.list_domains() == ["example.com"]

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen and seen[0] is not store._conn()


# -- domains ------------------------------------------------------------------------------


def test_domains(store: SQLiteStore) -> None:
    store.add_domain("Example.COM")
    store.add_domain("a.example.org.")
    assert store.list_domains() == ["a.example.org", "example.com"]
    assert store.has_domain("EXAMPLE.com")
    assert not store.has_domain("example.net")
    with pytest.raises(StoreError, match="^domain example.com already exists$"):
        store.add_domain("example.com")
    for bad in ["", "-bad.com", "bad..com", "sp ace.com", "a@b.com", "x" * 64 + ".com"]:
        with pytest.raises(StoreError, match="invalid domain name"):
            store.add_domain(bad)
    store.remove_domain("a.example.org")
    assert store.list_domains() == ["example.com"]
    with pytest.raises(StoreError, match="^unknown domain nope.org$"):
        store.remove_domain("nope.org")


def test_remove_domain_refused_while_used(store: SQLiteStore) -> None:
    store.add_domain("example.com")
    store.add_account("bob@example.com", "h")
    with pytest.raises(StoreError, match=r"still has users \(bob@example.com\)"):
        store.remove_domain("example.com")
    store.remove_account("bob@example.com")
    store.add_alias("@example.com", "someone@elsewhere.net")
    with pytest.raises(StoreError, match=r"still has aliases \(@example.com\)"):
        store.remove_domain("example.com")
    store.remove_alias("@example.com", "someone@elsewhere.net")
    store.remove_domain("example.com")
    assert store.list_domains() == []


# -- accounts -----------------------------------------------------------------------------


def test_add_account_creates_default_mailboxes(store: SQLiteStore) -> None:
    store.add_domain("example.com")
    account = store.add_account("Bob@Example.com", "hash1")
    assert account.address == "bob@example.com"
    assert store.get_account("BOB@example.com") == account
    boxes = store.list_mailboxes(account.id)
    assert [(b.name, b.special_use) for b in boxes] == list(DEFAULT_MAILBOXES)
    assert all(b.uidnext == 1 for b in boxes)
    validities = [b.uidvalidity for b in boxes]
    assert len(set(validities)) == len(validities)
    assert all(0 < v <= 0xFFFFFFFF for v in validities)
    assert store.list_accounts() == [account]


def test_add_account_errors(store: SQLiteStore) -> None:
    with pytest.raises(StoreError) as e:
        store.add_account("bob@example.org", "h")
    assert str(e.value) == (
        "unknown domain example.org: add it with 'netpost domain add example.org'"
    )
    store.add_domain("example.com")
    store.add_account("bob@example.com", "h")
    with pytest.raises(StoreError, match="^user bob@example.com already exists$"):
        store.add_account("BOB@example.com", "h")
    for bad in ["bob", "@example.com", "bob@", "a b@example.com", "bob@@example.com", ".b@x.com"]:
        with pytest.raises(StoreError, match="invalid address"):
            store.add_account(bad, "h")
    assert [a.address for a in store.list_accounts()] == ["bob@example.com"]


def test_password_and_removal(store: SQLiteStore) -> None:
    store.add_domain("example.com")
    store.add_account("bob@example.com", "old")
    store.set_password_hash("Bob@example.com", "new")
    account = store.get_account("bob@example.com")
    assert account is not None and account.password_hash == "new"
    with pytest.raises(StoreError, match="^no such user eve@example.com$"):
        store.set_password_hash("eve@example.com", "x")
    store.remove_account("bob@example.com")
    assert store.get_account("bob@example.com") is None
    assert store.list_mailboxes(account.id) == []
    with pytest.raises(StoreError, match="^no such user bob@example.com$"):
        store.remove_account("bob@example.com")


def test_uidvalidity_never_reused(store: SQLiteStore) -> None:
    store.add_domain("example.com")
    first = store.add_account("bob@example.com", "h")
    old = {b.uidvalidity for b in store.list_mailboxes(first.id)}
    store.remove_account("bob@example.com")
    again = store.add_account("bob@example.com", "h")
    new = {b.uidvalidity for b in store.list_mailboxes(again.id)}
    assert not old & new
    extra = store.create_mailbox(again.id, "Lists")
    assert extra.uidvalidity > max(new)
    with pytest.raises(StoreError, match="already exists"):
        store.create_mailbox(again.id, "Lists")


# -- aliases ------------------------------------------------------------------------------


def test_aliases(store: SQLiteStore) -> None:
    store.add_domain("example.com")
    store.add_alias("Postmaster@example.com", "bob@example.com")
    store.add_alias("postmaster@example.com", "alice@elsewhere.org")
    store.add_alias("@example.com", "catchall@example.com")
    assert store.alias_targets("POSTMASTER@example.com") == [
        "alice@elsewhere.org",
        "bob@example.com",
    ]
    assert store.alias_targets("whoever@example.com") == ["catchall@example.com"]
    assert store.alias_targets("whoever@other.org") == []
    assert store.list_aliases() == [
        ("@example.com", "catchall@example.com"),
        ("postmaster@example.com", "alice@elsewhere.org"),
        ("postmaster@example.com", "bob@example.com"),
    ]
    with pytest.raises(StoreError, match="already exists"):
        store.add_alias("postmaster@example.com", "BOB@example.com")
    store.remove_alias("postmaster@example.com", "bob@example.com")
    assert store.alias_targets("postmaster@example.com") == ["alice@elsewhere.org"]
    with pytest.raises(StoreError, match="^no alias a@example.com -> b@example.com$"):
        store.remove_alias("a@example.com", "b@example.com")


def test_alias_errors(store: SQLiteStore) -> None:
    with pytest.raises(StoreError, match="^unknown domain example.org: add it with"):
        store.add_alias("a@example.org", "b@x.com")
    with pytest.raises(StoreError, match="^unknown domain example.org"):
        store.add_alias("@example.org", "b@x.com")
    store.add_domain("example.com")
    with pytest.raises(StoreError, match="invalid address"):
        store.add_alias("a@example.com", "not an address")
    with pytest.raises(StoreError, match="invalid address"):
        store.add_alias("a b@example.com", "b@x.com")
    with pytest.raises(StoreError, match="itself"):
        store.add_alias("a@example.com", "A@example.com")


# -- delivery -----------------------------------------------------------------------------


def test_deliver_assigns_uids_and_modseq(store: SQLiteStore) -> None:
    inbox = _with_bob(store)
    before = store.get_mailbox_by_id(inbox)
    assert before is not None
    result = store.deliver(
        [Delivery(BLOB_A, _meta(subject="one"), [inbox]), Delivery(BLOB_B, _meta(), [inbox])]
    )
    assert result == [[1], [2]]
    after = store.get_mailbox_by_id(inbox)
    assert after is not None
    assert after.uidnext == 3
    assert after.highestmodseq == before.highestmodseq + 2
    assert after.uidvalidity == before.uidvalidity
    rows = store.messages(inbox)
    assert [r.uid for r in rows] == [1, 2]
    assert [r.blob for r in rows] == [BLOB_A, BLOB_B]
    assert rows[0].modseq < rows[1].modseq == after.highestmodseq
    assert rows[0].flags == frozenset()
    assert rows[0].internaldate == 1_700_000_000.5
    assert store.headers(inbox, 1) == {"subject": "one"}
    assert store.headers(inbox, 99) is None
    assert store.message(inbox, 2) == rows[1]
    assert store.deliver([Delivery(BLOB_A, _meta(), [inbox])]) == [[3]]


def test_batch_to_several_mailboxes_shares_blob(store: SQLiteStore) -> None:
    store.add_domain("example.com")
    bob = store.add_account("bob@example.com", "h")
    alice = store.add_account("alice@example.com", "h")
    b_inbox, a_inbox = _inbox(store), _inbox(store, "alice@example.com")
    b_sent = store.get_mailbox(bob.id, "Sent")
    assert b_sent is not None
    uids = store.deliver([Delivery(BLOB_A, _meta(has_x="1"), [b_inbox, a_inbox, b_sent.id])])
    assert uids == [[1, 1, 1]]
    conn = store._conn()
    assert conn.execute("SELECT refcount FROM blobs").fetchall() == [(3,)]
    feed = store.changes_since(alice.id)
    assert [(c.mailbox_id, c.uid, c.kind) for c in feed] == [(a_inbox, 1, "append")]
    assert len(store.changes_since(bob.id)) == 2
    assert store.expunge(b_inbox, [1]) == [1]
    assert conn.execute("SELECT refcount FROM blobs").fetchall() == [(2,)]
    store.remove_account("alice@example.com")
    assert conn.execute("SELECT refcount FROM blobs").fetchall() == [(1,)]
    assert store.unreferenced_blobs() == []
    store.expunge(b_sent.id, [1])
    assert store.unreferenced_blobs() == [BLOB_A]


def test_deliver_is_atomic(store: SQLiteStore) -> None:
    inbox = _with_bob(store)
    with pytest.raises(StoreError, match="no mailbox with id 9999"):
        store.deliver([Delivery(BLOB_A, _meta(), [inbox]), Delivery(BLOB_B, _meta(), [9999])])
    assert store.messages(inbox) == []
    mailbox = store.get_mailbox_by_id(inbox)
    assert mailbox is not None and mailbox.uidnext == 1
    assert store._conn().execute("SELECT count(*) FROM blobs").fetchone()[0] == 0


def test_deliver_durable_across_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "mail.db")
    store = SQLiteStore(path)
    inbox = _with_bob(store)
    store.deliver([Delivery(BLOB_A, _meta(), [inbox])])
    store.close()
    store = SQLiteStore(path)
    assert [r.uid for r in store.messages(inbox)] == [1]
    store.close()


def test_expunge(store: SQLiteStore) -> None:
    inbox = _with_bob(store)
    account = store.get_account("bob@example.com")
    assert account is not None
    store.deliver([Delivery(BLOB_A, _meta(), [inbox]) for _ in range(5)])
    modseq = store.get_mailbox_by_id(inbox).highestmodseq  # type: ignore[union-attr]
    assert store.expunge(inbox, [4, 2, 2, 42]) == [2, 4]
    mailbox = store.get_mailbox_by_id(inbox)
    assert mailbox is not None
    assert mailbox.highestmodseq == modseq + 1
    assert mailbox.uidnext == 6  # UIDs are never reused
    assert [r.uid for r in store.messages(inbox)] == [1, 3, 5]
    assert store.expunge(inbox, [2, 4]) == []
    assert store.expunge(inbox, []) == []
    expunged = [c for c in store.changes_since(account.id) if c.kind == "expunge"]
    assert [(c.uid, c.modseq) for c in expunged] == [(2, modseq + 1), (4, modseq + 1)]
    assert store._conn().execute("SELECT refcount FROM blobs").fetchone()[0] == 3
    assert store.deliver([Delivery(BLOB_B, _meta(), [inbox])]) == [[6]]


def test_changes_since_pages(store: SQLiteStore) -> None:
    inbox = _with_bob(store)
    account = store.get_account("bob@example.com")
    assert account is not None
    store.deliver([Delivery(BLOB_A, _meta(), [inbox]) for _ in range(5)])
    first = store.changes_since(account.id, limit=2)
    rest = store.changes_since(account.id, after=first[-1].id)
    assert [c.uid for c in first + rest] == [1, 2, 3, 4, 5]


def test_forget_blob_only_when_unreferenced(store: SQLiteStore) -> None:
    inbox = _with_bob(store)
    store.deliver([Delivery(BLOB_A, _meta(), [inbox])])
    assert store.forget_blobs([BLOB_A.sha256]) == 0
    store.expunge(inbox, [1])
    assert store.unreferenced_blobs() == [BLOB_A]
    assert store.forget_blobs([BLOB_A.sha256]) == 1
    assert store.unreferenced_blobs() == []


def test_queries_use_indexes(store: SQLiteStore) -> None:
    conn = store._conn()

    def plan(sql: str) -> str:
        return " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, (1,)))

    assert "SCAN" not in plan("SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid")
    assert "SCAN" not in plan("SELECT uid FROM messages WHERE mailbox_id = ? AND modseq > 5")
    # The partial index holds only unreferenced blobs: scanning it is the answer's size.
    assert "blobs_unreferenced" in plan("SELECT sha256 FROM blobs WHERE refcount = 0 AND 1 = ?")
    assert "SCAN" not in plan("SELECT id FROM changes WHERE account_id = ? AND id > 0")


def test_closed_store_refuses(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "mail.db"))
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_domains()


FROM_TEXTS = [
    "Sender Seven <sender7@example.com>",
    "sender7 (the seventh) @ example.com",
    '"sender7"@example.com',
    "SENDER7@EXAMPLE.COM",
    "Sënder <sender7@example.com>",
    "\tsender7@example.com",
    "other@example.com",
    "sender7 @example.com",
    "<sender7@example.com >",
]


@pytest.mark.parametrize("needle", ["sender7@example.com", "sender7", "example", "@", "e s"])
def test_header_candidates_hold_every_match(store: SQLiteStore, needle: str) -> None:
    """SEARCH narrows in SQL first: every message SEARCH would match must be a candidate."""
    from netpost.imap.search import _field_matches

    inbox = _with_bob(store)
    store.deliver([Delivery(BlobRef(f"{i:064x}", 100), _meta(**{"from": text}), [inbox])
                   for i, text in enumerate(FROM_TEXTS)])
    candidates = dict(store.header_candidates(inbox, "from", needle, address=True))
    texts = dict(store.header_texts(inbox, "from"))
    matching = {uid for uid, text in texts.items() if _field_matches(needle, text, True)}
    assert matching <= set(candidates)
    assert all(candidates[uid] == texts[uid] for uid in candidates)
    if needle == "sender7@example.com":
        assert 7 not in candidates  # other@example.com is left out in SQL
