"""DHCP leases on the embedded store's SQLite database (the `Leases` role).

One row per address (the primary key), so the store itself refuses to bind an address twice;
v4 and v6 leases share the table (`family`; v6 rows carry the IA's IAID beside the DUID).
A batch of leases is one transaction with ``synchronous=FULL``: durable when `commit_leases`
returns, one fsync for the whole batch.  A change by an administrator (`netpost leases
release`) takes the next `admin_serial` (kept in ``meta``), which is how a running server finds
it without reading back its own writes.
"""

from __future__ import annotations

import functools
import ipaddress
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from netpost.store.interfaces import Lease

if TYPE_CHECKING:
    from netpost.store.sqlite import SQLiteStore

# v6: DHCP leases (issue 9).
SCHEMA_V6 = """
CREATE TABLE leases (
    address TEXT PRIMARY KEY,      -- "10.99.0.147" or "2001:db8::147": one client at a time
    family INTEGER NOT NULL CHECK (family IN (4, 6)),
    client BLOB NOT NULL,          -- v4: client id or htype+chaddr, v6: DUID
    iaid INTEGER,                  -- v6: the IA_NA's IAID
    state TEXT NOT NULL CHECK (state IN ('bound', 'released', 'declined', 'expired')),
    starts REAL NOT NULL,
    expires REAL NOT NULL,
    hardware TEXT NOT NULL DEFAULT '',
    hostname TEXT NOT NULL DEFAULT '',
    subnet TEXT NOT NULL DEFAULT '',
    relay TEXT NOT NULL DEFAULT '',
    admin_serial INTEGER NOT NULL DEFAULT 0  -- the administrator's change (meta 'lease_serial')
);
CREATE INDEX leases_client ON leases(family, client, iaid);
CREATE INDEX leases_admin ON leases(admin_serial) WHERE admin_serial > 0;
INSERT INTO meta (key, value) VALUES ('lease_serial', 0);
"""

# v8: the index on (family, client, iaid) goes -- no query reads leases by client, and every
# lease written paid for it (about an eighth of a batch's time).
SCHEMA_V8 = """
DROP INDEX IF EXISTS leases_client;
"""

_COLUMNS = ("address, client, state, starts, expires, iaid, hardware, hostname, subnet, relay")


def _lease(row: Sequence[Any]) -> Lease:
    return Lease(address=row[0], client=bytes(row[1]), state=row[2], starts=row[3],
                 expires=row[4], iaid=row[5], hardware=row[6], hostname=row[7], subnet=row[8],
                 relay=row[9])


def _address_order(lease: Lease) -> tuple[int, int]:
    return lease.family, int(ipaddress.ip_address(lease.address))


