"""Web credentials on the embedded store's SQLite database (the `Tokens` role).

Two kinds share one table: API tokens (`netpost token create`, sent as `Authorization: Bearer
...`) and browser sessions (made by `POST /api/v1/login`, sent as a cookie).  A credential is
`np_<id>_<secret>`: the id is the row's key and may be shown (`netpost token list`), the
secret is kept only as its SHA-256 (it is 256 random bits, so a slow hash adds nothing: the
same choice as GitHub's and PyPI's tokens).  Removing an account removes its credentials
(ON DELETE CASCADE).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from netpost.mail import address as names
from netpost.store.interfaces import StoreError, Token, TokenKind
from netpost.store.sqlitedb import account_id_of

if TYPE_CHECKING:
    from netpost.store.sqlite import SQLiteStore

# v7: web API tokens and browser sessions (issue 11).
SCHEMA_V7 = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('api', 'session')),
    name TEXT NOT NULL DEFAULT '',
    secret_sha256 TEXT NOT NULL,  -- hex SHA-256 of the secret part (the secret is not kept)
    created REAL NOT NULL,
    expires REAL             -- NULL: until revoked
);
CREATE INDEX IF NOT EXISTS tokens_account ON tokens(account_id, kind, created);
CREATE INDEX IF NOT EXISTS tokens_expires ON tokens(expires) WHERE expires IS NOT NULL;
"""

_COLUMNS = "t.id, a.address, t.kind, t.name, t.secret_sha256, t.created, t.expires"
_FROM = "FROM tokens t JOIN accounts a ON a.id = t.account_id"


def _token(row: Sequence[Any]) -> Token:
    return Token(id=row[0], address=row[1], kind=row[2], name=row[3], secret_sha256=row[4],
                 created=row[5], expires=row[6])


class SQLiteTokens:
    """`Tokens` over the table above, sharing the store's connections and write lock."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def _conn(self) -> sqlite3.Connection:
        return self._store._conn()

    def add_token(self, token_id: str, address: str, kind: TokenKind, secret_sha256: str, *,
                  name: str = "", expires: float | None = None) -> Token:
        if not token_id or not secret_sha256:
            raise StoreError("a token needs an id and a secret")
        a = names.normalize_address(address)
        created = time.time()
        with self._store._db.write() as conn:
            owner = account_id_of(conn, a)
            try:
                conn.execute(
                    "INSERT INTO tokens (id, account_id, kind, name, secret_sha256, created, "
                    "expires) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (token_id, owner, kind, name, secret_sha256, created, expires))
            except sqlite3.IntegrityError:
                raise StoreError("that token id is already in use") from None
        return Token(token_id, a, kind, name, secret_sha256, created, expires)

    def get_token(self, token_id: str) -> Token | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} {_FROM} WHERE t.id = ?",
                                   (token_id,)).fetchone()
        return None if row is None else _token(row)

    def list_tokens(self, address: str | None = None, kind: TokenKind = "api") -> list[Token]:
        if address is None:
            rows = self._conn().execute(
                f"SELECT {_COLUMNS} {_FROM} WHERE t.kind = ? ORDER BY t.created, t.id",
                (kind,)).fetchall()
        else:
            rows = self._conn().execute(
                f"SELECT {_COLUMNS} {_FROM} WHERE a.address = ? AND t.kind = ? "
                "ORDER BY t.created, t.id", (names.normalize_address(address), kind)).fetchall()
        return [_token(r) for r in rows]

    def remove_token(self, token_id: str) -> bool:
        with self._store._db.write() as conn:
            return conn.execute("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount > 0

    def remove_expired_tokens(self, now: float) -> int:
        with self._store._db.write() as conn:
            return conn.execute("DELETE FROM tokens WHERE expires IS NOT NULL AND expires <= ?",
                                (now,)).rowcount
