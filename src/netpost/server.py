"""The supervisor: opens the stores, builds the services, starts every registered listener and
worker, and stops gracefully on SIGTERM.

What runs comes from the registry (`netpost.registry`): for each service, each listener that
has an address gets the service's session factory (TCP) or datagram handler (UDP); each
service's workers run beside them, with the core's garbage collection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from netpost.auth.passwords import generate_password, hash_password, verify_password
from netpost.config import STANDARD_PORT, Config, ConfigError, ListenAddress
from netpost.net.datagram import DatagramListener
from netpost.net.served import ServedListener
from netpost.net.session import ListenerSpec
from netpost.net.stream import StreamListener
from netpost.net.tls import ensure_certificate, server_context
from netpost.net.trace import TraceLog
from netpost.net.workers import Worker, WorkerPool, periodic
from netpost.progress import ProgressBar
from netpost.registry import (
    OUTBOUND_TRACE,
    BuildContext,
    Registry,
    ServerHandler,
    StreamHandler,
    TLSMode,
    Transport,
    default_registry,
)
from netpost.services import Services, build_services
from netpost.store.embedded import embedded_maintenance, lock_data_dir, open_stores
from netpost.store.interfaces import Maintenance, Stores

log = logging.getLogger("netpost")

GC_INTERVAL = 600.0  # seconds between collections of expunged message files
ORPHAN_MIN_AGE = 3600.0  # a file with no row this old was left by a crash
DEMO_PASSWORD_FILE = "demo-password"
GC_YOUNG_THRESHOLD = 10_000  # allocations between young-generation collections (Python: 700)


class Listener(Protocol):
    """What the supervisor needs of a listener, whatever its transport."""

    spec: ListenerSpec
    bound: ListenAddress | None

    @property
    def busy(self) -> bool: ...
    async def start(self) -> None: ...
    def stop_accepting(self) -> None: ...
    def kill_all(self) -> None: ...
    async def wait_closed(self) -> None: ...


def ensure_demo(stores: Stores, config: Config, data_dir: Path) -> tuple[str, str | None] | None:
    """On first start (no domain yet) make the demo domain and account. Returns
    (address, password or None if it is no longer known)."""
    demo = config.demo
    path = data_dir / DEMO_PASSWORD_FILE
    address = f"{demo.user}@{demo.domain}"
    if not stores.domains.list_domains():
        password = generate_password()
        stores.domains.add_domain(demo.domain)
        stores.accounts.add_account(address, hash_password(password))
        # As `netpost domain add` does: mail the demo account sends out is DKIM-signed.
        from netpost.mail import dkim

        if dkim.current_key(data_dir, demo.domain) is None:
            dkim.create_key(data_dir, demo.domain)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        return address, password
    account = stores.accounts.get_account(address)
    if account is None:
        return None
    if path.exists():
        password = path.read_text().strip()
        if verify_password(account.password_hash, password):
            return address, password
    return address, None


async def collect_garbage(maintenance: Maintenance, orphans: bool = False) -> None:
    """Remove message bodies nothing references: expunged ones, and with `orphans` also
    bodies a crash left between writing them and committing their message."""
    report = await maintenance.collect_garbage(ORPHAN_MIN_AGE if orphans else None)
    if report.bodies:
        log.info("garbage collection: %s", report.describe())


async def migrate_layout(stores: Stores, announce: Callable[[str], None]) -> None:
    """The one-time move of small body files into blobs.db (a data directory of netpost 0.1)."""
    maintenance = embedded_maintenance(stores)
    if not maintenance.needs_migration():
        return
    loop = asyncio.get_running_loop()

    def line(text: str) -> None:  # from the writer thread: announce on the loop
        loop.call_soon_threadsafe(announce, text)

    progress = ProgressBar("moving small message files into blobs.db", lines=line)
    report = await asyncio.to_thread(maintenance.migrate, progress)
    await asyncio.sleep(0)  # let the last progress line out first
    announce(f"moved {report.moved} message bodies into blobs.db"
             + (f"; {len(report.corrupt)} damaged files left (run 'netpost check')"
                if report.corrupt else ""))


def build_listeners(registry: Registry, services: Services, config: Config,
                    trace_log: TraceLog | None, ssl_ctx: ssl.SSLContext | None
                    ) -> tuple[list[Listener], list[Worker]]:
    """A listener for every registered listener with an address; every service's workers."""
    listeners: list[Listener] = []
    workers: list[Worker] = []
    limits = config.limits
    for service in registry.services():
        settings = config.services.get(service.name)
        ctx = BuildContext(services, config, settings)
        if service.workers is not None:
            workers.extend(service.workers(ctx))
        for decl in service.listeners:
            address = config.listen_address(decl.name)
            if address is None:
                continue
            if address.port == STANDARD_PORT:  # "--listen dhcp=eth0"
                address = replace(address, port=decl.standard_port)
            if address.interface is not None and decl.transport is not Transport.UDP:
                raise ConfigError(f"listen.{decl.name}: only UDP listeners are bound to an "
                                  f"interface; give HOST:PORT")
            spec = ListenerSpec(decl.name, decl.protocol, address, decl.implicit_tls,
                                config.traced(decl.name))
            handler = service.build(ctx, decl)
            if decl.transport is Transport.UDP:
                if isinstance(handler, (StreamHandler, ServerHandler)):
                    raise TypeError(f"{decl.name}: a UDP listener needs a datagram handler")
                listeners.append(DatagramListener(spec, handler, rate=limits.datagram_rate,
                                                  burst=limits.datagram_burst,
                                                  trace_log=trace_log))
                continue
            if isinstance(handler, ServerHandler):
                listeners.append(ServedListener(
                    spec, handler, ssl_context=ssl_ctx if decl.tls is not TLSMode.NONE else None,
                    max_connections=limits.max_connections,
                    max_per_ip=limits.max_connections_per_ip, trace_log=trace_log))
                continue
            if not isinstance(handler, StreamHandler):
                raise TypeError(f"{decl.name}: a TCP listener needs a StreamHandler")
            listeners.append(StreamListener(
                spec, handler.factory,
                ssl_context=ssl_ctx if decl.tls is not TLSMode.NONE else None,
                idle_timeout=handler.idle_timeout, max_connections=limits.max_connections,
                max_per_ip=limits.max_connections_per_ip, trace_log=trace_log,
                refuse=handler.refuse,
            ))
    return listeners, workers


