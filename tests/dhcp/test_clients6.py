"""Real DHCPv6 clients against netpost, inside a pair of network namespaces made per test.

The server end gets 2001:db8:99::1/64 (its subnet) and both ends their link-local addresses;
duplicate address detection is turned off on both veths before they come up and the link-local
addresses are waited for, so that none is still "tentative" when the first SOLICIT goes.
dhclient -6 gets an address, renews it at T1 (2 s here, from the server's IA_NA) and releases
it, and so does dhcpcd -6 (also with Rapid Commit); a restart (even kill -9) keeps the binding;
an exhausted pool gives no address twice; an administrator's release reaches the running
server; perfdhcp -6 runs full SOLICIT/ADVERTISE/REQUEST/REPLY exchanges; a REQUEST sent unicast
gets UseMulticast (a plain socket, as no packaged client unicasts without being offered
UNICAST).  The clients come from scripts/install-test-deps.sh (isc-dhcp-client, dhcpcd-base,
kea-admin), as for the v4 tests.
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

from tests.dhcp.helpers import DHCPServer, require
from tests.dhcp.test_clients import lease_state, trace, wait_for
from tests.support.netns import NamespacePair

pytestmark = [pytest.mark.interop, pytest.mark.slow]

SERVER6 = "2001:db8:99::1"
PREFIX = "2001:db8:99::/64"


def subnet6_toml(pool: str = "2001:db8:99::100-2001:db8:99::1ff", valid: int = 40,
                 preferred: int = 30, renewal: int | None = 2, extra: str = "") -> str:
    # T1 = 2 s by default: a renewal within seconds of the first binding (None: the server's
    # default, 0.5 x preferred); T2 = 24 s (0.8 x preferred)
    t1 = "" if renewal is None else f"renewal_time = {renewal}"
    return f"""
[[dhcp.subnets6]]
prefix = "{PREFIX}"
pools = ["{pool}"]
valid_lifetime = {valid}
preferred_lifetime = {preferred}
{t1}
dns_servers = ["{SERVER6}"]
domain_list = ["lan.test"]
ntp_servers = ["{SERVER6}"]
{extra}
"""


def link_up6(net: NamespacePair) -> None:
    """The server's global address, and both link-local addresses (no DAD: see net())."""
    got = net.server("ip", "-6", "addr", "add", f"{SERVER6}/64", "dev", net.server_if,
                     "nodad")
    assert got.returncode == 0, got.stderr

    def ready() -> bool:
        client = net.client("ip", "-6", "addr", "show", "dev", net.client_if).stdout
        server = net.server("ip", "-6", "addr", "show", "dev", net.server_if).stdout
        return "fe80" in client and "fe80" in server and "tentative" not in client + server

    wait_for(ready, 10, "link-local addresses")


@pytest.fixture
def net() -> Iterator[NamespacePair]:
    with NamespacePair("d6", ipv6_dad=False) as pair:
        link_up6(pair)
        yield pair


def serve(net: NamespacePair, tmp_path: Path, config: str | None = None) -> DHCPServer:
    server = DHCPServer(net, tmp_path / "data", config or subnet6_toml(), ("--trace",),
                        listeners=("dhcp6",))
    server.start()
    return server


def client_addresses6(net: NamespacePair) -> list[str]:
    out = net.client("ip", "-6", "-o", "addr", "show", "dev", net.client_if,
                     "scope", "global").stdout
    return [line.split()[3] for line in out.splitlines()]


def bound_address6(net: NamespacePair) -> str:
    addresses = client_addresses6(net)
    assert len(addresses) == 1, addresses
    address, prefix = addresses[0].split("/")
    assert address.startswith("2001:db8:99::1"), address
    return address


def with_duid(tmp_path: Path, name: str, n: int) -> str:
    """A lease file for dhclient holding the DUID-LL of 02:00:00:00:06:nn (dhclient takes its
    DUID from `default-duid` there): another client on the same interface.  Changing the
    interface's MAC address instead would leave the server's neighbour cache pointing at the
    old one, and its unicast replies would not arrive."""
    duid = bytes.fromhex(f"0003 0001 0200000006{n:02x}")  # DUID-LL, Ethernet
    text = "".join(f"\\{b:03o}" for b in duid)
    (tmp_path / f"{name}.leases").write_text(f'default-duid "{text}";\n')
    return name


