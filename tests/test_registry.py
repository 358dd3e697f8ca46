"""The registry's seams: toy UDP and TCP services (tests/toys.py) registered from outside
netpost's own packages, served by the real supervisor next to SMTP and POP3, driven over real
sockets.  Also: the change feed waking a subscriber session on delivery, POP3 DELE and a flag
change, extra connections (passive and active, plain and TLS), and workers."""

from __future__ import annotations

import asyncio
import poplib
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netpost.auth.passwords import hash_password
from netpost.config import Config, from_dict, render_default
from netpost.registry import Registry, RegistryError, default_registry
from netpost.server import serve
from netpost.store.embedded import open_admin
from tests.conftest import client_tls
from tests.toys import ECHO, SERVED, TICKS, TOY

USER = "watcher@toy.test"
PASSWORD = "toy password"


def toy_registry() -> Registry:
    return default_registry().with_services(ECHO, TOY, SERVED)


@dataclass
class InProcessServer:
    """`serve()` on its own event loop in a thread, stopped through its `stop` event."""

    data: Path
    lines: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None
    result: list[object] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self, config: Config, registry: Registry) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            try:
                self.result.append(await serve(self.data, config, announce=self.lines.append,
                                               registry=registry, stop=self.stop))
            except BaseException as exc:  # shown by the test that waits for "ready"
                self.result.append(exc)
                raise

        self.thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while "ready" not in self.lines:
            assert not self.result, f"serve() ended: {self.result}"
            assert time.monotonic() < deadline, "\n".join(self.lines)
            time.sleep(0.02)
        for line in self.lines:
            parts = line.split()
            if parts[:1] == ["listening"]:
                self.ports[parts[1]] = int(parts[2].split("/")[0].rpartition(":")[2])

    def close(self) -> None:
        assert self.loop is not None and self.stop is not None and self.thread is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
        assert not self.thread.is_alive()
        assert self.result == [0]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    data = tmp_path_factory.mktemp("toy")
    admin = open_admin(data)
    admin.domains.add_domain("toy.test")
    admin.accounts.add_account(USER, hash_password(PASSWORD))
    admin.close()
    registry = toy_registry()
    listen = {name: "127.0.0.1:0" for name in registry.listener_names()}
    config = from_dict({
        "listen": listen,
        "server": {"shutdown_grace": 2.0},
        "auth": {"failure_delay": 0.1, "failure_max_delay": 0.2},
        "limits": {"datagram_rate": 2.0, "datagram_burst": 20,
                   "max_connections_per_ip": 3},
        "trace": {"listeners": ["all"]},
        "toy": {"greeting": "hello from the toy"},
    }, registry)
    server = InProcessServer(data)
    server.start(config, registry)
    yield server
    server.close()
    assert TICKS.stopped  # the worker saw the stop event


class Lines:
    """A line client for the toy protocol."""

    def __init__(self, port: int, source: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                             source_address=(source, 0) if source else None)
        self.file = self.sock.makefile("rb")

    def line(self) -> str:
        return self.file.readline().decode().rstrip("\r\n")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def ask(self, text: str) -> str:
        self.send(text)
        return self.line()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


# --- registry and config ---------------------------------------------------------------------


def test_registry_refuses_duplicates() -> None:
    with pytest.raises(RegistryError, match="registered twice"):
        toy_registry().with_services(TOY)


def test_config_and_init_know_the_toys_from_the_registry_alone() -> None:
    registry = toy_registry()
    cfg = from_dict({"toy": {"max_channels": 3}}, registry)
    assert cfg.services["toy"].max_channels == 3
    assert cfg.listen["echo"] == ":10007" and cfg.listen["toy"] == ":10009"
    text = render_default(registry)
    assert "[toy]" in text and 'greeting = "toy ready"' in text
    assert "echo = \":10007\"  # echo, UDP, standard port 7" in text
    # The default registry knows nothing of them.
    with pytest.raises(Exception, match="unknown section"):
        from_dict({"toy": {}})


def test_startup_lists_every_listener(toy: InProcessServer) -> None:
    names = set(toy.ports)
    assert {"smtp", "submission", "submissions", "pop3", "pop3s", "echo", "toy"} <= names
    assert any(line.startswith("listening echo") and "/udp" in line for line in toy.lines)


# --- UDP ---------------------------------------------------------------------------------------


def test_udp_echo_and_rate_limit(toy: InProcessServer) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.bind(("127.0.0.1", 0))
    port = toy.ports["echo"]
    sock.sendto(b"hello", ("127.0.0.1", port))
    assert sock.recvfrom(100)[0] == b"HELLO"
    # A burst of 60: the bucket holds 20 (19 left after the first), the rest are dropped.
    for i in range(60):
        sock.sendto(b"n%d" % i, ("127.0.0.1", port))
    got = []
    sock.settimeout(0.5)
    try:
        while True:
            got.append(sock.recvfrom(100)[0])
    except TimeoutError:
        pass
    assert 15 <= len(got) <= 22, got
    assert got[0] == b"N0"
    sock.close()
    trace = (toy.data / "trace.log").read_text()
    assert "echo 127.0.0.1:" in trace and "C: echo 'hello'" in trace and "S: echo 'HELLO'" in trace


# --- TCP, channels ----------------------------------------------------------------------------


