"""`netpost leases` with DHCPv6 bindings beside v4 leases."""

from __future__ import annotations

import re
import time
from pathlib import Path

from netpost.store.embedded import open_admin
from netpost.store.interfaces import Lease
from tests.conftest import run_cli

DUID = bytes.fromhex("00030001020000000042")  # DUID-LL of 02:00:00:00:00:42


def test_v6_leases_listed_shown_and_released(tmp_path: Path) -> None:
    data = tmp_path / "d"
    now = time.time()
    admin = open_admin(data)
    admin.leases.commit_leases([
        Lease("2001:db8:99::100", DUID, "bound", now, now + 600, iaid=7,
              hardware="02:00:00:00:00:42", hostname="laptop6", subnet="2001:db8:99::/64"),
        Lease("10.99.0.10", b"hw:\x01\x02\x00\x00\x00\x00\x01", "bound", now, now + 600),
    ])
    admin.close()
    listed = run_cli(data, "leases", "list").stdout
    # both families, the columns aligned past the longest address
    assert re.search(r"^10\.99\.0\.10\s+bound", listed, re.M), listed
    assert re.search(r"^2001:db8:99::100 bound\s+02:00:00:00:00:42 .* laptop6$", listed, re.M)
    shown = run_cli(data, "leases", "show", "2001:db8:0099:0::100").stdout  # any spelling
    assert "client:   duid-ll 02:00:00:00:00:42 (00030001020000000042) (IAID 7)" in shown
    assert "subnet:   2001:db8:99::/64" in shown
    released = run_cli(data, "leases", "release", "2001:db8:99::100")
    assert released.returncode == 0, released.stderr
    assert "state:    released" in run_cli(data, "leases", "show", "2001:db8:99::100").stdout
