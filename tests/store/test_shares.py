"""The Shares role on SQLite: add, get, list, remove; schema v5 migration; account removal."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from netpost.store.embedded import open_admin
from netpost.store.interfaces import StoreError
from netpost.store.sqlite import SCHEMA_VERSION, SQLiteStore
from netpost.store.sqlshares import SQLiteShares


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(str(tmp_path / "netpost.db"))
    s.add_domain("example.com")
    s.add_account("alice@example.com", "x")
    s.add_account("bob@example.com", "x")
    return s


def test_add_get_list_remove(store: SQLiteStore) -> None:
    shares = SQLiteShares(store)
    a = shares.add_share("tok-a", "Alice@Example.com", "/photos", expires=None)
    b = shares.add_share("tok-b", "bob@example.com", "/report.pdf", expires=2e9)
    assert a.address == "alice@example.com" and a.expires is None
    assert shares.get_share("tok-a") == a
    assert shares.get_share("tok-b") == b
    assert shares.get_share("nope") is None
    assert [s.token for s in shares.list_shares()] == ["tok-a", "tok-b"]
    assert [s.token for s in shares.list_shares("bob@example.com")] == ["tok-b"]
    assert shares.list_shares("carol@example.com") == []
    assert b.expired(2e9) and not b.expired(2e9 - 1) and not a.expired(1e12)
    assert shares.remove_share("tok-a") is True
    assert shares.remove_share("tok-a") is False
    assert shares.get_share("tok-a") is None


def test_refusals(store: SQLiteStore) -> None:
    shares = SQLiteShares(store)
    with pytest.raises(StoreError, match="no such user carol@example.com"):
        shares.add_share("t1", "carol@example.com", "/x")
    shares.add_share("t1", "alice@example.com", "/x")
    with pytest.raises(StoreError, match="already in use"):
        shares.add_share("t1", "bob@example.com", "/y")
    with pytest.raises(StoreError):
        shares.add_share("", "bob@example.com", "/y")


def test_removing_the_account_removes_its_shares(store: SQLiteStore) -> None:
    shares = SQLiteShares(store)
    shares.add_share("t1", "alice@example.com", "/x")
    shares.add_share("t2", "bob@example.com", "/y")
    store.remove_account("alice@example.com")
    assert [s.token for s in shares.list_shares()] == ["t2"]


def test_durable_across_reopen_and_admin_role(tmp_path: Path) -> None:
    admin = open_admin(tmp_path)
    admin.domains.add_domain("example.com")
    admin.accounts.add_account("alice@example.com", "x")
    admin.shares.add_share("tok", "alice@example.com", "/a b/c.txt", 123.5)
    admin.close()
    admin = open_admin(tmp_path)
    share = admin.shares.get_share("tok")
    assert share is not None and share.path == "/a b/c.txt" and share.expires == 123.5
    admin.close()


def test_v4_database_is_migrated(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    s = SQLiteStore(path)
    s.add_domain("example.com")
    s.add_account("alice@example.com", "x")
    s.close()
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE shares; DROP TABLE leases; "
                       "DELETE FROM meta WHERE key = 'lease_serial'; PRAGMA user_version = 4;")
    conn.close()
    s = SQLiteStore(path)
    SQLiteShares(s).add_share("tok", "alice@example.com", "/")
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    s.close()
