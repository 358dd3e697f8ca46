#!/usr/bin/env python3
"""FTP transfer: netpost vs pyftpdlib vs vsftpd under pyftpdlib's ftpbench, in one invocation.

usage: bench/ftp_transfer.py [--runs 3] [--servers netpost,pyftpdlib,vsftpd]
           [--modes plain,ftps] [--clients 100] [--size 10M] [--row-timeout 60]
           [--upload-end close_notify|fin] [--tls-max TLSv1.2] [--commit REV]
           [--profile] [--keep] [--netpost-port 13021] [--pyftpdlib-port 2121]
           [--vsftpd-port 2122]

Issue 8's target: netpost >= 1.0x pyftpdlib on every row and >= 0.9x vsftpd's MiB/s, plain FTP
and explicit FTPS (AUTH TLS + PROT P), all three servers measured in the same run.

The client: ftpbench from the pyftpdlib sdist (`pip download --no-deps --no-binary :all:
pyftpdlib==2.2.0` into $NETPOST_TOOLS, default ~/.cache/netpost-tools, with a venv there holding
pyftpdlib, pyopenssl, psutil, pyasyncore, pyasynchat; nothing of it enters this repo or the
project's dependencies). It runs ftpbench's `-b all -n 100 -s 10M [-S]` sequence, but row by row:
a small driver imports the sdist's script and calls its own functions (connect, stor,
bytes_per_second, AsyncReader/AsyncWriter/AsyncQuit, timethis) in ftpbench's order, so a
server that fails or hangs in one row still gets the others measured:
  stor / retr          one client, 1 s of STOR / RETR (RETR repeats the 10 MiB file), MiB/s
  connect_login        100 clients connect and log in, one after the other (FTPS: AUTH TLS,
                       login, PBSZ/PROT P), seconds; shown as logins/s
  stor_idle/retr_idle  the same 1 s STOR / RETR while the 100 clients sit idle, MiB/s
  multi_retr           100 clients RETR the 10 MiB file at once, seconds; shown as MiB/s
                       (100 x 10 MiB / time)
  multi_stor           100 clients STOR 10 MiB at once, likewise
  multi_quit           100 QUITs at once (ftpbench prints 2 decimals: 0.00-0.01 s, no ratio)
Seconds are printed with 4 decimals (ftpbench's own print has 2: pyftpdlib's 100 logins read
0.00-0.05 s). A row that gives no figure within --row-timeout seconds (SIGALRM in the client),
or whose transfers were answered with an error, is reported failed (`errors` in the JSON line);
after a failed multi row the client drops its 100 connections and logs 100 new ones in, untimed.
The driver also applies, identically for every server: ftpbench's FTPS crash fix (`chunk`
unbound after SSLWantReadError, as /work/shared/peer-bench/ftp_transfer.sh does); TLS capped
at --tls-max for the client (an OpenSSL config for that process: TLS 1.3 tickets left unread
on upload connections make the client's kernel reset them); and --upload-end:
  close_notify (default)  the client ends every FTPS upload with a TLS close_notify before its
                          FIN (ftplib's own storbinary does so with unwrap(); ftpbench's code
                          does not). netpost answers an upload that ends without close_notify
                          with 426 (RFC 4217 12.6, truncation) and has no switch for it, so
                          with stock ftpbench it fails its very first FTPS upload.
  fin                     stock ftpbench: uploads end with a bare FIN (vsftpd accepts that
                          only with strict_ssl_read_eof=NO, set below).

The servers, each started fresh for every (run, mode) on 127.0.0.1, sharing one RSA-2048
self-signed certificate ($BENCH_ROOT/tls, made with openssl once):
  netpost    `netpost serve --listen ftp=127.0.0.1:PORT`, every other listener off, fresh data
             dir: domain bench.test, user benchftp@bench.test (password "pass"); netpost.toml:
             [auth] allow_plaintext = true (USER/PASS without TLS: the plain rows; loopback
             only), [limits] max_connections_per_ip = 1000 (default 32; ftpbench keeps 101
             control connections from 127.0.0.1), [tls] certificate/key = the shared one,
             [ftp] require_tls_reuse = false (ftplib does not resume the control connection's
             TLS session on data connections; netpost's default refuses that with 522, like
             vsftpd's require_ssl_reuse=YES). ftpbench's -S uses AUTH TLS on this listener; the
             implicit `ftps` listener is not used.
  pyftpdlib  its stock CLI from the tools venv: `python -m pyftpdlib -i 127.0.0.1 -p PORT -w
             -d ROOT -u benchftp -P pass [--tls --keyfile K --certfile C]` (async, INFO log
             to a file), as /work/shared/peer-bench/peers/pyftpdlib.sh.
  vsftpd     Debian's vsftpd (`apt-get install -y vsftpd`), standalone with its own config in
             $BENCH_ROOT/vsftpd-bench/, local system user benchftp (password "pass", created
             if missing; PAM verifies its yescrypt hash), passive ports 40000-40999, no client
             limits, lock_upload_files=NO (ftpbench's 100 STORs of one file deadlock with
             upload locking); FTPS adds ssl_enable, require_ssl_reuse=NO,
             strict_ssl_read_eof=NO -- as /work/shared/peer-bench/peers/vsftpd.sh.
Runs rotate the servers' order. Per run (JSON line in $OUT, default
$BENCH_ROOT/results/<time>-ftp/): the rows, failed rows with the reason, server CPU seconds
(vsftpd: the listener and the session processes it reaped), client CPU, elapsed, load average.
The summary prints, per mode, median [min-max] per row and the ratios netpost/pyftpdlib and
netpost/vsftpd of the medians, every row as a rate (higher is better).
--profile: py-spy (the project venv's) records netpost during its runs (collapsed stacks in
$OUT; summarise with bench/profile_top.py). Which netpost: a snapshot of $NETPOST_SRC (default
this repo's src/, uncommitted changes included) or, with --commit REV, `git archive REV src`.
Needs root (vsftpd's user, PAM), python3.11, openssl, vsftpd; PyPI once for the tools.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

PYFTPDLIB_VERSION = os.environ.get("FTPBENCH_PYFTPDLIB", "2.2.0")
TOOLS = Path(os.environ.get("NETPOST_TOOLS", Path.home() / ".cache" / "netpost-tools"))
TOOLS_VENV = TOOLS / "ftp-venv"
SDIST = TOOLS / "sdist" / f"pyftpdlib-{PYFTPDLIB_VERSION}.tar.gz"
USER, PASSWORD, DOMAIN = "benchftp", "pass", "bench.test"
VSFTPD_PASV = (40000, 40999)

# Row keys, ftpbench's labels, and how a row is shown: ("mib", None) = MiB/s as printed;
# ("per_s", k) = k / seconds (logins/s, or MiB/s of 100 x 10 MiB); ("s", None) = seconds only.
ROWS = [
    ("stor", r"^STOR \(client -> server\)"),
    ("retr", r"^RETR \(server -> client\)"),
    ("connect_login", r"concurrent clients \(connect, login\)"),
    ("stor_idle", r"^STOR \(1 file with"),
    ("retr_idle", r"^RETR \(1 file with"),
    ("multi_retr", r"concurrent clients \(RETR"),
    ("multi_stor", r"concurrent clients \(STOR"),
    ("multi_quit", r"concurrent clients \(QUIT\)"),
]
MIB_ROWS = ("stor", "retr", "stor_idle", "retr_idle", "multi_retr", "multi_stor")

DRIVER = r'''"""ftpbench's `-b all` sequence row by row (written by bench/ftp_transfer.py beside a
copy of the pyftpdlib sdist's scripts/ftpbench as ftpbench.py; the measuring code is ftpbench's).
usage: driver.py HOST PORT USER PASS CLIENTS SIZE SSL(0|1) UPLOAD_END(close_notify|fin) ROW_TIMEOUT
"""
import asyncore
import ftplib
import select
import signal
import ssl
import sys
import time

import ftpbench as fb

host, port, user, password, n, size, use_ssl, upload_end, row_timeout = sys.argv[1:]
fb.HOST, fb.PORT, fb.USER, fb.PASSWORD = host, int(port), user, password
fb.TIMEOUT, fb.SSL, fb.DEBUG = None, use_ssl == "1", False
fb.FILE_SIZE = fb.human2bytes(size)
N, ROW_TIMEOUT = int(n), float(row_timeout)


def print_bench(what, value, unit=""):
    # ftpbench prints "%8.2f": 100 logins or QUITs in under 5 ms would read 0.00 s.
    print(("%-50s %10.4f %-8s" % (what, value, unit)).strip(), flush=True)


fb.print_bench = print_bench
FAILED = object()
failures = 0


class RowTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise RowTimeout(f"no result in {ROW_TIMEOUT:g} s")


signal.signal(signal.SIGALRM, _alarm)


def send_close_notify(sock):
    """Send our TLS close_notify without waiting for the server's (then the caller closes)."""
    deadline = time.time() + 5
    try:
        sock.setblocking(False)
        while time.time() < deadline:
            try:
                sock.unwrap()
                return
            except ssl.SSLWantReadError:
                return  # ours is out; the server's may follow, it is not waited for
            except ssl.SSLWantWriteError:
                select.select([], [sock], [], 1)
    except (ssl.SSLError, OSError):
        pass


