#!/usr/bin/env python3
"""SFTP transfer: netpost vs OpenSSH's sftp-server, the same files and client, in one invocation.

usage: bench/sftp_transfer.py [--runs 3] [--servers netpost,openssh] [--sizes 200,10]
           [--cipher NAME] [--subsystem sftp-server|internal-sftp] [--profile] [--keep]
           [--netpost-port 13022] [--openssh-port 13023]

Issue 8's target: netpost's SFTP >= 0.5x OpenSSH's MiB/s, uploads and downloads of a large
file, both servers measured in the same run with the same client.

The client (the same for both servers): OpenSSH's `sftp -b BATCH` (Debian openssh-client), one
session per (run, server), logged in with an Ed25519 key made for the bench, host keys not
checked (`-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null`), everything else as the
client defaults (cipher: its first choice that the server offers, both servers get the same:
chacha20-poly1305@openssh.com; 32 KiB requests, 64 in flight; --cipher NAME forces one with
`-c`). The negotiated cipher is read from `sftp -v` and recorded. In the batch, each transfer is
timed between two `!echo T <label> $(date +%s.%N)` lines (a local shell, ~2 ms each), so the
connection, key exchange and login are outside the figures. Per size S MiB (random octets in
$BENCH_ROOT/sftp-bench/src-S.bin, read once before the clock so it is in the page cache):
  upload     `put src-S.bin up-S.bin`
  download   `get up-S.bin /dev/shm/...` (tmpfs: no local disk in the figure; the file the
             upload just wrote, in both servers' page cache)
  upload+f   `put -f src-S.bin upf-S.bin`: the client sends fsync@openssh.com before CLOSE.
             netpost fsyncs every finished upload at CLOSE anyway (temporary file, fsync,
             rename, directory fsync; its fsync@openssh.com is a no-op), OpenSSH's sftp-server
             only when asked, so `upload` compares netpost's durable upload with OpenSSH's
             page-cache one and `upload+f` compares like with like.
Checked after every session, outside the clock: each uploaded file on the server side has the
source's size (and sha256 in run 1), each download has the source's size and sha256.

The servers, both on 127.0.0.1 and on the same file system (under $BENCH_ROOT, ext4):
  netpost   `netpost serve --listen sftp=127.0.0.1:PORT`, every other listener off, a fresh
            data dir per run: domain bench.test, user bench@bench.test (a password nobody uses)
            with the bench's key added by `netpost --data DIR user key add USER KEYFILE`;
            files land in DIR/files/bench@bench.test/. Defaults otherwise (asyncssh, uvloop).
  openssh   a private sshd (Debian openssh-server): `/usr/sbin/sshd -D -e -f CONFIG -h HOSTKEY
            -p PORT` with its own config and Ed25519 host key in $BENCH_ROOT/sftp-bench/sshd
            (the system's /etc/ssh is not read or touched), ListenAddress 127.0.0.1, root logs in
            with the bench's key only (PermitRootLogin prohibit-password, AuthorizedKeysFile =
            the bench's, StrictModes no: the file is under /tmp, UsePAM no), `Subsystem sftp
            /usr/lib/openssh/sftp-server` (--subsystem internal-sftp: the in-process one); files
            land in a fresh directory under $BENCH_ROOT/sftp-bench/openssh-files. Started once
            per run, stopped after.
Runs rotate the servers' order. Per session (JSON line in $OUT, default
$BENCH_ROOT/results/<time>-sftp/): seconds and MiB/s of every transfer, the server's CPU
seconds over the session (netpost: its process; OpenSSH: the listener and every process of the
session, reaped), the client's (sftp + ssh), the whole machine's busy CPU seconds and "other"
(busy - server - client: other sessions' work, the kernel's disk writeback), load average.
The summary prints median [min-max] MiB/s per row and the ratio netpost/OpenSSH of the medians
(MiB = 2^20 octets).
--profile: py-spy (the project venv's) records netpost during its sessions (collapsed stacks in
$OUT; summarise with bench/profile_top.py). Which netpost: a snapshot of $NETPOST_SRC (default
this repo's src/, uncommitted changes included).
Needs root (sshd, root login), openssh-server, openssh-client.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

USER, DOMAIN = "bench@bench.test", "bench.test"
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
MIB = 2**20
KINDS = ("upload", "download", "upload+f")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def make_sources(root: Path, sizes: list[int]) -> dict[int, tuple[Path, str]]:
    """src-S.bin of S MiB random octets (kept between invocations), with its sha256."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for s in sizes:
        path = root / f"src-{s}.bin"
        if not path.exists() or path.stat().st_size != s * MIB:
            tmp = path.with_suffix(".tmp")
            with tmp.open("wb") as f:
                for _ in range(s):
                    f.write(os.urandom(MIB))
            tmp.rename(path)
        out[s] = (path, sha256(path))  # also brings it into the page cache
    return out


