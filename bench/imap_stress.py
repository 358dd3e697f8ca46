#!/usr/bin/env python3
"""IMAP stress benchmark (imaptest): netpost vs Dovecot, one invocation, runs interleaved.

usage: bench/imap_stress.py [--runs 3] [--servers netpost,dovecot] [--profile]
                            [--netpost-port 12144] [--keep]

Workload: the team's peer-bench imap_stress.sh (copied unchanged in bench/peer-bench/):
    imaptest host=127.0.0.1 port=P user=T users=50 pass=pass mbox=M clients=20 secs=30 seed=1
(default command mix, INBOX, M = gen_mbox.py's 500 messages, cached in $BENCH_CACHE). imaptest
is the cached build of tests/interop/imaptest_tool.py (`imaptest()`), or $IMAPTEST.
Figures (from the script's JSON line): commands_per_s (imaptest's Totals row / 30 s),
logins_per_s, errors (imaptest "Error:" lines; a correct server has 0), totals per command.

Servers (127.0.0.1 only), every run starting from empty INBOXes:
  netpost   a snapshot of src/ (benchlib), users u1..u50@bench.test / pass (T = u%d@bench.test),
            [auth] allow_plaintext = true; the data dir is made once (domain + 50 users by the
            CLI) and copied fresh for every run; only the imap listener, on --netpost-port.
            Server CPU (all threads, and the event-loop thread) is recorded per run.
  dovecot   peers/dovecot.sh (Maildir, passwd-file {PLAIN} passwords, T = u%d); u1..u50's
            Maildirs are removed before every run. Ports 10143/10110 unless busy.
Per run also: CPU seconds of the server (netpost: its process; Dovecot: master + children,
living and reaped), of imaptest, and of everything else on the machine (/proc/stat busy time
minus those two: other sessions' load), out of 2 cores × the run's wall time.
netpost verifies an argon2id hash (19 MiB, t=2) per LOGIN, Dovecot compares a {PLAIN}
password: the script times one verification alone and reports logins/s separately.
Target: commands/s >= 0.5x Dovecot's (medians), 0 "Error:" lines.
--profile: py-spy netpost during its runs (collapsed stacks in $OUT; bench/profile_top.py).
Results: JSON lines in $OUT (default $BENCH_ROOT/results/<time>-imap-stress/), summary.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

USERS, PASSWORD, DOMAIN = 50, "pass", "bench.test"
COLUMNS = ("Logi", "List", "Stat", "Sele", "Fetc", "Fet2", "Stor", "Dele", "Expu", "Appe",
           "Logo")


def imaptest_binary() -> str:
    if os.environ.get("IMAPTEST"):
        return os.environ["IMAPTEST"]
    r = subprocess.run([str(B.VENV / "bin" / "python"), "-c",
                        "from tests.interop.imaptest_tool import imaptest; print(imaptest()[0])"],
                       cwd=B.REPO, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"imaptest not available (set IMAPTEST): {r.stderr[-500:]}")
    return r.stdout.strip().splitlines()[-1]


def make_template(data: Path) -> None:
    """Data dir with the domain and u1..u50@bench.test (CLI, 4 at a time)."""
    srv = B.NetpostServer(data, allow_plaintext=True)
    srv.create(DOMAIN, {})
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        for f in [ex.submit(srv.cli, "user", "add", f"u{i}@{DOMAIN}", "--password-stdin",
                            stdin=PASSWORD + "\n") for i in range(1, USERS + 1)]:
            f.result()


def verify_ms() -> float:
    """Milliseconds for one argon2id verification with netpost's parameters (median of 20)."""
    cmd, env = B.netpost_cmd()
    py = cmd[0] if cmd[0].endswith("python") else str(B.VENV / "bin" / "python")
    code = ("import time, statistics\n"
            "from netpost.auth.passwords import hash_password, verify_password\n"
            "h = hash_password('pass'); ts = []\n"
            "for _ in range(20):\n"
            "    t = time.perf_counter(); verify_password(h, 'pass')\n"
            "    ts.append(time.perf_counter() - t)\n"
            "print(statistics.median(ts) * 1000)\n")
    r = subprocess.run([py, "-c", code], env=env, capture_output=True, text=True, check=True)
    return round(float(r.stdout.strip()), 1)


