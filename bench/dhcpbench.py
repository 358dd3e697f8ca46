"""What bench/dhcp_perf.py (DHCPv4) and bench/dhcp6_perf.py (DHCPv6) share: a daemon run in the
server namespace of a `NamespacePair` (netpost with one DHCP listener, or Kea with its own
config), perfdhcp's report read into figures, the UDP buffer errors of both namespaces, and
`pin` (server on CPU 1, perfdhcp on CPU 0)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchlib import listener_names, netpost_cmd, stop_process, udp_buffer_errors

from tests.support.netns import NamespacePair

START_TIMEOUT = 60.0  # seconds a daemon has to come up


class Daemon:
    """A server process in the server namespace, started fresh for each climb."""

    name = ""

    def __init__(self, net: NamespacePair, root: Path) -> None:
        self.net = net
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def _launch(self, argv: Sequence[str], log: Path,
                env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(self.net.in_server(argv), stdout=log.open("w"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env)

    def _wait(self, ready: Callable[[], bool], log: Path, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {log.read_text()[-1500:]}")
            if ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not {what} in {START_TIMEOUT:.0f} s; see {log}")


class NetpostDaemon(Daemon):
    """`netpost serve` with `listener` on the server's interface and every other listener
    off, a fresh data directory with `toml` as its config."""

    name = "netpost"

    def __init__(self, net: NamespacePair, root: Path, listener: str, toml: str) -> None:
        super().__init__(net, root)
        self.listener = listener
        self.toml = toml

    def start(self) -> None:
        data = self.root / "netpost-data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        (data / "netpost.toml").write_text(self.toml)
        args: list[str] = []
        for name in listener_names():
            args += ["--listen", f"{name}={self.net.server_if}" if name == self.listener
                     else f"{name}=off"]
        cmd, env = netpost_cmd()
        log = self.root / "netpost.log"
        self._launch([*cmd, "--data", str(data), "serve", *args], log, env)
        self._wait(lambda: "\nready" in log.read_text(), log, "start")


class KeaDaemon(Daemon):
    """Debian's kea-dhcp4 or kea-dhcp6 (`binary`) with the config `make_config(interface,
    lease file, log file)` gives, in its own directory (never the system service); ready when
    something listens on `port`."""

    name = "kea"

    def __init__(self, net: NamespacePair, root: Path, binary: str, port: int,
                 make_config: Callable[[str, Path, Path], dict[str, object]]) -> None:
        super().__init__(net, root)
        self.binary = binary
        self.port = port
        self.make_config = make_config

    def start(self) -> None:
        kea = self.root / "kea"
        shutil.rmtree(kea, ignore_errors=True)
        kea.mkdir(parents=True)
        conf = kea / f"{self.binary}.conf"
        config = self.make_config(self.net.server_if, kea / "leases.csv", kea / "kea.log")
        conf.write_text(json.dumps(config, indent=1))
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "KEA_PIDFILE_DIR": str(kea),
               "KEA_LOCKFILE_DIR": str(kea)}
        stdout = kea / "stdout.log"
        self._launch([self.binary, "-c", str(conf)], stdout, env)
        self._wait(lambda: f":{self.port} " in self.net.server("ss", "-uln").stdout, stdout,
                   f"listen on {self.port}")


def parse_perfdhcp(out: str, exchanges: Sequence[str]) -> dict[str, float]:
    """perfdhcp's rate ("Rate: N 4-way exchanges/second") and, per exchange ("DISCOVER-OFFER",
    "REQUEST-ACK", ...), its drops ratio and the packets it sent."""
    figures: dict[str, float] = {}
    rate = re.search(r"Rate: ([\d.]+) 4-way exchanges/second", out)
    figures["rate"] = float(rate.group(1)) if rate else 0.0
    for exchange in exchanges:
        block = out.partition(f"Statistics for: {exchange}")[2]
        drops = re.search(r"drops ratio: ([\d.]+) %", block)
        sent = re.search(r"sent packets: (\d+)", block)
        figures[exchange] = float(drops.group(1)) if drops else 100.0
        figures[exchange + " sent"] = float(sent.group(1)) if sent else 0.0
    return figures


def udp_errors(net: NamespacePair, snmp: str = "/proc/net/snmp") -> dict[str, int]:
    """UDP buffer errors so far in each namespace: where datagrams were lost -- the
    receiver's socket buffer full (RcvbufErrors) or the sender's (SndbufErrors).  `snmp`:
    /proc/net/snmp for UDP over IPv4, /proc/net/snmp6 for IPv6."""
    return {**udp_buffer_errors(net.server("cat", snmp).stdout, "server"),
            **udp_buffer_errors(net.client("cat", snmp).stdout, "client")}


def pin(net: NamespacePair) -> None:
    """Whatever runs in the server namespace from now on runs on CPU 1, in the client's on
    CPU 0 (taskset): as if server and perfdhcp were two machines."""
    if len(os.sched_getaffinity(0)) < 2 or shutil.which("taskset") is None:
        raise SystemExit("--pin needs two CPUs and taskset (util-linux)")
    in_server, in_client = net.in_server, net.in_client
    net.in_server = lambda argv: in_server(["taskset", "-c", "1", *argv])  # type: ignore[method-assign]
    net.in_client = lambda argv: in_client(["taskset", "-c", "0", *argv])  # type: ignore[method-assign]

