#!/usr/bin/env python3
"""The user agent (`netpost mail`): `list` of a 100,000-message folder and `sync` of a
10,000-message folder, against netpost and Dovecot, sync compared with mbsync (issue 10).

usage: bench/agent_list.py [--messages 100000] [--sync-messages 10000] [--runs 5]
                           [--sync-runs 3] [--servers netpost,dovecot]

  fill   one IMAP connection APPENDs the messages of the peer-bench imap_bigbox generator
         (350-600 octets each, seed 7) into "bigbox" and "sync10k" on netpost; for Dovecot
         the same messages are written into its Maildir (--dovecot-fill imap: APPEND too).
  list   `netpost mail list --folder bigbox` as a user runs it: a new process each time
         (Python start-up, LOGIN, SELECT, one FETCH of the page's 20 sequence numbers);
         wall time, --runs times after one first run (recorded apart: Dovecot indexes a
         Maildir it has not seen there); the output is checked (20 lines, the count).
  sync   `netpost mail sync --folder sync10k DIR` and `mbsync` (Sync Pull, Create Near,
         fsync on as both default) into a new Maildir each run, alternating; every message
         file is counted. Ratio = mbsync's time / netpost's (>= 0.8 is the target: netpost's
         rate at least 0.8x mbsync's).
Servers on 127.0.0.1, IMAP without TLS on both (LOGIN allowed: [auth] allow_plaintext for
netpost, the peer set-up's own for Dovecot), so TLS costs nothing to either side:
  netpost   a snapshot of src/ (benchlib), user big1@bench.test / pass, only the imap listener.
  dovecot   peers/dovecot.sh (Maildir, user big1 / pass).
Targets: list < 0.5 s against both; sync >= 0.8x mbsync's rate.
Results: JSON lines and versions in $OUT (default $BENCH_ROOT/results/<time>-agent-list/),
the table on stdout.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

NP_USER, DV_USER, PASSWORD = "big1@bench.test", "big1", "pass"
BIG, SYNC = "bigbox", "sync10k"


P = B.peer_module("imap_bigbox.py")


def fill(port: int, user: str, box: str, count: int) -> float:
    c = P.connect(B.LOCALHOST, port, user, PASSWORD, 600)
    res = P.fill(c, box, count, 32, time.monotonic() + 3600, False)
    c.command("LOGOUT")
    c.sock.close()
    if res.get("fill_errors"):
        raise SystemExit(f"fill of {box} had errors: {res}")
    return float(res.get("fill_s") or 0)


def fill_maildir(user: str, box: str, count: int) -> float:
    """Dovecot: the same generated messages written straight into its Maildir (cur/, as
    delivered and seen by no one yet); Dovecot indexes them at the first SELECT. APPEND
    through Dovecot's IMAP took ~4 ms each and growing (round 9: 359 s for 100,000 on a
    quiet machine; 51/s here under load)."""
    folder = Path(B.peer("dovecot.sh", "maildir", user).strip()) / f".{box}"
    shutil.rmtree(folder, ignore_errors=True)
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True)
    (folder / "maildirfolder").touch()
    rnd = random.Random(7)
    t = time.monotonic()
    for i in range(count):
        # named as Dovecot names what it saves: S= the file's size, W= the size with CRLF
        # (RFC822.SIZE); without them every session's FETCH RFC822.SIZE reads the files
        wire = P.message(i, rnd)
        data = wire.replace(b"\r\n", b"\n")
        (folder / "cur" / f"{1700000000 + i}.M{i}P1.bench,S={len(data)},W={len(wire)}:2,"
         ).write_bytes(data)
    subprocess.run(["chown", "-R", "vmail:vmail", str(folder.parent)], check=True)
    return round(time.monotonic() - t, 2)


def account_file(path: Path, port: int, user: str) -> Path:
    path.write_text(f'address = "{user if "@" in user else user + "@bench.test"}"\n'
                    f'user = "{user}"\nserver = "127.0.0.1"\n'
                    f'password_command = "echo {PASSWORD}"\nallow_plaintext = true\n'
                    f'keyring = "{path.parent / "keyring"}"\n'
                    f"[imap]\nport = {port}\ntls = \"none\"\n"
                    f"[smtp]\nport = 1\ntls = \"none\"\n[pop3]\nport = 1\ntls = \"none\"\n")
    return path


def time_list(account: Path, count: int) -> float:
    cmd, env = B.netpost_cmd()
    t = time.monotonic()
    r = subprocess.run([*cmd, "mail", "--account", str(account), "list", "--folder", BIG],
                       capture_output=True, text=True, env=env, timeout=120)
    took = time.monotonic() - t
    lines = r.stdout.splitlines()
    if r.returncode or len(lines) != 21 or f"{count} messages" not in lines[-1]:
        raise SystemExit(f"list failed: {r.stderr}{r.stdout[-400:]}")
    return took


def time_netpost_sync(account: Path, target: Path, count: int) -> float:
    cmd, env = B.netpost_cmd()
    shutil.rmtree(target, ignore_errors=True)
    t = time.monotonic()
    r = subprocess.run([*cmd, "mail", "--account", str(account), "sync", "--folder", SYNC,
                        str(target)], capture_output=True, text=True, env=env, timeout=1800)
    took = time.monotonic() - t
    got = len(list((target / "cur").iterdir())) if (target / "cur").is_dir() else 0
    if r.returncode or got != count:
        raise SystemExit(f"netpost sync: {got} of {count} messages; {r.stderr}")
    return took


def time_mbsync(port: int, user: str, work: Path, count: int) -> float:
    shutil.rmtree(work, ignore_errors=True)
    (work / "mail").mkdir(parents=True)
    cfg = work / "mbsyncrc"
    cfg.write_text(f"""IMAPAccount bench
