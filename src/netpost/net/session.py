"""The stream session base: one connection driving one sans-I/O engine (docs/engines.md).

Protocol sessions (`smtp/server.py`, `pop3/server.py`) only say how to build the engine, how to
answer its events and what to say when the server stops or the client idles; their constructors
name the services they use.  The TCP listener that accepts connections and makes sessions is
`net/stream.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import ssl
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from netpost.config import ListenAddress

if TYPE_CHECKING:
    from netpost.net.stream import StreamListener

log = logging.getLogger("netpost.net")

READ_SIZE = 256 * 1024
# Protocols whose replies start with a 3-digit code (RFC 5321 4.2, RFC 959 4.2): their 4xx
# and 5xx replies are counted by code for /metrics.
CODED_REPLIES = frozenset({"smtp", "submission", "submissions", "lmtp", "ftp", "ftps"})
_ERROR_REPLY = re.compile(rb"(?:^|\n)([45]\d\d)[ \r]")


class Engine(Protocol):
    closed: bool

    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> Any: ...
    def data_to_send(self) -> bytes: ...
    def tls_started(self) -> None: ...


@dataclass(frozen=True)
class ListenerSpec:
    """A listener as configured: its declaration's name and protocol, where it listens."""

    name: str  # "smtp", "submission", ...
    protocol: str  # "smtp" | "submission" | "pop3" | ...
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

    def __init__(self, listener: StreamListener, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: str) -> None:
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
        self._cleanups: list[Callable[[], None]] = []

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Call `cleanup` when the session ends (extra connections, subscriptions...)."""
        self._cleanups.append(cleanup)

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
            for cleanup in reversed(self._cleanups):
                try:
                    cleanup()
                except Exception:
                    log.exception("%s %s: cleanup failed", self.listener.spec.name, self.peer)
            if self.trace is not None:
                self.trace("*", "closed")
            await self._close()

    async def _close(self) -> None:
        writer = self.writer
        if not self.tls_active:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)
            return
        # TLS: let the last replies leave, send close_notify, and do not wait for the peer's
        # (RFC 8446 6.1 allows it): clients such as imaptest wait for the server to close
        # first, and asyncio would otherwise hold the connection for its 30 s shutdown timeout.
        with contextlib.suppress(Exception):
            for _ in range(500):
                if writer.transport.get_write_buffer_size() == 0 or writer.is_closing():
                    break
                await asyncio.sleep(0.01)
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 0.05)
        writer.transport.abort()  # a no-op when the peer's close_notify came already

    async def _loop(self) -> None:
        conn = self.conn
        reader = self.reader
        while not conn.closed:
            data = await reader.read(READ_SIZE)
            self.last_activity = self.loop.time()
            conn.receive_data(data)
            await self._handle_events()
            while True:
                if self.listener.stopping and not self.in_transaction() and not conn.closed:
                    self.say_goodbye("shutdown")
                await self.flush()
                # An engine may take in input it held back once its output has gone out
                # (IMAP's COMPRESS: commands pipelined behind it are read after the OK).
                if conn.closed or not await self._handle_events():
                    break

    async def _handle_events(self) -> bool:
        """Answer every event the engine has now; whether there was any."""
        conn = self.conn
        handled = False
        self.busy = True
        commands = self.listener.commands
        try:
            while (event := conn.next_event()) is not None:
                handled = True
                name = type(event).__name__
                commands[name] = commands.get(name, 0) + 1
                await self.handle(event)
        finally:
            self.busy = False
            # Engines that count their own error replies (IMAP NO/BAD, POP3 -ERR).
            counted: dict[str, int] | None = getattr(conn, "error_replies", None)
            if counted:
                errors = self.listener.error_replies
                for key, n in counted.items():
                    errors[key] = errors.get(key, 0) + n
                counted.clear()
        return handled

    async def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            if self.listener.spec.protocol in CODED_REPLIES and len(out) < 65536:
                errors = self.listener.error_replies
                for code in _ERROR_REPLY.findall(out):
                    key = code.decode()
                    errors[key] = errors.get(key, 0) + 1
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


SessionFactory = Callable[
    ["StreamListener", asyncio.StreamReader, asyncio.StreamWriter, str], Session]
