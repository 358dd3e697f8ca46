"""Outbound SMTP over asyncio: drives `netpost.smtp.client.SMTPClient` on one connection.

`open_connection()` connects, reads the greeting, says EHLO, upgrades with STARTTLS as the
`TLSPolicy` says and authenticates to a smart host; `OutboundConnection.send()` carries one
mail transaction and returns a `TransactionResult`.  Every failure is a result (what the
server said about each recipient) or one `DeliveryError` with a short reason the queue can
keep ("timeout waiting for greeting", "connection lost after RCPT").  After a
`DeliveryError` from `send()`, or a 421 reply, the connection is unusable: `usable` is
False and the next `send()` raises the same error.

Timeouts follow RFC 5321 4.5.3.2.  Message content is written in slices with a drain after
each, so a 50 MiB message never sits twice in the transport's buffer.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from netpost.smtp.client import (
    END_OF_DATA,
    GREETING,
    Closed,
    ConnectionFailed,
    Event,
    Extensions,
    NeedTLS,
    OutRecipient,
    Ready,
    ServerReply,
    SMTPClient,
    TransactionDone,
    TransactionResult,
)

__all__ = [
    "DeliveryError",
    "OutRecipient",
    "OutboundConnection",
    "TLSPolicy",
    "Timeouts",
    "TransactionResult",
    "open_connection",
]

Trace = Callable[[str, str], None]

WRITE_SLICE = 256 * 1024  # octets written before each drain


class TLSPolicy(enum.Enum):
    NONE = "none"  # never STARTTLS
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered (RFC 7435); no verification needed
    REQUIRED = "required"  # STARTTLS must be offered and succeed (e.g. MTA-STS, RFC 8461)


@dataclass(frozen=True)
class Timeouts:
    """Seconds; the defaults are RFC 5321 4.5.3.2's."""

    connect: float = 30.0
    greeting: float = 300.0  # 4.5.3.2.1 initial 220 message: 5 minutes
    command: float = 300.0  # EHLO, STARTTLS, AUTH, RSET, QUIT (as for MAIL)
    tls_handshake: float = 60.0
    mail: float = 300.0  # 4.5.3.2.2 MAIL: 5 minutes
    rcpt: float = 300.0  # 4.5.3.2.3 RCPT: 5 minutes
    data_init: float = 120.0  # 4.5.3.2.4 DATA initiation: 2 minutes
    data_block: float = 180.0  # 4.5.3.2.5 data block: 3 minutes
    final_dot: float = 600.0  # 4.5.3.2.6 DATA termination: 10 minutes

    def for_reply(self, phase: str | None) -> float:
        """The time to wait for the reply to `phase` (an SMTPClient.phase)."""
        if phase == GREETING:
            return self.greeting
        if phase == "MAIL":
            return self.mail
        if phase == "RCPT":
            return self.rcpt
        if phase == "DATA":
            return self.data_init
        if phase in (END_OF_DATA, "BDAT"):
            return self.final_dot
        return self.command  # EHLO, HELO, STARTTLS, AUTH, RSET, QUIT