def client(port: int, user_template: str, log: Path, imaptest: str,
           server_cpu) -> dict:
    """Run imap_stress.sh; add the CPU the server, the client (imaptest) and everything else
    on the machine used meanwhile (server_cpu(): the server's CPU seconds so far)."""
    cmd = ["env", f"IMAPTEST={imaptest}", str(B.PEER_BENCH / "imap_stress.sh"),
           f"{B.LOCALHOST}:{port}", user_template, PASSWORD]
    busy0, srv0, cli0, t0 = B.machine_busy_s(), server_cpu(), B.children_cpu_s(), time.time()
    res = B.last_json(cmd, timeout=300, log=log)
    busy, srv, cli = (B.machine_busy_s() - busy0, server_cpu() - srv0,
                      B.children_cpu_s() - cli0)
    res["wall_s"] = round(time.time() - t0, 1)
    res["server_cpu_s"] = round(srv, 1)
    res["client_cpu_s"] = round(cli, 1)
    res["machine_busy_s"] = round(busy, 1)
    res["other_cpu_s"] = round(busy - srv - cli, 1)  # other sessions' work on the machine
    if res.get("commands"):
        res["server_cpu_ms_per_command"] = round(srv * 1000 / res["commands"], 2)
    return res


def dovecot_master() -> int:
    return int((B.BENCH_ROOT / "dovecot" / "run" / "master.pid").read_text().split()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--runs", type=int, default=3, help="runs per server (default 3)")
    ap.add_argument("--servers", default="netpost,dovecot")
    ap.add_argument("--netpost-port", type=int, default=12144)
    ap.add_argument("--profile", action="store_true", help="py-spy netpost during its runs")
    ap.add_argument("--keep", action="store_true", help="keep netpost's data dirs")
    a = ap.parse_args()
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    if set(servers) - {"netpost", "dovecot"}:
        ap.error("servers: netpost, dovecot")
    imaptest = imaptest_binary()

    snap = B.snapshot_src()
    out = B.results_dir("imap-stress")
    log = out / "run.log"
    B.note(f"results in {out}; peers from {B.PEERS}; imaptest {imaptest}")
    template = B.BENCH_ROOT / "netpost" / "imap-stress-template"
    ports: dict[str, int] = {}
    if "netpost" in servers:
        B.note(f"netpost: domain + {USERS} users (template data dir)")
        make_template(template)
        B.on_exit(lambda: shutil.rmtree(template, ignore_errors=True))
        ports["netpost"] = a.netpost_port
    if "dovecot" in servers:
        ports["dovecot"] = B.dovecot_ports()
        B.on_exit(lambda: (
            [B.peer("dovecot.sh", "reset", f"u{i}", check=False) for i in range(1, USERS + 1)],
            B.peer("dovecot.sh", "stop", check=False)))
        B.peer("dovecot.sh", "start")
    vers = B.versions(*(["dovecot.sh"] if "dovecot" in servers else []))
    vers.update(snap)
    vers["imaptest"] = imaptest
    vers["ports"] = ports
    if "netpost" in servers:
        vers["argon2id_verify_ms"] = verify_ms()
    B.append_jsonl(out / "versions.jsonl", vers)

    results: dict[str, list[dict]] = {s: [] for s in servers}
    for i in range(1, a.runs + 1):
        order = servers[(i - 1) % len(servers):] + servers[:(i - 1) % len(servers)]
        for name in order:
            B.note(f"run {i}/{a.runs}: {name}")
            if name == "netpost":
                data = B.BENCH_ROOT / "netpost" / f"imap-stress-run{i}"
                shutil.rmtree(data, ignore_errors=True)
                shutil.copytree(template, data)
                srv = B.NetpostServer(data, allow_plaintext=True)
                srv.start(imap=a.netpost_port)
                try:
                    if a.profile:
                        srv.profile_start(out / f"netpost-stress-run{i}.pyspy.txt")
                    main0 = srv.cpu_main_thread()
                    res = client(a.netpost_port, f"u%d@{DOMAIN}", log, imaptest, srv.cpu)
                    res["server_main_thread_cpu_s"] = round(srv.cpu_main_thread() - main0, 1)
                    res["server_rss_mib"] = round(srv.rss() / (1 << 20), 1)
                    srv.profile_stop()
                finally:
                    srv.stop()
                if not a.keep:
                    shutil.rmtree(data, ignore_errors=True)
            else:
                for u in range(1, USERS + 1):
                    B.peer("dovecot.sh", "reset", f"u{u}")
                master = dovecot_master()
                res = client(ports["dovecot"], "u%d", log, imaptest,
                             lambda m=master: B.tree_cpu_s(m))
            res.update({"server": name, "run": i})
            results[name].append(res)
            B.append_jsonl(out / f"{name}__imap_stress.jsonl", res)
            B.note(f"  {name}: {res.get('commands_per_s')} commands/s, logins/s "
                   f"{res.get('logins_per_s')}, errors={res.get('errors')} rc={res.get('rc')} "
                   f"CPU s: server {res.get('server_cpu_s')} client {res.get('client_cpu_s')} "
                   f"others {res.get('other_cpu_s')} of {res.get('wall_s')} s wall × 2 cores "
                   f"{res.get('first_errors') or ''} {res.get('error') or ''}")

    def col(name: str, key: str) -> list:
        return [r.get(key) for r in results.get(name, [])]

    rows = [["server", "commands/s", "logins/s", "Error: lines", "imaptest rc",
             "server CPU s", "ms CPU / command", "imaptest CPU s", "others' CPU s"]]
    for s in servers:
        rows.append([s, B.mmm(col(s, "commands_per_s"), "{:,.1f}"),
                     B.mmm(col(s, "logins_per_s"), "{:,.1f}"), B.mmm(col(s, "errors")),
                     "/".join(str(r.get("rc")) for r in results[s]),
                     B.mmm(col(s, "server_cpu_s"), "{:.1f}") + (
                         " (event loop " + B.mmm(col(s, "server_main_thread_cpu_s"), "{:.1f}")
                         + ")" if s == "netpost" else ""),
                     B.mmm(col(s, "server_cpu_ms_per_command"), "{:.2f}"),
                     B.mmm(col(s, "client_cpu_s"), "{:.1f}"),
                     B.mmm(col(s, "other_cpu_s"), "{:.1f}")])
    trows = [["server", *COLUMNS]]
    for s in servers:
        trows.append([s, *(B.mmm([(r.get("totals") or {}).get(c) for r in results[s]])
                           for c in COLUMNS)])
    lines = [f"IMAP stress: imaptest users={USERS} clients=20 secs=30 seed=1 (peer-bench "
             f"imap_stress.sh), {a.runs} run(s) per server, median [min–max]", "",
             B.table(rows), "", "Totals per command (imaptest's columns):", "",
             B.table(trows), ""]
    ok = True
    if "netpost" in servers and "dovecot" in servers:
        text, met = B.ratio_line("netpost / Dovecot (commands/s, medians)",
                                 B.median(col("netpost", "commands_per_s")),
                                 B.median(col("dovecot", "commands_per_s")), 0.5)
        lines.append("- " + text)
        ok &= met
        nl, dl = B.median(col("netpost", "logins_per_s")), B.median(col("dovecot",
                                                                           "logins_per_s"))
        if nl and dl:
            lines.append(f"- logins/s netpost / Dovecot: {nl / dl:.3f}× (no target)")
    if "netpost" in servers:
        errs = sum(r.get("errors") or 0 for r in results["netpost"])
        lines.append(f"- netpost \"Error:\" lines: {errs} in {a.runs} run(s) "
                     f"(target 0: {'MET' if errs == 0 else 'MISSED'})")
        ok &= errs == 0
        v = vers.get("argon2id_verify_ms")
        nl = B.median(col("netpost", "logins_per_s"))
        cpu = B.median(col("netpost", "server_cpu_s"))
        if v and nl and cpu:
            lines.append(f"- argon2id verify alone: {v} ms; × {nl * 30:,.0f} logins = "
                         f"{v * nl * 30 / 1000:.1f} s of the {cpu:.1f} s server CPU per run "
                         f"({v * nl * 30 / 10 / cpu:.0f} %)")
    summary = "\n".join(lines)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)
    print(f"\nraw results: {out}")
    complete = all(r.get("rc") == 0 and r.get("commands") for rs in results.values() for r in rs)
    if not complete:
        print("WARNING: some imaptest run did not complete (rc != 0 or no totals)")
    return 0 if complete and ok else 1


if __name__ == "__main__":
    sys.exit(main())
