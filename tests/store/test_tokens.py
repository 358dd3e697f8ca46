"""The Tokens role on SQLite (schema v7) and the paged message listing of the web API."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from netpost.store.embedded import open_admin
from netpost.store.interfaces import StoreError
from netpost.store.sqlite import SCHEMA_VERSION, SQLiteStore
from netpost.store.sqltokens import SQLiteTokens


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(str(tmp_path / "netpost.db"))
    s.add_domain("example.com")
    s.add_account("alice@example.com", "x")
    s.add_account("bob@example.com", "x")
    return s


def test_add_get_list_remove(store: SQLiteStore) -> None:
    tokens = SQLiteTokens(store)
    a = tokens.add_token("ida", "Alice@Example.com", "api", "aa" * 32, name="ci")
    b = tokens.add_token("idb", "bob@example.com", "api", "bb" * 32, expires=2e9)
    s = tokens.add_token("ids", "bob@example.com", "session", "cc" * 32, expires=2e9)
    assert a.address == "alice@example.com" and a.name == "ci" and a.expires is None
    assert tokens.get_token("ida") == a and tokens.get_token("ids") == s
    assert tokens.get_token("nope") is None
    assert [t.id for t in tokens.list_tokens()] == ["ida", "idb"]
    assert [t.id for t in tokens.list_tokens("bob@example.com")] == ["idb"]
    assert [t.id for t in tokens.list_tokens("bob@example.com", "session")] == ["ids"]
    assert b.expired(2e9) and not b.expired(2e9 - 1) and not a.expired(1e12)
    assert tokens.remove_token("ida") is True
    assert tokens.remove_token("ida") is False
    assert tokens.remove_expired_tokens(2e9) == 2
    assert tokens.list_tokens() == [] and tokens.list_tokens(kind="session") == []


def test_refusals(store: SQLiteStore) -> None:
    tokens = SQLiteTokens(store)
    with pytest.raises(StoreError, match="no such user"):
        tokens.add_token("x", "carol@example.com", "api", "aa")
    tokens.add_token("x", "alice@example.com", "api", "aa")
    with pytest.raises(StoreError, match="already in use"):
        tokens.add_token("x", "bob@example.com", "api", "bb")


def test_account_removal_takes_its_tokens(store: SQLiteStore) -> None:
    tokens = SQLiteTokens(store)
    tokens.add_token("x", "alice@example.com", "api", "aa")
    store.remove_account("alice@example.com")
    assert tokens.get_token("x") is None


def test_v6_database_is_migrated(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE tokens; PRAGMA user_version = 6;")
    conn.close()
    store = SQLiteStore(path)
    store.add_domain("example.com")
    store.add_account("alice@example.com", "x")
    SQLiteTokens(store).add_token("x", "alice@example.com", "api", "aa")
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_admin_stores_have_tokens(tmp_path: Path) -> None:
    admin = open_admin(tmp_path)
    try:
        assert admin.tokens.list_tokens() == []
    finally:
        admin.close()


def test_message_page_is_newest_first_and_bounded(store: SQLiteStore) -> None:
    from netpost.store.interfaces import Delivery, MessageMeta, blob_ref

    account = store.get_account("alice@example.com")
    assert account is not None
    inbox = store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    deliveries = []
    for i in range(120):
        data = f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()
        deliveries.append(Delivery(blob_ref(data), MessageMeta(len(data), time.time(),
                                                                {"subject": f"m{i}"}),
                                   [inbox.id]))
    store.deliver(deliveries)
    page = store.message_page(inbox.id, before_uid=None, limit=50)
    assert [m.uid for m in page] == list(range(120, 70, -1))
    assert page[0].headers == {"subject": "m119"}
    nxt = store.message_page(inbox.id, before_uid=page[-1].uid, limit=50)
    assert [m.uid for m in nxt] == list(range(70, 20, -1))
    last = store.message_page(inbox.id, before_uid=nxt[-1].uid, limit=50)
    assert [m.uid for m in last] == list(range(20, 0, -1))
    assert store.message_page(inbox.id, before_uid=1, limit=50) == []
    assert store.message_count(inbox.id) == 120
