#!/usr/bin/env python3
"""IMAP big-mailbox benchmark: netpost vs Dovecot, one invocation, the same 100,000 messages.

usage: bench/imap_bigbox.py [--messages 100000] [--servers netpost,dovecot] [--measure-runs 1]
                            [--profile] [--netpost-port 12143] [--keep]

Workload: the team's peer-bench imap_bigbox.py (copied unchanged in bench/peer-bench/; its
message generator, client and fill are imported from there, so both servers get the same
bytes and the same commands as the 2026-11-22 Dovecot baseline):
  fill      one connection: DELETE + CREATE + SELECT "bigbox", then APPEND N messages of
            350-600 bytes with LITERAL+ literals, 32 in flight (both servers advertise
            LITERAL+), timed from the first APPEND to the last tagged OK.
  measure   a new connection, LOGIN, then each command timed from send to tagged OK:
            SELECT bigbox (EXISTS = N), UID FETCH 1:* (UID FLAGS RFC822.SIZE) (N replies),
            UID SEARCH SUBJECT "x" (N/100 hits), FETCH 50001:51000 BODY.PEEK[] (as the peer
            script, in its order), then the two added here: UID SEARCH FROM
            "sender7@example.com" (N/50 hits) and UID SEARCH BODY "omicron psi" (hits counted
            from the same generator), and UID SEARCH SUBJECT "x" once more (cached).
            Every count is checked; a wrong count is an error.
  memory    VmRSS of the netpost server process before the session connects, after LOGIN,
            after SELECT + UID FETCH 1:*, after the searches and after LOGOUT; the session's
            addition = after the fetch - before connecting (so LOGIN's 19 MiB argon2id buffer
            counts). For Dovecot, its imap process for the session (from after LOGIN).
Both boxes are filled first (netpost, then Dovecot), then the measure sessions alternate
(--measure-runs K: K sessions per server, the first on a box nothing has read since the fill).

Servers (127.0.0.1 only):
  netpost   a snapshot of src/ (see benchlib), fresh data dir $BENCH_ROOT/netpost/imap-bigbox,
            domain bench.test, user big1@bench.test / pass, [auth] allow_plaintext = true
            (LOGIN without TLS), only the imap listener, on --netpost-port.
  dovecot   peers/dovecot.sh (Maildir, user big1 / pass); IMAP on 10143 and POP3 on 10110
            unless busy (then free ports: DOVECOT_IMAP_PORT / DOVECOT_POP3_PORT).
Targets: APPEND rate >= 5x Dovecot's; SELECT and UID FETCH <= 2x Dovecot's time; SEARCH
SUBJECT and FROM <= 0.1x Dovecot's time; the session adds < 200 MiB to netpost's RSS.
--profile: py-spy the netpost server during its fill and, in one extra measure session after
the timed ones, during each measured command (collapsed stacks in $OUT; read them with
bench/profile_top.py). With --profile the fill figure is taken with the profiler attached.
Results: one JSON line per fill/session in $OUT (default $BENCH_ROOT/results/<time>-imap-bigbox/),
summary.md there, and the table + ratios on stdout. Exit 0 if every count checked.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

NP_USER, DV_USER, PASSWORD, BOX = "big1@bench.test", "big1", "pass", "bigbox"
FROM_TERM, BODY_TERM = "sender7@example.com", "omicron psi"
MIB = 1 << 20


P = B.peer_module("imap_bigbox.py")


def expected_hits(count: int) -> dict[str, int]:
    """Hits of the added searches, from the generator itself (seed 7, the fill's order)."""
    rnd = random.Random(7)
    body_hits = 0
    for i in range(count):
        msg = P.message(i, rnd)
        body = msg.split(b"\r\n\r\n", 1)[1].decode().lower()
        body_hits += BODY_TERM in body
    return {"subject": (count + 99) // 100, "from": sum(1 for i in range(count) if i % 50 == 7),
            "body": body_hits}


def dovecot_session_pid(before: set[int]) -> int | None:
    """The imap process Dovecot started for our session: vmail's newest `imap` process."""
    out = subprocess.run(["ps", "-u", "vmail", "-o", "pid=,comm="], capture_output=True,
                         text=True, check=False).stdout.split("\n")
    pids = [int(ln.split()[0]) for ln in out if ln.split()[1:] == ["imap"]]
    new = [p for p in pids if p not in before]
    return max(new or pids) if pids else None


def vmail_imap_pids() -> set[int]:
    out = subprocess.run(["ps", "-u", "vmail", "-o", "pid=,comm="], capture_output=True,
                         text=True, check=False).stdout.split("\n")
    return {int(ln.split()[0]) for ln in out if ln.split()[1:] == ["imap"]}


def timed(c, text: str, sink=None) -> tuple[float, bool]:
    t = time.monotonic()
    r = c.command(text, sink)
    return round(time.monotonic() - t, 3), P.ok(r)


def measure(port: int, user: str, count: int, hits: dict[str, int], rss=None,
            profile=None) -> dict:
    """One measure session. rss(): the server's RSS now (octets) or None. profile(phase) /
    profile(None): start / stop a profiler around each command (not timed then: the
    profiler's attach happens before the clock starts)."""
    prof = profile or (lambda phase: None)
    res: dict = {}
    errors = 0
    before = vmail_imap_pids() if rss is None else set()
    res["rss_before_connect"] = rss() if rss is not None else None
    c = P.connect(B.LOCALHOST, port, user, PASSWORD, 600)
    dv_pid = dovecot_session_pid(before) if rss is None else None

    def mem() -> int | None:
        if rss is not None:
            return rss()
        try:
            return B.rss(dv_pid) if dv_pid else None
        except (OSError, ValueError):
            return None

    res["rss_after_login"] = mem()
    exists: list[int] = []
    prof("select")
    res["select_s"], good = timed(c, f'SELECT "{BOX}"', lambda p: exists.append(
        int(p[0].split()[1])) if p[0].upper().endswith(b" EXISTS") else None)
    prof(None)
    res["exists"] = exists[-1] if exists else None
    errors += not good or res["exists"] != count

    n = [0]

    def count_fetch(parts):
        if b" FETCH " in parts[0]:
            n[0] += 1

    prof("fetch_all")
    res["fetch_all_s"], good = timed(c, "UID FETCH 1:* (UID FLAGS RFC822.SIZE)", count_fetch)
    prof(None)
    res["fetch_all_count"] = n[0]
    errors += not good or n[0] != count
    res["rss_after_fetch"] = mem()

    def search(key: str, name: str, want: int) -> int:
        found: list[bytes] = []
        prof(f"search_{key}")
        res[f"search_{key}_s"], good = timed(c, f"UID SEARCH {name}", lambda p: found.extend(
            p[0].split()[2:]) if p[0].upper().startswith(b"* SEARCH") else None)
        prof(None)
        res[f"search_{key}_hits"] = len(found)
        return (not good) + (len(found) != want)

    errors += search("subject", 'SUBJECT "x"', hits["subject"])
    first = max(1, count // 2 + 1) if count >= 2000 else 1
    last = min(count, first + 999)
    got = [0, 0]

    def body(parts):
        if b" FETCH " in parts[0] and len(parts) > 1:
            got[0] += 1
            got[1] += len(parts[1])

    prof("body_1000")
    res["body_1000_s"], good = timed(c, f"FETCH {first}:{last} BODY.PEEK[]", body)
    prof(None)
    res["body_1000_msgs"], res["body_1000_bytes"] = got
    errors += not good or got[0] != last - first + 1
    errors += search("from", f'FROM "{FROM_TERM}"', hits["from"])
    errors += search("body", f'BODY "{BODY_TERM}"', hits["body"])
    errors += search("subject_again", 'SUBJECT "x"', hits["subject"])
    res["rss_after_searches"] = mem()
    c.command("LOGOUT")
    c.sock.close()
    if rss is not None:
        time.sleep(0.5)
        res["rss_after_logout"] = rss()
    # what the session adds: from before it connected (netpost: the whole server process, so
    # LOGIN's argon2id buffer counts too) or from its own start (Dovecot: the session's process)
    base = res["rss_before_connect"] or res["rss_after_login"]
    if base and res["rss_after_fetch"]:
        res["session_rss_added_mib"] = round((res["rss_after_fetch"] - base) / MIB, 1)
    res["errors"] = errors
    return res


def server_cpu_fn(name: str, np_srv):
    """() -> CPU seconds the server has used so far (Dovecot: master + children)."""
    if name == "netpost":
        return np_srv.cpu
    master = int((B.BENCH_ROOT / "dovecot" / "run" / "master.pid").read_text().split()[0])
    return lambda: B.tree_cpu_s(master)


def cpu_split(busy0: float, srv0: float, cli0: float, server_cpu) -> dict:
    """CPU seconds since the marks: the server's, this client's, and everything else's (other
    sessions on the shared machine: /proc/stat busy time minus the two)."""
    busy, srv, cli = B.machine_busy_s() - busy0, server_cpu() - srv0, time.process_time() - cli0
    return {"server_cpu_s": round(srv, 2), "client_cpu_s": round(cli, 2),
            "other_cpu_s": round(busy - srv - cli, 2)}


def fill(port: int, user: str, a: argparse.Namespace) -> dict:
    c = P.connect(B.LOCALHOST, port, user, PASSWORD, 600)
    res = P.fill(c, BOX, a.messages, a.window, time.monotonic() + a.fill_timeout, True)
    c.command("LOGOUT")
    c.sock.close()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--messages", type=int, default=100_000,
                    help="messages in the box (default 100000; smaller for a smoke test)")
    ap.add_argument("--servers", default="netpost,dovecot")
    ap.add_argument("--measure-runs", type=int, default=1,
                    help="measure sessions per server after the fill (default 1)")
    ap.add_argument("--window", type=int, default=32, help="APPENDs in flight (default 32)")
    ap.add_argument("--fill-timeout", type=float, default=3600)
    ap.add_argument("--netpost-port", type=int, default=12143)
    ap.add_argument("--profile", action="store_true", help="py-spy netpost (fill + phases)")
    ap.add_argument("--keep", action="store_true", help="keep both filled boxes")
    a = ap.parse_args()
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    if set(servers) - {"netpost", "dovecot"}:
        ap.error("servers: netpost, dovecot")

    snap = B.snapshot_src()
    out = B.results_dir("imap-bigbox")
    B.note(f"results in {out}; peers from {B.PEERS}; {a.messages} messages")
    hits = expected_hits(a.messages)
    np_srv = None
    ports: dict[str, int] = {}
    if "netpost" in servers:
        np_srv = B.NetpostServer(B.BENCH_ROOT / "netpost" / "imap-bigbox", allow_plaintext=True)
        np_srv.create("bench.test", {NP_USER: PASSWORD})
        np_srv.start(imap=a.netpost_port)
        ports["netpost"] = a.netpost_port
        if not a.keep:
            B.on_exit(lambda: __import__("shutil").rmtree(np_srv.data, ignore_errors=True))
    if "dovecot" in servers:
        ports["dovecot"] = B.dovecot_ports()
        B.on_exit(lambda: B.peer("dovecot.sh", "stop", check=False))
        if not a.keep:
            B.on_exit(lambda: B.peer("dovecot.sh", "reset", DV_USER, check=False))
        B.peer("dovecot.sh", "start")
        B.peer("dovecot.sh", "reset", DV_USER)
    vers = B.versions(*(["dovecot.sh"] if "dovecot" in servers else []))
    vers.update(snap)
    vers["ports"] = ports
    B.append_jsonl(out / "versions.jsonl", vers)

    results: dict[str, dict] = {s: {} for s in servers}
    user = {"netpost": NP_USER, "dovecot": DV_USER}
    for name in servers:
        B.note(f"fill {name}: {a.messages} APPENDs")
        res: dict = {"server": name, "phase": "fill"}
        server_cpu = server_cpu_fn(name, np_srv)
        if name == "netpost" and a.profile:
            np_srv.profile_start(out / "netpost-fill.pyspy.txt")
        main0 = np_srv.cpu_main_thread() if name == "netpost" else 0
        busy0, srv0, cli0 = B.machine_busy_s(), server_cpu(), time.process_time()
        res.update(fill(ports[name], user[name], a))
        res.update(cpu_split(busy0, srv0, cli0, server_cpu))
        if name == "netpost":
            res["server_main_thread_cpu_s"] = round(np_srv.cpu_main_thread() - main0, 1)
            np_srv.profile_stop()
            res["rss_after_fill"] = np_srv.rss()
            du = subprocess.run(["du", "-sb", str(np_srv.data)], capture_output=True,
                                text=True, check=False).stdout.split()
            res["data_dir_octets"] = int(du[0]) if du else None
        res["loadavg1_after"] = os.getloadavg()[0]
        results[name]["fill"] = res
        B.append_jsonl(out / f"{name}__imap_bigbox.jsonl", res)
        B.note(f"  {name}: {res.get('fill_msgs_per_s')} APPEND/s in {res.get('fill_s')} s, "
               f"errors={res.get('fill_errors')}")

    sessions: dict[str, list[dict]] = {s: [] for s in servers}
    for i in range(1, a.measure_runs + 1):
        order = servers[(i - 1) % len(servers):] + servers[:(i - 1) % len(servers)]
        for name in order:
            B.note(f"measure {i}/{a.measure_runs}: {name}")
            rss = np_srv.rss if name == "netpost" and np_srv else None
            server_cpu = server_cpu_fn(name, np_srv)
            busy0, srv0, cli0 = B.machine_busy_s(), server_cpu(), time.process_time()
            res = measure(ports[name], user[name], a.messages, hits, rss)
            res.update(cpu_split(busy0, srv0, cli0, server_cpu))
            res.update({"server": name, "phase": "measure", "run": i,
                        "loadavg1_after": os.getloadavg()[0]})
            sessions[name].append(res)
            B.append_jsonl(out / f"{name}__imap_bigbox.jsonl", res)
            B.note("  " + " ".join(f"{k}={res.get(k)}" for k in (
                "select_s", "fetch_all_s", "search_subject_s", "search_from_s",
                "search_body_s", "body_1000_s", "session_rss_added_mib", "errors")))
    if a.profile and np_srv is not None:
        B.note("profiled measure session (netpost; not for the figures)")

        def prof(phase: str | None) -> None:
            if phase is None:
                np_srv.profile_stop()
            else:
                np_srv.profile_start(out / f"netpost-{phase}.pyspy.txt", rate=250)

        res = measure(ports["netpost"], NP_USER, a.messages, hits, np_srv.rss, prof)
        res.update({"server": "netpost", "phase": "measure-profiled"})
        B.append_jsonl(out / "netpost__imap_bigbox.jsonl", res)
    if np_srv is not None:
        np_srv.stop()

    summary, complete = summarize(servers, {s: results[s]["fill"] for s in servers}, sessions,
                                  a.messages, a.window, hits)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)
    print(f"\nraw results: {out}")
    if not complete:
        print("WARNING: some fill or session had errors (see JSON lines)")
    return 0 if complete else 1


