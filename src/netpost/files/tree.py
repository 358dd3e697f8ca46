"""Each account's own file tree: confined paths, atomic uploads, a quota, FTP listings.

A `FileTree` maps *virtual* paths ("/" rooted, as the client sees them) onto one directory on
disk, the way a chroot would: ".." above "/" stays at "/", and a symbolic link planted inside the
tree (netpost never makes one) is followed only while its target stays inside the root
(`os.path.realpath`).  Removing or renaming acts on a link itself, never on its target.

An upload (STOR) is written to a hidden temporary file beside its final name, fsync'd, renamed
over the final name and the directory fsync'd, so a reader sees the old file or the whole new one,
never a half (RFC 959 226 means whole).  Resuming (APPE, or REST then STOR: RFC 3659 5) writes
into the real file, as a resume must.  Names starting with `TEMP_PREFIX` are reserved for those
temporary files: `resolve` refuses them and `listdir` hides them.

The quota counts the bytes of regular files (symbolic links and directories are free), found by
one walk of the tree and then kept up to date by this object's uploads, deletes and overwrites;
bytes an upload has written count against the quota while it runs.  Changes made by other
`FileTree` objects on the same directory are not seen, so one account's sessions should share one
`FileTree` (it is thread-safe).

Pure filesystem code: every method may block, so an asyncio session calls it in a thread.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import math
import os
import re
import secrets
import stat as stat_mod
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

TEMP_PREFIX = ".netpost-upload."
"""Names starting with this are upload temporary files: refused by `resolve`, hidden."""

_STALE_TEMP = 3600.0  # seconds without a write after which a temporary file is abandoned
_NEW_TEMP = 0.5  # seconds a fresh temporary file is left alone (made, maybe not locked yet)
_NAME_MAX = 255  # bytes of UTF-8 in one name (the usual NAME_MAX)
_PATH_MAX = 4096  # bytes of UTF-8 in a virtual path
_SIX_MONTHS = 15_778_476  # seconds, half a Gregorian year, as GNU ls reckons "recent"
_MAX_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Control characters (C0, DEL, C1) and lone surrogates (bytes that were not UTF-8).
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class TreeError(Exception):
    """An operation on the tree failed; ``str(error)`` is fit for an FTP reply's text."""


class NotFound(TreeError):
    """No such file or directory (FTP 550)."""


class NotAllowed(TreeError):
    """Refused: a bad name, outside the tree, a directory not empty, and the like (550/553)."""


class QuotaExceeded(TreeError):
    """The account's quota (or the disk) is full (FTP 552)."""


class NoSpace(QuotaExceeded):
    """The file system itself is full (FTP 452: "insufficient storage space in system",
    RFC 959 4.2), as opposed to the account's allocation (552)."""


@dataclass(frozen=True)
class Entry:
    """One file or directory as a listing shows it."""

    name: str  # the last path component; "/" for the root
    is_dir: bool
    size: int
    mtime: float  # seconds since the epoch
    mode: int  # permission bits (stat.S_IMODE)


def _entry_of(name: str, st: os.stat_result) -> Entry:
    return Entry(
        name=name,
        is_dir=stat_mod.S_ISDIR(st.st_mode),
        size=st.st_size,
        mtime=st.st_mtime,
        mode=stat_mod.S_IMODE(st.st_mode),
    )


def _basename(vpath: str) -> str:
    return "/" if vpath == "/" else vpath.rpartition("/")[2]


def _parent(vpath: str) -> str:
    return vpath.rpartition("/")[0] or "/"


