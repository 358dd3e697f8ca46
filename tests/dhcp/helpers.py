"""A real `netpost serve` with only its DHCP listener, inside a test's server namespace."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from netpost.registry import default_registry
from tests.support.netns import NETWORK, NamespacePair

POOL = "10.99.0.100-10.99.0.199"


def subnet_toml(pool: str = POOL, extra: str = "", lease_time: int = 600) -> str:
    return f"""
[[dhcp.subnets]]
network = "{NETWORK}"
pools = ["{pool}"]
router = "10.99.0.1"
dns_servers = ["10.99.0.1"]
domain_name = "lan.test"
search = ["lan.test", "corp.test"]
routes = ["10.20.0.0/16 via 10.99.0.1"]
mtu = 1500
lease_time = {lease_time}
{extra}
"""


def require(*tools: str) -> None:
    """A missing third-party client fails the test with the package to install."""
    packages = {"dhclient": "isc-dhcp-client", "udhcpc": "udhcpc", "dhcpcd": "dhcpcd-base",
                "dhcping": "dhcping", "nmap": "nmap", "perfdhcp": "kea-admin",
                "kea-dhcp4": "kea-dhcp4-server"}
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise AssertionError(
            f"missing {', '.join(missing)}: apt-get install "
            f"{' '.join(packages.get(t, t) for t in missing)} (scripts/install-test-deps.sh)")


class DHCPServer:
    """netpost serving DHCP on the server end of `net`, every other listener off."""

    def __init__(self, net: NamespacePair, data: Path, config: str,
                 extra_args: tuple[str, ...] = (), listeners: tuple[str, ...] = ("dhcp",)
                 ) -> None:
        self.net = net
        self.listeners = listeners  # turned on for the server's interface; the rest off
        self.data = data
        self.config = config
        self.extra_args = extra_args
        self.proc: subprocess.Popen[str] | None = None
        self.log = data.parent / f"{data.name}.log"

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        (self.data / "netpost.toml").write_text(self.config)
        args = []
        for name in default_registry().listener_names():
            args += ["--listen", f"{name}={self.net.server_if}" if name in self.listeners
                     else f"{name}=off"]
        out = self.log.open("a")
        self.proc = subprocess.Popen(
            self.net.in_server([sys.executable, "-m", "netpost", "--data", str(self.data),
                                "serve", *args, *self.extra_args]),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"netpost exited: {self.log.read_text()[-2000:]}")
            if "\nready" in self.log.read_text():
                return
            time.sleep(0.05)
        raise AssertionError(f"netpost not ready in 60 s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "netpost", "--data", str(self.data),
                               *args], capture_output=True, text=True, timeout=60)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""
