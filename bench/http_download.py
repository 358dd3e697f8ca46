#!/usr/bin/env python3
"""HTTP download: a 200 MiB file shared by netpost vs the same file served by nginx, one run.

usage: bench/http_download.py [--runs 10] [--servers netpost,nginx] [--size 200]
           [--parallel 4] [--nginx-workers auto] [--profile] [--keep]
           [--netpost-port 13080] [--nginx-port 13081]

Issue 8's target: netpost's shared-file download >= 0.8x nginx's MiB/s, both measured in the
same run with the same client.

The file: S MiB (--size, default 200) of random octets, written once per invocation into the
netpost user's tree (DATA/files/bench@bench.test/big.bin) and read once before the clock, so it
is in the page cache; nginx serves that very file (same inode), netpost the share made of it by
`netpost --data DIR share add bench@bench.test /big.bin` (the printed URL's /s/<token> path,
asked on 127.0.0.1:PORT).
The client (the same for both): curl (Debian), `curl -s -o /dev/null -w ... URL`, HTTP/1.1,
one connection per download; a run is, per server (order rotating between runs):
  single    one download; MiB/s = S / curl's time_total (connect to last octet)
  parallel  --parallel (4) curl processes started together; MiB/s = N x S / (the last one's
            end - the first one's start, the bench's clock; curl start-up included)
each download checked: status 200 and S MiB received. Before the first run, one untimed
download from each server (warm-up).

The servers, both on 127.0.0.1, started once per invocation:
  netpost  `netpost serve --listen http=127.0.0.1:PORT`, every other listener off, a fresh data
           dir: domain bench.test, user bench@bench.test; defaults otherwise (uvicorn on
           netpost's socket, h11, the file sent in 256 KiB pread pieces: web/files.py).
  nginx    Debian's nginx (nginx-light), `nginx -p PREFIX -c PREFIX/nginx.conf -e
           PREFIX/error.log` with a private config in $BENCH_ROOT/http-bench/nginx (own pid,
           logs, temp paths; /etc/nginx is not read), `daemon off`, `user root` (to read the
           netpost data dir), worker_processes --nginx-workers (default auto, as Debian's
           nginx.conf: 2 here), sendfile on and tcp_nopush on (as Debian's nginx.conf),
           access_log to PREFIX/access.log, `root` = the netpost user's tree.
Per download (JSON line in $OUT, default $BENCH_ROOT/results/<time>-http/): curl's figures
(status, size, time_total, time_starttransfer), the server's CPU seconds over the download
(netpost: its process; nginx: master + workers), the client's (curl), the machine's busy CPU
seconds and "other" (busy - server - client: other sessions' work), load average.
The summary prints median [min-max] MiB/s and the ratio netpost/nginx of the medians (MiB =
2^20 octets).
--profile: py-spy (the project venv's) records netpost during its downloads (collapsed stacks
in $OUT; summarise with bench/profile_top.py). Which netpost: a snapshot of $NETPOST_SRC
(default this repo's src/, uncommitted changes included).
Needs nginx (`apt-get install -y nginx-light`) and curl.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

USER, DOMAIN = "bench@bench.test", "bench.test"
NGINX = "/usr/sbin/nginx"
MIB = 2**20
CURL_FMT = "%{http_code} %{size_download} %{time_total} %{time_starttransfer}"


class NetpostHTTP(B.NetpostServer):
    def __init__(self, data: Path, port: int) -> None:
        super().__init__(data)
        self.port = port
        self.url = ""

    @property
    def files(self) -> Path:
        return self.data / "files" / USER

    def prepare(self, size_mib: int) -> Path:
        self.create(DOMAIN, {USER: "not-used-" + os.urandom(8).hex()})
        self.files.mkdir(parents=True, exist_ok=True)
        big = self.files / "big.bin"
        with big.open("wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(MIB))
        cmd, env = B.netpost_cmd()
        p = subprocess.run([*cmd, "--data", str(self.data), "share", "add", USER, "/big.bin"],
                           capture_output=True, text=True, check=True, env=env, timeout=60)
        url = p.stdout.split()[0]  # http://<hostname>:10080/s/<token>
        self.url = f"http://{B.LOCALHOST}:{self.port}/s/" + url.rpartition("/s/")[2]
        return big

    def start_http(self) -> None:
        self.serve({"http": self.port})

    def cpu_total(self) -> float:
        return self.cpu()


class Nginx:
    def __init__(self, prefix: Path, port: int, root: Path, workers: str) -> None:
        self.prefix, self.port, self.root, self.workers = prefix, port, root, workers
        self.proc: subprocess.Popen | None = None
        self.url = f"http://{B.LOCALHOST}:{port}/big.bin"

    def start(self) -> None:
        shutil.rmtree(self.prefix, ignore_errors=True)
        self.prefix.mkdir(parents=True)
        p = self.prefix
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (p / d).mkdir()
        (p / "nginx.conf").write_text(f"""daemon off;
