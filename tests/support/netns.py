"""A pair of network namespaces joined by a veth link, for DHCP tests and benchmarks.

    with NamespacePair() as net:          # unique names per run; torn down on exit
        net.server("ip", "addr")          # runs inside the server's namespace
        net.client("udhcpc", "-i", net.client_if, ...)

The server side has SERVER_ADDRESS/24 on `server_if`; the client side has no address until
a DHCP client gets one.  No packet leaves the two namespaces (third-party-checks.md 5.1).
Needs root (ip netns).  /etc/netns/<name>/resolv.conf is bind-mounted over /etc/resolv.conf
inside, so client hook scripts cannot rewrite the host's.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

SERVER_ADDRESS = "10.99.0.1"
NETWORK = "10.99.0.0/24"
_counter = itertools.count()


class NamespaceError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _sysctl(ns: str, setting: str) -> None:
    result = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", setting],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NamespaceError(f"sysctl -w {setting} in {ns}: {result.stderr.strip()}")


class NamespacePair:
    def __init__(self, tag: str = "np", prefix: int = 24, ipv6_dad: bool = True) -> None:
        if os.geteuid() != 0:
            raise NamespaceError("network namespaces need root (the DHCP tests run as root)")
        if shutil.which("ip") is None:
            raise NamespaceError("the 'ip' command is missing: apt-get install iproute2")
        unique = f"{tag}{os.getpid() % 100000}x{next(_counter)}"
        self.server_ns = f"{unique}-s"
        self.client_ns = f"{unique}-c"
        # interface names: at most 15 octets
        self.server_if = f"vs{os.getpid() % 100000}x{next(_counter)}"[:15]
        self.client_if = f"vc{self.server_if[2:]}"[:15]
        self.prefix = prefix  # of the server's address (the bench uses a /16 for big pools)
        # False: IPv6 duplicate address detection off on both veths before they come up, so
        # that their link-local addresses are never "tentative" (usable at once)
        self.ipv6_dad = ipv6_dad
        self._made: list[str] = []

    # -- set-up and tear-down --------------------------------------------------------------

    def __enter__(self) -> NamespacePair:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    def up(self) -> None:
        for ns in (self.server_ns, self.client_ns):
            _ip("netns", "add", ns)
            self._made.append(ns)
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            # netpost's resolver needs a name server line; 127.0.0.1 inside the namespace
            # keeps any lookup there.
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n" if ns == self.server_ns
                                             else "")
        _ip("link", "add", self.server_if, "type", "veth", "peer", "name", self.client_if)
        _ip("link", "set", self.server_if, "netns", self.server_ns)
        _ip("link", "set", self.client_if, "netns", self.client_ns)
        for ns in (self.server_ns, self.client_ns):
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.server_ns, "addr", "add", f"{SERVER_ADDRESS}/{self.prefix}", "dev",
            self.server_if)
        if not self.ipv6_dad:
            for ns, interface in ((self.server_ns, self.server_if),
                                  (self.client_ns, self.client_if)):
                _sysctl(ns, f"net.ipv6.conf.{interface}.accept_dad=0")
        _ip("-n", self.server_ns, "link", "set", self.server_if, "up")
        _ip("-n", self.client_ns, "link", "set", self.client_if, "up")

    def down(self) -> None:
        for ns in self._made:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                  timeout=30).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        self._made = []

    # -- running things inside ---------------------------------------------------------------

    def in_server(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.server_ns, *argv]

    def in_client(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.client_ns, *argv]

    def client(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.in_client(argv), capture_output=True, text=True,
                              timeout=timeout)

    def server(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.in_server(argv), capture_output=True, text=True,
                              timeout=timeout)

    def client_addresses(self) -> list[str]:
        """The IPv4 addresses (with prefix) the client's interface has now."""
        out = self.client("ip", "-4", "-o", "addr", "show", "dev", self.client_if).stdout
        return [line.split()[3] for line in out.splitlines() if " inet " in line]
