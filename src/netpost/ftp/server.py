"""FTP session: drives the control-connection engine, the user's file tree and the data
connections (net/channels.py: passive only from the client's address, active only to it).

A transfer runs as a task beside the control connection, so ABOR, STAT and NOOP are answered
while data moves.  Uploads go to a hidden temporary file that is fsync'd and renamed over the
final name only when the whole file has arrived (`files.tree.Upload`), so a 226 means the file
is whole on disk and a broken upload leaves nothing under the real name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, BinaryIO

from netpost.auth.sasl import Credentials
from netpost.auth.service import Authenticator
from netpost.files.reads import pread
from netpost.files.tree import (
    FileTree,
    NoSpace,
    NotAllowed,
    NotFound,
    QuotaExceeded,
    TreeError,
    format_facts,
    format_list,
)
from netpost.ftp.protocol import (
    Abort,
    FileRequest,
    FTPConnection,
    FTPSettings,
    Login,
    PassiveRequest,
    StartTLS,
    TransferRequest,
)
from netpost.net.channels import (
    AnyChannel,
    Channel,
    ChannelError,
    Channels,
    PassivePort,
    SocketChannel,
    Truncated,
)
from netpost.net.session import Engine, Session

if TYPE_CHECKING:
    from netpost.net.stream import StreamListener

log = logging.getLogger("netpost.ftp")

CHUNK = 256 * 1024  # octets per read/write on a data connection
SENDFILE_CHUNK = 8 * 1024 * 1024


def refuse_line(reason: str) -> bytes:
    return f"421 {reason}, try again later\r\n".encode()


class TransferFailed(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class FTPSession(Session):
    """One FTP control connection and its data connections."""

    def __init__(self, listener: StreamListener, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: str, *, settings: FTPSettings,
                 auth: Authenticator, trees: Callable[[str], FileTree],
                 passive_ports: range | None, active_port: int | None, data_timeout: float,
                 require_tls_reuse: bool, require_close_notify: bool = True,
                 tree_cache: Callable[[str], FileTree | None] | None = None) -> None:
        super().__init__(listener, reader, writer, peer)
        # Clients send ABOR as TCP urgent data (the Telnet Synch of RFC 959 4.1.3: IAC DM
        # urgent; Python's ftplib: the whole "ABOR\r\n").  Without SO_OOBINLINE the kernel
        # takes the urgent byte out of the stream and the line never ends; keep it in place,
        # as vsftpd and pyftpdlib do.
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        self.settings = settings
        self.auth = auth
        self.trees = trees
        self.tree_cache = tree_cache  # the tree if made already, without a worker hop
        self.data_timeout = data_timeout
        self.require_tls_reuse = require_tls_reuse
        self.require_close_notify = require_close_notify
        self.channels = Channels(self, max_open=2, ports=passive_ports,
                                 source_port=active_port, timeout=data_timeout)
        self.tree: FileTree | None = None
        self.passive: PassivePort | None = None
        self.transfer: asyncio.Task[None] | None = None
        self._events = asyncio.Lock()
        self.on_close(self._cancel_transfer)

    # --- the session contract -----------------------------------------------------------------

    def make_engine(self) -> Engine:
        self.ftp = FTPConnection(self.settings, trace=self.trace)
        return self.ftp

    def start(self) -> None:
        self.ftp.greeting()

    def say_goodbye(self, reason: str) -> None:
        if reason == "idle":
            self.ftp.close("Idle timeout, closing control connection")
        else:
            self.ftp.close("Server shutting down, try again later")

    def in_transaction(self) -> bool:
        return self.ftp.transferring

    async def _handle_events(self) -> bool:
        # The control loop and a finishing transfer both answer events: one at a time.
        async with self._events:
            return await super()._handle_events()

    async def handle(self, event: Any) -> None:
        ftp = self.ftp
        try:
            if isinstance(event, StartTLS):
                await self.start_tls()
            elif isinstance(event, Login):
                await self.login(event)
            elif isinstance(event, PassiveRequest):
                await self.open_passive()
            elif isinstance(event, FileRequest):
                code, text = await self.file_request(event)
                ftp.reply(code, text)
            elif isinstance(event, TransferRequest):
                await self.begin_transfer(event)
            elif isinstance(event, Abort):
                if self.transfer is not None:
                    self.transfer.cancel()
        except TreeError as exc:
            ftp.reply(*_tree_reply(exc))
        except Exception:
            log.exception("ftp %s: cannot answer %s", self.peer, type(event).__name__)
            if not isinstance(event, (StartTLS, Abort)):
                ftp.reply(451, "Local error, try again")

    # --- login ---------------------------------------------------------------------------------

    async def login(self, event: Login) -> None:
        creds = Credentials("USER", event.user, event.password)
        account = await self.auth.login(creds, self.peer, "ftp")
        if account is None:
            self.ftp.reject_login()
            return
        # The tree is made once per account (a mkdir, in a worker); later logins find it.
        cached = self.tree_cache(account.address) if self.tree_cache is not None else None
        self.tree = cached or await asyncio.to_thread(self.trees, account.address)
        self.ftp.accept_login(account.address)

    # --- passive mode --------------------------------------------------------------------------

    async def open_passive(self) -> None:
        if self.passive is not None:
            self.passive.close()
            self.passive = None
        try:
            self.passive = await self.channels.listen()
        except ChannelError as exc:
            self.ftp.reply(425, f"Cannot open a passive port: {exc}")
            return
        host = self.passive.host
        if host.startswith("::ffff:"):
            host = host[7:]
        self.ftp.passive_ready(host, self.passive.port)

    # --- file commands -------------------------------------------------------------------------

    async def file_request(self, event: FileRequest) -> tuple[int, str | list[str]]:
        tree = self.tree
        assert tree is not None
        cwd = self.ftp.cwd

        def run() -> tuple[int, str | list[str]]:
            path = tree.resolve(cwd, event.path)
            verb = event.verb
            if verb == "CWD":
                if not tree.is_dir(path):
                    raise NotFound(f"{path}: not a directory")
                self.ftp.set_cwd(path)
                return 250, f"Directory changed to {path}"
            if verb == "MKD":
                tree.mkdir(path)
                return 257, f"\"{_quote(path)}\" created"
            if verb == "RMD":
                tree.rmdir(path)
                return 250, f"Directory {path} removed"
            if verb == "DELE":
                tree.delete(path)
                return 250, f"File {path} deleted"
            if verb == "RNFR":
                tree.stat(path)
                return 350, "Ready for RNTO"
            if verb == "RNTO":
                assert event.source is not None
                source = tree.resolve(cwd, event.source)
                tree.rename(source, path)
                return 250, f"Renamed {source} to {path}"
            if verb == "SIZE":
                entry = tree.stat(path)
                if entry.is_dir:
                    raise NotAllowed(f"{path}: is a directory")
                return 213, str(entry.size)
            if verb == "MDTM":
                entry = tree.stat(path)
                if entry.is_dir:
                    raise NotAllowed(f"{path}: is a directory")
                return 213, time.strftime("%Y%m%d%H%M%S", time.gmtime(entry.mtime))
            if verb == "CHMOD":
                assert event.source is not None
                real = tree.real(path)
                tree.stat(path)
                # Permission bits only, and the owner (netpost) keeps what it needs to manage
                # the tree: read and write on files, everything on directories.
                keep = 0o700 if real.is_dir() else 0o600
                os.chmod(real, (int(event.source, 8) & 0o777) | keep)
                return 200, f"Mode of {path} set to {int(event.source, 8) & 0o777 | keep:o}"
            if verb == "MLST":
                entry = tree.stat(path)
                # RFC 3659 7.2: the facts line starts with a space.
                return 250, [f"Listing {path}", " " + format_facts(entry, path), "End"]
            # STAT path: the listing over the control connection (RFC 959 4.1.3).
            entries = tree.listdir(path)
            now = time.time()
            return 213, [f"Status of {path}:", *(format_list(e, now) for e in entries),
                         "End of status"]

        return await asyncio.to_thread(run)

    # --- transfers ----------------------------------------------------------------------------

    async def begin_transfer(self, event: TransferRequest) -> None:
        tree = self.tree
        assert tree is not None
        cwd = self.ftp.cwd
        verb = event.verb

        def prepare() -> tuple[str, Any]:
            if verb == "STOU":
                directory = tree.resolve(cwd, "")
                path = tree.unique_name(directory, event.path or None)
            else:
                path = tree.resolve(cwd, event.path)
            if verb == "RETR":
                return path, tree.open_read(path, event.offset)
            if verb in ("STOR", "APPE", "STOU"):
                offset = event.offset if verb == "STOR" and event.offset else None
                return path, tree.begin_upload(path, append=verb == "APPE", offset=offset)
            # A listing of a missing or forbidden path is refused (550) before the 150, not
            # after a data connection was opened for it.
            entry = tree.stat(path)
            if verb == "MLSD" and not entry.is_dir:
                raise NotAllowed(f"{path}: not a directory (MLSD lists directories)")
            return path, None

        passive = self.passive
        self.passive = None
        if passive is None and event.active is None:
            self.ftp.reply(425, "Use PORT, EPRT, PASV or EPSV first")
            return
        try:
            path, handle = await asyncio.to_thread(prepare)
        except BaseException:
            if passive is not None:
                passive.close()  # spent with the refused command
            raise
        listing = verb in ("LIST", "NLST", "MLSD")
        kind = "ASCII" if event.ascii or listing else "BINARY"
        what = "" if listing else f" for {path}"
        if verb == "STOU":
            # RFC 1123 4.1.2.9: "150 FILE: name".
            self.ftp.transfer_started(f"FILE: {path}")
        else:
            self.ftp.transfer_started(f"Opening {kind} mode data connection{what}")
        self.transfer = asyncio.create_task(self._run_transfer(event, path, handle, passive))

    async def _run_transfer(self, event: TransferRequest, path: str, handle: Any,
                            passive: PassivePort | None) -> None:
        channel: AnyChannel | None = None
        code, text = 226, "Transfer complete"
        try:
            await self.flush()
            channel = await self._open_data(event, passive)
            if event.verb == "RETR":
                assert isinstance(channel, Channel)
                await self._send_file(channel, handle, event.ascii)
            elif event.verb in ("STOR", "APPE", "STOU"):
                await self._receive_file(channel, handle, event.ascii)
                if event.verb == "STOU":
                    text = f"Transfer complete: stored as {path}"
                # The upload is whole on disk now: a client that is gone before our end of
                # the channel (TLS close_notify, FIN) is out does not make it fail.
                closing, channel = channel, None
                try:
                    await self._close_data(closing, clean=True)
                except (OSError, TransferFailed):
                    closing.abort()
            else:
                assert isinstance(channel, Channel)
                await self._send_listing(channel, event.verb, path)
            if channel is not None:
                await self._close_data(channel, clean=True)
                channel = None
        except asyncio.CancelledError:
            code, text = 426, "Connection closed; transfer aborted"
        except TransferFailed as exc:
            code, text = exc.code, exc.text
        except QuotaExceeded as exc:
            code, text = _tree_reply(exc)
        except TreeError as exc:
            code, text = _tree_reply(exc)
        except Truncated:
            code, text = 426, "Data connection closed without TLS close_notify; transfer aborted"
        except (ConnectionError, OSError, EOFError) as exc:
            code, text = 426, f"Connection closed; transfer aborted ({exc.__class__.__name__})"
        except Exception:
            log.exception("ftp %s: transfer failed", self.peer)
            code, text = 451, "Local error in processing; transfer aborted"
        finally:
            if channel is not None:
                await self._close_data(channel, clean=False)
            if event.verb == "RETR" and handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()
            elif handle is not None and code >= 400:
                # An upload that failed leaves nothing under its name (STOR) or keeps what was
                # written (APPE, REST: resumable).
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(handle.abort)
            self.transfer = None
            if not self.ftp.closed:
                self.ftp.transfer_done(code, text)
                asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        """After a transfer: send its reply and answer the commands held meanwhile."""
        with contextlib.suppress(Exception):
            await self.flush()
            while await self._handle_events():
                await self.flush()
            if self.ftp.closed and self.task is not None:
                self.interrupt("closed")

    async def _open_data(self, event: TransferRequest,
                         passive: PassivePort | None) -> AnyChannel:
        # A plain binary upload reads the socket itself into one buffer (SocketChannel).
        raw = event.verb in ("STOR", "APPE", "STOU") and not event.ascii
        try:
            if passive is not None:
                channel = await passive.accept(tls=event.protected, timeout=self.data_timeout,
                                               raw=raw)
            else:
                assert event.active is not None
                channel = await self.channels.connect(event.active.host, event.active.port,
                                                      tls=event.protected, raw=raw)
        except ChannelError as exc:
            raise TransferFailed(425, f"Cannot open data connection: {exc}") from None
        if event.protected and self.require_tls_reuse:
            ssl_object = channel.ssl_object
            if ssl_object is None or not ssl_object.session_reused:
                # Like vsftpd's require_ssl_reuse: the data connection must resume the control
                # connection's TLS session, so another party cannot take its place.
                await self._close_data(channel, clean=False)
                raise TransferFailed(522, "Data connection must reuse the control connection's "
                                     "TLS session")
        return channel

    async def _close_data(self, channel: AnyChannel, *, clean: bool) -> None:
        if clean:
            try:
                await channel.finish(self.data_timeout)
            except TimeoutError:
                channel.abort()
                raise TransferFailed(426, "Data connection timed out") from None
        else:
            channel.abort()

    def _progress(self) -> None:
        self.last_activity = self.loop.time()  # a running transfer keeps the session alive

    async def _write(self, channel: Channel, data: bytes) -> None:
        channel.write(data)
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation (ABOR)
            # that comes as the drain finishes, and the transfer would go on.
            async with asyncio.timeout(self.data_timeout):
                await channel.drain()
        except TimeoutError:
            raise TransferFailed(426, "Data connection timed out") from None
        self._progress()

    async def _send_file(self, channel: Channel, file: BinaryIO, ascii: bool) -> None:
        sock = channel.writer.get_extra_info("socket")
        if not ascii and not channel.tls and sock is not None:
            # Plain binary: the kernel copies the file to the socket (sendfile(2)) on the event
            # loop, waiting for the socket when it is full (a client that stops reading holds
            # no thread: blocking workers here starved logins once).  The transport is idle
            # meanwhile; a duplicate descriptor keeps the loop's watchers apart.
            await channel.writer.drain()
            await self._sendfile(sock.fileno(), file)
            return
        pending_cr = False
        fd, offset = file.fileno(), file.tell()
        while True:
            data = await pread(fd, CHUNK, offset)
            if not data:
                return
            offset += len(data)
            if ascii:
                data, pending_cr = _to_crlf(data, pending_cr)
            await self._write(channel, data)

    async def _sendfile(self, sock_fd: int, file: BinaryIO) -> None:
        loop = asyncio.get_running_loop()
        out_fd = os.dup(sock_fd)
        try:
            in_fd, offset = file.fileno(), file.tell()
            while True:
                try:
                    sent = os.sendfile(out_fd, in_fd, offset, SENDFILE_CHUNK)
                except BlockingIOError:
                    await self._writable(loop, out_fd)
                    continue
                if sent == 0:
                    return
                offset += sent
                self._progress()
                await asyncio.sleep(0)  # other connections get their turn
        finally:
            os.close(out_fd)

    async def _writable(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        ready = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_writer(fd, wake)
        try:
            async with asyncio.timeout(self.data_timeout):
                await ready
        except TimeoutError:
            raise TransferFailed(426, "Data connection timed out") from None
        finally:
            loop.remove_writer(fd)

    async def _receive_file(self, channel: AnyChannel, upload: Any, ascii: bool) -> None:
        read = self._raw_reader(channel) if isinstance(channel, SocketChannel) \
            else self._stream_reader(channel)
        pending = b""
        loop = asyncio.get_running_loop()
        limit = self.data_timeout
        try:
            # One deadline for the whole upload, moved on as data comes (moving it for every
            # piece cost as much as the write).  asyncio.timeout, not wait_for: see _write.
            async with asyncio.timeout(limit) as deadline:
                moved = loop.time()
                while True:
                    data = await read()
                    now = loop.time()
                    if now - moved > limit / 4:
                        deadline.reschedule(now + limit)
                        moved = now
                        self._progress()
                    if not data:
                        break
                    if ascii:
                        data, pending = _from_crlf(pending + bytes(data))
                    # Into the page cache on the loop, as event-loop servers do: a worker
                    # thread per piece cost more than the write (fsync is in commit).
                    upload.write(data)
        except TimeoutError:
            raise TransferFailed(426, "Data connection timed out") from None
        if pending:
            upload.write(pending)
        await asyncio.to_thread(upload.commit)

    def _raw_reader(self, channel: SocketChannel) -> Callable[[], Awaitable[memoryview]]:
        """Pieces of a plain upload, read from the socket into one buffer that the file is
        written from (no copy in between); each piece is valid until the next read."""
        buffer = memoryview(bytearray(CHUNK))

        async def read() -> memoryview:
            n = await channel.recv_into(buffer)
            await asyncio.sleep(0)  # a fast client must not hold the loop
            return buffer[:n]

        return read

    def _stream_reader(self, channel: Channel) -> Callable[[], Awaitable[bytes]]:
        """Pieces of an upload through the channel's stream (and TLS); a TLS upload cut
        without close_notify raises Truncated unless `require_close_notify` is off."""

        async def read() -> bytes:
            try:
                return await channel.read(CHUNK)
            except Truncated:
                if self.require_close_notify:
                    raise
                return b""  # a bare FIN ends the upload, as vsftpd's default

        return read

    async def _send_listing(self, channel: Channel, verb: str, path: str) -> None:
        tree = self.tree
        assert tree is not None

        def lines() -> list[str]:
            entries = tree.listdir(path)
            if verb == "NLST":
                return [e.name for e in entries]
            if verb == "MLSD":
                if not tree.is_dir(path):
                    raise NotAllowed(f"{path}: not a directory (MLSD lists directories)")
                return [format_facts(e, _join(path, e.name)) for e in entries]
            now = time.time()
            return [format_list(e, now) for e in entries]

        text = await asyncio.to_thread(lines)
        data = "".join(f"{line}\r\n" for line in text).encode("utf-8", "surrogateescape")
        for i in range(0, len(data), CHUNK):
            await self._write(channel, data[i:i + CHUNK])

    def _cancel_transfer(self) -> None:
        if self.transfer is not None:
            self.transfer.cancel()


def _tree_reply(exc: TreeError) -> tuple[int, str]:
    if isinstance(exc, NoSpace):
        return 452, f"Insufficient storage space: {exc}"  # RFC 959 4.2
    if isinstance(exc, QuotaExceeded):
        return 552, f"Quota exceeded: {exc}"
    text = str(exc)
    if isinstance(exc, NotFound):
        return 550, text
    # The reason follows the path ("/a/b: reason"): the client's path must not pick the code
    # (RETR /etc-link/hostname is 550, not 553 for "name").
    reason = "bad file name" if text.startswith("bad file name") else text.rpartition(": ")[2]
    if "restart offset" in reason:
        return 554, text  # RFC 3659 5.5: requested action not taken, invalid REST
    return 553 if "name" in reason.lower() else 550, text


def _quote(path: str) -> str:
    return path.replace('"', '""')  # RFC 959 7


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def _to_crlf(data: bytes, pending_cr: bool) -> tuple[bytes, bool]:
    """LF → CRLF for TYPE A (RFC 959 3.1.1.1), leaving existing CRLF alone across chunks."""
    if pending_cr and data.startswith(b"\n"):
        out = b"\n" + data[1:].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    else:
        out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return out, data.endswith(b"\r")


def _from_crlf(data: bytes) -> tuple[bytes, bytes]:
    """CRLF → LF for TYPE A uploads; a CR at the end waits for the next chunk."""
    if data.endswith(b"\r"):
        return data[:-1].replace(b"\r\n", b"\n"), b"\r"
    return data.replace(b"\r\n", b"\n"), b""