def settle_garbage_collector() -> None:
    """Once every service has started: what the process made so far (modules, config, the
    leases loaded, caches) lives as long as it does, so it leaves the cyclic collector's
    reach (gc.freeze) -- a full collection walks every tracked object, some 20 ms per 100,000
    here, and a datagram server stalled that long overflows its socket buffer (seen with
    DHCP at 8,000 DORA/s).  And young collections come after 10,000 allocations, not 700: a
    busy server keeps making long-lived objects (a DHCP binding, its rate-limit bucket, a
    session's state) and each collection walks the young survivors (the DHCP engine alone,
    20,000 new clients: 21 us a DISCOVER at the default, 15 us at 10,000).  Everything is still
    collected; cycles wait a little longer."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def serve(data_dir: Path, config: Config, *,
                announce: Callable[[str], None] | None = None,
                registry: Registry | None = None,
                stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT, or, when `stop` is given, until it is set (the caller then
    owns the signals and the process -- its garbage collector is left as it is: tests run a
    server in a thread this way)."""
    registry = registry or default_registry()
    if announce is None:
        def announce(line: str) -> None:
            print(line, flush=True)
    for warning in config.warnings:
        log.warning("config: %s", warning)
    with lock_data_dir(data_dir, "netpost serve"):
        return await _serve(data_dir, config, announce, registry, stop)


