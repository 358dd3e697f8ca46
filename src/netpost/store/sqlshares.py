"""Shared files and folders on the embedded store's SQLite database (the `Shares` role).

A share is one row: its token (the unguessable part of `/s/<token>`), the account whose file
tree holds it, the virtual path in that tree, and when it expires.  The account's removal takes
its shares with it (ON DELETE CASCADE).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from netpost.mail import address as names
from netpost.store.interfaces import Share, StoreError
from netpost.store.sqlitedb import account_id_of

if TYPE_CHECKING:
    from netpost.store.sqlite import SQLiteStore

# v5: shared files (issue 8, files over HTTP).
SCHEMA_V5 = """
CREATE TABLE shares (
    token TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    path TEXT NOT NULL,    -- virtual path in the account's file tree
    created REAL NOT NULL,
    expires REAL           -- NULL: until removed
);
CREATE INDEX shares_account ON shares(account_id, created);
"""

_COLUMNS = "s.token, a.address, s.path, s.created, s.expires"
_FROM = "FROM shares s JOIN accounts a ON a.id = s.account_id"


def _share(row: Sequence[Any]) -> Share:
    return Share(token=row[0], address=row[1], path=row[2], created=row[3], expires=row[4])


class SQLiteShares:
    """`Shares` over the table above, sharing the store's connections and write lock."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def _conn(self) -> sqlite3.Connection:
        return self._store._conn()

    def add_share(self, token: str, address: str, path: str,
                  expires: float | None = None) -> Share:
        if not token:
            raise StoreError("a share needs a token")
        a = names.normalize_address(address)
        created = time.time()
        with self._store._db.write() as conn:
            owner = account_id_of(conn, a)
            try:
                conn.execute("INSERT INTO shares (token, account_id, path, created, expires) "
                             "VALUES (?, ?, ?, ?, ?)", (token, owner, path, created, expires))
            except sqlite3.IntegrityError:
                raise StoreError("that share token is already in use") from None
        return Share(token, a, path, created, expires)

    def get_share(self, token: str) -> Share | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} {_FROM} WHERE s.token = ?",
                                   (token,)).fetchone()
        return None if row is None else _share(row)

    def list_shares(self, address: str | None = None) -> list[Share]:
        if address is None:
            rows = self._conn().execute(
                f"SELECT {_COLUMNS} {_FROM} ORDER BY s.created, s.token").fetchall()
        else:
            rows = self._conn().execute(
                f"SELECT {_COLUMNS} {_FROM} WHERE a.address = ? ORDER BY s.created, s.token",
                (names.normalize_address(address),)).fetchall()
        return [_share(r) for r in rows]

    def remove_share(self, token: str) -> bool:
        with self._store._db.write() as conn:
            cur = conn.execute("DELETE FROM shares WHERE token = ?", (token,))
            return cur.rowcount > 0
