"""`netpost leases`: list, show, release."""

from __future__ import annotations

import time
from pathlib import Path

from netpost.store.embedded import open_admin
from netpost.store.interfaces import Lease
from tests.conftest import run_cli


def test_list_show_release(tmp_path: Path) -> None:
    data = tmp_path / "d"
    now = time.time()
    admin = open_admin(data)
    admin.leases.commit_leases([
        Lease("10.99.0.10", b"hw:\x01\x02\x00\x00\x00\x00\x01", "bound", now, now + 600,
              hardware="02:00:00:00:00:01", hostname="laptop", subnet="10.99.0.0/24"),
        Lease("10.99.0.9", b"id:\x01ab", "bound", 1.0, 2.0),
    ])
    admin.close()
    listed = run_cli(data, "leases", "list")
    assert listed.returncode == 0
    assert "10.99.0.10" in listed.stdout and "laptop" in listed.stdout
    assert "10.99.0.9 " not in listed.stdout  # expired: only with --all
    everything = run_cli(data, "leases", "list", "--all").stdout
    assert everything.index("10.99.0.9 ") < everything.index("10.99.0.10")
    assert "expired" in everything
    shown = run_cli(data, "leases", "show", "10.99.0.10")
    assert "hostname: laptop" in shown.stdout and "state:    bound" in shown.stdout
    released = run_cli(data, "leases", "release", "10.99.0.10")
    assert released.returncode == 0 and "released 10.99.0.10" in released.stdout
    again = run_cli(data, "leases", "release", "10.99.0.10")
    assert again.returncode == 1 and "nothing to release" in again.stderr
    missing = run_cli(data, "leases", "show", "10.1.1.1")
    assert missing.returncode == 1 and "no lease of 10.1.1.1" in missing.stderr
    assert "list, show, release" in run_cli(data, "--help").stdout
