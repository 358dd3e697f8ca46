"""The outbound queue role on SQLite: messages enter with a delivery, recipients are claimed
when due, outcomes are recorded in batches, finished messages leave with their body's
reference, and what a crash interrupted is due again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netpost.store.interfaces import (
    HELD,
    BlobRef,
    Delivery,
    MessageMeta,
    OutboundEnvelope,
    OutboundRecipient,
    Outcome,
)
from netpost.store.sqlite import SQLiteStore
from netpost.store.sqlqueue import SQLiteQueue


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "mail.db"))
    s.add_domain("example.com")
    s.add_account("bob@example.com", "x")
    yield s
    s.close()


def _inbox(store: SQLiteStore) -> int:
    account = store.get_account("bob@example.com")
    assert account is not None
    box = store.get_mailbox(account.id, "INBOX")
    assert box is not None
    return box.id


def _refcount(store: SQLiteStore, sha: str) -> int | None:
    row = store._conn().execute("SELECT refcount FROM blobs WHERE sha256 = ?",
                                (sha,)).fetchone()
    return None if row is None else int(row[0])


def _queue(store: SQLiteStore, queue_id: str, recipients: list[str], *, local: bool = False,
           arrival: float = 1000.0, held: frozenset[str] = frozenset(),
           sha: str | None = None, mail_from: str = "bob@example.com") -> str:
    sha = sha or queue_id.encode().hex().ljust(64, "0")[:64]
    env = OutboundEnvelope(
        queue_id=queue_id, mail_from=mail_from, arrival=arrival,
        recipients=[OutboundRecipient(r, frozenset({"FAILURE"}) if "notify" in r else None,
                                      ("rfc822", r) if "orcpt" in r else None,
                                      held=r.split("@")[1] in held)
                    for r in recipients])
    meta = MessageMeta(size=100, internaldate=arrival)
    store.deliver([Delivery(BlobRef(sha, 100), meta, [_inbox(store)] if local else [],
                            outbound=env)])
    return sha


def test_enters_with_delivery_and_holds_one_reference(store: SQLiteStore) -> None:
    q = SQLiteQueue(store)
    sha = _queue(store, "Q1", ["a@remote.test", "b@remote.test", "c@other.test"], local=True)
    assert _refcount(store, sha) == 2  # the local copy and the queued one
    entry = q.entry("Q1")
    assert entry is not None
    assert entry.message.mail_from == "bob@example.com" and entry.message.blob.sha256 == sha
    assert [(r.address, r.domain, r.state) for r in entry.recipients] == [
        ("a@remote.test", "remote.test", "queued"), ("b@remote.test", "remote.test", "queued"),
        ("c@other.test", "other.test", "queued")]
    assert q.queue_counts() == {"queued": 3}
    assert q.next_due() == 1000.0


def test_claim_record_finish(store: SQLiteStore) -> None:
    q = SQLiteQueue(store)
    sha = _queue(store, "Q1", ["a@remote.test", "b@remote.test"])
    assert q.claim_due(999.0, 10) == []  # not due yet
    (entry,) = q.claim_due(1000.0, 10)
    assert {r.state for r in entry.recipients} == {"sending"}
    assert q.claim_due(2000.0, 10) == []  # claimed ones are not handed out twice
    a, b = entry.recipients
    q.record([Outcome(a.id, "delivered", 1001.0, error="250 ok", status="2.0.0",
                      remote_mta="mx.remote.test"),
              Outcome(b.id, "deferred", 1001.0, next_attempt=1300.0, error="451 later",
                      status="4.3.0")])
    after = q.entry("Q1")
    assert after is not None
    states = {r.address: (r.state, r.attempts, r.last_error) for r in after.recipients}
    assert states == {"a@remote.test": ("delivered", 1, "250 ok"),
                      "b@remote.test": ("deferred", 1, "451 later")}
    assert q.next_due() == 1300.0
    (again,) = q.claim_due(1300.0, 10)
    assert [r.address for r in again.recipients] == ["b@remote.test"]
    q.record([Outcome(again.recipients[0].id, "delivered", 1301.0)])
    assert q.entry("Q1") is None  # finished: gone, and its body's reference with it
    assert _refcount(store, sha) == 0
    assert q.queue_counts() == {}


def test_notice_keeps_message_until_sent(store: SQLiteStore) -> None:
    q = SQLiteQueue(store)
    sha = _queue(store, "Q1", ["x-notify@remote.test"])
    (entry,) = q.claim_due(1000.0, 10)
    q.record([Outcome(entry.recipients[0].id, "bounced", 1001.0, error="550 no such user",
                      status="5.1.1", notice="failed")])
    (pending,) = q.pending_notices(10)
    assert pending.recipients[0].notice == "failed"
    assert pending.recipients[0].notify == frozenset({"FAILURE"})
    assert _refcount(store, sha) == 1  # the DSN still needs the original
    q.notices_sent([r.id for r in pending.recipients])
    assert q.pending_notices(10) == [] and q.entry("Q1") is None
    assert _refcount(store, sha) == 0


def test_recover_after_crash(store: SQLiteStore) -> None:
    q = SQLiteQueue(store)
    _queue(store, "Q1", ["a@remote.test"])
    assert len(q.claim_due(1000.0, 10)) == 1
    # The process dies here; a new one starts.
    q2 = SQLiteQueue(store)
    assert q2.claim_due(5000.0, 10) == []
    assert q2.recover() == 1
    assert len(q2.claim_due(5000.0, 10)) == 1


def test_held_domain_waits_for_etrn(store: SQLiteStore) -> None:
    q = SQLiteQueue(store)
    _queue(store, "Q1", ["a@client.test", "b@remote.test"], held=frozenset({"client.test"}))
    (entry,) = q.claim_due(10_000.0, 10)
    assert [r.address for r in entry.recipients] == ["b@remote.test"]
    assert q.next_due() is None  # only the held one waits
    assert q.retry_now(20_000.0) == 0  # a flush of everything leaves held mail alone
    assert q.retry_now(20_000.0, domain="CLIENT.test") == 1  # ETRN for the domain
    (held,) = q.claim_due(20_000.0, 10)
    assert [r.address for r in held.recipients] == ["a@client.test"]
    assert HELD > 20_000.0


def test_expired_held_mail_is_claimed_for_bouncing(store: SQLiteStore) -> None:
    q = SQLiteQueue(store)
    held = frozenset({"client.test"})
    _queue(store, "OLD", ["a@client.test", "b@remote.test"], arrival=1000.0, held=held)
    _queue(store, "NEW", ["c@client.test"], arrival=5000.0, held=held)
    assert q.claim_expired_held(1000.0, 10) == []  # arrived at 1000, not before
    (entry,) = q.claim_expired_held(2000.0, 10)
    assert entry.message.queue_id == "OLD"
    assert [(r.address, r.state) for r in entry.recipients] == [("a@client.test", "sending")]
    assert q.claim_expired_held(2000.0, 10) == []  # claimed once
    # Due, not held, mail is the regular runner's: untouched here.
    assert [r.address for e in q.claim_due(10_000.0, 10) for r in e.recipients] == [
        "b@remote.test"]
    q.recover()
    assert [e.message.queue_id for e in q.claim_expired_held(9000.0, 10)] == ["OLD", "NEW"]


def test_claim_by_domain_and_remove(store: SQLiteStore) -> None:
    q = SQLiteQueue(store)
    sha1 = _queue(store, "Q1", ["a@one.test"])
    _queue(store, "Q2", ["b@two.test"])
    (entry,) = q.claim_due(0.0, 10, domain="two.test")  # ETRN: due or not
    assert entry.message.queue_id == "Q2"
    assert q.remove("Q1") and not q.remove("Q1")
    assert _refcount(store, sha1) == 0
    assert [e.message.queue_id for e in q.entries()] == ["Q2"]


def test_same_body_queued_twice_counts_twice(store: SQLiteStore) -> None:
    q = SQLiteQueue(store)
    _queue(store, "Q1", ["a@one.test"], sha="ab" * 32)
    _queue(store, "Q2", ["a@one.test"], sha="ab" * 32)
    assert _refcount(store, "ab" * 32) == 2
    for entry in q.claim_due(1000.0, 10):
        q.record([Outcome(r.id, "delivered", 1001.0) for r in entry.recipients])
    assert _refcount(store, "ab" * 32) == 0


def test_blob_accounting_counts_queue_references(store: SQLiteStore) -> None:
    sha = _queue(store, "Q1", ["a@one.test"], local=True)
    rows = {r[0]: r for r in store.blob_accounting()}
    assert rows[sha][2:] == (2, 2)  # refcount and references agree (netpost check)


def test_claim_is_proportional_to_due(store: SQLiteStore) -> None:
    """The due query uses the partial index (no scan of the waiting rows)."""
    plan = " ".join(str(r) for r in store._conn().execute(
        "EXPLAIN QUERY PLAN SELECT id FROM queue_recipients WHERE state IN "
        "('queued','deferred') AND next_attempt <= ? ORDER BY next_attempt LIMIT ?",
        (1.0, 10)))
    assert "queue_due" in plan and "SCAN queue_recipients" not in plan


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(1, 3),
                          st.sampled_from(["delivered", "bounced", "deferred"])),
                min_size=1, max_size=30))
def test_every_recipient_ends_once(store: SQLiteStore, plan: list[tuple[int, str]]) -> None:
    """Whatever the outcomes, a recipient is final at most once, deferred ones come back,
    and the body's reference goes exactly when nothing is left to do."""
    q = SQLiteQueue(store)
    store._conn().execute("DELETE FROM queue_messages")
    sha = "cd" * 32
    before = _refcount(store, sha) or 0
    _queue(store, f"P{len(plan)}{plan[0]}", [f"r{i}@d{i % 3}.test" for i in range(len(plan))],
           sha=sha)
    final: set[str] = set()
    now = 1000.0
    todo = list(plan)
    for _ in range(10):
        entries = q.claim_due(now, 100)
        if not entries:
            break
        outcomes = []
        for entry in entries:
            for r in entry.recipients:
                assert r.address not in final
                _, state = todo[int(r.address[1:].split("@")[0])]
                if state == "deferred" and r.attempts >= 2:
                    state = "delivered"
                if state != "deferred":
                    final.add(r.address)
                outcomes.append(Outcome(r.id, state, now, next_attempt=now + 1))  # type: ignore[arg-type]
        q.record(outcomes)
        now += 1
    assert len(final) == len(plan)
    assert q.queue_counts() == {}
    assert (_refcount(store, sha) or 0) == before