master_process on;
user root;
worker_processes {self.workers};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    sendfile on;
    tcp_nopush on;
    types {{ application/octet-stream bin; }}
    default_type application/octet-stream;
    access_log {p}/access.log;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    server {{
        listen {B.LOCALHOST}:{self.port};
        root {self.root};
        location / {{ }}
    }}
}}
""")
        B.require_free(self.port)
        self.proc = subprocess.Popen([NGINX, "-p", str(p), "-c", str(p / "nginx.conf"),
                                      "-e", str(p / "error.log")],
                                     stdout=(p / "stdout.log").open("w"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        B.on_exit(self.stop)
        for _ in range(100):
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.proc.returncode}): "
                                   f"{(p / 'error.log').read_text()[-800:]}")
            if not B.port_free(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {self.port}; see {p}")

    def cpu_total(self) -> float:
        assert self.proc is not None
        return B.tree_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            B.stop_process(self.proc, 10)  # SIGTERM: fast shutdown
        self.proc = None


def curl(url: str) -> subprocess.Popen:
    return subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", CURL_FMT, url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def parse(p: subprocess.Popen, size: int) -> dict:
    out, err = p.communicate(timeout=600)
    parts = out.split()
    if p.returncode != 0 or len(parts) != 4:
        return {"error": f"curl rc {p.returncode}: {err.strip()[-200:]} {out!r}"}
    code, got, total, first = int(parts[0]), int(parts[1]), float(parts[2]), float(parts[3])
    res = {"status": code, "size": got, "time_total": total, "time_starttransfer": first}
    if code != 200 or got != size:
        res["error"] = f"status {code}, {got} octets of {size}"
    return res


def download(srv, n: int, size: int) -> dict:
    cpu0, cli0 = srv.cpu_total(), B.children_cpu_s()
    busy0, load0 = B.machine_busy_s(), os.getloadavg()[0]
    t0 = time.time()
    procs = [curl(srv.url) for _ in range(n)]
    each = [parse(p, size) for p in procs]
    t1 = time.time()
    res: dict = {"downloads": each, "wall_s": round(t1 - t0, 4),
                 "server_cpu_s": round(srv.cpu_total() - cpu0, 2),
                 "client_cpu_s": round(B.children_cpu_s() - cli0, 2),
                 "machine_busy_cpu_s": round(B.machine_busy_s() - busy0, 2),
                 "loadavg1_before": load0}
    # what else ran meanwhile (other sessions' work)
    res["other_cpu_s"] = round(res["machine_busy_cpu_s"] - res["server_cpu_s"]
                               - res["client_cpu_s"], 2)
    errors = [d["error"] for d in each if "error" in d]
    res["errors"] = errors
    if not errors:
        if n == 1:
            res["mib_s"] = round(size / MIB / each[0]["time_total"], 1)
        else:
            res["mib_s"] = round(n * size / MIB / (t1 - t0), 1)
            res["each_mib_s"] = [round(size / MIB / d["time_total"], 1) for d in each]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--runs", type=int, default=10, help="runs per server (default 10)")
    ap.add_argument("--servers", default="netpost,nginx")
    ap.add_argument("--size", type=int, default=200, help="file size in MiB (default 200)")
    ap.add_argument("--parallel", type=int, default=4,
                    help="downloads at once in the parallel row (0: no such row)")
    ap.add_argument("--nginx-workers", default="auto")
    ap.add_argument("--netpost-port", type=int, default=13080)
    ap.add_argument("--nginx-port", type=int, default=13081)
    ap.add_argument("--profile", action="store_true", help="py-spy netpost during its downloads")
    ap.add_argument("--profile-rate", type=int, default=100)
    ap.add_argument("--keep", action="store_true", help="keep the netpost data dir")
    a = ap.parse_args()
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    if set(servers) - {"netpost", "nginx"}:
        ap.error("servers are netpost and/or nginx")
    for tool in ("curl", NGINX):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y nginx-light curl")
    snap = B.snapshot_src()
    out = B.results_dir("http")
    B.note(f"results in {out}")
    size = a.size * MIB
    vers = B.versions()
    vers["nginx"] = B._cmd(["sh", "-c", f"{NGINX} -v 2>&1"]) + " / " + \
        B._cmd(["dpkg-query", "-W", "-f", "${Version}", "nginx"])
    vers["curl"] = B._cmd(["sh", "-c", "curl --version | head -1"])
    py = str(B.VENV / "bin" / "python")
    for mod in ("uvicorn", "h11", "starlette"):
        vers[mod] = B._cmd([py, "-c", f"import {mod}; print({mod}.__version__)"])
    vers.update(snap)
    vers["load"] = {"size_mib": a.size, "parallel": a.parallel, "runs": a.runs,
                    "nginx_workers": a.nginx_workers}
    B.append_jsonl(out / "versions.jsonl", vers)

    root = B.BENCH_ROOT / "http-bench"
    # netpost's data dir holds the file for both servers
    np_srv = NetpostHTTP(root / "netpost", a.netpost_port)
    big = np_srv.prepare(a.size)
    with big.open("rb") as f:  # page cache
        while f.read(4 * MIB):
            pass
    srvs: dict = {}
    if "netpost" in servers:
        np_srv.start_http()
        srvs["netpost"] = np_srv
    if "nginx" in servers:
        ng = Nginx(root / "nginx", a.nginx_port, np_srv.files, a.nginx_workers)
        ng.start()
        srvs["nginx"] = ng
    for name, srv in srvs.items():
        warm = download(srv, 1, size)
        if warm["errors"]:
            raise SystemExit(f"{name}: warm-up download failed: {warm['errors']}")
        B.note(f"warm-up {name}: {warm.get('mib_s')} MiB/s ({srv.url})")
    if a.profile and "netpost" in srvs:
        np_srv.profile_start(out / "netpost-http.pyspy.txt", rate=a.profile_rate)

    rows_kinds = [("single", 1)] + ([("parallel", a.parallel)] if a.parallel > 1 else [])
    results: dict[str, dict[str, list[dict]]] = {s: {k: [] for k, _ in rows_kinds}
                                                 for s in servers}
    for i in range(1, a.runs + 1):
        order = servers[(i - 1) % len(servers):] + servers[:(i - 1) % len(servers)]
        for kind, n in rows_kinds:
            for name in order:
                res = download(srvs[name], n, size)
                res.update({"server": name, "run": i, "kind": kind, "n": n})
                results[name][kind].append(res)
                B.append_jsonl(out / f"{name}__http_download.jsonl", res)
                B.note(f"run {i}/{a.runs} {kind:8s} {name:7s}: {res.get('mib_s')} MiB/s, "
                       f"server cpu {res['server_cpu_s']} s, client cpu {res['client_cpu_s']} s, "
                       f"other {res['other_cpu_s']} s, wall {res['wall_s']} s"
                       + (f", errors {res['errors']}" if res["errors"] else ""))
    np_srv.profile_stop()
    peak = B.rss(np_srv.proc.pid, "VmHWM") / MIB if np_srv.proc is not None else None
    for srv in srvs.values():
        srv.stop()
    if not a.keep:
        shutil.rmtree(np_srv.data, ignore_errors=True)

    def col(name: str, kind: str, key: str) -> list:
        return [r.get(key) for r in results[name][kind]]

    both = "netpost" in servers and "nginx" in servers
    head = ["MiB/s"] + servers + (["netpost / nginx"] if both else [])
    rows = [head]
    met = True
    for kind, n in rows_kinds:
        label = f"{kind} ({n} x {a.size} MiB)" if n > 1 else f"{kind} ({a.size} MiB)"
        row = [label] + [B.mmm(col(s, kind, "mib_s"), "{:.0f}") for s in servers]
        cpu = [label.replace(kind, "server CPU s,") ] + [
            B.mmm(col(s, kind, "server_cpu_s"), "{:.2f}") for s in servers]
        if both:
            np_, ng_ = B.median(col("netpost", kind, "mib_s")), B.median(col("nginx", kind,
                                                                            "mib_s"))
            if np_ and ng_:
                r = np_ / ng_
                met &= r >= 0.8
                row.append(f"{r:.3f}×" + ("" if r >= 0.8 else " (< 0.8)"))
            else:
                row.append("n/a")
                met = False
            cpu.append("")
        other = [label.replace(kind, "other CPU s,")] + [
            B.mmm(col(s, kind, "other_cpu_s"), "{:.2f}") for s in servers] + (
            [""] if both else [])
        clientc = [label.replace(kind, "client CPU s,")] + [
            B.mmm(col(s, kind, "client_cpu_s"), "{:.2f}") for s in servers] + (
            [""] if both else [])
        rows += [row, cpu, clientc, other]
    lines = [f"HTTP download of a {a.size} MiB file, curl -o /dev/null, {a.runs} run(s), "
             "median [min-max]", "", B.table(rows), ""]
    if peak is not None:
        lines.append(f"- netpost peak RSS: {peak:.0f} MiB")
    if both:
        lines.append(f"- target netpost >= 0.8x nginx: {'MET' if met else 'MISSED'}")
    summary = "\n".join(lines)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)
    print(f"\nraw results: {out}")
    complete = all(not r["errors"] for s in results.values() for rs in s.values() for r in rs)
    if not complete:
        print("WARNING: some download failed (see the JSON lines)")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
