"""The Leases role on the embedded store: batches, one row per address, v4 and v6, migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from netpost.store.embedded import open_admin, open_stores
from netpost.store.interfaces import Lease
from netpost.store.sqlite import SCHEMA_VERSION, SQLiteStore
from netpost.store.sqlleases import SQLiteLeases

V4 = Lease("10.99.0.10", b"hw:\x01\x02\x00\x00\x00\x00\x01", "bound", 100.0, 3700.0,
           hardware="02:00:00:00:00:01", hostname="laptop", subnet="10.99.0.0/24")
V6 = Lease("2001:db8::10", b"\x00\x01\x00\x01duid", "bound", 100.0, 3700.0, iaid=7,
           subnet="2001:db8::/64")


def test_batch_commit_load_and_replace(tmp_path: Path) -> None:
    stores = open_stores(tmp_path)
    try:
        leases = stores.leases
        other = Lease("10.99.0.11", b"id:\x01abc", "bound", 100.0, 3700.0)
        leases.commit_leases([V4, other, V6])
        assert {x.address for x in leases.load_leases(4)} == {"10.99.0.10", "10.99.0.11"}
        assert leases.load_leases(6) == [V6]
        # one row per address: a new binding of the address replaces the old one
        moved = Lease("10.99.0.10", b"hw:\x01other", "bound", 200.0, 3800.0)
        leases.commit_leases([moved])
        assert leases.get_lease("10.99.0.10") == moved
        assert [x.address for x in leases.list_leases()] == ["10.99.0.10", "10.99.0.11",
                                                             "2001:db8::10"]
        assert leases.get_lease("2001:0db8:0::10") == V6
    finally:
        stores.close()


def test_leases_survive_reopening_and_release_is_seen(tmp_path: Path) -> None:
    stores = open_stores(tmp_path)
    stores.leases.commit_leases([V4])
    _, serial = stores.leases.leases_changed_since(0)
    stores.close()
    admin = open_admin(tmp_path)
    before = admin.leases.release_lease("10.99.0.10", 500.0)
    assert before == V4
    assert admin.leases.release_lease("10.99.0.99", 500.0) is None
    admin.close()
    stores = open_stores(tmp_path)
    try:
        changed, now = stores.leases.leases_changed_since(serial)
        assert [(x.address, x.state, x.expires) for x in changed] == [
            ("10.99.0.10", "released", 500.0)]
        assert stores.leases.leases_changed_since(now) == ([], now)
    finally:
        stores.close()


def test_v5_database_is_migrated(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE leases; DELETE FROM meta WHERE key = 'lease_serial'; "
                       "PRAGMA user_version = 5;")
    conn.close()
    store = SQLiteStore(path)
    SQLiteLeases(store).commit_leases([V4])
    assert SQLiteLeases(store).get_lease("10.99.0.10") == V4
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
