"""Listeners and the session base: TCP, TLS, connection limits, idle timeout, graceful stop.

A `Session` owns one connection and drives one sans-I/O engine (docs/engines.md). The
protocol sessions (`smtp/server.py`, `pop3/server.py`) only say how to build the engine, how to
answer its events and what to say when the server stops or the client idles.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from netpost.config import ListenAddress
from netpost.net.trace import TraceLog

log = logging.getLogger("netpost.net")

READ_SIZE = 256 * 1024


class Engine(Protocol):
    closed: bool

    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> Any: ...
    def data_to_send(self) -> bytes: ...
    def tls_started(self) -> None: ...


@dataclass
class ListenerSpec:
    name: str  # "smtp", "submission", ...
    protocol: str  # "smtp" | "submission" | "pop3"
    address: ListenAddress
    implicit_tls: bool
    traced: bool


def client_key(address: str) -> str:
    """What the per-client connection limit counts: the IPv4 address, or the IPv6 /64 (one
    IPv6 host usually owns a whole /64, so single addresses would be no limit at all)."""
    if ":" not in address:
        return address
    try:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    except ValueError:
        return address


class Session(ABC):
    """One connection. Subclasses build the engine in `make_engine` and answer its events in
    `handle`."""

    conn: Engine

    def __init__(self, app: Any, listener: Listener, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: str) -> None:
        self.app = app  # the services (netpost.server.App)
        self.listener = listener
        self.reader = reader
        self.writer = writer
        self.peer = peer  # client IP address
        self.tls_active = listener.spec.implicit_tls
        self.trace: Callable[[str, str], None] | None = None
        if listener.trace_log is not None:
            peername = writer.get_extra_info("peername") or (peer, 0)
            self.trace = listener.trace_log.session(listener.spec.name,
                                                    f"{peername[0]}:{peername[1]}")
        self.busy = False  # handling an event (a delivery, a login): not interruptible
        self.stop_reason: str | None = None
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()
        self.task: asyncio.Task[None] | None = None

    # --- what protocol sessions provide -------------------------------------------------------
    @abstractmethod
    def make_engine(self) -> Engine:
        """Build this connection's engine (and keep a typed reference to it)."""

    @abstractmethod
    async def handle(self, event: Any) -> None:
        """Answer one engine event (call services, then the engine's answer method)."""

    @abstractmethod
    def start(self) -> None:
        """Queue the greeting."""

    @abstractmethod
    def say_goodbye(self, reason: str) -> None:
        """Queue the reply that ends the session: reason is "shutdown" or "idle"."""

    def in_transaction(self) -> bool:
        """True while stopping now would abort work the client is doing (SMTP DATA...)."""
        return False

    # --- the loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        self.task = asyncio.current_task()
        self.conn = self.make_engine()
        idle = self.listener.idle_timeout
        self._idle_timer = self.loop.call_later(idle, self._check_idle)
        try:
            self.start()
            await self.flush()
            await self._loop()
        except asyncio.CancelledError:
            if self.stop_reason is None:
                raise
            with contextlib.suppress(Exception):
                self.say_goodbye(self.stop_reason)
                await asyncio.wait_for(self.flush(), 5)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError) as exc:
            log.debug("%s %s: connection error: %s", self.listener.spec.name, self.peer, exc)
        except Exception:
            log.exception("%s %s: session failed", self.listener.spec.name, self.peer)
        finally:
            self._idle_timer.cancel()
            if self.trace is not None:
                self.trace("*", "closed")
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 5)

    async def _loop(self) -> None:
        conn = self.conn
        reader = self.reader
        while not conn.closed:
            data = await reader.read(READ_SIZE)
            self.last_activity = self.loop.time()
            conn.receive_data(data)
            self.busy = True
            try:
                while (event := conn.next_event()) is not None:
                    await self.handle(event)
            finally:
                self.busy = False
            if self.listener.stopping and not self.in_transaction() and not conn.closed:
                self.say_goodbye("shutdown")
            await self.flush()

    async def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    async def start_tls(self) -> None:
        """Flush the engine's go-ahead, upgrade the connection, tell the engine."""
        await self.flush()
        ctx = self.listener.ssl_context
        assert ctx is not None
        # RFC 3207 4.2 / RFC 2595 4: nothing the client sent in plaintext after the command
        # may be read as if it came over TLS (CVE-2011-0411). The engine dropped what it had;
        # the stream may still hold more (reads are bounded, or bytes came in meanwhile).
        buffered = self.reader._buffer  # type: ignore[attr-defined]  # no public way
        if buffered:
            log.warning("%s %s: dropped %d plaintext octets pipelined after STARTTLS",
                        self.listener.spec.name, self.peer, len(buffered))
            buffered.clear()
        await self.writer.start_tls(ctx)
        self.tls_active = True
        self.conn.tls_started()

    def tls_description(self) -> str | None:
        sslobj = self.writer.get_extra_info("ssl_object")
        if sslobj is None:
            return None
        cipher = sslobj.cipher()
        return f"{sslobj.version()} with cipher {cipher[0] if cipher else 'unknown'}"

    # --- interruptions --------------------------------------------------------------------------
    def _check_idle(self) -> None:
        idle = self.listener.idle_timeout
        quiet = self.loop.time() - self.last_activity
        if quiet >= idle and not self.busy:
            self.interrupt("idle")
        else:
            self._idle_timer = self.loop.call_later(max(idle - quiet, 1.0), self._check_idle)

    def interrupt(self, reason: str) -> None:
        if self.task is not None and self.stop_reason is None:
            self.stop_reason = reason
            self.task.cancel()

    def stop_if_idle(self) -> None:
        """Server stopping: end the session now unless it is in the middle of something."""
        if not self.busy and not self.in_transaction():
            self.interrupt("shutdown")


SessionFactory = Callable[["Listener", asyncio.StreamReader, asyncio.StreamWriter, str], Session]


class Listener:
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
        self.stopping = False
        self.server: asyncio.AbstractServer | None = None
        self.bound: ListenAddress | None = None

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