Host 127.0.0.1
Port {port}
User {user}
Pass {PASSWORD}
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account bench

MaildirStore local
Path {work}/mail/
Inbox {work}/mail/INBOX

Channel pull
Far :remote:{SYNC}
Near :local:{SYNC}
Sync Pull
Create Near
Expunge None
SyncState *
""")
    t = time.monotonic()
    r = subprocess.run(["mbsync", "-q", "-c", str(cfg), "pull"], capture_output=True,
                       text=True, timeout=1800)
    took = time.monotonic() - t
    box = work / "mail" / SYNC
    got = sum(len(list((box / d).iterdir())) for d in ("cur", "new") if (box / d).is_dir())
    if r.returncode or got != count:
        raise SystemExit(f"mbsync: {got} of {count} messages; {r.stderr}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--sync-messages", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5, help="list runs per server (5)")
    ap.add_argument("--sync-runs", type=int, default=3, help="sync runs per client (3)")
    ap.add_argument("--servers", default="netpost,dovecot")
    ap.add_argument("--netpost-port", type=int, default=12143)
    ap.add_argument("--dovecot-fill", choices=["maildir", "imap"], default="maildir",
                    help="Dovecot's folders: files written into its Maildir (default) or "
                         "IMAP APPEND (~6 min for 100,000 on a quiet machine)")
    a = ap.parse_args()
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    if shutil.which("mbsync") is None:
        raise SystemExit("mbsync is not installed (Debian package isync)")
    out = B.results_dir("agent-list")
    snap = B.snapshot_src()
    ports: dict[str, int] = {}
    users = {"netpost": NP_USER, "dovecot": DV_USER}
    if "netpost" in servers:
        np_srv = B.NetpostServer(B.BENCH_ROOT / "netpost" / "agent-list", allow_plaintext=True)
        np_srv.create("bench.test", {NP_USER: PASSWORD})
        np_srv.start(imap=a.netpost_port)
        ports["netpost"] = a.netpost_port
        B.on_exit(lambda: shutil.rmtree(np_srv.data, ignore_errors=True))
    if "dovecot" in servers:
        ports["dovecot"] = B.dovecot_ports()
        B.on_exit(lambda: B.peer("dovecot.sh", "stop", check=False))
        B.on_exit(lambda: B.peer("dovecot.sh", "reset", DV_USER, check=False))
        B.peer("dovecot.sh", "start")
        B.peer("dovecot.sh", "reset", DV_USER)
    vers = B.versions(*(["dovecot.sh"] if "dovecot" in servers else []))
    vers.update(snap)
    vers["mbsync"] = subprocess.run(["mbsync", "--version"], capture_output=True,
                                    text=True).stdout.strip()
    vers["pysequoia"] = B._cmd([str(B.VENV / "bin" / "python"), "-c",
                                "import importlib.metadata as m; print(m.version('pysequoia'))"])
    B.append_jsonl(out / "versions.jsonl", vers)
    work = B.BENCH_ROOT / "agent-list"
    work.mkdir(parents=True, exist_ok=True)
    rows = [["server", "list first page (s)", "sync netpost (s)", "sync mbsync (s)",
             "mbsync / netpost"]]
    for name in servers:
        port, user = ports[name], users[name]
        B.note(f"{name}: fill {a.messages} into {BIG}, {a.sync_messages} into {SYNC}")
        if name == "dovecot" and a.dovecot_fill == "maildir":
            fill_big = fill_maildir(user, BIG, a.messages)
            fill_sync = fill_maildir(user, SYNC, a.sync_messages)
        else:
            fill_big = fill(port, user, BIG, a.messages)
            fill_sync = fill(port, user, SYNC, a.sync_messages)
        account = account_file(work / f"{name}.toml", port, user)
        first_list = time_list(account, a.messages)  # Dovecot: builds its index here
        lists = [time_list(account, a.messages) for _ in range(a.runs)]
        np_sync: list[float] = []
        mb_sync: list[float] = []
        for i in range(a.sync_runs):  # alternate, the order swapped each run
            for which in (("netpost", "mbsync") if i % 2 == 0 else ("mbsync", "netpost")):
                if which == "netpost":
                    np_sync.append(time_netpost_sync(account, work / "np-maildir",
                                                     a.sync_messages))
                else:
                    mb_sync.append(time_mbsync(port, user, work / "mbsync", a.sync_messages))
        res = {"server": name, "messages": a.messages, "fill_s": fill_big,
               "fill_how": "maildir" if name == "dovecot" and a.dovecot_fill == "maildir"
               else "imap append", "first_list_s": round(first_list, 3),
               "sync_messages": a.sync_messages, "fill_sync_s": fill_sync,
               "list_s": [round(x, 3) for x in lists],
               "netpost_sync_s": [round(x, 2) for x in np_sync],
               "mbsync_s": [round(x, 2) for x in mb_sync], "loadavg1": os.getloadavg()[0]}
        B.append_jsonl(out / "agent_list.jsonl", res)
        m_np, m_mb = B.median(np_sync), B.median(mb_sync)
        rows.append([name, B.mmm(lists, "{:.3f}"), B.mmm(np_sync, "{:.2f}"),
                     B.mmm(mb_sync, "{:.2f}"),
                     f"{m_mb / m_np:.2f}x" if m_np and m_mb else "n/a"])
        B.note(f"  {name}: first list {first_list:.3f} s, then {B.mmm(lists, '{:.3f}')} s; "
               f"sync netpost "
               f"{B.mmm(np_sync, '{:.2f}')} s, mbsync {B.mmm(mb_sync, '{:.2f}')} s")
    table = B.table(rows)
    print(table)
    (out / "summary.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
