"""Crash safety of the outbound queue (issue 7): SIGKILL while the queue holds and sends.

The promise (relay.py, sqlqueue.py): a message that got `250` at submission stays in the queue
until the remote server has taken it and that outcome is committed; a crash loses nothing.
Delivery is at least once (RFC 5321 6.1): a crash after the remote `250` and before the
outcome is committed sends that message again after the restart.  A connection starts its next
transaction only once the last one's outcome is committed, so that window holds at most one
transaction per outbound connection ([relay] connections).

Netpost A (example.test) relays everything through a smart host, Postfix's smtp-sink, which
answers every transaction with 250 and dumps each one to a file of its own (`-d`): it writes
and closes the file when the final dot arrives, before its 250, and removes the file of a
transaction cut off before the dot, so the dump directory is an exact record of what the peer
accepted, envelope recipients included.

Several clients submit a few thousand unique messages over submission (STARTTLS, AUTH) to
recipients in several remote domains (some messages to two domains, some to two recipients of
one domain).  The peer comes up only once a backlog has built (until then A defers everything:
connection refused), and A is killed with SIGKILL once the peer has taken some of it: the
queue holds a backlog, sends over every connection and takes new submissions at that moment.
The queue as the crash left it is read from A's data directory; A restarts on it, the clients
submit the rest, and the queue drains.  Then, for every (message, recipient):

- accepted at submission → the peer got it at least once;
- the peer got it → it was submitted (accepted, or cut off by the kill before its reply);
- the peer got it twice → it was claimed by the runner ("sending") at the kill, and such
  repeated transactions number at most one per connection;
- everything else arrived exactly once, whole (bodies compared octet for octet);
- A's queue is empty; `netpost check` finds nothing wrong but bodies of the submissions the
  kill cut off (written, never committed: garbage), and nothing at all after `netpost gc`.
"""

from __future__ import annotations

import base64
import random
import re
import shutil
import signal
import smtplib
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Server, client_tls, run_cli, start_server
from tests.security import ALICE, template
from tests.support.postfix import SmtpSink, free_port

TOTAL = 2500  # messages the clients submit, before and after the crash
CLIENTS = 6
PEER_UP_AT = 1000  # messages accepted (and deferred: peer down) before the peer comes up
KILL_AFTER = 600  # transactions the peer has taken from A's queue when A is killed
DOMAINS = ("r1.test", "r2.test", "r3.test", "r4.test")
CONNECTIONS = 8
CONNECTIONS_PER_DOMAIN = 2
SUBJECT = re.compile(rb"^Subject: qcrash (\d+)\r?$", re.MULTILINE)
RCPT_ARGS = re.compile(rb"^X-Rcpt-Args: <([^>]*)>", re.MULTILINE)
RECOVERED = re.compile(r"queue: (\d+) recipients of an interrupted run are due again")
ORPHANS = re.compile(r"^(\d+) stored bodies belong to no message$", re.MULTILINE)

Pair = tuple[int, str]  # (message number, envelope recipient)


def recipients(seq: int) -> tuple[str, ...]:
    """One recipient; every 5th message a second in another domain (two transactions), every
    7th a second in the same domain (one transaction, two RCPTs)."""
    domain = DOMAINS[seq % len(DOMAINS)]
    out = [f"u{seq % 11}@{domain}"]
    if seq % 5 == 0:
        out.append(f"v{seq % 3}@{DOMAINS[(seq + 1) % len(DOMAINS)]}")
    if seq % 7 == 0:
        out.append(f"w{seq % 13}@{domain}")
    return tuple(out)


