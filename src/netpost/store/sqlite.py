"""The embedded metadata store: domains, accounts, aliases, mailboxes, messages on SQLite.

It implements the roles Domains, Accounts, Aliases, MailboxCatalogue, Messages, ChangeLog
and MetadataBatches (`netpost.store.interfaces`); callers see only those roles.

WAL mode with ``synchronous=FULL``: a committed transaction is on disk (connections and write
transactions: `netpost.store.sqlitedb`).  The schema is versioned with
``PRAGMA user_version`` and created or migrated when the store is opened.

Message header fields are parsed once at delivery and kept as JSON beside the message.  Blob
reference counts live in ``blobs``; rows that reach zero are what garbage collection removes
(see `GroupCommitter.collect_garbage`, which runs it on the delivery thread so it cannot race
a delivery that reuses the same content).

Every write that changes messages also appends to ``changes`` (the account's change feed) and,
once committed, hands those entries to the publisher (`set_publisher`): commit and publish
happen under one lock, so subscribers see changes in commit order.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from netpost.mail import address as names
from netpost.store.interfaces import (
    DEFAULT_MAILBOXES,
    HIERARCHY_SEPARATOR,
    Account,
    BlobRef,
    Change,
    ChangeKind,
    Delivery,
    FlagMode,
    FlagUpdate,
    Mailbox,
    MaildropRow,
    MessageRow,
    MessageState,
    MessageSummary,
    StoreError,
)
from netpost.store.sqlitedb import DURABLE, ThreadConnections, account_id_of
from netpost.store.sqlleases import SCHEMA_V6, SCHEMA_V8
from netpost.store.sqlqueue import SCHEMA_V4, insert_outbound
from netpost.store.sqlshares import SCHEMA_V5
from netpost.store.sqltokens import SCHEMA_V7

SCHEMA_VERSION = 8

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

# v2: change-feed positions are never reused, even after the newest entries go with their
# mailbox (AUTOINCREMENT): a subscriber's cursor stays meaningful.
_SCHEMA_V2 = """
CREATE TABLE changes_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- position in the feed, never reused
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    modseq INTEGER NOT NULL,
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('append', 'expunge', 'flags'))
);
INSERT INTO changes_v2 (id, account_id, modseq, mailbox_id, uid, kind)
    SELECT id, account_id, modseq, mailbox_id, uid, kind FROM changes;
DROP TABLE changes;
ALTER TABLE changes_v2 RENAME TO changes;
CREATE INDEX changes_account ON changes(account_id, id);
CREATE INDEX changes_mailbox ON changes(mailbox_id);
"""

# v3: IMAP. \Recent belongs to the first session that sees a message (RFC 3501 2.3.2):
# recent_uid is the highest UID some session has claimed.  A storage quota per account
# (RFC 9208; NULL: the server's default).
_SCHEMA_V3 = """
ALTER TABLE mailboxes ADD COLUMN recent_uid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN quota INTEGER;
CREATE INDEX changes_mailbox_expunge ON changes(mailbox_id, modseq) WHERE kind = 'expunge';
CREATE TABLE subscriptions (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
);
INSERT INTO subscriptions (account_id, name)
    SELECT account_id, name FROM mailboxes WHERE subscribed = 1;
