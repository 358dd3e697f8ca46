"""The NTP service's registration: `ntp` (UDP, 123 → 127.0.0.1:10123 by default), `nts-ke`
(TLS 1.3, 4460 → 14460), [ntp], and the upstream poller.

One `NTPRuntime` per running server holds what the listeners and the poller share: the clock
state served, the NTS cookie keys, the counters and the status (offset, jitter per upstream).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from netpost.net.tls import ensure_certificate
from netpost.net.workers import Worker, periodic
from netpost.ntp.client import NTPStatus, Poller, parse_upstream
from netpost.ntp.clock import MAX_STRATUM, ServerClock
from netpost.ntp.keys import KEY_FILE, KeyStore
from netpost.ntp.ntske_server import NTSKEServer, ntske_context
from netpost.ntp.server import NTPHandler, NTPStats, RateLimit
from netpost.registry import (
    BuildContext,
    Handler,
    ListenerDecl,
    ServerHandler,
    Service,
    TLSMode,
    Transport,
    setting,
)

if TYPE_CHECKING:
    from netpost.net.datagram import DatagramListener
    from netpost.services import Services

log = logging.getLogger("netpost.ntp")


@dataclass(frozen=True)
class NTPConfig:
    """[ntp]: the NTP server, its upstream servers and NTS."""

    upstreams: tuple[str, ...] = setting(
        (), "HOST or HOST:PORT of NTP servers to poll; the server then answers one stratum "
        "below the one selected (RFC 5905 §11.2)")
    poll_interval: float = setting(64.0, "seconds between polls of each upstream (after four "
                                   "quick ones at start)", positive=True)
    local_stratum: int = setting(10, "stratum served from the system clock while no upstream "
                                 "is selected (as chrony's 'local stratum'; trust the OS's own "
                                 "sync); 0: answer 'unsynchronised' instead")
    rate_limit: float = setting(2.0, "requests per second one client (IPv6: one /64) may "
                                "average; faster ones get a KoD RATE (RFC 5905 §7.4) and are "
                                "then ignored; 0: no limit")
    rate_burst: int = setting(16, "requests one client may send at once before rate_limit "
                              "applies", positive=True)
    set_clock: bool = setting(False, "netpost never sets the system clock (chronyd or the OS "
                              "does): must stay false")
    nts: bool = setting(True, "answer NTS-authenticated requests (RFC 8915) on the ntp "
                        "listener with cookies from the nts-ke listener")
    nts_key_rotation: float = setting(86400.0, "seconds between new NTS cookie keys",
                                      positive=True)
    nts_keys_kept: int = setting(4, "cookie keys kept (cookies made with older ones are "
                                 "refused with an NTS NAK)", positive=True)
    nts_ntp_server: str = setting("", "NTP server name NTS-KE gives clients (RFC 8915 §4.1.7); "
                                  "empty: the address they reached NTS-KE on")
    nts_ntp_port: int = setting(0, "NTP port NTS-KE gives clients; 0: the ntp listener's")

    def validate(self) -> None:
        if self.set_clock:
            raise ValueError("set_clock: netpost does not set the system clock; run chronyd "
                             "or your OS's time service for that")
        if self.local_stratum > MAX_STRATUM:
            raise ValueError(f"local_stratum must be 0-{MAX_STRATUM}")
        if self.nts_ntp_port > 65535:
            raise ValueError("nts_ntp_port must be 0-65535")
        for upstream in self.upstreams:
            parse_upstream(upstream)


@dataclass
class NTPRuntime:
    """What one running server's NTP listeners and poller share."""

    clock: ServerClock
    status: NTPStatus
    stats: NTPStats
    keys: KeyStore | None
    poller: Poller | None = None
    nts_ke: list[NTSKEServer] = field(default_factory=list)
    ntp_listeners: list[DatagramListener] = field(default_factory=list)

    def ntp_port(self) -> int | None:
        """The port the (first) ntp listener is bound to, once it is."""
        for listener in self.ntp_listeners:
            if listener.bound is not None:
                return listener.bound.port
        return None