def make_body(seq: int, rnd: random.Random) -> bytes:
    """Unique, 100 B - 6 KiB, CRLF lines, some starting with a dot."""
    size = rnd.randint(100, 6 * 1024)
    raw = base64.b64encode(rnd.randbytes(size * 3 // 4 + 3))[:size]
    lines = [raw[i:i + 76] for i in range(0, len(raw), 76)]
    for i in range(0, len(lines), 9):
        lines[i] = b"." + lines[i]  # dot-stuffed on both hops, unstuffed by each receiver
    return b"\r\n".join(lines) + f"\r\nend of qcrash {seq}\r\n".encode()


def make_message(seq: int, rcpts: tuple[str, ...], body: bytes) -> bytes:
    head = (f"From: {ALICE}\r\nTo: {', '.join(rcpts)}\r\nSubject: qcrash {seq}\r\n"
            f"Message-ID: <qcrash.{seq}@example.test>\r\n\r\n").encode()
    return head + body


@dataclass
class Load:
    """The submitting clients: what was sent, what got its 250, what the kill cut off."""

    port: int
    up: threading.Event = field(default_factory=threading.Event)  # A is running
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_seq: int = 0
    sent: dict[int, tuple[tuple[str, ...], bytes]] = field(default_factory=dict)
    accepted: set[int] = field(default_factory=set)
    uncertain: set[int] = field(default_factory=set)  # sent, no reply: the kill came between
    errors: list[str] = field(default_factory=list)

    def take(self) -> int | None:
        with self.lock:
            if self.next_seq >= TOTAL:
                return None
            self.next_seq += 1
            return self.next_seq

    def client(self, n: int) -> None:
        rnd = random.Random(n)
        seq = self.take()
        while seq is not None:
            if not self.up.wait(60):
                with self.lock:
                    self.errors.append(f"client {n}: A did not come back")
                return
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as s:
                    s.starttls(context=client_tls())
                    s.login(ALICE, PASSWORD)
                    while seq is not None:
                        rcpts = recipients(seq)
                        body = make_body(seq, rnd)
                        with self.lock:
                            self.sent[seq] = (rcpts, body)
                        try:
                            s.sendmail(ALICE, list(rcpts), make_message(seq, rcpts, body))
                        except (OSError, smtplib.SMTPServerDisconnected):
                            with self.lock:
                                self.uncertain.add(seq)
                            seq = self.take()
                            raise
                        with self.lock:
                            self.accepted.add(seq)  # 250 after DATA
                        seq = self.take()
            except (OSError, smtplib.SMTPServerDisconnected):
                if self.up.is_set():
                    with self.lock:
                        self.errors.append(f"client {n}: connection lost while A was up")
                    return
            except Exception as exc:  # a refusal or a wrong answer: the test fails with it
                with self.lock:
                    self.errors.append(f"client {n}: {exc!r}")
                return


def read_dumps(directory: Path) -> tuple[Counter[Pair], dict[int, bytes], list[str]]:
    """What the peer accepted: (message, recipient) counts, each message's body (LF line ends,
    as smtp-sink writes it) and files that are not one of ours."""
    got: Counter[Pair] = Counter()
    bodies: dict[int, bytes] = {}
    strange: list[str] = []
    for path in directory.iterdir():
        raw = path.read_bytes()
        m = SUBJECT.search(raw)
        rcpts = RCPT_ARGS.findall(raw)
        if m is None or not rcpts:
            strange.append(f"{path.name}: {raw[:300]!r}")
            continue
        seq = int(m.group(1))
        for r in rcpts:
            got[(seq, r.decode())] += 1
        # The sink's own fields have no empty line: the first one ends the message header.
        bodies[seq] = raw.partition(b"\n\n")[2]
    return got, bodies, strange


def queue_at_kill(data: Path) -> dict[Pair, str]:
    """The state of every queued (message, recipient) as the SIGKILL left it."""
    from netpost.store.embedded import lock_data_dir, open_stores

    out: dict[Pair, str] = {}
    with lock_data_dir(data, "test_crash_queue"):
        stores = open_stores(data)
        try:
            after = 0
            while entries := stores.queue.entries(limit=1000, after_id=after):
                for e in entries:
                    after = max(after, e.message.id)
                    m = SUBJECT.search(stores.blobs.read(e.message.blob))
                    assert m is not None, e.message.queue_id
                    for r in e.recipients:
                        out[(int(m.group(1)), r.address)] = r.state
        finally:
            stores.close()
    return out


def queue_empty(a: Server) -> bool:
    r = a.cli("queue", "list")
    return r.returncode == 0 and "the queue is empty" in r.stdout


def a_config(sink_port: int) -> str:
    return f"""
[auth]
failure_delay = 0.2
[server]
shutdown_grace = 5.0
hostname = "mx.example.test"
[relay]
smarthost = "127.0.0.1:{sink_port}"
first_retry = 0.5
max_retry = 1.0
connect_timeout = 5.0
command_timeout = 30.0
connections = {CONNECTIONS}
connections_per_domain = {CONNECTIONS_PER_DOMAIN}
"""


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 60.0,
               step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


@pytest.mark.slow
def test_sigkill_while_the_queue_sends_loses_nothing(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    started = time.monotonic()
    data = tmp_path_factory.mktemp("qcrash") / "a"
    shutil.copytree(template(tmp_path_factory.getbasetemp()), data)
    # smtp-sink runs as nobody: its dump directory must be outside pytest's private tree.
    dumps = Path(tempfile.mkdtemp(prefix="netpost-qcrash-"))
    dumps.chmod(0o777)
    sink_port = free_port()
    sink = SmtpSink(port=sink_port, args=["-d", f"{dumps}/t."])
    a: Server = start_server(data, a_config(sink_port))
    servers = [a]
    load = Load(a.port("submission"))
    load.up.set()
    clients = [threading.Thread(target=load.client, args=(n,), daemon=True)
               for n in range(CLIENTS)]
    timings: dict[str, float] = {}
    try:
        for t in clients:
            t.start()
        # The peer is down: A defers what it claims until the peer comes up.
        wait_until("the backlog", lambda: len(load.accepted) >= PEER_UP_AT
                   or not any(t.is_alive() for t in clients))
        timings["peer up"] = time.monotonic() - started
        sink.start()
        wait_until("the peer to take mail", lambda: sink.count >= KILL_AFTER, step=0.002)
        load.up.clear()
        a.stop(signal.SIGKILL)
        timings["killed"] = time.monotonic() - started
        peer_at_kill = sink.count
        with load.lock:
            accepted_at_kill = len(load.accepted)
        states = queue_at_kill(data)
        at_kill = Counter(states.values())

        a = start_server(data, a_config(sink_port))
        servers.append(a)
        load.port = a.port("submission")
        load.up.set()
        for t in clients:
            t.join(60)
        assert not any(t.is_alive() for t in clients)
        timings["submitted"] = time.monotonic() - started
        wait_until("A's queue to empty", lambda: queue_empty(a), step=0.3)
        timings["drained"] = time.monotonic() - started
        a.stop()
    finally:
        load.up.set()
        for server in servers:
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait(10)
        sink.stop()
    try:
        got, bodies, strange = read_dumps(dumps)
    finally:
        shutil.rmtree(dumps, ignore_errors=True)
    check = run_cli(data, "check")
    gc = run_cli(data, "gc")
    check_after_gc = run_cli(data, "check")

    elapsed = time.monotonic() - started
    accepted: set[Pair] = {(s, r) for s in load.accepted for r in load.sent[s][0]}
    maybe: set[Pair] = {(s, r) for s in load.uncertain for r in load.sent[s][0]}
    lost = sorted(accepted - set(got))
    unknown = sorted(set(got) - accepted - maybe)
    duplicated = {p: n for p, n in got.items() if n > 1}
    # A transaction carries one message to one domain's recipients.
    repeated = {(s, r.partition("@")[2]) for s, r in duplicated}
    outside_window = sorted(p for p in duplicated if states.get(p) != "sending")
    more_than_twice = sorted(p for p, n in duplicated.items() if n > 2)
    # smtp-sink writes LF line ends and ends the dump with the empty line of the final dot.
    differ = sorted(s for s, body in bodies.items() if s in load.sent
                    and body != load.sent[s][1].replace(b"\r\n", b"\n") + b"\n")
    print(f"\nqueue crash: {len(load.sent)} submitted, {len(load.accepted)} accepted "
          f"({len(accepted)} message-recipient pairs), {len(load.uncertain)} cut off by the "
          f"kill; at the kill: {accepted_at_kill} accepted, the peer had {peer_at_kill} "
          f"transactions, A's queue held {dict(at_kill)}; the peer got {len(got)} pairs in "
          f"{sum(got.values())} deliveries: {len(duplicated)} pairs in {len(repeated)} "
          f"transactions twice (bound: {CONNECTIONS} connections); "
          f"timings {({k: round(v, 1) for k, v in timings.items()})}; {elapsed:.1f} s")

    assert load.errors == [], load.errors[:5]
    assert strange == [], strange[:3]
    # It happened as planned: the queue held a backlog and was sending when A was killed.
    assert peer_at_kill >= KILL_AFTER and at_kill["sending"] > 0, at_kill
    assert at_kill["queued"] + at_kill["deferred"] + at_kill["sending"] >= 200, at_kill
    assert len(load.accepted) >= TOTAL - CLIENTS, len(load.accepted)

    assert lost == [], f"{len(lost)} accepted recipients never delivered: {lost[:10]}"
    assert unknown == [], f"the peer got what was never submitted: {unknown[:10]}"
    assert outside_window == [], f"duplicates outside the crash window: {outside_window[:10]}"
    assert more_than_twice == [], more_than_twice[:10]
    assert len(repeated) <= CONNECTIONS, sorted(repeated)
    assert differ == [], f"bodies changed on the way: {differ[:10]}"

    # What the kill cut off mid-submission may have left its body behind, nothing else.
    report = check.stdout + check.stderr
    orphans = ORPHANS.search(check.stdout)
    assert check.returncode == 0 or (
        orphans is not None and 0 < int(orphans.group(1)) <= len(load.uncertain)
        and "LOST" not in report and "wrong" not in report and "damaged" not in report
    ), report
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert check_after_gc.returncode == 0, check_after_gc.stdout + check_after_gc.stderr
    assert "no problems found" in check_after_gc.stdout, check_after_gc.stdout
    for server in servers:
        output = "".join(server.output)
        assert "Traceback" not in output, output[-3000:]
    # Deferred only while the peer was down; the restart made every claimed recipient due.
    deferrals = [line for server in servers for line in server.output
                 if "status=deferred" in line]
    assert all("Connection refused" in line for line in deferrals), [
        line for line in deferrals if "Connection refused" not in line][:5]
    recovered = RECOVERED.search("".join(servers[1].output))
    assert recovered is not None and int(recovered.group(1)) == at_kill["sending"], (
        recovered, at_kill)
