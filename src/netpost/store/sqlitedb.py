"""SQLite plumbing shared by the embedded stores: a connection per thread, write transactions.

Every connection is opened with the store's pragmas (WAL and ``synchronous=FULL``: a committed
transaction is on disk).  A write transaction takes the write lock up front (``BEGIN
IMMEDIATE``) so writers queue on ``busy_timeout`` instead of failing on upgrade, and a failed
one never leaves the thread's connection inside a transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence

from netpost.store.interfaces import StoreError

DURABLE = ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL")


class ThreadConnections:
    def __init__(self, path: str, pragmas: Sequence[str], *, what: str,
                 busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self._pragmas = tuple(pragmas)
        self._what = what
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False

    def get(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreError(f"the {self._what} is closed")
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,  # BEGIN/COMMIT are ours
            check_same_thread=False,  # only so close() can close every thread's connection
            timeout=self._busy_timeout_ms / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        for pragma in self._pragmas:
            conn.execute(pragma)
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def write(self, commit: Callable[[sqlite3.Connection], None] | None = None
              ) -> Iterator[sqlite3.Connection]:
        """One write transaction; `commit`, when given, runs the COMMIT itself (to do
        something right after it under a lock of its own)."""
        conn = self.get()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            if commit is None:
                conn.execute("COMMIT")
            else:
                commit(conn)
        except BaseException:
            # After a failed COMMIT SQLite may already have rolled back (SQLITE_FULL, IOERR):
            # never leave this thread's connection inside a transaction, never mask the error.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()


def account_id_of(conn: sqlite3.Connection, address: str) -> int:
    """The accounts row of a normalized address, or StoreError naming the user."""
    row = conn.execute("SELECT id FROM accounts WHERE address = ?", (address,)).fetchone()
    if row is None:
        raise StoreError(f"no such user {address}")
    return int(row[0])
