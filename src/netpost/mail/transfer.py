"""Bulk import and export of a mailbox (mbox, Maildir), through the store roles.

Import is resumable and never makes a duplicate: a message whose content (its sha256, after the
mbox's own fields are taken off and line ends made CRLF) is already in the target mailbox is
skipped, so running the same import again, or after a crash, adds only what is missing.  A
message that appears twice in the same file is imported once.  Messages are committed through
the group committer in batches of 1,000, with two batches in flight, so a crash loses at most
what was not yet committed and the next run picks it up.

Export writes mbox (mboxrd, flags in Status/X-Status/X-Keywords; to a temporary file renamed
at the end) or Maildir (one file per message with a name derived from UIDVALIDITY and UID, so
a second export writes only what the first did not).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from netpost.mail.mailfiles import (
    FileMessage,
    maildir_base,
    make_maildir,
    mbox_entry,
    write_maildir,
)
from netpost.mail.message import parse_meta
from netpost.store.interfaces import BlobStore, DeliveryTarget, Mailbox, Messages, blob_ref

BATCH = 1000
IN_FLIGHT = 2


@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0  # already in the mailbox (an earlier run, or twice in the file)
    seconds: float = 0.0


async def import_messages(messages: Iterable[FileMessage], *, mailbox: Mailbox,
                          target: DeliveryTarget, existing: set[str],
                          progress: Callable[[ImportReport], None] | None = None,
                          batch: int = BATCH) -> ImportReport:
    """Append every message not already in `mailbox` (`existing`: the sha256 of those)."""
    report = ImportReport()
    started = time.monotonic()
    inflight: list[asyncio.Future[list[list[int]]]] = []
    pending: list[Awaitable[list[int]]] = []
    now = time.time()

    async def drain(keep: int) -> None:
        while len(inflight) > keep:
            await inflight.pop(0)
            if progress is not None:
                progress(report)

    for message in messages:
        sha = blob_ref(message.content).sha256
        if sha in existing:
            report.skipped += 1
            continue
        existing.add(sha)
        tx = target.begin()
        tx.add_mailbox(mailbox.id)
        date = message.internaldate if message.internaldate is not None else now
        # Headers are parsed on the committer's thread, beside this one reading the file.
        tx.body(message.content, functools.partial(parse_meta, message.content, date),
                message.flags)
        pending.append(tx.commit())
        report.imported += 1
        if len(pending) >= batch:
            inflight.append(asyncio.gather(*pending))
            pending = []
            await drain(IN_FLIGHT - 1)
    if pending:
        inflight.append(asyncio.gather(*pending))
    await drain(0)
    report.seconds = time.monotonic() - started
    if progress is not None:
        progress(report)
    return report


def existing_digests(messages: Messages, mailbox: Mailbox) -> set[str]:
    return {row[2] for row in messages.maildrop(mailbox.id)}


def export_mbox(messages: Messages, blobs: BlobStore, mailbox: Mailbox, path: str,
                progress: Callable[[int, int], None] | None = None) -> int:
    """Write the mailbox to `path` as an mbox (replacing it whole at the end)."""
    rows = messages.messages(mailbox.id)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as out:
        for i, row in enumerate(rows, 1):
            out.write(mbox_entry(blobs.read(row.blob), row.flags, row.internaldate))
            if progress is not None and (i % 500 == 0 or i == len(rows)):
                progress(i, len(rows))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return len(rows)


def export_maildir(messages: Messages, blobs: BlobStore, mailbox: Mailbox, path: str,
                   progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Write each message not yet exported to the Maildir `path`; (written, already there)."""
    make_maildir(path)
    present = set()
    for sub in ("cur", "new"):
        for name in os.listdir(os.path.join(path, sub)):
            present.add(name.partition(":2,")[0])
    rows = messages.messages(mailbox.id)
    written = 0
    for i, row in enumerate(rows, 1):
        base = maildir_base(mailbox.uidvalidity, row.uid, row.internaldate)
        if base not in present:
            write_maildir(path, base, blobs.read(row.blob), row.flags, row.internaldate)
            written += 1
        if progress is not None and (i % 500 == 0 or i == len(rows)):
            progress(i, len(rows))
    return written, len(rows) - written
