"""The one-time move of small message files into blobs.db (blob layout 2, issue 5).

Data directories written by netpost 0.1 keep every body as a file.  `migrate_layout` moves the
small ones (up to the threshold) into blobs.db, a batch at a time: read and verify each file's
digest, insert the batch in one transaction (durable), and only then unlink its files.  A crash
at any point leaves every body readable (reads look in both places) and a re-run goes on where
it stopped; the marker file is written once nothing is left to move.  A file whose content no
longer matches its name is left where it is and reported (`netpost check` says more).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from netpost.store.blobs import FileBlobStore
from netpost.store.dbblobs import SQLiteBlobStore
from netpost.store.interfaces import BlobRef, blob_ref

MARKER = ".layout-2"  # in the blob directory: the migration is complete
BATCH = 256

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class MigrationReport:
    moved: int = 0
    octets: int = 0
    corrupt: list[str] = field(default_factory=list)  # digests of files that do not match


def is_migrated(large: FileBlobStore) -> bool:
    return os.path.exists(os.path.join(large.root, MARKER))


def mark_migrated(large: FileBlobStore) -> None:
    path = os.path.join(large.root, MARKER)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, b"small bodies live in blobs.db\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(large.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def migrate_layout(small: SQLiteBlobStore, large: FileBlobStore, threshold: int,
                   progress: Progress | None = None) -> MigrationReport:
    """Move every file of at most `threshold` octets into `small`; resumable."""
    report = MigrationReport()
    todo = [(sha, size) for sha, size in large.stored_sizes() if size <= threshold]
    total = len(todo)
    if progress is not None:
        progress(0, total)
    for start in range(0, total, BATCH):
        batch: list[tuple[BlobRef, bytes]] = []
        for sha, size in todo[start:start + BATCH]:
            ref = BlobRef(sha, size)
            try:
                data = large.read(ref)
            except FileNotFoundError:
                continue  # collected meanwhile
            if blob_ref(data).sha256 != sha:
                report.corrupt.append(sha)
                continue
            batch.append((ref, data))
        small.put_many([data for _, data in batch])  # durable before any file goes
        large.delete_many([ref for ref, _ in batch])
        report.moved += len(batch)
        report.octets += sum(len(data) for _, data in batch)
        if progress is not None:
            progress(min(start + BATCH, total), total)
    if not report.corrupt:
        mark_migrated(large)
    return report