if fb.SSL and upload_end == "close_notify":
    _ntransfercmd = ftplib.FTP_TLS.ntransfercmd

    def ntransfercmd(self, cmd, rest=None):
        conn, size = _ntransfercmd(self, cmd, rest)
        if isinstance(conn, ssl.SSLSocket) and cmd.split()[0].upper() in ("STOR", "APPE", "STOU"):
            plain_close = conn.close

            def close():
                if getattr(conn, "_sslobj", None) is not None:
                    send_close_notify(conn)
                plain_close()
            conn.close = close
        return conn, size

    ftplib.FTP_TLS.ntransfercmd = ntransfercmd


def row(key, fn):
    global failures
    signal.setitimer(signal.ITIMER_REAL, ROW_TIMEOUT)
    try:
        return fn()
    except BaseException as exc:  # RowTimeout, ftplib's error replies, TLS and socket errors
        if isinstance(exc, KeyboardInterrupt):
            raise
        failures += 1
        print(f"ROW FAILED {key}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return FAILED
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def connect_all():
    clients = []
    for _ in range(N):
        clients.append(fb.connect())
    return clients


def timed_connect():
    with fb.timethis("%i concurrent clients (connect, login)" % N):
        clients = connect_all()
    return clients


def drop(clients):
    for ftp in clients or ():
        try:
            ftp.close()
        except Exception:
            pass
    asyncore.close_all(ignore_all=True)


def multi_retr(clients):
    fb.stor(clients[0])
    with fb.timethis("%s concurrent clients (RETR %s file)" % (N, fb.bytes2human(fb.FILE_SIZE))):
        for ftp in clients:
            ftp.voidcmd('TYPE I')
            conn = ftp.transfercmd("RETR " + fb.TESTFN)
            fb.AsyncReader(conn)
        asyncore.loop(use_poll=True)
    for ftp in clients:
        ftp.voidresp()


def multi_stor(clients):
    with fb.timethis("%s concurrent clients (STOR %s file)" % (N, fb.bytes2human(fb.FILE_SIZE))):
        for ftp in clients:
            ftp.voidcmd('TYPE I')
            conn = ftp.transfercmd("STOR " + fb.TESTFN)
            fb.AsyncWriter(conn, fb.FILE_SIZE)
        asyncore.loop(use_poll=True)
    for ftp in clients:
        ftp.voidresp()


def multi_quit(clients):
    for ftp in clients:
        fb.AsyncQuit(ftp.sock)
    with fb.timethis("%i concurrent clients (QUIT)" % N):
        asyncore.loop(use_poll=True)


def write_check():
    # As ftpbench's main(): the user must be able to STOR and DELE.
    ftp = fb.connect()
    conn = ftp.transfercmd("STOR " + fb.TESTFN)
    conn.close()
    ftp.voidresp()
    ftp.delete(fb.TESTFN)
    ftp.quit()


if row("write_check", write_check) is FAILED:
    sys.exit(2)
row("stor", fb.bench_stor)
row("retr", fb.bench_retr)
clients = row("connect_login", timed_connect)
if clients is FAILED:
    drop(None)
    clients = row("reconnect", connect_all)
row("stor_idle", lambda: fb.bench_stor(title="STOR (1 file with %s idle clients)" % N))
row("retr_idle", lambda: fb.bench_retr(title="RETR (1 file with %s idle clients)" % N))
for key, fn in (("multi_retr", multi_retr), ("multi_stor", multi_stor),
                ("multi_quit", multi_quit)):
    if clients is FAILED:
        print(f"ROW FAILED {key}: no clients", flush=True)
        failures += 1
        continue
    if row(key, lambda: fn(clients)) is FAILED and key != "multi_quit":
        drop(clients)
        clients = row("reconnect", connect_all)
row("cleanup", fb.cleanup)
sys.exit(1 if failures else 0)
'''


# --- tools: ftpbench, pyftpdlib ----------------------------------------------------------------
def _python311() -> str:
    for name in ("python3.11", "python3"):
        if path := shutil.which(name):
            return path
    raise SystemExit("python3.11 not found")


def ensure_tools() -> None:
    """The pyftpdlib sdist (for ftpbench) and a venv with pyftpdlib for the peer and the client,
    both under TOOLS; made once."""
    if not SDIST.is_file():
        SDIST.parent.mkdir(parents=True, exist_ok=True)
        B.note(f"downloading the pyftpdlib {PYFTPDLIB_VERSION} sdist into {SDIST.parent}")
        subprocess.run([_python311(), "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                        ":all:", f"pyftpdlib=={PYFTPDLIB_VERSION}", "-d", str(SDIST.parent)],
                       check=True)
    py = TOOLS_VENV / "bin" / "python"
    probe = "import pyftpdlib, OpenSSL, psutil, asyncore, asynchat; print(pyftpdlib.__ver__)"
    ok = py.exists() and subprocess.run([str(py), "-W", "ignore", "-c", probe],
                                        capture_output=True, text=True,
                                        check=False).stdout.strip() == PYFTPDLIB_VERSION
    if not ok:
        B.note(f"making the tools venv {TOOLS_VENV}")
        subprocess.run([_python311(), "-m", "venv", str(TOOLS_VENV)], check=True)
        subprocess.run([str(TOOLS_VENV / "bin" / "pip"), "install", "-q",
                        f"pyftpdlib=={PYFTPDLIB_VERSION}", "pyopenssl", "psutil", "pyasyncore",
                        "pyasynchat"], check=True)


def prepare_client(work: Path, tls_max: str) -> Path:
    """ftpbench.py (+ the FTPS fix), driver.py and the client's OpenSSL config in `work`."""
    with tarfile.open(SDIST) as tar:
        member = tar.getmember(f"pyftpdlib-{PYFTPDLIB_VERSION}/scripts/ftpbench")
        f = tar.extractfile(member)
        assert f is not None
        text = f.read().decode()
    # ftpbench bug (2.2.0): with -S, AsyncReader.handle_read leaves `chunk` unbound when recv()
    # raises SSLWantReadError (UnboundLocalError); the same one-line fix as ftp_transfer.sh.
    fixed = re.sub(r"^( *)def handle_read\(self\):\n",
                   lambda m: f'{m.group(0)}{m.group(1)}    chunk = b"pending"  # bench fix\n',
                   text, count=1, flags=re.M)
    if fixed == text:
        raise SystemExit("could not apply the ftpbench FTPS fix: has scripts/ftpbench changed?")
    (work / "ftpbench.py").write_text(fixed)
    (work / "driver.py").write_text(DRIVER)
    (work / "openssl.cnf").write_text(
        "openssl_conf = conf\n[conf]\nssl_conf = ssl\n[ssl]\nsystem_default = sys\n[sys]\n"
        f"MinProtocol = TLSv1.2\nMaxProtocol = {tls_max}\nCipherString = DEFAULT:@SECLEVEL=2\n")
    return work


def tls_cert() -> tuple[Path, Path]:
    """One RSA-2048 self-signed certificate for all three servers (as peers/tls_cert.sh)."""
    d = B.BENCH_ROOT / "tls"
    key, cert = d / "key.pem", d / "cert.pem"
    if not cert.is_file() or not key.is_file():
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "30", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        key.chmod(0o644)  # test-only key, read by vsftpd and pyftpdlib
    return key, cert


# --- the servers --------------------------------------------------------------------------------
def _wait_listen(port: int, proc: subprocess.Popen, what: str, log: Path) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): {log.read_text()[-800:]}")
        if not B.port_free(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}; see {log}")


def _stop_group(proc: subprocess.Popen | None) -> None:
    """Stop a server started in its own session (process group = its pid) and its children."""
    if proc is None or proc.poll() is not None:
        return
    with_group = os.getpgid(proc.pid) == proc.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig) if with_group else proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


class NetpostFTP(B.NetpostServer):
    def configure(self, key: Path, cert: Path) -> None:
        self.create(DOMAIN, {f"{USER}@{DOMAIN}": PASSWORD})
        (self.data / "netpost.toml").write_text(
            "[auth]\nallow_plaintext = true\n\n"
            "[limits]\nmax_connections_per_ip = 1000\n\n"
            f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n\n'
            "[ftp]\nrequire_tls_reuse = false\n")

    def start_ftp(self, port: int) -> None:
        self.serve({"ftp": port})

    def cpu_total(self) -> float:
        return self.cpu()


class _Peer:
    """A peer FTP server run as its own process group; `log` takes its output."""

    proc: subprocess.Popen | None = None
    log: Path

    def _launch(self, argv: list[str], name: str, port: int) -> None:
        self.proc = subprocess.Popen(argv, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        B.on_exit(self.stop)
        _wait_listen(port, self.proc, name, self.log)

    def cpu_total(self) -> float:
        assert self.proc is not None
        return B.tree_cpu_s(self.proc.pid)

    def stop(self) -> None:
        _stop_group(self.proc)
        self.proc = None


class Pyftpdlib(_Peer):
    def __init__(self, port: int, tls: bool, key: Path, cert: Path) -> None:
        self.port, self.tls, self.key, self.cert = port, tls, key, cert
        self.root = B.BENCH_ROOT / "ftp" / "pyftpdlib-root"
        self.log = B.BENCH_ROOT / "ftp" / "pyftpdlib.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        B.require_free(self.port)
        extra = ["--tls", "--keyfile", str(self.key), "--certfile", str(self.cert)] \
            if self.tls else []
        self._launch([str(TOOLS_VENV / "bin" / "python"), "-m", "pyftpdlib", "-i", B.LOCALHOST,
                      "-p", str(self.port), "-w", "-d", str(self.root), "-u", USER,
                      "-P", PASSWORD, *extra], "pyftpdlib", self.port)


class Vsftpd(_Peer):
    def __init__(self, port: int, tls: bool, key: Path, cert: Path) -> None:
        self.port, self.tls, self.key, self.cert = port, tls, key, cert
        self.dir = B.BENCH_ROOT / "vsftpd-bench"
        self.home = B.BENCH_ROOT / "ftp" / "vsftpd-home"
        self.log = self.dir / "stdout.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if shutil.which("vsftpd") is None:
            raise SystemExit("vsftpd not found: apt-get install -y vsftpd")
        if subprocess.run(["id", USER], capture_output=True, check=False).returncode != 0:
            subprocess.run(["useradd", "-M", "-d", str(self.home), "-s", "/bin/bash", USER],
                           check=True)
        subprocess.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n", text=True, check=True)
        shutil.rmtree(self.home, ignore_errors=True)
        for d in (self.dir, self.home, Path("/var/run/vsftpd/empty")):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.home, USER)
        conf = [
            "listen=YES", "listen_ipv6=NO", f"listen_address={B.LOCALHOST}",
            f"listen_port={self.port}", "background=NO", "anonymous_enable=NO",
            "local_enable=YES", "write_enable=YES", "local_umask=022",
            "pam_service_name=vsftpd", "secure_chroot_dir=/var/run/vsftpd/empty",
            "pasv_enable=YES", f"pasv_min_port={VSFTPD_PASV[0]}",
            f"pasv_max_port={VSFTPD_PASV[1]}", "max_clients=0", "max_per_ip=0",
            "lock_upload_files=NO", f"vsftpd_log_file={self.dir}/vsftpd.log",
        ]
        if self.tls:
            conf += ["ssl_enable=YES", f"rsa_cert_file={self.cert}",
                     f"rsa_private_key_file={self.key}", "force_local_logins_ssl=NO",
                     "force_local_data_ssl=NO", "require_ssl_reuse=NO",
                     "strict_ssl_read_eof=NO"]
        (self.dir / "vsftpd.conf").write_text("\n".join(conf) + "\n")
        B.require_free(self.port)
        self._launch(["vsftpd", str(self.dir / "vsftpd.conf")], "vsftpd", self.port)


# --- one run ----------------------------------------------------------------------------------
def parse(text: str) -> tuple[dict[str, float], dict[str, str]]:
    figures: dict[str, float] = {}
    errors: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if m := re.match(r"ROW FAILED (\w+): (.*)", line):
            errors[m.group(1)] = m.group(2)
            continue
        if m := re.match(r"(.*?)\s+([\d.]+)\s+(MB/sec|secs)", line):
            for key, pat in ROWS:
                if re.search(pat, m.group(1)):
                    figures[key] = float(m.group(2))
    for key in errors:  # a figure printed before its row failed (error replies) does not count
        figures.pop(key, None)
    return figures, errors


def run_client(work: Path, port: int, user: str, mode: str, a: argparse.Namespace,
               log: Path) -> dict:
    env = dict(os.environ)
    if mode == "ftps":
        env["OPENSSL_CONF"] = str(work / "openssl.cnf")
    cmd = [str(TOOLS_VENV / "bin" / "python"), "-W", "ignore", str(work / "driver.py"),
           B.LOCALHOST, str(port), user, PASSWORD, str(a.clients), a.size,
           "1" if mode == "ftps" else "0", a.upload_end, str(a.row_timeout)]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                           timeout=a.row_timeout * 12 + 120, check=False)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out, rc = out + "\nROW FAILED client: timeout", "timeout"
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{out}\n")
    figures, errors = parse(out)
    res: dict = {"rc": rc, "elapsed_s": round(time.time() - t0, 2), **figures}
    if errors:
        res["errors"] = errors
    if isinstance(rc, int) and rc not in (0, 1) and not errors:
        res["errors"] = {"client": out.strip().splitlines()[-1:] or ["no output"]}
    return res


def run_one(name: str, mode: str, i: int, a: argparse.Namespace, work: Path, out: Path,
            key: Path, cert: Path) -> dict:
    tls = mode == "ftps"
    if name == "netpost":
        srv: NetpostFTP | Pyftpdlib | Vsftpd = NetpostFTP(
            B.BENCH_ROOT / "netpost" / f"ftp-run{i}-{mode}")
        srv.configure(key, cert)
        srv.start_ftp(a.netpost_port)
        port, user = a.netpost_port, f"{USER}@{DOMAIN}"
    elif name == "pyftpdlib":
        srv = Pyftpdlib(a.pyftpdlib_port, tls, key, cert)
        srv.start()
        port, user = a.pyftpdlib_port, USER
    else:
        srv = Vsftpd(a.vsftpd_port, tls, key, cert)
        srv.start()
        port, user = a.vsftpd_port, USER
    try:
        if a.profile and isinstance(srv, NetpostFTP):
            srv.profile_start(out / f"netpost-{mode}-run{i}.pyspy.txt")
        cpu0, client0, load0 = srv.cpu_total(), B.children_cpu_s(), os.getloadavg()[0]
        busy0 = B.machine_busy_s()
        res = run_client(work, port, user, mode, a, out / "client.log")
        res["server_cpu_s"] = round(srv.cpu_total() - cpu0, 2)
        res["client_cpu_s"] = round(B.children_cpu_s() - client0, 2)
        res["machine_busy_cpu_s"] = round(B.machine_busy_s() - busy0, 1)
        res["loadavg1_before"] = load0
        if isinstance(srv, NetpostFTP):
            assert srv.proc is not None
            res["server_peak_rss_mib"] = round(B.rss(srv.proc.pid, "VmHWM") / 2**20, 1)
            srv.profile_stop()
    finally:
        srv.stop()
    if isinstance(srv, NetpostFTP) and not a.keep:
        shutil.rmtree(srv.data, ignore_errors=True)
    return res


# --- summary ----------------------------------------------------------------------------------
LABELS = {
    "stor": "STOR, 1 client (MiB/s)",
    "retr": "RETR, 1 client (MiB/s)",
    "connect_login": "{n} logins, one after another (logins/s)",
    "stor_idle": "STOR beside {n} idle clients (MiB/s)",
    "retr_idle": "RETR beside {n} idle clients (MiB/s)",
    "multi_retr": "{n} concurrent RETR of {size} (MiB/s)",
    "multi_stor": "{n} concurrent STOR of {size} (MiB/s)",
    "multi_quit": "{n} concurrent QUIT (s)",
}


def rate(key: str, res: dict, a: argparse.Namespace) -> float | None:
    """A row as a rate (higher is better): MiB/s, or logins/s; multi_quit stays seconds."""
    v = res.get(key)
    if v is None or key in res.get("errors", {}):
        return None
    if key in ("stor", "retr", "stor_idle", "retr_idle", "multi_quit"):
        return v
    if key == "connect_login":
        return a.clients / v if v > 0 else None
    size_mib = size_octets(a.size) / 2**20
    return a.clients * size_mib / v if v > 0 else None


def size_octets(text: str) -> int:
    units = "BKMGT"
    num, unit = text[:-1], text[-1:].upper()
    return int(float(num) * (1 << (10 * units.index(unit))))


def summarize(results: dict[str, dict[str, list[dict]]], servers: list[str],
              a: argparse.Namespace) -> tuple[str, bool]:
    lines: list[str] = []
    all_met = True
    names = {"netpost": "netpost", "pyftpdlib": f"pyftpdlib {PYFTPDLIB_VERSION}",
             "vsftpd": "vsftpd"}
    for mode in a.modes:
        head = ["row", *(names[s] for s in servers)]
        peers = [p for p in ("pyftpdlib", "vsftpd") if p in servers and "netpost" in servers]
        head += [f"netpost/{p}" for p in peers]
        rows = [head]
        for key, _pat in ROWS:
            cells = [LABELS[key].format(n=a.clients, size=a.size.upper().replace("M", " MiB"))]
            med = {}
            for s in servers:
                vals = [rate(key, r, a) for r in results[s][mode]]
                fmt = "{:.2f}" if key == "multi_quit" else ("{:,.0f}" if key != "connect_login"
                                                          else "{:,.1f}")
                failed = sum(v is None for v in vals)
                cell = B.mmm(vals, fmt)
                if failed:
                    cell += f" ({failed}/{len(vals)} failed)"
                cells.append(cell)
                med[s] = B.median(vals)
            for p in peers:
                if key == "multi_quit":
                    cells.append("–")
                    continue
                n, d = med.get("netpost"), med.get(p)
                if not n or not d:
                    cells.append("n/a")
                    all_met = False
                    continue
                r = n / d
                target = 1.0 if p == "pyftpdlib" else (0.9 if key in MIB_ROWS else None)
                ok = target is None or r >= target
                all_met &= ok
                mark = "" if target is None else (" met" if ok else " MISSED")
                cells.append(f"{r:.2f}×{mark}")
            rows.append(cells)
        lines += [f"### {mode}" + (f" (client ends uploads with {a.upload_end})"
                                   if mode == "ftps" else ""), "", B.table(rows), ""]
    lines.append("Targets: netpost/pyftpdlib >= 1.0x on every row, netpost/vsftpd >= 0.9x on "
                 "the MiB/s rows (logins vs vsftpd: no target). Ratios of medians.")
    return "\n".join(lines), all_met


def export_commit(rev: str) -> str:
    """`git archive REV src` into BENCH_ROOT; returns the resolved short hash."""
    short = subprocess.run(["git", "-C", str(B.REPO), "rev-parse", "--short", rev],
                           capture_output=True, text=True, check=True).stdout.strip()
    dst = B.BENCH_ROOT / f"netpost-{short}"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    arch = subprocess.run(["git", "-C", str(B.REPO), "archive", "--format=tar", short, "src"],
                          capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=arch, check=True)
    B.on_exit(lambda: shutil.rmtree(dst, ignore_errors=True))
    os.environ["NETPOST_SRC"] = str(dst / "src")
    return short


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--runs", type=int, default=3, help="runs per server and mode (default 3)")
    ap.add_argument("--servers", default="netpost,pyftpdlib,vsftpd",
                    help="comma-separated subset of netpost,pyftpdlib,vsftpd")
    ap.add_argument("--modes", default="plain,ftps",
                    help="plain and/or ftps (explicit AUTH TLS + PROT P); default both")
    ap.add_argument("--clients", type=int, default=100, help="ftpbench -n (default 100)")
    ap.add_argument("--size", default="10M", help="ftpbench -s, file size (default 10M)")
    ap.add_argument("--row-timeout", type=float, default=60.0,
                    help="seconds a row may take before it counts as failed (default 60)")
    ap.add_argument("--upload-end", choices=("close_notify", "fin"), default="close_notify",
                    help="how the client ends FTPS uploads (default close_notify; fin = stock "
                    "ftpbench, which netpost answers with 426)")
    ap.add_argument("--tls-max", default="TLSv1.2",
                    help="client's highest TLS version (default TLSv1.2)")
    ap.add_argument("--commit", help="measure netpost at this git revision (git archive of "
                    "src/) instead of a snapshot of the working tree")
    ap.add_argument("--profile", action="store_true", help="py-spy netpost during its runs")
    ap.add_argument("--keep", action="store_true", help="keep netpost data dirs")
    ap.add_argument("--netpost-port", type=int, default=13021, help="default 13021")
    ap.add_argument("--pyftpdlib-port", type=int, default=2121, help="default 2121")
    ap.add_argument("--vsftpd-port", type=int, default=2122,
                    help="default 2122 (passive ports 40000-40999)")
    a = ap.parse_args()
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not servers or set(servers) - {"netpost", "pyftpdlib", "vsftpd"}:
        ap.error("--servers: netpost, pyftpdlib and/or vsftpd")
    if not a.modes or set(a.modes) - {"plain", "ftps"}:
        ap.error("--modes: plain and/or ftps")
    try:
        size_octets(a.size)
    except (ValueError, IndexError):
        ap.error("--size: a number and a unit, e.g. 10M")
    if os.geteuid() != 0 and "vsftpd" in servers:
        raise SystemExit("vsftpd's user and PAM login need root (or --servers without vsftpd)")

    ensure_tools()
    rev = export_commit(a.commit) if a.commit else None
    snap = B.snapshot_src() if "netpost" in servers else {}
    if "netpost" in servers and "ftp" not in B.listener_names():
        raise SystemExit(f"this netpost has no ftp listener ({' '.join(B.listener_names())})")
    out = B.results_dir("ftp")
    B.note(f"results in {out}")
    key, cert = tls_cert()
    work = prepare_client(Path(tempfile.mkdtemp(prefix="ftpbench-", dir=B.BENCH_ROOT)),
                          a.tls_max)
    B.on_exit(lambda: shutil.rmtree(work, ignore_errors=True))

    vers = B.versions()
    if rev:
        vers["netpost"] = f"{rev} (git archive of src/)"
    vers.update(snap)
    tools_py = str(TOOLS_VENV / "bin" / "python")
    vers["pyftpdlib"] = B._cmd([tools_py, "-c", "import pyftpdlib, OpenSSL, platform; print("
                                "pyftpdlib.__ver__, '+ pyOpenSSL', OpenSSL.__version__, "
                                "'on CPython', platform.python_version())"])
    vers["ftpbench"] = (f"pyftpdlib {PYFTPDLIB_VERSION} sdist scripts/ftpbench (sha256 "
                        f"{hashlib.sha256(SDIST.read_bytes()).hexdigest()[:12]} of the sdist), "
                        f"row driver, upload end {a.upload_end}, TLS <= {a.tls_max}")
    vers["vsftpd"] = "vsftpd " + B._cmd(["dpkg-query", "-W", "-f", "${Version}", "vsftpd"])
    vers["openssl"] = B._cmd(["openssl", "version"])
    vers["args"] = vars(a) | {"servers": servers}
    B.append_jsonl(out / "versions.jsonl", vers)
    B.note(f"netpost {vers['netpost']}, {vers['pyftpdlib']}, {vers['vsftpd']}")

    results: dict[str, dict[str, list[dict]]] = {s: {m: [] for m in a.modes} for s in servers}
    for i in range(1, a.runs + 1):
        order = servers[(i - 1) % len(servers):] + servers[:(i - 1) % len(servers)]
        for mode in a.modes:
            for name in order:
                B.note(f"run {i}/{a.runs} {mode}: {name}")
                res = run_one(name, mode, i, a, work, out, key, cert)
                res.update({"server": name, "mode": mode, "run": i})
                results[name][mode].append(res)
                B.append_jsonl(out / f"{name}__ftp_{mode}.jsonl", res)
                figs = ", ".join(f"{k} {res[k]}" for k, _ in ROWS if k in res)
                B.note(f"  {name} {mode}: {figs}; server cpu {res.get('server_cpu_s')} s, "
                       f"{res['elapsed_s']} s" + (f"; FAILED {res['errors']}"
                                                   if res.get("errors") else ""))
    summary, all_met = summarize(results, servers, a)
    head = (f"ftpbench -b all -n {a.clients} -s {a.size} (row by row), {a.runs} run(s) per "
            "server and mode, median [min–max]")
    (out / "summary.md").write_text(head + "\n\n" + summary + "\n")
    print(head + "\n\n" + summary)
    print(f"\nraw results: {out}")
    failed = any(r.get("errors") for m in results.values() for rs in m.values() for r in rs)
    if failed:
        print("WARNING: some rows failed (see `errors` in the JSON lines and client.log)")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
