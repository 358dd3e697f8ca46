"""Real DHCP clients against netpost, inside a pair of network namespaces made per test.

dhclient (ISC), busybox udhcpc and dhcpcd each get a lease, renew it (dhclient and dhcpcd at
T1, 2 s here; udhcpc, which ignores T1, on SIGUSR1) and release it; nmap's dhcp-discover and
dhcping get answers; a restart (even a kill -9) keeps the leases; an exhausted pool gives no
address twice.  Runs as root; a missing client fails the test naming its package
(scripts/install-test-deps.sh installs them).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dhcp.helpers import DHCPServer, require, subnet_toml
from tests.support.netns import SERVER_ADDRESS, NamespacePair

pytestmark = [pytest.mark.interop, pytest.mark.slow]

# Renewals within seconds of the first lease: T1 (option 58) = 2 s for dhclient and dhcpcd
SHORT = subnet_toml(lease_time=10, extra="renewal_time = 2\nrebinding_time = 7")


@pytest.fixture
def net() -> Iterator[NamespacePair]:
    with NamespacePair("dh") as pair:
        yield pair


def serve(net: NamespacePair, tmp_path: Path, config: str = SHORT) -> DHCPServer:
    server = DHCPServer(net, tmp_path / "data", config, ("--trace",))
    server.start()
    return server


def trace(server: DHCPServer) -> str:
    path = server.data / "trace.log"
    return path.read_text() if path.exists() else ""


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def renewed(server: DHCPServer, address: str) -> bool:
    """A RENEWING exchange in the trace: REQUEST with ciaddr, ACK unicast to it (RFC 2131
    4.4.5 / 4.1)."""
    text = trace(server)
    return ("DHCPREQUEST" in text and f"ciaddr={address}" in text
            and re.search(rf"dhcp {re.escape(address)}:68 S: DHCPACK", text) is not None)


def lease_state(server: DHCPServer, address: str) -> str:
    shown = server.cli("leases", "show", address)
    assert shown.returncode == 0, shown.stderr
    match = re.search(r"^state:\s+(\S+)", shown.stdout, re.M)
    assert match is not None, shown.stdout
    return match.group(1)


def bound_address(net: NamespacePair) -> str:
    addresses = net.client_addresses()
    assert len(addresses) == 1, addresses
    address, prefix = addresses[0].split("/")
    assert prefix == "24"
    return address


def test_udhcpc_lease_renew_release(net: NamespacePair, tmp_path: Path) -> None:
    require("udhcpc")
    # udhcpc takes a lease of 30 s at least and renews at half of it whatever the server says
    # (T1 included): SIGUSR1 has it renew at once, the same RENEWING exchange
    server = serve(net, tmp_path, subnet_toml(lease_time=30))
    try:
        # foreground, release on exit (-R), our hostname in option 12
        client = subprocess.Popen(
            net.in_client(["udhcpc", "-i", net.client_if, "-f", "-R", "-t", "5", "-T", "2",
                           "-x", "hostname:udhcpc-test", "-s", "/etc/udhcpc/default.script"]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: net.client_addresses(), 20, "udhcpc's lease")
            address = bound_address(net)
            assert address.startswith("10.99.0.1")
            assert lease_state(server, address) == "bound"
            assert "hostname: udhcpc-test" in server.cli("leases", "show", address).stdout
            client.send_signal(signal.SIGUSR1)  # renew now
            wait_for(lambda: renewed(server, address), 25, "udhcpc's renewal")
            client.send_signal(signal.SIGTERM)  # -R: DHCPRELEASE, then exit
            output = client.communicate(timeout=20)[0]
        finally:
            if client.poll() is None:
                client.kill()
        assert f"lease of {address} obtained from {SERVER_ADDRESS}" in output
        assert "sending renew" in output
        assert "sending release" in output
        wait_for(lambda: lease_state(server, address) == "released", 10, "the release")
    finally:
        server.stop()


def test_dhclient_lease_renew_release(net: NamespacePair, tmp_path: Path) -> None:
    require("dhclient")
    server = serve(net, tmp_path)
    leases, pid = tmp_path / "dhclient.leases", tmp_path / "dhclient.pid"
    files = ["-lf", str(leases), "-pf", str(pid)]
    try:
        got = net.client("dhclient", "-4", "-v", "-1", *files, net.client_if, timeout=60)
        assert got.returncode == 0, got.stderr
        assert re.search(r"DHCPACK of 10\.99\.0\.\d+ from 10\.99\.0\.1", got.stderr), got.stderr
        address = bound_address(net)
        assert lease_state(server, address) == "bound"
        wait_for(lambda: renewed(server, address), 25, "dhclient's renewal")
        released = net.client("dhclient", "-v", "-r", *files, net.client_if, timeout=60)
        assert released.returncode == 0, released.stderr
        assert "DHCPRELEASE" in released.stderr
        wait_for(lambda: lease_state(server, address) == "released", 10, "the release")
    finally:
        net.client("dhclient", "-x", *files, net.client_if, timeout=30)
        server.stop()


def test_dhcpcd_lease_renew_release(net: NamespacePair, tmp_path: Path) -> None:
    require("dhcpcd")
    server = serve(net, tmp_path)
    # dhcpcd 9 stays in the foreground with -B; -d logs each step; -A skips its ARP probe of
    # the offered address (RFC 5227: some 5 s of waiting, a client-side check only).  Its
    # privilege-separated helpers are killed with the namespace (third-party-checks.md 5.2's
    # pitfall).
    client = subprocess.Popen(
        ["setsid", "timeout", "-s", "KILL", "90",
         *net.in_client(["dhcpcd", "-d", "-B", "-4", "-t", "15", "-L", "-A", "-C", "resolv.conf",
                         "-C", "mtu", "-f", "/dev/null", net.client_if])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: net.client_addresses(), 30, "dhcpcd's lease")
        address = bound_address(net)
        assert lease_state(server, address) == "bound"
        wait_for(lambda: renewed(server, address), 30, "dhcpcd's renewal")
        released = net.client("dhcpcd", "-4", "-k", net.client_if, timeout=30)
        assert released.returncode == 0, released.stderr
        wait_for(lambda: lease_state(server, address) == "released", 15, "the release")
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
        output = client.communicate(timeout=20)[0]
        server.stop()
    assert f"leased {address}" in output, output[-3000:]
    assert "renewing lease" in output, output[-3000:]


def test_nmap_and_dhcping(net: NamespacePair, tmp_path: Path) -> None:
    require("nmap", "dhcping")
    server = serve(net, tmp_path, subnet_toml())
    try:
        net.client("ip", "addr", "add", "10.99.0.2/24", "dev", net.client_if)
        nmap = net.client("nmap", "-n", "-sU", "-p", "67", "--script", "dhcp-discover",
                          SERVER_ADDRESS, timeout=120)
        assert nmap.returncode == 0, nmap.stderr
        out = nmap.stdout
        assert "DHCP Message Type: DHCPACK" in out, out
        assert f"Server Identifier: {SERVER_ADDRESS}" in out, out
        assert "Subnet Mask: 255.255.255.0" in out, out
        assert "Domain Name: lan.test" in out, out
        ping = net.client("dhcping", "-i", "-s", SERVER_ADDRESS, "-c", "10.99.0.2",
                          "-h", "02:00:00:00:00:02", "-t", "3", timeout=30)
        assert "Got answer from: 10.99.0.1" in ping.stdout, ping.stdout + ping.stderr
    finally:
        server.stop()


def test_restart_keeps_leases_even_after_kill_9(net: NamespacePair, tmp_path: Path) -> None:
    require("dhclient", "udhcpc")
    server = serve(net, tmp_path, subnet_toml())
    leases, pid = tmp_path / "dhclient.leases", tmp_path / "dhclient.pid"
    files = ["-lf", str(leases), "-pf", str(pid)]
    try:
        got = net.client("dhclient", "-4", "-v", "-1", *files, net.client_if, timeout=60)
        assert got.returncode == 0, got.stderr
        address = bound_address(net)
        net.client("dhclient", "-x", *files, net.client_if, timeout=30)  # stop, no release
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)  # the ACK was sent: the lease is on disk
        server.proc.wait(10)
        server.start()
        assert lease_state(server, address) == "bound"
        # the same client, INIT-REBOOT from its lease file (RFC 2131 3.2): ACKed again
        again = net.client("dhclient", "-4", "-v", "-1", *files, net.client_if, timeout=60)
        assert again.returncode == 0, again.stderr
        assert f"DHCPACK of {address}" in again.stderr, again.stderr
        assert f"requested={address}" in trace(server)
        net.client("dhclient", "-x", *files, net.client_if, timeout=30)
        # another client gets another address
        net.client("ip", "addr", "flush", "dev", net.client_if)
        net.client("ip", "link", "set", "dev", net.client_if, "address", "02:00:00:00:00:42")
        other = net.client("udhcpc", "-i", net.client_if, "-f", "-q", "-n", "-t", "5", "-T",
                           "2", "-s", "/etc/udhcpc/default.script", timeout=60)
        assert other.returncode == 0, other.stderr
        assert bound_address(net) != address
    finally:
        server.stop()


def test_exhausted_pool_never_gives_an_address_twice(net: NamespacePair,
                                                     tmp_path: Path) -> None:
    require("udhcpc")
    server = serve(net, tmp_path, subnet_toml(pool="10.99.0.100-10.99.0.102"))
    given: dict[str, str] = {}
    try:
        for n in range(1, 6):
            mac = f"02:00:00:00:01:{n:02x}"
            net.client("ip", "addr", "flush", "dev", net.client_if)
            net.client("ip", "link", "set", "dev", net.client_if, "address", mac)
            got = net.client("udhcpc", "-i", net.client_if, "-f", "-q", "-n", "-t", "3", "-T",
                             "1", "-s", "/etc/udhcpc/default.script", timeout=60)
            if got.returncode == 0:
                given[mac] = bound_address(net)
        assert len(given) == 3, given
        assert len(set(given.values())) == 3, given
        listed = server.cli("leases", "list").stdout
        assert sorted(re.findall(r"^(10\.99\.0\.\d+)\s+bound", listed, re.M)) == \
            sorted(given.values())
    finally:
        server.stop()
    assert "pool of 10.99.0.0/24 exhausted" in server.output()


def test_ping_before_offer_skips_an_address_in_use(net: NamespacePair, tmp_path: Path) -> None:
    require("udhcpc")
    # a host on the link uses the pool's first address without a lease
    net.client("ip", "addr", "add", "10.99.0.100/24", "dev", net.client_if)
    config = subnet_toml() + "\n[dhcp]\nping_before_offer = 0.5\n"
    server = serve(net, tmp_path, config)
    try:
        got = net.client("udhcpc", "-i", net.client_if, "-f", "-q", "-n", "-t", "5", "-T", "2",
                         "-s", "/bin/true", timeout=60)
        assert got.returncode == 0, got.stderr
        assert "lease of 10.99.0.101 obtained" in got.stderr + got.stdout
    finally:
        server.stop()
    assert "10.99.0.100 answers a ping but has no lease" in server.output()


def test_malformed_datagrams_are_dropped_and_counted(net: NamespacePair, tmp_path: Path) -> None:
    require("udhcpc")
    server = serve(net, tmp_path, subnet_toml())
    try:
        net.client("ip", "addr", "add", "10.99.0.2/24", "dev", net.client_if)
        junk = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "[s.sendto(p, ('10.99.0.1', 67)) for p in (b'', b'x' * 300, "
                "b'\\x01' * 236 + b'\\x63\\x82\\x53\\x63' + b'\\x35\\x05\\x01', "
                "bytes(236) + b'\\x63\\x82\\x53\\x63\\x35')]")
        sent = net.client(sys.executable, "-c", junk)
        assert sent.returncode == 0, sent.stderr
        net.client("ip", "addr", "flush", "dev", net.client_if)
        got = net.client("udhcpc", "-i", net.client_if, "-f", "-q", "-n", "-t", "5", "-T", "2",
                         "-s", "/bin/true", timeout=60)
        assert got.returncode == 0, got.stderr  # still serving
    finally:
        server.stop()
    counters = re.findall(r"dhcp counters: .*", server.output())
    assert counters and "malformed 4," in counters[-1], server.output()[-2000:]
    assert "ACK=1" in counters[-1]
