"""Crash safety for IMAP APPEND: SIGKILL under pipelined load; every tagged OK survives.

The promise (server.py): a pipelined APPEND's tagged OK goes out only once its message is
durable.  Six IMAPS clients APPEND unique messages as fast as they can, each keeping eight
LITERAL+ APPENDs in flight, while the server is killed with SIGKILL and restarted on the same
data directory and ports.  Afterwards every acknowledged message must be there byte for byte
under the UID its APPENDUID named, every message there must be one a client sent, whole,
UIDs must never be reused (each restart's APPENDUIDs lie above all before it) and
UIDVALIDITY must not change.
"""

from __future__ import annotations

import base64
import imaplib
import itertools
import random
import re
import shutil
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.conftest import PASSWORD, Server, client_tls, start_server
from tests.security import ALICE, template
from tests.test_crash_safety import CRASH_CONFIG, free_ports

CLIENTS = 6
IN_FLIGHT = 8
KILLS = 3
MAILBOX = "Load"
APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>\r$", re.MULTILINE)


def make_message(msgid: str, rnd: random.Random) -> bytes:
    """Unique, 200 B - 12 KiB, CRLF lines, some 8-bit octets and lines starting with a dot."""
    size = rnd.randint(200, 12 * 1024)
    raw = base64.b64encode(rnd.randbytes(size * 3 // 4 + 3))[:size]
    lines = [raw[i:i + 76] for i in range(0, len(raw), 76)]
    for i in range(0, len(lines), 13):
        lines[i] = b"." + lines[i]
    lines.append("caf\u00e9 \u00fcber".encode())
    head = (f"From: load@example.org\r\nTo: {ALICE}\r\nSubject: append {msgid}\r\n"
            f"Message-ID: <{msgid}>\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n").encode()
    return head + b"\r\n".join(lines) + b"\r\n"


@dataclass
class Ack:
    uidvalidity: int
    uid: int
    generation: int  # which server process acknowledged it (0 before the first kill)


@dataclass
class Load:
    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    generation: int = 0
    sent: dict[str, bytes] = field(default_factory=dict)
    acked: dict[str, Ack] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    sessions: int = 0

    def client(self, n: int) -> None:
        rnd = random.Random(n)
        counter = itertools.count(1)  # message numbers go on across sessions
        while not self.stop.is_set():
            try:
                self.session(n, rnd, counter)
            except (OSError, EOFError, ssl.SSLError):
                time.sleep(0.05)  # the server is down: connect again
            except Exception as exc:  # a wrong answer: the test fails with it
                with self.lock:
                    self.errors.append(f"client {n}: {exc!r}")
                time.sleep(0.05)

    def session(self, n: int, rnd: random.Random, counter: Iterator[int]) -> None:
        generation = self.generation
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as raw, \
                client_tls().wrap_socket(raw, server_hostname="localhost") as tls, \
                tls.makefile("rb") as reader:
            if not reader.readline().startswith(b"* OK"):
                raise EOFError("no greeting")
            tls.sendall(f'L LOGIN {ALICE} "{PASSWORD}"\r\n'.encode())
            while not (line := reader.readline()).startswith(b"L "):
                if not line:
                    raise EOFError("closed during LOGIN")
            if not line.startswith(b"L OK"):
                raise AssertionError(f"LOGIN failed: {line!r}")
            if self.generation != generation:
                return  # a restart came between: which process is this?
            with self.lock:
                self.sessions += 1
            in_flight: dict[bytes, str] = {}

            def send_one() -> None:
                number = next(counter)
                msgid = f"c{n}.{number}@crash.test"
                msg = make_message(msgid, rnd)
                tag = f"A{number}".encode()
                with self.lock:
                    self.sent[msgid] = msg
                in_flight[tag] = msgid
                tls.sendall(tag + b" APPEND " + MAILBOX.encode() + b" {%d+}\r\n" % len(msg) +
                            msg + b"\r\n")

            for _ in range(IN_FLIGHT):
                send_one()
            while in_flight:
                line = reader.readline()
                if not line:
                    raise EOFError("closed during APPEND")
                if line.startswith(b"* "):
                    continue
                tag, status, text = line.split(b" ", 2)
                msgid = in_flight.pop(tag)
                if status != b"OK":
                    raise AssertionError(f"APPEND {msgid}: {line!r}")
                m = APPENDUID.search(text)
                if m is None:
                    raise AssertionError(f"APPEND {msgid} without APPENDUID: {line!r}")
                with self.lock:
                    self.acked[msgid] = Ack(int(m.group(1)), int(m.group(2)), generation)
                if not self.stop.is_set():
                    send_one()
            tls.sendall(b"Z LOGOUT\r\n")


def imaps(port: int) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_tls(), timeout=60)
    m.login(ALICE, PASSWORD)
    return m


def mailbox_contents(m: imaplib.IMAP4_SSL) -> tuple[int, dict[int, bytes]]:
    """UIDVALIDITY and every message of MAILBOX by UID."""
    typ, _ = m.select(MAILBOX, readonly=True)
    assert typ == "OK"
    value = m.untagged_responses["UIDVALIDITY"][-1]
    assert isinstance(value, bytes), value
    uidvalidity = int(value)
    typ, data = m.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
    assert typ == "OK", data
    messages: dict[int, bytes] = {}
    for i, item in enumerate(data):
        if not isinstance(item, tuple):
            continue
        found = re.search(rb"UID (\d+)", item[0])
        if found is None:  # UID after the literal
            after = data[i + 1] if i + 1 < len(data) else b""
            found = re.search(rb"UID (\d+)", after if isinstance(after, bytes) else b"")
        assert found is not None, item[0]
        uid = int(found.group(1))
        assert uid not in messages, f"UID {uid} twice in one FETCH"
        messages[uid] = item[1]
    return uidvalidity, messages


def uid_next(m: imaplib.IMAP4_SSL) -> int:
    typ, data = m.status(MAILBOX, "(UIDNEXT)")
    assert typ == "OK", data
    found = re.search(rb"UIDNEXT (\d+)", data[0] if isinstance(data[0], bytes) else b"")
    assert found is not None, data
    return int(found.group(1))


@pytest.mark.slow
def test_sigkill_during_pipelined_appends_loses_nothing_acknowledged(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    data = tmp_path_factory.mktemp("imapcrash") / "data"
    shutil.copytree(template(tmp_path_factory.getbasetemp()), data)
    ports = free_ports()
    server: Server = start_server(data, CRASH_CONFIG, ports=ports)
    started = time.monotonic()
    m = imaps(ports["imaps"])
    assert m.create(MAILBOX)[0] == "OK"
    uidvalidity_before, _ = mailbox_contents(m)
    m.logout()

    load = Load(ports["imaps"])
    threads = [threading.Thread(target=load.client, args=(n,), daemon=True)
               for n in range(CLIENTS)]
    rnd = random.Random()
    acked_at_kill: list[int] = []
    try:
        for t in threads:
            t.start()
        for _ in range(KILLS):
            time.sleep(rnd.uniform(1.5, 3.0))
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
            with load.lock:
                acked_at_kill.append(len(load.acked))
                load.generation += 1  # before the new process listens (see Load.session)
            server = start_server(data, CRASH_CONFIG, ports=ports)
        time.sleep(1.5)
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)
    try:
        assert not any(t.is_alive() for t in threads)
        assert load.errors == [], load.errors[:5]
        # The load really ran in every server process.
        per_generation = [sum(1 for a in load.acked.values() if a.generation == g)
                          for g in range(KILLS + 1)]
        assert all(n > 0 for n in per_generation), per_generation

        m = imaps(ports["imaps"])
        uidvalidity, stored = mailbox_contents(m)
        problems: list[str] = []
        if uidvalidity != uidvalidity_before:
            problems.append(f"UIDVALIDITY changed: {uidvalidity_before} -> {uidvalidity}")
        problems += [f"{msgid}: APPENDUID said UIDVALIDITY {a.uidvalidity}"
                     for msgid, a in load.acked.items() if a.uidvalidity != uidvalidity]
        # Everything stored is a message some client sent, whole, and stored once.
        seen: dict[str, int] = {}
        for uid, content in stored.items():
            found = MESSAGE_ID.search(content)
            msgid = found.group(1).decode() if found else None
            if msgid is None or msgid not in load.sent:
                problems.append(f"UID {uid}: unknown or partial message {content[:200]!r}")
                continue
            if content != load.sent[msgid]:
                problems.append(f"UID {uid} ({msgid}): {len(content)} octets stored, "
                                f"{len(load.sent[msgid])} sent")
            if msgid in seen:
                problems.append(f"{msgid} stored twice: UIDs {seen[msgid]} and {uid}")
            seen[msgid] = uid
        # Every acknowledged message is there under the UID its APPENDUID named.
        lost = sorted(msgid for msgid in load.acked if msgid not in seen)
        if lost:
            problems.append(f"{len(lost)} acknowledged messages lost: {lost[:10]}")
        problems += [f"{msgid}: APPENDUID {a.uid}, stored as UID {seen[msgid]}"
                     for msgid, a in load.acked.items()
                     if msgid in seen and seen[msgid] != a.uid]
        # UIDs are never reused: each process's UIDs lie above all earlier processes' UIDs.
        uids = [a.uid for a in load.acked.values()]
        if len(set(uids)) != len(uids):
            problems.append("one UID acknowledged for two messages")
        for g in range(1, KILLS + 1):
            before = [a.uid for a in load.acked.values() if a.generation < g]
            after = [a.uid for a in load.acked.values() if a.generation == g]
            if before and after and min(after) <= max(before):
                problems.append(f"process {g} reused UIDs: its lowest {min(after)} <= "
                                f"{max(before)} acknowledged before")
        # And after the last restart too: UIDNEXT and a new APPEND lie above everything.
        highest = max([*uids, *stored])
        if uid_next(m) <= highest:
            problems.append(f"UIDNEXT {uid_next(m)} <= highest UID {highest}")
        typ, resp = m.append(MAILBOX, None, None, make_message("after@crash.test",
                                                                random.Random(0)))
        found = APPENDUID.search(resp[0] if resp and isinstance(resp[0], bytes) else b"")
        assert typ == "OK" and found is not None, resp
        if int(found.group(1)) != uidvalidity or int(found.group(2)) <= highest:
            problems.append(f"APPEND after the crashes got {found.group()!r}, highest UID "
                            f"{highest}, UIDVALIDITY {uidvalidity}")
        m.logout()
        assert problems == [], problems[:20]
    finally:
        server.stop()
    duration = time.monotonic() - started
    print(f"imap crash safety: {len(load.sent)} sent, {len(load.acked)} acknowledged "
          f"{per_generation}, {len(stored)} stored, {load.sessions} sessions, {KILLS} kills, "
          f"{duration:.1f}s")
    assert "Traceback" not in "".join(server.output), "".join(server.output)[-3000:]
