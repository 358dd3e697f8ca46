"""TCP listeners: accept, implicit TLS, per-address and total connection limits, graceful stop.

Each accepted connection gets a `Session` (net/session.py) from the service's factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from netpost.config import ListenAddress
from netpost.net.session import READ_SIZE, ListenerSpec, Session, SessionFactory, client_key
from netpost.net.trace import TraceLog

log = logging.getLogger("netpost.net")


class StreamListener:
    """A TCP listener with optional implicit TLS and per-address connection limits."""

    def __init__(self, spec: ListenerSpec, factory: SessionFactory, *,
                 ssl_context: ssl.SSLContext | None, idle_timeout: float,
                 max_connections: int, max_per_ip: int, trace_log: TraceLog | None,
                 refuse: Callable[[str], bytes]) -> None:
        self.spec = spec
        self.factory = factory
        self.ssl_context = ssl_context
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.trace_log = trace_log if spec.traced else None
        self.refuse = refuse  # reason -> the protocol's own "go away" line
        self.per_ip: dict[str, int] = {}
        self.sessions: set[Session] = set()
        self.channels: set[object] = set()  # sessions' extra connections (net/channels.py)
        # Counted for /metrics: engine events ("commands") by type, error replies by code.
        self.commands: dict[str, int] = {}
        self.error_replies: dict[str, int] = {}
        self.accepted = 0
        self.stopping = False
        self.server: asyncio.AbstractServer | None = None
        self.bound: ListenAddress | None = None

    @property
    def busy(self) -> bool:
        return bool(self.sessions)

    async def start(self) -> None:
        addr = self.spec.address
        self.server = await asyncio.start_server(
            self._accept, addr.host, addr.port, reuse_address=True, backlog=1024,
            ssl=self.ssl_context if self.spec.implicit_tls else None,
            ssl_handshake_timeout=30 if self.spec.implicit_tls else None,
            limit=READ_SIZE,
        )
        sock = self.server.sockets[0].getsockname()
        self.bound = ListenAddress(sock[0], sock[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if peername else "unknown"
        if self.stopping:
            writer.close()
            return
        peer_key = client_key(peer)
        count = self.per_ip.get(peer_key, 0)
        if count >= self.max_per_ip or len(self.sessions) >= self.max_connections:
            # RFC 5321 3.8 / RFC 2449 8: refuse with the protocol's temporary error.
            why = "too many connections from your address" if count >= self.max_per_ip \
                else "too many connections"
            log.warning("%s: refusing %s: %s", self.spec.name, peer, why)
            with contextlib.suppress(Exception):
                writer.write(self.refuse(why))
                await writer.drain()
            writer.close()
            return
        self.per_ip[peer_key] = count + 1
        self.accepted += 1
        session = self.factory(self, reader, writer, peer)
        self.sessions.add(session)
        try:
            await session.run()
        except asyncio.CancelledError:
            pass  # this task is the connection's top level: cancelled means it is over
        finally:
            self.sessions.discard(session)
            left = self.per_ip[peer_key] - 1
            if left:
                self.per_ip[peer_key] = left
            else:
                del self.per_ip[peer_key]

    def stop_accepting(self) -> None:
        self.stopping = True
        if self.server is not None:
            self.server.close()
        for session in list(self.sessions):
            session.stop_if_idle()

    def kill_all(self) -> None:
        """The grace period is over: every session says goodbye (421 / -ERR) and ends."""
        for session in list(self.sessions):
            if session.stop_reason is None:
                session.interrupt("shutdown")
            elif session.task is not None:
                session.task.cancel()

    async def wait_closed(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
