"""POP3 session: the maildrop is the account's INBOX, seen as a snapshot taken at login."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from netpost.auth.service import Authenticator
from netpost.mail.mailboxes import Mailboxes
from netpost.net.session import Engine, Session
from netpost.pop3.protocol import (
    AuthRequest,
    MaildropEntry,
    POP3Connection,
    POP3Settings,
    Retrieve,
    StartTLS,
    Update,
)
from netpost.store.interfaces import BlobRef, MaildropRow

if TYPE_CHECKING:
    from netpost.net.stream import StreamListener

log = logging.getLogger("netpost.pop3")

FLUSH_AFTER = 4 * 1024 * 1024  # octets of queued replies before waiting for the socket
STREAM_ABOVE = 4 * 1024 * 1024  # RETR of a larger message is read and sent in parts of
STREAM_PART = 1024 * 1024
# Read-ahead for clients that download in order: the next messages up to these bounds.
READ_AHEAD = 32  # messages
READ_AHEAD_SIZE = 256 * 1024  # larger messages are read when asked for
READ_AHEAD_BYTES = 2 * 1024 * 1024  # held at most


def refuse_line(reason: str) -> bytes:
    return f"-ERR [SYS/TEMP] {reason}, try again later\r\n".encode()


class POP3Session(Session):
    """One POP3 connection; the maildrop is the INBOX as it was at login."""

    def __init__(self, listener: StreamListener, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: str, *, settings: POP3Settings,
                 hostname: str, mailboxes: Mailboxes, auth: Authenticator) -> None:
        super().__init__(listener, reader, writer, peer)
        self.settings = settings
        self.hostname = hostname
        self.mailboxes = mailboxes
        self.auth = auth
        self.mailbox_id: int | None = None
        self.unflushed = 0
        self.entries: list[MaildropEntry] = []
        self.ahead: dict[str, bytes] = {}  # contents read ahead, by sha256

    def make_engine(self) -> Engine:
        settings = self.settings
        if self.listener.ssl_context is None and settings.tls_available:
            settings = dataclasses.replace(settings, tls_available=False)
        self.pop = POP3Connection(settings, tls_active=self.tls_active, trace=self.trace)
        return self.pop

    def start(self) -> None:
        self.pop.greeting(f"{self.hostname} netpost POP3 server ready")

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
        try:
            await self._login(event)
        except Exception:
            log.exception("pop3 %s: login failed on a server error", self.peer)
            self.pop.reject_auth("[SYS/TEMP] Temporary problem, try again later")

    async def _login(self, event: AuthRequest) -> None:
        account = await self.auth.login(event.credentials, self.peer, "pop3")
        if account is None:
            self.pop.reject_auth("[AUTH] Authentication failed")
            return
        inbox = self.mailboxes.inbox(account)
        if inbox is None:
            self.pop.reject_auth("[SYS/PERM] Mailbox unavailable")
            return
        self.mailbox_id = inbox.id
        # The maildrop: one (uid, size, sha256, has_dot_lines) tuple per message, UID order;
        # the tuple is the entry's key, the handle the Retrieve handler gets back.
        # UIDL is UIDVALIDITY.UID (DESIGN.md): stable, and never reused.
        prefix = f"{inbox.uidvalidity}."
        self.entries = [MaildropEntry(row[1], prefix + str(row[0]), row)
                        for row in self.mailboxes.maildrop(inbox)]
        self.pop.accept_auth(self.entries)

    async def retrieve(self, event: Retrieve) -> None:
        key: MaildropRow = event.entry.key  # type: ignore[assignment]  # set in _login
        _uid, size, sha256, dot_lines = key
        if size > STREAM_ABOVE and event.lines is None:
            await self.stream(BlobRef(sha256, size), bool(dot_lines))
            return
        try:
            content = self.ahead.pop(sha256, None)
            if content is None and size <= READ_AHEAD_SIZE:
                # Most clients fetch every message in order: read the next few in one go.
                self.read_ahead(event.number)
                content = self.ahead.pop(sha256, None)
            if content is None:
                content = await self.mailboxes.read(BlobRef(sha256, size))
        except OSError:
            log.exception("cannot read message %s", sha256)
            self.pop.send_error("[SYS/TEMP] Message unavailable")
            return
        if len(content) != size:
            log.error("message %s has %s octets, expected %d", sha256,
                      "more" if len(content) > size else len(content), size)
            self.pop.send_error("[SYS/TEMP] Message unavailable")
            return
        # Stored messages are CRLF throughout (SMTP refuses bare CR/LF, imports are converted)
        # and has_dot_lines was recorded at delivery: the engine can skip both scans.
        self.pop.send_message(content, crlf=True, dot_lines=bool(dot_lines))
        # Backpressure: a client may pipeline thousands of RETRs and never read; once a few
        # MiB are queued, hand them to the socket and wait for it to drain.
        self.unflushed += size
        if self.unflushed > FLUSH_AFTER:
            await self.flush()

    def read_ahead(self, number: int) -> None:
        refs: list[BlobRef] = []
        total = 0
        for entry in self.entries[number - 1:number - 1 + READ_AHEAD]:
            row: MaildropRow = entry.key  # type: ignore[assignment]  # set in _login
            if row[1] > READ_AHEAD_SIZE or total + row[1] > READ_AHEAD_BYTES:
                break
            refs.append(BlobRef(row[2], row[1]))
            total += row[1]
        self.ahead = self.mailboxes.read_ahead(refs)

    async def stream(self, ref: BlobRef, dot_lines: bool) -> None:
        """RETR of a large message: read and send it in parts, never whole in memory."""
        try:
            f = await self.mailboxes.open(ref)
        except OSError:
            log.exception("cannot open message %s", ref.sha256)
            self.pop.send_error("[SYS/TEMP] Message unavailable")
            return
        try:
            self.pop.begin_message(ref.size)
            sent = 0
            while part := await asyncio.to_thread(f.read, STREAM_PART):
                sent += len(part)
                if sent > ref.size:
                    break
                self.pop.message_part(part, dot_lines=dot_lines)
                await self.flush()
            if sent != ref.size:
                # The status line promised ref.size octets: the only honest answer left is
                # to drop the connection (the client retries; nothing is deleted).
                log.error("message %s has %s octets, expected %d: dropping the session",
                          ref.sha256, "more" if sent > ref.size else sent, ref.size)
                self.writer.transport.abort()
                raise ConnectionAbortedError("message size changed under RETR")
            self.pop.end_message()
        finally:
            f.close()

    async def flush(self) -> None:
        # The engine queues a RETR reply as chunks (status, message, terminator): hand them
        # to the transport as they are (writev) instead of joining them into one copy.
        chunks = self.pop.chunks_to_send()
        self.unflushed = 0
        if chunks:
            self.writer.writelines(chunks)
            await self.writer.drain()

    async def update(self, event: Update) -> None:
        # RFC 1939 6: the UPDATE state removes the marked messages, then the session ends.
        if not event.deleted or self.mailbox_id is None:
            self.pop.update_done(True)
            return
        uids = [entry.key[0] for entry in event.deleted]  # type: ignore[index]
        try:
            await self.mailboxes.expunge(self.mailbox_id, uids)
        except Exception:
            log.exception("POP3 expunge failed")
            self.pop.update_done(False, "[SYS/TEMP] Some deleted messages not removed")
            return
        self.pop.update_done(True)
