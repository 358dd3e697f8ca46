#!/usr/bin/env python3
"""DHCPv6 under perfdhcp -6: netpost vs Kea, full SOLICIT/ADVERTISE/REQUEST/REPLY exchanges
with durable leases, in one run.

usage: bench/dhcp6_perf.py [--runs 3] [--period 5] [--clients 20000]
           [--rates 1000,2000,...] [--servers netpost,kea] [--pin]
(as root; NETPOST_SRC=DIR measures that source tree, default REPO/src, copied at start)

Network: a pair of network namespaces made for the run (tests/support/netns.py), joined by a
veth link; the server end has 2001:db8:99::1/64, both ends their link-local addresses
(duplicate address detection off).  Nothing leaves the namespaces; both are removed at exit.

The client (the same for both): perfdhcp from Debian's kea-admin, `perfdhcp -6 -l IF -r RATE
-R CLIENTS -p PERIOD -W 500000`: SOLICITs to ff02::1:2 from CLIENTS distinct DUIDs, each
followed by a REQUEST for what was advertised (the pool holds far more than CLIENTS).  A point
is one perfdhcp invocation at one rate; its figure is perfdhcp's "Rate: N 4-way
exchanges/second", and it counts when both SOLICIT-ADVERTISE and REQUEST-REPLY lose < 1 %.
A run, per server (order rotating between runs): start the server fresh, then try the rates
upwards; the run's figure is the best rate that kept < 1 % drops.  Median over runs.
--pin: the server on CPU 1, perfdhcp on CPU 0 (taskset), as in bench/dhcp_perf.py.

The servers, each inside the server namespace:
  netpost  `netpost serve --listen dhcp6=IF`, every other listener off, [[dhcp.subnets6]] with
           the pool below and the per-client limit raised out of the way; leases in
           DATA/netpost.db, each batch committed (SQLite WAL, synchronous=FULL) before its
           REPLYs go.
  kea      Debian's kea-dhcp6-server, `kea-dhcp6 -c CONF` with its own config in
           $BENCH_ROOT/dhcp6-bench/kea (never the system service): the same pool and
           lifetimes, memfile lease database (persist, its own CSV file, lfc off), logging at
           WARN to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from benchlib import (  # noqa: E402
    BENCH_ROOT,
    append_jsonl,
    median,
    mmm,
    note,
    on_exit,
    ratio_line,
    results_dir,
    snapshot_src,
    table,
    tree_cpu_s,
    versions,
)
from dhcpbench import (  # noqa: E402
    Daemon,
    KeaDaemon,
    NetpostDaemon,
    parse_perfdhcp,
    pin,
    udp_errors,
)

from tests.support.netns import NamespacePair  # noqa: E402

SERVER6 = "2001:db8:99::1"
PREFIX = "2001:db8:99::/64"
POOL = ("2001:db8:99::1:0", "2001:db8:99::ffff:ffff")
VALID, PREFERRED = 4000, 3000
DEFAULT_RATES = "1000,2000,3000,4000,5000,6000,7000,8000,10000,12000,14000,16000"

NETPOST_TOML = f"""
[dhcp]
# perfdhcp's clients retransmit and are many: limits out of the way
client_rate = 1000000.0
client_burst = 1000000

