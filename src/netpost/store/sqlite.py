"""The embedded metadata store: accounts, aliases, mailboxes, messages on SQLite.

WAL mode with ``synchronous=FULL``: a committed transaction is on disk.  One connection per
thread; every write is one ``BEGIN IMMEDIATE`` transaction so writers queue on the lock (with
``busy_timeout``) instead of failing on upgrade.  The schema is versioned with
``PRAGMA user_version`` and created or migrated when the store is opened.

Message header fields are parsed once at delivery and kept as JSON beside the message.  Blob
reference counts live in ``blobs``; rows that reach zero are what garbage collection removes
(see `GroupCommitter.collect_garbage`, which runs it on the delivery thread so it cannot race
a delivery that reuses the same content).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from netpost.mail import address as names
from netpost.store.interfaces import (
    DEFAULT_MAILBOXES,
    Account,
    BlobRef,
    Delivery,
    Mailbox,
    MessageRow,
    StoreError,
)

SCHEMA_VERSION = 1

_SCHEMA_V1 = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE domains (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL
);
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    address TEXT NOT NULL UNIQUE,
    domain TEXT NOT NULL REFERENCES domains(name),
    password_hash TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX accounts_domain ON accounts(domain);
CREATE TABLE aliases (
    source TEXT NOT NULL,          -- local@domain, or '@domain' for a catch-all
    domain TEXT NOT NULL REFERENCES domains(name),
    target TEXT NOT NULL,
    PRIMARY KEY (source, target)
);
CREATE INDEX aliases_domain ON aliases(domain);
CREATE TABLE mailboxes (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    special_use TEXT,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL DEFAULT 1,
    highestmodseq INTEGER NOT NULL DEFAULT 1,
    subscribed INTEGER NOT NULL DEFAULT 1,
    UNIQUE (account_id, name)
);
CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    refcount INTEGER NOT NULL
);
CREATE INDEX blobs_unreferenced ON blobs(sha256) WHERE refcount = 0;
CREATE TABLE messages (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    sha256 TEXT NOT NULL REFERENCES blobs(sha256),
    size INTEGER NOT NULL,
    internaldate REAL NOT NULL,
    modseq INTEGER NOT NULL,
    flags TEXT NOT NULL DEFAULT '',  -- space-separated, sorted
    has_dot_lines INTEGER NOT NULL,
    headers TEXT NOT NULL DEFAULT '{}',  -- JSON object of decoded header fields
    PRIMARY KEY (mailbox_id, uid)
);
CREATE INDEX messages_modseq ON messages(mailbox_id, modseq);
CREATE INDEX messages_blob ON messages(sha256);
CREATE TABLE changes (
    id INTEGER PRIMARY KEY,  -- position in the account's feed
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    modseq INTEGER NOT NULL,
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('append', 'expunge', 'flags'))
);
CREATE INDEX changes_account ON changes(account_id, id);
CREATE INDEX changes_mailbox ON changes(mailbox_id);
"""

_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1}  # version -> script bringing version-1 to it

_MESSAGE_COLUMNS = "m.mailbox_id, m.uid, m.sha256, b.size, m.size, m.internaldate, m.modseq, \
m.flags, m.has_dot_lines"


@dataclass(frozen=True)
class Change:
    """One entry of an account's change feed (IMAP IDLE, CONDSTORE/QRESYNC, POP3, web UI)."""

    id: int  # feed position, increasing per store
    account_id: int
    mailbox_id: int
    uid: int
    modseq: int
    kind: str  # 'append' | 'expunge' | 'flags'


def normalize_domain(name: str) -> str:
    """Lower-case and validate a domain name (rules: netpost.mail.address); raise StoreError
    when malformed."""
    try:
        return names.parse_domain(name)
    except names.InvalidDomain:
        raise StoreError(f"invalid domain name {name!r}") from None


def normalize_address(address: str) -> tuple[str, str]:
    """Lower-case and validate local@domain; return (address, domain)."""
    try:
        return names.parse_address(address)
    except names.InvalidAddress as exc:
        raise StoreError(f"invalid address {address!r}: {exc.reason}") from None