async def _serve(data_dir: Path, config: Config, announce: Callable[[str], None],
                 registry: Registry, stop: asyncio.Event | None) -> int:
    stores = open_stores(data_dir, small_body_limit=config.store.small_body_limit)
    try:
        await migrate_layout(stores, announce)
        cert, key, made = ensure_certificate(data_dir, config.server.hostname,
                                             config.tls.certificate, config.tls.key)
        ssl_ctx = server_context(cert, key)
        demo = ensure_demo(stores, config, data_dir)
        await collect_garbage(stores.maintenance, orphans=True)
    except BaseException:
        await asyncio.to_thread(stores.close)
        raise
    trace_log = TraceLog(data_dir / config.trace.file) if config.trace.listeners else None
    tracer = None
    if trace_log is not None and config.traced(OUTBOUND_TRACE):
        tracer = trace_log.session
    services = build_services(stores, config, data_dir=data_dir, tracer=tracer)
    listeners, workers = build_listeners(registry, services, config, trace_log, ssl_ctx)
    services.runtime.listeners.extend(listeners)
    services.runtime.trace_log = trace_log
    services.runtime.registry = registry
    workers.insert(0, periodic("garbage collection", GC_INTERVAL,
                               lambda: collect_garbage(stores.maintenance)))
    started: list[Listener] = []
    try:
        for listener in listeners:
            await listener.start()
            started.append(listener)
    except OSError as exc:
        for other in started:
            other.stop_accepting()
            await other.wait_closed()
        await asyncio.to_thread(stores.close)
        name = listener.spec.name
        raise SystemExit(f"netpost: cannot listen on {listener.spec.address} ({name}): "
                         f"{exc.strerror}; choose another with --listen {name}=HOST:PORT"
                         ) from exc

    announce(f"netpost {config.server.hostname}: data in {data_dir.resolve()}")
    if made:
        announce(f"made a self-signed TLS certificate: {cert}")
    for listener in listeners:
        decl = registry.listener(listener.spec.name)
        where = f"{listener.bound}" + ("/udp" if decl.transport is Transport.UDP else "")
        announce(f"listening {listener.spec.name:<12} {where:<16} {decl.description}")
    for listener in listeners:  # where a person points a browser (the web API and its docs)
        if listener.spec.protocol in ("http", "https") and listener.bound is not None:
            host = listener.bound.host
            host = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
            announce(f"web: {listener.spec.protocol}://{host}:{listener.bound.port}/  "
                     f"(API docs: /api/v1/docs)")
    announce(f"mail domains: {', '.join(stores.domains.list_domains()) or '(none)'}")
    if demo is not None:
        address, password = demo
        shown = password if password else f"(changed; not in {DEMO_PASSWORD_FILE})"
        announce(f"demo account: {address}  password: {shown}")
    if trace_log is not None:
        announce(f"protocol trace: {trace_log.path} (follow it with `netpost trace`)")
    if stop is None:  # the process is ours (not a test's thread): tune its collector
        settle_garbage_collector()
    announce("ready")

    pool = WorkerPool(workers)
    pool.start()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if stop is None else ()
    stop = stop or asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)

    log.info("stopping: no new connections; finishing transactions in flight")
    for listener in listeners:
        listener.stop_accepting()
    grace = config.server.shutdown_grace
    deadline = loop.time() + grace
    workers_stopped = asyncio.create_task(pool.stop(grace))
    while any(listener.busy for listener in listeners) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for listener in listeners:
        listener.kill_all()
    while any(listener.busy for listener in listeners):
        await asyncio.sleep(0.01)
    for listener in listeners:
        await listener.wait_closed()
    await workers_stopped
    await asyncio.to_thread(stores.close)
    if services.runtime.trace_log is not None:  # the API may have opened one meanwhile
        services.runtime.trace_log.close()
    log.info("stopped")
    return 0


def run(data_dir: Path, config: Config) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(serve(data_dir, config))
    return uvloop.run(serve(data_dir, config))
