#!/usr/bin/env python3
"""NTP server capacity: netpost vs chronyd under ntpperf (issue 9), in a network-namespace pair.

ntpperf (mlichvar, GPL-2.0; source in /work/shared/tools, built into ~/.cache/netpost-tools,
never into the repo) sends raw client requests from simulated addresses in 172.18.0.0/16
through a veth pair and counts the answers; it raises the rate by `--step` every `--interval`
seconds.  A server's capacity here is the highest rate at which it answered with < 1 % lost
and no invalid answers.  Both servers run in the same namespace on 10.98.0.1:123 in turn,
`--runs` times each, alternating; the medians are compared (target: netpost >= 0.5x chronyd).

Needs root (namespaces, raw sockets).  Set-up as reference §6.3:
  ntp-srv (10.98.0.1, veth-nsrv) <-> ntp-cli (10.98.0.2, veth-ncli); replies to 172.18/16 are
  routed to ntp-cli and dropped there by iptables in the raw table.

  sudo .venv/bin/python bench/ntp_perf.py [--runs 3] [--step 1.2] [--interval 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

TOOLS = Path(os.environ.get("NETPOST_TOOLS", Path.home() / ".cache" / "netpost-tools"))
NTPPERF_SRC = Path("/work/shared/tools/ntpperf.tar.gz")
NICE: list[str] = []  # ["nice", "-n", N] with --nice: the server and ntpperf alike
SRV, CLI = "ntp-srv", "ntp-cli"
SERVER_IP = "10.98.0.1"
CLIENTS = "172.18.0.0/16"
LINE = re.compile(r"^\s*(\d+)\s+(\d+)\s+([\d.]+)%\s+([\d.]+)%\s+([\d.]+)%\s+([\d.]+)%")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=60)


def build_ntpperf() -> Path:
    binary = TOOLS / "ntpperf" / "ntpperf"
    if binary.exists():
        return binary
    for tool in ("cc", "make"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install build-essential libpcap-dev")
    if not Path("/usr/include/pcap.h").exists():
        raise SystemExit("libpcap headers missing: apt-get install libpcap-dev")
    TOOLS.mkdir(parents=True, exist_ok=True)
    with tarfile.open(NTPPERF_SRC) as tar:
        tar.extractall(TOOLS, filter="data")
    subprocess.run(["make", "-C", str(TOOLS / "ntpperf")], check=True, capture_output=True)
    return binary


def namespaces_up() -> str:
    """The namespace pair of reference §6.3; returns the server side's MAC address."""
    namespaces_down()
    for cmd in (["ip", "netns", "add", SRV], ["ip", "netns", "add", CLI],
                ["ip", "link", "add", "veth-nsrv", "type", "veth", "peer", "name", "veth-ncli"],
                ["ip", "link", "set", "veth-nsrv", "netns", SRV],
                ["ip", "link", "set", "veth-ncli", "netns", CLI],
                ["ip", "-n", SRV, "link", "set", "lo", "up"],
                ["ip", "-n", CLI, "link", "set", "lo", "up"],
                ["ip", "-n", SRV, "addr", "add", f"{SERVER_IP}/24", "dev", "veth-nsrv"],
                ["ip", "-n", SRV, "link", "set", "veth-nsrv", "up"],
                ["ip", "-n", CLI, "addr", "add", "10.98.0.2/24", "dev", "veth-ncli"],
                ["ip", "-n", CLI, "link", "set", "veth-ncli", "up"],
                ["ip", "-n", SRV, "route", "add", CLIENTS, "via", "10.98.0.2", "dev",
                 "veth-nsrv"],
                ["ip", "netns", "exec", CLI, "iptables", "-t", "raw", "-A", "PREROUTING", "-p",
                 "udp", "-d", CLIENTS, "-j", "DROP"]):
        sh(*cmd)
    bl.on_exit(namespaces_down)
    out = sh("ip", "-n", SRV, "-br", "link", "show", "veth-nsrv").stdout.split()
    return out[2]


def namespaces_down() -> None:
    for ns in (SRV, CLI):
        sh("ip", "netns", "del", ns, check=False)