def dhclient6(net: NamespacePair, tmp_path: Path, *args: str, name: str = "dhclient6"
              ) -> subprocess.CompletedProcess[str]:
    files = ["-lf", str(tmp_path / f"{name}.leases"), "-pf", str(tmp_path / f"{name}.pid")]
    return net.client("dhclient", "-6", "-v", *args, *files, net.client_if, timeout=60)


def test_dhclient6_address_renew_release(net: NamespacePair, tmp_path: Path) -> None:
    require("dhclient")
    server = serve(net, tmp_path)
    try:
        got = dhclient6(net, tmp_path, "-1")  # goes to the background once bound
        assert got.returncode == 0, got.stderr
        assert "RCV: Advertise message" in got.stderr and "RCV: Reply message" in got.stderr
        address = bound_address6(net)
        assert lease_state(server, address) == "bound"
        shown = server.cli("leases", "show", address).stdout
        assert "IAID" in shown and f"subnet:   {PREFIX}" in shown
        listed = server.cli("leases", "list").stdout
        assert re.search(rf"^{re.escape(address)}\s+bound", listed, re.M), listed
        # RENEW at T1 (2 s), to the multicast group, answered with fresh lifetimes
        wait_for(lambda: re.search(r"S: REPLY .*addr=" + re.escape(address) + "/40",
                                   trace(server).split("C: RENEW", 1)[-1])
                 is not None and "C: RENEW" in trace(server), 30, "dhclient's renewal")
        released = dhclient6(net, tmp_path, "-r")
        assert released.returncode == 0, released.stderr
        assert "Release" in released.stderr
        wait_for(lambda: lease_state(server, address) == "released", 10, "the release")
        assert "C: RELEASE" in trace(server)
        assert "status=SUCCESS" in trace(server)
    finally:
        dhclient6(net, tmp_path, "-x")
        server.stop()


def test_restart_keeps_v6_bindings_even_after_kill_9(net: NamespacePair,
                                                      tmp_path: Path) -> None:
    require("dhclient")
    server = serve(net, tmp_path, subnet6_toml(valid=600, preferred=500, renewal=None))
    try:
        got = dhclient6(net, tmp_path, "-1")
        assert got.returncode == 0, got.stderr
        address = bound_address6(net)
        duid = (server.data / "dhcp6" / "server-duid").read_text()
        dhclient6(net, tmp_path, "-x")  # stop without a release
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)  # the REPLY was sent: the lease is on disk
        server.proc.wait(10)
        server.start()
        assert lease_state(server, address) == "bound"
        assert (server.data / "dhcp6" / "server-duid").read_text() == duid  # the same server
        # the same client again, from its lease file: it CONFIRMs its address (RFC 8415
        # 18.2.3), which is on the link, and keeps it
        net.client("ip", "-6", "addr", "flush", "dev", net.client_if, "scope", "global")
        again = dhclient6(net, tmp_path, "-1")
        assert again.returncode == 0, again.stderr
        assert bound_address6(net) == address
        assert re.search(r"C: CONFIRM .*addr=" + re.escape(address), trace(server))
        assert re.search(r"S: REPLY .*status=SUCCESS", trace(server).split("C: CONFIRM")[1])
        dhclient6(net, tmp_path, "-x")
        # another client (another DUID) gets another address
        net.client("ip", "-6", "addr", "flush", "dev", net.client_if, "scope", "global")
        other = dhclient6(net, tmp_path, "-1", name=with_duid(tmp_path, "other", 9))
        assert other.returncode == 0, other.stderr
        assert bound_address6(net) != address
        dhclient6(net, tmp_path, "-x", name="other")
    finally:
        server.stop()


