"""A real Postfix for tests: a private instance on 127.0.0.1:<free port> as an MX peer, and
Postfix's smtp-sink as a fast sink for benchmarks.

    with PostfixPeer(domain="b.test", users=["u1"]) as mx:        # mail for u1@b.test → Maildir
        smtplib.SMTP("127.0.0.1", mx.port).sendmail(...)
        mx.wait_for_messages("u1", 1)                              # [bytes, ...]

    with PostfixPeer(relayhost=("127.0.0.1", netpost_port)) as pf:   # Postfix → netpost
        pf.send("a@b.test", ["x@netpost.test"], message)            # relayed to relayhost

Everything lives in a temporary directory under /tmp/netpost-postfix/: its own
config_directory (main.cf, master.cf), queue_directory, data_directory and log file; /etc/postfix
is only read (Debian's master.cf is the template). No listener on port 25, no DNS lookups
(smtp_dns_support_level = disabled; the relayhost is an address), no chroot, short retry times.
Mail for the instance's domain is delivered by virtual(8) to Maildirs owned by `nobody`. An
instance is stopped on exit; instances left by a test process that died are stopped and removed
by the next start.

Postfix comes from Debian's `postfix` package, installed with the debconf answer
"No configuration" (scripts/install-test-deps.sh); the fixture needs root, as Postfix's master does.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
SMTP_SINK = "/usr/sbin/smtp-sink"
BASE = Path(tempfile.gettempdir()) / "netpost-postfix"
START_TIMEOUT = 20.0
OWNER_FILE = "owner.pid"


def _require(path: str, package: str) -> None:
    if not Path(path).exists():
        raise RuntimeError(f"{path} is missing: install the Debian package {package} "
                           "(scripts/install-test-deps.sh)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _wait_banner(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(512).startswith(b"220"):
                    with contextlib.suppress(OSError):
                        s.sendall(b"QUIT\r\n")
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"no SMTP banner on {host}:{port}: {last}")


def _stop_instance(root: Path) -> None:
    """Stop the Postfix in `root` (whatever state it is in) and remove the directory."""
    conf = root / "etc"
    if (conf / "main.cf").exists():
        subprocess.run([POSTFIX, "-c", str(conf), "stop"], capture_output=True, timeout=30)
    master = _read_pid(root / "queue" / "pid" / "master.pid")
    if master is not None:
        deadline = time.monotonic() + 10
        while _alive(master) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(master):
            with contextlib.suppress(ProcessLookupError):
                os.kill(master, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def clean_leftovers() -> None:
    """Stop and remove instances whose test process is gone (a crash, a SIGKILLed run)."""
    if not BASE.is_dir():
        return
    for root in BASE.iterdir():
        owner = _read_pid(root / OWNER_FILE)
        if owner is None or not _alive(owner):
            _stop_instance(root)


class PostfixPeer:
    """A private Postfix: smtpd on host:port accepting mail for `domain` (users' Maildirs) and,
    from 127.0.0.0/8, for relay to `relayhost` (host, port) if given (else it bounces)."""

    def __init__(self, *, domain: str = "b.test", users: Sequence[str] = ("u1", "u2"),
                 relayhost: tuple[str, int] | None = None, host: str = "127.0.0.1",
                 port: int | None = None, myhostname: str | None = None,
                 tls_cert: tuple[Path, Path] | None = None,
                 extra_main: dict[str, str] | None = None) -> None:
        _require(POSTFIX, "postfix")
        if os.geteuid() != 0:
            raise RuntimeError("the Postfix fixture must run as root (Postfix's master does)")
        self.domain = domain
        self.users = list(users)
        self.relayhost = relayhost
        self.host = host
        self.port = port or 0
        self.myhostname = myhostname or f"mx.{domain}"
        self.tls_cert = tls_cert
        self.extra_main = dict(extra_main or {})
        self.root: Path | None = None

    # -- paths -------------------------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        if self.root is None:
            raise RuntimeError("Postfix is not started")
        return self.root.joinpath(*parts)

    @property
    def conf(self) -> Path:
        return self._path("etc")

    @property
    def mail_base(self) -> Path:
        return self._path("mail")

    def maildir(self, user: str) -> Path:
        return self.mail_base / user / "Maildir"

    @property
    def log(self) -> str:
        path = self._path("postfix.log")
        return path.read_text(errors="replace") if path.exists() else ""

    # -- life --------------------------------------------------------------------------------

    def _main_cf(self) -> dict[str, str]:
        root = self._path()
        nobody = _nobody()
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(root / "queue"),
            "data_directory": str(root / "data"),
            "myhostname": self.myhostname,
            "mydomain": self.domain,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv6" if ":" in self.host else "ipv4",
            "mynetworks": "127.0.0.0/8 [::1]/128",
            "relay_domains": "",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(root / "mail"),
            "virtual_mailbox_maps": f"texthash:{root / 'etc' / 'vmailbox'}",
            "virtual_uid_maps": f"static:{nobody[0]}",
            "virtual_gid_maps": f"static:{nobody[1]}",
            "maillog_file": str(root / "postfix.log"),
            "maillog_file_prefixes": str(root),
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "smtpd_peername_lookup": "no",  # no reverse DNS for 127.0.0.1
            "smtp_dns_support_level": "disabled",  # no MX lookups: relayhost is an address
            "smtp_host_lookup": "native",
            "smtpd_banner": "$myhostname ESMTP Postfix",
            # A peer that comes back should get its mail within seconds, not minutes.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
            "relayhost": f"[{self.relayhost[0]}]:{self.relayhost[1]}" if self.relayhost else "",
            # Without a relayhost, mail for other domains is refused at RCPT (no open relay).
            "smtpd_relay_restrictions": ("permit_mynetworks, reject_unauth_destination"
                                         if self.relayhost else "reject_unauth_destination"),
            "smtp_tls_security_level": "may" if self.relayhost else "none",
            "smtpd_tls_security_level": "may" if self.tls_cert else "none",
        }
        if self.tls_cert:
            main["smtpd_tls_chain_files"] = f"{self.tls_cert[1]}, {self.tls_cert[0]}"
        main.update(self.extra_main)
        return main

    def start(self) -> PostfixPeer:
        clean_leftovers()
        BASE.mkdir(mode=0o755, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="pf-", dir=BASE))
        self.root.chmod(0o755)
        (self.root / OWNER_FILE).write_text(str(os.getpid()))
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            log = self.log
            self.stop()
            raise RuntimeError(f"Postfix did not start; its log:\n{log}") from None
        return self

    def _start(self) -> None:
        conf = self.conf
        for sub in ("etc", "queue", "data", "mail"):
            self._path(sub).mkdir(mode=0o755)
        shutil.chown(self._path("data"), "postfix")
        os.chown(self.mail_base, *_nobody())
        shutil.copy("/etc/postfix/master.cf", conf / "master.cf")  # Debian's stock services
        with contextlib.suppress(FileNotFoundError):
            shutil.copy("/etc/postfix/dynamicmaps.cf", conf / "dynamicmaps.cf")
        (conf / "vmailbox").write_text(
            "".join(f"{u}@{self.domain} {u}/Maildir/\n" for u in self.users))
        (conf / "main.cf").write_text(
            "".join(f"{k} = {v}\n" for k, v in self._main_cf().items()))
        if not self.port:
            self.port = free_port(self.host)
        listen = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        self._postconf("-M#", "smtp/inet")  # nothing on port 25
        self._postconf("-Me", f"{listen}/inet = {listen} inet n - n - - smtpd")
        self._postconf("-F", "*/*/chroot = n")  # no chroot jail to populate
        self._run(POSTFIX, "-c", str(conf), "start")
        _wait_banner(self.host, self.port, START_TIMEOUT)

    def _postconf(self, *args: str) -> None:
        self._run(POSTCONF, "-c", str(self.conf), *args)

    def _run(self, *cmd: str) -> str:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): "
                               f"{result.stdout}{result.stderr}")
        return result.stdout

    def stop(self) -> None:
        atexit.unregister(self.stop)
        root, self.root = self.root, None
        if root is not None:
            _stop_instance(root)

    def __enter__(self) -> PostfixPeer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- use ---------------------------------------------------------------------------------

    def send(self, mail_from: str, rcpts: Sequence[str], message: bytes) -> None:
        """Submit over SMTP to this Postfix (from 127.0.0.1, so relaying is allowed)."""
        with smtplib.SMTP(self.host, self.port, local_hostname="client.test",
                          timeout=30) as smtp:
            smtp.sendmail(mail_from, list(rcpts), message)

    def messages(self, user: str) -> list[bytes]:
        """Delivered messages of `user`, oldest first (Maildir new/ and cur/)."""
        files: list[Path] = []
        for sub in ("new", "cur"):
            d = self.maildir(user) / sub
            if d.is_dir():
                files.extend(p for p in d.iterdir() if p.is_file())
        files.sort(key=lambda p: (p.stat().st_mtime, p.name))
        return [p.read_bytes() for p in files]

    def wait_for_messages(self, user: str, count: int, timeout: float = 20.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(user)
            if len(found) >= count or time.monotonic() > deadline:
                if len(found) < count:
                    raise AssertionError(f"{user}@{self.domain}: {len(found)} of {count} "
                                         f"messages after {timeout} s; log:\n{self.log[-4000:]}")
                return found
            time.sleep(0.05)

    def queue(self) -> str:
        """`postqueue -p`: what Postfix still holds ("Mail queue is empty" when nothing)."""
        return self._run(POSTQUEUE, "-c", str(self.conf), "-p")

    def queue_ids(self) -> list[str]:
        return re.findall(r"^([0-9A-F]{6,})[*!]?\s", self.queue(), re.M)

    def flush(self) -> None:
        """`postqueue -f`: try deferred mail now."""
        self._run(POSTQUEUE, "-c", str(self.conf), "-f")

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.queue_ids():
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix queue not empty after {timeout} s:\n"
                                     f"{self.queue()}\nlog:\n{self.log[-4000:]}")
            time.sleep(0.1)


def _nobody() -> tuple[int, int]:
    """uid and gid virtual(8) delivers as (it refuses root)."""
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


class SmtpSink:
    """Postfix's smtp-sink on host:port: answers every message with 250 and counts them.

    `count` is the number of messages it has accepted (its -c counter)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None, backlog: int = 1024,
                 args: Sequence[str] = ()) -> None:
        _require(SMTP_SINK, "postfix")
        self.host = host
        self.port = port or 0
        self.backlog = backlog
        self.args = list(args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._count = 0
        self._reader: threading.Thread | None = None

    @property
    def count(self) -> int:
        return self._count

    def start(self) -> SmtpSink:
        if not self.port:
            self.port = free_port(self.host)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self._proc = subprocess.Popen(
            [SMTP_SINK, "-c", *user, *self.args, f"{self.host}:{self.port}", str(self.backlog)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        atexit.register(self.stop)
        self._reader = threading.Thread(target=self._read_counter, daemon=True)
        self._reader.start()
        try:
            _wait_banner(self.host, self.port, START_TIMEOUT)
        except RuntimeError:
            self.stop()
            raise
        return self

    def _read_counter(self) -> None:
        # smtp-sink -c writes the running count as "\r<n>" (no newline) after each message.
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        buf = b""
        while chunk := proc.stdout.read1(4096):
            buf = (buf + chunk)[-64:]
            numbers = re.findall(rb"\d+", buf.rsplit(b"\r", 1)[-1] or buf)
            if numbers:
                self._count = max(self._count, int(numbers[-1]))

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self._count < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"smtp-sink counted {self._count} of {count}")
            time.sleep(0.02)

    def stop(self) -> None:
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
