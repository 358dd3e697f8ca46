"""GroupCommitter: many concurrent callers, dense UIDs, durability, error isolation, GC."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from netpost.mail.message import parse_meta
from netpost.store.blobs import FileBlobStore
from netpost.store.committer import GroupCommitter
from netpost.store.interfaces import StoreError
from netpost.store.sqlite import SQLiteStore


def _setup(tmp_path: Path) -> tuple[SQLiteStore, FileBlobStore, list[int]]:
    store = SQLiteStore(str(tmp_path / "mail.db"))
    blobs = FileBlobStore(str(tmp_path / "blobs"))
    store.add_domain("example.com")
    inboxes = []
    for name in ("alice", "bob"):
        account = store.add_account(f"{name}@example.com", "h")
        mailbox = store.get_mailbox(account.id, "INBOX")
        assert mailbox is not None
        inboxes.append(mailbox.id)
    return store, blobs, inboxes


def _message(n: int) -> bytes:
    return f"Subject: message {n}\r\n\r\nbody {n}\r\n".encode() + os.urandom(64)


def test_many_concurrent_async_callers(tmp_path: Path) -> None:
    store, blobs, inboxes = _setup(tmp_path)
    count = 300

    async def main() -> list[list[int]]:
        committer = GroupCommitter(store, blobs)
        results = await asyncio.gather(
            *(
                committer.deliver(_message(n), parse_meta(_message(n), 0.0), inboxes)
                for n in range(count)
            )
        )
        await committer.close()
        assert committer.stats.deliveries == count
        assert committer.stats.batches < count  # they were grouped
        return results

    results = asyncio.run(main())
    for i in range(len(inboxes)):
        assert sorted(r[i] for r in results) == list(range(1, count + 1))
    store.close()

    reopened = SQLiteStore(str(tmp_path / "mail.db"))
    for inbox in inboxes:
        rows = reopened.messages(inbox)
        assert [r.uid for r in rows] == list(range(1, count + 1))
        mailbox = reopened.get_mailbox_by_id(inbox)
        assert mailbox is not None and mailbox.uidnext == count + 1
        for row in rows[:20]:
            assert os.path.exists(blobs.local_path(row.blob))
    headers = reopened.headers(inboxes[0], 1)
    assert headers is not None and headers["subject"].startswith("message ")
    reopened.close()
    assert not list((tmp_path / "blobs" / "tmp").iterdir())


def test_deliver_sync_and_error_isolation(tmp_path: Path) -> None:
    store, blobs, inboxes = _setup(tmp_path)
    committer = GroupCommitter(store, blobs)
    data = b"Subject: hi\r\n\r\nhello\r\n"
    assert committer.deliver_sync(data, parse_meta(data, 1.0), inboxes) == [1, 1]

    async def main() -> list[list[int] | BaseException]:
        return list(
            await asyncio.gather(
                committer.deliver(data, parse_meta(data, 1.0), [inboxes[0]]),
                committer.deliver(data, parse_meta(data, 1.0), [424242]),
                committer.deliver(data, parse_meta(data, 1.0), [inboxes[1]]),
                return_exceptions=True,
            )
        )

    ok1, bad, ok2 = asyncio.run(main())
    assert ok1 == [2] and ok2 == [2]
    assert isinstance(bad, StoreError)
    committer.close_sync()
    with pytest.raises(StoreError, match="closed"):
        committer.deliver_sync(data, parse_meta(data, 1.0), inboxes)
    store.close()


def test_collect_garbage(tmp_path: Path) -> None:
    store, blobs, inboxes = _setup(tmp_path)
    committer = GroupCommitter(store, blobs)
    data = b"Subject: gc\r\n\r\nbye\r\n"
    committer.deliver_sync(data, parse_meta(data, 1.0), inboxes)
    ref = store.messages(inboxes[0])[0].blob
    assert committer.collect_garbage_sync().bodies == 0
    store.expunge(inboxes[0], [1])
    assert committer.collect_garbage_sync().bodies == 0  # still in bob's INBOX
    store.expunge(inboxes[1], [1])
    assert committer.collect_garbage_sync().bodies == 1
    assert not os.path.exists(blobs.local_path(ref))
    # The same content delivered again comes back whole.
    committer.deliver_sync(data, parse_meta(data, 1.0), inboxes[:1])
    assert blobs.read(store.messages(inboxes[0])[0].blob) == data

    async def gc() -> int:
        return (await committer.collect_garbage()).bodies

    assert asyncio.run(gc()) == 0
    committer.close_sync()
    store.close()


@pytest.mark.parametrize("pipeline", [True, False])
def test_pipeline_modes_and_blob_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pipeline: bool
) -> None:
    store, blobs, inboxes = _setup(tmp_path)
    committer = GroupCommitter(store, blobs, pipeline=pipeline)
    data = b"Subject: p\r\n\r\nx\r\n"
    assert committer.deliver_sync(data, parse_meta(data, 1.0), inboxes[:1]) == [1]

    def broken(items: object) -> object:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(blobs, "stage_many", broken)
    with pytest.raises(OSError, match="No space"):
        committer.deliver_sync(b"other", parse_meta(b"other", 1.0), inboxes[:1])
    monkeypatch.undo()
    assert committer.deliver_sync(b"again", parse_meta(b"again", 1.0), inboxes[:1]) == [2]
    committer.close_sync()
    assert [r.uid for r in store.messages(inboxes[0])] == [1, 2]
    store.close()
