"""The SSH server (logins) and the SFTP server (every request mapped onto the account's
`FileTree`), run by asyncssh on the socket netpost listens on.

What a client may do, and what it may not:

- Log in with the account's password (the shared `Authenticator`: the same slow-down after
  failures as every protocol) or with a public key added by `netpost user key add`.
- Open the `sftp` subsystem (version 3, RFC draft-ietf-secsh-filexfer-02).  No shell, no exec
  (so no SCP either: asyncssh's SCP server would close a half-received file as if it were
  whole), no TCP/Unix port forwarding, no agent or X11 forwarding, no pty, no tun/tap.
- See only its tree: every path goes through `FileTree.resolve` and `FileTree.real` (".."
  above "/" stays at "/", a symbolic link leading out is refused); "/" is the tree's root and
  the home directory.  Symbolic and hard links cannot be made, and `readlink` answers nothing
  (the tree shows links as what they point to).  `setstat` may change permission bits (the
  owner keeps read and write, as FTP's SITE CHMOD) and times, and the size only of a file
  being written (FSETSTAT on its handle); never the owner or group.
- Uploads: an open for writing with TRUNC (what `put` sends), or of a new file, writes a
  hidden temporary file that becomes the file only at the client's CLOSE (fsync, rename,
  directory fsync): a connection lost before it leaves nothing under the name.  APPEND writes
  at the end of the real file, and an open of an existing file without TRUNC (a resumed
  upload) writes into it at the offsets the client sends.
"""

from __future__ import annotations

import asyncio
import os
import stat as stat_mod
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import asyncssh

from netpost.auth.sasl import Credentials
from netpost.files.reads import pread
from netpost.files.tree import (
    Entry,
    FileTree,
    NotAllowed,
    NotFound,
    QuotaExceeded,
    TreeError,
    Upload,
    format_list,
)
from netpost.mail.address import normalize_address, valid_address

if TYPE_CHECKING:
    from netpost.auth.service import Authenticator
    from netpost.files.trees import FileTrees
    from netpost.net.served import ServedListener
    from netpost.sftp.keys import AuthorizedKeys
    from netpost.store.interfaces import Accounts

T = TypeVar("T")
Trace = Callable[[str, str], None]

_MAX_READ = 256 * 1024  # octets one READ answers at most (OpenSSH asks for 32-255 KiB)
_FXF_NAMES = ((asyncssh.FXF_READ, "READ"), (asyncssh.FXF_WRITE, "WRITE"),
              (asyncssh.FXF_APPEND, "APPEND"), (asyncssh.FXF_CREAT, "CREAT"),
              (asyncssh.FXF_TRUNC, "TRUNC"), (asyncssh.FXF_EXCL, "EXCL"))


def _no_trace(direction: str, line: str) -> None:
    pass


@dataclass
class SFTPContext:
    """What every connection of one listener shares."""

    auth: Authenticator
    accounts: Accounts
    trees: FileTrees
    keys: AuthorizedKeys
    listener: ServedListener
    idle_timeout: float


