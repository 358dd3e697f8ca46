"""The relay: runs the outbound queue, delivering to other domains over SMTP.

A run claims the recipients that are due (`MailQueue.claim_due`: in proportion to what is
due, never the whole queue), groups them by domain, and gives each domain up to
`connections_per_domain` connections (`connections` in all).  Each connection carries as many
of the domain's messages as it can, every message with all its recipients in that domain
(RFC 5321 5.1: the MX hosts are tried in preference order, and the next host when one cannot
be reached or fails the session).  Results go back to the queue in batches (one transaction
for many recipients, as the group committer does for deliveries).

Rules (RFC 5321 4.5.4.1, 6.1; RFC 3461; RFC 3464):
- 2xx delivers the recipient; 5xx bounces it; 4xx and connection failures defer it with a
  growing wait (`first_retry` doubling up to `max_retry`) until `max_age`, then it bounces.
- A sender that is not the null reverse-path gets a DSN for a failure (and a delay notice
  after `delay_warning`) unless its NOTIFY said otherwise; a bounce is never bounced.
- At least once: a crash after the remote 250 and before the outcome is committed sends that
  message again after the restart (SMTP's own rule; RFC 5321 6.1 accepts duplicates over
  losses).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from netpost.mail import dns
from netpost.mail.dsn import RecipientStatus, build_dsn, wants_dsn
from netpost.mail.mtasts import PolicyCache, fetch_policy
from netpost.smtp import outbound
from netpost.smtp.client import OutRecipient
from netpost.store.interfaces import (
    HELD,
    BlobStore,
    MailQueue,
    Outcome,
    QueuedMessage,
    QueuedRecipient,
    QueueEntry,
)

log = logging.getLogger("netpost.relay")
Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]

CLAIM_BATCH = 500  # recipients taken from the queue at once
POLL = 5.0  # seconds between looks at the queue when nothing wakes the runner
MAX_IN_FLIGHT = 5000  # recipients claimed and not yet finished, at most
# An idle connection waits this long for more of its domain's mail before QUIT (Postfix's
# connection cache keeps one 2 s): a steady stream goes over few connections.
LINGER = 1.0
HELD_EXPIRY_EVERY = 600.0  # seconds between looks for held (ETRN) mail past max_age
# Message content held in memory by all connections at once, at most (a body in flight costs
# about twice its size: the blob and its dot-stuffed copy).  A message larger than this is
# sent alone.
CONTENT_BUDGET = 256 * 1024 * 1024


class ByteBudget:
    """Bounds the bytes of message content in memory across concurrent sends."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        async with self._changed:
            # Alone, anything fits: one oversized message never waits forever.
            await self._changed.wait_for(
                lambda: self.used == 0 or self.used + size <= self.limit)
            self.used += size
        try:
            yield
        finally:
            async with self._changed:
                self.used -= size
                self._changed.notify_all()


@dataclass(frozen=True)
class RelayOptions:
    """What the runner needs of [relay] and [server], resolved (files read, contexts made)."""

    hostname: str
    remote_port: int = 25
    smarthost: tuple[str, int] | None = None
    smarthost_auth: tuple[str, str] | None = None
    source_address: str | None = None
    tls: str = "opportunistic"
    verify_context: ssl.SSLContext | None = None  # for verify / required / MTA-STS
    mta_sts: bool = True
    mta_sts_port: int = 443
    first_retry: float = 300.0
    max_retry: float = 14400.0
    max_age: float = 432000.0
    delay_warning: float = 14400.0
    connections: int = 50
    connections_per_domain: int = 5
    timeouts: outbound.Timeouts = field(default_factory=outbound.Timeouts)
    held_domains: frozenset[str] = frozenset()


