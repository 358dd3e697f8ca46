#!/usr/bin/env python3
"""SMTP ingest benchmark: netpost vs aiosmtpd vs Postfix, one invocation, runs interleaved.

usage: bench/smtp_ingest.py [--runs 3] [--servers netpost,aiosmtpd,postfix] [--profile]
                            [--messages 5000] [--length 10240] [--netpost-port 12525] [--keep]

Workload (the team's peer-bench smtp_ingest.py, copied in bench/peer-bench/): Postfix's
    smtp-source -A -c -s 16 -m 5000 -l 10240 -f bench-sender@example.com -t u1@bench.test
one message per connection, 16 sessions, one local recipient, no TLS/AUTH, 127.0.0.1 only.

Servers (all on 127.0.0.1):
  netpost   this repo's .venv/bin/netpost, a fresh data dir per run (domain bench.test, user
            u1@bench.test), only the smtp listener on --netpost-port. End-to-end check: the
            number of rows in u1's INBOX (sqlite3 on DIR/netpost.db) must grow by `accepted`.
  aiosmtpd  peers/aiosmtpd.sh (port 10026): Maildir, fsync file + dir before 250.
  postfix   peers/postfix.sh (port 10025): private instance, virtual(8) Maildir delivery.
Each run the order of servers rotates; peer Maildirs are emptied before every run and the
client waits (--wait-cmd) until every accepted message is in the mailbox, so Postfix's queue
is drained before the next measurement starts.

Results: one JSON line per run in $OUT (default $BENCH_ROOT/results/<time>-smtp/, BENCH_ROOT
default /tmp/bench), summary.md there, and the summary table + ratios on stdout.
--profile: attach py-spy to netpost during its runs (collapsed stacks in $OUT; summarised with
bench/profile_top.py).
Exit status: 0 if every run accepted and (netpost) stored all 5000 messages.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

RCPT, DOMAIN, PASSWORD = "u1@bench.test", "bench.test", "pass"
MESSAGES = 5000
PORTS = {"aiosmtpd": 10026, "postfix": 10025}
INBOX_COUNT_SQL = ("SELECT count(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
                   "JOIN accounts a ON a.id = b.account_id "
                   f"WHERE a.address = '{RCPT}' AND b.name = 'INBOX'")


def inbox_count_cmd(db: Path) -> str:
    return f"sqlite3 -cmd '.timeout 10000' {db} \"{INBOX_COUNT_SQL}\""


WORKLOAD = {"messages": MESSAGES, "length": 10240}  # set from --messages / --length


def client(port: int, wait_cmd: str, log: Path) -> dict:
    cmd = [sys.executable, str(B.PEER_BENCH / "smtp_ingest.py"), f"{B.LOCALHOST}:{port}", RCPT,
           PASSWORD, "--wait-cmd", wait_cmd, "--messages", str(WORKLOAD["messages"]),
           "--length", str(WORKLOAD["length"])]
    return B.last_json(cmd, timeout=3000, log=log)


def disk_use(data: Path) -> dict:
    """Octets on disk (allocated blocks) of the message store, against the messages' size."""
    def blocks(p: Path) -> int:
        return sum(f.stat().st_blocks * 512 for f in ([p] if p.is_file() else p.rglob("*"))
                   if f.is_file())
    bodies = sum(blocks(data / n) for n in ("blobs.db", "blobs.db-wal", "blobs") if
                 (data / n).exists())
    meta = sum(blocks(data / n) for n in ("netpost.db", "netpost.db-wal") if (data / n).exists())
    total = int(subprocess.run(["sqlite3", str(data / "netpost.db"),
                                "SELECT coalesce(sum(size), 0) FROM messages"],
                               capture_output=True, text=True, check=True).stdout.strip() or 0)
    return {"message_octets": total, "body_store_octets": bodies, "metadata_octets": meta,
            "disk_per_message_octet": round(bodies / total, 3) if total else None}


def run_netpost(i: int, a: argparse.Namespace, out: Path, log: Path) -> dict:
    srv = B.NetpostServer(B.BENCH_ROOT / "netpost" / f"smtp-run{i}")
    srv.create(DOMAIN, {RCPT: PASSWORD})
    srv.start(smtp=a.netpost_port)
    try:
        if a.profile:
            srv.profile_start(out / f"netpost-smtp-run{i}.pyspy.txt")
        cpu0, main0 = srv.cpu(), srv.cpu_main_thread()
        res = client(a.netpost_port, inbox_count_cmd(srv.data / "netpost.db"), log)
        res["server_cpu_s"] = round(srv.cpu() - cpu0, 2)
        res["server_main_thread_cpu_s"] = round(srv.cpu_main_thread() - main0, 2)
        srv.profile_stop()
    finally:
        srv.stop()
    # after a graceful stop: every accepted message must be a row in u1's INBOX
    stored = int(subprocess.run(["sh", "-c", inbox_count_cmd(srv.data / "netpost.db")],
                                capture_output=True, text=True, check=True).stdout.strip())
    res["stored_after_stop"] = stored
    res["e2e_ok"] = stored == res.get("accepted")
    res.update(disk_use(srv.data))
    if not a.keep:
        shutil.rmtree(srv.data, ignore_errors=True)
    return res


