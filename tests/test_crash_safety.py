"""Crash safety: SIGKILL the server under concurrent SMTP load; every 250 survives intact.

The promise (README): a message that got `250` after DATA is on disk in every recipient's
mailbox. Eight senders deliver unique messages over the MX while the server is killed with
SIGKILL at random moments and restarted on the same data directory and ports. Afterwards POP3
must show every acknowledged message exactly once per recipient, byte-identical after the
trace fields the server prepends, and nothing partial, duplicated or unknown.
"""

from __future__ import annotations

import base64
import random
import shutil
import signal
import smtplib
import socket
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest

from tests.conftest import CONFIG, LISTENER_NAMES, Server, start_server
from tests.security import BOB, CAROL, mailbox, strip_trace, template

KILLS = 4
SENDERS = 8
CRASH_CONFIG = CONFIG.replace('listeners = ["all"]', "listeners = []") + (
    "[server]\nshutdown_grace = 5.0\n")


def free_ports() -> dict[str, int]:
    with ExitStack() as stack:
        ports = {}
        for name in LISTENER_NAMES:
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports[name] = s.getsockname()[1]
        return ports


def make_message(seq: int, rnd: random.Random) -> bytes:
    """Unique, 1-50 KiB, CRLF lines under 1000 octets, some starting with a dot."""
    size = rnd.randint(1024, 50 * 1024)
    raw = base64.b64encode(rnd.randbytes(size * 3 // 4 + 3))[:size]
    lines = [raw[i:i + 76] for i in range(0, len(raw), 76)]
    for i in range(0, len(lines), 17):
        lines[i] = b"." + lines[i]  # dot-stuffing on the wire must be undone exactly
    head = (f"From: load{seq % SENDERS}@example.org\r\nTo: {BOB}\r\n"
            f"Subject: crash {seq}\r\nMessage-ID: <crash.{seq}@test>\r\n\r\n").encode()
    return head + b"\r\n".join(lines) + b"\r\n"


def seq_of(content: bytes) -> int | None:
    head = content.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if line.startswith(b"Subject: crash "):
            return int(line.split()[-1])
    return None


@dataclass
class Load:
    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_seq: int = 0
    sent: dict[int, tuple[bytes, tuple[str, ...]]] = field(default_factory=dict)
    acked: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def seq(self) -> int:
        with self.lock:
            self.next_seq += 1
            return self.next_seq

    def sender(self, n: int) -> None:
        rnd = random.Random(n)
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=15) as s:
                    for _ in range(rnd.randint(1, 6)):
                        if self.stop.is_set():
                            break
                        seq = self.seq()
                        rcpts = (BOB, CAROL) if seq % 3 == 0 else (BOB,)
                        msg = make_message(seq, rnd)
                        with self.lock:
                            self.sent[seq] = (msg, rcpts)
                        s.sendmail(f"load{n}@example.org", list(rcpts), msg)
                        with self.lock:
                            self.acked.add(seq)  # 250 after DATA for every recipient
            except (OSError, smtplib.SMTPException) as exc:
                if not isinstance(exc, (ConnectionError, smtplib.SMTPServerDisconnected,
                                        TimeoutError)):
                    with self.lock:
                        self.errors.append(repr(exc))
                time.sleep(0.05)  # server down: retry the connection


def test_sigkill_under_load_loses_nothing_acknowledged(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    data = tmp_path_factory.mktemp("crash") / "data"
    shutil.copytree(template(tmp_path_factory.getbasetemp()), data)
    ports = free_ports()
    server: Server = start_server(data, CRASH_CONFIG, ports=ports)
    load = Load(ports["smtp"])
    threads = [threading.Thread(target=load.sender, args=(n,), daemon=True)
               for n in range(SENDERS)]
    rnd = random.Random()
    started = time.monotonic()
    acked_at_kill = []
    try:
        for t in threads:
            t.start()
        for _ in range(KILLS):
            time.sleep(rnd.uniform(0.8, 2.5))
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
            with load.lock:
                acked_at_kill.append(len(load.acked))
            server = start_server(data, CRASH_CONFIG, ports=ports)
        time.sleep(1.0)
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)
    try:
        assert not any(t.is_alive() for t in threads)
        assert load.errors == [], load.errors[:5]
        # The load really ran between the kills.
        assert len(load.acked) > 50 and acked_at_kill[0] > 0, (len(load.acked), acked_at_kill)
        boxes = {user: mailbox(server, user) for user in (BOB, CAROL)}
        problems = []
        for user, messages in boxes.items():
            seen: dict[int, int] = {}
            for raw in messages:
                content = strip_trace(raw)
                seq = seq_of(content)
                if seq is None or seq not in load.sent:
                    problems.append(f"{user}: unknown or partial message {raw[:300]!r}")
                    continue
                msg, rcpts = load.sent[seq]
                if user not in rcpts:
                    problems.append(f"{user}: got message {seq} addressed to {rcpts}")
                if content != msg:
                    problems.append(f"{user}: message {seq} differs: {len(content)} octets "
                                    f"stored, {len(msg)} sent")
                seen[seq] = seen.get(seq, 0) + 1
            problems += [f"{user}: message {s} stored {n} times" for s, n in seen.items()
                         if n > 1]
            expected = {s for s in load.acked if user in load.sent[s][1]}
            lost = sorted(expected - set(seen))
            if lost:
                problems.append(f"{user}: {len(lost)} acknowledged messages lost: {lost[:20]}")
        assert problems == [], problems[:20]
    finally:
        server.stop()
    duration = time.monotonic() - started
    print(f"crash safety: {len(load.sent)} sent, {len(load.acked)} acknowledged, "
          f"{sum(len(b) for b in boxes.values())} stored, {KILLS} kills, {duration:.1f}s")
    assert "Traceback" not in "".join(server.output), "".join(server.output)[-3000:]


def test_free_ports_are_distinct() -> None:
    assert len(set(free_ports().values())) == len(LISTENER_NAMES)


