"""Crash safety of the blob layout's maintenance: SIGKILL `netpost migrate` half-way through
moving 0.1's files into blobs.db, and `netpost gc` while it deletes and compacts.  Every body a
message references must read back byte-identical afterwards, and a re-run must finish the job."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from netpost.mail.message import parse_meta
from netpost.store.embedded import open_stores
from netpost.store.migrate import MARKER
from tests.conftest import netpost_cmd, run_cli
from tests.store.test_layout import _all_bodies, make_old_layout

pytestmark = pytest.mark.slow


def _small_files(data: Path) -> int:
    return sum(1 for p in (data / "blobs").rglob("*")
               if p.is_file() and len(p.name) == 64 and p.stat().st_size <= 128 * 1024)


def test_sigkill_during_migration_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "old"
    bodies = make_old_layout(data, 3000)
    kills, midway = 0, 0
    for _ in range(3):
        before = _small_files(data)
        if before == 0:
            break
        proc = subprocess.Popen(netpost_cmd(data, "migrate"), stderr=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, text=True)
        assert proc.stderr is not None
        # Wait for the first progress line past 0, then kill at once.
        for line in proc.stderr:
            if "moving small message files" in line and not line.split(":")[-1].strip() \
                    .startswith("0/"):
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        kills += 1
        after = _small_files(data)
        midway += 0 < after < before
        assert _all_bodies(data) == bodies  # every body readable, byte-identical
    assert kills >= 1 and midway >= 1  # at least one kill landed in the middle of the move
    r = run_cli(data, "migrate")
    assert r.returncode == 0, r.stderr
    assert (data / "blobs" / MARKER).exists() and _small_files(data) == 0
    assert _all_bodies(data) == bodies
    check = run_cli(data, "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_sigkill_during_gc_and_compaction_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    stores = open_stores(data)
    stores.domains.add_domain("example.com")
    account = stores.accounts.add_account("bob@example.com", "x")
    inbox = stores.mailboxes.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    rnd = random.Random(5)
    bodies = [b"Subject: %d\r\n\r\n" % i + rnd.randbytes(rnd.choice([3000, 30_000, 200_000]))
              for i in range(900)]
    committer = stores.delivery
    for i in range(0, len(bodies), 50):
        for body in bodies[i:i + 50]:
            committer.deliver_sync(  # type: ignore[attr-defined]
                body, parse_meta(body, 0.0), [inbox.id])
    keep = set(rnd.sample(range(1, 901), 90))
    stores.messages.expunge(inbox.id, [uid for uid in range(1, 901) if uid not in keep])
    stores.close()
    expected = {uid: bodies[uid - 1] for uid in keep}

    def referenced_bodies() -> dict[int, bytes]:
        s = open_stores(data)
        try:
            return {row.uid: s.blobs.read(row.blob) for row in s.messages.messages(inbox.id)}
        finally:
            s.close()

    for delay in (0.15, 0.3, 0.5):
        proc = subprocess.Popen(netpost_cmd(data, "gc"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert referenced_bodies() == expected
    r = run_cli(data, "gc")
    assert r.returncode == 0 and "removed" in r.stdout, r.stderr
    assert referenced_bodies() == expected
    check = run_cli(data, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no problems found" in check.stdout
    assert os.path.getsize(data / "blobs.db") < sum(len(b) for b in bodies) / 3


def test_serve_migrates_an_old_data_directory_at_start(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import poplib

    from tests.conftest import client_tls, start_server

    data = tmp_path / "old"
    bodies = make_old_layout(data, 300, large_every=100)
    r = run_cli(data, "user", "passwd", "bob@example.com", "--password-stdin",
                stdin="secret pw\n")
    assert r.returncode == 0, r.stderr
    srv = start_server(data, config="")
    try:
        out = "".join(srv.output)
        assert "moving small message files into blobs.db: 297/297" in out
        assert "moved 297 message bodies into blobs.db" in out
        monkeypatch.setattr(poplib, "_MAXLINE", 1 << 20)  # these bodies are one long line each
        pop = poplib.POP3_SSL("127.0.0.1", srv.port("pop3s"), timeout=10, context=client_tls())
        pop.user("bob@example.com")
        pop.pass_("secret pw")
        assert pop.stat()[0] == 300
        for i in (1, 2, 101, 300):
            _, lines, _ = pop.retr(i)
            assert b"\r\n".join(lines) == bodies[i - 1]  # (these bodies end without CRLF)
        pop.quit()
    finally:
        assert srv.stop() == 0
    assert _small_files(data) == 0 and (data / "blobs" / MARKER).exists()
