"""Toy services that plug into netpost through the registry alone (tests/test_registry.py).

`echo` (UDP): every datagram comes back, upper-cased.
`toy` (TCP): a line protocol with its own tiny sans-I/O engine:
    ECHO text              -> "+ text"
    PASV n [tls]           -> "+PORT p", then n octets on the first connection to port p
    PORT host port n [tls] -> n octets on a connection netpost opens to host:port (active)
    OPEN n                 -> "+PORTS p1 p2 ..." (n passive ports at once, closed again)
    WATCH address          -> "+ watching", then "* kind mailbox uid modseq" per change
    FLAG address uid flag  -> adds the flag to that INBOX message
    QUIT                   -> "+ bye"
and a worker that counts its runs.  Nothing here is imported by netpost itself.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

from netpost.auth.service import Authenticator
from netpost.mail.mailboxes import Mailboxes
from netpost.net.channels import ChannelError, Channels
from netpost.net.datagram import Datagram, DatagramHandler, DatagramListener
from netpost.net.served import ServedListener
from netpost.net.session import Engine, Session
from netpost.net.workers import Worker
from netpost.registry import (
    BuildContext,
    ListenerDecl,
    ServerHandler,
    Service,
    StreamHandler,
    TLSMode,
    Transport,
    setting,
)
from netpost.store.interfaces import Accounts, Subscription

# --- UDP echo -------------------------------------------------------------------------------------


class EchoHandler(DatagramHandler):
    def receive(self, batch: list[Datagram]) -> None:
        self.batches.append(len(batch))
        for d in batch:
            if not d.data:
                self.listener.stats.dropped += 1
                continue
            self.listener.send(d.data.upper(), d.peer)

    def __init__(self, listener: DatagramListener) -> None:
        super().__init__(listener)
        self.batches: list[int] = []

    def describe(self, data: bytes, direction: str) -> str:
        return f"echo {data[:20].decode('ascii', 'replace')!r}"


def build_echo(ctx: BuildContext, decl: ListenerDecl) -> Any:
    return EchoHandler


ECHO = Service(
    name="echo",
    listeners=(ListenerDecl("echo", "echo", 7, "UDP echo (a toy)", transport=Transport.UDP,
                            tls=TLSMode.NONE),),
    build=build_echo,
)

# --- TCP toy with channels, the change feed and a worker ----------------------------------------


@dataclass(frozen=True)
class ToyConfig:
    greeting: str = setting("toy ready", "the first line a client gets")
    max_channels: int = setting(2, "extra connections per session", positive=True)


@dataclass(frozen=True)
class Command:
    verb: str
    args: list[str]


class ToyEngine:
    """A line protocol, sans-I/O: bytes in, Command events out, lines out."""

    def __init__(self) -> None:
        self.closed = False
        self._in = b""
        self._out: list[bytes] = []

    def receive_data(self, data: bytes) -> None:
        if not data:
            self.closed = True
        self._in += data

    def next_event(self) -> Command | None:
        line, sep, rest = self._in.partition(b"\r\n")
        if not sep:
            return None
        self._in = rest
        words = line.decode("utf-8", "replace").split()
        if not words:
            self.send("- empty line")
            return None
        if words[0].upper() == "QUIT":
            self.send("+ bye")
            self.closed = True
            return None
        return Command(words[0].upper(), words[1:])

    def send(self, line: str) -> None:
        self._out.append(line.encode() + b"\r\n")

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def tls_started(self) -> None:  # no STARTTLS in this toy
        pass


class ToySession(Session):
    def __init__(self, listener: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer: str, *, settings: ToyConfig, mailboxes: Mailboxes, accounts: Accounts,
                 auth: Authenticator) -> None:
        super().__init__(listener, reader, writer, peer)
        self.settings = settings
        self.mailboxes = mailboxes
        self.accounts = accounts
        self.channels = Channels(self, max_open=settings.max_channels, timeout=5)
        self.watches: list[tuple[Subscription, asyncio.Task[None]]] = []
        self.on_close(self._stop_watching)

    def make_engine(self) -> Engine:
        self.toy = ToyEngine()
        return self.toy

    def start(self) -> None:
        self.toy.send(f"+ {self.settings.greeting}")

    def say_goodbye(self, reason: str) -> None:
        self.toy.send(f"- {reason}")
        self.toy.closed = True

    async def handle(self, event: Any) -> None:
        assert isinstance(event, Command)
        try:
            await getattr(self, "do_" + event.verb.lower())(*event.args)
        except (AttributeError, TypeError, ValueError) as exc:
            self.toy.send(f"- bad command: {exc}")
        except ChannelError as exc:
            self.toy.send(f"- {exc}")

    async def do_echo(self, *words: str) -> None:
        self.toy.send("+ " + " ".join(words))

    async def do_pasv(self, size: str, tls: str = "") -> None:
        passive = await self.channels.listen()
        self.toy.send(f"+PORT {passive.port}")
        await self.flush()
        channel = await passive.accept(tls=tls == "tls")
        await self._send_data(channel, int(size))

    async def do_open(self, count: str) -> None:
        """Open `count` passive ports at once (then close them): the per-session limit."""
        ports = []
        try:
            for _ in range(int(count)):
                ports.append(await self.channels.listen())
            self.toy.send("+PORTS " + " ".join(str(p.port) for p in ports))
        finally:
            for passive in ports:
                passive.close()

    async def do_port(self, host: str, port: str, size: str, tls: str = "") -> None:
        channel = await self.channels.connect(host, int(port), tls=tls == "tls")
        await self._send_data(channel, int(size))

    async def _send_data(self, channel: Any, size: int) -> None:
        chunk = b"x" * 65536
        left = size
        while left:
            channel.write(chunk[:left])
            left -= min(left, len(chunk))
            await channel.drain()
        await channel.finish(10.0)
        self.toy.send(f"+ sent {size}")

    async def do_watch(self, address: str) -> None:
        account = self.accounts.get_account(address)
        if account is None:
            self.toy.send("- no such account")
            return
        sub = self.mailboxes.watch(account)
        task = asyncio.create_task(self._watch(sub))
        self.watches.append((sub, task))
        self.toy.send("+ watching")

    async def _watch(self, sub: Subscription) -> None:
        while True:
            for change in await sub.wait():
                self.writer.write(f"* {change.kind} {change.mailbox_id} {change.uid} "
                                  f"{change.modseq}\r\n".encode())
            await self.writer.drain()

    async def do_flag(self, address: str, uid: str, flag: str) -> None:
        account = self.accounts.get_account(address)
        inbox = self.mailboxes.inbox(account) if account else None
        if inbox is None:
            self.toy.send("- no such account")
            return
        update = await self.mailboxes.set_flags(inbox.id, [int(uid)], frozenset({flag}), "add")
        self.toy.send(f"+ flagged {len(update.changed)}")

    def _stop_watching(self) -> None:
        for sub, task in self.watches:
            task.cancel()
            sub.close()


def _refuse(reason: str) -> bytes:
    return f"- {reason}\r\n".encode()


def build_toy(ctx: BuildContext, decl: ListenerDecl) -> StreamHandler:
    settings: ToyConfig = ctx.settings
    services = ctx.services

    def factory(listener: Any, reader: Any, writer: Any, peer: str) -> ToySession:
        return ToySession(listener, reader, writer, peer, settings=settings,
                          mailboxes=services.mailboxes, accounts=services.stores.accounts,
                          auth=services.auth)

    return StreamHandler(factory, _refuse, idle_timeout=60)


@dataclass
class Ticks:
    runs: int = 0
    stopped: bool = False
    seen: list[str] = field(default_factory=list)


TICKS = Ticks()


def toy_workers(ctx: BuildContext) -> list[Worker]:
    async def tick(stop: asyncio.Event) -> None:
        while not stop.is_set():
            TICKS.runs += 1
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except TimeoutError:
                pass
        TICKS.stopped = True

    return [Worker("toy tick", tick)]


TOY = Service(
    name="toy",
    doc="A toy line service (tests only).",
    settings=ToyConfig,
    listeners=(ListenerDecl("toy", "toy", 9, "toy line protocol", tls=TLSMode.STARTTLS),),
    build=build_toy,
    workers=toy_workers,
)

# --- a listener served by a library's own server (net/served.py) --------------------------------


def build_served(ctx: BuildContext, decl: ListenerDecl) -> ServerHandler:
    """asyncio's own stream server on netpost's socket, counting connections as asyncssh or
    an ASGI server would through admit/release."""

    async def serve(sock: socket.socket, listener: ServedListener) -> asyncio.Server:
        async def connection(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")[0]
            refused = listener.admit(peer)
            if refused is not None:
                writer.write(f"- {refused}\n".encode())
                writer.close()
                return
            try:
                writer.write(b"+ served\n")
                while line := await reader.readline():
                    writer.write(b"+ " + line)
            finally:
                listener.release(peer)
                writer.close()

        return await asyncio.start_server(connection, sock=sock)

    return ServerHandler(serve)


SERVED = Service(
    name="served",
    listeners=(ListenerDecl("served", "served", 11, "a library's server (a toy)",
                            tls=TLSMode.NONE),),
    build=build_served,
)
