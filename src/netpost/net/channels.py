"""Extra connections a session opens beside its own: FTP's data connections, active and passive.

`Channels` belongs to one session and opens at most `max_open` connections at a time, under the
listener's limits and with its TLS context (netpost is the TLS *server* on these connections
in both directions, as FTPS requires, RFC 4217 10.2):

* passive: `listen()` binds a port (from `ports`, or any) on the session's own local address
  and `accept()` takes the first connection *from the session's client address*; others are
  closed at once and counted (RFC 2577 5: a third host must not take over the data).
* active: `connect(host, port)` connects to the client, only to the session's client address
  (RFC 2577 3: no FTP bounce), from `source_port` when one is configured (port 20 + 10000).

Every channel is closed when the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import socket
import ssl
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING

from netpost.net.hosts import same_host

if TYPE_CHECKING:
    from netpost.net.session import Session

log = logging.getLogger("netpost.net")

CHANNEL_READ_LIMIT = 256 * 1024


class ChannelError(Exception):
    """A channel could not be opened; the message says why, fit for a protocol reply."""


class Truncated(ConnectionError):
    """The peer closed a TLS channel without close_notify: what came may be cut short."""


class Channel:
    """An open extra connection: read, write, close; plain or TLS.

    TLS is done here over memory BIOs rather than by the event loop's transport, for two
    reasons that decide whether an upload is whole: a clean end (the peer's close_notify) is
    told apart from a cut connection (`read` raises `Truncated`; RFC 4217 12.6 / RFC 8446 6.1),
    and no TLS 1.3 session tickets are sent on a channel (a client that closes with them
    unread makes its kernel reset the connection and drop the data it had not sent yet).
    """

    def __init__(self, owner: Channels, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter,
                 tls: tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO] | None = None) -> None:
        self._owner = owner
        self.reader = reader  # the raw stream (TLS records when `tls`)
        self.writer = writer
        self._tls: ssl.SSLObject | None = tls[0] if tls else None
        self._incoming = tls[1] if tls else ssl.MemoryBIO()
        self._outgoing = tls[2] if tls else ssl.MemoryBIO()
        self._eof = False
        peer = writer.get_extra_info("peername")
        self.peer: tuple[str, int] = (str(peer[0]), int(peer[1])) if peer else ("", 0)

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self._tls

    @property
    def tls(self) -> bool:
        return self._tls is not None

    async def _handshake(self, timeout: float) -> None:
        tls = self._tls
        assert tls is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            await self._flush_tls()
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("TLS handshake timed out")
            data = await asyncio.wait_for(self.reader.read(CHANNEL_READ_LIMIT), left)
            if not data:
                raise ConnectionError("connection closed during the TLS handshake")
            self._incoming.write(data)
        await self._flush_tls()

    async def _flush_tls(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self.writer.write(pending)
            await self.writer.drain()

    async def read(self, n: int = CHANNEL_READ_LIMIT) -> bytes:
        """Up to `n` octets; b"" at a clean end.  Raises Truncated for a TLS channel closed
        without close_notify."""
        tls = self._tls
        if tls is None:
            return await self.reader.read(n)
        while True:
            try:
                data = tls.read(n)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self._eof = True
                return b""
            else:
                # One read gives one TLS record (16 KiB at most): take every record already
                # here, so the caller handles few large pieces rather than many small ones.
                parts = [data]
                size = len(data)
                while size < n:
                    try:
                        more = tls.read(n - size)
                    except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                        break  # the close_notify is seen by the next read
                    if not more:
                        break
                    parts.append(more)
                    size += len(more)
                return b"".join(parts)
            await self._flush_tls()  # key updates and the like
            data = await self.reader.read(CHANNEL_READ_LIMIT)
            if not data:
                raise Truncated("the data connection closed without TLS close_notify")
            self._incoming.write(data)

    def write(self, data: bytes) -> None:
        if self._tls is None:
            self.writer.write(data)
            return
        self._tls.write(data)
        self.writer.write(self._outgoing.read())

    async def drain(self) -> None:
        await self.writer.drain()

    async def finish(self, timeout: float) -> None:
        """End the channel cleanly: everything written is sent, then (TLS) close_notify,
        then FIN."""
        if self._tls is not None:
            with contextlib.suppress(ssl.SSLError, ssl.SSLWantReadError):
                self._tls.unwrap()
            await asyncio.wait_for(self._flush_tls(), timeout)
        await asyncio.wait_for(self.writer.drain(), timeout)
        if self.writer.can_write_eof():
            self.writer.write_eof()
        await self.aclose()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        self._owner._forget(self)

    def abort(self) -> None:
        """Drop the connection at once (a failed or aborted transfer)."""
        self.writer.transport.abort()
        self._owner._forget(self)

    async def aclose(self) -> None:
        self.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (TimeoutError, OSError, ssl.SSLError):
            pass


class SocketChannel:
    """A plain channel without a stream transport: the socket itself, for a binary upload.

    `recv_into` reads straight into the caller's buffer, which the caller writes to its file:
    no copy in between (a stream transport would copy every octet twice more, into its buffer
    and out of it), as the plain RETR path sends with sendfile(2)."""

    tls = False
    ssl_object: ssl.SSLObject | None = None

    def __init__(self, owner: Channels, sock: socket.socket) -> None:
        self._owner = owner
        self.sock = sock
        sock.setblocking(False)
        peer = sock.getpeername()
        self.peer: tuple[str, int] = (str(peer[0]), int(peer[1]))

    async def recv_into(self, buffer: memoryview) -> int:
        """Octets read into `buffer`, waiting for some; 0 at the peer's end."""
        while True:
            try:
                return self.sock.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                await self._readable()

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        fd = self.sock.fileno()
        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)

    async def finish(self, timeout: float) -> None:
        """End the channel cleanly (FIN)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self.close()

    def close(self) -> None:
        self.sock.close()
        self._owner._forget(self)

    def abort(self) -> None:
        """Drop the connection at once (RST: SO_LINGER with a zero timeout)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    async def aclose(self) -> None:
        self.close()