class DeliveryError(Exception):
    """A connection-level failure: `temporary` ones are deferred, others bounced.

    `reply` is the server reply that caused it, when there was one."""

    def __init__(self, reason: str, temporary: bool, reply: ServerReply | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.temporary = temporary
        self.reply = reply


def _format_peer(peername: object, host: str, port: int) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        ip, p = str(peername[0]), int(peername[1])
    else:
        ip, p = host, port
    return f"[{ip}]:{p}" if ":" in ip else f"{ip}:{p}"


class OutboundConnection:
    """One SMTP session with a server, ready for transactions."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 engine: SMTPClient, timeouts: Timeouts, peer: str,
                 trace: Trace | None) -> None:
        self._reader = reader
        self._writer = writer
        self._engine = engine
        self._timeouts = timeouts
        self._trace = trace
        self.peer = peer  # "ip:port" of the server
        self.tls_version: str | None = None  # e.g. "TLSv1.3" once STARTTLS succeeded
        self._broken: DeliveryError | None = None
        self._closed = False

    @property
    def extensions(self) -> Extensions:
        return self._engine.extensions

    @property
    def usable(self) -> bool:
        return self._broken is None and not self._closed and self._engine.usable

    async def send(
        self,
        mail_from: str,
        recipients: Sequence[OutRecipient],
        content: bytes,
        *,
        ret: str | None = None,
        envid: str | None = None,
        smtputf8: bool = False,
        eightbit: bool = False,
    ) -> TransactionResult:
        """One mail transaction; the result says what became of each recipient.

        Raises DeliveryError when the connection fails (then it is unusable)."""
        if self._broken is not None:
            raise self._broken
        if self._closed or not self._engine.usable:
            raise DeliveryError("connection already closed", True)
        self._engine.start_transaction(mail_from, recipients, content, ret=ret, envid=envid,
                                       smtputf8=smtputf8, eightbit=eightbit)
        event = await self._next()
        if isinstance(event, TransactionDone):
            failure = self._engine.failure
            if failure is not None:  # a 421 ended the session after this result
                await self._write_pending()
                self._break(DeliveryError(failure.reason, failure.temporary, failure.reply))
            return event.result
        raise self._unexpected(event)

    async def aclose(self) -> None:
        """QUIT (when the session is still usable) and close the connection."""
        if self._closed:
            return
        try:
            if self.usable:
                self._engine.quit()
                try:
                    event = await self._next()
                    if not isinstance(event, Closed):
                        self._unexpected(event)
                except DeliveryError:
                    pass  # no reply to QUIT: close anyway
        finally:
            self._closed = True
            await self._close_transport()

    # --- driving the engine -------------------------------------------------------------------

    async def _next(self) -> Event:
        """Write what the engine has to say, read until it has an event."""
        engine = self._engine
        loop = asyncio.get_running_loop()
        waiting: tuple[str | None, int] | None = None
        deadline = 0.0
        while True:
            await self._write_pending()
            event = engine.next_event()
            if event is not None:
                if isinstance(event, ConnectionFailed):
                    await self._write_pending()  # e.g. the QUIT after a refusal
                    raise self._break(
                        DeliveryError(event.reason, event.temporary, event.reply))
                return event
            # The timeout bounds the whole reply, not each read: a server trickling a
            # multiline reply a line at a time must not hold the connection for ever.
            if waiting != (engine.phase, engine.replies):
                waiting = (engine.phase, engine.replies)
                deadline = loop.time() + self._timeouts.for_reply(engine.phase)
            try:
                data = await asyncio.wait_for(self._reader.read(65536),
                                              max(deadline - loop.time(), 0.0))
            except TimeoutError:
                raise self._break(
                    DeliveryError(f"timeout waiting for {engine.waiting_for}", True)) from None
            except (OSError, ssl.SSLError):
                data = b""  # reset by the peer: the engine words it ("connection lost ...")
            engine.receive_data(data)

    async def _write_pending(self) -> None:
        data = self._engine.data_to_send()
        if not data:
            return
        phase = self._engine.phase
        timeout = (self._timeouts.data_block if phase in (END_OF_DATA, "BDAT")
                   else self._timeouts.command)
        writer = self._writer
        try:
            with memoryview(data) as view:
                for start in range(0, len(view), WRITE_SLICE):
                    writer.write(view[start:start + WRITE_SLICE])
                    await asyncio.wait_for(writer.drain(), timeout)
        except TimeoutError:
            raise self._break(DeliveryError(
                f"timeout sending to the server while waiting for {self._engine.waiting_for}",
                True)) from None
        except (OSError, ssl.SSLError, RuntimeError):
            # The peer went away while we wrote; anything it said before is still read.
            self._engine.receive_data(b"")

    def _break(self, error: DeliveryError) -> DeliveryError:
        if self._broken is None:
            self._broken = error
            self._writer.transport.abort()
        return self._broken

    def _unexpected(self, event: Event) -> DeliveryError:
        return self._break(DeliveryError(f"internal error: unexpected {event!r}", True))

    async def _close_transport(self) -> None:
        writer = self._writer
        if writer.transport.is_closing():
            return
        writer.close()
        try:
            # A TLS peer may never send its close_notify; do not wait long for it.
            await asyncio.wait_for(writer.wait_closed(), 2.0)
        except (TimeoutError, OSError, ssl.SSLError):
            writer.transport.abort()

    async def _start_tls(self, ssl_context: ssl.SSLContext, server_name: str,
                         required: bool) -> None:
        try:
            await self._writer.start_tls(ssl_context, server_hostname=server_name,
                                         ssl_handshake_timeout=self._timeouts.tls_handshake)
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            if isinstance(exc, ssl.SSLCertVerificationError):
                detail = f"certificate verification failed: {exc.verify_message}"
            else:
                detail = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            prefix = "TLS required: " if required else ""
            raise self._break(DeliveryError(
                f"{prefix}TLS handshake with {self.peer} failed: {detail}", True)) from None
        ssl_object = self._writer.get_extra_info("ssl_object")
        self.tls_version = ssl_object.version() if ssl_object is not None else None
        if self._trace is not None:
            self._trace("*", f"TLS established ({self.tls_version})")
        self._engine.tls_started()


def opportunistic_context() -> ssl.SSLContext:
    """RFC 7435 opportunistic security: encrypt, but accept any certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def open_connection(
    host: str,
    port: int,
    *,
    helo: str,
    tls: TLSPolicy,
    ssl_context: ssl.SSLContext | None,
    server_name: str | None = None,
    auth: tuple[str, str] | None = None,
    allow_plaintext_auth: bool = False,
    chunking: bool = False,
    timeouts: Timeouts = Timeouts(),
    source_address: str | None = None,
    trace: Trace | None = None,
) -> OutboundConnection:
    """Connect to `host` (a name or an IP; the relay resolves MX itself) and get the session
    ready for mail.  `server_name` is the name for SNI and certificate checks (the MX name).

    `ssl_context` None: OPPORTUNISTIC uses an unverified context, REQUIRED a verifying
    default one.  Raises DeliveryError on any failure.
    """
    local_addr = (source_address, 0) if source_address else None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=local_addr), timeouts.connect)
    except TimeoutError:
        raise DeliveryError(f"timeout connecting to {host}:{port}", True) from None
    except OSError as exc:
        detail = exc.strerror or str(exc) or type(exc).__name__
        raise DeliveryError(f"cannot connect to {host}:{port}: {detail}", True) from None
    peer = _format_peer(writer.get_extra_info("peername"), host, port)
    if trace is not None:
        trace("*", f"connected to {peer}")
    engine = SMTPClient(
        helo,
        starttls=tls is not TLSPolicy.NONE,
        require_tls=tls is TLSPolicy.REQUIRED,
        auth=auth,
        allow_plaintext_auth=allow_plaintext_auth,
        chunking=chunking,
        trace=trace,
    )
    conn = OutboundConnection(reader, writer, engine, timeouts, peer, trace)
    if ssl_context is None:
        ssl_context = (ssl.create_default_context() if tls is TLSPolicy.REQUIRED
                       else opportunistic_context())
    try:
        while True:
            event = await conn._next()
            if isinstance(event, NeedTLS):
                await conn._start_tls(ssl_context, server_name or host,
                                      tls is TLSPolicy.REQUIRED)
            elif isinstance(event, Ready):
                return conn
            else:
                raise conn._unexpected(event)
    except BaseException:
        conn._break(DeliveryError("connection abandoned", True))
        raise

