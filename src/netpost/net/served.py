"""Listeners served by a library's own server (SSH with asyncssh, HTTP with an ASGI server).

netpost binds and listens on the socket itself, so `--listen`, the start-up listing, the
connection limits and the shutdown are the same as for its own protocol sessions; the service's
`serve(sock, listener)` hands the listening socket to the library and returns the running
server.  The library's accept hook calls `admit(peer)` / `release(peer)` so the per-address
and total limits ([limits] max_connections, max_connections_per_ip) hold here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import TYPE_CHECKING

from netpost.config import ListenAddress
from netpost.net.session import ListenerSpec, client_key
from netpost.net.trace import TraceLog

if TYPE_CHECKING:
    from netpost.registry import RunningServer, ServerHandler

log = logging.getLogger("netpost.net")


class ServedListener:
    def __init__(self, spec: ListenerSpec, handler: ServerHandler, *,
                 ssl_context: ssl.SSLContext | None, max_connections: int, max_per_ip: int,
                 trace_log: TraceLog | None) -> None:
        self.spec = spec
        self.handler = handler
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.trace_log = trace_log if spec.traced else None
        self.bound: ListenAddress | None = None
        self.per_ip: dict[str, int] = {}
        self.connections = 0
        self.stopping = False
        self.server: RunningServer | None = None

    @property
    def busy(self) -> bool:
        return False  # the library finishes or drops its own connections on close

    async def start(self) -> None:
        addr = self.spec.address
        infos = await asyncio.get_running_loop().getaddrinfo(
            addr.host or None, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        name = sock.getsockname()
        self.bound = ListenAddress(name[0], name[1])
        self.server = await self.handler.serve(sock, self)

    def admit(self, peer: str) -> str | None:
        """Count a new connection from `peer`; the reason to refuse it, if it must be."""
        if self.stopping:
            return "shutting down"
        key = client_key(peer)
        count = self.per_ip.get(key, 0)
        if count >= self.max_per_ip:
            return "too many connections from your address"
        if self.connections >= self.max_connections:
            return "too many connections"
        self.per_ip[key] = count + 1
        self.connections += 1
        return None

    def release(self, peer: str) -> None:
        key = client_key(peer)
        left = self.per_ip.get(key, 0) - 1
        if left > 0:
            self.per_ip[key] = left
        else:
            self.per_ip.pop(key, None)
        self.connections = max(0, self.connections - 1)

    def stop_accepting(self) -> None:
        self.stopping = True
        if self.server is not None:
            self.server.close()

    def kill_all(self) -> None:
        if self.server is not None:
            self.server.close()

    async def wait_closed(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)