def test_toy_tcp_session(toy: InProcessServer) -> None:
    c = Lines(toy.ports["toy"])
    assert c.line() == "+ hello from the toy"
    assert c.ask("ECHO a b") == "+ a b"
    assert c.ask("NOPE") .startswith("- bad command")
    assert c.ask("QUIT") == "+ bye"
    c.close()


def test_served_listener_limits(toy: InProcessServer) -> None:
    """A library's server on netpost's socket: listed at start, limits held via admit()."""
    assert any(line.startswith("listening served") for line in toy.lines)
    conns = [socket.create_connection(("127.0.0.1", toy.ports["served"]), timeout=5)
             for _ in range(4)]
    try:
        replies = [c.makefile("rb").readline() for c in conns]
        assert replies[:3] == [b"+ served\n"] * 3
        assert replies[3] == b"- too many connections from your address\n"
        conns[0].sendall(b"ping\n")
        assert conns[0].makefile("rb").readline() == b"+ ping\n"
    finally:
        for c in conns:
            c.close()


def _read_all(sock: socket.socket) -> int:
    total = 0
    while chunk := sock.recv(65536):
        total += len(chunk)
    return total


def test_passive_channel_only_from_the_client(toy: InProcessServer) -> None:
    c = Lines(toy.ports["toy"])
    c.line()
    c.send("PASV 300000")
    reply = c.line()
    assert reply.startswith("+PORT ")
    port = int(reply.split()[1])
    # Another host (127.0.0.2 is not the control connection's client) is turned away...
    thief = socket.create_connection(("127.0.0.1", port), timeout=5,
                                     source_address=("127.0.0.2", 0))
    assert thief.recv(10) == b""
    thief.close()
    # ... and the client gets the data.
    data = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert _read_all(data) == 300000
    data.close()
    assert c.line() == "+ sent 300000"
    c.close()


def test_passive_channel_with_tls(toy: InProcessServer) -> None:
    c = Lines(toy.ports["toy"])
    c.line()
    c.send("PASV 100000 tls")
    port = int(c.line().split()[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = client_tls().wrap_socket(raw, server_hostname="localhost")
    assert tls.version() in ("TLSv1.2", "TLSv1.3")
    total = 0
    try:
        while chunk := tls.recv(65536):
            total += len(chunk)
    except ssl.SSLEOFError:
        pass
    assert total == 100000
    tls.close()
    assert c.line() == "+ sent 100000"
    c.close()


def test_active_channel_to_the_client_only(toy: InProcessServer) -> None:
    c = Lines(toy.ports["toy"])
    c.line()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    c.send(f"PORT 127.0.0.1 {port} 50000")
    conn, addr = listener.accept()
    assert addr[0] == "127.0.0.1"
    assert _read_all(conn) == 50000
    conn.close()
    assert c.line() == "+ sent 50000"
    # FTP bounce: a connection to any other address is refused before it is tried.
    assert c.ask(f"PORT 127.0.0.2 {port} 10") == \
        "- data connections go only to the client's own address"
    listener.close()
    c.close()


def test_channel_limit_per_session(toy: InProcessServer) -> None:
    c = Lines(toy.ports["toy"])
    c.line()
    assert c.ask("OPEN 2").startswith("+PORTS ")  # [toy] max_channels = 2
    assert c.ask("OPEN 3") == "- too many data connections open"
    assert c.ask("OPEN 2").startswith("+PORTS ")  # the refused attempt left nothing open
    c.close()


def test_workers_run(toy: InProcessServer) -> None:
    assert TICKS.runs >= 1


# --- the change feed through a session -----------------------------------------------------------


def _watch(toy: InProcessServer) -> Lines:
    w = Lines(toy.ports["toy"])
    w.line()
    assert w.ask(f"WATCH {USER}") == "+ watching"
    w.sock.settimeout(5)
    return w


def test_delivery_pop3_dele_and_flag_change_each_wake_a_subscriber(
        toy: InProcessServer) -> None:
    w = _watch(toy)
    # 1. A delivery over real SMTP.
    with smtplib.SMTP("127.0.0.1", toy.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("friend@example.org", [USER], b"Subject: hi\r\n\r\nhello\r\n")
        replied = time.monotonic()
    line = w.line()
    woke = time.monotonic()
    kind, mailbox, uid, _modseq = line.split()[1:]
    assert kind == "append"
    assert woke - replied < 0.05, f"woken {woke - replied:.3f} s after the client's 250"

    # 2. A flag change.
    c = Lines(toy.ports["toy"])
    c.line()
    c.send(f"FLAG {USER} {uid} \\Seen")
    assert c.line() == "+ flagged 1"
    replied = time.monotonic()
    assert w.line().split()[1:3] == ["flags", mailbox]
    assert time.monotonic() - replied < 0.05
    c.close()

    # 3. POP3 DELE (takes effect at QUIT, RFC 1939 6).
    pop = poplib.POP3_SSL("127.0.0.1", toy.ports["pop3s"], timeout=10, context=client_tls())
    pop.user(USER)
    pop.pass_(PASSWORD)
    pop.dele(1)
    pop.quit()
    replied = time.monotonic()
    assert w.line().split()[1:4] == ["expunge", mailbox, uid]
    assert time.monotonic() - replied < 0.05
    w.close()
