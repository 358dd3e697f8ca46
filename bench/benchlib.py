"""Shared helpers for the bench/ scripts (stdlib only).

* where things are: the repo, its venv, the copied peer-bench client scripts (bench/peer-bench/),
  the peers' start scripts (/work/shared/peer-bench/peers if present, else the copy);
* NetpostServer: a netpost instance with its own data directory on 127.0.0.1 ports;
* cleanup of everything started (atexit + SIGINT/SIGTERM/SIGHUP);
* median [min-max] formatting, JSON-line results, versions, optional py-spy profiling.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = Path(os.environ.get("NETPOST_VENV", REPO / ".venv"))
NETPOST = VENV / "bin" / "netpost"
PYSPY = Path(os.environ.get("PYSPY", VENV / "bin" / "py-spy"))
PEER_BENCH = HERE / "peer-bench"  # copies of the team's shared client scripts
_SHARED_PEERS = Path(os.environ.get("PEER_BENCH_DIR", "/work/shared/peer-bench")) / "peers"
PEERS = Path(os.environ["PEERS_DIR"]) if os.environ.get("PEERS_DIR") else (
    _SHARED_PEERS if (_SHARED_PEERS / "postfix.sh").exists() else PEER_BENCH / "peers")
BENCH_ROOT = Path(os.environ.setdefault("BENCH_ROOT", "/tmp/bench"))
LOCALHOST = "127.0.0.1"


def note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- cleanup ---------------------------------------------------------------------------------
_cleanups: list[Callable[[], None]] = []


def on_exit(fn: Callable[[], None]) -> None:
    """Register fn to run once at exit (LIFO), also on SIGINT/SIGTERM/SIGHUP."""
    _cleanups.append(fn)


def _run_cleanups() -> None:
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - cleanup must go on
            note(f"cleanup: {exc}")


def _on_signal(signum: int, _frame: object) -> None:
    note(f"signal {signum}: cleaning up")
    _run_cleanups()
    sys.exit(128 + signum)


atexit.register(_run_cleanups)
for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _on_signal)


# --- processes -------------------------------------------------------------------------------
def peer(script: str, *args: str, check: bool = True) -> str:
    """Run PEERS/<script> with BENCH_ROOT in the environment; return its stdout."""
    # files, not pipes: daemons started by the script inherit them and would hold a pipe open
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.run([str(PEERS / script), *args], stdout=out, stderr=err,
                           stdin=subprocess.DEVNULL, check=False, timeout=300)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if check and p.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed ({p.returncode}): "
                           f"{stderr.strip()[-500:]}")
    return stdout.strip()


def peer_module(script: str) -> ModuleType:
    """A script of the peer bench (`peer-bench/NAME.py`) loaded as a module, to reuse its
    message generator and client helpers exactly."""
    spec = importlib.util.spec_from_file_location(f"peer_{Path(script).stem}", PEER_BENCH / script)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dovecot_ports() -> int:
    """Free IMAP and POP3 ports for the Dovecot peer (DOVECOT_IMAP_PORT/DOVECOT_POP3_PORT,
    its defaults 10143/10110 when free), set for `peer("dovecot.sh", ...)`; the IMAP port."""
    for name, default in (("DOVECOT_IMAP_PORT", 10143), ("DOVECOT_POP3_PORT", 10110)):
        os.environ[name] = str(free_port(int(os.environ.get(name, default))))
    return int(os.environ["DOVECOT_IMAP_PORT"])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def require_free(*ports: int) -> None:
    busy = [p for p in ports if not port_free(p)]
    if busy:
        raise SystemExit(f"port(s) {busy} on {LOCALHOST} already in use: stop what listens "
                         "there (an earlier run?) or choose others (see --help)")


def last_json(cmd: Sequence[str], timeout: float, log: Path) -> dict:
    """Run a peer-bench client; its last stdout line is JSON. stderr goes to `log`."""
    load_before = os.getloadavg()[0]
    with log.open("a") as err:
        err.write(f"$ {' '.join(cmd)}\n")
        err.flush()
        try:
            p = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=err, text=True,
                               timeout=timeout, check=False)
            lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
            res = json.loads(lines[-1]) if lines else {"error": "no output"}
            res["client_rc"] = p.returncode
        except subprocess.TimeoutExpired:
            res = {"error": f"timeout {timeout} s", "client_rc": "timeout"}
        except json.JSONDecodeError as exc:
            res = {"error": f"bad JSON: {exc}", "client_rc": -1}
    res["loadavg1_before"] = load_before  # the machine is shared: note what else was running
    return res


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children (only the process itself matters)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores: user, nice, system, irq,
    softirq, steal from /proc/stat): deltas show how much else ran beside a benchmark."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(f[k]) for k in (0, 1, 2, 5, 6, 7)) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU of a daemon and its children, living and reaped (for Dovecot: master + its
    processes): utime+stime+cutime+cstime of the process and of its current children, so the
    delta between two calls counts children that came and went in between."""
    def one(p: int) -> float:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")

    total = one(pid)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                total += one(int(d.name))
    return total