# (label, key, format, target: (">=" | "<=", ratio) or None)
FIGURES = [
    ("fill: APPEND msgs/s", "fill_msgs_per_s", "{:,.0f}", (">=", 5.0)),
    ("fill time (s)", "fill_s", "{:,.1f}", None),
    ("SELECT (s)", "select_s", "{:.3f}", ("<=", 2.0)),
    ("UID FETCH 1:* (UID FLAGS RFC822.SIZE) (s)", "fetch_all_s", "{:.3f}", ("<=", 2.0)),
    ('UID SEARCH SUBJECT "x" (s)', "search_subject_s", "{:.3f}", ("<=", 0.1)),
    ("FETCH 1000 × BODY.PEEK[] (s)", "body_1000_s", "{:.3f}", None),
    (f'UID SEARCH FROM "{FROM_TERM}" (s)', "search_from_s", "{:.3f}", ("<=", 0.1)),
    (f'UID SEARCH BODY "{BODY_TERM}" (s)', "search_body_s", "{:.3f}", None),
    ('UID SEARCH SUBJECT "x" again (s)', "search_subject_again_s", "{:.3f}", None),
    ("RSS before connecting (MiB)", "rss_before_connect", "mib", None),
    ("RSS after LOGIN (MiB)", "rss_after_login", "mib", None),
    ("RSS after SELECT + UID FETCH (MiB)", "rss_after_fetch", "mib", None),
    ("RSS after the searches (MiB)", "rss_after_searches", "mib", None),
    ("RSS after LOGOUT (MiB)", "rss_after_logout", "mib", None),
    ("session adds (MiB)", "session_rss_added_mib", "{:.1f}", None),
    ("errors (NO/BAD, wrong counts)", "errors", "{:,.0f}", None),
]