_runtimes: dict[int, NTPRuntime] = {}


def runtime(ctx: BuildContext) -> NTPRuntime:
    """The runtime of the server `ctx.services` belongs to (made on first use)."""
    services: Services = ctx.services
    key = id(services)
    found = _runtimes.get(key)
    if found is not None:
        return found
    settings: NTPConfig = ctx.settings
    clock = ServerClock(settings.local_stratum)
    keys = None
    if settings.nts and services.data_dir is not None:
        keys = KeyStore(services.data_dir / KEY_FILE, rotation=settings.nts_key_rotation,
                        keep=settings.nts_keys_kept)
    made = NTPRuntime(clock, NTPStatus(), NTPStats(), keys)
    if settings.upstreams:
        made.poller = Poller(settings.upstreams, clock, made.status,
                             poll_interval=settings.poll_interval)
    _runtimes[key] = made
    weakref.finalize(services, _runtimes.pop, key, None)
    return made


def runtime_of(services: Services) -> NTPRuntime | None:
    """The NTP runtime (clock state, counters, upstream status) of a running server, for
    whoever reports on it (the web API); None when NTP is not built."""
    return _runtimes.get(id(services))


def build(ctx: BuildContext, decl: ListenerDecl) -> Handler:
    settings: NTPConfig = ctx.settings
    shared = runtime(ctx)
    if decl.name == "nts-ke":
        return _build_ntske(ctx, shared)
    limit = RateLimit(settings.rate_limit, settings.rate_burst)

    def handler(listener: DatagramListener) -> NTPHandler:
        shared.ntp_listeners.append(listener)
        return NTPHandler(listener, shared.clock, rate_limit=limit, keys=shared.keys,
                          stats=shared.stats)

    return handler


def _build_ntske(ctx: BuildContext, shared: NTPRuntime) -> ServerHandler:
    settings: NTPConfig = ctx.settings
    cfg = ctx.config
    data_dir = ctx.services.data_dir
    if shared.keys is None or data_dir is None:
        raise ValueError("nts-ke needs [ntp] nts = true and a data directory for its keys")
    cert, key, _ = ensure_certificate(data_dir, cfg.server.hostname, cfg.tls.certificate,
                                      cfg.tls.key)
    def ntp_port() -> int | None:
        return settings.nts_ntp_port or shared.ntp_port()

    server = NTSKEServer(shared.keys, ntske_context(cert, key),
                         ntp_server=settings.nts_ntp_server or None, ntp_port=ntp_port)
    shared.nts_ke.append(server)

    return ServerHandler(server.serve)


def workers(ctx: BuildContext) -> list[Worker]:
    settings: NTPConfig = ctx.settings
    shared = runtime(ctx)
    found: list[Worker] = []
    if shared.poller is not None:
        found.append(Worker("ntp upstream poller", shared.poller.run))
    keys = shared.keys
    if keys is not None:
        async def rotate() -> None:
            if keys.rotate_if_due():
                log.info("ntp: new NTS cookie key (keeping %d)", len(keys.keys.keys))

        found.append(periodic("nts key rotation", min(settings.nts_key_rotation, 3600.0),
                              rotate, first=1.0))
    return found


SERVICE = Service(
    name="ntp",
    doc="NTP (RFC 5905) from the system clock, with NTS (RFC 8915); netpost never sets the "
        "clock. Upstream servers set the stratum; otherwise local_stratum.",
    settings=NTPConfig,
    listeners=(
        ListenerDecl("ntp", "ntp", 123, "NTP server (+ NTS)", transport=Transport.UDP,
                     tls=TLSMode.NONE, default_host="127.0.0.1"),
        ListenerDecl("nts-ke", "nts-ke", 4460, "NTS key establishment, TLS 1.3",
                     tls=TLSMode.IMPLICIT),
    ),
    build=build,
    workers=workers,
)
