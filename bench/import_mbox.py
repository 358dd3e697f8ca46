#!/usr/bin/env python3
"""Bulk import benchmark: `netpost import` of the team's deterministic mbox (gen_mbox.py).

usage: bench/import_mbox.py [--count 100000] [--runs 3] [--dovecot]

Each run: a fresh data directory (one domain, one user), then `netpost import MBOX --user ...`
timed from start to exit (parsing, durable commits, everything), then a re-run that must import
nothing (resumable, no duplicates), and the octets the store takes per octet of mail.
With --dovecot (root, peers/dovecot.sh) the same mbox goes into the peer Dovecot with
`doveadm import` in the same run, for a ratio.  Target (issue 5): >= 5,000 msgs/s.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

USER, DOMAIN = "u1@bench.test", "bench.test"
GEN = Path("/work/shared/peer-bench/gen_mbox.py")


def blocks(p: Path) -> int:
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return sum(f.stat().st_blocks * 512 for f in files)


def run_netpost(i: int, mbox: Path, count: int) -> dict:
    srv = B.NetpostServer(B.BENCH_ROOT / "netpost" / f"import-run{i}")
    srv.create(DOMAIN, {USER: "pass"})
    cmd, env = B.netpost_cmd()
    t0 = time.monotonic()
    p = subprocess.run([*cmd, "--data", str(srv.data), "import", str(mbox), "--user", USER],
                       capture_output=True, text=True, env=env, timeout=3600)
    elapsed = time.monotonic() - t0
    ok = p.returncode == 0 and f"imported {count} messages" in p.stdout
    t0 = time.monotonic()
    again = subprocess.run([*cmd, "--data", str(srv.data), "import", str(mbox), "--user", USER],
                           capture_output=True, text=True, env=env, timeout=3600)
    rerun = time.monotonic() - t0
    ok &= "imported 0 messages" in again.stdout
    bodies = sum(blocks(srv.data / n) for n in ("blobs.db", "blobs.db-wal", "blobs")
                 if (srv.data / n).exists())
    res = {"msgs_per_s": round(count / elapsed), "elapsed_s": round(elapsed, 2),
           "rerun_s": round(rerun, 2), "ok": ok, "disk_per_octet": round(bodies / mbox.stat()
                                                                        .st_size, 3),
           "stdout": p.stdout.strip()[-200:]}
    shutil.rmtree(srv.data, ignore_errors=True)
    return res


def run_dovecot(mbox: Path, count: int) -> dict:
    B.peer("dovecot.sh", "reset", "u1")
    conf = B.BENCH_ROOT / "dovecot" / "dovecot.conf"
    src = B.BENCH_ROOT / "import-src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    shutil.copy(mbox, src / "inbox")
    for p in (src, src / "inbox"):
        shutil.chown(p, "vmail", "vmail")  # doveadm works as the mail user
    maildir = B.peer("dovecot.sh", "maildir", "u1").strip()
    t0 = time.monotonic()
    p = subprocess.run(["doveadm", "-c", str(conf), "import", "-u", "u1",
                        f"mbox:{src}:INBOX={src / 'inbox'}", "", "all"],
                       capture_output=True, text=True, timeout=3600)
    elapsed = time.monotonic() - t0
    got = int(subprocess.run([str(B.PEER_BENCH / "count_maildir.sh"), maildir],
                             capture_output=True, text=True).stdout.strip() or 0)
    return {"msgs_per_s": round(count / elapsed), "elapsed_s": round(elapsed, 2),
            "ok": p.returncode == 0 and got == count and "Error" not in p.stderr,
            "imported": got, "error": p.stderr.strip()[-300:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dovecot", action="store_true", help="also time doveadm import")
    a = ap.parse_args()
    snap = B.snapshot_src()
    out = B.results_dir("import")
    mbox = B.BENCH_ROOT / f"bench-{a.count}.mbox"
    if not mbox.exists():
        subprocess.run([sys.executable, str(GEN), str(mbox), "--count", str(a.count)],
                       check=True)
    B.note(f"{mbox} ({mbox.stat().st_size:,} octets, {a.count} messages); results in {out}")
    if a.dovecot:
        B.peer("dovecot.sh", "start")
        B.on_exit(lambda: B.peer("dovecot.sh", "stop", check=False))
    results: dict[str, list[dict]] = {"netpost": [], "dovecot": []}
    for i in range(1, a.runs + 1):
        res = run_netpost(i, mbox, a.count)
        results["netpost"].append(res)
        B.append_jsonl(out / "netpost__import.jsonl", {**res, **snap})
        B.note(f"run {i}: netpost {res['msgs_per_s']} msgs/s ok={res['ok']}")
        if a.dovecot:
            res = run_dovecot(mbox, a.count)
            results["dovecot"].append(res)
            B.append_jsonl(out / "dovecot__import.jsonl", res)
            B.note(f"run {i}: dovecot {res['msgs_per_s']} msgs/s ok={res['ok']} {res['error']}")
    n = results["netpost"]
    print(f"netpost import of {a.count} messages: {B.mmm([r['msgs_per_s'] for r in n])} msgs/s, "
          f"re-run {B.mmm([r['rerun_s'] for r in n], '{:.1f}')} s, "
          f"disk {B.mmm([r['disk_per_octet'] for r in n], '{:.2f}')}x the mbox, "
          f"all ok: {all(r['ok'] for r in n)}")
    if a.dovecot:
        d = results["dovecot"]
        print(f"dovecot (doveadm import, Maildir): {B.mmm([r['msgs_per_s'] for r in d])} msgs/s")
        med_n, med_d = B.median([r["msgs_per_s"] for r in n]), B.median(
            [r["msgs_per_s"] for r in d])
        if med_n and med_d:
            print(f"netpost / dovecot: {med_n / med_d:.2f}x")
    return 0 if all(r["ok"] for r in n) else 1


if __name__ == "__main__":
    sys.exit(main())
