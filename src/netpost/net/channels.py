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
import errno
import logging
import random
import socket
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netpost.net.session import Session

log = logging.getLogger("netpost.net")

CHANNEL_READ_LIMIT = 256 * 1024


class ChannelError(Exception):
    """A channel could not be opened; the message says why, fit for a protocol reply."""


class Channel:
    """An open extra connection: stream reader and writer, plain or TLS."""

    def __init__(self, owner: Channels, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self._owner = owner
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer: tuple[str, int] = (str(peer[0]), int(peer[1])) if peer else ("", 0)

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        obj = self.writer.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        self._owner._forget(self)

    async def aclose(self) -> None:
        self.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (TimeoutError, OSError, ssl.SSLError):
            pass


class PassivePort:
    """A listening socket waiting for the session's client to connect (PASV/EPSV)."""

    def __init__(self, owner: Channels, sock: socket.socket) -> None:
        self._owner = owner
        self.sock = sock
        name = sock.getsockname()
        self.host: str = name[0]
        self.port: int = name[1]
        self.refused = 0  # connections from other addresses, closed unread

    async def accept(self, *, tls: bool = False, timeout: float | None = None) -> Channel:
        """The first connection from the session's client; ChannelError on timeout."""
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
                if _same_host(str(addr[0]), allowed):
                    break
                self.refused += 1
                log.warning("%s %s: refused a data connection from %s (not the client)",
                            self._owner.session.listener.spec.name, allowed, addr[0])
                conn.close()
        finally:
            self.close()
        return await self._owner._wrap(conn, tls)

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
        self._open: set[Channel | PassivePort] = set()
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

    async def connect(self, host: str, port: int, *, tls: bool = False) -> Channel:
        """Connect to the session's client (active mode); anything else is refused."""
        if not _same_host(host, self.session.peer):
            raise ChannelError("data connections go only to the client's own address")
        self._reserve()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self.source_port is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self._local_host(), self.source_port))
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), self.timeout)
        except TimeoutError:
            sock.close()
            raise ChannelError("the data connection timed out") from None
        except OSError as exc:
            sock.close()
            raise ChannelError(f"cannot open the data connection: {exc.strerror}") from exc
        return await self._wrap(sock, tls)

    async def _wrap(self, sock: socket.socket, tls: bool) -> Channel:
        """Streams over a connected socket; with `tls`, netpost is the TLS server."""
        loop = asyncio.get_running_loop()
        ctx = self.session.listener.ssl_context if tls else None
        if tls and ctx is None:
            sock.close()
            raise ChannelError("TLS is not available")
        reader = asyncio.StreamReader(limit=CHANNEL_READ_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=ctx,
                ssl_handshake_timeout=self.timeout if ctx is not None else None)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            sock.close()
            raise ChannelError(f"the data connection failed: {exc}") from exc
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        channel = Channel(self, reader, writer)
        self._add(channel)
        return channel

    def _add(self, item: Channel | PassivePort) -> None:
        self._open.add(item)
        self.session.listener.channels.add(item)

    def _forget(self, item: Channel | PassivePort) -> None:
        self._open.discard(item)
        self.session.listener.channels.discard(item)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def close_all(self) -> None:
        for item in list(self._open):
            item.close()


def _same_host(a: str, b: str) -> bool:
    """Do two textual addresses name the same host (IPv4-mapped IPv6 = IPv4)?"""
    def canon(x: str) -> str:
        x = x.split("%", 1)[0].lower()
        return x[7:] if x.startswith("::ffff:") and "." in x else x
    return canon(a) == canon(b)
