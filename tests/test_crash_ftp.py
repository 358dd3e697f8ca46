"""Crash safety of FTP uploads: SIGKILL during 20 parallel uploads; every 226 survives whole.

The promise (DESIGN.md): an FTP upload that got 226 is whole, and nothing half-written is ever
visible.  Twenty clients (ftplib, plain FTP on a server with `[auth] allow_plaintext = true`)
upload files of 1-4 MiB with known sha256 sums, some to new names and some over a file they
uploaded before; the server is killed with SIGKILL while uploads run, restarted on the same
data directory, killed again, restarted.  Afterwards:

* every file that got 226 is on disk and over FTP, byte-exact (sha256), unless a later upload
  of the same name replaced it whole;
* every file under a final name is one whole upload (an upload cut by the kill either left the
  old content or never appeared): on disk, in LIST/NLST/MLSD, and over RETR;
* the upload temporary files the kill left (`.netpost-upload.*`) are never listed or reachable
  and are removed once the account is used again.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import CONFIG, PASSWORD, Server, start_server
from tests.security import ALICE, BOB, template
from tests.test_crash_safety import free_ports

UPLOADERS = 20
KILLS = 2
MiB = 1024 * 1024
TEMP_PREFIX = ".netpost-upload."
CRASH_CONFIG = (CONFIG.replace('listeners = ["all"]', "listeners = []")
                .replace("[auth]\n", "[auth]\nallow_plaintext = true\n")
                + "[server]\nshutdown_grace = 5.0\n")


def content(name: str, version: int, size: int) -> bytes:
    """Deterministic, incompressible, different for every (name, version)."""
    return random.Random(f"{name}/{version}").randbytes(size)


@dataclass
class Uploads:
    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # name -> the sha256 of each version sent, in order; and how many of them got 226
    versions: dict[str, list[str]] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    acks: int = 0
    errors: list[str] = field(default_factory=list)

    def owner(self, n: int) -> str:
        return BOB if n % 4 == 0 else ALICE

    def uploader(self, n: int) -> None:
        rnd = random.Random(n)
        i = 0
        while not self.stop.is_set():
            try:
                with ftplib.FTP() as ftp:
                    ftp.connect("127.0.0.1", self.port, timeout=20)
                    ftp.login(self.owner(n), PASSWORD)
                    while not self.stop.is_set():
                        i += 1
                        # Every third upload replaces this uploader's previous file.
                        name = f"up-{n}-{i - 1 if i % 3 == 0 and i > 1 else i}.bin"
                        with self.lock:
                            version = len(self.versions.get(name, []))
                        data = content(name, version, rnd.randint(1 * MiB, 4 * MiB))
                        with self.lock:
                            self.versions.setdefault(name, []).append(
                                hashlib.sha256(data).hexdigest())
                            self.in_flight.add(name)
                        try:
                            reply = ftp.storbinary(f"STOR {name}", io.BytesIO(data), 256 * 1024)
                        finally:
                            with self.lock:
                                self.in_flight.discard(name)
                        if not reply.startswith("226"):
                            with self.lock:
                                self.errors.append(f"{name}: {reply}")
                            continue
                        with self.lock:
                            self.acked[name] = version + 1
                            self.acks += 1
            except (OSError, EOFError, ftplib.Error) as exc:
                if not isinstance(exc, (ConnectionError, EOFError, TimeoutError,
                                        ftplib.error_temp)):
                    with self.lock:
                        self.errors.append(repr(exc))
                time.sleep(0.05)  # the server is down: connect again


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def check_tree(load: Uploads, home: Path, owner: str, problems: list[str]) -> dict[str, str]:
    """Every final name on disk holds one whole version, no 226 is lost; name -> sha."""
    found: dict[str, str] = {}
    for path in home.iterdir():
        if path.name.startswith(TEMP_PREFIX):
            continue
        versions = load.versions.get(path.name)
        if versions is None:
            problems.append(f"{owner}: unknown file {path.name}")
            continue
        digest = found[path.name] = sha(path)
        acked = load.acked.get(path.name, 0)
        # The last acknowledged version, or a later one that was renamed into place just
        # before the kill (its 226 never left): never an older one, never a part.
        if digest not in versions[max(acked - 1, 0):]:
            what = ("a partial or unknown version" if digest not in versions
                    else f"version {versions.index(digest) + 1}, but {acked} got 226")
            problems.append(f"{owner}: {path.name} holds {what} ({path.stat().st_size} B)")
    for name, acked in load.acked.items():
        if acked and load.owner(int(name.split("-")[1])) == owner and name not in found:
            problems.append(f"{owner}: {name} got 226 and is gone")
    return found


def listed(server: Server, user: str) -> tuple[set[str], set[str], dict[str, int]]:
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", server.port("ftp"), timeout=30)
        ftp.login(user, PASSWORD)
        long_lines: list[str] = []
        ftp.retrlines("LIST -a", long_lines.append)
        names = set(ftp.nlst())
        sizes = {name: int(facts["size"]) for name, facts in ftp.mlsd()}
        ftp.quit()
    return {line.split()[-1] for line in long_lines}, names, sizes


def download_sha(server: Server, user: str, names: list[str]) -> dict[str, str]:
    out = {}
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", server.port("ftp"), timeout=30)
        ftp.login(user, PASSWORD)
        for name in names:
            h = hashlib.sha256()
            assert ftp.retrbinary(f"RETR {name}", h.update, 256 * 1024).startswith("226")
            out[name] = h.hexdigest()
        ftp.quit()
    return out


def test_sigkill_during_parallel_uploads_keeps_every_226_whole(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    data = tmp_path_factory.mktemp("crash-ftp") / "data"
    shutil.copytree(template(tmp_path_factory.getbasetemp()), data)
    ports = free_ports()
    server = start_server(data, CRASH_CONFIG, ports=ports)
    load = Uploads(ports["ftp"])
    threads = [threading.Thread(target=load.uploader, args=(n,), daemon=True)
               for n in range(UPLOADERS)]
    rnd = random.Random()
    started = time.monotonic()
    at_kill: list[tuple[int, int]] = []
    try:
        for t in threads:
            t.start()
        for kill in range(KILLS):
            # Let some uploads finish (226) since the last start, then kill while others run.
            with load.lock:
                target = load.acks + 10
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with load.lock:
                    if load.acks >= target and len(load.in_flight) >= UPLOADERS // 2:
                        break
                time.sleep(0.02)
            time.sleep(rnd.uniform(0.05, 0.5))
            if kill == KILLS - 1:
                # The last kill: the uploaders finish what runs and start nothing after, so
                # the restarted server shows what the kill left before anyone writes again.
                load.stop.set()
            with load.lock:
                at_kill.append((load.acks, len(load.in_flight)))
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
            server = start_server(data, CRASH_CONFIG, ports=ports)
    finally:
        load.stop.set()
        for t in threads:
            t.join(60)
    try:
        assert not any(t.is_alive() for t in threads)
        assert load.errors == [], load.errors[:5]
        # The kills really hit running uploads, after some had finished.
        assert all(acks > 0 and running > 0 for acks, running in at_kill), at_kill
        problems: list[str] = []
        temps_left = 0
        for user in (ALICE, BOB):
            home = data / "files" / user
            temps = [p.name for p in home.iterdir() if p.name.startswith(TEMP_PREFIX)]
            temps_left += len(temps)
            found = check_tree(load, home, user, problems)
            # What FTP shows is exactly the whole files: no temporary, no partial file.
            long_names, names, sizes = listed(server, user)
            for shown in (long_names, names, set(sizes)):
                if shown != set(found):
                    problems.append(f"{user}: listed {sorted(shown ^ set(found))[:10]} "
                                    f"differs from the whole files on disk")
            for name, size in sizes.items():
                if size != (home / name).stat().st_size:
                    problems.append(f"{user}: MLSD size of {name} is {size}")
            got = download_sha(server, user, sorted(found))
            problems += [f"{user}: RETR {name} differs" for name in found
                         if got[name] != found[name]]
            if temps:  # unreachable by name too
                with ftplib.FTP() as ftp:
                    ftp.connect("127.0.0.1", server.port("ftp"), timeout=30)
                    ftp.login(user, PASSWORD)
                    for command in (f"SIZE {temps[0]}", f"MDTM {temps[0]}", f"DELE {temps[0]}"):
                        try:
                            ftp.sendcmd(command)
                            problems.append(f"{user}: {command} was accepted")
                        except ftplib.error_perm:
                            pass
            # Using the account again removes the temporary files the kills left.
            with ftplib.FTP() as ftp:
                ftp.connect("127.0.0.1", server.port("ftp"), timeout=30)
                ftp.login(user, PASSWORD)
                assert ftp.storbinary("STOR after.txt", io.BytesIO(b"after\n")).startswith("226")
                ftp.delete("after.txt")
                ftp.quit()
            left = [p.name for p in home.iterdir() if p.name.startswith(TEMP_PREFIX)]
            if left:
                problems.append(f"{user}: temporary files left after use: {left}")
        assert problems == [], problems[:20]
    finally:
        server.stop()
    acked_files = sum(1 for n in load.acked.values() if n)
    print(f"ftp crash safety: {sum(map(len, load.versions.values()))} uploads started, "
          f"{load.acks} got 226 ({acked_files} names), {KILLS} kills at (acks, running) "
          f"{at_kill}, {temps_left} temporary files left by the kills, "
          f"{time.monotonic() - started:.1f}s")
    assert "Traceback" not in "".join(server.output), "".join(server.output)[-3000:]