"""

# version -> the script that brings version - 1 to it
_MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3, 4: SCHEMA_V4,
                               5: SCHEMA_V5, 6: SCHEMA_V6, 7: SCHEMA_V7,
                               8: SCHEMA_V8}

_MESSAGE_COLUMNS = "m.mailbox_id, m.uid, m.sha256, b.size, m.size, m.internaldate, m.modseq, \
m.flags, m.has_dot_lines"


def _checked_domain(name: str) -> str:
    """The canonical form of domain `name` (rules: netpost.mail.address), or StoreError."""
    try:
        return names.parse_domain(name)
    except names.InvalidDomain:
        raise StoreError(f"invalid domain name {name!r}") from None


def _checked_address(address: str) -> tuple[str, str]:
    """(canonical address, domain) of local@domain, or StoreError."""
    try:
        return names.parse_address(address)
    except names.InvalidAddress as exc:
        raise StoreError(f"invalid address {address!r}: {exc.reason}") from None


MAX_MAILBOX_NAME = 1000  # characters; RFC 9051 sets no limit, every server has one


def _checked_mailbox_name(name: str) -> str:
    """A mailbox name as stored: non-empty hierarchy levels, no control characters; INBOX in
    any case is INBOX (RFC 9051 5.1)."""
    sep = HIERARCHY_SEPARATOR
    if not name or len(name) > MAX_MAILBOX_NAME:
        raise StoreError("a mailbox name must have 1 to 1000 characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise StoreError("a mailbox name may not contain control characters")
    if any(not level for level in name.split(sep)):
        raise StoreError(f"a mailbox name may not begin or end with {sep!r} or contain "
                         f"{sep + sep!r}")
    head, sep_found, tail = name.partition(sep)
    if head.upper() == "INBOX":
        return "INBOX" + sep_found + tail
    return name


def _unknown_domain(domain: str) -> StoreError:
    return StoreError(f"unknown domain {domain}: add it with 'netpost domain add {domain}'")


def _flags_text(flags: frozenset[str]) -> str:
    return " ".join(sorted(flags))


class SQLiteStore:
    """`AccountStore` and `MailStore` on one SQLite database file."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self._db = ThreadConnections(path, (*DURABLE, "PRAGMA foreign_keys = ON"),
                                     what="store", busy_timeout_ms=busy_timeout_ms)
        self._publish: Callable[[Sequence[Change]], None] | None = None
        self._publish_lock = threading.Lock()
        self._migrate()

    def set_publisher(self, publish: Callable[[Sequence[Change]], None] | None) -> None:
        """Call `publish` with the change-feed entries of every write, once committed."""
        self._publish = publish

    # -- connections and transactions -------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        return self._db.get()

    def _write(self, changes: list[Change] | None = None
               ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE).  The entries the body appends to `changes`
        are published once it is committed."""
        publish = self._publish
        if changes is None or publish is None:
            return self._db.write()

        def commit(conn: sqlite3.Connection) -> None:
            # Writers are serialised by SQLite's lock until COMMIT; holding this one from
            # COMMIT to the end of publish keeps the publish order the commit order.
            with self._publish_lock:
                conn.execute("COMMIT")
                if changes:
                    publish(changes)

        return self._db.write(commit)

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
        self._db.close()

    # -- domains -----------------------------------------------------------------------------

    def add_domain(self, name: str) -> None:
        d = _checked_domain(name)
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
        a, domain = _checked_address(address)
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
                conn.execute("INSERT INTO subscriptions (account_id, name) VALUES (?, ?)",
                             (account_id, name))
        return Account(account_id, a, password_hash)

    def remove_account(self, address: str) -> None:
        """Remove the account, its mailboxes and messages (their blobs lose a reference)."""
        a = names.normalize_address(address)
        with self._write() as conn:
            owner = account_id_of(conn, a)
            conn.execute(
                """UPDATE blobs SET refcount = refcount - d.n
                   FROM (SELECT m.sha256 AS sha256, count(*) AS n
                         FROM messages m JOIN mailboxes x ON x.id = m.mailbox_id
                         WHERE x.account_id = ? GROUP BY m.sha256) AS d
                   WHERE blobs.sha256 = d.sha256""",
                (owner,),
            )
            conn.execute("DELETE FROM accounts WHERE id = ?", (owner,))  # cascades

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
        t, _ = _checked_address(target)
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

    @staticmethod
    def _mailbox_exists(conn: sqlite3.Connection, account_id: int, name: str) -> bool:
        return conn.execute(
            "SELECT 1 FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, name)
        ).fetchone() is not None

    def create_mailbox(self, account_id: int, name: str, special_use: str | None = None) -> Mailbox:
        name = _checked_mailbox_name(name)
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone():
                raise StoreError(f"no account with id {account_id}")
            if self._mailbox_exists(conn, account_id, name):
                raise StoreError(f"mailbox {name} already exists")
            self._create_mailbox(conn, account_id, name, special_use)
        mailbox = self.get_mailbox(account_id, name)
        assert mailbox is not None
        return mailbox

    def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        old, new = _checked_mailbox_name(old), _checked_mailbox_name(new)
        sep = HIERARCHY_SEPARATOR
        if old == "INBOX":
            # RFC 9051 6.3.6 gives renaming INBOX its own meaning (move its messages): that is
            # the IMAP service's to do with create + move; the store never loses INBOX.
            raise StoreError("INBOX cannot be renamed")
        if new == old or new.startswith(old + sep):
            raise StoreError(f"cannot rename {old} to itself or below itself")
        with self._write() as conn:
            rows = conn.execute(
                "SELECT id, name FROM mailboxes WHERE account_id = ? AND (name = ? OR "
                "substr(name, 1, ?) = ?)",
                (account_id, old, len(old) + 1, old + sep),
            ).fetchall()
            if not any(name == old for _, name in rows):
                raise StoreError(f"no mailbox {old}")
            renames = [(mailbox_id, new + name[len(old):]) for mailbox_id, name in rows]
            for _, target in renames:
                if self._mailbox_exists(conn, account_id, target):
                    raise StoreError(f"mailbox {target} already exists")
            for mailbox_id, target in renames:
                conn.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (target, mailbox_id))
            # Subscriptions follow the mailboxes they name (what Dovecot does).
            for _, name in rows:
                conn.execute("UPDATE OR IGNORE subscriptions SET name = ? WHERE account_id = ? "
                             "AND name = ?", (new + name[len(old):], account_id, name))

    def delete_mailbox(self, account_id: int, name: str) -> None:
        name = _checked_mailbox_name(name)
        if name == "INBOX":
            raise StoreError("INBOX cannot be deleted")  # RFC 9051 6.3.4
        with self._write() as conn:
            row = conn.execute(
                "SELECT id FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, name)
            ).fetchone()
            if row is None:
                raise StoreError(f"no mailbox {name}")
            conn.execute(
                """UPDATE blobs SET refcount = refcount - d.n
                   FROM (SELECT sha256, count(*) AS n FROM messages WHERE mailbox_id = ?
                         GROUP BY sha256) AS d
                   WHERE blobs.sha256 = d.sha256""",
                (row[0],),
            )
            conn.execute("DELETE FROM mailboxes WHERE id = ?", (row[0],))  # cascades

    def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        """Subscribe to a name or not; the name need not exist (RFC 9051 6.3.7)."""
        name = _checked_mailbox_name(name)
        with self._write() as conn:
            if subscribed:
                conn.execute("INSERT OR IGNORE INTO subscriptions (account_id, name) "
                             "VALUES (?, ?)", (account_id, name))
            else:
                conn.execute("DELETE FROM subscriptions WHERE account_id = ? AND name = ?",
                             (account_id, name))

    def subscriptions(self, account_id: int) -> list[str]:
        rows = self._conn().execute(
            "SELECT name FROM subscriptions WHERE account_id = ? ORDER BY name", (account_id,))
        return [r[0] for r in rows]

    _MAILBOX_COLUMNS = ("id, account_id, name, special_use, uidvalidity, uidnext, highestmodseq, "
                        "EXISTS (SELECT 1 FROM subscriptions s WHERE s.account_id = "
                        "mailboxes.account_id AND s.name = mailboxes.name)")

    @staticmethod
    def _mailbox(row: tuple[Any, ...]) -> Mailbox:
        mailbox_id, account_id, name, special_use, uidvalidity, uidnext, modseq, sub = row
        return Mailbox(mailbox_id, account_id, name, special_use, uidvalidity, uidnext, modseq,
                       bool(sub))

    def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {self._MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = ? AND name = ?",
                (account_id, name),
            )
            .fetchone()
        )
        return self._mailbox(row) if row else None

    def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        row = (
            self._conn()
            .execute(f"SELECT {self._MAILBOX_COLUMNS} FROM mailboxes WHERE id = ?", (mailbox_id,))
            .fetchone()
        )
        return self._mailbox(row) if row else None

    def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        rows = self._conn().execute(
            f"SELECT {self._MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = ? ORDER BY id",
            (account_id,),
        )
        return [self._mailbox(r) for r in rows]

    # -- messages ----------------------------------------------------------------------------

    @staticmethod
    def _bump_modseq(conn: sqlite3.Connection, mailbox_id: int) -> tuple[int, int]:
        """A new MODSEQ for the mailbox: (modseq, account id)."""
        row = conn.execute(
            "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ? "
            "RETURNING highestmodseq, account_id",
            (mailbox_id,),
        ).fetchone()
        if row is None:
            raise StoreError(f"no mailbox with id {mailbox_id}")
        return row[0], row[1]

    def deliver(self, deliveries: Sequence[Delivery]) -> list[list[int]]:
        """Append every delivery in ONE transaction; return the UIDs per delivery, in the
        order of its mailbox_ids.  Durable when it returns (WAL, synchronous=FULL).

        Statements are per batch, not per message: each mailbox's UIDs and MODSEQs are taken
        in one UPDATE (consecutive, in delivery order, as one UPDATE per message would give),
        and the rows go in with executemany."""
        wanted: dict[int, int] = {}  # mailbox id -> UIDs needed in this batch
        refs: dict[str, list[int]] = {}  # sha256 -> [size, references added]
        for d in deliveries:
            for mailbox_id in d.mailbox_ids:
                wanted[mailbox_id] = wanted.get(mailbox_id, 0) + 1
            copies = len(d.mailbox_ids) + (d.outbound is not None)
            if copies:
                entry = refs.setdefault(d.blob.sha256, [d.blob.size, 0])
                entry[1] += copies
        result: list[list[int]] = []
        changes: list[Change] = []
        with self._write(changes) as conn:
            # mailbox id -> [next uid, next modseq, account id]
            cursor: dict[int, list[int]] = {}
            for mailbox_id, n in wanted.items():
                row = conn.execute(
                    "UPDATE mailboxes SET uidnext = uidnext + ?, highestmodseq = highestmodseq + ? "
                    "WHERE id = ? RETURNING uidnext - ?, highestmodseq - ? + 1, account_id",
                    (n, n, mailbox_id, n, n),
                ).fetchone()
                if row is None:
                    raise StoreError(f"no mailbox with id {mailbox_id}")
                cursor[mailbox_id] = list(row)
            conn.executemany(
                "INSERT INTO blobs (sha256, size, refcount) VALUES (?, ?, ?) "
                "ON CONFLICT (sha256) DO UPDATE SET refcount = refcount + excluded.refcount",
                [(sha, size, n) for sha, (size, n) in refs.items()],
            )
            messages: list[tuple[Any, ...]] = []
            feed: list[tuple[int, int, int, int]] = []  # account, modseq, mailbox, uid
            for d in deliveries:
                headers = json.dumps(d.meta.headers, ensure_ascii=False, separators=(",", ":"))
                flags = _flags_text(d.flags)
                uids: list[int] = []
                for mailbox_id in d.mailbox_ids:
                    c = cursor[mailbox_id]
                    uid, modseq, account_id = c
                    c[0] += 1
                    c[1] += 1
                    messages.append((mailbox_id, uid, d.blob.sha256, d.meta.size,
                                     d.meta.internaldate, modseq, flags,
                                     int(d.meta.has_dot_lines), headers))
                    feed.append((account_id, modseq, mailbox_id, uid))
                    uids.append(uid)
                result.append(uids)
            conn.executemany(
                "INSERT INTO messages (mailbox_id, uid, sha256, size, internaldate, "
                "modseq, flags, has_dot_lines, headers) VALUES (?,?,?,?,?,?,?,?,?)",
                messages,
            )
            for d in deliveries:
                if d.outbound is not None:
                    insert_outbound(conn, d.outbound, d.blob, d.meta.size)
            changes.extend(self._changes(conn, feed, "append"))
        return result

    @staticmethod
    def _changes(conn: sqlite3.Connection, rows: Sequence[tuple[int, int, int, int]],
                 kind: ChangeKind) -> list[Change]:
        """Append (account, modseq, mailbox, uid) entries of one kind to the change feed."""
        if not rows:
            return []
        # AUTOINCREMENT under the write lock: this transaction's entries get the positions
        # after the highest ever used, in insertion order.
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        first = (row[0] if row else 0) + 1
        conn.executemany(
            "INSERT INTO changes (account_id, modseq, mailbox_id, uid, kind) VALUES (?,?,?,?,?)",
            [(a, m, b, u, kind) for a, m, b, u in rows],
        )
        return [Change(first + i, a, b, u, m, kind) for i, (a, m, b, u) in enumerate(rows)]

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

    def maildrop(self, mailbox_id: int) -> list[MaildropRow]:
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

    @staticmethod
    def _present(conn: sqlite3.Connection, mailbox_id: int, uids: Sequence[int],
                 columns: str = "uid") -> list[tuple[Any, ...]]:
        """Rows of the messages with these UIDs that exist, in UID order."""
        out: list[tuple[Any, ...]] = []
        for uid in sorted(set(uids)):
            row = conn.execute(
                f"SELECT {columns} FROM messages WHERE mailbox_id = ? AND uid = ?",
                (mailbox_id, uid),
            ).fetchone()
            if row is not None:
                out.append(row)
        return out

    def set_flags(self, mailbox_id: int, uids: Sequence[int], flags: frozenset[str],
                  mode: FlagMode, *, unchanged_since: int | None = None) -> FlagUpdate:
        """Add, remove or replace `flags` on these messages.  Those whose flags change get
        one new MODSEQ (RFC 7162 3.1.3: one per STORE is allowed); with `unchanged_since`,
        messages with a higher MODSEQ are left alone and reported as failed."""
        changed: list[tuple[int, frozenset[str], int]] = []
        failed: list[int] = []
        changes: list[Change] = []
        with self._write(changes) as conn:
            updates: list[tuple[int, frozenset[str]]] = []
            for uid, text, modseq in self._present(conn, mailbox_id, uids, "uid, flags, modseq"):
                if unchanged_since is not None and modseq > unchanged_since:
                    failed.append(uid)
                    continue
                old = frozenset(text.split())
                if mode == "add":
                    new = old | flags
                elif mode == "remove":
                    new = old - flags
                else:
                    new = flags
                if new != old:
                    updates.append((uid, new))
            if not updates:
                return FlagUpdate(changed, failed)
            modseq, account_id = self._bump_modseq(conn, mailbox_id)
            conn.executemany(
                "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
                [(_flags_text(new), modseq, mailbox_id, uid) for uid, new in updates],
            )
            changes.extend(self._changes(
                conn, [(account_id, modseq, mailbox_id, uid) for uid, _ in updates], "flags"))
            changed.extend((uid, new, modseq) for uid, new in updates)
        return FlagUpdate(changed, failed)

    def _copy(self, conn: sqlite3.Connection, changes: list[Change], source_id: int,
              uids: Sequence[int], target_id: int) -> list[tuple[int, int]]:
        rows = self._present(conn, source_id, uids,
                             "uid, sha256, size, internaldate, flags, has_dot_lines, headers")
        if not rows:
            return []
        if conn.execute("SELECT 1 FROM mailboxes WHERE id = ?", (target_id,)).fetchone() is None:
            raise StoreError(f"no mailbox with id {target_id}")
        pairs: list[tuple[int, int]] = []
        feed: list[tuple[int, int, int, int]] = []
        for uid, sha, size, internaldate, flags, dots, headers in rows:
            new_uid, modseq, account_id = conn.execute(
                "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1 "
                "WHERE id = ? RETURNING uidnext - 1, highestmodseq, account_id",
                (target_id,),
            ).fetchone()
            conn.execute(
                "INSERT INTO messages (mailbox_id, uid, sha256, size, internaldate, modseq, "
                "flags, has_dot_lines, headers) VALUES (?,?,?,?,?,?,?,?,?)",
                (target_id, new_uid, sha, size, internaldate, modseq, flags, dots, headers),
            )
            conn.execute("UPDATE blobs SET refcount = refcount + 1 WHERE sha256 = ?", (sha,))
            feed.append((account_id, modseq, target_id, new_uid))
            pairs.append((uid, new_uid))
        changes.extend(self._changes(conn, feed, "append"))
        return pairs

    def copy(self, source_id: int, uids: Sequence[int], target_id: int) -> list[tuple[int, int]]:
        """Copy messages with their flags and internal date (RFC 9051 6.4.7)."""
        changes: list[Change] = []
        with self._write(changes) as conn:
            return self._copy(conn, changes, source_id, uids, target_id)

    def move(self, source_id: int, uids: Sequence[int], target_id: int) -> list[tuple[int, int]]:
        """Copy, then expunge from the source, in one transaction (RFC 6851 3.3)."""
        if source_id == target_id:
            raise StoreError("cannot move messages to the mailbox they are in")
        changes: list[Change] = []
        with self._write(changes) as conn:
            pairs = self._copy(conn, changes, source_id, uids, target_id)
            self._expunge(conn, changes, source_id, [uid for uid, _ in pairs])
        return pairs

    def _expunge(self, conn: sqlite3.Connection, changes: list[Change], mailbox_id: int,
                 uids: Sequence[int]) -> list[int]:
        present = self._present(conn, mailbox_id, uids, "uid, sha256")
        if not present:
            return []
        modseq, account_id = self._bump_modseq(conn, mailbox_id)
        conn.executemany(
            "DELETE FROM messages WHERE mailbox_id = ? AND uid = ?",
            [(mailbox_id, uid) for uid, _ in present],
        )
        conn.executemany(
            "UPDATE blobs SET refcount = refcount - 1 WHERE sha256 = ?",
            [(sha,) for _, sha in present],
        )
        changes.extend(self._changes(
            conn, [(account_id, modseq, mailbox_id, uid) for uid, _ in present], "expunge"))
        return [uid for uid, _ in present]

    def expunge(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        """Remove these messages (those still present) under one new MODSEQ; return the UIDs
        removed, ascending."""
        changes: list[Change] = []
        with self._write(changes) as conn:
            return self._expunge(conn, changes, mailbox_id, uids)

    # -- what IMAP sessions read --------------------------------------------------------------

    def claim_recent(self, mailbox_id: int) -> int:
        """Claim the messages no session has seen as \\Recent yet: returns the highest UID
        claimed before (messages above it are recent for the caller)."""
        with self._write() as conn:
            row = conn.execute("SELECT recent_uid, uidnext FROM mailboxes WHERE id = ?",
                               (mailbox_id,)).fetchone()
            if row is None:
                return 0
            if row[1] - 1 > row[0]:
                conn.execute("UPDATE mailboxes SET recent_uid = ? WHERE id = ?",
                             (row[1] - 1, mailbox_id))
        return int(row[0])

    def recent_mark(self, mailbox_id: int) -> int:
        row = self._conn().execute("SELECT recent_uid FROM mailboxes WHERE id = ?",
                                   (mailbox_id,)).fetchone()
        return int(row[0]) if row else 0

    def states(self, mailbox_id: int, after_uid: int = 0) -> list[MessageState]:
        """(uid, size, internaldate, modseq, flags text, sha256) of the messages with a UID
        above `after_uid`, UID order: what a selected mailbox holds (lean rows)."""
        return self._conn().execute(
            "SELECT uid, size, internaldate, modseq, flags, sha256 FROM messages "
            "WHERE mailbox_id = ? AND uid > ? ORDER BY uid", (mailbox_id, after_uid)).fetchall()

    def flag_states(self, mailbox_id: int, uids: Sequence[int]) -> list[tuple[int, str, int]]:
        """(uid, flags text, modseq) of those of these messages that exist."""
        conn = self._conn()
        out: list[tuple[int, str, int]] = []
        ordered = sorted(set(uids))
        for i in range(0, len(ordered), 500):
            part = ordered[i:i + 500]
            marks = ",".join("?" * len(part))
            out.extend(conn.execute(
                f"SELECT uid, flags, modseq FROM messages WHERE mailbox_id = ? AND uid IN "
                f"({marks})", (mailbox_id, *part)).fetchall())
        return out

    def header_texts(self, mailbox_id: int, name: str) -> list[tuple[int, str]]:
        """(uid, decoded text) of one header field kept at delivery, for every message that
        has it (SEARCH, SORT and THREAD read these instead of the messages)."""
        path = '$."' + name.replace('"', "") + '"'
        rows = self._conn().execute(
            "SELECT uid, json_extract(headers, ?) FROM messages WHERE mailbox_id = ?",
            (path, mailbox_id))
        return [(uid, text) for uid, text in rows if text is not None]

    def header_candidates(self, mailbox_id: int, name: str, needle: str, *,
                          address: bool) -> list[tuple[int, str]]:
        """(uid, text) of the messages whose kept field `name` may contain `needle` (an
        ASCII, lower-case substring): those whose printable-ASCII text contains it (SQLite's
        lower() folds ASCII as str.casefold does), plus every text that is not plain
        printable ASCII, or, for address fields, has what SEARCH also matches without
        (comments, quotes, spaces around @ < >): the caller decides on those."""
        path = '$."' + name.replace('"', "") + '"'
        # Not plain printable ASCII (more octets than characters, or a tab): Python decides.
        loose = "length(v) != length(CAST(v AS BLOB)) OR instr(v, char(9))"
        params: list[object] = [path, mailbox_id, needle]
        if address:
            # Without comments and quotes an address may match where its text does not;
            # but a needle's longest atom (no CFWS can fall inside an atom, RFC 5322 3.2.3)
            # is in the text all the same.
            core = max(re.split(r'[\s.@<>"()\\]+', needle), key=len)
            loose += (" OR ((instr(v, '(') OR instr(v, '\"') OR instr(v, ' @') OR "
                      "instr(v, '@ ') OR instr(v, ' >') OR instr(v, '< ')) "
                      "AND instr(lower(v), ?))")
            params.append(core)
        # MATERIALIZED: else SQLite inlines the json_extract at every use of v.
        return self._conn().execute(
            "WITH t AS MATERIALIZED (SELECT uid, json_extract(headers, ?) AS v FROM messages "
            "WHERE mailbox_id = ?) SELECT uid, v FROM t WHERE v IS NOT NULL AND "
            f"(instr(lower(v), ?) OR {loose})", params).fetchall()

    def expunged_since(self, mailbox_id: int, modseq: int) -> list[int]:
        """UIDs expunged from the mailbox with a MODSEQ above `modseq` (QRESYNC VANISHED)."""
        rows = self._conn().execute(
            "SELECT DISTINCT uid FROM changes WHERE mailbox_id = ? AND kind = 'expunge' AND "
            "modseq > ? ORDER BY uid", (mailbox_id, modseq))
        return [r[0] for r in rows]

    def message_page(self, mailbox_id: int, *, before_uid: int | None, limit: int
                     ) -> list[MessageSummary]:
        """Newest first from `before_uid` down: a range scan of the (mailbox_id, uid) primary
        key that stops after `limit` rows, whatever the mailbox's size."""
        rows = self._conn().execute(
            "SELECT uid, size, internaldate, modseq, flags, headers FROM messages "
            "WHERE mailbox_id = ? AND uid < ? ORDER BY uid DESC LIMIT ?",
            (mailbox_id, before_uid if before_uid is not None else 2 ** 62, limit)).fetchall()
        out: list[MessageSummary] = []
        for uid, size, internaldate, modseq, flags, headers in rows:
            parsed = json.loads(headers)
            out.append(MessageSummary(uid, size, internaldate, modseq, frozenset(flags.split()),
                                      parsed if isinstance(parsed, dict) else {}))
        return out

    def message_count(self, mailbox_id: int) -> int:
        row = self._conn().execute("SELECT count(*) FROM messages WHERE mailbox_id = ?",
                                   (mailbox_id,)).fetchone()
        return int(row[0])

    def mailbox_counts(self, mailbox_id: int) -> tuple[int, int, int, int]:
        """(messages, unseen, octets, deleted) of a mailbox (STATUS)."""
        row = self._conn().execute(
            "SELECT count(*), "
            "coalesce(sum(instr(' ' || flags || ' ', ' \\Seen ') = 0), 0), "
            "coalesce(sum(size), 0), "
            "coalesce(sum(instr(' ' || flags || ' ', ' \\Deleted ') > 0), 0) "
            "FROM messages WHERE mailbox_id = ?", (mailbox_id,)).fetchone()
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def account_usage(self, account_id: int) -> tuple[int, int]:
        """(octets, messages) stored in all of an account's mailboxes (QUOTA)."""
        row = self._conn().execute(
            "SELECT coalesce(sum(m.size), 0), count(*) FROM messages m JOIN mailboxes x ON "
            "x.id = m.mailbox_id WHERE x.account_id = ?", (account_id,)).fetchone()
        return int(row[0]), int(row[1])

    def account_quota(self, account_id: int) -> int | None:
        row = self._conn().execute("SELECT quota FROM accounts WHERE id = ?",
                                   (account_id,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def set_account_quota(self, address: str, octets: int | None) -> None:
        with self._write() as conn:
            cur = conn.execute("UPDATE accounts SET quota = ? WHERE address = ?",
                               (octets, address.lower()))
            if cur.rowcount == 0:
                raise StoreError(f"no account {address}")

    # -- change log --------------------------------------------------------------------------

    def changes_since(self, account_id: int, after: int = 0, limit: int = 1000) -> list[Change]:
        """Feed entries of an account with position > `after`, oldest first."""
        rows = self._conn().execute(
            "SELECT id, account_id, mailbox_id, uid, modseq, kind FROM changes "
            "WHERE account_id = ? AND id > ? ORDER BY id LIMIT ?",
            (account_id, after, limit),
        )
        return [Change(*r) for r in rows]

    def last_change(self, account_id: int) -> int:
        row = self._conn().execute(
            "SELECT max(id) FROM changes WHERE account_id = ?", (account_id,)).fetchone()
        return int(row[0] or 0)

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

    def forget_blobs(self, shas: Sequence[str]) -> int:
        """Drop the rows of these blobs that are still unreferenced; return how many."""
        if not shas:
            return 0
        with self._write() as conn:
            gone = 0
            for sha in shas:
                cur = conn.execute("DELETE FROM blobs WHERE sha256 = ? AND refcount = 0", (sha,))
                gone += cur.rowcount
            return gone

    # -- consistency checks (netpost check) --------------------------------------------------

    def blob_accounting(self) -> list[tuple[str, int, int, int]]:
        """(sha256, size, refcount, messages and queued messages referencing it) for every
        blob row, and for every digest referenced without a row (size from the message,
        refcount -1)."""
        conn = self._conn()
        rows = conn.execute(
            "SELECT b.sha256, b.size, b.refcount, "
            "(SELECT count(*) FROM messages m WHERE m.sha256 = b.sha256) + "
            "(SELECT count(*) FROM queue_messages q WHERE q.sha256 = b.sha256) FROM blobs b "
            "ORDER BY b.sha256").fetchall()
        missing = conn.execute(
            "SELECT sha256, max(size), -1, count(*) FROM "
            "(SELECT sha256, size FROM messages UNION ALL "
            " SELECT sha256, size FROM queue_messages) AS m "
            "WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = m.sha256) "
            "GROUP BY sha256").fetchall()
        return [tuple(r) for r in rows + missing]

    def repair_refcount(self, sha256: str, size: int, count: int) -> None:
        """Make the blob's row say `count` references (creating the row if it is missing)."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO blobs (sha256, size, refcount) VALUES (?, ?, ?) "
                "ON CONFLICT (sha256) DO UPDATE SET refcount = excluded.refcount",
                (sha256, size, count))

    def messages_with_blob(self, sha256: str) -> list[tuple[str, str, int]]:
        """(account, mailbox, uid) of every message whose content is this blob."""
        rows = self._conn().execute(
            "SELECT a.address, x.name, m.uid FROM messages m "
            "JOIN mailboxes x ON x.id = m.mailbox_id JOIN accounts a ON a.id = x.account_id "
            "WHERE m.sha256 = ? ORDER BY a.address, x.name, m.uid", (sha256,))
        return [(r[0], r[1], r[2]) for r in rows]