AnyChannel = Channel | SocketChannel


class PassivePort:
    """A listening socket waiting for the session's client to connect (PASV/EPSV)."""

    def __init__(self, owner: Channels, sock: socket.socket) -> None:
        self._owner = owner
        self.sock = sock
        name = sock.getsockname()
        self.host: str = name[0]
        self.port: int = name[1]
        self.refused = 0  # connections from other addresses, closed unread

    async def accept(self, *, tls: bool = False, timeout: float | None = None,
                     raw: bool = False) -> AnyChannel:
        """The first connection from the session's client; ChannelError on timeout.  `raw`
        (plain only): a SocketChannel instead of streams."""
        loop = asyncio.get_running_loop()
        allowed = self._owner.session.peer
        deadline = loop.time() + (timeout if timeout is not None else self._owner.timeout)
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise ChannelError("no data connection arrived in time")
                try:
                    conn, addr = await asyncio.wait_for(loop.sock_accept(self.sock), left)
                except TimeoutError:
                    raise ChannelError("no data connection arrived in time") from None
                if same_host(str(addr[0]), allowed):
                    break
                self.refused += 1
                log.warning("%s %s: refused a data connection from %s (not the client)",
                            self._owner.session.listener.spec.name, allowed, addr[0])
                conn.close()
        finally:
            self.close()
        return await self._owner._wrap(conn, tls, raw)

    def close(self) -> None:
        self.sock.close()
        self._owner._forget(self)