def _unknown_domain(domain: str) -> StoreError:
    return StoreError(f"unknown domain {domain}: add it with 'netpost domain add {domain}'")


def _flags_text(flags: frozenset[str]) -> str:
    return " ".join(sorted(flags))


class SQLiteStore:
    """`AccountStore` and `MailStore` on one SQLite database file."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._migrate()

    # -- connections and transactions -------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreError("the store is closed")
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # only so close() can close every thread's connection
            timeout=self._busy_timeout_ms / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the write lock is taken up front (BEGIN IMMEDIATE)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            # After a failed COMMIT SQLite may already have rolled back (SQLITE_FULL, IOERR):
            # never leave this thread's connection inside a transaction, never mask the error.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def _migrate(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database {self.path} has schema version {version}, newer than this "
                    f"netpost understands ({SCHEMA_VERSION})"
                )
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[v].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {v}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    # -- domains -----------------------------------------------------------------------------

    def add_domain(self, name: str) -> None:
        d = normalize_domain(name)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM domains WHERE name = ?", (d,)).fetchone():
                raise StoreError(f"domain {d} already exists")
            conn.execute("INSERT INTO domains (name, created) VALUES (?, ?)", (d, time.time()))

    def remove_domain(self, name: str) -> None:
        d = names.normalize_domain(name)
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM domains WHERE name = ?", (d,)).fetchone():
                raise StoreError(f"unknown domain {d}")
            users = [
                r[0]
                for r in conn.execute(
                    "SELECT address FROM accounts WHERE domain = ? ORDER BY address LIMIT 4", (d,)
                )
            ]
            if users:
                more = ", ..." if len(users) > 3 else ""
                raise StoreError(
                    f"domain {d} still has users ({', '.join(users[:3])}{more}): remove them first"
                )
            aliases = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT source FROM aliases WHERE domain = ? ORDER BY source LIMIT 4",
                    (d,),
                )
            ]
            if aliases:
                more = ", ..." if len(aliases) > 3 else ""
                raise StoreError(
                    f"domain {d} still has aliases ({', '.join(aliases[:3])}{more}): "
                    "remove them first"
                )
            conn.execute("DELETE FROM domains WHERE name = ?", (d,))

    def list_domains(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT name FROM domains ORDER BY name")]

    def has_domain(self, name: str) -> bool:
        d = names.normalize_domain(name)
        return (
            self._conn().execute("SELECT 1 FROM domains WHERE name = ?", (d,)).fetchone()
            is not None
        )

    # -- accounts ----------------------------------------------------------------------------

    def add_account(self, address: str, password_hash: str) -> Account:
        a, domain = normalize_address(address)
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone():
                raise _unknown_domain(domain)
            if conn.execute("SELECT 1 FROM accounts WHERE address = ?", (a,)).fetchone():
                raise StoreError(f"user {a} already exists")
            cur = conn.execute(
                "INSERT INTO accounts (address, domain, password_hash, created) VALUES (?,?,?,?)",
                (a, domain, password_hash, time.time()),
            )
            account_id = cur.lastrowid
            assert account_id is not None
            for name, special_use in DEFAULT_MAILBOXES:
                self._create_mailbox(conn, account_id, name, special_use)
        return Account(account_id, a, password_hash)

    def remove_account(self, address: str) -> None:
        """Remove the account, its mailboxes and messages (their blobs lose a reference)."""
        a = names.normalize_address(address)
        with self._write() as conn:
            row = conn.execute("SELECT id FROM accounts WHERE address = ?", (a,)).fetchone()
            if row is None:
                raise StoreError(f"no such user {a}")
            account_id = row[0]
            conn.execute(
                """UPDATE blobs SET refcount = refcount - d.n
                   FROM (SELECT m.sha256 AS sha256, count(*) AS n
                         FROM messages m JOIN mailboxes x ON x.id = m.mailbox_id
                         WHERE x.account_id = ? GROUP BY m.sha256) AS d
                   WHERE blobs.sha256 = d.sha256""",
                (account_id,),
            )
            conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))  # cascades

    def list_accounts(self) -> list[Account]:
        rows = self._conn().execute(
            "SELECT id, address, password_hash FROM accounts ORDER BY address"
        )
        return [Account(*r) for r in rows]

    def get_account(self, address: str) -> Account | None:
        row = (
            self._conn()
            .execute(
                "SELECT id, address, password_hash FROM accounts WHERE address = ?",
                (names.normalize_address(address),),
            )
            .fetchone()
        )
        return Account(*row) if row else None

    def set_password_hash(self, address: str, password_hash: str) -> None:
        a = names.normalize_address(address)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE accounts SET password_hash = ? WHERE address = ?", (password_hash, a)
            )
            if cur.rowcount == 0:
                raise StoreError(f"no such user {a}")

    # -- aliases -----------------------------------------------------------------------------

    def add_alias(self, source: str, target: str) -> None:
        """Alias `source` (local@domain in a local domain, or '@domain' catch-all) to `target`."""
        try:
            s, domain = names.parse_alias_source(source)
        except names.InvalidDomain as exc:  # of a catch-all
            raise StoreError(f"invalid domain name {exc.text!r}") from None
        except names.InvalidAddress as exc:
            raise StoreError(f"invalid address {source!r}: {exc.reason}") from None
        t, _ = normalize_address(target)
        if s == t:
            raise StoreError(f"alias {s} cannot point to itself")
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone():
                raise _unknown_domain(domain)
            if conn.execute(
                "SELECT 1 FROM aliases WHERE source = ? AND target = ?", (s, t)
            ).fetchone():
                raise StoreError(f"alias {s} -> {t} already exists")
            conn.execute(
                "INSERT INTO aliases (source, domain, target) VALUES (?, ?, ?)", (s, domain, t)
            )

    def remove_alias(self, source: str, target: str) -> None:
        s, t = names.normalize_address(source), names.normalize_address(target)
        with self._write() as conn:
            cur = conn.execute("DELETE FROM aliases WHERE source = ? AND target = ?", (s, t))
            if cur.rowcount == 0:
                raise StoreError(f"no alias {s} -> {t}")

    def list_aliases(self) -> list[tuple[str, str]]:
        rows = self._conn().execute("SELECT source, target FROM aliases ORDER BY source, target")
        return [(r[0], r[1]) for r in rows]

    def alias_targets(self, source: str, *, catch_all: bool = True) -> list[str]:
        """Targets of the exact address, else (unless catch_all is False) of its domain's
        catch-all; [] when neither."""
        s = names.normalize_address(source)
        conn = self._conn()
        query = "SELECT target FROM aliases WHERE source = ? ORDER BY target"
        targets = [r[0] for r in conn.execute(query, (s,))]
        if catch_all and not targets and not s.startswith("@") and "@" in s:
            targets = [r[0] for r in conn.execute(query, ("@" + s.rpartition("@")[2],))]
        return targets

    # -- mailboxes ---------------------------------------------------------------------------

    def _next_uidvalidity(self, conn: sqlite3.Connection) -> int:
        """Time-derived, strictly increasing over the life of the database (RFC 3501:2.3.1.1:
        a name must never get a UIDVALIDITY it had before), 32-bit and non-zero."""
        row = conn.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        last = row[0] if row else 0
        value = max(int(time.time()), last + 1)
        if value > 0xFFFFFFFF:
            value = 1  # past 2106: start again (names must still not reuse recent values)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('uidvalidity', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (value,),
        )
        return value

    def _create_mailbox(
        self, conn: sqlite3.Connection, account_id: int, name: str, special_use: str | None
    ) -> int:
        cur = conn.execute(
            "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity) VALUES (?,?,?,?)",
            (account_id, name, special_use, self._next_uidvalidity(conn)),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def create_mailbox(self, account_id: int, name: str, special_use: str | None = None) -> Mailbox:
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone():
                raise StoreError(f"no account with id {account_id}")
            if conn.execute(
                "SELECT 1 FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, name)
            ).fetchone():
                raise StoreError(f"mailbox {name} already exists")
            self._create_mailbox(conn, account_id, name, special_use)
        mailbox = self.get_mailbox(account_id, name)
        assert mailbox is not None
        return mailbox

    _MAILBOX_COLUMNS = "id, account_id, name, special_use, uidvalidity, uidnext, highestmodseq"

    def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {self._MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = ? AND name = ?",
                (account_id, name),
            )
            .fetchone()
        )
        return Mailbox(*row) if row else None

    def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        row = (
            self._conn()
            .execute(f"SELECT {self._MAILBOX_COLUMNS} FROM mailboxes WHERE id = ?", (mailbox_id,))
            .fetchone()
        )
        return Mailbox(*row) if row else None

    def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        rows = self._conn().execute(
            f"SELECT {self._MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = ? ORDER BY id",
            (account_id,),
        )
        return [Mailbox(*r) for r in rows]

    # -- messages ----------------------------------------------------------------------------

    def deliver(self, deliveries: Sequence[Delivery]) -> list[list[int]]:
        """Append every delivery in ONE transaction; return the UIDs per delivery, in the
        order of its mailbox_ids.  Durable when it returns (WAL, synchronous=FULL)."""
        result: list[list[int]] = []
        with self._write() as conn:
            for d in deliveries:
                if not d.mailbox_ids:
                    result.append([])
                    continue
                conn.execute(
                    "INSERT INTO blobs (sha256, size, refcount) VALUES (?, ?, ?) "
                    "ON CONFLICT (sha256) DO UPDATE SET refcount = refcount + excluded.refcount",
                    (d.blob.sha256, d.blob.size, len(d.mailbox_ids)),
                )
                headers = json.dumps(d.meta.headers, ensure_ascii=False, separators=(",", ":"))
                uids: list[int] = []
                for mailbox_id in d.mailbox_ids:
                    row = conn.execute(
                        "UPDATE mailboxes SET uidnext = uidnext + 1, "
                        "highestmodseq = highestmodseq + 1 WHERE id = ? "
                        "RETURNING uidnext - 1, highestmodseq, account_id",
                        (mailbox_id,),
                    ).fetchone()
                    if row is None:
                        raise StoreError(f"no mailbox with id {mailbox_id}")
                    uid, modseq, account_id = row
                    conn.execute(
                        "INSERT INTO messages (mailbox_id, uid, sha256, size, internaldate, "
                        "modseq, flags, has_dot_lines, headers) VALUES (?,?,?,?,?,?,'',?,?)",
                        (
                            mailbox_id,
                            uid,
                            d.blob.sha256,
                            d.meta.size,
                            d.meta.internaldate,
                            modseq,
                            int(d.meta.has_dot_lines),
                            headers,
                        ),
                    )
                    conn.execute(
                        "INSERT INTO changes (account_id, modseq, mailbox_id, uid, kind) "
                        "VALUES (?, ?, ?, ?, 'append')",
                        (account_id, modseq, mailbox_id, uid),
                    )
                    uids.append(uid)
                result.append(uids)
        return result

    @staticmethod
    def _message_row(r: tuple[Any, ...]) -> MessageRow:
        mailbox_id, uid, sha, blob_size, size, internaldate, modseq, flags, dots = r
        return MessageRow(
            mailbox_id=mailbox_id,
            uid=uid,
            blob=BlobRef(sha, blob_size),
            size=size,
            internaldate=internaldate,
            modseq=modseq,
            flags=frozenset(flags.split()),
            has_dot_lines=bool(dots),
        )

    def messages(self, mailbox_id: int) -> list[MessageRow]:
        rows = self._conn().execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN blobs b ON b.sha256 = m.sha256 "
            "WHERE m.mailbox_id = ? ORDER BY m.uid",
            (mailbox_id,),
        )
        return [self._message_row(r) for r in rows]

    def maildrop(self, mailbox_id: int) -> list[tuple[int, int, str, int]]:
        """(uid, size, blob sha256, has_dot_lines) of every message, in UID order.

        The lean form of `messages()` for a POP3 login: the rows come straight from SQLite
        (primary-key order, no join, no object per row beyond the tuple).
        """
        cursor = self._conn().execute(
            "SELECT uid, size, sha256, has_dot_lines FROM messages WHERE mailbox_id = ? "
            "ORDER BY uid",
            (mailbox_id,),
        )
        return cursor.fetchall()

    def message(self, mailbox_id: int, uid: int) -> MessageRow | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages m JOIN blobs b ON b.sha256 = m.sha256 "
                "WHERE m.mailbox_id = ? AND m.uid = ?",
                (mailbox_id, uid),
            )
            .fetchone()
        )
        return self._message_row(row) if row else None

    def headers(self, mailbox_id: int, uid: int) -> dict[str, str] | None:
        """The header fields parsed at delivery (keys lower-case), or None if no such message."""
        row = (
            self._conn()
            .execute(
                "SELECT headers FROM messages WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid)
            )
            .fetchone()
        )
        if row is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else {}

    def expunge(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        """Remove these messages (those still present) under one new MODSEQ; return the UIDs
        removed, ascending."""
        wanted = sorted(set(uids))
        with self._write() as conn:
            present: list[tuple[int, str]] = []
            for uid in wanted:
                row = conn.execute(
                    "SELECT sha256 FROM messages WHERE mailbox_id = ? AND uid = ?",
                    (mailbox_id, uid),
                ).fetchone()
                if row is not None:
                    present.append((uid, row[0]))
            if not present:
                return []
            row = conn.execute(
                "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ? "
                "RETURNING highestmodseq, account_id",
                (mailbox_id,),
            ).fetchone()
            modseq, account_id = row
            conn.executemany(
                "DELETE FROM messages WHERE mailbox_id = ? AND uid = ?",
                [(mailbox_id, uid) for uid, _ in present],
            )
            conn.executemany(
                "UPDATE blobs SET refcount = refcount - 1 WHERE sha256 = ?",
                [(sha,) for _, sha in present],
            )
            conn.executemany(
                "INSERT INTO changes (account_id, modseq, mailbox_id, uid, kind) "
                "VALUES (?, ?, ?, ?, 'expunge')",
                [(account_id, modseq, mailbox_id, uid) for uid, _ in present],
            )
        return [uid for uid, _ in present]

    # -- change feed -------------------------------------------------------------------------

    def changes_since(self, account_id: int, after: int = 0, limit: int = 1000) -> list[Change]:
        """Feed entries of an account with position > `after`, oldest first."""
        rows = self._conn().execute(
            "SELECT id, account_id, mailbox_id, uid, modseq, kind FROM changes "
            "WHERE account_id = ? AND id > ? ORDER BY id LIMIT ?",
            (account_id, after, limit),
        )
        return [Change(*r) for r in rows]

    # -- blob garbage collection -------------------------------------------------------------

    def unreferenced_blobs(self) -> list[BlobRef]:
        rows = self._conn().execute("SELECT sha256, size FROM blobs WHERE refcount = 0")
        return [BlobRef(r[0], r[1]) for r in rows]

    def known_blobs(self, shas: Sequence[str]) -> set[str]:
        """Which of these blobs have a row (referenced now, or awaiting collection)."""
        conn = self._conn()
        known: set[str] = set()
        for i in range(0, len(shas), 500):
            part = shas[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = conn.execute(f"SELECT sha256 FROM blobs WHERE sha256 IN ({marks})", part)
            known.update(r[0] for r in rows)
        return known

    def forget_blob(self, sha256: str) -> bool:
        """Drop the blob's row if it is still unreferenced; True when dropped."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM blobs WHERE sha256 = ? AND refcount = 0", (sha256,))
            return cur.rowcount > 0