[[dhcp.subnets6]]
prefix = "{PREFIX}"
pools = ["{POOL[0]}-{POOL[1]}"]
valid_lifetime = {VALID}
preferred_lifetime = {PREFERRED}
dns_servers = ["{SERVER6}"]
"""


def kea_config(interface: str, leases: Path, log: Path) -> dict[str, object]:
    return {"Dhcp6": {
        "interfaces-config": {"interfaces": [interface]},
        "lease-database": {"type": "memfile", "persist": True, "name": str(leases),
                           "lfc-interval": 0},
        "valid-lifetime": VALID, "preferred-lifetime": PREFERRED,
        "renew-timer": PREFERRED // 2, "rebind-timer": PREFERRED * 4 // 5,
        "server-id": {"type": "LLT", "persist": False},
        "subnet6": [{"id": 1, "subnet": PREFIX, "interface": interface,
                     "pools": [{"pool": f"{POOL[0]} - {POOL[1]}"}],
                     "option-data": [{"name": "dns-servers", "data": SERVER6}]}],
        "loggers": [{"name": "kea-dhcp6", "severity": "WARN",
                     "output_options": [{"output": str(log)}]}],
    }}


def link_up6(net: NamespacePair) -> None:
    for run, interface in ((net.server, net.server_if), (net.client, net.client_if)):
        run("sysctl", "-qw", f"net.ipv6.conf.{interface}.accept_dad=0")
    net.server("ip", "-6", "addr", "add", f"{SERVER6}/64", "dev", net.server_if, "nodad")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        shown = (net.client("ip", "-6", "addr", "show", "dev", net.client_if).stdout
                 + net.server("ip", "-6", "addr", "show", "dev", net.server_if).stdout)
        if shown.count("fe80") == 2 and "tentative" not in shown:
            return
        time.sleep(0.1)
    raise RuntimeError("link-local addresses not ready in 10 s")


EXCHANGES = ("SOLICIT-ADVERTISE", "REQUEST-REPLY")
SNMP6 = "/proc/net/snmp6"  # UDP over IPv6: its own counters


def climb(net: NamespacePair, server: Daemon, rates: list[int], args: argparse.Namespace,
          out: Path) -> tuple[float, list[dict[str, float]]]:
    server.start()
    points: list[dict[str, float]] = []
    best = 0.0
    try:
        for rate in rates:
            assert server.proc is not None
            load = os.getloadavg()[0]
            errors = udp_errors(net, SNMP6)
            cpu = tree_cpu_s(server.proc.pid)
            argv = ["perfdhcp", "-6", "-l", net.client_if, "-r", str(rate), "-R",
                    str(args.clients), "-p", str(args.period), "-W", "500000"]
            result = net.client(*argv, timeout=args.period + 60)
            with (out / f"perfdhcp-{server.name}.log").open("a") as f:
                f.write(f"$ {' '.join(argv)}\n{result.stdout}\n{result.stderr}\n")
            figures = parse_perfdhcp(result.stdout, EXCHANGES)
            figures["asked"] = rate
            figures["load1"] = load  # the machine is shared: what else ran
            lost = {k: v - errors.get(k, 0) for k, v in udp_errors(net, SNMP6).items()}
            figures.update(lost)
            exchanges = figures["REQUEST-REPLY sent"]
            figures["cpu_us_per_exchange"] = (
                (tree_cpu_s(server.proc.pid) - cpu) / exchanges * 1e6 if exchanges else 0.0)
            points.append(figures)
            ok = all(figures[e] < 1.0 for e in EXCHANGES)
            note(f"  {server.name:<8} {rate:>6}/s asked: {figures['rate']:>9,.0f} /s, "
                 f"drops {figures[EXCHANGES[0]]:.2f} % / {figures[EXCHANGES[1]]:.2f} %, "
                 f"{figures['cpu_us_per_exchange']:.0f} us CPU per exchange, load {load:.1f}"
                 + "".join(f", {k} {v}" for k, v in lost.items() if v)
                 + ("" if ok else "  <- over 1 %"))
            if not ok:
                break
            best = max(best, figures["rate"])
    finally:
        server.stop()
    return best, points


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--period", type=int, default=5, help="seconds per rate")
    p.add_argument("--clients", type=int, default=20000, help="perfdhcp -R: distinct DUIDs")
    p.add_argument("--rates", default=DEFAULT_RATES)
    p.add_argument("--servers", default="netpost,kea")
    p.add_argument("--pin", action="store_true",
                   help="server on CPU 1, perfdhcp on CPU 0 (taskset): as on two machines")
    args = p.parse_args()
    names = args.servers.split(",")
    for tool in ("perfdhcp", "ip", *(["kea-dhcp6"] if "kea" in names else [])):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install kea-admin kea-dhcp6-server "
                             "iproute2")
    rates = [int(r) for r in args.rates.split(",")]
    out = results_dir("dhcp6")
    root = BENCH_ROOT / "dhcp6-bench"
    root.mkdir(parents=True, exist_ok=True)
    net = NamespacePair("d6b")
    net.up()
    on_exit(net.down)
    link_up6(net)
    if args.pin:
        pin(net)
    servers: dict[str, Daemon] = {
        "netpost": NetpostDaemon(net, root, "dhcp6", NETPOST_TOML),
        "kea": KeaDaemon(net, root, "kea-dhcp6", 547, kea_config)}
    v = {**versions(), **snapshot_src()}
    if "kea" in names:
        v["kea"] = subprocess.run(["kea-dhcp6", "-v"], capture_output=True,
                                  text=True).stdout.strip()
    v["perfdhcp"] = "kea-admin " + subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "kea-admin"], capture_output=True,
        text=True).stdout.strip()
    v["cpu placement"] = "server CPU 1, perfdhcp CPU 0" if args.pin else "shared"
    note(f"versions: {v}")
    best: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for run in range(args.runs):
        order = names[run % len(names):] + names[:run % len(names)]
        for name in order:
            note(f"run {run + 1}/{args.runs}: {name}")
            figure, points = climb(net, servers[name], rates, args, out)
            best[name].append(figure)
            cpu[name] += [p["cpu_us_per_exchange"] for p in points
                          if all(p[e] < 1.0 for e in EXCHANGES)]
            append_jsonl(out / "runs.jsonl", {"run": run, "server": name, "best": figure,
                                              "points": points, "pinned": args.pin})
    rows = [["server", "exchanges/s at < 1 % drops: median [min–max]", "runs",
             "server CPU µs per exchange (points < 1 %)"]]
    for name in names:
        rows.append([name, mmm(best[name]), ", ".join(f"{b:,.0f}" for b in best[name]),
                     mmm(cpu[name])])
    print(table(rows))
    if "netpost" in best and "kea" in best:
        line, _ = ratio_line("netpost / Kea", median(best["netpost"]), median(best["kea"]), 1.0)
        print(line)
    print(f"versions: {json.dumps(v)}")
    print(f"logs and points: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