class Channels:
    """The extra connections of one session."""

    def __init__(self, session: Session, *, max_open: int = 2, ports: Iterable[int] | None = None,
                 source_port: int | None = None, timeout: float = 30.0) -> None:
        self.session = session
        self.max_open = max_open
        self.ports = list(ports) if ports is not None else None
        self.source_port = source_port
        self.timeout = timeout
        self._open: set[AnyChannel | PassivePort] = set()
        session.on_close(self.close_all)

    def _reserve(self) -> None:
        if len(self._open) >= self.max_open:
            raise ChannelError("too many data connections open")
        listener = self.session.listener
        if len(listener.channels) >= listener.max_connections:
            raise ChannelError("too many connections")

    def _local_host(self) -> str:
        name = self.session.writer.get_extra_info("sockname")
        return str(name[0]) if name else "127.0.0.1"

    async def listen(self) -> PassivePort:
        """Open a passive port on the session's local address."""
        self._reserve()
        host = self._local_host()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        candidates = list(self.ports) if self.ports else [0]
        random.shuffle(candidates)
        last: OSError | None = None
        for port in candidates[:64] if self.ports else candidates:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(1)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                last = exc
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise ChannelError(f"cannot open a passive port: {exc.strerror}") from exc
            passive = PassivePort(self, sock)
            self._add(passive)
            return passive
        raise ChannelError("no passive port free" + (f" ({last.strerror})" if last else ""))

    async def connect(self, host: str, port: int, *, tls: bool = False,
                      raw: bool = False) -> AnyChannel:
        """Connect to the session's client (active mode); anything else is refused."""
        if not same_host(host, self.session.peer):
            raise ChannelError("data connections go only to the client's own address")
        self._reserve()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self.source_port is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self._local_host(), self.source_port))
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    # The usual port is held (a connection in TIME_WAIT, another program):
                    # any port will do for the client, which checks none (RFC 959 3.2
                    # defaults, not a rule).
                    log.info("%s %s: data port %d in use; using another",
                             self.session.listener.spec.name, self.session.peer,
                             self.source_port)
                    sock.close()
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), self.timeout)
        except TimeoutError:
            sock.close()
            raise ChannelError("the data connection timed out") from None
        except OSError as exc:
            sock.close()
            raise ChannelError(f"cannot open the data connection: {exc.strerror}") from exc
        return await self._wrap(sock, tls, raw)

    async def _wrap(self, sock: socket.socket, tls: bool, raw: bool = False) -> AnyChannel:
        """Streams over a connected socket; with `tls`, netpost is the TLS server; `raw` and
        not `tls`: the socket itself (SocketChannel)."""
        if raw and not tls:
            try:
                bare = SocketChannel(self, sock)
            except OSError as exc:  # gone before it could be used
                sock.close()
                raise ChannelError(f"the data connection failed: {exc}") from exc
            self._add(bare)
            return bare
        loop = asyncio.get_running_loop()
        ctx = self.session.listener.ssl_context if tls else None
        if tls and ctx is None:
            sock.close()
            raise ChannelError("TLS is not available")
        reader = asyncio.StreamReader(limit=CHANNEL_READ_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
        except OSError as exc:
            sock.close()
            raise ChannelError(f"the data connection failed: {exc}") from exc
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        state: tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO] | None = None
        if ctx is not None:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            # No session tickets on a channel (see Channel); the control connection, made with
            # the same context, still gets them.  SSL_new copies the count, so it is set only
            # around this one wrap (nothing else runs on the loop meanwhile).
            tickets = ctx.num_tickets
            ctx.num_tickets = 0
            try:
                state = (ctx.wrap_bio(incoming, outgoing, server_side=True), incoming, outgoing)
            finally:
                ctx.num_tickets = tickets
        channel = Channel(self, reader, writer, state)
        if state is not None:
            try:
                await channel._handshake(self.timeout)
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
                transport.abort()
                raise ChannelError(f"the data connection's TLS handshake failed: {exc}") from exc
        self._add(channel)
        return channel

    def _add(self, item: AnyChannel | PassivePort) -> None:
        self._open.add(item)
        self.session.listener.channels.add(item)

    def _forget(self, item: AnyChannel | PassivePort) -> None:
        self._open.discard(item)
        self.session.listener.channels.discard(item)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def close_all(self) -> None:
        for item in list(self._open):
            item.close()
