"""Issue 7: a hostile remote server behind the relay, end to end.

A real netpost server A (127.0.0.1, domain example.test) relays ALICE's mail for b.test to a
smart host that this test plays itself: a fake remote MTA on 127.0.0.1 whose behaviour is
switched per case (slow greeting, a reply trickled a line at a time, garbage, an endless line,
a 10,000-line EHLO reply, a connection dropped after DATA's 354, a 421 mid-transaction).

For each case: the recipient is deferred after exactly one attempt with a reason naming the
problem (`netpost queue list` and `queue show`), A stays up and serves other sessions, and
once the fake behaves again `netpost queue flush` delivers the message and empties the queue.

Retries are an hour away (`first_retry`), so the only attempts are the first one and the one
`queue flush` asks for: each case sees exactly one hostile connection.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import CONFIG, Server, start_server
from tests.interop.test_relay import BOB_B, queue_empty, subjects, submit, wait_for
from tests.security import ALICE, alive, server_log, stop, template

TIMEOUT = 2.0  # A's [relay] command_timeout: each reply must come within this
HUGE_LINES = 10_000


class FakeMTA:
    """A remote MTA on 127.0.0.1 that misbehaves as `mode` says when a connection arrives.

    It runs its own event loop in a thread; the test thread only sets `mode` and reads what
    it recorded (connections per mode, messages received in "good" mode, open connections).
    """

    def __init__(self) -> None:
        self.mode = "good"
        self.connections: list[str] = []  # the mode of each connection, in arrival order
        self.received: list[bytes] = []  # message contents taken in "good" mode
        self.open = 0  # connections not yet closed
        self.stalled = threading.Event()  # a stalling connection has arrived
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), self._loop)
        self._server = future.result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def received_text(self) -> str:
        return "\n".join(m.decode(errors="replace") for m in self.received)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        mode = self.mode
        self.connections.append(mode)
        self.open += 1
        try:
            await self._converse(mode, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _until_closed(reader: asyncio.StreamReader) -> None:
        """Say nothing more; return when the client closes the connection."""
        while await reader.read(4096):
            pass

    async def _converse(self, mode: str, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        if mode == "slow greeting":
            self.stalled.set()
            await self._until_closed(reader)
            return
        if mode == "garbage":
            writer.write(b"\x16\x03\x01\x00\xa5garbage \xff\xfe\x00 HTTP/1.1 400 Bad Request\r\n")
            await writer.drain()
            await self._until_closed(reader)
            return
        if mode == "endless line":
            writer.write(b"220 " + b"x" * 100_000)
            await writer.drain()
            await self._until_closed(reader)
            return
        writer.write(b"220 fake.b.test ESMTP\r\n")
        await writer.drain()
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                if mode == "trickle":
                    # A line every half second: each read is quick, the reply never ends.
                    while True:
                        writer.write(b"250-fake.b.test still thinking\r\n")
                        await writer.drain()
                        try:
                            if not await asyncio.wait_for(reader.read(4096), 0.5):
                                return
                        except TimeoutError:
                            continue
                if mode == "huge":
                    writer.write(b"".join(b"250-X-FILLER-%d\r\n" % i for i in range(HUGE_LINES))
                                 + b"250 OK\r\n")
                else:
                    writer.write(b"250-fake.b.test\r\n250 8BITMIME\r\n")  # no PIPELINING
            elif verb == b"DATA":
                if mode == "421":
                    writer.write(b"421 4.3.2 fake.b.test shutting down\r\n")
                    await writer.drain()
                    await self._until_closed(reader)
                    return
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                if mode == "drop after 354":
                    await reader.readline()  # one line of the message, then gone
                    return
                content = []
                while (chunk := await reader.readline()) != b".\r\n":
                    if not chunk:
                        return
                    content.append(chunk[1:] if chunk.startswith(b".") else chunk)
                self.received.append(b"".join(content))
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            else:  # MAIL, RCPT, RSET, NOOP
                writer.write(b"250 2.0.0 ok\r\n")
            await writer.drain()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeMTA]:
    mta = FakeMTA()
    mta.start()
    yield mta
    mta.close()


@pytest.fixture(scope="module")
def a(tmp_path_factory: pytest.TempPathFactory, fake: FakeMTA) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("hostile")
    data = root / "a"
    shutil.copytree(template(root.parent), data)
    config = CONFIG + f"""
[server]
shutdown_grace = 2.0
hostname = "mx.example.test"
[relay]
smarthost = "127.0.0.1:{fake.port}"
first_retry = 3600.0
max_retry = 3600.0
connect_timeout = {TIMEOUT}
command_timeout = {TIMEOUT}
"""
    server = start_server(data, config)
    yield server
    stop(server)


def entries(a: Server) -> dict[str, str]:
    """`queue list` as queue id -> that message's lines."""
    out: dict[str, str] = {}
    current = ""
    for line in a.cli("queue", "list").stdout.splitlines():
        if line.startswith(" ") and current:
            out[current] += line + "\n"
        elif line and not line.startswith(("recipients:", "the queue is empty")):
            current = line.split()[0]
            out[current] = line + "\n"
    return out