def summarize(servers: list[str], fills: dict[str, dict], sessions: dict[str, list[dict]],
              messages: int, window: int, hits: dict[str, int]) -> tuple[str, bool]:
    """The first measure session of each server is the peer-bench figure (nothing has read the
    box since the fill: Dovecot's index cache holds no header yet) and carries the targets;
    later sessions ("warm": Dovecot has cached what the first one searched) are reported
    beside it, median [min–max]."""
    both = servers == ["netpost", "dovecot"]
    runs = max((len(v) for v in sessions.values()), default=0)

    def vals(name: str, key: str, warm: bool) -> list:
        if key.startswith("fill"):
            return [] if warm else [fills.get(name, {}).get(key)]
        rs = sessions.get(name, [])
        return [r.get(key) for r in (rs[1:] if warm else rs[:1])]

    def cell(v: list, fmt: str) -> tuple[str, float | None]:
        if fmt == "mib":
            v, fmt = [x / MIB if x else None for x in v], "{:,.1f}"
        return B.mmm(v, fmt), B.median(v)

    head = ["figure"] + [f"{s} (1st session)" for s in servers]
    if both:
        head += ["netpost / Dovecot", "target"]
    if runs > 1:
        head += [f"{s} (warm, {runs - 1})" for s in servers]
        if both:
            head += ["ratio (warm)"]
    rows = [head]
    verdicts = []
    for label, key, fmt, target in FIGURES:
        row = [label]
        meds = []
        for s in servers:
            text, m = cell(vals(s, key, False), fmt)
            row.append(text)
            meds.append(m)
        comparable = fmt != "mib" and key not in ("errors", "session_rss_added_mib")
        if both:
            r = meds[0] / meds[1] if comparable and meds[0] is not None and meds[1] else None
            row.append(f"{r:.3f}×" if r is not None else "–")
            if target and r is not None:
                op, t = target
                met = r >= t if op == ">=" else r <= t
                how = "" if met else (f", {t / r:.1f}× short" if op == ">=" else
                                      f", {r / t:.1f}× over")
                row.append(f"{'≥' if op == '>=' else '≤'} {t:g}×: "
                           f"{'met' if met else 'MISSED'}{how}")
                verdicts.append((label, r, op, t, met))
            else:
                row.append("–")
        if runs > 1:
            wmeds = []
            for s in servers:
                text, m = cell(vals(s, key, True), fmt)
                row.append(text if not key.startswith("fill") else "–")
                wmeds.append(m)
            if both:
                row.append(f"{wmeds[0] / wmeds[1]:.3f}×" if comparable and wmeds[0] is not None
                           and wmeds[1] else "–")
        rows.append(row)
    lines = [f"IMAP big mailbox: {messages:,} messages (350–600 B) APPENDed with LITERAL+, "
             f"{window} in flight, box selected; then {runs} measure session(s) per server "
             f"(the 1st carries the targets); hits: SUBJECT {hits['subject']}, FROM "
             f"{hits['from']}, BODY {hits['body']}", "", B.table(rows), "",
             "RSS: netpost = the whole server process; Dovecot = its imap process for the "
             "session (from after LOGIN).", ""]
    for s in servers:
        f = fills.get(s, {})
        lines.append(f"- {s} fill: CPU s: server {f.get('server_cpu_s')}, client "
                     f"{f.get('client_cpu_s')}, others on the machine {f.get('other_cpu_s')} "
                     f"(of {f.get('fill_s')} s × 2 cores)")
    if "netpost" in servers:
        f = fills.get("netpost", {})
        cpu = [r.get("server_cpu_s") for r in sessions.get("netpost", [])]
        lines.append(f"- netpost fill: server CPU {f.get('server_cpu_s')} s (event-loop thread "
                     f"{f.get('server_main_thread_cpu_s')} s), RSS after the fill "
                     f"{(f.get('rss_after_fill') or 0) / MIB:,.1f} MiB, data dir "
                     f"{(f.get('data_dir_octets') or 0) / MIB:,.1f} MiB; server CPU per "
                     f"measure session {B.mmm(cpu, '{:.2f}')} s")
    for label, r, op, t, met in verdicts:
        lines.append(f"- {label}: netpost / Dovecot {r:.3f}× (target {op} {t:g}×: "
                     f"{'MET' if met else 'MISSED'})")
    complete = all(r.get("errors") == 0 for rs in sessions.values() for r in rs) and all(
        fills.get(s, {}).get("fill_errors") == 0 for s in servers)
    if "netpost" in servers:
        first = vals("netpost", "session_rss_added_mib", False)
        added = first[0] if first else None
        met = added is not None and added < 200
        lines.append(f"- netpost RSS added by the 1st session (before connecting → after SELECT "
                     f"+ UID FETCH 1:*): {added} MiB; later sessions "
                     f"{B.mmm(vals('netpost', 'session_rss_added_mib', True), '{:.1f}')} MiB "
                     f"(target < 200 MiB: {'MET' if met else 'MISSED'})")
    return "\n".join(lines), complete


def summarize_dir(out: Path) -> str:
    """Re-make the summary from a results directory's JSON lines (--summarize DIR)."""
    import json

    fills: dict[str, dict] = {}
    sessions: dict[str, list[dict]] = {}
    servers = []
    for name in ("netpost", "dovecot"):
        path = out / f"{name}__imap_bigbox.jsonl"
        if not path.exists():
            continue
        servers.append(name)
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("phase") == "fill":
                fills[name] = r
            elif r.get("phase") == "measure":
                sessions.setdefault(name, []).append(r)
    count = (fills.get(servers[0]) or sessions[servers[0]][0]).get("messages") or \
        sessions[servers[0]][0]["exists"]
    window = 32
    hits = expected_hits(count)
    return summarize(servers, fills, sessions, count, window, hits)[0]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":
        print(summarize_dir(Path(sys.argv[2])))
        sys.exit(0)
    sys.exit(main())
