#!/usr/bin/env python3
"""Web API benchmark: list 50 messages of a 100,000-message mailbox.

usage: bench/api_list.py [--messages 100000] [--requests 300] [--port 12080] [--keep]
                         [--fill-only]

Setup: a snapshot of src/ (benchlib), a fresh data dir $BENCH_ROOT/netpost/api-list with
domain bench.test and user big1@bench.test; N messages (350-600 octets, 50 senders, subjects
numbered) imported into INBOX with `netpost import` from a generated mbox; an API token made
with `netpost token create`; netpost serving only the http listener on 127.0.0.1:--port.
Measure: one keep-alive HTTP/1.1 connection (http.client), each request timed from send to
the last octet of the answer, JSON parsed and checked (50 messages, total = N):
  first     GET /api/v1/mailboxes/{INBOX}/messages?limit=50          (the newest page)
  deep      GET ...?limit=50&before=<random UID>                     (any page)
  walk      the first page, then 20 pages following next_before
  changed   the first page right after a flag change (untimed) elsewhere in the mailbox:
            its total is counted again (otherwise remembered per HIGHESTMODSEQ)
  mailboxes GET /api/v1/mailboxes (six mailboxes with message and unseen counts; reported,
            no target)
after 20 warm-up requests.  Target: the median of first, deep and changed <= 50 ms.
Results: JSON lines and summary.md in $OUT (default $BENCH_ROOT/results/<time>-api-list/).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

USER, PASSWORD = "big1@bench.test", "pass"
TARGET_MS = 50.0


def write_mbox(path: Path, count: int) -> None:
    rnd = random.Random(11)
    words = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi "
             "omicron pi rho sigma tau upsilon phi chi psi omega").split()
    with path.open("wb") as f:
        for i in range(count):
            sender = f"sender{i % 50}@example.com"
            body = " ".join(rnd.choice(words) for _ in range(rnd.randint(30, 70)))
            f.write(f"From {sender} Mon Dec  7 00:00:00 2026\n"
                    f"From: Sender {i % 50} <{sender}>\nTo: {USER}\n"
                    f"Subject: message {i} about {rnd.choice(words)}\n"
                    f"Date: Mon, 07 Dec 2026 00:00:00 +0000\n"
                    f"Message-ID: <{i}.bench@example.com>\n\n{body}\n\n".encode())


def run_cli(server: B.NetpostServer, *args: str) -> str:
    cmd, env = B.netpost_cmd()
    return subprocess.run([*cmd, "--data", str(server.data), *args], text=True, check=True,
                          capture_output=True, timeout=3600, env=env).stdout


class Client:
    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection(B.LOCALHOST, port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, method: str = "GET", body: dict | None = None
            ) -> tuple[float, dict]:
        t = time.perf_counter()
        headers = self.headers | ({"Content-Type": "application/json"} if body else {})
        self.conn.request(method, path, headers=headers,
                          body=json.dumps(body).encode() if body else None)
        r = self.conn.getresponse()
        body = r.read()
        elapsed = (time.perf_counter() - t) * 1000
        if r.status != 200:
            raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
        return elapsed, json.loads(body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=300, help="timed requests per kind")
    ap.add_argument("--port", type=int, default=12080)
    ap.add_argument("--keep", action="store_true",
                    help="reuse a data dir filled by an earlier run with --keep")
    ap.add_argument("--fill-only", action="store_true",
                    help="fill the mailbox and stop (then measure with --keep)")
    a = ap.parse_args()
    out = B.results_dir("api-list")
    info = B.snapshot_src()
    B.append_jsonl(out / "versions.jsonl", {**B.versions(), **info})
    data = B.BENCH_ROOT / "netpost" / "api-list"
    server = B.NetpostServer(data)
    marker = data / f".filled-{a.messages}"
    if not (a.keep and marker.exists()):
        server.create("bench.test", {USER: PASSWORD})
        mbox = data.parent / "api-list.mbox"
        B.note(f"writing {a.messages} messages to {mbox}")
        write_mbox(mbox, a.messages)
        t = time.monotonic()
        run_cli(server, "import", str(mbox), "--user", USER, "--mailbox", "INBOX",
                "--format", "mbox")
        B.note(f"imported in {time.monotonic() - t:.1f} s")
        mbox.unlink()
        marker.write_text("")
    if a.fill_only:
        return 0
    token = run_cli(server, "token", "create", USER, "--name", "bench").strip()
    port = B.free_port(a.port)
    server.serve({"http": port})
    client = Client(port, token)
    _, boxes = client.get("/api/v1/mailboxes")
    inbox = next(b for b in boxes["mailboxes"] if b["name"] == "INBOX")
    if inbox["messages"] != a.messages:
        raise SystemExit(f"INBOX holds {inbox['messages']} messages, not {a.messages}")
    base = f"/api/v1/mailboxes/{inbox['id']}/messages?limit=50"
    uidnext = inbox["uidnext"]

    def check(page: dict) -> None:
        if page["total"] != a.messages or len(page["messages"]) != 50:
            raise RuntimeError(f"bad page: total {page['total']}, "
                               f"{len(page['messages'])} messages")

    for _ in range(20):  # warm-up: the connection, the token lookup, SQLite's pages
        client.get(base)
    rnd = random.Random(5)
    times: dict[str, list[float]] = {"first": [], "deep": [], "walk": []}
    cpu0 = server.cpu()
    for _ in range(a.requests):
        ms, page = client.get(base)
        check(page)
        times["first"].append(ms)
        ms, page = client.get(f"{base}&before={rnd.randint(51, uidnext - 1)}")
        check(page)
        times["deep"].append(ms)
    for _ in range(max(1, a.requests // 20)):
        ms, page = client.get(base)
        times["walk"].append(ms)
        for _ in range(20):
            ms, page = client.get(f"{base}&before={page['next_before']}")
            check(page)
            times["walk"].append(ms)
    # After a change: a flag set on some message (not timed) moves HIGHESTMODSEQ, so the
    # next page's total is counted again instead of remembered.
    times["changed"] = []
    one = f"/api/v1/mailboxes/{inbox['id']}/messages"
    for _ in range(max(3, a.requests // 10)):
        uid = rnd.randint(1, uidnext - 1)
        for change in ("add", "remove"):  # each of the two changes the message's flags
            _, flagged = client.get(f"{one}/{uid}/flags", "POST", {change: ["\\Flagged"]})
            if ("\\Flagged" in flagged["flags"]) != (change == "add"):
                raise RuntimeError(f"flag {change} did not take: {flagged}")
            ms, page = client.get(base)
            check(page)
            times["changed"].append(ms)
    cpu = server.cpu() - cpu0
    times["mailboxes"] = []  # GET /mailboxes: every mailbox with its counts (not a target)
    for _ in range(max(5, a.requests // 10)):
        ms, _ = client.get("/api/v1/mailboxes")
        times["mailboxes"].append(ms)
    n = sum(len(v) for k, v in times.items() if k != "mailboxes")
    server.stop()

    rows = [["request", "median ms", "p95 ms", "min-max ms", "n"]]
    record: dict = {"messages": a.messages, "server_cpu_ms_per_request": round(cpu / n * 1000,
                                                                                3)}
    for kind, values in times.items():
        values.sort()
        med = values[len(values) // 2]
        p95 = values[int(len(values) * 0.95)]
        rows.append([kind, f"{med:.2f}", f"{p95:.2f}", f"{values[0]:.2f}-{values[-1]:.2f}",
                     str(len(values))])
        record[kind] = {"median_ms": round(med, 3), "p95_ms": round(p95, 3),
                        "min_ms": round(values[0], 3), "max_ms": round(values[-1], 3),
                        "n": len(values)}
    B.append_jsonl(out / "api-list.jsonl", record)
    met = all(record[k]["median_ms"] <= TARGET_MS for k in ("first", "deep", "changed"))
    summary = (f"{B.table(rows)}\n\nserver CPU per request: "
               f"{record['server_cpu_ms_per_request']} ms\n"
               f"target: median <= {TARGET_MS:.0f} ms: {'met' if met else 'NOT met'}\n")
    (out / "summary.md").write_text(summary)
    print(summary)
    print(f"results: {out}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
