"""Local delivery: who a recipient is, and putting a message durably in their mailboxes.

Knows nothing of wire formats: the SMTP session asks it about recipients and hands it the
message content once DATA is complete.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from netpost.mail.address import normalize_address as normalize
from netpost.mail.address import normalize_domain, split_address
from netpost.mail.message import parse_meta
from netpost.store.interfaces import (
    Accounts,
    Aliases,
    DeliveryTarget,
    Domains,
    MailboxCatalogue,
    OutboundEnvelope,
    OutboundRecipient,
)

MAX_ALIAS_DEPTH = 8
# Queue ids for Received: and the 250 reply: a random per-process prefix and a counter, so that
# ids are unique across restarts and processes without a system call per message.
_ID_PREFIX = os.urandom(3).hex().upper()
_ids = itertools.count(1)
DELIVERY_TIMEOUT = 120.0  # seconds
# Recipient lookups are cached this long: under load every message asks the same questions,
# and accounts change only through the command line (a change applies within a second).
RESOLVE_TTL = 1.0


@dataclass(frozen=True)
class Recipient:
    address: str
    mailbox_ids: tuple[int, ...]  # INBOX of every account it resolves to
    remote: tuple[str, ...] = ()  # addresses in other domains it goes to (the queue's)


@dataclass(frozen=True)
class RelayPolicy:
    """What the outbound queue takes: mail for other domains at all, and which client
    domains wait for ETRN (RFC 1985)."""

    enabled: bool = False
    held_domains: frozenset[str] = frozenset()

    def holds(self, address: str) -> bool:
        return split_address(address)[1] in self.held_domains


# RFC 3461 NOTIFY and ORCPT of one recipient, as the client gave them.
DSNParams = tuple[frozenset[str] | None, tuple[str, str] | None]
MAX_HOPS = 50  # RFC 5321 6.3: a message with more Received: fields is looping


class UnknownRecipient(Exception):
    pass


class NotLocal(Exception):
    pass


class LocalDelivery:
    def __init__(self, domains: Domains, accounts: Accounts, aliases: Aliases,
                 mailboxes: MailboxCatalogue, target: DeliveryTarget, hostname: str,
                 relay: RelayPolicy | None = None) -> None:
        self.relay = relay or RelayPolicy()
        # Called once a message with remote recipients is committed (the relay's wake-up).
        self.queued: Callable[[], None] | None = None
        # (content, domain) -> a DKIM-Signature field, or b"" when the domain has no key.
        self.signer: Callable[[bytes, str], bytes] | None = None
        self.domains = domains
        self.accounts = accounts
        self.aliases = aliases
        self.mailboxes = mailboxes
        self.target = target
        self.hostname = hostname
        self._cache: dict[str, tuple[float, Recipient | type[Exception]]] = {}

    def is_local_domain(self, domain: str) -> bool:
        return self.domains.has_domain(normalize_domain(domain))

    def resolve(self, address: str) -> Recipient:
        """The INBOXes `address` delivers to, following aliases. Raises NotLocal or
        UnknownRecipient."""
        address = normalize(address)
        now = time.monotonic()
        hit = self._cache.get(address)
        if hit is None or now - hit[0] > RESOLVE_TTL:
            if len(self._cache) > 10_000:
                self._cache.clear()
            try:
                result: Recipient | type[Exception] = self._resolve(address)
            except (NotLocal, UnknownRecipient) as exc:
                result = type(exc)
            hit = (now, result)
            self._cache[address] = hit
        if isinstance(hit[1], Recipient):
            return hit[1]
        raise hit[1](address)

    def _resolve(self, address: str) -> Recipient:
        if address == "postmaster":  # RFC 5321 4.5.1: <postmaster> without a domain
            domains = self.domains.list_domains()
            if not domains:
                raise UnknownRecipient(address)
            address = f"postmaster@{domains[0]}"
        _, domain = split_address(address)
        if not self.is_local_domain(domain):
            raise NotLocal(address)
        boxes: list[int] = []
        remote: list[str] = []
        self._expand(address, boxes, remote, set(), 0)
        if not boxes and not remote:
            raise UnknownRecipient(address)
        return Recipient(address, tuple(dict.fromkeys(boxes)), tuple(dict.fromkeys(remote)))

    def _junk(self, recipient: Recipient) -> list[int]:
        """The Junk mailbox (RFC 6154 \\Junk) of each account behind the recipient; INBOX
        where an account has none."""
        out: list[int] = []
        for inbox_id in recipient.mailbox_ids:
            inbox = self.mailboxes.get_mailbox_by_id(inbox_id)
            junk = None
            if inbox is not None:
                junk = next((m for m in self.mailboxes.list_mailboxes(inbox.account_id)
                             if m.special_use == "\\Junk"), None)
            out.append(junk.id if junk is not None else inbox_id)
        return out

    def remote(self, address: str) -> Recipient:
        """A recipient in another domain, for the outbound queue."""
        return Recipient(normalize(address), (), (normalize(address),))

    def _expand(self, address: str, boxes: list[int], remote: list[str], seen: set[str],
                depth: int) -> None:
        if address in seen or depth > MAX_ALIAS_DEPTH:
            return
        seen.add(address)
        account = self.accounts.get_account(address)
        if account is not None:
            inbox = self.mailboxes.get_mailbox(account.id, "INBOX")
            if inbox is not None:
                boxes.append(inbox.id)
            return
        for target in self.aliases.alias_targets(address):
            target = normalize(target)
            if self.is_local_domain(split_address(target)[1]):
                self._expand(target, boxes, remote, seen, depth + 1)
            elif self.relay.enabled:
                remote.append(target)  # forwarding through the queue

    def owns(self, account_address: str, sender: str) -> bool:
        """May the logged-in account use `sender` as MAIL FROM? Its own address, or an exact
        alias that delivers to it; never another account's address, never via a catch-all."""
        sender = normalize(sender)
        if sender == account_address:
            return True
        if self.accounts.get_account(sender) is not None:
            return False
        targets = self.aliases.alias_targets(sender, catch_all=False)
        return account_address in {normalize(t) for t in targets}

    async def deliver(self, content: bytes, *, mail_from: str, recipients: Sequence[Recipient],
                      helo: str | None, client_ip: str, with_protocol: str,
                      tls: str | None, authenticated: str | None,
                      dsn: Mapping[str, DSNParams] | None = None, ret: str | None = None,
                      envid: str | None = None, smtputf8: bool = False,
                      trace: bytes | None = None, sign_as: str | None = None,
                      junk: bool = False) -> str:
        """Store `content` with trace fields in every recipient's INBOX (Junk with `junk`),
        and in the outbound queue for the remote ones; durable on return.  Returns the id
        written in the Received: field.  `dsn` holds the NOTIFY/ORCPT of recipients that gave
        them, by address.  With `sign_as` (a local domain) and remote recipients, the message
        gets a DKIM signature of that domain when it has a key."""
        msg_id = f"{_ID_PREFIX}{next(_ids):06X}"
        now = time.time()
        if trace is None:
            trace = trace_fields(
                mail_from=mail_from, helo=helo, client_ip=client_ip, hostname=self.hostname,
                with_protocol=with_protocol, msg_id=msg_id, tls=tls,
                authenticated=authenticated,
                for_address=recipients[0].address if len(recipients) == 1 else None, when=now,
            )
        if sign_as is not None and self.signer is not None and any(
                r.remote for r in recipients):
            # Signed before the trace fields go on: DKIM covers the author's fields and
            # the body (RFC 6376 5.4), not Received.
            content = await asyncio.to_thread(self.signer, content, sign_as) + content
        data = trace + content
        tx = self.target.begin()
        for recipient in recipients:
            for mailbox_id in (self._junk(recipient) if junk else recipient.mailbox_ids):
                tx.add_mailbox(mailbox_id)
        outbound = self._outbound(msg_id, mail_from, recipients, data, now, dsn or {}, ret,
                                  envid, smtputf8, authenticated or client_ip)
        if outbound is not None:
            tx.add_outbound(outbound)
        tx.body(data, functools.partial(parse_meta, data, now))  # parsed off the event loop
        # A stuck disk must not hold the session forever: the client gets 451 and retries
        # (SMTP is at-least-once; a late commit then means a duplicate, never a loss).
        try:
            await asyncio.wait_for(tx.commit(), DELIVERY_TIMEOUT)
        except BaseException:
            tx.abort()
            raise
        if outbound is not None and self.queued is not None:
            self.queued()
        return msg_id

    def _outbound(self, msg_id: str, mail_from: str, recipients: Sequence[Recipient],
                  data: bytes, now: float, dsn: Mapping[str, DSNParams], ret: str | None,
                  envid: str | None, smtputf8: bool, origin: str) -> OutboundEnvelope | None:
        out: dict[str, OutboundRecipient] = {}
        for recipient in recipients:
            notify, orcpt = dsn.get(recipient.address, (None, None))
            for address in recipient.remote:
                if address in out:
                    continue
                # RFC 3461 5.2.3 (forwarding): the original recipient is kept as ORCPT.
                if orcpt is None and address != recipient.address:
                    orcpt_here: tuple[str, str] | None = ("rfc822", recipient.address)
                else:
                    orcpt_here = orcpt
                out[address] = OutboundRecipient(address, notify, orcpt_here,
                                                 held=self.relay.holds(address))
        if not out:
            return None
        needs_utf8 = smtputf8 or not mail_from.isascii() or any(
            not a.isascii() for a in out)
        return OutboundEnvelope(queue_id=msg_id, mail_from=mail_from,
                                recipients=tuple(out.values()), arrival=now, ret=ret,
                                envid=envid, smtputf8=needs_utf8, eightbit=not data.isascii(),
                                origin=origin)

    async def submit(self, content: bytes, *, mail_from: str, recipients: Sequence[str],
                     origin: str) -> str:
        """Mail netpost itself sends (delivery notices; later the web UI): to local mailboxes
        or through the queue.  Recipients that are neither are skipped (logged by the
        caller's result); raises UnknownRecipient if none is left."""
        resolved: list[Recipient] = []
        for address in recipients:
            try:
                resolved.append(self.resolve(address))
            except NotLocal:
                if self.relay.enabled:
                    resolved.append(self.remote(address))
            except UnknownRecipient:
                continue
        if not resolved:
            raise UnknownRecipient(", ".join(recipients))
        now = time.time()
        received = (f"Received: by {self.hostname} (netpost {origin}); "
                    f"{email.utils.formatdate(now, localtime=False)}\r\n")
        trace = f"Return-Path: <{mail_from}>\r\n{received}".encode()
        return await self.deliver(content, mail_from=mail_from, recipients=resolved, helo=None,
                                  client_ip="", with_protocol="local", tls=None,
                                  authenticated=None, trace=trace)


def trace_fields(*, mail_from: str, helo: str | None, client_ip: str, hostname: str,
                 with_protocol: str, msg_id: str, tls: str | None, authenticated: str | None,
                 for_address: str | None, when: float) -> bytes:
    """Return-Path and Received fields (RFC 5321 4.4; "with" keywords from RFC 3848)."""
    ip = f"IPv6:{client_ip}" if ":" in client_ip else client_ip
    received = f"Received: from {helo or 'unknown'} ([{ip}])\r\n\tby {hostname} (netpost)"
    received += f" with {with_protocol} id {msg_id}"
    comments = []
    if tls:
        comments.append(f"using {tls}")
    if authenticated:
        comments.append(f"authenticated as {authenticated}")
    if comments:
        received += "\r\n\t(" + "; ".join(comments) + ")"
    if for_address:
        received += f"\r\n\tfor <{for_address}>"
    received += "; " + email.utils.formatdate(when, localtime=False) + "\r\n"
    return f"Return-Path: <{mail_from}>\r\n{received}".encode()

