#!/usr/bin/env python3
"""Relay throughput: netpost vs Postfix relaying the same load to the same smtp-sink, one run.

usage: bench/relay_throughput.py [--runs 3] [--servers netpost,postfix] [--messages 5000]
           [--length 10240] [--recipients 50] [--rcpts-per-message 1] [--clients 8]
           [--concurrency N] [--dkim] [--profile] [--keep]
           [--sink-port 12526] [--netpost-port 12587] [--postfix-port 10027]

Issue 7's target: 5,000 x 10 KiB messages submitted for 50 remote recipients, time from the
first submission to the last remote 250, against Postfix relaying the same load to the same
sink in the same run; netpost >= 1.0x Postfix (Postfix's time / netpost's time).

The remote: Postfix's smtp-sink (`smtp-sink -c -4 -u nobody 127.0.0.1:SINK 1024`), restarted
for every run. It answers at once, throws mail away, and its -c counters (one line per "." and
per QUIT, written unbuffered to a file) tell when the last message got its 250. It offers no
STARTTLS, so both relays send in clear (netpost `[relay] tls = "none"`, Postfix
`smtp_tls_security_level = none`) and do the same work.

The load (the same client for both, `--clients` processes, each one SMTP connection kept for
all its messages, smtplib, no PIPELINING): message i (10,240 octets in all, header + body,
CRLF lines) goes to `--rcpts-per-message` of rcpt0..rcpt49@remote.test starting at rcpt(i mod
50), so every recipient gets 100 of the 5,000. The clock starts when the client processes are
released (connect and AUTH are inside the timed span).
  netpost  a fresh data dir per run: domain bench.test, user sender@bench.test; only the
           submission listener (127.0.0.1:--netpost-port) on; `[auth] allow_plaintext = true`
           (AUTH PLAIN without TLS: loopback only), `[relay] smarthost = "127.0.0.1:SINK"`,
           tls none, dkim_sign false (Postfix signs nothing; --dkim turns signing on). The
           clients AUTH once per connection and submit as sender@bench.test.
  postfix  a private instance under $BENCH_ROOT/postfix-relay (own main.cf/master.cf, queue
           and data directories; /etc/postfix is not touched), fresh per run: smtpd on
           127.0.0.1:--postfix-port taking relay from mynetworks (127.0.0.0/8, no AUTH),
           `relayhost = [127.0.0.1]:SINK`, otherwise Postfix's defaults (queue files fsync'd
           before 250, destination concurrency 20, connection cache on demand).
  --concurrency N sets both relays' connections to the sink to N (netpost
  connections_per_domain, Postfix default_destination_concurrency_limit); default: each
  one's own default (netpost 5, Postfix 20).

Figures per run (JSON line in $OUT, default $BENCH_ROOT/results/<time>-relay/):
  submit_s  clock start -> every client got its last 250 (the submission rate);
  sink_s    clock start -> the sink counted the last message (the issue's "last remote 250");
  drain_s   clock start -> the relay's queue is empty after that (netpost: no row in
            queue_recipients of DIR/netpost.db; Postfix: no file under queue/{maildrop,
            incoming,active,deferred,hold}) -- the headline figure;
  server CPU seconds (netpost process; Postfix master and every child it reaped), netpost's
  peak RSS (VmHWM), the machine's busy CPU seconds in the span, load average before.
Runs alternate the order of the servers. Exit 0 if every run accepted every message and the
sink counted every one.
--profile: py-spy netpost during its runs (collapsed stacks in $OUT; bench/profile_top.py).
Which netpost: $NETPOST_SRC (default this repo's src/) is snapshotted once per invocation.
"""

from __future__ import annotations

import argparse
import email.utils
import multiprocessing as mp
import os
import re
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

DOMAIN, SENDER, PASSWORD = "bench.test", "sender@bench.test", "pass"
REMOTE = "remote.test"
POSTFIX_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
POLL_S = 0.02


# --- the load --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    messages: int
    length: int
    recipients: int
    per_message: int
    clients: int

    def rcpts(self, i: int) -> list[str]:
        return [f"rcpt{(i + k) % self.recipients}@{REMOTE}" for k in range(self.per_message)]

    def message(self, i: int, body: bytes) -> bytes:
        head = (f"From: <{SENDER}>\r\nTo: {', '.join(f'<{r}>' for r in self.rcpts(i))}\r\n"
                f"Subject: relay bench {i}\r\nDate: {email.utils.formatdate()}\r\n"
                f"Message-ID: <relay-{i}-{os.getpid()}@{DOMAIN}>\r\n\r\n").encode()
        return head + body[: max(self.length - len(head), 2)]


