"""Message bodies by size: small ones as rows of ``blobs.db``, large ones as files.

The embedded backend's `StagingBlobStore`.  A group commit's small bodies cost one SQLite
commit (one fsync) together, however many there are; a body above `threshold` (default
128 KiB, `[store] small_body_limit`) is a file of its own, where an inode is cheap next to
the data and reads can use sendfile.

Reads look where the size says first and then in the other place, so a changed threshold, or
a data directory half-way through `netpost migrate`, reads the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import BinaryIO

from netpost.store.blobs import FileBlobStore, FileBlobWriter, read_each
from netpost.store.dbblobs import SQLiteBlobStore
from netpost.store.interfaces import BlobRef, StagedBlobs

DEFAULT_THRESHOLD = 128 * 1024


class TieredBlobStore:
    def __init__(self, small: SQLiteBlobStore, large: FileBlobStore,
                 threshold: int = DEFAULT_THRESHOLD) -> None:
        self.small = small
        self.large = large
        self.threshold = threshold

    # -- writing -----------------------------------------------------------------------------

    def stage_many(self, items: Sequence[bytes]) -> StagedBlobs:
        """Small items committed to blobs.db (durable now), large ones staged as files."""
        small = [i for i, data in enumerate(items) if len(data) <= self.threshold]
        large = [i for i, data in enumerate(items) if len(data) > self.threshold]
        refs: list[BlobRef | None] = [None] * len(items)
        pending: Sequence[str] = ()
        if large:
            staged = self.large.stage_many([items[i] for i in large])
            for i, ref in zip(large, staged.refs, strict=True):
                refs[i] = ref
            pending = staged.pending
        if small:
            for i, ref in zip(small, self.small.put_many([items[i] for i in small]),
                              strict=True):
                refs[i] = ref
        return StagedBlobs([r for r in refs if r is not None], pending)

    def finish(self, staged: StagedBlobs) -> None:
        self.large.finish(staged)

    def put(self, data: bytes) -> BlobRef:
        return self.small.put(data) if len(data) <= self.threshold else self.large.put(data)

    def create(self) -> TieredWriter:
        return TieredWriter(self)

    # -- reading -----------------------------------------------------------------------------

    def read(self, ref: BlobRef) -> bytes:
        if ref.size <= self.threshold:
            data = self.small.get(ref)
            return data if data is not None else self.large.read(ref)
        try:
            return self.large.read(ref)
        except FileNotFoundError:
            data = self.small.get(ref)
            if data is None:
                raise
            return data

    def read_many(self, refs: Sequence[BlobRef]) -> dict[str, bytes]:
        """sha256 -> content of every one of `refs` that exists (small ones in one query)."""
        found = self.small.get_many([r for r in refs if r.size <= self.threshold])
        found.update(read_each(self.read, [r for r in refs if r.sha256 not in found]))
        return found

    def open(self, ref: BlobRef) -> BinaryIO:
        if self.large.exists(ref):
            return self.large.open(ref)
        return self.small.open(ref)

    def local_path(self, ref: BlobRef) -> str | None:
        """The file of a large body (for sendfile); None for a row."""
        return self.large.local_path(ref) if self.large.exists(ref) else None

    def exists(self, ref: BlobRef) -> bool:
        return self.small.exists(ref) or self.large.exists(ref)

    def stored(self) -> Iterator[tuple[str, float]]:
        yield from self.small.stored()
        yield from self.large.stored()

    # -- deleting ----------------------------------------------------------------------------

    def delete(self, ref: BlobRef) -> None:
        self.delete_many([ref])

    def delete_many(self, refs: Sequence[BlobRef]) -> None:
        # Both places: after a migration or a threshold change a body may be in either.
        self.small.delete_many(refs)
        self.large.delete_many(refs)

    def reclaim(self) -> int:
        return self.small.reclaim() + self.large.reclaim()

    def close(self) -> None:
        self.small.close()
        self.large.close()


class TieredWriter:
    """A body written in pieces: kept in memory up to the threshold, then a file."""

    def __init__(self, store: TieredBlobStore) -> None:
        self._store = store
        self._parts: list[bytes] = []
        self._size = 0
        self._file: FileBlobWriter | None = None
        self._done = False

    def write(self, data: bytes) -> None:
        if self._done:
            raise ValueError("the blob is already committed or aborted")
        if self._file is None:
            self._parts.append(bytes(data))
            self._size += len(data)
            if self._size > self._store.threshold:
                writer = self._store.large.create()
                for part in self._parts:
                    writer.write(part)
                self._parts = []
                self._file = writer
        else:
            self._file.write(data)

    def commit(self) -> BlobRef:
        if self._done:
            raise ValueError("the blob is already committed or aborted")
        self._done = True
        if self._file is not None:
            return self._file.commit()
        return self._store.small.put(b"".join(self._parts))

    def abort(self) -> None:
        self._done = True
        self._parts = []
        if self._file is not None:
            self._file.abort()
