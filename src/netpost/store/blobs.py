"""Content-addressed message files on a local filesystem (the embedded `StagingBlobStore`).

A blob lives at ``root/ab/<sha256 hex>``: one level of 256 fan-out directories, all made (and
made durable) when the store is created, so that writing a blob never creates a directory.  A
blob is written to ``root/tmp/<unique>`` (O_EXCL), fsync'd, renamed to its final name, and the
final directory is fsync'd; a crash at any point leaves either nothing or the whole file under
the final name, never a partial one.

`stage_many` + `finish` is the group-commit form: every file of a batch is written, then all
are fsync'd together (in a small thread pool, so the filesystem can fold the flushes into
fewer journal commits) and renamed; `finish` fsyncs each distinct directory once.  `create`
writes one blob in pieces (hashing as it goes) for content too large to hold in memory.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import BinaryIO, TypeVar

from netpost.store.interfaces import BlobRef, StagedBlobs, blob_ref

_T = TypeVar("_T")
_R = TypeVar("_R")

_TMP = "tmp"
_HEX = frozenset("0123456789abcdef")


_O_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def read_each(read: Callable[[BlobRef], bytes], refs: Sequence[BlobRef]) -> dict[str, bytes]:
    """sha256 -> read(ref) for each of `refs` that exists (`read_many` one at a time)."""
    found: dict[str, bytes] = {}
    for ref in refs:
        try:
            found[ref.sha256] = read(ref)
        except FileNotFoundError:
            pass
    return found


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    """A `StagingBlobStore` on a directory tree; safe to use from many threads at once."""

    def __init__(self, root: str, *, fsync_workers: int = 8, tmp_max_age: float = 3600.0) -> None:
        self.root = os.path.abspath(root)
        self._tmp = os.path.join(self.root, _TMP)
        self._counter = itertools.count()
        self._prefix = f"{os.getpid()}.{os.urandom(4).hex()}"
        self._workers = max(1, fsync_workers)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._make_tree()
        self.cleanup_tmp(tmp_max_age)

    # -- paths -------------------------------------------------------------------------------

    def _dir_of(self, sha256: str) -> str:
        # One level of 256 directories, all made when the store is created: a delivery never
        # creates a directory, and a batch's renames share few directory fsyncs.
        return os.path.join(self.root, sha256[:2])

    def _make_tree(self) -> None:
        """Make the root, tmp/ and the 256 fan-out directories, each entry durable (parent
        fsync'd), so that writing a blob never creates a directory."""
        if os.path.isdir(self.root):
            # Whatever a previous run left (a directory whose parent it had not fsync'd yet,
            # if it crashed) becomes durable here, so existing directories can be trusted.
            os.sync()
        else:
            os.makedirs(self.root, 0o750, exist_ok=True)
            _fsync_dir(os.path.dirname(self.root))
        wanted = [self._tmp] + [os.path.join(self.root, f"{i:02x}") for i in range(256)]
        missing = [d for d in wanted if not os.path.isdir(d)]
        for d in missing:
            os.makedirs(d, 0o750, exist_ok=True)
        if missing:
            _fsync_dir(self.root)

    def local_path(self, ref: BlobRef) -> str:
        sha = ref.sha256
        if len(sha) != 64 or not _HEX.issuperset(sha):
            raise ValueError(f"not a sha256 hex digest: {sha!r}")
        return os.path.join(self._dir_of(sha), sha)

    # -- reading and deleting ----------------------------------------------------------------

    def read(self, ref: BlobRef) -> bytes:
        """The file's content, with as few syscalls as possible when it has `ref.size` octets.

        Returns more than `ref.size` octets (size + 1) if the file is longer, fewer if it is
        shorter: the caller compares.
        """
        size = ref.size
        fd = os.open(self.local_path(ref), _O_READ)
        try:
            data = os.read(fd, size + 1)
            if len(data) < size:  # end of file, or a short read: go on until one of the two
                parts = [data]
                got = len(data)
                while got <= size and (more := os.read(fd, size + 1 - got)):
                    parts.append(more)
                    got += len(more)
                data = b"".join(parts)
        finally:
            os.close(fd)
        return data

    def read_many(self, refs: Sequence[BlobRef]) -> dict[str, bytes]:
        return read_each(self.read, refs)

    def open(self, ref: BlobRef) -> BinaryIO:
        return open(self.local_path(ref), "rb")  # noqa: SIM115 - the caller closes it

    def exists(self, ref: BlobRef) -> bool:
        return os.path.exists(self.local_path(ref))

    def delete(self, ref: BlobRef) -> None:
        try:
            os.unlink(self.local_path(ref))
        except FileNotFoundError:
            pass

    def delete_many(self, refs: Sequence[BlobRef]) -> None:
        for ref in refs:
            self.delete(ref)

    def reclaim(self) -> int:
        return 0  # an unlinked file's space is free at once

    def stored(self) -> Iterator[tuple[str, float]]:
        """(sha256, modification time) of every blob file, directory by directory."""
        for sha, st in self._files():
            yield sha, st.st_mtime

    def stored_sizes(self) -> Iterator[tuple[str, int]]:
        """(sha256, size in octets) of every blob file."""
        for sha, st in self._files():
            yield sha, st.st_size

    def _files(self) -> Iterator[tuple[str, os.stat_result]]:
        for i in range(256):
            try:
                entries = list(os.scandir(os.path.join(self.root, f"{i:02x}")))
            except FileNotFoundError:
                continue
            for entry in entries:
                if len(entry.name) == 64 and _HEX.issuperset(entry.name):
                    try:
                        yield entry.name, entry.stat()
                    except FileNotFoundError:
                        pass

    def cleanup_tmp(self, max_age: float) -> int:
        """Remove temporary files older than `max_age` seconds (left by a crash); return count.

        Younger ones may belong to a writer in another process sharing the store.
        """
        removed = 0
        limit = time.time() - max_age
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    # -- writing -----------------------------------------------------------------------------

    def _tmp_name(self) -> str:
        return os.path.join(self._tmp, f"{self._prefix}.{next(self._counter)}")

    def _create_tmp(self, data: bytes) -> tuple[str, int]:
        """Write `data` to a fresh temporary file (not yet fsync'd); return path and fd."""
        tmp = self._tmp_name()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except BaseException:
            self._discard(tmp, fd)
            raise
        return tmp, fd

    @staticmethod
    def _discard(tmp: str, fd: int | None = None) -> None:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass

    def _write_tmp(self, data: bytes) -> str:
        """Write `data` to a fresh temporary file and fsync it; return its path."""
        tmp, fd = self._create_tmp(data)
        try:
            os.fsync(fd)
        except BaseException:
            self._discard(tmp, fd)
            raise
        os.close(fd)
        return tmp

    def _install(self, tmp: str, final: str) -> None:
        try:
            # Replacing an existing file is harmless: same name, same content.
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def put(self, data: bytes) -> BlobRef:
        ref = blob_ref(data)
        directory = self._dir_of(ref.sha256)
        final = os.path.join(directory, ref.sha256)
        if os.path.exists(final):
            # Dedup.  The entry might have been renamed a moment ago by another writer that
            # has not fsync'd the directory yet: fsync it (nearly free when already clean).
            _fsync_dir(directory)
            return ref
        tmp = self._write_tmp(data)
        self._install(tmp, final)
        _fsync_dir(directory)
        return ref

    def create(self) -> FileBlobWriter:
        """A blob written in pieces: `write` as often as needed, then `commit` or `abort`."""
        return FileBlobWriter(self)

    def _get_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="blob-fsync")
        return self._pool

    def _run(self, fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R | BaseException]:
        """Call `fn` on every item (in the pool when there are several); never raises: an
        item's exception is returned in its place so the caller can clean up the others."""
        if len(items) <= 1 or self._workers <= 1:
            out: list[_R | BaseException] = []
            for item in items:
                try:
                    out.append(fn(item))
                except Exception as e:
                    out.append(e)
            return out
        futures = [self._get_pool().submit(fn, item) for item in items]
        wait(futures)
        return [f.exception() or f.result() for f in futures]

    def put_many(self, items: Sequence[bytes]) -> list[BlobRef]:
        """Store every item durably; return their refs in order.

        All files are written and fsync'd (in parallel), then renamed, then each distinct
        final directory is fsync'd once.
        """
        staged = self.stage_many(items)
        self.finish(staged)
        return staged.refs

    def finish(self, staged: StagedBlobs) -> None:
        """Second half of `put_many`: fsync the directories (in parallel); durable after."""
        self._sync_dirs(staged.pending)

    def stage_many(self, items: Sequence[bytes]) -> StagedBlobs:
        """First half of `put_many`: every file written, fsync'd and under its final name,
        but the directory entries are not durable until `finish` (so that a pipeline can
        overlap one batch's directory fsyncs with the next batch's file fsyncs).  A crash in
        between loses whole files, never leaves a partial one."""
        refs = [blob_ref(d) for d in items]
        todo: dict[str, bytes] = {}  # sha -> data, first occurrence, not yet stored
        dirs: set[str] = set()
        for ref, data in zip(refs, items, strict=True):
            directory = self._dir_of(ref.sha256)
            dirs.add(directory)
            if ref.sha256 in todo:
                continue
            if not os.path.exists(os.path.join(directory, ref.sha256)):
                todo[ref.sha256] = data
        if not todo:
            return StagedBlobs(refs, tuple(sorted(dirs)))
        shas = list(todo)
        # 1. Write every file (page cache only), so that ...
        created: list[tuple[str, int]] = []
        try:
            for sha in shas:
                created.append(self._create_tmp(todo[sha]))
        except BaseException:
            for tmp, fd in created:
                self._discard(tmp, fd)
            raise
        # 2. ... their fsyncs, issued together, share the filesystem's journal commits.
        synced = self._run(os.fsync, [fd for _, fd in created])
        for _, fd in created:
            os.close(fd)
        failed = [e for e in synced if isinstance(e, BaseException)]
        if failed:
            for tmp, _ in created:
                self._discard(tmp)
            raise failed[0]
        # 3. The renames: only complete files ever get a final name.
        for i, (sha, (tmp, _)) in enumerate(zip(shas, created, strict=True)):
            try:
                self._install(tmp, os.path.join(self._dir_of(sha), sha))
            except BaseException:
                for rest, _ in created[i + 1 :]:
                    self._discard(rest)
                raise
        # 4. (finish) One fsync per distinct directory makes the new names durable.
        return StagedBlobs(refs, tuple(sorted(dirs)))

    def _sync_dirs(self, dirs: Sequence[str]) -> None:
        for result in self._run(_fsync_dir, dirs):
            if isinstance(result, BaseException):
                raise result

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


class FileBlobWriter:
    """One blob being written to a temporary file, hashed as it goes (`BlobWriter`)."""

    def __init__(self, store: FileBlobStore) -> None:
        self._store = store
        self._tmp = store._tmp_name()
        self._fd: int | None = os.open(
            self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise ValueError("the blob is already committed or aborted")
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except BaseException:
            self.abort()
            raise
        self._hash.update(data)
        self._size += len(data)

    def commit(self) -> BlobRef:
        if self._fd is None:
            raise ValueError("the blob is already committed or aborted")
        fd, self._fd = self._fd, None
        ref = BlobRef(self._hash.hexdigest(), self._size)
        store = self._store
        directory = store._dir_of(ref.sha256)
        final = os.path.join(directory, ref.sha256)
        try:
            try:
                if not os.path.exists(final):
                    os.fsync(fd)
            finally:
                os.close(fd)
            if os.path.exists(final):  # dedup: same name, same content
                os.unlink(self._tmp)
            else:
                store._install(self._tmp, final)
        except BaseException:
            FileBlobStore._discard(self._tmp)
            raise
        _fsync_dir(directory)
        return ref

    def abort(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            FileBlobStore._discard(self._tmp, fd)