def make_body(length: int) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnop.\r\n"
    return (line * (length // len(line) + 2))[:length - 2] + b"\r\n"


def _client(k: int, port: int, auth: bool, load: Load, go: mp.synchronize.Event,
            results: mp.Queue) -> None:
    """One submitting connection: messages k, k+clients, ...; reconnects after a failure."""
    B._cleanups.clear()  # a forked client must not stop the parent's servers on a signal
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    body = make_body(load.length)
    mine = list(range(k, load.messages, load.clients))
    prepared = [(load.rcpts(i), load.message(i, body)) for i in mine]
    accepted, errors = 0, []
    go.wait()
    s: smtplib.SMTP | None = None
    for rcpts, msg in prepared:
        for _attempt in range(3):
            try:
                if s is None:
                    s = smtplib.SMTP(B.LOCALHOST, port, local_hostname="client.bench.test",
                                     timeout=300)
                    s.ehlo()
                    if auth:
                        s.login(SENDER, PASSWORD)
                refused = s.sendmail(SENDER, rcpts, msg)
                accepted += 1
                if refused:
                    errors.append(f"refused {refused}")
                break
            except (smtplib.SMTPException, OSError) as exc:
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}")
                try:
                    if s is not None:
                        s.close()
                finally:
                    s = None
    if s is not None:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            s.close()
    results.put({"client": k, "accepted": accepted, "errors": errors, "done": time.time()})


# --- the remote: smtp-sink -------------------------------------------------------------------
class Sink:
    def __init__(self, port: int, out: Path) -> None:
        self.port, self.out = port, out
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        B.require_free(self.port)
        self.proc = subprocess.Popen(
            ["smtp-sink", "-c", "-4", "-u", "nobody", "-h", f"mx.{REMOTE}",
             f"{B.LOCALHOST}:{self.port}", "1024"],
            stdout=self.out.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        B.on_exit(self.stop)
        for _ in range(100):
            if not B.port_free(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"smtp-sink did not listen on {self.port}")

    def counts(self) -> tuple[int, int]:
        """(messages, sessions) the sink has counted so far."""
        try:
            with self.out.open("rb") as f:
                f.seek(max(0, self.out.stat().st_size - 200))
                tail = f.read()
        except OSError:
            return 0, 0
        m = re.findall(rb"sess=(\d+) quit=\d+ mesg=(\d+)", tail)
        return (int(m[-1][1]), int(m[-1][0])) if m else (0, 0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


# --- the relays --------------------------------------------------------------------------------
class NetpostRelay(B.NetpostServer):
    """netpost with only its submission listener on, relaying through a smart host."""

    def configure(self, sink_port: int, concurrency: int | None, dkim: bool) -> None:
        self.create(DOMAIN, {SENDER: PASSWORD})
        lines = ["[auth]", "allow_plaintext = true", "", "[relay]",
                 f'smarthost = "{B.LOCALHOST}:{sink_port}"', 'tls = "none"',
                 f"dkim_sign = {'true' if dkim else 'false'}"]
        if concurrency:
            lines += [f"connections_per_domain = {concurrency}",
                      f"connections = {max(concurrency, 50)}"]
        (self.data / "netpost.toml").write_text("\n".join(lines) + "\n")

    def start_submission(self, port: int) -> None:
        self.serve({"submission": port})

    def pending(self, db: list[sqlite3.Connection]) -> int:
        if not db:
            db.append(sqlite3.connect(f"file:{self.data / 'netpost.db'}?mode=ro", uri=True,
                                      timeout=10))
        return int(db[0].execute("SELECT count(*) FROM queue_recipients").fetchone()[0])


class PostfixRelay:
    """A private Postfix instance relaying everything to the sink."""

    def __init__(self, port: int, sink_port: int, concurrency: int | None) -> None:
        self.root = B.BENCH_ROOT / "postfix-relay"
        self.conf, self.queue = self.root / "etc", self.root / "queue"
        self.port, self.sink_port, self.concurrency = port, sink_port, concurrency

    def start(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        data = self.root / "data"
        for d in (self.conf, self.queue, data):
            d.mkdir(parents=True)
        shutil.chown(data, "postfix")
        shutil.copy("/etc/postfix/master.cf", self.conf / "master.cf")  # Debian's stock one
        if Path("/etc/postfix/dynamicmaps.cf").exists():
            shutil.copy("/etc/postfix/dynamicmaps.cf", self.conf)
        main = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue}",
            f"data_directory = {data}",
            "myhostname = relay.bench.test",
            f"mydomain = {DOMAIN}",
            "myorigin = $mydomain",
            "mydestination =",
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            f"relayhost = [{B.LOCALHOST}]:{self.sink_port}",
            "smtp_tls_security_level = none",
            "smtpd_tls_security_level = none",
            f"maillog_file = {self.root}/postfix.log",
            f"maillog_file_prefixes = {B.BENCH_ROOT}",
            "biff = no",
            "alias_maps =",
            "alias_database =",
        ]
        if self.concurrency:
            main += [f"default_destination_concurrency_limit = {self.concurrency}",
                     f"initial_destination_concurrency = {min(self.concurrency, 5)}"]
        (self.conf / "main.cf").write_text("\n".join(main) + "\n")
        c = str(self.conf)
        B.require_free(self.port)
        subprocess.run(["postconf", "-c", c, "-M#", "smtp/inet"], check=True)
        subprocess.run(["postconf", "-c", c, "-Me", f"{B.LOCALHOST}:{self.port}/inet = "
                        f"{B.LOCALHOST}:{self.port} inet n - n - - smtpd"], check=True)
        subprocess.run(["postconf", "-c", c, "-F", "*/*/chroot = n"], check=True)
        subprocess.run(["postfix", "-c", c, "check"], check=True)
        subprocess.run(["postfix", "-c", c, "start"], check=True, capture_output=True)
        B.on_exit(self.stop)
        for _ in range(100):
            if not B.port_free(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"postfix did not listen on {self.port}; see {self.root}")

    def master_pid(self) -> int:
        return int((self.queue / "pid" / "master.pid").read_text().split()[0])

    def pending(self) -> int:
        n = 0
        for q in POSTFIX_QUEUES:
            for _dirpath, _dirs, files in os.walk(self.queue / q):
                n += len(files)
        return n

    def stop(self) -> None:
        if (self.conf / "main.cf").exists():
            subprocess.run(["postfix", "-c", str(self.conf), "stop"], check=False,
                           capture_output=True)
            for _ in range(50):  # wait until the master has gone (it holds the port)
                if not (self.queue / "pid" / "master.pid").exists() or B.port_free(self.port):
                    break
                time.sleep(0.1)


# --- one measurement -------------------------------------------------------------------------
def measure(port: int, auth: bool, load: Load, sink: Sink, pending, timeout: float,
            cpu=None) -> dict:
    """Release the clients, then watch the sink and the relay's queue until both are done."""
    ctx = mp.get_context("fork")
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(k, port, auth, load, go, results))
             for k in range(load.clients)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every client build its messages before the clock starts
    cpu0 = cpu() if cpu else None
    busy0, load0 = B.machine_busy_s(), os.getloadavg()[0]
    t0 = time.time()
    go.set()
    done: list[dict] = []
    t_submit = t_sink = t_drain = None
    expected = load.messages
    deadline = t0 + timeout
    peak_pending = 0
    while time.time() < deadline:
        while not results.empty():
            done.append(results.get())
        now = time.time()
        if t_submit is None and len(done) == load.clients:
            t_submit = max(d["done"] for d in done)
        msgs, _sess = sink.counts()
        if t_sink is None and msgs >= expected:
            t_sink = now
        n = pending()
        peak_pending = max(peak_pending, n)
        if t_submit is not None and t_sink is not None and n == 0:
            t_drain = now
            break
        time.sleep(POLL_S)
    busy = B.machine_busy_s() - busy0
    cpu_s = round(cpu() - cpu0, 2) if cpu and cpu0 is not None else None
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
    while not results.empty():
        done.append(results.get())
    msgs, sess = sink.counts()
    accepted = sum(d["accepted"] for d in done)
    errs = [e for d in done for e in d["errors"]][:5]
    res = {
        "accepted": accepted, "client_errors": errs,
        "sink_messages": msgs, "sink_sessions": sess,
        "submit_s": round(t_submit - t0, 3) if t_submit else None,
        "sink_s": round(t_sink - t0, 3) if t_sink else None,
        "drain_s": round(t_drain - t0, 3) if t_drain else None,
        "submitted_msgs_per_s": round(accepted / (t_submit - t0), 1) if t_submit else None,
        "relayed_msgs_per_s": round(msgs / (t_drain - t0), 1) if t_drain else None,
        "peak_pending_recipients": peak_pending,
        "server_cpu_s": cpu_s, "machine_busy_cpu_s": round(busy, 1),
        "loadavg1_before": load0,
    }
    res["complete"] = (accepted == load.messages and msgs >= expected and t_drain is not None
                       and not errs)
    if t_drain is None:
        res["error"] = f"not drained in {timeout} s (pending {pending()}, sink {msgs})"
    return res


def run_netpost(i: int, a: argparse.Namespace, load: Load, out: Path) -> dict:
    sink = Sink(a.sink_port, out / f"sink-netpost-run{i}.txt")
    sink.start()
    srv = NetpostRelay(B.BENCH_ROOT / "netpost" / f"relay-run{i}")
    try:
        srv.configure(a.sink_port, a.concurrency, a.dkim)
        srv.start_submission(a.netpost_port)
        if a.profile:
            srv.profile_start(out / f"netpost-relay-run{i}.pyspy.txt")
        db: list[sqlite3.Connection] = []
        res = measure(a.netpost_port, True, load, sink, lambda: srv.pending(db), a.timeout,
                      cpu=srv.cpu)
        res["server_peak_rss_mib"] = round(B.rss(srv.proc.pid, "VmHWM") / 2**20, 1)
        srv.profile_stop()
        for c in db:
            c.close()
    finally:
        srv.stop()
        time.sleep(0.3)
        res_sessions = sink.counts()[1]
        sink.stop()
    res["sink_sessions"] = res_sessions  # counted as sessions end: after the relay stopped
    if not a.keep:
        shutil.rmtree(srv.data, ignore_errors=True)
    return res


def run_postfix(i: int, a: argparse.Namespace, load: Load, out: Path) -> dict:
    sink = Sink(a.sink_port, out / f"sink-postfix-run{i}.txt")
    sink.start()
    pf = PostfixRelay(a.postfix_port, a.sink_port, a.concurrency)
    try:
        pf.start()
        master = pf.master_pid()
        res = measure(a.postfix_port, False, load, sink, pf.pending, a.timeout,
                      cpu=lambda: B.tree_cpu_s(master))
    finally:
        pf.stop()
        time.sleep(0.3)
        res_sessions = sink.counts()[1]
        sink.stop()
    res["sink_sessions"] = res_sessions  # counted as sessions end: after the relay stopped
    return res


def netpost_can_relay() -> str | None:
    """None if the snapshot's netpost has the relay, else why not."""
    cmd, env = B.netpost_cmd()
    p = subprocess.run([cmd[0], "-c", "import netpost.mail.relay, netpost.relay.service"],
                       env=env, capture_output=True, text=True, check=False)
    return None if p.returncode == 0 else p.stderr.strip().splitlines()[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--runs", type=int, default=3, help="runs per server (default 3)")
    ap.add_argument("--servers", default="netpost,postfix")
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--length", type=int, default=10240, help="message octets (default 10240)")
    ap.add_argument("--recipients", type=int, default=50, help="distinct remote recipients")
    ap.add_argument("--rcpts-per-message", type=int, default=1)
    ap.add_argument("--clients", type=int, default=8, help="parallel submitting connections")
    ap.add_argument("--concurrency", type=int, default=None,
                    help="connections to the sink, both relays (default: each one's own)")
    ap.add_argument("--dkim", action="store_true", help="netpost DKIM-signs (Postfix does not)")
    ap.add_argument("--sink-port", type=int, default=12526)
    ap.add_argument("--netpost-port", type=int, default=12587)
    ap.add_argument("--postfix-port", type=int, default=10027)
    ap.add_argument("--timeout", type=float, default=900.0, help="per run (s)")
    ap.add_argument("--profile", action="store_true", help="py-spy netpost during its runs")
    ap.add_argument("--keep", action="store_true", help="keep netpost data dirs")
    a = ap.parse_args()
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    if set(servers) - {"netpost", "postfix"}:
        ap.error("servers are netpost and/or postfix")
    for tool in ("smtp-sink", "postfix", "postconf"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install postfix")
    load = Load(a.messages, a.length, a.recipients, a.rcpts_per_message, a.clients)

    snap = B.snapshot_src()
    if "netpost" in servers and (why := netpost_can_relay()):
        raise SystemExit(f"this netpost has no relay yet ({why}); --servers postfix, or "
                         "NETPOST_SRC=<a tree with src/netpost/mail/relay.py>")
    out = B.results_dir("relay")
    B.note(f"results in {out}")
    vers = B.versions()
    vers["postfix"] = "postfix " + B._cmd(["postconf", "-d", "-h", "mail_version"])
    vers["smtp-sink"] = vers["postfix"]
    src = Path(os.environ.get("NETPOST_SRC", B.REPO / "src"))
    vers["netpost (source tree)"] = B._cmd(["git", "-C", str(src), "rev-parse", "--short",
                                            "HEAD"]) + f" {src}"
    vers.update(snap)
    vers["load"] = {"messages": a.messages, "length": a.length, "recipients": a.recipients,
                    "rcpts_per_message": a.rcpts_per_message, "clients": a.clients,
                    "concurrency": a.concurrency, "dkim": a.dkim}
    B.append_jsonl(out / "versions.jsonl", vers)

    results: dict[str, list[dict]] = {s: [] for s in servers}
    for i in range(1, a.runs + 1):
        order = servers[(i - 1) % len(servers):] + servers[:(i - 1) % len(servers)]
        for name in order:
            B.note(f"run {i}/{a.runs}: {name}")
            res = (run_netpost if name == "netpost" else run_postfix)(i, a, load, out)
            res.update({"server": name, "run": i})
            results[name].append(res)
            B.append_jsonl(out / f"{name}__relay_throughput.jsonl", res)
            B.note(f"  {name}: submit {res['submit_s']} s, last at sink {res['sink_s']} s, "
                   f"queue empty {res['drain_s']} s, accepted {res['accepted']}, sink "
                   f"{res['sink_messages']} in {res['sink_sessions']} sessions, cpu "
                   f"{res['server_cpu_s']} s, errors {res['client_errors'] or '-'}"
                   + (f" ({res['error']})" if res.get("error") else ""))

    def col(name: str, key: str) -> list:
        return [r.get(key) for r in results.get(name, [])]

    rows = [["relay", "submitted (s)", "last remote 250 (s)", "queue empty (s)",
             "relayed msgs/s", "server CPU (s)", "sink sessions", "complete"]]
    labels = {"netpost": "netpost (submission + AUTH, smarthost)",
              "postfix": "Postfix (smtpd, relayhost)"}
    for s in servers:
        rows.append([labels[s], B.mmm(col(s, "submit_s"), "{:.2f}"),
                     B.mmm(col(s, "sink_s"), "{:.2f}"), B.mmm(col(s, "drain_s"), "{:.2f}"),
                     B.mmm(col(s, "relayed_msgs_per_s")),
                     B.mmm(col(s, "server_cpu_s"), "{:.1f}"),
                     B.mmm(col(s, "sink_sessions")),
                     f"{sum(bool(x) for x in col(s, 'complete'))}/{len(results[s])}"])
    lines = [f"Relay throughput: {a.messages} x {a.length} octets, {a.rcpts_per_message} of "
             f"{a.recipients} recipients each, {a.clients} clients, {a.runs} run(s) per relay, "
             "median [min-max]", "", B.table(rows), ""]
    if "netpost" in servers and "postfix" in servers:
        for key, what in (("drain_s", "queue empty"), ("sink_s", "last remote 250")):
            text, _ = B.ratio_line(f"Postfix time / netpost time ({what}, medians)",
                                   B.median(col("postfix", key)),
                                   B.median(col("netpost", key)), 1.0)
            lines.append("- " + text)
        rss = col("netpost", "server_peak_rss_mib")
        lines.append(f"- netpost peak RSS: {B.mmm(rss, '{:.0f}')} MiB")
    summary = "\n".join(lines)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)
    print(f"\nraw results: {out}")
    complete = all(r.get("complete") for rs in results.values() for r in rs)
    if not complete:
        print("WARNING: some run did not accept/relay every message (see the JSON lines)")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
