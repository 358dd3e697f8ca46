"""SMTP session: drives the sans-I/O engine for the MX and submission listeners."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from netpost.auth.service import Authenticator
from netpost.mail.address import normalize_address, split_address
from netpost.mail.delivery import (
    MAX_HOPS,
    DSNParams,
    LocalDelivery,
    NotLocal,
    Recipient,
    UnknownRecipient,
)
from netpost.net.session import Engine, Session
from netpost.smtp.protocol import (
    AuthRequest,
    EtrnRequest,
    MailFrom,
    MessageData,
    RcptTo,
    Reply,
    SMTPConnection,
    SMTPSettings,
    StartTLS,
)

if TYPE_CHECKING:
    from netpost.mail.inbound import InboundChecks
    from netpost.mail.relay import Relay
    from netpost.net.stream import StreamListener

log = logging.getLogger("netpost.smtp")

OK_SENDER = Reply(250, "2.1.0", "Sender OK")
OK_RCPT = Reply(250, "2.1.5", "Recipient OK")


def refuse_line(reason: str) -> bytes:
    # RFC 5321 3.8: a server that cannot serve may answer the connection with 421.
    return f"421 4.7.0 {reason}, try again later\r\n".encode()


class SMTPSession(Session):
    """One SMTP connection on the MX or a submission listener (`settings.submission`)."""

    def __init__(self, listener: StreamListener, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: str, *, settings: SMTPSettings,
                 delivery: LocalDelivery, auth: Authenticator,
                 relay: Relay | None = None, checks: InboundChecks | None = None) -> None:
        super().__init__(listener, reader, writer, peer)
        self.relay = relay
        self.checks = checks
        self.settings = settings
        self.delivery = delivery
        self.auth = auth
        self.recipients: dict[str, Recipient] = {}
        self.dsn: dict[str, DSNParams] = {}

    def make_engine(self) -> Engine:
        settings = self.settings
        if self.listener.ssl_context is None and settings.tls_available:
            settings = dataclasses.replace(settings, tls_available=False)
        self.smtp = SMTPConnection(settings, tls_active=self.tls_active, trace=self.trace)
        return self.smtp

    def start(self) -> None:
        self.smtp.greeting()

    def say_goodbye(self, reason: str) -> None:
        if reason == "idle":
            self.smtp.close(Reply(421, "4.4.2", "Idle timeout, closing connection"))
        else:
            self.smtp.close(Reply(421, "4.3.2", "Server shutting down, try again later"))

    def in_transaction(self) -> bool:
        return self.smtp.in_transaction

    async def handle(self, event: Any) -> None:
        smtp = self.smtp
        if isinstance(event, StartTLS):
            await self.start_tls()
            return
        try:
            if isinstance(event, RcptTo):
                smtp.send(self.rcpt(event))
            elif isinstance(event, MessageData):
                smtp.send(await self.data(event))
            elif isinstance(event, EtrnRequest):
                smtp.send(await self.etrn(event.node))
            elif isinstance(event, MailFrom):
                smtp.send(self.mail_from(event.address))
            elif isinstance(event, AuthRequest):
                account = await self.auth.login(event.credentials, self.peer, "smtp")
                if account is None:
                    smtp.reject_auth()
                else:
                    smtp.accept_auth(account.address)
        except Exception:
            # A store failure (disk full, database locked too long) is the server's problem:
            # the client gets a temporary error and may retry (RFC 5321 4.2.5).
            log.exception("%s %s: cannot answer %s", self.listener.spec.name, self.peer,
                          type(event).__name__)
            if isinstance(event, AuthRequest):
                # RFC 4954 6: 454 4.7.0 Temporary authentication failure.
                smtp.reject_auth(Reply(454, "4.7.0", "Temporary authentication failure"))
            else:
                smtp.send(Reply(451, "4.3.0", "Temporary local problem, try again later"))

    def mail_from(self, address: str) -> Reply:
        self.recipients = {}
        self.dsn = {}
        user = self.smtp.authenticated_as
        if self.settings.submission and user is not None and address:
            # RFC 6409 8.1 lets a submission server check the sender: only the account's
            # own address and the aliases that deliver to it.
            if not self.delivery.owns(user, address):
                return Reply(553, "5.7.1", f"Sender address <{address}> is not owned by {user}")
        return OK_SENDER

    def rcpt(self, event: RcptTo) -> Reply:
        address = event.address
        try:
            recipient = self.delivery.resolve(address)
        except NotLocal:
            refused = self._refuse_remote(address)
            if refused is not None:
                return refused
            recipient = self.delivery.remote(address)
        except UnknownRecipient:
            return Reply(550, "5.1.1", f"<{address}>: Recipient address rejected: "
                         "no such user here")
        key = normalize_address(address)
        self.recipients[key] = recipient
        if event.notify is not None or event.orcpt is not None:
            self.dsn[recipient.address] = (event.notify, event.orcpt)
        return OK_RCPT

    async def etrn(self, node: str) -> Reply:
        """RFC 1985: start a queue run for a client domain whose mail we hold."""
        domain = node.lstrip("@").lower().rstrip(".")
        if node.startswith("#") or self.relay is None:
            return Reply(458, None, f"Unable to queue messages for node {node}")
        held = self.delivery.relay.held_domains
        # "@domain" asks for the domain and its subdomains (RFC 1985 5.2).
        wanted = [d for d in held if d == domain or (node.startswith("@")
                                                      and d.endswith("." + domain))]
        if not wanted:
            return Reply(459, None, f"Node {node} not allowed: not a client domain here")
        count = 0
        for d in wanted:
            count += await self.relay.flush_domain(d)
        if not count:
            return Reply(251, None, f"OK, no messages waiting for node {node}")
        return Reply(253, None, f"OK, {count} pending messages for node {node} started")

    def _refuse_remote(self, address: str) -> Reply | None:
        """May this session hand mail for another domain to the queue?"""
        relay = self.delivery.relay
        domain = split_address(address)[1]
        if self.settings.submission and self.smtp.authenticated_as is not None:
            if not relay.enabled:
                return Reply(550, "5.7.1", f"<{address}>: delivery to other domains is "
                             "turned off here ([relay] enabled = false); local domains only")
            if domain.startswith("["):
                return Reply(550, "5.7.1", f"<{address}>: address literals are not relayed; "
                             "use a domain name")
            return None
        if relay.enabled and relay.holds(address):
            return None  # a client domain we keep mail for until its ETRN (RFC 1985)
        # RFC 5321 3.6.2: no open relay.
        return Reply(554, "5.7.1", f"<{address}>: Relay access denied")

    async def data(self, event: MessageData) -> Reply:
        recipients = [self.recipients[normalize_address(a)] for a in event.recipients]
        if _hops(event.data) > MAX_HOPS:
            # RFC 5321 6.3: too many Received: fields means a mail loop.
            return Reply(554, "5.4.6", f"Too many hops (more than {MAX_HOPS} Received: "
                         "fields): mail loop")
        tls = self.tls_description()
        auth = self.smtp.authenticated_as
        content, junk = event.data, False
        if self.checks is not None and auth is None:
            # DKIM, SPF and DMARC (RFC 6376, 7208, 7489), reported per RFC 8601.
            verdict = await self.checks.judge(content, client_ip=self.peer,
                                              helo=self.smtp.helo_domain,
                                              mail_from=event.mail_from)
            if verdict.action == "reject":
                # RFC 7489 6.7 / 10.3: a DMARC reject is refused in the dialogue.
                return Reply(550, "5.7.1", verdict.reason)
            content = verdict.header + verdict.content
            junk = verdict.action == "quarantine"
        # RFC 3848 "with" keywords.
        proto = "ESMTP" if self.smtp.esmtp else "SMTP"
        if self.smtp.esmtp:
            proto += ("S" if tls else "") + ("A" if auth else "")
        try:
            msg_id = await self.delivery.deliver(
                content, mail_from=event.mail_from, recipients=recipients,
                helo=self.smtp.helo_domain, client_ip=self.peer, with_protocol=proto, tls=tls,
                authenticated=auth, dsn=self.dsn, ret=event.ret, envid=event.envid,
                smtputf8=event.smtputf8,
                sign_as=split_address(event.mail_from)[1] if auth and event.mail_from else None,
                junk=junk,
            )
        except Exception:
            log.exception("delivery failed")
            return Reply(451, "4.3.0", "Local error in processing, message not stored; "
                         "try again later")
        self.recipients = {}
        self.dsn = {}
        if any(r.remote for r in recipients):
            return Reply(250, "2.0.0", f"Ok: queued as {msg_id}")
        return Reply(250, "2.0.0", f"Ok: stored as {msg_id}")


def _hops(data: bytes) -> int:
    """Received: fields in the header section."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    return head.lower().count(b"\nreceived:") + head[:9].lower().startswith(b"received:")