def run_peer(name: str, out: Path, log: Path) -> dict:
    B.peer(f"{name}.sh", "reset")
    maildir = B.peer(f"{name}.sh", "maildir", "u1")
    res = client(PORTS[name], f"{B.PEER_BENCH / 'count_maildir.sh'} {maildir}", log)
    res["e2e_ok"] = res.get("delivered") == res.get("accepted")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--runs", type=int, default=3, help="runs per server (default 3)")
    ap.add_argument("--servers", default="netpost,aiosmtpd,postfix",
                    help="comma-separated subset (default all three)")
    ap.add_argument("--netpost-port", type=int, default=12525)
    ap.add_argument("--profile", action="store_true", help="py-spy netpost during its runs")
    ap.add_argument("--keep", action="store_true", help="keep netpost data dirs")
    ap.add_argument("--messages", type=int, default=MESSAGES, help="messages (default 5000)")
    ap.add_argument("--length", type=int, default=10240,
                    help="message body octets (default 10240)")
    a = ap.parse_args()
    WORKLOAD.update(messages=a.messages, length=a.length)
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    unknown = set(servers) - {"netpost", "aiosmtpd", "postfix"}
    if unknown:
        ap.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    if shutil.which("smtp-source") is None:
        raise SystemExit("smtp-source not found: apt-get install postfix")
    if "netpost" in servers and shutil.which("sqlite3") is None:
        raise SystemExit("sqlite3 not found: apt-get install sqlite3")

    snap = B.snapshot_src()
    out = B.results_dir("smtp")
    log = out / "run.log"
    B.note(f"results in {out}; peers from {B.PEERS}")
    for name in ("aiosmtpd", "postfix"):
        if name in servers:
            B.require_free(PORTS[name])
            B.on_exit(lambda n=name: (B.peer(f"{n}.sh", "reset", check=False),
                                      B.peer(f"{n}.sh", "stop", check=False)))
            B.peer(f"{name}.sh", "start")
            if name == "postfix" and a.length > 10_000_000:
                # Postfix refuses messages over 10,240,000 octets by default.
                conf = str(B.BENCH_ROOT / "postfix" / "etc")
                subprocess.run(["postconf", "-c", conf, "-e", "message_size_limit=0",
                                "virtual_mailbox_limit=0"], check=True)
                subprocess.run(["postfix", "-c", conf, "reload"], check=True,
                               capture_output=True)
    vers = B.versions(*(f"{s}.sh" for s in servers if s != "netpost"))
    vers["smtp-source"] = "postfix " + B._cmd(["postconf", "-d", "-h", "mail_version"])
    vers.update(snap)
    B.append_jsonl(out / "versions.jsonl", vers)

    results: dict[str, list[dict]] = {s: [] for s in servers}
    for i in range(1, a.runs + 1):
        order = servers[(i - 1) % len(servers):] + servers[:(i - 1) % len(servers)]
        for name in order:
            B.note(f"run {i}/{a.runs}: {name}")
            if name == "netpost":
                res = run_netpost(i, a, out, log)
            else:
                res = run_peer(name, out, log)
            res.update({"server": name, "run": i})
            results[name].append(res)
            B.append_jsonl(out / f"{name}__smtp_ingest.jsonl", res)
            B.note(f"  {name}: {res.get('msgs_per_s')} msgs/s accepted={res.get('accepted')} "
                   f"e2e={res.get('e2e_msgs_per_s')} msgs/s e2e_ok={res.get('e2e_ok')} "
                   f"errors={res.get('first_errors') or res.get('error') or '-'}")

    # --- summary -----------------------------------------------------------------------------
    def col(name: str, key: str) -> list:
        return [r.get(key) for r in results.get(name, [])]

    rows = [["server", "accepted msgs/s", "end-to-end msgs/s", "e2e time (s)", "failures",
             "all stored", "server CPU s (event-loop thread)", "disk / message size"]]
    labels = {"netpost": "netpost", "aiosmtpd": "aiosmtpd (Maildir, fsync before 250)",
              "postfix": "Postfix (virtual Maildir)"}
    for s in servers:
        rows.append([labels[s], B.mmm(col(s, "msgs_per_s")), B.mmm(col(s, "e2e_msgs_per_s")),
                     B.mmm(col(s, "e2e_s"), "{:.1f}"), B.mmm(col(s, "failures")),
                     f"{sum(bool(x) for x in col(s, 'e2e_ok'))}/{len(results[s])}",
                     (B.mmm(col(s, "server_cpu_s"), "{:.1f}") + " ("
                      + B.mmm(col(s, "server_main_thread_cpu_s"), "{:.1f}") + ")")
                     if s == "netpost" else "–",
                     B.mmm(col(s, "disk_per_message_octet"), "{:.2f}x")
                     if s == "netpost" else "–"])
    lines = [f"SMTP ingest: smtp-source -s 16 -m {a.messages} -l {a.length}, {a.runs} run(s) "
             "per server, median [min–max]", "", B.table(rows), ""]
    ok = True
    med = {s: B.median(col(s, "msgs_per_s")) for s in servers}
    # Issue 5's targets: 10 KiB ≥ 3× aiosmtpd and ≥ 2× Postfix; large mail ≥ 1× Postfix.
    targets = (("aiosmtpd", 3.0), ("postfix", 2.0)) if a.length <= 10240 else (
        ("aiosmtpd", 1.0), ("postfix", 1.0))
    for peer_name, target in targets:
        if "netpost" in servers and peer_name in servers:
            text, met = B.ratio_line(f"netpost / {peer_name} (accepted msgs/s, medians)",
                                     med["netpost"], med[peer_name], target)
            lines.append("- " + text)
            ok &= met
    summary = "\n".join(lines)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)
    print(f"\nraw results: {out}")
    complete = all(r.get("accepted") == a.messages and r.get("e2e_ok")
                   for rs in results.values() for r in rs)
    if not complete:
        print("WARNING: some run did not accept/store all messages (see JSON lines)")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