def wait_deferred(a: Server, known: set[str], subject: str) -> tuple[str, str]:
    """The queue id and `queue list` lines of the message (not in `known`) once BOB_B is
    deferred."""
    found: list[tuple[str, str]] = []

    def deferred() -> bool:
        for qid, lines in entries(a).items():
            if qid not in known and f"deferred  <{BOB_B}>" in lines:
                found.append((qid, lines))
                return True
        return False

    wait_for(deferred, timeout=20, what=f"'{subject}' to be deferred")
    return found[0]


# Subjects deferred by the hostile cases; the last test delivers them all with one flush
# (the running server notices a flush within its 5 s queue poll: once, not once per case).
DEFERRED: list[str] = []

# (mode, what the reason says)
CASES = [
    ("slow greeting", "timeout waiting for greeting"),
    ("trickle", "timeout waiting for reply to EHLO"),
    ("garbage", "protocol error: malformed reply line"),
    ("endless line", "reply line longer than 4096 octets"),
    ("huge", "multiline reply longer than 200 lines"),
    ("drop after 354", "connection lost after DATA, before the reply to the end of data"),
    ("421", "421 4.3.2 fake.b.test shutting down"),
]


@pytest.mark.parametrize(("mode", "reason"), CASES, ids=[c[0] for c in CASES])
def test_hostile_remote_defers_with_the_reason(a: Server, fake: FakeMTA, mode: str,
                                               reason: str) -> None:
    fake.mode = mode
    before = len(fake.connections)
    subject = f"hostile {mode}"
    known = set(entries(a))
    started = time.monotonic()
    submit(a, [BOB_B], subject)
    qid, listing = wait_deferred(a, known, subject)
    elapsed = time.monotonic() - started
    DEFERRED.append(subject)
    assert fake.connections[before:] == [mode]  # one attempt, at the hostile server
    assert reason in listing and "attempts 1" in listing, listing
    if mode in ("slow greeting", "trickle"):
        # The timeout is for the whole reply: a reply trickled a line at a time (each read
        # well within the timeout) does not stretch it.
        assert elapsed < TIMEOUT + 5, elapsed
    shown = a.cli("queue", "show", qid)
    assert shown.returncode == 0, shown.stderr
    assert f"to <{BOB_B}>: deferred, 1 attempts" in shown.stdout, shown.stdout
    assert "last result: 4." in shown.stdout and reason in shown.stdout, shown.stdout
    assert alive(a), server_log(a)
    assert fake.open == 0  # A closed the hostile connection


def test_local_delivery_while_the_remote_stalls(a: Server, fake: FakeMTA) -> None:
    """A's relay waits on a silent remote; its listeners keep serving meanwhile."""
    fake.mode = "slow greeting"
    fake.stalled.clear()
    known = set(entries(a))
    submit(a, [BOB_B], "stalled remote")
    assert fake.stalled.wait(10), "the relay did not connect to the fake remote"
    submit(a, [ALICE], "local while stalled")
    # The relay's connection still waits for the greeting: the local submission did not wait
    # for it (it takes well under a second; the relay waits TIMEOUT seconds).
    assert fake.open == 1
    wait_for(lambda: "local while stalled" in subjects(a, ALICE), timeout=10,
             what="local delivery to alice")
    _, listing = wait_deferred(a, known, "stalled remote")
    assert "timeout waiting for greeting" in listing, listing
    assert fake.open == 0  # A gave up on the silent server and closed the connection
    DEFERRED.append("stalled remote")
    assert alive(a), server_log(a)


def test_flush_to_a_well_behaved_remote_delivers_everything(a: Server, fake: FakeMTA) -> None:
    """The remote behaves again: `queue flush` delivers every deferred message once."""
    waiting = entries(a)
    assert len(waiting) == len(DEFERRED), waiting
    fake.mode = "good"
    flush = a.cli("queue", "flush")
    assert flush.returncode == 0, flush.stderr
    assert f"{len(DEFERRED)} recipients due now" in flush.stdout, flush.stdout

    def all_delivered() -> bool:
        text = fake.received_text()
        return all(f"Subject: {s}\r\n" in text for s in DEFERRED)

    wait_for(all_delivered, timeout=20, what="every deferred message after queue flush")
    wait_for(lambda: queue_empty(a), timeout=10, what="A's queue to empty")
    for subject in DEFERRED:  # at least once, and here exactly once
        assert fake.received_text().count(f"Subject: {subject}\r\n") == 1, subject
    assert alive(a)
    log = server_log(a)
    assert "relay worker for" not in log and "Traceback" not in log, log
