"""The outbound queue on the embedded store's SQLite database (the `MailQueue` role).

A queued message is one row in ``queue_messages`` holding one reference to its body blob, and
one row per remote recipient in ``queue_recipients`` with that recipient's state.  Messages
enter with a delivery (`insert_outbound`, called inside `SQLiteStore.deliver`'s transaction),
so a 250 for a message with local and remote recipients covers both.

Picking due work uses the partial index on (next_attempt) over waiting rows, so a queue run
costs in proportion to what is due, not to the queue's size.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from netpost.store.interfaces import (
    HELD,
    BlobRef,
    OutboundEnvelope,
    Outcome,
    QueuedMessage,
    QueuedRecipient,
    QueueEntry,
    QueueState,
)

if TYPE_CHECKING:
    from netpost.store.sqlite import SQLiteStore

# v4: the outbound queue.
SCHEMA_V4 = """
CREATE TABLE queue_messages (
    id INTEGER PRIMARY KEY,
    queue_id TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL REFERENCES blobs(sha256),
    size INTEGER NOT NULL,
    mail_from TEXT NOT NULL,
    arrival REAL NOT NULL,
    ret TEXT,
    envid TEXT,
    smtputf8 INTEGER NOT NULL,
    eightbit INTEGER NOT NULL,
    origin TEXT NOT NULL DEFAULT ''
);
CREATE TABLE queue_recipients (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    notify TEXT,          -- comma-separated RFC 3461 NOTIFY values, NULL if not given
    orcpt_type TEXT,
    orcpt TEXT,
    state TEXT NOT NULL CHECK (state IN ('queued','deferred','sending','delivered','bounced')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_attempt REAL,
    last_error TEXT,
    status TEXT,
    remote_mta TEXT,
    delay_notified INTEGER NOT NULL DEFAULT 0,
    notice TEXT           -- a DSN still to send: failed / delayed / delivered / relayed
);
CREATE INDEX queue_due ON queue_recipients(next_attempt) WHERE state IN ('queued','deferred');
CREATE INDEX queue_domain ON queue_recipients(domain, next_attempt)
    WHERE state IN ('queued','deferred');
CREATE INDEX queue_sending ON queue_recipients(id) WHERE state = 'sending';
CREATE INDEX queue_notice ON queue_recipients(message_id) WHERE notice IS NOT NULL;
CREATE INDEX queue_message ON queue_recipients(message_id);
"""

_MESSAGE = ("m.id, m.queue_id, m.sha256, m.size, m.mail_from, m.arrival, m.ret, m.envid, "
            "m.smtputf8, m.eightbit, m.origin")
_RECIPIENT = ("r.id, r.message_id, r.address, r.domain, r.notify, r.orcpt_type, r.orcpt, "
              "r.state, r.attempts, r.next_attempt, r.last_attempt, r.last_error, r.status, "
              "r.remote_mta, r.delay_notified, r.notice")
_RETURNING = _RECIPIENT.replace("r.", "")
_CHUNK = 500  # host parameters per IN (...) list


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def insert_outbound(conn: sqlite3.Connection, envelope: OutboundEnvelope, blob: BlobRef,
                    size: int) -> None:
    """Queue one message inside the caller's write transaction (the caller has counted the
    body reference in ``blobs``)."""
    e = envelope
    row = conn.execute(
        "INSERT INTO queue_messages (queue_id, sha256, size, mail_from, arrival, ret, envid, "
        "smtputf8, eightbit, origin) VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING id",
        (e.queue_id, blob.sha256, size, e.mail_from, e.arrival, e.ret, e.envid,
         int(e.smtputf8), int(e.eightbit), e.origin),
    ).fetchone()
    conn.executemany(
        "INSERT INTO queue_recipients (message_id, address, domain, notify, orcpt_type, orcpt, "
        "state, next_attempt) VALUES (?,?,?,?,?,?,'queued',?)",
        [(row[0], r.address, _domain(r.address),
          ",".join(sorted(r.notify)) if r.notify is not None else None,
          r.orcpt[0] if r.orcpt else None, r.orcpt[1] if r.orcpt else None,
          HELD if r.held else e.arrival)
         for r in e.recipients],
    )


def _message(r: Sequence[Any]) -> QueuedMessage:
    return QueuedMessage(id=r[0], queue_id=r[1], blob=BlobRef(r[2], r[3]), mail_from=r[4],
                         arrival=r[5], ret=r[6], envid=r[7], smtputf8=bool(r[8]),
                         eightbit=bool(r[9]), origin=r[10])


def _recipient(r: Sequence[Any]) -> QueuedRecipient:
    notify = frozenset(r[4].split(",")) if r[4] is not None else None
    if notify is not None and "" in notify:
        notify = frozenset()
    orcpt = (r[5], r[6]) if r[5] is not None else None
    state: QueueState = r[7]
    return QueuedRecipient(id=r[0], message_id=r[1], address=r[2], domain=r[3], notify=notify,
                           orcpt=orcpt, state=state, attempts=r[8], next_attempt=r[9],
                           last_attempt=r[10], last_error=r[11], status=r[12],
                           remote_mta=r[13], delay_notified=bool(r[14]), notice=r[15])


class SQLiteQueue:
    """`MailQueue` over the tables above, sharing the store's connections and write lock."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def _conn(self) -> sqlite3.Connection:
        return self._store._conn()

    def _entries(self, conn: sqlite3.Connection, rows: list[Sequence[Any]]) -> list[QueueEntry]:
        """Group recipient rows by message, in the order the messages first appear."""
        by_message: dict[int, list[QueuedRecipient]] = {}
        for r in rows:
            rcpt = _recipient(r)
            by_message.setdefault(rcpt.message_id, []).append(rcpt)
        ids = list(by_message)
        messages: dict[int, QueuedMessage] = {}
        for i in range(0, len(ids), _CHUNK):
            part = ids[i : i + _CHUNK]
            marks = ",".join("?" * len(part))
            for m in conn.execute(f"SELECT {_MESSAGE} FROM queue_messages m "
                                  f"WHERE m.id IN ({marks})", part):
                messages[m[0]] = _message(m)
        return [QueueEntry(messages[i], by_message[i]) for i in ids if i in messages]

    def recover(self) -> int:
        with self._store._db.write() as conn:
            cur = conn.execute("UPDATE queue_recipients SET state = 'queued' "
                               "WHERE state = 'sending'")
            return cur.rowcount

    def claim_due(self, now: float, limit: int, domain: str | None = None) -> list[QueueEntry]:
        with self._store._db.write() as conn:
            if domain is None:
                rows = conn.execute(
                    "UPDATE queue_recipients SET state = 'sending' WHERE id IN ("
                    "SELECT id FROM queue_recipients WHERE state IN ('queued','deferred') "
                    "AND next_attempt <= ? ORDER BY next_attempt LIMIT ?) "
                    f"RETURNING {_RETURNING}", (now, limit)).fetchall()
            else:
                rows = conn.execute(
                    "UPDATE queue_recipients SET state = 'sending' WHERE id IN ("
                    "SELECT id FROM queue_recipients WHERE state IN ('queued','deferred') "
                    "AND domain = ? ORDER BY next_attempt LIMIT ?) "
                    f"RETURNING {_RETURNING}", (domain.lower(), limit)).fetchall()
            rows.sort(key=lambda r: (r[1], r[0]))
            return self._entries(conn, rows)

    def claim_expired_held(self, arrived_before: float, limit: int) -> list[QueueEntry]:
        # The held rows sit at the top of the queue_due index: the scan reads only them.
        with self._store._db.write() as conn:
            rows = conn.execute(
                "UPDATE queue_recipients SET state = 'sending' WHERE id IN ("
                "SELECT r.id FROM queue_recipients r JOIN queue_messages m "
                "ON m.id = r.message_id WHERE r.state IN ('queued','deferred') "
                "AND r.next_attempt >= ? AND m.arrival < ? LIMIT ?) "
                f"RETURNING {_RETURNING}", (HELD, arrived_before, limit)).fetchall()
            rows.sort(key=lambda r: (r[1], r[0]))
            return self._entries(conn, rows)

    def next_due(self) -> float | None:
        row = self._conn().execute(
            "SELECT min(next_attempt) FROM queue_recipients "
            "WHERE state IN ('queued','deferred')").fetchone()
        if row[0] is None or row[0] >= HELD:
            return None
        return float(row[0])

    def record(self, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        with self._store._db.write() as conn:
            conn.executemany(
                "UPDATE queue_recipients SET state = ?, attempts = attempts + 1, "
                "next_attempt = ?, last_attempt = ?, last_error = ?, status = ?, "
                "remote_mta = coalesce(?, remote_mta), "
                "delay_notified = max(delay_notified, ?), notice = coalesce(?, notice) "
                "WHERE id = ?",
                [(o.state, o.next_attempt, o.when, o.error, o.status, o.remote_mta,
                  int(o.delay_notified), o.notice, o.recipient_id) for o in outcomes],
            )
            self._finish(conn, [o.recipient_id for o in outcomes])

    def _finish(self, conn: sqlite3.Connection, recipient_ids: Sequence[int]) -> None:
        """Remove the messages of these recipients that have nothing left to do."""
        message_ids: set[int] = set()
        for i in range(0, len(recipient_ids), _CHUNK):
            part = list(recipient_ids[i : i + _CHUNK])
            marks = ",".join("?" * len(part))
            message_ids.update(r[0] for r in conn.execute(
                f"SELECT DISTINCT message_id FROM queue_recipients WHERE id IN ({marks})",
                part))
        done = [mid for mid in message_ids if conn.execute(
            "SELECT 1 FROM queue_recipients WHERE message_id = ? AND "
            "(state IN ('queued','deferred','sending') OR notice IS NOT NULL) LIMIT 1",
            (mid,)).fetchone() is None]
        self._delete(conn, done)

    @staticmethod
    def _delete(conn: sqlite3.Connection, message_ids: Sequence[int]) -> None:
        for mid in message_ids:
            row = conn.execute("DELETE FROM queue_messages WHERE id = ? RETURNING sha256",
                               (mid,)).fetchone()
            if row is not None:  # its recipients go by ON DELETE CASCADE
                conn.execute("UPDATE blobs SET refcount = refcount - 1 WHERE sha256 = ?",
                             (row[0],))

    def pending_notices(self, limit: int) -> list[QueueEntry]:
        conn = self._conn()
        rows = conn.execute(
            f"SELECT {_RECIPIENT} FROM queue_recipients r WHERE r.notice IS NOT NULL "
            "ORDER BY r.message_id, r.id LIMIT ?", (limit,)).fetchall()
        return self._entries(conn, rows)

    def notices_sent(self, recipient_ids: Sequence[int]) -> None:
        if not recipient_ids:
            return
        with self._store._db.write() as conn:
            conn.executemany("UPDATE queue_recipients SET notice = NULL WHERE id = ?",
                             [(i,) for i in recipient_ids])
            self._finish(conn, recipient_ids)

    def entries(self, limit: int = 1000, after_id: int = 0) -> list[QueueEntry]:
        conn = self._conn()
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM queue_messages WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))]
        out: list[QueueEntry] = []
        for mid in ids:
            entry = self._entry(conn, mid)
            if entry is not None:
                out.append(entry)
        return out

    def _entry(self, conn: sqlite3.Connection, message_id: int) -> QueueEntry | None:
        m = conn.execute(f"SELECT {_MESSAGE} FROM queue_messages m WHERE m.id = ?",
                         (message_id,)).fetchone()
        if m is None:
            return None
        rows = conn.execute(f"SELECT {_RECIPIENT} FROM queue_recipients r "
                            "WHERE r.message_id = ? ORDER BY r.id", (message_id,)).fetchall()
        return QueueEntry(_message(m), [_recipient(r) for r in rows])

    def entry(self, queue_id: str) -> QueueEntry | None:
        conn = self._conn()
        row = conn.execute("SELECT id FROM queue_messages WHERE queue_id = ?",
                           (queue_id,)).fetchone()
        return None if row is None else self._entry(conn, row[0])

    def retry_now(self, now: float, queue_id: str | None = None,
                  domain: str | None = None) -> int:
        sql = ("UPDATE queue_recipients SET next_attempt = ? "
               "WHERE state IN ('queued','deferred')")
        args: list[Any] = [now]
        if queue_id is None and domain is None:
            sql += f" AND next_attempt < {HELD!r}"  # held ones wait for their ETRN
        if queue_id is not None:
            sql += " AND message_id = (SELECT id FROM queue_messages WHERE queue_id = ?)"
            args.append(queue_id)
        if domain is not None:
            sql += " AND domain = ?"
            args.append(domain.lower())
        with self._store._db.write() as conn:
            return conn.execute(sql, args).rowcount

    def remove(self, queue_id: str) -> bool:
        with self._store._db.write() as conn:
            row = conn.execute("SELECT id FROM queue_messages WHERE queue_id = ?",
                               (queue_id,)).fetchone()
            if row is None:
                return False
            self._delete(conn, [row[0]])
            return True

    def queue_counts(self) -> dict[str, int]:
        rows = self._conn().execute(
            "SELECT state, count(*) FROM queue_recipients GROUP BY state")
        return {r[0]: r[1] for r in rows}