class Server:
    """A server under test inside ntp-srv on 10.98.0.1:123."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None, log: Path,
                 ready: str | None) -> None:
        self.name = name
        self.log = log
        out = log.open("w")
        self.proc = subprocess.Popen(["ip", "netns", "exec", SRV, *NICE, *cmd], stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env)
        bl.on_exit(self.stop)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {log.read_text()[-800:]}")
            if ready is None or ready in log.read_text():
                break
            time.sleep(0.1)
        time.sleep(1.0)

    def cpu(self) -> float:
        return bl.tree_cpu_s(self.proc.pid)

    def stop(self) -> None:
        bl.stop_process(self.proc)


def start_netpost(out: Path) -> Server:
    data = out / "netpost-data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    # No per-client limit: ntpperf's simulated clients each ask ~10 times a second.
    (data / "netpost.toml").write_text("[ntp]\nrate_limit = 0\nnts = false\n")
    cmd, env = bl.netpost_cmd()
    args = []
    for name in bl.listener_names():
        args += ["--listen", f"{name}={SERVER_IP}:123" if name == "ntp" else f"{name}=off"]
    return Server("netpost", [*cmd, "--data", str(data), "serve", *args], env,
                  out / "netpost.log", "\nready")


def start_chronyd(out: Path) -> Server:
    d = out / "chronyd"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o700, parents=True)
    conf = d / "chrony.conf"
    conf.write_text(f"port 123\nbindaddress {SERVER_IP}\nallow all\nlocal stratum 8\n"
                    f"cmdport 0\npidfile {d / 'pid'}\ndriftfile {d / 'drift'}\n")
    return Server("chronyd", ["chronyd", "-x", "-d", "-u", "root", "-f", str(conf)], None,
                  out / "chronyd.log", None)


def answered(lines: list[str], interval: float) -> float:
    """Requests answered in time over a run (rate x interval x the share not lost or late)."""
    total = 0.0
    for line in lines:
        m = LINE.match(line)
        if m:
            lost, invalid = float(m.group(3)), float(m.group(4))
            total += int(m.group(1)) * interval * max(0.0, 1 - (lost + invalid) / 100)
    return total


def run_ntpperf(binary: Path, mac: str, args: argparse.Namespace, log: Path
                ) -> tuple[int, list[str]]:
    """ntpperf until two rates in a row lose 20 % or more (one such rate can be a moment when
    something else had the CPU; or until it cannot send faster); the highest rate with < 1 %
    lost and no invalid (late: the client had asked again) answers, and its lines."""
    cmd = ["ip", "netns", "exec", CLI, *NICE, str(binary), "-i", "veth-ncli", "-m", mac, "-d",
           SERVER_IP, "-s", CLIENTS, "-B", "-r", f"{args.start}-{args.max_rate}", "-x",
           str(args.step), "-t", str(args.interval), "-p", str(args.senders)]
    if args.late:
        cmd.append("-l")  # a busy machine delays the sender: send late rather than stop
    lines: list[str] = []
    best = 0
    bad_in_a_row = 0
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            lines.append(line.rstrip())
            m = LINE.match(line)
            if not m:
                continue
            rate, lost, invalid = int(m.group(1)), float(m.group(3)), float(m.group(4))
            if lost < 1.0 and invalid == 0.0:
                best = max(best, rate)
            bad_in_a_row = bad_in_a_row + 1 if lost + invalid >= 20.0 else 0
            if bad_in_a_row == 2:
                break
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return best, lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per server (alternating)")
    ap.add_argument("--start", type=int, default=1000, help="first rate, requests/s")
    ap.add_argument("--max-rate", type=int, default=1_000_000)
    ap.add_argument("--step", type=float, default=1.2, help="rate multiplier per interval")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds per rate")
    ap.add_argument("--senders", type=int, default=1, help="ntpperf sender processes")
    ap.add_argument("--late", action="store_true",
                    help="ntpperf -l: allow late transmissions (on a machine others use)")
    ap.add_argument("--nice", type=int, default=0,
                    help="run the server and ntpperf at this nice level (e.g. -10 on a machine "
                    "others use: both servers get the same priority over the rest)")
    ap.add_argument("--only", choices=["netpost", "chronyd"], help="measure one server")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("ntp_perf needs root (network namespaces, raw sockets)")
    for tool in ("ip", "iptables", "chronyd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install iproute2 iptables chrony")
    if args.nice:
        NICE.extend(["nice", "-n", str(args.nice)])
    binary = build_ntpperf()
    src = bl.snapshot_src()
    out = bl.results_dir("ntp")
    mac = namespaces_up()
    bl.note(f"namespaces up; server MAC {mac}; results in {out}")
    results: dict[str, list[int]] = {"netpost": [], "chronyd": []}
    cpu: dict[str, list[float]] = {"netpost": [], "chronyd": []}  # µs per answer
    names = [args.only] if args.only else ["netpost", "chronyd"]
    for run in range(args.runs):
        for name in names:
            load = os.getloadavg()[0]  # the machine is shared: note what else was running
            server = start_netpost(out) if name == "netpost" else start_chronyd(out)
            before = server.cpu()
            try:
                best, lines = run_ntpperf(binary, mac, args, out / f"ntpperf-{name}.log")
            finally:
                used = server.cpu() - before
                server.stop()
            results[name].append(best)
            done = answered(lines, args.interval)
            if done > 10_000:
                cpu[name].append(used / done * 1e6)
            bl.note(f"run {run + 1} {name}: {best:,} requests/s at < 1 % loss "
                    f"(server CPU {used:.1f} s, load average before {load:.2f})")
            bl.append_jsonl(out / "runs.jsonl", {"run": run + 1, "server": name,
                                                 "rate": best, "cpu_s": used,
                                                 "loadavg1_before": load, "lines": lines})
            time.sleep(1)
    versions = bl.versions()
    versions["chronyd"] = sh("chronyd", "--version", check=False).stdout.strip()
    versions["ntpperf"] = f"{binary} (from {NTPPERF_SRC.name})"
    versions.update(src)
    print("\n## NTP capacity (ntpperf -B, namespace pair, < 1 % lost)\n")
    for k, v in versions.items():
        print(f"- {k}: {v}")
    print(f"- rate step x{args.step} every {args.interval} s from {args.start}/s; "
          f"ntpperf senders: {args.senders}{' (-l: late sends allowed)' if args.late else ''}; "
          f"runs: {args.runs}; nice: {args.nice}\n")
    rows = [["server", "requests/s at < 1 % loss: median [min–max]",
             "server CPU µs per answer", "runs"]]
    for name in names:
        rows.append([name, bl.mmm(results[name]), bl.mmm(cpu[name], "{:.1f}"),
                     str(len(results[name]))])
    print(bl.table(rows))
    if not args.only:
        line, ok = bl.ratio_line("netpost / chronyd", bl.median(results["netpost"]),
                                 bl.median(results["chronyd"]), 0.5)
        print("\n" + line)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