def children_cpu_s() -> float:
    """CPU of this process's reaped children (the load generators it ran and waited for)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def rss(pid: int, field: str = "VmRSS") -> int:
    """A /proc/PID/status memory figure (VmRSS, VmHWM, ...) in octets."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no {field} for pid {pid}")


def free_port(preferred: int) -> int:
    """preferred if nothing listens there on 127.0.0.1, else a free ephemeral port."""
    if port_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


_SRC: Path | None = None  # the snapshot every netpost process of this invocation runs


def snapshot_src() -> dict[str, str]:
    """Copy netpost's source tree (REPO/src, or $NETPOST_SRC) to $BENCH_ROOT/src-<pid> so that
    every run of one invocation measures the same code even while others edit src/; netpost
    then runs as `python -m netpost` with PYTHONPATH=<snapshot>. Returns a description."""
    global _SRC
    src = Path(os.environ.get("NETPOST_SRC", REPO / "src"))
    dst = BENCH_ROOT / f"src-{os.getpid()}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    on_exit(lambda: shutil.rmtree(dst, ignore_errors=True))
    h = hashlib.sha256()
    for f in sorted(dst.rglob("*.py")):
        h.update(str(f.relative_to(dst)).encode() + b"\0" + f.read_bytes() + b"\0")
    _SRC = dst
    cmd, env = netpost_cmd()
    where = subprocess.run([cmd[0], "-c", "import netpost; print(netpost.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not where.startswith(str(dst)):
        raise SystemExit(f"netpost imports from {where}, not from the snapshot {dst}")
    return {"netpost source": str(src), "netpost source sha256 (*.py)": h.hexdigest()[:12],
            "netpost source snapshot time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def netpost_cmd() -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if _SRC is None:
        return [str(NETPOST)], env
    env["PYTHONPATH"] = str(_SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                      else "")
    return [str(VENV / "bin" / "python"), "-m", "netpost"], env


_LISTENERS: list[str] = []


def listener_names() -> list[str]:
    """Every listener the netpost being measured knows (asked of its own registry, so a
    snapshot of another revision gets its own list)."""
    if not _LISTENERS:
        cmd, env = netpost_cmd()
        python = cmd[0] if len(cmd) > 1 else str(VENV / "bin" / "python")
        out = subprocess.run([python, "-c", "from netpost.registry import default_registry; "
                              "print(' '.join(default_registry().listener_names()))"],
                             env=env, capture_output=True, text=True, check=True).stdout.split()
        _LISTENERS.extend(out)
    return _LISTENERS


class NetpostServer:
    """One netpost process with a private data directory and loopback-only listeners."""

    def __init__(self, data: Path, *, allow_plaintext: bool = False) -> None:
        self.data = data
        self.allow_plaintext = allow_plaintext
        self.proc: subprocess.Popen | None = None
        self.profiler: subprocess.Popen | None = None
        self.log = data.parent / f"{data.name}.log"

    def cli(self, *args: str, stdin: str | None = None) -> None:
        cmd, env = netpost_cmd()
        subprocess.run([*cmd, "--data", str(self.data), *args], input=stdin, text=True,
                       check=True, capture_output=True, timeout=120, env=env)

    def create(self, domain: str, users: dict[str, str]) -> None:
        shutil.rmtree(self.data, ignore_errors=True)
        self.data.mkdir(parents=True)
        if self.allow_plaintext:  # loopback only: the listeners below are all 127.0.0.1
            (self.data / "netpost.toml").write_text("[auth]\nallow_plaintext = true\n")
        self.cli("domain", "add", domain)
        for address, password in users.items():
            self.cli("user", "add", address, "--password-stdin", stdin=password + "\n")

    def start(self, smtp: int | None = None, pop3: int | None = None,
              imap: int | None = None) -> None:
        """The mail listeners given (the defaults, e.g. imap 10143 and pop3 10110, are the
        Dovecot peer's ports)."""
        self.serve({"smtp": smtp, "pop3": pop3, "imap": imap})

    def serve(self, ports: dict[str, int | None]) -> None:
        """Start `netpost serve` listening only on `ports` (listener name -> port on
        127.0.0.1; None: off); every other listener of this netpost is off.  Waits for
        "ready"."""
        wanted = {name: port for name, port in ports.items() if port}
        args = []
        for name in listener_names():
            port = wanted.pop(name, None)
            args += ["--listen", f"{name}={LOCALHOST}:{port}" if port else f"{name}=off"]
        if wanted:
            raise SystemExit(f"this netpost has no listener {', '.join(wanted)}")
        require_free(*(p for p in ports.values() if p))
        out = self.log.open("w")
        cmd, env = netpost_cmd()
        self.proc = subprocess.Popen([*cmd, "--data", str(self.data), "serve", *args],
                                     stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        on_exit(self.stop)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"netpost exited ({self.proc.returncode}): "
                                   f"{self.log.read_text()[-800:]}")
            if "\nready" in self.log.read_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"netpost did not get ready in 60 s; see {self.log}")

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def rss(self) -> int:
        """Resident set size of the server process now (octets)."""
        assert self.proc is not None
        return rss(self.proc.pid)

    def cpu_main_thread(self) -> float:
        """CPU of the event-loop thread alone (its tid is the pid)."""
        assert self.proc is not None
        pid = self.proc.pid
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def profile_start(self, out: Path, rate: int = 100) -> None:
        """Attach py-spy (sampling; collapsed stacks by function and thread,
        on-CPU samples only, --nonblocking to keep the overhead low) until profile_stop()."""
        assert self.proc is not None
        if not PYSPY.exists():
            raise SystemExit(f"--profile needs py-spy at {PYSPY}: "
                             f"{VENV}/bin/pip install py-spy")
        self.profiler = subprocess.Popen(
            [str(PYSPY), "record", "--pid", str(self.proc.pid), "--rate", str(rate),
             "--format", "raw", "--function", "--threads", "--nonblocking",
             "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=(out.parent / (out.name + ".log")).open("w"))
        time.sleep(1.0)  # let it attach

    def profile_stop(self) -> None:
        if self.profiler is not None and self.profiler.poll() is None:
            self.profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.profiler.wait(30)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
        self.profiler = None

    def stop(self) -> None:
        self.profile_stop()
        if self.proc is not None:
            stop_process(self.proc, 40)  # graceful: finishes transactions in flight
        self.proc = None


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM (a server's graceful stop), then SIGKILL if it has not exited in `timeout`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- figures ---------------------------------------------------------------------------------
def mmm(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """median [min-max] (n)"""
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    if min(vals) == max(vals):
        return fmt.format(vals[0]) + ("" if len(vals) == 1 else " (all runs)")
    return (f"{fmt.format(statistics.median(vals))} "
            f"[{fmt.format(min(vals))}–{fmt.format(max(vals))}]")


def median(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ratio_line(name: str, num: float | None, den: float | None, target: float) -> tuple[str, bool]:
    if not num or not den:
        return f"{name}: n/a (missing figures)", False
    r = num / den
    ok = r >= target
    return (f"{name}: {r:.3f}×  (target ≥ {target:g}×: {'MET' if ok else 'MISSED'})", ok)


def time_ratio_line(name: str, num: float | None, den: float | None,
                    target: float) -> tuple[str, bool]:
    """For times (lower is better): num / den must be <= target."""
    if not num or not den:
        return f"{name}: n/a (missing figures)", False
    r = num / den
    ok = r <= target
    return (f"{name}: {r:.3f}×  (target ≤ {target:g}×: {'MET' if ok else 'MISSED'}"
            + ("" if ok else f", {r / target:.1f}× over") + ")", ok)


def table(rows: list[list[str]]) -> str:
    """Markdown table; rows[0] is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def results_dir(kind: str) -> Path:
    out = Path(os.environ.get("OUT") or BENCH_ROOT / "results" /
               f"{time.strftime('%Y-%m-%dT%H%M%S')}-{kind}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _cmd(args: Sequence[str]) -> str:
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=30,
                              check=False).stdout.strip()
    except OSError:
        return "n/a"


def versions(*peer_scripts: str) -> dict[str, str]:
    py = str(VENV / "bin" / "python")
    v = {
        "netpost": _cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        + (" (+ uncommitted changes)" if _cmd(["git", "-C", str(REPO), "status",
                                                "--porcelain", "--", "src"]) else ""),
        "python (netpost)": _cmd([py, "-c", "import platform; print(platform.python_version())"]),
        "uvloop": _cmd([py, "-c", "import uvloop; print(uvloop.__version__)"]),
        "kernel": _cmd(["uname", "-r"]),
        "cpus": f"{os.cpu_count()} x "
        + _cmd(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]),
    }
    for s in peer_scripts:
        v[s] = peer(s, "version", check=False)
    return v


def udp_buffer_errors(snmp: str, side: str) -> dict[str, int]:
    """UDP datagrams lost to full socket buffers so far, from the text of /proc/net/snmp or
    /proc/net/snmp6 (read inside a network namespace: its own counters): {"SIDE
    RcvbufErrors": n, "SIDE SndbufErrors": n}.  Where a UDP benchmark's drops happen: in the
    receiver's socket buffer, not in the server that answered."""
    found: dict[str, int] = {}
    for line in snmp.splitlines():  # snmp6: "Udp6RcvbufErrors   12"
        fields = line.split()
        if len(fields) == 2 and fields[0] in ("Udp6RcvbufErrors", "Udp6SndbufErrors"):
            found[f"{side} {fields[0][4:]}"] = int(fields[1])
    lines = [line.split() for line in snmp.splitlines() if line.startswith("Udp:")]
    if len(lines) >= 2:
        for name, value in zip(lines[0][1:], lines[1][1:], strict=False):
            if name in ("RcvbufErrors", "SndbufErrors"):
                found[f"{side} {name}"] = int(value)
    return found
