"""The supervisor: opens the stores, starts every listener, stops gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from netpost.auth.passwords import generate_password, hash_password, verify_password
from netpost.auth.sasl import Credentials
from netpost.auth.throttle import FailureThrottle
from netpost.config import LISTENERS, Config
from netpost.mail.address import normalize_address, valid_address
from netpost.mail.delivery import LocalDelivery
from netpost.net.listener import Listener, ListenerSpec, Session
from netpost.net.tls import ensure_certificate, server_context
from netpost.net.trace import TraceLog
from netpost.pop3 import server as pop3_server
from netpost.smtp import server as smtp_server
from netpost.store.blobs import FileBlobStore
from netpost.store.committer import GroupCommitter
from netpost.store.interfaces import Account
from netpost.store.sqlite import SQLiteStore

log = logging.getLogger("netpost")

DB_NAME = "netpost.db"
GC_INTERVAL = 600.0  # seconds between collections of expunged message files
ORPHAN_MIN_AGE = 3600.0  # a file with no row this old was left by a crash
DEMO_PASSWORD_FILE = "demo-password"


def open_store(data_dir: Path) -> SQLiteStore:
    data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(str(data_dir / DB_NAME))


class App:
    """The services every session uses."""

    def __init__(self, data_dir: Path, config: Config) -> None:
        self.data_dir = data_dir
        self.config = config
        self.store = open_store(data_dir)
        self.blobs = FileBlobStore(str(data_dir / "blobs"))
        self.committer = GroupCommitter(self.store, self.blobs)
        self.delivery = LocalDelivery(self.store, self.store, self.committer,
                                      config.server.hostname)
        a = config.auth
        self.throttle = FailureThrottle(a.failure_delay, a.failure_max_delay, a.failure_window)

    async def login(self, creds: Credentials, peer: str, protocol: str) -> Account | None:
        """Check a login; failures are answered late, later each time (same reply whether or
        not the user exists)."""
        earlier = self.throttle.failures(peer)
        if earlier:
            await asyncio.sleep(min(self.throttle.maximum,
                                    self.throttle.base * 2 ** (earlier - 1)))
        address = normalize_address(creds.authcid)
        account = self.store.get_account(address) if valid_address(address) else None
        authz_ok = not creds.authzid or normalize_address(creds.authzid) == address
        ok = await asyncio.to_thread(
            verify_password, account.password_hash if account else None, creds.password
        )
        if ok and authz_ok and account is not None:
            self.throttle.record_success(peer)
            return account
        await asyncio.sleep(self.throttle.record_failure(peer, creds.authcid, protocol))
        return None

    async def collect_garbage(self, orphans: bool = False) -> None:
        """Remove message files nothing references: expunged ones, and with `orphans` also
        files a crash left between writing them and committing their message."""
        removed = await self.committer.collect_garbage(
            ORPHAN_MIN_AGE if orphans else None)
        if removed:
            log.info("removed %d unreferenced message file(s)", removed)

    async def collect_garbage_forever(self) -> None:
        while True:
            await asyncio.sleep(GC_INTERVAL)
            try:
                await self.collect_garbage()
            except Exception:
                log.exception("garbage collection failed")

    async def close(self) -> None:
        await self.committer.close()
        self.blobs.close()
        self.store.close()


def ensure_demo(app: App) -> tuple[str, str | None] | None:
    """On first start (no domain yet) make the demo domain and account. Returns
    (address, password or None if it is no longer known)."""
    demo = app.config.demo
    path = app.data_dir / DEMO_PASSWORD_FILE
    address = f"{demo.user}@{demo.domain}"
    if not app.store.list_domains():
        password = generate_password()
        app.store.add_domain(demo.domain)
        app.store.add_account(address, hash_password(password))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        return address, password
    if app.store.get_account(address) is None:
        return None
    if path.exists():
        password = path.read_text().strip()
        account = app.store.get_account(address)
        if account is not None and verify_password(account.password_hash, password):
            return address, password
    return address, None


def _factory(app: App, cls: type[Session]) -> Callable[..., Session]:
    return lambda listener, reader, writer, peer: cls(app, listener, reader, writer, peer)


DESCRIPTIONS = {
    "smtp": "SMTP MX (mail for local domains), STARTTLS",
    "submission": "SMTP submission, STARTTLS + AUTH required",
    "submissions": "SMTP submission, implicit TLS + AUTH required",
    "pop3": "POP3, STLS",
    "pop3s": "POP3, implicit TLS",
}


def build_listeners(app: App, trace_log: TraceLog | None, ssl_ctx: object) -> list[Listener]:
    cfg = app.config
    listeners = []
    for name, (protocol, implicit, _std) in LISTENERS.items():
        address = cfg.listen_address(name)
        if address is None:
            continue
        spec = ListenerSpec(name, protocol, address, implicit, cfg.traced(name))
        if protocol == "pop3":
            factory, refuse = _factory(app, pop3_server.POP3Session), pop3_server.refuse_line
        else:
            factory, refuse = _factory(app, smtp_server.SMTPSession), smtp_server.refuse_line
        listeners.append(Listener(
            spec, factory, ssl_context=ssl_ctx,  # type: ignore[arg-type]
            idle_timeout=cfg.limits.pop3_idle_timeout if protocol == "pop3"
            else cfg.limits.idle_timeout,
            max_connections=cfg.limits.max_connections,
            max_per_ip=cfg.limits.max_connections_per_ip, trace_log=trace_log, refuse=refuse,
        ))
    return listeners


async def serve(data_dir: Path, config: Config,
                announce: Callable[[str], None] | None = None) -> int:
    if announce is None:
        def announce(line: str) -> None:
            print(line, flush=True)
    app = App(data_dir, config)
    cert, key, made = ensure_certificate(data_dir, config.server.hostname,
                                         config.tls.certificate, config.tls.key)
    ssl_ctx = server_context(cert, key)
    trace_log = TraceLog(data_dir / config.trace.file) if config.trace.listeners else None
    demo = ensure_demo(app)
    await app.collect_garbage(orphans=True)
    listeners = build_listeners(app, trace_log, ssl_ctx)
    try:
        for listener in listeners:
            await listener.start()
    except OSError as exc:
        for listener in listeners:
            listener.stop_accepting()
        await app.close()
        raise SystemExit(f"netpost: cannot listen on {listener.spec.address} "
                         f"({listener.spec.name}): {exc.strerror}; choose another with "
                         f"--listen {listener.spec.name}=HOST:PORT") from exc

    announce(f"netpost {config.server.hostname}: data in {data_dir.resolve()}")
    if made:
        announce(f"made a self-signed TLS certificate: {cert}")
    for listener in listeners:
        announce(f"listening {listener.spec.name:<12} {listener.bound}  "
                 f"{DESCRIPTIONS[listener.spec.name]}")
    announce(f"mail domains: {', '.join(app.store.list_domains()) or '(none)'}")
    if demo is not None:
        address, password = demo
        shown = password if password else f"(changed; not in {DEMO_PASSWORD_FILE})"
        announce(f"demo account: {address}  password: {shown}")
    if trace_log is not None:
        announce(f"protocol trace: {trace_log.path} (follow it with `netpost trace`)")
    announce("ready")

    gc_task = asyncio.create_task(app.collect_garbage_forever())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("stopping: no new connections; finishing transactions in flight")
    gc_task.cancel()
    for listener in listeners:
        listener.stop_accepting()
    deadline = loop.time() + config.server.shutdown_grace
    while any(listener.sessions for listener in listeners) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for listener in listeners:
        listener.kill_all()
    while any(listener.sessions for listener in listeners):
        await asyncio.sleep(0.01)
    for listener in listeners:
        if listener.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.server.wait_closed(), 2)
    await app.close()
    if trace_log is not None:
        trace_log.close()
    log.info("stopped")
    return 0


def run(data_dir: Path, config: Config) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(serve(data_dir, config))
    return uvloop.run(serve(data_dir, config))