def retry_delay(attempts: int, first: float, longest: float) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: first, 2×first, … up to longest."""
    return float(min(first * 2 ** max(attempts - 1, 0), longest))


@dataclass
class _Work:
    """One message and its recipients in one domain, on the way out."""

    message: QueuedMessage
    recipients: list[QueuedRecipient]


class _RouteError(Exception):
    def __init__(self, reason: str, status: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.permanent = permanent


@dataclass(frozen=True)
class _Host:
    name: str  # the MX name (for SNI and certificate checks)
    addresses: tuple[str, ...]
    require_tls: bool  # MTA-STS enforce or [relay] tls = required
    verify: bool


# Hands a DSN to the mail system: `await notify(report, recipient)` returns once it is durably
# delivered or queued (the relay only then marks the notice sent).  Sent with the null
# reverse-path (RFC 3461 6, RFC 5321 4.5.5), so it is never bounced itself.
NoticeSender = Callable[[bytes, str], Awaitable[None]]


class Relay:
    """The queue runner (a worker: `run(stop)`), plus what ETRN and the CLI ask of it."""

    def __init__(self, queue: MailQueue, blobs: BlobStore, options: RelayOptions,
                 resolver: dns.Resolver, *, notify: NoticeSender,
                 trace: Callable[[str, str], Callable[[str, str], None]] | None = None,
                 policy_dir: Path | None = None) -> None:
        self.queue = queue
        self.blobs = blobs
        self.options = options
        self.resolver = resolver
        self.notify = notify
        self._trace = trace
        self._wake = asyncio.Event()
        self._domains: dict[str, deque[_Work]] = {}
        self._domain_tasks: dict[str, set[asyncio.Task[None]]] = {}
        self._connections = asyncio.Semaphore(options.connections)
        self._in_flight = 0
        self._outcomes: list[Outcome] = []
        self._flushing: asyncio.Task[None] | None = None
        self._flushed = asyncio.Event()
        # Resolved when the outcomes gathered in `_outcomes` now are committed (or failed to).
        self._outcomes_done: asyncio.Future[None] | None = None
        self._policies = PolicyCache(policy_dir)
        self._next_expiry = 0.0  # monotonic time of the next look for expired held mail
        self._budget = ByteBudget(CONTENT_BUDGET)
        self._arrived: dict[str, asyncio.Event] = {}  # new work for a domain's connections
        self.delivered = 0
        self.bounced = 0
        self.deferred = 0

    # -- what others ask ---------------------------------------------------------------------

    def wake(self) -> None:
        """New mail is queued (or a retry was asked for): look at the queue now."""
        self._wake.set()

    async def flush_domain(self, domain: str) -> int:
        """ETRN (RFC 1985): start delivering what waits for `domain` now; how many
        recipients."""
        domain = domain.lower()
        count = await asyncio.to_thread(self.queue.retry_now, time.time(), None, domain)
        if count:
            self.wake()
        return count

    # -- the runner --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        recovered = await asyncio.to_thread(self.queue.recover)
        if recovered:
            log.info("queue: %d recipients of an interrupted run are due again", recovered)
        try:
            while not stop.is_set():
                await self._send_notices()
                await self._expire_held()
                room = MAX_IN_FLIGHT - self._in_flight
                entries: list[QueueEntry] = []
                if room > 0:
                    entries = await asyncio.to_thread(
                        self.queue.claim_due, time.time(), min(room, CLAIM_BATCH))
                    self._dispatch(entries)
                if len(entries) >= CLAIM_BATCH and self._in_flight < MAX_IN_FLIGHT:
                    continue  # more is due: take it before sleeping
                await self._sleep(stop)
        finally:
            tasks = [t for ts in self._domain_tasks.values() for t in ts]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._flush_outcomes()
            # What was claimed and not finished waits again (state "sending" → "queued").
            await asyncio.to_thread(self.queue.recover)

    async def _expire_held(self) -> None:
        """Mail held for an ETRN that never came is bounced after `max_age`, like any other
        (RFC 5321 4.5.4.1; RFC 1985 leaves the holding time to the server)."""
        if time.monotonic() < self._next_expiry:
            return
        self._next_expiry = time.monotonic() + HELD_EXPIRY_EVERY
        cutoff = time.time() - self.options.max_age
        while True:
            entries = await asyncio.to_thread(self.queue.claim_expired_held, cutoff,
                                              CLAIM_BATCH)
            for entry in entries:
                self._in_flight += len(entry.recipients)
                days = self.options.max_age / 86400
                self._bounce(_Work(entry.message, list(entry.recipients)), entry.recipients,
                             f"held for {days:.1f} days and no ETRN asked for it", "4.4.7",
                             None)
            if len(entries) < CLAIM_BATCH:
                break
        await self._flush_outcomes()

    async def _sleep(self, stop: asyncio.Event) -> None:
        due = await asyncio.to_thread(self.queue.next_due)
        delay = POLL if due is None else max(0.0, min(POLL, due - time.time()))
        if delay <= 0 and self._in_flight < MAX_IN_FLIGHT:
            delay = 0.05  # due now: what is in flight holds it; look again soon
        self._wake.clear()
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def _dispatch(self, entries: Sequence[QueueEntry]) -> None:
        for entry in entries:
            by_domain: dict[str, list[QueuedRecipient]] = {}
            for rcpt in entry.recipients:
                by_domain.setdefault(rcpt.domain, []).append(rcpt)
            for domain, rcpts in by_domain.items():
                self._in_flight += len(rcpts)
                self._domains.setdefault(domain, deque()).append(_Work(entry.message, rcpts))
                self._start_workers(domain)
                event = self._arrived.get(domain)
                if event is not None:
                    event.set()

    def _start_workers(self, domain: str) -> None:
        tasks = self._domain_tasks.setdefault(domain, set())
        pending = self._domains[domain]
        while len(tasks) < self.options.connections_per_domain and len(tasks) < len(pending):
            task = asyncio.create_task(self._domain_worker(domain), name=f"relay {domain}")
            tasks.add(task)
            task.add_done_callback(functools.partial(self._worker_done, domain))

    def _worker_done(self, domain: str, task: asyncio.Task[None]) -> None:
        tasks = self._domain_tasks.get(domain, set())
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("relay worker for %s failed", domain, exc_info=task.exception())
        pending = self._domains.get(domain)
        if pending:
            if not tasks and not task.cancelled() and task.exception() is not None:
                # A bug, not a delivery failure: defer what it held so nothing is stuck.
                while pending:
                    work = pending.popleft()
                    self._defer(work, work.recipients, "internal error in the relay", "4.3.0",
                                None)
            else:
                self._start_workers(domain)
        elif not tasks:
            self._domains.pop(domain, None)
            self._domain_tasks.pop(domain, None)
            self._arrived.pop(domain, None)

    # -- one domain --------------------------------------------------------------------------

    async def _domain_worker(self, domain: str) -> None:
        pending = self._domains[domain]
        try:
            hosts = await self._route(domain)
        except _RouteError as e:
            while pending:
                work = pending.popleft()
                if e.permanent:
                    self._bounce(work, work.recipients, e.reason, e.status, None)
                else:
                    self._defer(work, work.recipients, e.reason, e.status, None)
            return
        while pending:
            last_error = "no MX host could be reached"
            for host, address in [(h, a) for h in hosts for a in h.addresses]:
                if not pending:
                    return
                async with self._connections:
                    error = await self._session(domain, host, address, pending)
                if error is None:
                    # This host took everything that was pending; what arrived while the
                    # connection closed starts over with the best host.
                    break
                last_error = f"{host.name}[{address}]: {error}"
            else:
                while pending:  # every host failed: try again later
                    work = pending.popleft()
                    self._defer(work, work.recipients, last_error, "4.4.1", None)

    async def _session(self, domain: str, host: _Host, address: str,
                       pending: deque[_Work]) -> str | None:
        """Deliver from `pending` over one connection; the reason it ended early, if it did."""
        o = self.options
        if host.require_tls:
            policy = outbound.TLSPolicy.REQUIRED
        elif o.tls == "none":
            policy = outbound.TLSPolicy.NONE
        else:
            policy = outbound.TLSPolicy.OPPORTUNISTIC
        context = o.verify_context if host.verify else _unverified_context()
        port = o.smarthost[1] if o.smarthost else o.remote_port
        trace = self._trace("smtp-out", f"{address}:{port}") if self._trace else None
        try:
            conn = await outbound.open_connection(
                address, port, helo=o.hostname, tls=policy, ssl_context=context,
                server_name=host.name, auth=o.smarthost_auth, timeouts=o.timeouts,
                source_address=o.source_address, trace=trace)
        except outbound.DeliveryError as e:
            return e.reason
        try:
            idle = False  # the connection waited for this work: the server may have left
            while conn.usable:
                if not pending:
                    if not await self._more_work(domain, pending):
                        break
                    idle = True
                work = pending.popleft()
                m = work.message
                try:
                    async with self._budget.hold(2 * m.blob.size):
                        content = _without_return_path(
                            await asyncio.to_thread(self.blobs.read, m.blob))
                        result = await conn.send(
                            m.mail_from,
                            [OutRecipient(r.address,
                                          tuple(sorted(r.notify)) if r.notify is not None
                                          else None,
                                          r.orcpt[1] if r.orcpt else None)
                             for r in work.recipients],
                            content, ret=m.ret, envid=m.envid, smtputf8=m.smtputf8,
                            eightbit=m.eightbit)
                        del content
                except outbound.DeliveryError as e:
                    if e.temporary:
                        pending.appendleft(work)  # the next host may take it
                        # A server may close a connection that waited idle: start over on a
                        # fresh one rather than count it as this host's failure.
                        return None if idle else e.reason
                    self._bounce(work, work.recipients, e.reason, _status(e.reply, "5.0.0"),
                                 f"{host.name}")
                    continue
                self._settle(work, result, host.name, conn.extensions.dsn)
                # The next transaction starts once this one's outcome is durable, so a crash
                # sends at most one message again per connection (not all the 250s a slow
                # commit let pile up).
                await self._committed()
                idle = False
            return None  # done, or the server ended the session (421): start over
        finally:
            with contextlib.suppress(Exception):
                await conn.aclose()

    async def _more_work(self, domain: str, pending: deque[_Work]) -> bool:
        """Wait up to LINGER for more of `domain`'s mail on an open connection."""
        event = self._arrived.setdefault(domain, asyncio.Event())
        deadline = time.monotonic() + LINGER
        while not pending:
            event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)
        return True

    def _settle(self, work: _Work, result: outbound.TransactionResult, mta: str,
                remote_dsn: bool) -> None:
        """Turn one transaction's per-recipient results into outcomes."""
        now = time.time()
        by_address = {r.address: r for r in result.recipients}
        delivered: list[QueuedRecipient] = []
        for rcpt in work.recipients:
            r = by_address.get(rcpt.address)
            if r is None:
                self._defer(work, [rcpt], "no result from the remote server", "4.4.0", mta)
                continue
            text = f"{r.code} {r.enhanced + ' ' if r.enhanced else ''}{r.text}".strip()
            status = r.enhanced or f"{r.code // 100}.0.0"
            if r.status == "delivered":
                delivered.append(rcpt)
                # RFC 3461 5.2.2: a server that relays to one without DSN sends "relayed".
                notice = ("relayed" if rcpt.notify and "SUCCESS" in rcpt.notify
                          and not remote_dsn and work.message.mail_from else None)
                self._record(Outcome(rcpt.id, "delivered", now, 0.0, text, status, mta,
                                     notice))
                self.delivered += 1
                log.info("queue %s: to=<%s> relay=%s status=sent (%s)",
                         work.message.queue_id, rcpt.address, mta, text)
            elif r.status == "permanent":
                self._bounce(work, [rcpt], text, status, mta)
            else:
                self._defer(work, [rcpt], text, status, mta)

    # -- outcomes ----------------------------------------------------------------------------

    def _bounce(self, work: _Work, rcpts: Sequence[QueuedRecipient], reason: str, status: str,
                mta: str | None) -> None:
        now = time.time()
        for rcpt in rcpts:
            notice = "failed" if self._wants(work.message, rcpt, "failed") else None
            self._record(Outcome(rcpt.id, "bounced", now, 0.0, reason, status, mta, notice))
            self.bounced += 1
            log.info("queue %s: to=<%s> relay=%s status=bounced (%s)",
                     work.message.queue_id, rcpt.address, mta or "none", reason)

    def _defer(self, work: _Work, rcpts: Sequence[QueuedRecipient], reason: str, status: str,
               mta: str | None) -> None:
        o = self.options
        now = time.time()
        age = now - work.message.arrival
        if age >= o.max_age:
            self._bounce(work, rcpts, f"gave up after {age / 86400:.1f} days; last error: "
                         f"{reason}", "4.4.7", mta)
            return
        for rcpt in rcpts:
            wait = retry_delay(rcpt.attempts + 1, o.first_retry, o.max_retry)
            next_attempt = HELD if rcpt.domain in o.held_domains else now + wait
            notice = None
            warned = rcpt.delay_notified
            if (o.delay_warning and age >= o.delay_warning and not warned
                    and self._wants(work.message, rcpt, "delayed")):
                notice, warned = "delayed", True
            self._record(Outcome(rcpt.id, "deferred", now, next_attempt, reason, status, mta,
                                 notice, warned))
            self.deferred += 1
            log.info("queue %s: to=<%s> relay=%s status=deferred (%s)",
                     work.message.queue_id, rcpt.address, mta or "none", reason)

    @staticmethod
    def _wants(message: QueuedMessage, rcpt: QueuedRecipient, action: str) -> bool:
        return bool(message.mail_from) and wants_dsn(rcpt.notify, action)

    def _record(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._in_flight -= 1
        if self._outcomes_done is None:
            self._outcomes_done = asyncio.get_running_loop().create_future()
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_outcomes())

    async def _committed(self) -> None:
        """Return when every outcome recorded so far is committed (or its commit failed)."""
        if self._outcomes_done is not None:
            await asyncio.shield(self._outcomes_done)

    async def _flush_outcomes(self) -> None:
        """Commit every outcome gathered so far in one transaction (more arrive meanwhile and
        go in the next one)."""
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []
            done, self._outcomes_done = self._outcomes_done, None
            try:
                await asyncio.to_thread(self.queue.record, batch)
            except Exception:
                # The recipients stay "sending" and are retried after a restart (recover).
                log.exception("queue: cannot record %d delivery results", len(batch))
                continue  # what arrived meanwhile has waiters: try it too
            finally:
                if done is not None and not done.done():
                    done.set_result(None)
            if any(o.notice or o.state == "deferred" for o in batch):
                self.wake()  # notices to send, or a new earliest retry to sleep until

    # -- notices (DSNs) ----------------------------------------------------------------------

    async def _send_notices(self) -> None:
        entries = await asyncio.to_thread(self.queue.pending_notices, 200)
        for entry in entries:
            try:
                await self._send_notice(entry)
            except Exception:
                log.exception("queue %s: cannot send the delivery notice",
                              entry.message.queue_id)
                return

    async def _send_notice(self, entry: QueueEntry) -> None:
        m = entry.message
        sent = [r.id for r in entry.recipients]
        if m.mail_from:
            try:
                original = await asyncio.to_thread(self.blobs.read, m.blob)
            except Exception:
                original = b""
            now = time.time()
            statuses = [
                RecipientStatus(
                    final_recipient=r.address, original_recipient=r.orcpt,
                    action=cast(Action, r.notice or "failed"), status=r.status or "5.0.0",
                    remote_mta=r.remote_mta,
                    diagnostic=f"smtp; {r.last_error}" if r.last_error else None,
                    last_attempt=r.last_attempt,
                    will_retry_until=(m.arrival + self.options.max_age
                                      if r.notice == "delayed" else None))
                for r in entry.recipients]
            report = build_dsn(reporting_mta=self.options.hostname, original=original,
                               envelope_from=m.mail_from, envid=m.envid, ret=m.ret,
                               recipients=statuses, arrival=m.arrival, now=now,
                               postmaster=f"MAILER-DAEMON@{self.options.hostname}")
            await self.notify(report, m.mail_from)
            log.info("queue %s: sent a delivery notice (%s) to <%s>", m.queue_id,
                     ", ".join(sorted({s.action for s in statuses})), m.mail_from)
        await asyncio.to_thread(self.queue.notices_sent, sent)

    # -- routing -----------------------------------------------------------------------------

    async def _route(self, domain: str) -> list[_Host]:
        """The hosts to try for `domain`, in order (RFC 5321 5.1)."""
        o = self.options
        if o.smarthost is not None:
            name = o.smarthost[0]
            try:
                addresses = [str(ipaddress.ip_address(name))]  # an address, not a name
            except ValueError:
                addresses = await self._addresses(name)
            # The smart host's password goes only over TLS to a certificate that checks out
            # (RFC 8314 4.1 asks the same of a mail client).
            secret = o.smarthost_auth is not None
            require = o.tls == "required" or (secret and o.tls != "none")
            verify = o.tls in ("verify", "required") or secret
            return [_Host(name, tuple(addresses), require, verify)]
        try:
            mxs = await self.resolver.mx(domain)
        except dns.NullMX:
            # RFC 7505 3: a domain that accepts no mail.
            raise _RouteError(f"{domain} accepts no mail (null MX, RFC 7505)", "5.1.10",
                              permanent=True) from None
        except dns.PermanentDNSError as e:
            raise _RouteError(str(e), "5.1.2", permanent=True) from None
        except dns.DNSTempError as e:
            raise _RouteError(f"DNS lookup of {domain} failed: {e}", "4.4.3",
                              permanent=False) from None
        # RFC 5321 5.1: when we are one of the MX hosts, only more preferred ones may be
        # tried; when we are the best, the mail would loop.
        ours = [m.preference for m in mxs if m.host.rstrip(".").lower() == o.hostname.lower()]
        if ours:
            mxs = [m for m in mxs if m.preference < min(ours)]
            if not mxs:
                raise _RouteError(f"mail for {domain} loops back to myself ({o.hostname} is "
                                  "its best MX)", "5.4.6", permanent=True)
        require = o.tls == "required"
        verify = o.tls in ("verify", "required")
        policy = None
        if o.mta_sts and not require:
            try:
                policy = await fetch_policy(domain, self.resolver, https_port=o.mta_sts_port,
                                            ssl_context=o.verify_context, cache=self._policies)
            except Exception:
                log.exception("MTA-STS policy of %s could not be read", domain)
        hosts: list[_Host] = []
        for mx in mxs:
            name = mx.host.rstrip(".")
            enforce = policy is not None and policy.enforce
            if enforce and policy is not None and not policy.allows_mx(name):
                log.info("MTA-STS: %s is not an MX of %s's policy; skipped", name, domain)
                continue
            try:
                addresses = await self._addresses(name)
            except _RouteError:
                continue
            hosts.append(_Host(name, tuple(addresses), require or enforce, verify or enforce))
        if not hosts:
            if policy is not None and policy.enforce:
                raise _RouteError(f"no MX host of {domain} matches its MTA-STS policy",
                                  "4.7.5", permanent=False)
            raise _RouteError(f"no address for any MX host of {domain}", "4.4.4",
                              permanent=False)
        return hosts

    async def _addresses(self, name: str) -> list[str]:
        try:
            addresses = await self.resolver.addresses(name)
        except dns.DNSTempError as e:
            raise _RouteError(f"DNS lookup of {name} failed: {e}", "4.4.3",
                              permanent=False) from None
        if not addresses:
            raise _RouteError(f"{name} has no address", "4.4.4", permanent=False)
        return addresses


def _without_return_path(content: bytes) -> bytes:
    """The message as it goes out: without the Return-Path field netpost put on top when it
    took the message (stored for local mailboxes; RFC 5321 4.4: only final delivery adds one,
    and a message sent on SHOULD NOT carry one)."""
    if content[:12].lower() == b"return-path:":
        end = content.find(b"\r\n")
        if end != -1:
            return content[end + 2:]
    return content


def _status(reply: object, default: str) -> str:
    enhanced = getattr(reply, "enhanced", None)
    return enhanced if isinstance(enhanced, str) else default


_UNVERIFIED: ssl.SSLContext | None = None


def _unverified_context() -> ssl.SSLContext:
    """RFC 7435 opportunistic TLS: encrypt even when the certificate cannot be checked
    (RFC 3207 4.1 lets a client go on with an unverified server)."""
    global _UNVERIFIED
    if _UNVERIFIED is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        _UNVERIFIED = ctx
    return _UNVERIFIED