class SSHSession(asyncssh.SSHServer):
    """One SSH connection: limits, logins, idle timeout, the trace."""

    def __init__(self, ctx: SFTPContext) -> None:
        self.ctx = ctx
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = ""
        self.admitted = False
        self.trace: Trace = _no_trace
        self.address: str | None = None  # the account logged in
        self.how = ""  # with what: "password", "public key SHA256:..."
        self.last_active = time.monotonic()
        self.busy = 0  # requests being answered
        self._idle_task: asyncio.Task[None] | None = None

    # -- the connection ----------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peername = conn.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else "?"
        log = self.ctx.listener.trace_log
        refused = self.ctx.listener.admit(self.peer)
        if refused is not None:
            # Dropped before the key exchange: a flood costs no cryptography.
            if log is not None:
                log.session(self.ctx.listener.spec.name, self.peer)("*", f"refused: {refused}")
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, refused)
            return
        self.admitted = True
        conn.set_extra_info(netpost_session=self)
        if log is not None:
            self.trace = log.session(self.ctx.listener.spec.name, self.peer)
        self._idle_task = asyncio.get_running_loop().create_task(self._watch_idle())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
        if self.admitted:
            self.admitted = False
            self.ctx.listener.release(self.peer)
            self.trace("*", f"closed{': ' + str(exc) if exc else ''}")

    def touch(self) -> None:
        self.last_active = time.monotonic()

    async def _watch_idle(self) -> None:
        timeout = self.ctx.idle_timeout
        while True:
            await asyncio.sleep(max(1.0, self.last_active + timeout - time.monotonic()))
            if self.busy == 0 and time.monotonic() - self.last_active >= timeout:
                self.trace("*", f"idle for {timeout:g} s: disconnected")
                if self.conn is not None:
                    self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "idle timeout")
                return

    # -- logins ------------------------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        self.touch()
        return True  # every user must authenticate, whether or not the account exists

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        self.touch()
        self.trace("C", f"login {username!r} password ****")
        account = await self.ctx.auth.login(Credentials("USER", username, password), self.peer,
                                            "sftp")
        if account is None:
            self.trace("S", "login refused")
            return False
        self._logged_in(account.address, "password")
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self.touch()
        address = normalize_address(username)
        if not valid_address(address):
            return False
        account = await asyncio.to_thread(self.ctx.accounts.get_account, address)
        if account is None:
            return False
        keys = await asyncio.to_thread(self.ctx.keys.list_keys, account.address)
        if not any(k.key.public_data == key.public_data for k in keys):
            return False
        self._logged_in(account.address, f"public key {key.get_fingerprint('sha256')}")
        return True

    def _logged_in(self, address: str, how: str) -> None:
        # A public key is validated twice (the client's query, then its signature): the login
        # is traced once, when asyncssh completes it.
        self.address = address
        self.how = how
        if self.conn is not None:
            self.conn.set_extra_info(netpost_account=address)

    def auth_completed(self) -> None:
        self.trace("S", f"login {self.address} ({self.how})")

    # Everything else asyncssh asks an SSHServer (port forwarding, tun/tap, host-based and
    # keyboard-interactive beyond the password) keeps its default: refused.


class _Reading:
    def __init__(self, vpath: str, file: BinaryIO) -> None:
        self.vpath = vpath
        self.file = file

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """For asyncssh's ranges@asyncssh.com (SEEK_DATA / SEEK_HOLE on the open file; reads
        use pread, so the position is not theirs)."""
        return os.lseek(self.file.fileno(), offset, whence)


class _Writing:
    def __init__(self, vpath: str, upload: Upload, append: bool) -> None:
        self.vpath = vpath
        self.upload = upload
        self.append = append
        self.mode: int | None = None  # set by FSETSTAT, applied at CLOSE
        self.times: tuple[float, float] | None = None


def _sftp_error(exc: TreeError) -> asyncssh.SFTPError:
    if isinstance(exc, NotFound):
        return asyncssh.SFTPNoSuchFile(str(exc))
    if isinstance(exc, QuotaExceeded):
        return asyncssh.SFTPFailure(f"quota exceeded: {exc}")  # v3 has no quota code
    text = str(exc)
    if isinstance(exc, NotAllowed) and ("permission denied" in text or "outside" in text):
        return asyncssh.SFTPPermissionDenied(text)
    return asyncssh.SFTPFailure(text)


def _flags_text(pflags: int) -> str:
    return "|".join(name for bit, name in _FXF_NAMES if pflags & bit) or "0"