class SQLiteLeases:
    """`Leases` over the table above, sharing the store's connections and write lock."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def _conn(self) -> sqlite3.Connection:
        return self._store._conn()

    @staticmethod
    def _next_serial(conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'lease_serial'")
        return int(conn.execute(
            "SELECT value FROM meta WHERE key = 'lease_serial'").fetchone()[0])

    def load_leases(self, family: int) -> list[Lease]:
        rows = self._conn().execute(f"SELECT {_COLUMNS} FROM leases WHERE family = ?",
                                    (family,)).fetchall()
        return [_lease(r) for r in rows]

    def commit_leases(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        # One INSERT of many rows, not executemany: the sqlite3 module lets go of the GIL
        # around each statement it steps, and takes it back after; with a busy event loop
        # in the other thread each taking-back can wait a switch interval (5 ms), so a batch
        # of 64 rows one statement each took up to a third of a second.
        if len(leases) <= ROWS_PER_INSERT:
            # One statement is its own transaction (the connections autocommit): atomic, and
            # durable when it returns (synchronous=FULL) -- with one taking-back of the GIL,
            # not three (BEGIN, INSERT, COMMIT).
            self._conn().execute(*_statement(leases))
            return
        with self._store._db.write() as conn:
            for start in range(0, len(leases), ROWS_PER_INSERT):
                conn.execute(*_statement(leases[start:start + ROWS_PER_INSERT]))

    def get_lease(self, address: str) -> Lease | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM leases WHERE address = ?",
                                   (_canonical(address),)).fetchone()
        return None if row is None else _lease(row)

    def list_leases(self, family: int | None = None) -> list[Lease]:
        if family is None:
            rows = self._conn().execute(f"SELECT {_COLUMNS} FROM leases").fetchall()
        else:
            rows = self._conn().execute(f"SELECT {_COLUMNS} FROM leases WHERE family = ?",
                                        (family,)).fetchall()
        return sorted((_lease(r) for r in rows), key=_address_order)

    def release_lease(self, address: str, now: float) -> Lease | None:
        key = _canonical(address)
        with self._store._db.write() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM leases WHERE address = ?",
                               (key,)).fetchone()
            if row is None:
                return None
            serial = self._next_serial(conn)
            conn.execute("UPDATE leases SET state = 'released', expires = MIN(expires, ?), "
                         "admin_serial = ? WHERE address = ?", (now, serial, key))
            return _lease(row)

    def leases_changed_since(self, serial: int) -> tuple[list[Lease], int]:
        conn = self._conn()
        now = int(conn.execute("SELECT value FROM meta WHERE key = 'lease_serial'").fetchone()[0])
        if now <= serial:
            return [], now
        rows = conn.execute(f"SELECT {_COLUMNS} FROM leases WHERE admin_serial > ? AND "
                            "admin_serial <= ?", (serial, now)).fetchall()
        return [_lease(r) for r in rows], now


ROWS_PER_INSERT = 256  # 11 parameters a row: well under SQLite's 32,766 a statement
ROWS_STEP = 16  # statements past this many rows have a multiple of it


def _statement_rows(rows: int) -> int:
    """The statement size that takes `rows` leases: 1-16 as they are, then the next multiple
    of ROWS_STEP (31 sizes in all)."""
    return rows if rows <= ROWS_STEP else -(-rows // ROWS_STEP) * ROWS_STEP


def _statement(leases: Sequence[Lease]) -> tuple[str, list[object]]:
    """The upsert of these leases (ROWS_PER_INSERT at most) and its parameters.  Statements
    come in a few sizes, so that the connection's statement cache (128) keeps them all: a
    batch of another size repeats its last lease (an upsert of the same row twice leaves
    what once does).  Preparing a statement of a new size each time cost as much as a third
    of the writing."""
    chunk = list(leases)
    chunk += chunk[-1:] * (_statement_rows(len(chunk)) - len(chunk))
    values: list[object] = []
    for lease in chunk:
        values += (lease.address, lease.family, lease.client, lease.iaid, lease.state,
                   lease.starts, lease.expires, lease.hardware, lease.hostname, lease.subnet,
                   lease.relay)
    return _insert(len(chunk)), values


@functools.cache  # at most 31 texts (_statement_rows)
def _insert(rows: int) -> str:
    """An upsert of `rows` leases in one statement (the same text for the same row count,
    so that the connection's statement cache finds it again).  A lease for an address with
    a row already (a renewal, a client back) updates that row in place: INSERT OR REPLACE
    would delete it and insert it again, rewriting every index entry; the administrator's
    mark (admin_serial) goes, as with a new row."""
    return ("INSERT INTO leases (address, family, client, iaid, state, starts, "
            "expires, hardware, hostname, subnet, relay) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
            + " ON CONFLICT (address) DO UPDATE SET family = excluded.family, "
            "client = excluded.client, iaid = excluded.iaid, state = excluded.state, "
            "starts = excluded.starts, expires = excluded.expires, "
            "hardware = excluded.hardware, hostname = excluded.hostname, "
            "subnet = excluded.subnet, relay = excluded.relay, admin_serial = 0")


def _canonical(address: str) -> str:
    """The address as rows keep it ("2001:db8::1", not "2001:0db8:0:0::1")."""
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError:
        return address.strip()