def make_key(root: Path) -> Path:
    key = root / "client_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sftp-bench",
                        "-f", str(key)], check=True)
    return key


# --- the servers -----------------------------------------------------------------------------
class NetpostSFTP(B.NetpostServer):
    def __init__(self, data: Path, port: int, key: Path) -> None:
        super().__init__(data)
        self.port, self.key = port, key

    def prepare(self) -> None:
        self.create(DOMAIN, {USER: "not-used-" + os.urandom(8).hex()})
        self.cli("user", "key", "add", USER, str(self.key.with_suffix(".pub")))

    def start_sftp(self) -> None:
        self.serve({"sftp": self.port})

    @property
    def files(self) -> Path:
        return self.data / "files" / USER

    def login(self) -> str:
        return USER

    def cpu_total(self) -> float:
        return self.cpu()


class OpenSSHSFTP:
    def __init__(self, root: Path, port: int, key: Path, subsystem: str) -> None:
        self.root, self.port, self.key, self.subsystem = root, port, key, subsystem
        self.conf = root / "sshd_config"
        self.hostkey = root / "ssh_host_ed25519_key"
        self.log = root / "sshd.log"
        self.proc: subprocess.Popen | None = None
        self.files = root.parent / "openssh-files"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.hostkey.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(self.hostkey)], check=True)
        shutil.copy(self.key.with_suffix(".pub"), self.root / "authorized_keys")
        sub = SFTP_SERVER if self.subsystem == "sftp-server" else "internal-sftp"
        self.conf.write_text("\n".join([
            f"ListenAddress {B.LOCALHOST}",
            f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "X11Forwarding no",
            "PrintMotd no",
            "LogLevel ERROR",
            f"Subsystem sftp {sub}",
        ]) + "\n")
        shutil.rmtree(self.files, ignore_errors=True)
        self.files.mkdir(parents=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir

    def start(self) -> None:
        B.require_free(self.port)
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.conf), "-h", str(self.hostkey), "-p",
             str(self.port)], stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        B.on_exit(self.stop)
        for _ in range(100):
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.proc.returncode}): "
                                   f"{self.log.read_text()[-800:]}")
            if not B.port_free(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on {self.port}; see {self.log}")

    def login(self) -> str:
        return "root"

    def cpu_total(self) -> float:
        assert self.proc is not None
        return B.tree_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            B.stop_process(self.proc, 10)  # SIGTERM: fast shutdown
        self.proc = None


# --- one session -----------------------------------------------------------------------------
def batch_for(sources: dict[int, tuple[Path, str]], remote_dir: str, shm: Path) -> str:
    """The sftp batch: every transfer between two time stamps."""
    lines = []

    def stamp(label: str) -> None:
        lines.append(f"!echo T {label} $(date +%s.%N)")

    for s, (src, _h) in sources.items():
        down = shm / f"down-{s}.bin"
        stamp(f"upload:{s}:start")
        lines.append(f"put {src} {remote_dir}up-{s}.bin")
        stamp(f"upload:{s}:end")
        lines.append(f"!rm -f {down}")
        stamp(f"download:{s}:start")
        lines.append(f"get {remote_dir}up-{s}.bin {down}")
        stamp(f"download:{s}:end")
        stamp(f"upload+f:{s}:start")
        lines.append(f"put -f {src} {remote_dir}upf-{s}.bin")
        stamp(f"upload+f:{s}:end")
    return "\n".join(lines) + "\n"


def session(name: str, srv, a: argparse.Namespace, key: Path,
            sources: dict[int, tuple[Path, str]], out: Path, run: int) -> dict:
    shm = Path("/dev/shm") / f"sftp-bench-{os.getpid()}"
    shutil.rmtree(shm, ignore_errors=True)
    shm.mkdir()
    B.on_exit(lambda: shutil.rmtree(shm, ignore_errors=True))
    remote_dir = "" if name == "netpost" else f"{srv.files}/"
    batch = out / f"batch-{name}.txt"
    batch.write_text(batch_for(sources, remote_dir, shm))
    port = a.netpost_port if name == "netpost" else a.openssh_port
    cmd = ["sftp", "-v", "-b", str(batch), "-P", str(port), "-i", str(key),
           "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=VERBOSE"]
    if a.cipher:
        cmd += ["-c", a.cipher]
    cmd.append(f"{srv.login()}@{B.LOCALHOST}")
    for src, _h in sources.values():  # page cache
        with src.open("rb") as f:
            while f.read(4 * MIB):
                pass
    cpu0, cli0 = srv.cpu_total(), B.children_cpu_s()
    busy0, load0 = B.machine_busy_s(), os.getloadavg()[0]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, check=False)
    elapsed = time.time() - t0
    time.sleep(0.3)  # let sshd reap the session's processes
    res: dict = {"server": name, "run": run, "sftp_rc": p.returncode,
                 "session_s": round(elapsed, 3),
                 "server_cpu_s": round(srv.cpu_total() - cpu0, 2),
                 "client_cpu_s": round(B.children_cpu_s() - cli0, 2),
                 "machine_busy_cpu_s": round(B.machine_busy_s() - busy0, 1),
                 "loadavg1_before": load0}
    # what else ran meanwhile (other sessions' work; also the kernel's writeback of the files)
    res["other_cpu_s"] = round(res["machine_busy_cpu_s"] - res["server_cpu_s"]
                               - res["client_cpu_s"], 1)
    (out / f"sftp-{name}-run{run}.log").write_text(
        f"$ {' '.join(cmd)}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    m = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+)", p.stderr)
    res["cipher"] = f"{m.group(1)} (MAC {m.group(2)})" if m else "?"
    stamps = {}
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "T":
            stamps[parts[1]] = float(parts[2])
    errors = []
    for s, (_src, digest) in sources.items():
        for kind in KINDS:
            t_start, t_end = stamps.get(f"{kind}:{s}:start"), stamps.get(f"{kind}:{s}:end")
            if t_start is None or t_end is None:
                errors.append(f"{kind} {s} MiB: no time (sftp rc {p.returncode})")
                continue
            res[f"{kind}_{s}_s"] = round(t_end - t_start, 4)
            res[f"{kind}_{s}_mib_s"] = round(s / (t_end - t_start), 1)
        for kind, path in (("upload", srv.files / f"up-{s}.bin"),
                           ("upload+f", srv.files / f"upf-{s}.bin"),
                           ("download", shm / f"down-{s}.bin")):
            if f"{kind}_{s}_s" not in res:
                continue
            if not path.exists() or path.stat().st_size != s * MIB:
                errors.append(f"{kind} {s} MiB: {path} missing or wrong size")
            elif (kind == "download" or run == 1) and sha256(path) != digest:
                errors.append(f"{kind} {s} MiB: {path} differs from the source")
    if p.returncode != 0:
        errors.append(f"sftp exited {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    res["errors"] = errors
    res["complete"] = not errors
    shutil.rmtree(shm, ignore_errors=True)
    for s in sources:
        for n in (f"up-{s}.bin", f"upf-{s}.bin"):
            (srv.files / n).unlink(missing_ok=True)
    return res


def run_one(name: str, i: int, a: argparse.Namespace, key: Path,
            sources: dict[int, tuple[Path, str]], out: Path) -> dict:
    if name == "netpost":
        srv = NetpostSFTP(B.BENCH_ROOT / "sftp-bench" / f"netpost-run{i}", a.netpost_port, key)
        srv.prepare()
        srv.start_sftp()
        try:
            if a.profile:
                srv.profile_start(out / f"netpost-sftp-run{i}.pyspy.txt", rate=a.profile_rate)
            res = session(name, srv, a, key, sources, out, i)
            res["server_peak_rss_mib"] = round(B.rss(srv.proc.pid, "VmHWM") / MIB, 1)
        finally:
            srv.stop()
        if not a.keep:
            shutil.rmtree(srv.data, ignore_errors=True)
        return res
    ossh = OpenSSHSFTP(B.BENCH_ROOT / "sftp-bench" / "sshd", a.openssh_port, key, a.subsystem)
    ossh.prepare()
    ossh.start()
    try:
        return session(name, ossh, a, key, sources, out, i)
    finally:
        ossh.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--runs", type=int, default=3, help="sessions per server (default 3)")
    ap.add_argument("--servers", default="netpost,openssh")
    ap.add_argument("--sizes", default="200,10", help="file sizes in MiB (default 200,10)")
    ap.add_argument("--cipher", default="", help="force a cipher (sftp -c); default: negotiated")
    ap.add_argument("--subsystem", default="sftp-server", choices=["sftp-server",
                                                                     "internal-sftp"])
    ap.add_argument("--netpost-port", type=int, default=13022)
    ap.add_argument("--openssh-port", type=int, default=13023)
    ap.add_argument("--timeout", type=float, default=600.0, help="per session (s)")
    ap.add_argument("--profile", action="store_true", help="py-spy netpost during its sessions")
    ap.add_argument("--profile-rate", type=int, default=100)
    ap.add_argument("--keep", action="store_true", help="keep netpost data dirs")
    a = ap.parse_args()
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    if set(servers) - {"netpost", "openssh"}:
        ap.error("servers are netpost and/or openssh")
    sizes = [int(s) for s in a.sizes.split(",")]
    for tool in ("sftp", "ssh-keygen", SSHD):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y openssh-server")
    snap = B.snapshot_src()
    out = B.results_dir("sftp")
    B.note(f"results in {out}")
    root = B.BENCH_ROOT / "sftp-bench"
    sources = make_sources(root / "sources", sizes)
    key = make_key(root)
    vers = B.versions()
    vers["openssh (sshd)"] = B._cmd(["sh", "-c", f"{SSHD} -V 2>&1 | head -1"]) + " / " + \
        B._cmd(["dpkg-query", "-W", "-f", "${Version}", "openssh-server"])
    vers["openssh (sftp client)"] = B._cmd(["sh", "-c", "ssh -V 2>&1"]) + " / " + \
        B._cmd(["dpkg-query", "-W", "-f", "${Version}", "openssh-client"])
    vers["asyncssh"] = B._cmd([str(B.VENV / "bin" / "python"), "-W", "ignore", "-c",
                               "import asyncssh; print(asyncssh.__version__)"])
    vers["cryptography"] = B._cmd([str(B.VENV / "bin" / "python"), "-c",
                                   "import cryptography; print(cryptography.__version__)"])
    vers.update(snap)
    vers["load"] = {"sizes_mib": sizes, "cipher": a.cipher or "negotiated",
                    "subsystem": a.subsystem, "runs": a.runs}
    B.append_jsonl(out / "versions.jsonl", vers)

    results: dict[str, list[dict]] = {s: [] for s in servers}
    for i in range(1, a.runs + 1):
        order = servers[(i - 1) % len(servers):] + servers[:(i - 1) % len(servers)]
        for name in order:
            B.note(f"run {i}/{a.runs}: {name}")
            res = run_one(name, i, a, key, sources, out)
            results[name].append(res)
            B.append_jsonl(out / f"{name}__sftp_transfer.jsonl", res)
            figs = ", ".join(f"{k} {s}M {res.get(f'{k}_{s}_mib_s')}" for s in sizes
                             for k in KINDS)
            B.note(f"  {name} ({res['cipher']}): MiB/s {figs}; server cpu "
                   f"{res['server_cpu_s']} s, client cpu {res['client_cpu_s']} s, other work "
                   f"{res['other_cpu_s']} s, errors {res['errors'] or '-'}")

    def col(name: str, key: str) -> list:
        return [r.get(key) for r in results.get(name, [])]

    labels = {"netpost": "netpost", "openssh": f"OpenSSH ({a.subsystem})"}
    head = ["MiB/s"] + [labels[s] for s in servers]
    both = "netpost" in servers and "openssh" in servers
    if both:
        head.append("netpost / OpenSSH")
    rows = [head]
    ok_all = True
    for s in sizes:
        for kind in KINDS:
            row = [f"{kind} {s} MiB"] + [B.mmm(col(n, f"{kind}_{s}_mib_s"), "{:.1f}")
                                         for n in servers]
            if both:
                np_, os_ = (B.median(col(n, f"{kind}_{s}_mib_s")) for n in ("netpost",
                                                                           "openssh"))
                if np_ and os_:
                    r = np_ / os_
                    ok_all &= r >= 0.5 or kind == "upload+f"
                    row.append(f"{r:.3f}×" + ("" if r >= 0.5 else " (< 0.5)"))
                else:
                    row.append("n/a")
            rows.append(row)
    rows.append(["server CPU s / session"] + [B.mmm(col(n, "server_cpu_s"), "{:.1f}")
                                             for n in servers] + ([""] if both else []))
    rows.append(["client CPU s / session"] + [B.mmm(col(n, "client_cpu_s"), "{:.1f}")
                                             for n in servers] + ([""] if both else []))
    rows.append(["other CPU s / session"] + [B.mmm(col(n, "other_cpu_s"), "{:.1f}")
                                            for n in servers] + ([""] if both else []))
    ciphers = {n: sorted(set(col(n, "cipher"))) for n in servers}
    lines = [f"SFTP transfers, OpenSSH sftp -b client, {a.runs} session(s) per server, "
             "median [min-max] MiB/s", "", B.table(rows), "",
             f"- cipher negotiated: {ciphers}"]
    if "netpost" in servers:
        lines.append(f"- netpost peak RSS: {B.mmm(col('netpost', 'server_peak_rss_mib'), '{:.0f}')}"
                     " MiB")
    if both:
        lines.append(f"- target netpost >= 0.5x OpenSSH on upload and download: "
                     f"{'MET' if ok_all else 'MISSED'}")
    summary = "\n".join(lines)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)
    print(f"\nraw results: {out}")
    complete = all(r.get("complete") for rs in results.values() for r in rs)
    if not complete:
        print("WARNING: some session failed or a file did not arrive whole (see the JSON lines)")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