def test_exhausted_v6_pool_never_gives_an_address_twice(net: NamespacePair,
                                                        tmp_path: Path) -> None:
    require("dhclient")
    server = serve(net, tmp_path, subnet6_toml(pool="2001:db8:99::100-2001:db8:99::101",
                                               valid=600, preferred=500, renewal=None))
    given: dict[int, str] = {}
    try:
        for n in range(1, 4):
            net.client("ip", "-6", "addr", "flush", "dev", net.client_if, "scope", "global")
            name = with_duid(tmp_path, f"c{n}", n)
            refusals = trace(server).count("status=NO_ADDRS_AVAIL")
            client = subprocess.Popen(
                net.in_client(["timeout", "12", "dhclient", "-6", "-v", "-1", "-lf",
                               str(tmp_path / f"{name}.leases"), "-pf",
                               str(tmp_path / f"{name}.pid"), net.client_if]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                # dhclient -1 exits 0 once bound; a client the server refuses (NoAddrsAvail,
                # RFC 8415 18.3.1) would keep soliciting until `timeout` ends it
                wait_for(lambda: client.poll() is not None or  # noqa: B023
                         trace(server).count("status=NO_ADDRS_AVAIL") > refusals,  # noqa: B023
                         20, "an address or a refusal")
            finally:
                if client.poll() is None:
                    client.terminate()  # timeout passes it on to dhclient
                client.wait(20)
            if client.returncode == 0 and client_addresses6(net):
                given[n] = bound_address6(net)
            dhclient6(net, tmp_path, "-x", name=name)
        assert len(given) == 2 and len(set(given.values())) == 2, given
        assert "status=NO_ADDRS_AVAIL" in trace(server)
    finally:
        server.stop()
    assert "pool of 2001:db8:99::/64 exhausted" in server.output()


@pytest.mark.parametrize("relayed", [False, True], ids=["direct", "relayed"])
def test_perfdhcp6(net: NamespacePair, tmp_path: Path, relayed: bool) -> None:
    """Full exchanges from 200 clients; relayed: perfdhcp plays a relay agent (-A 1: each
    message in a RELAY-FORW whose link-address is its own global address)."""
    require("perfdhcp")
    server = serve(net, tmp_path, subnet6_toml(pool="2001:db8:99::1000-2001:db8:99::ffff",
                                               valid=600, preferred=500, renewal=None))
    relay: list[str] = []
    if relayed:
        net.client("ip", "-6", "addr", "add", "2001:db8:99::2/64", "dev", net.client_if,
                   "nodad")
        relay = ["-A", "1"]
    try:
        started = time.monotonic()
        run = net.client("perfdhcp", "-6", *relay, "-l", net.client_if, "-r", "100", "-R",
                         "200", "-n", "300", "-W", "500000", timeout=120)
        assert time.monotonic() - started < 60
        out = run.stdout
        assert "SOLICIT-ADVERTISE" in out and "REQUEST-REPLY" in out, out + run.stderr
        drops = [float(x) for x in re.findall(r"drops ratio:\s+([\d.]+)", out)]
        assert drops and max(drops) < 1.0, out
        listed = server.cli("leases", "list").stdout
        assert len(re.findall(r"^2001:db8:99::\S+\s+bound", listed, re.M)) == 200, listed
        if relayed:
            assert "S: RELAY-REPL hops=0 link=2001:db8:99::2" in trace(server)
    finally:
        server.stop()


def dhcpcd6(net: NamespacePair, tmp_path: Path, *config: str) -> subprocess.Popen[str]:
    """dhcpcd in the foreground, DHCPv6 only, without waiting for a router advertisement
    (noipv6rs; `ia_na 1` starts DHCPv6 at once).  Killed with its privilege-separated helpers
    by the test (third-party-checks.md 5.2's pitfall)."""
    conf = tmp_path / "dhcpcd.conf"
    conf.write_text("\n".join(["noipv6rs", "ipv6only", "nohook resolv.conf", *config,
                               f"interface {net.client_if}", "  ia_na 1", ""]))
    return subprocess.Popen(
        ["setsid", "timeout", "-s", "KILL", "90",
         *net.in_client(["dhcpcd", "-d", "-B", "-6", "-t", "15", "-f", str(conf),
                         net.client_if])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(client: subprocess.Popen[str]) -> str:
    if client.poll() is None:
        os.killpg(client.pid, signal.SIGKILL)
    return client.communicate(timeout=20)[0]


def test_dhcpcd6_address_renew_release(net: NamespacePair, tmp_path: Path) -> None:
    require("dhcpcd")
    server = serve(net, tmp_path)
    client = dhcpcd6(net, tmp_path)
    try:
        wait_for(lambda: client_addresses6(net), 30, "dhcpcd's address")
        address = bound_address6(net)
        assert lease_state(server, address) == "bound"
        wait_for(lambda: "C: RENEW" in trace(server) and
                 trace(server).split("C: RENEW", 1)[1].count("S: REPLY") > 0, 30,
                 "dhcpcd's renewal")
        released = net.client("dhcpcd", "-6", "-k", net.client_if, timeout=30)
        assert released.returncode == 0, released.stderr
        wait_for(lambda: lease_state(server, address) == "released", 15, "the release")
    finally:
        output = stop(client)
        server.stop()
    assert f"adding address {address}/128" in output, output[-3000:]
    assert "REPLY6 received" in output and "broadcasting RENEW6" in output, output[-3000:]
    assert "broadcasting RELEASE6" in output, output[-3000:]


def test_dhcpcd6_rapid_commit(net: NamespacePair, tmp_path: Path) -> None:
    require("dhcpcd")
    server = serve(net, tmp_path)
    client = dhcpcd6(net, tmp_path, "option rapid_commit")
    try:
        wait_for(lambda: client_addresses6(net), 30, "dhcpcd's address")
        address = bound_address6(net)
        assert lease_state(server, address) == "bound"
    finally:
        output = stop(client)
        server.stop()
    text = trace(server)
    assert re.search(r"C: SOLICIT .*rapid-commit", text), text
    assert re.search(r"S: REPLY .*addr=" + re.escape(address) + r"/40 rapid-commit", text), text
    assert "ADVERTISE" not in text and "C: REQUEST" not in text, text
    assert "REPLY6 received" in output, output[-3000:]


def test_administrator_release_reaches_the_running_server(net: NamespacePair,
                                                          tmp_path: Path) -> None:
    require("dhclient")
    # T1 = 6 s: time for the release and the look at its state (two CLI runs, about a second
    # each on a loaded machine) before the client's first RENEW, which rebinds it
    server = serve(net, tmp_path, subnet6_toml(renewal=6))
    try:
        got = dhclient6(net, tmp_path, "-1")
        assert got.returncode == 0, got.stderr
        address = bound_address6(net)
        released = server.cli("leases", "release", address)
        assert released.returncode == 0, released.stderr
        assert lease_state(server, address) == "released"
        # the client's RENEW at T1 finds no binding (RFC 8415 18.3.4) ...
        wait_for(lambda: "status=NO_BINDING" in trace(server), 30, "NoBinding")
        # ... and it asks again with a REQUEST (18.2.10.1), which binds it anew
        wait_for(lambda: lease_state(server, address) == "bound", 15, "a new binding")
        assert "C: REQUEST" in trace(server).split("status=NO_BINDING", 1)[1]
    finally:
        dhclient6(net, tmp_path, "-x")
        server.stop()


UNICAST_CLIENT = r'''
import socket, struct, sys
from netpost.dhcp import packet6 as p6
iface, server_duid = sys.argv[1], bytes.fromhex(sys.argv[2])
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
sock.bind(("::", 546))
sock.settimeout(5)
client = p6.duid_ll(1, bytes.fromhex("020000000077"))
ia = (p6.Option.IA_NA, p6.IANA(1, 0, 0).encode())
for n, target in enumerate([("2001:db8:99::1", 547), ("ff02::1:2%" + iface, 547)]):
    request = p6.Message(p6.MessageType.REQUEST, 0x100 + n, (
        (p6.Option.CLIENTID, client), (p6.Option.SERVERID, server_duid), ia))
    sock.sendto(p6.encode(request), target)
    print(p6.summary(sock.recvfrom(2048)[0]))
'''


def test_unicast_request_answered_use_multicast(net: NamespacePair, tmp_path: Path) -> None:
    """RFC 8415 18.4: a REQUEST sent to the server's own address (not ff02::1:2) is answered
    UseMulticast; the same REQUEST to the group gets its address.  The socket's IPV6_PKTINFO
    is what tells the two apart."""
    server = serve(net, tmp_path)
    try:
        net.client("ip", "-6", "addr", "add", "2001:db8:99::2/64", "dev", net.client_if,
                   "nodad")
        duid = (server.data / "dhcp6" / "server-duid").read_text().strip()
        run = net.client(sys.executable, "-c", UNICAST_CLIENT, net.client_if, duid,
                         timeout=30)
        assert run.returncode == 0, run.stderr
        unicast, multicast = run.stdout.splitlines()
        assert unicast.startswith("REPLY xid=0x000100") and "status=USE_MULTICAST" in unicast
        assert multicast.startswith("REPLY xid=0x000101") and "addr=2001:db8:99::1" in multicast
    finally:
        server.stop()
