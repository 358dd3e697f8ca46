"""Shared fixtures: a real `netpost serve` process on ephemeral loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LISTENER_NAMES = ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps", "ftp",
                  "ftps", "sftp", "http", "https", "ntp", "nts-ke")
DOMAIN = "example.test"
PASSWORD = "correct horse battery"


def netpost_cmd(data: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "netpost", "--data", str(data), *args]


def run_cli(data: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(netpost_cmd(data, *args), input=stdin, capture_output=True, text=True,
                          timeout=60)


@dataclass
class Server:
    data: Path
    proc: subprocess.Popen[str]
    ports: dict[str, int] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"

    def port(self, name: str) -> int:
        return self.ports[name]

    def add_user(self, address: str, password: str = PASSWORD) -> None:
        r = run_cli(self.data, "user", "add", address, "--password-stdin", stdin=password + "\n")
        assert r.returncode == 0, r.stderr

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(self.data, *args, stdin=stdin)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


CONFIG = """
[auth]
failure_delay = 0.2
failure_max_delay = 1.6
[trace]
listeners = ["all"]
"""


def start_server(data: Path, config: str = CONFIG, extra: tuple[str, ...] = (),
                 ports: dict[str, int] | None = None, host: str = "127.0.0.1") -> Server:
    """Start `netpost serve` on `host`; ports 0 unless given; waits for "ready"."""
    data.mkdir(parents=True, exist_ok=True)
    (data / "netpost.toml").write_text(config)
    args = ["serve"]
    for name in LISTENER_NAMES:
        args += ["--listen", f"{name}={host}:{(ports or {}).get(name, 0)}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(netpost_cmd(data, *args, *extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    server = Server(data, proc, host=host)
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("netpost serve exited early:\n" + "".join(server.output))
        server.output.append(line)
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "listening":
            server.ports[parts[1]] = int(parts[2].rpartition(":")[2].removesuffix("/udp"))
        if line.strip() == "ready":
            break
    else:
        proc.kill()
        raise RuntimeError("netpost serve did not become ready")
    # Keep draining its output so that it never blocks on a full pipe.
    import threading

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.output.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("netpost")
    srv = start_server(data)
    r = srv.cli("domain", "add", DOMAIN)
    assert r.returncode == 0, r.stderr
    for user in ("alice", "bob", "carol"):
        srv.add_user(f"{user}@{DOMAIN}")
    yield srv
    srv.stop()


def client_tls() -> ssl.SSLContext:
    """Clients trust the server's self-signed certificate in tests (no verification)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def require_tool(name: str) -> str:
    """Interop tools must be installed: a missing one fails the test with its name."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"interop tool '{name}' is not installed: run 'make test' as root or "
                    f"'sudo apt-get install' it (see scripts/install-test-deps.sh)")
    return path
