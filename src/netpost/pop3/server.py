"""POP3 session: the maildrop is the account's INBOX, seen as a snapshot taken at login."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from netpost.net.listener import Engine, Session
from netpost.pop3.protocol import (
    AuthRequest,
    MaildropEntry,
    POP3Connection,
    POP3Settings,
    Retrieve,
    StartTLS,
    Update,
)
from netpost.store.interfaces import MessageRow

if TYPE_CHECKING:
    from netpost.server import App

log = logging.getLogger("netpost.pop3")

# Messages up to this size are read on the event loop (page cache, microseconds); bigger ones
# in a thread so that one large RETR does not stall other sessions.
INLINE_READ = 1024 * 1024


def refuse_line(reason: str) -> bytes:
    return f"-ERR [SYS/TEMP] {reason}, try again later\r\n".encode()


def uidl(uidvalidity: int, uid: int) -> str:
    # DESIGN.md: UIDL is derived from UIDVALIDITY and UID, so it is stable and never reused.
    return f"{uidvalidity}.{uid}"


class POP3Session(Session):
    app: App

    def make_engine(self) -> Engine:
        cfg = self.app.config
        settings = POP3Settings(
            tls_available=self.listener.ssl_context is not None,
            allow_plaintext_auth=cfg.auth.allow_plaintext,
            max_errors=cfg.limits.max_errors,
        )
        self.pop = POP3Connection(settings, tls_active=self.tls_active, trace=self.trace)
        self.mailbox_id: int | None = None
        return self.pop

    def start(self) -> None:
        self.pop.greeting(f"{self.app.config.server.hostname} netpost POP3 server ready")

    def say_goodbye(self, reason: str) -> None:
        # RFC 1939 6: without QUIT nothing is deleted.
        if reason == "idle":
            self.pop.close("Idle timeout, closing connection")
        else:
            self.pop.close("[SYS/TEMP] Server shutting down, nothing was deleted")

    async def handle(self, event: Any) -> None:
        if isinstance(event, Retrieve):
            await self.retrieve(event)
        elif isinstance(event, Update):
            await self.update(event)
        elif isinstance(event, AuthRequest):
            await self.login(event)
        elif isinstance(event, StartTLS):
            await self.start_tls()
        else:  # pragma: no cover - the engine has no other events
            raise TypeError(f"unexpected event {event!r}")

    async def login(self, event: AuthRequest) -> None:
        account = await self.app.login(event.credentials, self.peer, "pop3")
        if account is None:
            self.pop.reject_auth("[AUTH] Authentication failed")
            return
        mail = self.app.store
        inbox = mail.get_mailbox(account.id, "INBOX")
        if inbox is None:
            self.pop.reject_auth("[SYS/PERM] Mailbox unavailable")
            return
        self.mailbox_id = inbox.id
        rows = mail.messages(inbox.id)
        self.pop.accept_auth([
            MaildropEntry(size=row.size, uidl=uidl(inbox.uidvalidity, row.uid), key=row)
            for row in rows
        ])

    async def retrieve(self, event: Retrieve) -> None:
        row: MessageRow = event.entry.key  # type: ignore[assignment]
        blobs = self.app.blobs
        try:
            if row.size <= INLINE_READ:
                content = blobs.read(row.blob)
            else:
                content = await asyncio.to_thread(blobs.read, row.blob)
        except OSError:
            log.exception("cannot read message %s", row.blob.sha256)
            self.pop.send_error("[SYS/TEMP] Message unavailable")
            return
        if len(content) != row.size:
            log.error("message %s has %d octets, expected %d", row.blob.sha256, len(content),
                      row.size)
            self.pop.send_error("[SYS/TEMP] Message unavailable")
            return
        self.pop.send_message(content)

    async def update(self, event: Update) -> None:
        # RFC 1939 6: the UPDATE state removes the marked messages, then the session ends.
        if not event.deleted or self.mailbox_id is None:
            self.pop.update_done(True)
            return
        uids = [entry.key.uid for entry in event.deleted]  # type: ignore[attr-defined]
        try:
            await asyncio.to_thread(self.app.store.expunge, self.mailbox_id, uids)
        except Exception:
            log.exception("POP3 expunge failed")
            self.pop.update_done(False, "[SYS/TEMP] Some deleted messages not removed")
            return
        self.pop.update_done(True)
