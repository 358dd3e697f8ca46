"""The mailbox service over the embedded backend: append (IMAP APPEND's path), read, flags,
expunge, and a watch on the account's changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from netpost.mail.mailboxes import Mailboxes
from netpost.store.embedded import open_stores
from netpost.store.interfaces import BlobRef


def test_append_read_flag_expunge_and_watch(tmp_path: Path) -> None:
    stores = open_stores(tmp_path)
    stores.domains.add_domain("example.com")
    account = stores.accounts.add_account("bob@example.com", "x")
    service = Mailboxes(stores.mailboxes, stores.messages, stores.blobs, stores.changes,
                        stores.delivery)
    drafts = stores.mailboxes.get_mailbox(account.id, "Drafts")
    assert drafts is not None

    async def main() -> None:
        watch = service.watch(account)
        uid = await service.append(drafts, b"Subject: draft\n\nbare LF body\n",
                                   flags=frozenset({"\\Draft", "\\Seen"}),
                                   internaldate=1_000_000_000.0)
        assert [(c.kind, c.mailbox_id, c.uid) for c in await watch.wait(1)] == \
            [("append", drafts.id, uid)]
        row = stores.messages.message(drafts.id, uid)
        assert row is not None
        assert row.flags == {"\\Draft", "\\Seen"} and row.internaldate == 1_000_000_000.0
        content = await service.read(BlobRef(row.blob.sha256, row.size))
        assert content == b"Subject: draft\r\n\r\nbare LF body\r\n"  # stored CRLF
        assert stores.messages.headers(drafts.id, uid)["subject"] == "draft"  # type: ignore[index]
        update = await service.set_flags(drafts.id, [uid], frozenset({"\\Seen"}), "remove")
        assert update.changed[0][1] == {"\\Draft"}
        assert await service.expunge(drafts.id, [uid]) == [uid]
        assert [c.kind for c in await watch.wait(1)] == ["flags", "expunge"]
        watch.close()

    try:
        asyncio.run(main())
    finally:
        stores.close()
