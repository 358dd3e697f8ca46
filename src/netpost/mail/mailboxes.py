"""The mailbox service: what reading clients (POP3 now, IMAP next) do with an account's mail.

It knows the mail model (INBOX, UIDs, flags) and nothing of wire formats; it reaches the
store only through its roles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import BinaryIO

from netpost.mail.message import parse_meta, to_crlf
from netpost.store.interfaces import (
    Account,
    BlobRef,
    BlobStore,
    ChangeFeed,
    DeliveryTarget,
    FlagMode,
    FlagUpdate,
    Mailbox,
    MailboxCatalogue,
    MaildropRow,
    Messages,
    Subscription,
)

# Bodies up to this size are read on the event loop (page cache, microseconds); bigger ones
# in a thread so that one large read does not stall other sessions.
INLINE_READ = 1024 * 1024


class Mailboxes:
    def __init__(self, catalogue: MailboxCatalogue, messages: Messages, blobs: BlobStore,
                 changes: ChangeFeed, target: DeliveryTarget) -> None:
        self.catalogue = catalogue
        self.messages = messages
        self.blobs = blobs
        self.changes = changes
        self.target = target
        # Keywords defined in each mailbox (mailbox id -> names), as this process has seen
        # them set: IMAP's FLAGS response lists them for every session alike, also after the
        # messages that had them are gone (as Dovecot keeps a mailbox's keyword list).
        self.keywords: dict[int, set[str]] = {}

    async def append(self, mailbox: Mailbox, content: bytes, *,
                     flags: frozenset[str] = frozenset(),
                     internaldate: float | None = None) -> int:
        """Store a message a client hands over (IMAP APPEND, an import) with its flags and
        internal date; durable when it returns the new UID.  Line ends become CRLF."""
        data = to_crlf(content)
        tx = self.target.begin()
        tx.add_mailbox(mailbox.id)
        tx.body(data, parse_meta(data, time.time() if internaldate is None else internaldate),
                flags)
        try:
            (uid,) = await tx.commit()
        except BaseException:
            tx.abort()
            raise
        return uid

    def inbox(self, account: Account) -> Mailbox | None:
        return self.catalogue.get_mailbox(account.id, "INBOX")

    def maildrop(self, mailbox: Mailbox) -> list[MaildropRow]:
        """(uid, size, sha256, has_dot_lines) of every message, UID order (POP3's view)."""
        return self.messages.maildrop(mailbox.id)

    async def read(self, ref: BlobRef) -> bytes:
        """A message's content (the caller checks the length against ref.size)."""
        if ref.size <= INLINE_READ:
            return self.blobs.read(ref)
        return await asyncio.to_thread(self.blobs.read, ref)

    def read_ahead(self, refs: Sequence[BlobRef]) -> dict[str, bytes]:
        """Several small messages' content at once (sha256 -> content), on the event loop:
        for a client that downloads one message after another (one query instead of many)."""
        return self.blobs.read_many([r for r in refs if r.size <= INLINE_READ])

    async def open(self, ref: BlobRef) -> BinaryIO:
        """A message's content for reading in parts (large messages)."""
        return await asyncio.to_thread(self.blobs.open, ref)

    async def expunge(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        return await asyncio.to_thread(self.messages.expunge, mailbox_id, uids)

    async def set_flags(self, mailbox_id: int, uids: Sequence[int], flags: frozenset[str],
                        mode: FlagMode, *, unchanged_since: int | None = None) -> FlagUpdate:
        return await asyncio.to_thread(self.messages.set_flags, mailbox_id, uids, flags, mode,
                                       unchanged_since=unchanged_since)

    def watch(self, account: Account, *, after: int | None = None) -> Subscription:
        """The account's changes from now on (or after feed position `after`)."""
        return self.changes.subscribe(account.id, after=after)
