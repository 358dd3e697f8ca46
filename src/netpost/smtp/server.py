"""SMTP session: drives the sans-I/O engine for the MX and submission listeners."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from netpost.auth.service import Authenticator
from netpost.mail.address import normalize_address
from netpost.mail.delivery import LocalDelivery, NotLocal, Recipient, UnknownRecipient
from netpost.net.session import Engine, Session
from netpost.smtp.protocol import (
    AuthRequest,
    MailFrom,
    MessageData,
    RcptTo,
    Reply,
    SMTPConnection,
    SMTPSettings,
    StartTLS,
)

if TYPE_CHECKING:
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
                 delivery: LocalDelivery, auth: Authenticator) -> None:
        super().__init__(listener, reader, writer, peer)
        self.settings = settings
        self.delivery = delivery
        self.auth = auth
        self.recipients: dict[str, Recipient] = {}

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
                smtp.send(self.rcpt(event.address))
            elif isinstance(event, MessageData):
                smtp.send(await self.data(event))
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
        user = self.smtp.authenticated_as
        if self.settings.submission and user is not None and address:
            # RFC 6409 8.1 lets a submission server check the sender: only the account's
            # own address and the aliases that deliver to it.
            if not self.delivery.owns(user, address):
                return Reply(553, "5.7.1", f"Sender address <{address}> is not owned by {user}")
        return OK_SENDER

    def rcpt(self, address: str) -> Reply:
        try:
            recipient = self.delivery.resolve(address)
        except NotLocal:
            if self.settings.submission:
                return Reply(550, "5.7.1", f"<{address}>: delivery to other domains is not "
                             "available yet (netpost has no outbound queue); local domains only")
            # RFC 5321 3.6.2: no open relay.
            return Reply(554, "5.7.1", f"<{address}>: Relay access denied")
        except UnknownRecipient:
            return Reply(550, "5.1.1", f"<{address}>: Recipient address rejected: "
                         "no such user here")
        self.recipients[normalize_address(address)] = recipient
        return OK_RCPT

    async def data(self, event: MessageData) -> Reply:
        recipients = [self.recipients[normalize_address(a)] for a in event.recipients]
        tls = self.tls_description()
        auth = self.smtp.authenticated_as
        # RFC 3848 "with" keywords.
        proto = "ESMTP" if self.smtp.esmtp else "SMTP"
        if self.smtp.esmtp:
            proto += ("S" if tls else "") + ("A" if auth else "")
        try:
            msg_id = await self.delivery.deliver(
                event.data, mail_from=event.mail_from, recipients=recipients,
                helo=self.smtp.helo_domain, client_ip=self.peer, with_protocol=proto, tls=tls,
                authenticated=auth,
            )
        except Exception:
            log.exception("delivery failed")
            return Reply(451, "4.3.0", "Local error in processing, message not stored; "
                         "try again later")
        self.recipients = {}
        return Reply(250, "2.0.0", f"Ok: stored as {msg_id}")
