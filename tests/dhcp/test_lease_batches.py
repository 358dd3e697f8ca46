"""A DHCP server's batch of leases in the SQLite store: one transaction however many rows
(several multi-row INSERTs), the last word for an address wins, all or nothing."""

from __future__ import annotations

from dataclasses import fields
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netpost.dhcp.engine import LeaseRecord
from netpost.dhcp.server import to_lease, to_record
from netpost.store.embedded import open_stores
from netpost.store.interfaces import Lease
from netpost.store.sqlleases import ROWS_PER_INSERT, _statement_rows


def v4(n: int, client: bytes = b"hw:\x01c", expires: float = 3700.0) -> Lease:
    return Lease(f"10.99.{n // 256}.{n % 256}", client, "bound", 100.0, expires,
                 hardware="02:00:00:00:00:01", subnet="10.99.0.0/16",
                 relay="10.99.0.2")


def test_a_batch_longer_than_one_insert_is_stored_whole(tmp_path: Path) -> None:
    stores = open_stores(tmp_path)
    try:
        batch = [v4(n) for n in range(ROWS_PER_INSERT * 2 + 7)]
        batch.append(Lease("2001:db8::5", b"\x00\x03\x00\x01duid", "bound", 1.0, 2.0, iaid=3))
        stores.leases.commit_leases(batch)
        assert sorted(stores.leases.load_leases(4), key=lambda x: x.address) == sorted(
            batch[:-1], key=lambda x: x.address)
        assert stores.leases.load_leases(6) == [batch[-1]]
    finally:
        stores.close()


def test_the_last_lease_of_an_address_in_a_batch_wins(tmp_path: Path) -> None:
    stores = open_stores(tmp_path)
    try:
        # a lease, its release and a new client's lease of the address, in one batch, and
        # the same across the boundary between two INSERTs
        first, second = v4(1, b"hw:\x01a"), v4(1, b"hw:\x01b", 4000.0)
        filler = [v4(n) for n in range(10, 10 + ROWS_PER_INSERT)]
        stores.leases.commit_leases([first, second, *filler, v4(1, b"hw:\x01z", 5000.0)])
        assert stores.leases.get_lease("10.99.0.1") == v4(1, b"hw:\x01z", 5000.0)
    finally:
        stores.close()


def test_a_bad_row_stores_none_of_the_batch(tmp_path: Path) -> None:
    stores = open_stores(tmp_path)
    try:
        bad = Lease("10.99.9.9", b"x", "nonsense", 1.0, 2.0)  # type: ignore[arg-type]
        batch = [v4(n) for n in range(ROWS_PER_INSERT + 3)] + [bad]
        with pytest.raises(Exception):  # noqa: B017 - sqlite3.IntegrityError, a CHECK
            stores.leases.commit_leases(batch)
        assert stores.leases.load_leases(4) == []
        stores.leases.commit_leases([v4(1)])  # the connection is usable again
        assert len(stores.leases.load_leases(4)) == 1
    finally:
        stores.close()


def test_to_lease_makes_the_same_lease_as_its_constructor() -> None:
    """server.to_lease skips the frozen dataclass's __init__: it must still give exactly what
    Lease(...) gives, every field (a field added to Lease fails here until to_lease sets it)."""
    record = LeaseRecord(IPv4Address("10.99.1.7"), b"hw:\x01\x02\x00\x00\x00\x00\x07", "bound",
                         1000.0, 4600.0, "10.99.0.0/16", bytes.fromhex("020000000007"),
                         "laptop", "10.99.0.2 circuit 0a")
    made = to_lease(record)
    assert made == Lease(address="10.99.1.7", client=record.client, state="bound",
                         starts=1000.0, expires=4600.0, hardware="02:00:00:00:00:07",
                         hostname="laptop", subnet="10.99.0.0/16", relay="10.99.0.2 circuit 0a")
    assert set(vars(made)) == {f.name for f in fields(Lease)}
    assert to_record(made) == record


def test_a_lease_for_an_address_with_a_row_updates_it_and_clears_the_admin_mark(
        tmp_path: Path) -> None:
    """commit_leases upserts: the row of an address is updated in place (a new client, a
    new state, times), and an administrator's earlier release stops being news."""
    stores = open_stores(tmp_path)
    try:
        stores.leases.commit_leases([v4(1, b"hw:\x01a")])
        stores.leases.release_lease("10.99.0.1", 200.0)
        changed, serial = stores.leases.leases_changed_since(0)
        assert [lease.address for lease in changed] == ["10.99.0.1"]
        stores.leases.commit_leases([v4(1, b"hw:\x01b", 9000.0)])
        assert stores.leases.get_lease("10.99.0.1") == v4(1, b"hw:\x01b", 9000.0)
        assert stores.leases.leases_changed_since(0)[0] == []
        assert stores.leases.load_leases(4) == [v4(1, b"hw:\x01b", 9000.0)]
    finally:
        stores.close()


def test_batches_of_any_size_use_few_statement_sizes_and_store_each_lease_once(
        tmp_path: Path) -> None:
    """A batch is written with statements of a few sizes (the statement cache keeps them):
    the padding repeats a lease, which must not show."""
    sizes = {_statement_rows(n) for n in range(1, ROWS_PER_INSERT + 1)}
    assert len(sizes) <= 31 and all(_statement_rows(n) >= n for n in range(1, 300))
    stores = open_stores(tmp_path)
    try:
        first = [v4(n) for n in range(17)]
        stores.leases.commit_leases(first)
        second = [v4(n, b"hw:\x01d", 5000.0) for n in range(10, 110)]
        stores.leases.commit_leases(second)
        stored = sorted(stores.leases.load_leases(4), key=lambda x: x.address)
        assert stored == sorted(first[:10] + second, key=lambda x: x.address)
    finally:
        stores.close()