class TreeSFTPServer(asyncssh.SFTPServer):
    """SFTP requests of one session, answered from the account's `FileTree` only.

    Every method of `asyncssh.SFTPServer` that would touch the host's file system is
    overridden; `map_path` refuses, so one that is not fails closed."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], tree: FileTree, session: SSHSession
                 ) -> None:
        super().__init__(chan)
        self.tree = tree
        self.session = session
        self.trace = session.trace
        self.files: set[_Reading | _Writing] = set()

    # -- helpers -----------------------------------------------------------------------------

    def _vpath(self, path: bytes) -> str:
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise asyncssh.SFTPNoSuchFile("bad file name: not UTF-8") from None
        try:
            return self.tree.resolve("/", text)
        except TreeError as exc:
            raise _sftp_error(exc) from None

    async def _run(self, request: str, work: Callable[[], T], quiet: bool = False) -> T:
        """Run blocking tree work in a thread, traced as `request` and its outcome."""
        session = self.session
        session.touch()
        session.busy += 1
        if not quiet:
            self.trace("C", request)
        try:
            result = await asyncio.to_thread(work)
        except (TreeError, asyncssh.SFTPError, OSError) as exc:
            if quiet:
                self.trace("C", request)  # quiet when it works, shown when it fails
            if isinstance(exc, TreeError):
                error = _sftp_error(exc)
                self.trace("S", f"{type(error).__name__.removeprefix('SFTP')}: {exc}")
                raise error from None
            if isinstance(exc, asyncssh.SFTPError):
                self.trace("S", f"{type(exc).__name__.removeprefix('SFTP')}: {exc.reason}")
                raise
            self.trace("S", f"Failure: {exc.strerror}")
            raise asyncssh.SFTPFailure(exc.strerror or "failed") from None
        finally:
            session.busy -= 1
            session.touch()
        if not quiet:
            self.trace("S", "OK")
        return result

    def _attrs(self, entry: Entry) -> asyncssh.SFTPAttrs:
        kind = stat_mod.S_IFDIR if entry.is_dir else stat_mod.S_IFREG
        mtime = int(entry.mtime)
        return asyncssh.SFTPAttrs(size=entry.size, uid=0, gid=0,
                                  permissions=kind | entry.mode, atime=mtime, mtime=mtime)

    def map_path(self, path: bytes) -> bytes:
        raise asyncssh.SFTPPermissionDenied("not available")

    def reverse_map_path(self, path: bytes) -> bytes:
        raise asyncssh.SFTPPermissionDenied("not available")

    # -- paths and listings ------------------------------------------------------------------

    def realpath(self, path: bytes) -> bytes:
        self.session.touch()
        return self._vpath(path).encode("utf-8")

    async def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        vpath = self._vpath(path)
        entry = await self._run(f"STAT {vpath}", lambda: self.tree.stat(vpath), quiet=True)
        return self._attrs(entry)

    async def lstat(self, path: bytes) -> asyncssh.SFTPAttrs:
        # Links are shown as what they point to (inside the tree), never as links.
        return await self.stat(path)

    async def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
        if isinstance(file_obj, _Writing):
            vpath = file_obj.vpath
            upload = file_obj.upload
            now = int(time.time())
            return asyncssh.SFTPAttrs(size=upload._extent, uid=0, gid=0,
                                      permissions=stat_mod.S_IFREG | 0o644,
                                      atime=now, mtime=now)
        assert isinstance(file_obj, _Reading)
        fd = file_obj.file.fileno()
        st = await asyncio.to_thread(os.fstat, fd)
        vpath = file_obj.vpath
        return self._attrs(Entry(vpath.rpartition("/")[2], False, st.st_size, st.st_mtime,
                                 stat_mod.S_IMODE(st.st_mode)))

    def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        vpath = self._vpath(path)
        self.session.touch()
        self.trace("C", f"OPENDIR {vpath}")
        try:
            entry = self.tree.stat(vpath)  # one stat, on the loop: opendir must fail now
        except TreeError as exc:
            error = _sftp_error(exc)
            self.trace("S", f"{type(error).__name__.removeprefix('SFTP')}: {exc}")
            raise error from None
        if not entry.is_dir:
            self.trace("S", f"Failure: {vpath}: not a directory")
            raise asyncssh.SFTPFailure(f"{vpath}: not a directory")
        self.trace("S", "OK")
        return self._names(vpath)

    async def _names(self, vpath: str) -> AsyncIterator[asyncssh.SFTPName]:
        tree = self.tree

        def listing() -> list[tuple[str, Entry]]:
            here = tree.stat(vpath)
            up = tree.stat(vpath.rpartition("/")[0] or "/")
            return [(".", here), ("..", up), *((e.name, e) for e in tree.listdir(vpath))]

        entries = await self._run(f"READDIR {vpath}", listing, quiet=True)
        now = time.time()
        for name, entry in entries:
            shown = Entry(name, entry.is_dir, entry.size, entry.mtime, entry.mode)
            yield asyncssh.SFTPName(name.encode("utf-8"), format_list(shown, now).encode(),
                                    self._attrs(entry))

    async def readlink(self, path: bytes) -> bytes:
        vpath = self._vpath(path)
        self.trace("C", f"READLINK {vpath}")
        self.trace("S", "NoSuchFile: not a symbolic link")
        raise asyncssh.SFTPNoSuchFile(f"{vpath}: not a symbolic link")

    async def statvfs(self, path: bytes) -> asyncssh.SFTPVFSAttrs:
        raise asyncssh.SFTPOpUnsupported("statvfs is not supported")

    async def fstatvfs(self, file_obj: object) -> asyncssh.SFTPVFSAttrs:
        raise asyncssh.SFTPOpUnsupported("fstatvfs is not supported")

    # -- changing the tree -------------------------------------------------------------------

    async def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        vpath = self._vpath(path)
        await self._run(f"MKDIR {vpath}", lambda: self.tree.mkdir(vpath))

    async def rmdir(self, path: bytes) -> None:
        vpath = self._vpath(path)
        await self._run(f"RMDIR {vpath}", lambda: self.tree.rmdir(vpath))

    async def remove(self, path: bytes) -> None:
        vpath = self._vpath(path)
        await self._run(f"REMOVE {vpath}", lambda: self.tree.delete(vpath))

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        # SFTP v3 RENAME fails when the new name exists; so does FileTree.rename.
        src, dst = self._vpath(oldpath), self._vpath(newpath)
        await self._run(f"RENAME {src} {dst}", lambda: self.tree.rename(src, dst))

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        """posix-rename@openssh.com: replaces an existing file (not a directory)."""
        src, dst = self._vpath(oldpath), self._vpath(newpath)
        tree = self.tree

        def work() -> None:
            try:
                dst_entry: Entry | None = tree.stat(dst)
            except NotFound:
                dst_entry = None
            if dst_entry is not None and src != dst:
                tree.stat(src)  # a missing source must not cost the target
                if dst_entry.is_dir:
                    raise NotAllowed(f"{dst}: file exists")
                tree.delete(dst)
            if src != dst:
                tree.rename(src, dst)

        await self._run(f"RENAME {src} {dst} (replacing)", work)

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        self.trace("C", "SYMLINK")
        self.trace("S", "PermissionDenied: links cannot be made")
        raise asyncssh.SFTPPermissionDenied("symbolic links cannot be made here")

    async def link(self, oldpath: bytes, newpath: bytes) -> None:
        self.trace("C", "LINK")
        self.trace("S", "PermissionDenied: links cannot be made")
        raise asyncssh.SFTPPermissionDenied("hard links cannot be made here")

    def _check_attrs(self, attrs: asyncssh.SFTPAttrs) -> None:
        if (attrs.size is not None or attrs.uid is not None or attrs.gid is not None
                or attrs.owner is not None or attrs.group is not None):
            raise asyncssh.SFTPPermissionDenied("only permissions and times can be set")

    def _apply_attrs(self, vpath: str, mode: int | None,
                     times: tuple[float, float] | None) -> None:
        """chmod (permission bits; the owner keeps read and write, as FTP's SITE CHMOD) and
        utime on a file or directory of the tree (blocking)."""
        real = self.tree.real(vpath)
        entry = self.tree.stat(vpath)
        try:
            if mode is not None:
                keep = 0o700 if entry.is_dir else 0o600
                os.chmod(real, (mode & 0o777) | keep, follow_symlinks=False)
            if times is not None:
                os.utime(real, times, follow_symlinks=False)
        except NotImplementedError:
            raise asyncssh.SFTPOpUnsupported("cannot change a link's attributes") from None

    @staticmethod
    def _times(attrs: asyncssh.SFTPAttrs) -> tuple[float, float] | None:
        if attrs.atime is None and attrs.mtime is None:
            return None
        now = time.time()
        atime = float(attrs.atime) if attrs.atime is not None else now
        mtime = float(attrs.mtime) if attrs.mtime is not None else atime
        return atime, mtime

    async def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        vpath = self._vpath(path)
        self._check_attrs(attrs)
        mode, times = attrs.permissions, self._times(attrs)
        what = " ".join(filter(None, (f"mode={mode & 0o777:o}" if mode is not None else "",
                                      "times" if times else "")))
        await self._run(f"SETSTAT {vpath} {what}".rstrip(),
                        lambda: self._apply_attrs(vpath, mode, times))

    async def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self.setstat(path, attrs)

    async def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        if isinstance(file_obj, _Writing) and attrs.size is not None:
            # The size of a file being written (OpenSSH's scp cuts its in-place upload so).
            upload, size = file_obj.upload, attrs.size
            await self._run(f"FSETSTAT {file_obj.vpath} size={size}",
                            lambda: upload.truncate(size))
            attrs = asyncssh.SFTPAttrs(uid=attrs.uid, gid=attrs.gid, owner=attrs.owner,
                                       group=attrs.group, permissions=attrs.permissions,
                                       atime=attrs.atime, mtime=attrs.mtime)
        self._check_attrs(attrs)
        if isinstance(file_obj, _Writing):
            # Applied when the upload becomes the file (CLOSE).
            if attrs.permissions is not None:
                file_obj.mode = attrs.permissions
            file_obj.times = self._times(attrs) or file_obj.times
            return
        assert isinstance(file_obj, _Reading)
        vpath = file_obj.vpath
        mode, times = attrs.permissions, self._times(attrs)
        await self._run(f"FSETSTAT {vpath}", lambda: self._apply_attrs(vpath, mode, times))

    # -- files -------------------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        vpath = self._vpath(path)
        tree = self.tree
        request = f"OPEN {vpath} {_flags_text(pflags)}"
        reading = bool(pflags & asyncssh.FXF_READ)
        writing = bool(pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND))
        if reading and writing:
            self.trace("C", request)
            self.trace("S", "OpUnsupported: read and write at once")
            raise asyncssh.SFTPOpUnsupported("opening a file for reading and writing at once "
                                              "is not supported")
        if not writing:
            handle: _Reading | _Writing = _Reading(
                vpath, await self._run(request, lambda: tree.open_read(vpath)))
            self.files.add(handle)
            return handle
        append = bool(pflags & asyncssh.FXF_APPEND)
        create = bool(pflags & asyncssh.FXF_CREAT)
        truncate = bool(pflags & asyncssh.FXF_TRUNC)
        exclusive = bool(pflags & asyncssh.FXF_EXCL)

        def begin() -> Upload:
            try:
                existing: Entry | None = tree.stat(vpath)
            except NotFound:
                existing = None
            if existing is not None and existing.is_dir:
                raise NotAllowed(f"{vpath}: is a directory")
            if existing is None and not create:
                raise NotFound(f"{vpath}: no such file")
            if existing is not None and create and exclusive:
                raise NotAllowed(f"{vpath}: file exists")
            if append:
                return tree.begin_upload(vpath, append=True)
            if existing is None or truncate:
                return tree.begin_upload(vpath)  # a temporary file until CLOSE
            return tree.begin_upload(vpath, in_place=True)

        upload = await self._run(request, begin)
        handle = _Writing(vpath, upload, append)
        if attrs.permissions is not None:
            handle.mode = attrs.permissions
        self.files.add(handle)
        return handle

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        if not isinstance(file_obj, _Reading):
            raise asyncssh.SFTPPermissionDenied("not open for reading")
        fd = file_obj.file.fileno()
        session = self.session
        session.touch()
        session.busy += 1
        try:
            return await pread(fd, min(size, _MAX_READ), offset)
        except OSError as exc:
            raise asyncssh.SFTPFailure(exc.strerror or "read failed") from None
        finally:
            session.busy -= 1
            session.touch()

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        if not isinstance(file_obj, _Writing):
            raise asyncssh.SFTPPermissionDenied("not open for writing")
        upload = file_obj.upload
        if file_obj.append:
            work: Callable[[], None] = lambda: upload.write(data)  # noqa: E731
        else:
            work = lambda: upload.write_at(offset, data)  # noqa: E731
        session = self.session
        session.touch()
        session.busy += 1
        try:
            await asyncio.to_thread(work)
        except TreeError as exc:
            # The upload is aborted (QuotaExceeded, a disk error): say so once, in the trace.
            error = _sftp_error(exc)
            self.trace("S", f"{type(error).__name__.removeprefix('SFTP')}: {exc}")
            raise error from None
        finally:
            session.busy -= 1
            session.touch()
        return len(data)

    def _client_closed(self) -> bool:
        """Whether the channel still receives: true for a CLOSE the client sent, false when
        asyncssh closes the handles of a session whose channel or connection went away (an
        upload interrupted, which must leave nothing under its name).  asyncssh calls
        `close` for both; the channel tells them apart: a lost connection has closed its
        sending side, and a client's EOF or channel close its receiving side."""
        chan = self.channel
        return not chan.is_closing() and getattr(chan, "_recv_state", "open") == "open"

    async def close(self, file_obj: object) -> None:
        if not isinstance(file_obj, (_Reading, _Writing)):
            return
        self.files.discard(file_obj)
        if isinstance(file_obj, _Reading):
            file_obj.file.close()
            return
        vpath = file_obj.vpath
        upload = file_obj.upload
        if not self._client_closed():
            await asyncio.to_thread(upload.abort)
            self.trace("*", f"upload of {vpath} abandoned ({upload.written} octets): "
                            "connection lost before CLOSE")
            return

        def commit() -> int:
            upload.commit()
            if file_obj.mode is not None or file_obj.times is not None:
                self._apply_attrs(vpath, file_obj.mode, file_obj.times)
            return upload.written

        await self._run(f"CLOSE {vpath} ({upload.written} octets written)", commit)

    async def fsync(self, file_obj: object) -> None:
        # fsync@openssh.com: an upload is made durable at CLOSE; a read file has nothing to do.
        return None

    async def lock(self, file_obj: object, offset: int, length: int, flags: int) -> None:
        raise asyncssh.SFTPOpUnsupported("locks are not supported")

    async def unlock(self, file_obj: object, offset: int, length: int) -> None:
        raise asyncssh.SFTPOpUnsupported("locks are not supported")

    def exit(self) -> None:
        for handle in list(self.files):
            if isinstance(handle, _Reading):
                handle.file.close()
            else:
                handle.upload.abort()
        self.files.clear()
        # The client ended the session: say how it went, as OpenSSH's sftp-server (a process
        # sshd runs) does by exiting; scp counts a channel closed without a status a failure.
        chan = self.channel
        if not chan.is_closing():
            try:
                chan.exit(0)
            except (OSError, asyncssh.Error):
                pass


def sftp_factory(ctx: SFTPContext) -> Callable[[asyncssh.SSHServerChannel[bytes]], TreeSFTPServer]:
    def factory(chan: asyncssh.SSHServerChannel[bytes]) -> TreeSFTPServer:
        conn = chan.get_connection()
        address = conn.get_extra_info("netpost_account")
        session = conn.get_extra_info("netpost_session")
        if not isinstance(address, str) or not isinstance(session, SSHSession):
            raise asyncssh.SFTPPermissionDenied("not logged in")
        session.trace("*", "sftp subsystem started")
        return TreeSFTPServer(chan, ctx.trees.tree(address), session)

    return factory