def _error(exc: OSError, vpath: str) -> TreeError:
    """The TreeError for an OSError met while working on `vpath`."""
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(f"{vpath}: no such file or directory")
    if code == errno.ENOSPC:
        return NoSpace(f"{vpath}: no space left on the server's disk")
    if code == getattr(errno, "EDQUOT", None):
        return QuotaExceeded(f"{vpath}: disk quota exceeded")
    reasons = {
        errno.EEXIST: "file exists",
        errno.ENOTEMPTY: "directory not empty",
        errno.EISDIR: "is a directory",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ELOOP: "too many levels of symbolic links",
        errno.ENAMETOOLONG: "file name too long",
        errno.EINVAL: "invalid argument",
        errno.EXDEV: "not on the same file system",
    }
    if code in reasons:
        return NotAllowed(f"{vpath}: {reasons[code]}")
    reason = os.strerror(code).lower() if code else "failed"
    return TreeError(f"{vpath}: {reason}")


def _fsync_dir(path: str, vpath: str) -> None:
    """Make a change to directory `path` durable; TreeError (about `vpath`) if that fails."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except FileNotFoundError:
        pass  # removed since: nothing left to make durable
    except OSError as exc:
        raise _error(exc, vpath) from None


def _check_name(name: str) -> None:
    """Refuse one path component that no file in the tree may have."""
    if len(name.encode("utf-8")) > _NAME_MAX:
        raise NotAllowed("file name too long")
    if name.startswith(TEMP_PREFIX):
        raise NotAllowed(f"{name}: reserved file name")


def _listable(name: str) -> bool:
    """Whether a name found on disk is one `resolve` would reach (others are not listed)."""
    return (
        not name.startswith(TEMP_PREFIX)
        and _BAD_CHARS.search(name) is None
        and len(name.encode("utf-8")) <= _NAME_MAX
    )


def _walk_into(parts: list[str], text: str) -> None:
    for comp in text.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts:
                parts.pop()  # ".." of "/" is "/", as in a chroot
            continue
        _check_name(comp)
        parts.append(comp)


class FileTree:
    """One account's files under `root`, with an optional quota in bytes."""

    def __init__(self, root: os.PathLike[str] | str, quota: int | None = None) -> None:
        if quota is not None and quota < 0:
            raise ValueError("quota must be >= 0 or None")
        root_path = os.path.abspath(os.fspath(root))
        os.makedirs(root_path, mode=0o700, exist_ok=True)
        self.quota = quota
        self._root = os.path.realpath(root_path)
        self._root_slash = self._root.rstrip(os.sep) + os.sep
        self._lock = threading.RLock()
        self._usage: int | None = None  # committed bytes, None until the first walk
        self._reserved = 0  # bytes running uploads have added, not yet in _usage

    # -- paths -------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The real directory of the tree (symbolic links in its path resolved)."""
        return Path(self._root)

    def resolve(self, cwd: str, path: str) -> str:
        """The normalised virtual absolute path of `path` (absolute, or relative to `cwd`).

        ".." above "/" stays at "/".  Control characters (CR and LF among them), bytes that were
        not UTF-8, names longer than 255 bytes and upload temporary names are NotAllowed.
        """
        for text in (cwd, path):
            if _BAD_CHARS.search(text) is not None:
                raise NotAllowed("bad file name: control character or invalid UTF-8")
        parts: list[str] = []
        if not path.startswith("/"):
            _walk_into(parts, cwd)
        _walk_into(parts, path)
        vpath = "/" + "/".join(parts)
        if len(vpath.encode("utf-8")) > _PATH_MAX:
            raise NotAllowed("path name too long")
        return vpath

    def _inside(self, real: str) -> bool:
        return real == self._root or real.startswith(self._root_slash)

    def _real(self, vpath: str) -> str:
        """The real path of a normalised vpath, every symbolic link resolved; NotAllowed if it
        leaves the root."""
        joined = self._root if vpath == "/" else self._root + vpath
        real = os.path.realpath(joined)
        if not self._inside(real):
            raise NotAllowed(f"{vpath}: permission denied (outside the tree)")
        return real

    def _link_path(self, vpath: str) -> str:
        """The real path of a normalised vpath other than "/" with its parent resolved but not
        its last component: what remove and rename act on (a link itself, not its target)."""
        return os.path.join(self._real(_parent(vpath)), _basename(vpath))

    def real(self, vpath: str) -> Path:
        """The real path of `vpath` (symbolic links resolved); NotAllowed outside the root."""
        return Path(self._real(self.resolve("/", vpath)))

    # -- looking -----------------------------------------------------------------------------

    def stat(self, vpath: str) -> Entry:
        vpath = self.resolve("/", vpath)
        try:
            st = os.stat(self._real(vpath))
        except OSError as exc:
            raise _error(exc, vpath) from None
        return _entry_of(_basename(vpath), st)

    def is_dir(self, vpath: str) -> bool:
        """True for a directory inside the tree; False for anything else, even a bad path."""
        try:
            real = self._real(self.resolve("/", vpath))
        except TreeError:
            return False
        return os.path.isdir(real)

    def listdir(self, vpath: str) -> list[Entry]:
        """A directory's entries sorted by name (a file gives its own entry).

        Not listed: upload temporary files, names `resolve` would refuse, and symbolic links
        whose target is missing or outside the tree.  A link that stays inside is listed as
        its target.
        """
        vpath = self.resolve("/", vpath)
        real = self._real(vpath)
        try:
            st = os.stat(real)
            if not stat_mod.S_ISDIR(st.st_mode):
                return [_entry_of(_basename(vpath), st)]
            entries: list[Entry] = []
            with os.scandir(real) as it:
                for de in it:
                    if not _listable(de.name):
                        continue
                    try:
                        if de.is_symlink():
                            target = os.path.realpath(de.path)
                            if not self._inside(target):
                                continue
                            est = os.stat(target)
                        else:
                            est = de.stat(follow_symlinks=False)
                    except OSError:
                        continue  # gone since, or a dangling link
                    entries.append(_entry_of(de.name, est))
        except OSError as exc:
            raise _error(exc, vpath) from None
        entries.sort(key=lambda e: e.name)
        return entries

    # -- changing ----------------------------------------------------------------------------

    def mkdir(self, vpath: str) -> None:
        vpath = self.resolve("/", vpath)
        if vpath == "/":
            raise NotAllowed("/: file exists")
        path = self._link_path(vpath)
        try:
            os.mkdir(path, 0o755)
        except FileNotFoundError:
            raise NotFound(f"{_parent(vpath)}: no such file or directory") from None
        except OSError as exc:
            raise _error(exc, vpath) from None
        _fsync_dir(os.path.dirname(path), vpath)

    def rmdir(self, vpath: str) -> None:
        """Remove an empty directory (abandoned upload temporary files do not count)."""
        vpath = self.resolve("/", vpath)
        if vpath == "/":
            raise NotAllowed("/: the root cannot be removed")
        path = self._link_path(vpath)
        try:
            st = os.lstat(path)
            if not stat_mod.S_ISDIR(st.st_mode):
                raise NotAllowed(f"{vpath}: not a directory")
            self._remove_stale_temps(path)
            os.rmdir(path)
        except OSError as exc:
            raise _error(exc, vpath) from None
        _fsync_dir(os.path.dirname(path), vpath)

    def delete(self, vpath: str) -> None:
        """Remove a file (a symbolic link itself, never its target); not a directory."""
        vpath = self.resolve("/", vpath)
        if vpath == "/":
            raise NotAllowed("/: is a directory")
        path = self._link_path(vpath)
        try:
            st = os.lstat(path)
            if stat_mod.S_ISDIR(st.st_mode):
                raise NotAllowed(f"{vpath}: is a directory")
            os.unlink(path)
        except OSError as exc:
            raise _error(exc, vpath) from None
        if stat_mod.S_ISREG(st.st_mode):
            self._add_usage(-st.st_size)
        _fsync_dir(os.path.dirname(path), vpath)

    def rename(self, src: str, dst: str) -> None:
        """Rename a file or directory (a symbolic link itself); `dst` must not exist."""
        src = self.resolve("/", src)
        dst = self.resolve("/", dst)
        if src == "/" or dst == "/":
            raise NotAllowed("/: the root cannot be renamed")
        src_path = self._link_path(src)
        dst_path = self._link_path(dst)
        try:
            os.lstat(src_path)
        except OSError as exc:
            raise _error(exc, src) from None
        if os.path.lexists(dst_path):
            raise NotAllowed(f"{dst}: file exists")
        try:
            os.rename(src_path, dst_path)
        except FileNotFoundError:
            raise NotFound(f"{_parent(dst)}: no such file or directory") from None
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise NotAllowed(f"{dst}: a directory cannot move into itself") from None
            raise _error(exc, dst) from None
        for directory in {os.path.dirname(src_path), os.path.dirname(dst_path)}:
            _fsync_dir(directory, dst)

    # -- reading and writing -----------------------------------------------------------------

    def open_read(self, vpath: str, offset: int = 0) -> BinaryIO:
        """A binary file object positioned at `offset` (REST); files only."""
        vpath = self.resolve("/", vpath)
        real = self._real(vpath)
        if offset < 0:
            raise NotAllowed(f"{vpath}: bad restart offset")
        try:
            # O_NONBLOCK: a FIFO planted in the tree must not hang the thread.
            fd = os.open(real, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW | _O_NONBLOCK)
        except OSError as exc:
            raise _error(exc, vpath) from None
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise NotAllowed(f"{vpath}: is a directory")
            if not stat_mod.S_ISREG(st.st_mode):
                raise NotAllowed(f"{vpath}: not a regular file")
            if offset > st.st_size:
                # RFC 3659 5.5: a restart marker past the end is refused (554).
                raise NotAllowed(f"{vpath}: restart offset beyond end of file")
            os.set_blocking(fd, True)
            os.lseek(fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return open(fd, "rb")

    def begin_upload(
        self, vpath: str, *, append: bool = False, offset: int | None = None,
        in_place: bool = False,
    ) -> Upload:
        """Start writing `vpath`: STOR (a temporary file, renamed on commit), APPE
        (`append`: into the real file at its end) or a resumed STOR (`offset`: into the real
        file from `offset`, cut there first).  `in_place` (SFTP's open for writing without
        truncation): into the real file (made if missing), nothing cut, written with
        `Upload.write_at` anywhere."""
        if sum((append, offset is not None, in_place)) > 1:
            raise ValueError("append, offset and in_place exclude each other")
        vpath = self.resolve("/", vpath)
        if vpath == "/":
            raise NotAllowed("/: is a directory")
        real = self._real(vpath)
        parent = os.path.dirname(real)
        try:
            if not stat_mod.S_ISDIR(os.stat(parent).st_mode):
                raise NotFound(f"{_parent(vpath)}: not a directory")
        except OSError:
            raise NotFound(f"{_parent(vpath)}: no such file or directory") from None
        try:
            st: os.stat_result | None = os.stat(real)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise _error(exc, vpath) from None
        if st is not None and stat_mod.S_ISDIR(st.st_mode):
            raise NotAllowed(f"{vpath}: is a directory")
        if st is not None and not stat_mod.S_ISREG(st.st_mode):
            raise NotAllowed(f"{vpath}: not a regular file")
        if offset is not None and offset < 0:
            raise NotAllowed(f"{vpath}: bad restart offset")
        if offset is not None and offset > (st.st_size if st is not None else 0):
            # RFC 3659 5.5: a restart marker past the end is refused (554).
            raise NotAllowed(f"{vpath}: restart offset beyond end of file")
        self.usage()  # walk now, while no upload of ours is half written
        if append or offset is not None or in_place:
            return self._begin_in_place(vpath, real, offset, keep=in_place)
        return self._begin_temp(vpath, real, st)

    def _begin_temp(self, vpath: str, real: str, st: os.stat_result | None) -> Upload:
        parent = os.path.dirname(real)
        temp = os.path.join(parent, f"{TEMP_PREFIX}{os.getpid()}.{secrets.token_hex(8)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o644)
        except OSError as exc:
            raise _error(exc, vpath) from None
        try:
            # Held while the upload runs (released when the file closes, or the process dies):
            # a temporary file nobody holds is abandoned (`_abandoned`).
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if st is not None:
                os.fchmod(fd, stat_mod.S_IMODE(st.st_mode))  # an overwrite keeps the mode
            file = open(fd, "wb", buffering=1 << 16)
        except OSError as exc:
            os.close(fd)
            _unlink_quietly(temp)
            raise _error(exc, vpath) from None
        if st is not None and st.st_size >= _RELEASE_OLD:
            _release_cache(real)
        upload = Upload(self, vpath, real, file, temp=temp, base=0, created=False)
        # An overwrite may use the space the old file will free (never a charge).
        self._charge(upload, -(st.st_size if st is not None else 0))
        return upload

    def _begin_in_place(self, vpath: str, real: str, offset: int | None,
                        keep: bool = False) -> Upload:
        flags = os.O_WRONLY | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC
        if offset is None and not keep:
            flags |= os.O_APPEND
        existed = os.path.lexists(real)
        try:
            fd = os.open(real, flags, 0o644)
        except OSError as exc:
            raise _error(exc, vpath) from None
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise NotAllowed(f"{vpath}: not a regular file")
            start = st.st_size if offset is None else offset
            if start > st.st_size:
                # RFC 3659 5.5: a restart marker past the end is refused (554).
                raise NotAllowed(f"{vpath}: restart offset beyond end of file")
            if offset is not None:
                os.ftruncate(fd, offset)
                os.lseek(fd, offset, os.SEEK_SET)
            elif keep:
                os.lseek(fd, start, os.SEEK_SET)  # `write` continues at the end
            file = open(fd, "wb", buffering=1 << 16)
        except (OSError, TreeError) as exc:
            os.close(fd)
            if not existed:
                _unlink_quietly(real)
            if isinstance(exc, OSError):
                raise _error(exc, vpath) from None
            raise
        upload = Upload(self, vpath, real, file, temp=None, base=st.st_size, created=not existed)
        upload._extent = start
        self._charge(upload, start - st.st_size)  # REST: cut to `offset` (never a charge)
        return upload

    def unique_name(self, vpath_dir: str, hint: str | None = None) -> str:
        """STOU: a virtual path in `vpath_dir` that does not exist yet (`hint`, `hint.1`, …
        when a name is hinted, else a random one)."""
        vdir = self.resolve("/", vpath_dir)
        real_dir = self._real(vdir)
        if not os.path.isdir(real_dir):
            if os.path.lexists(real_dir):
                raise NotAllowed(f"{vdir}: not a directory")
            raise NotFound(f"{vdir}: no such file or directory")
        if hint is not None and hint != "":
            if "/" in hint or hint in (".", ".."):
                raise NotAllowed("bad file name")
            self.resolve(vdir, hint)  # control characters, reserved names, length
            for n in range(100):
                name = hint if n == 0 else f"{hint}.{n}"
                try:
                    candidate = self.resolve(vdir, name)
                except NotAllowed:
                    break  # too long with the suffix
                if not os.path.lexists(os.path.join(real_dir, name)):
                    return candidate
        for _ in range(100):
            name = f"file.{secrets.token_hex(6)}"
            if not os.path.lexists(os.path.join(real_dir, name)):
                return self.resolve(vdir, name)
        raise TreeError(f"{vdir}: no unique name found")

    # -- usage -------------------------------------------------------------------------------

    def usage(self) -> int:
        """Bytes in the tree's regular files (walked once, then kept up to date)."""
        with self._lock:
            if self._usage is None:
                self._usage = self._walk()
            return self._usage

    def _add_usage(self, delta: int) -> None:
        with self._lock:
            if self._usage is not None:
                self._usage += delta

    def _walk(self) -> int:
        total = 0
        now = time.time()
        stack = [self._root]
        while stack:
            directory = stack.pop()
            try:
                it = os.scandir(directory)
            except OSError:
                continue
            with it:
                for de in it:
                    try:
                        st = de.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat_mod.S_ISDIR(st.st_mode):
                        stack.append(de.path)
                    elif stat_mod.S_ISREG(st.st_mode):
                        if de.name.startswith(TEMP_PREFIX):
                            if _abandoned(de.path, st, now):
                                _unlink_quietly(de.path)
                            continue  # a running upload counts by its reservation
                        total += st.st_size
        return total

    def _remove_stale_temps(self, real_dir: str) -> None:
        now = time.time()
        with os.scandir(real_dir) as it:
            for de in it:
                if not de.name.startswith(TEMP_PREFIX):
                    continue
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat_mod.S_ISREG(st.st_mode) and _abandoned(de.path, st, now):
                    _unlink_quietly(de.path)

    def _charge(self, upload: Upload, delta: int) -> None:
        """Let `upload` change the tree by `delta` bytes in all, or raise QuotaExceeded."""
        with self._lock:
            held = max(0, upload._delta)
            if self.quota is not None and delta > 0 and delta > upload._delta:
                used = self.usage() + self._reserved - held
                if used + delta > self.quota:
                    quota = self.quota
                    raise QuotaExceeded(f"{upload.vpath}: quota of {quota} bytes exceeded")
            self._reserved += max(0, delta) - held
            upload._delta = delta

    def _settle(self, upload: Upload, delta: int) -> None:
        """`upload` ended having changed the tree by `delta` bytes."""
        with self._lock:
            self._reserved -= max(0, upload._delta)
            upload._delta = 0
            if self._usage is not None:
                self._usage += delta


def _abandoned(path: str, st: os.stat_result, now: float) -> bool:
    """Whether an upload temporary file is left over: no upload holds its lock any more (its
    process ended, killed or crashed: the kernel drops the lock) or it has not been written
    for an hour."""
    age = now - st.st_mtime
    if age > _STALE_TEMP:
        return True
    if age < _NEW_TEMP:
        return False  # just made: its upload may not hold the lock yet
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # an upload is writing it
    finally:
        os.close(fd)
    return True


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_RELEASE_OLD = 1 << 20  # octets: below this an old version's cache is left alone


def _release_cache(real: str) -> None:
    """A STOR over an existing file: the old version's page cache goes now, not at commit.

    It is unreachable once the upload commits, and its memory is what the new version's pages
    are best made of: freed pages are reused while they are warm, which (on a virtual machine
    whose host takes idle guest memory back) is several times faster than growing the cache
    into memory not touched for a while.  A reader of the old version meanwhile reads it from
    the disk instead; nothing else changes."""
    try:
        fd = os.open(real, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


class Upload:
    """One upload in progress: `write` pieces, then `commit` (or `abort`)."""

    vpath: str
    written: int

    def __init__(
        self,
        tree: FileTree,
        vpath: str,
        real: str,
        file: BinaryIO,
        *,
        temp: str | None,
        base: int,
        created: bool,
    ) -> None:
        self._done = False
        self._committed = False
        self._tree = tree
        self.vpath = vpath
        self.written = 0
        self._real = real
        self._file = file
        self._temp = temp  # None: writing into the real file (APPE, REST + STOR)
        self._base = base  # the real file's size when the upload began (in place)
        self._created = created
        self._delta = 0  # bytes this upload adds to the tree, as charged
        self._extent = 0  # the size of the file being written, as far as written

    def write(self, data: bytes | memoryview) -> None:
        """Append `data`; QuotaExceeded (the upload is then aborted) when it would not fit."""
        if self._done:
            raise TreeError(f"{self.vpath}: upload already finished")
        n = len(data)
        try:
            self._tree._charge(self, self._delta + n)
        except QuotaExceeded:
            self.abort()
            raise
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise _error(exc, self.vpath) from None
        self.written += n
        self._extent += n

    def write_at(self, offset: int, data: bytes) -> None:
        """Write `data` at `offset` of the file (SFTP writes at offsets; a gap reads as
        zeros).  Not for an APPE upload, whose writes always go to the end.  QuotaExceeded
        (the upload is then aborted) when the file would grow beyond the quota."""
        if self._done:
            raise TreeError(f"{self.vpath}: upload already finished")
        if offset < 0:
            raise NotAllowed(f"{self.vpath}: bad offset")
        if offset == self._extent:
            self.write(data)  # the usual case: in order, through the buffer
            return
        end = max(self._extent, offset + len(data))
        try:
            self._tree._charge(self, self._delta + (end - self._extent))
        except QuotaExceeded:
            self.abort()
            raise
        try:
            self._file.flush()
            fd = self._file.fileno()
            view = memoryview(data)
            at = offset
            while view:
                n = os.pwrite(fd, view, at)
                view, at = view[n:], at + n
            self._file.seek(end)  # `write` continues at the end
        except OSError as exc:
            self.abort()
            raise _error(exc, self.vpath) from None
        self.written += len(data)
        self._extent = end

    def truncate(self, size: int) -> None:
        """Cut (or extend with zeros) the file being written to `size` octets; later writes
        continue there (SFTP's FSETSTAT with a size, which OpenSSH's scp sends at the end).
        QuotaExceeded (the upload is then aborted) when it would not fit."""
        if self._done:
            raise TreeError(f"{self.vpath}: upload already finished")
        if size < 0:
            raise NotAllowed(f"{self.vpath}: bad size")
        try:
            self._tree._charge(self, self._delta + (size - self._extent))
        except QuotaExceeded:
            self.abort()
            raise
        try:
            self._file.flush()
            os.ftruncate(self._file.fileno(), size)
            self._file.seek(size)
        except OSError as exc:
            self.abort()
            raise _error(exc, self.vpath) from None
        self._extent = size

    def commit(self) -> None:
        """Make the upload durable under its name (fsync, rename, fsync the directory)."""
        if self._committed:
            return
        if self._done:
            raise TreeError(f"{self.vpath}: upload was aborted")
        directory = os.path.dirname(self._real)
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            size = os.fstat(self._file.fileno()).st_size
            self._file.close()
            if self._temp is None:
                delta = size - self._base
            else:
                try:
                    st = os.lstat(self._real)
                    replaced = st.st_size if stat_mod.S_ISREG(st.st_mode) else 0
                except FileNotFoundError:
                    replaced = 0
                os.rename(self._temp, self._real)
                delta = size - replaced
        except OSError as exc:
            self.abort()
            raise _error(exc, self.vpath) from None
        self._finish(delta)
        if self._temp is not None or self._created:
            _fsync_dir(directory, self.vpath)  # the rename (or the new name) made durable

    def _finish(self, delta: int) -> None:
        self._done = True
        self._committed = True
        self._tree._settle(self, delta)

    def abort(self) -> None:
        """Give up: a STOR leaves no trace; an in-place upload keeps what it wrote (so the
        client may resume again).  Idempotent."""
        if self._done:
            return
        self._done = True
        size = self._base + self._delta
        try:
            if self._temp is None and not self._file.closed:
                self._file.flush()
                size = os.fstat(self._file.fileno()).st_size
        except (OSError, ValueError):
            pass
        try:
            self._file.close()
        except (OSError, ValueError):
            pass
        if self._temp is not None:
            _unlink_quietly(self._temp)
            self._tree._settle(self, 0)
        else:
            self._tree._settle(self, size - self._base)

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            try:
                self.abort()
            except Exception:
                pass


# -- listings ------------------------------------------------------------------------------


def _utc(ts: float) -> datetime:
    if not math.isfinite(ts):
        ts = 0.0
    return datetime.fromtimestamp(min(max(ts, 0.0), _MAX_TIME), UTC)


def _safe_name(name: str) -> str:
    # Names in the tree never hold these (resolve refuses them); a listing line must not break.
    return _BAD_CHARS.sub("?", name)


def format_list(entry: Entry, now: float) -> str:
    """One LIST line in the `ls -l` form vsftpd sends (times in UTC)::

        drwxr-xr-x    1 owner    group        4096 Dec 07 02:50 name
        -rw-r--r--    1 owner    group          12 Dec 07  2024 old file
    """
    kind = stat_mod.S_IFDIR if entry.is_dir else stat_mod.S_IFREG
    perms = stat_mod.filemode(kind | (entry.mode & 0o7777))
    t = _utc(entry.mtime)
    day = f"{_MONTHS[t.month - 1]} {t.day:02d}"
    recent = math.isfinite(entry.mtime) and abs(now - entry.mtime) <= _SIX_MONTHS
    when = f"{day} {t.hour:02d}:{t.minute:02d}" if recent else f"{day}  {t.year:4d}"
    name = _safe_name(entry.name)
    return f"{perms} {1:4d} {'owner':<8} {'group':<8} {entry.size:8d} {when} {name}"


_FACT_KINDS = frozenset({"file", "dir", "cdir", "pdir"})


def _perm(entry: Entry, kind: str, is_root: bool) -> str:
    """RFC 3659 7.5.5 perm letters for the account's own (writable) tree."""
    mode = entry.mode
    letters: set[str] = set()
    if not is_root:
        letters |= {"d", "f"}  # DELE/RMD, RNFR
    if kind == "file":
        if mode & 0o200:
            letters |= {"a", "w"}  # APPE, STOR
        if mode & 0o400:
            letters.add("r")  # RETR
    else:
        if mode & 0o200:
            letters |= {"c", "m", "p"}  # STOR/STOU in it, MKD, delete its contents
        if mode & 0o100:
            letters.add("e")  # CWD
            if mode & 0o400:
                letters.add("l")  # LIST, NLST, MLSD
    return "".join(sorted(letters))


def format_facts(
    entry: Entry,
    vpath: str,
    *,
    kind: str | None = None,
    name: str | None = None,
    facts: Iterable[str] | None = None,
) -> str:
    """One MLSD/MLST line (RFC 3659 7.2): ``type=file;size=12;modify=…;perm=adfrw;unique=…; name``.

    `vpath` is the entry's virtual path (for `unique` and the root's perm); `kind` overrides
    the type ("cdir", "pdir"); `name` overrides the name shown (MLST may show the path);
    `facts` limits the facts to those selected by OPTS MLST (case-insensitive).
    """
    kind = kind or ("dir" if entry.is_dir else "file")
    if kind not in _FACT_KINDS:
        raise ValueError(f"unknown MLSx type {kind!r}")
    t = _utc(entry.mtime)
    modify = (
        f"{t.year:04d}{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}{t.second:02d}"
    )
    unique = hashlib.sha256(vpath.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    items = [("type", kind)]
    if kind == "file":
        items.append(("size", str(entry.size)))
    items += [
        ("modify", modify),
        ("perm", _perm(entry, kind, vpath == "/")),
        ("unique", unique),
    ]
    if facts is not None:
        wanted = {f.lower() for f in facts}
        items = [item for item in items if item[0] in wanted]
    shown = _safe_name(entry.name if name is None else name)
    return "".join(f"{k}={v};" for k, v in items) + " " + shown
