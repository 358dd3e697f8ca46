"""The service registry: every protocol says here what it listens on and how it is built.

A protocol package declares one `Service` (in its `service.py`): its listeners (name, standard
port, transport, TLS mode, description), its config section (a frozen dataclass whose fields
are declared with `setting`), a `build` function that turns the shared services into a session
factory (TCP) or datagram handler (UDP) for each listener, and its background workers.
`config.py`, `netpost init`, the supervisor (`server.py`) and the start-up listing read the
registry; nothing else knows which protocols exist.

Adding a protocol: write its package, then add its `service` module to `BUILTIN` below.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import socket

    from netpost.config import Config
    from netpost.net.datagram import DatagramHandler, DatagramListener
    from netpost.net.served import ServedListener
    from netpost.net.session import SessionFactory
    from netpost.net.workers import Worker
    from netpost.services import Services

# One line per protocol package: the module that defines its `SERVICE`.
BUILTIN: tuple[str, ...] = (
    "netpost.smtp.service",
    "netpost.pop3.service",
    "netpost.imap.service",
    "netpost.relay.service",
    "netpost.ftp.service",
    "netpost.sftp.service",
    "netpost.web.service",
    "netpost.dhcp.service",
    "netpost.ntp.service",
)

# The trace name of outbound SMTP sessions (the relay's), beside the listeners' names.
OUTBOUND_TRACE = "smtp-out"

T = TypeVar("T")


class Transport(enum.Enum):
    TCP = "tcp"  # a stream session per connection (net/stream.py)
    UDP = "udp"  # datagrams handed to one handler (net/datagram.py)


class TLSMode(enum.Enum):
    NONE = "none"  # no TLS on this listener (UDP, or a protocol without it)
    STARTTLS = "starttls"  # plaintext first; the protocol's command upgrades (STARTTLS, STLS)
    IMPLICIT = "implicit"  # TLS from the first octet (RFC 8314)


@dataclass(frozen=True)
class ListenerDecl:
    """One listener a service offers, e.g. `smtp` on 25 (+ 10000 by default)."""

    name: str  # unique over all services: the key in [listen], --listen and the trace
    protocol: str  # what the session speaks ("smtp", "submission", "pop3", ...)
    standard_port: int  # the IANA port; the default is this + 10000 so no root is needed
    description: str  # printed at start
    transport: Transport = Transport.TCP
    tls: TLSMode = TLSMode.STARTTLS
    enabled: bool = True  # listening by default; False = "off" until configured
    default_host: str | None = None  # None = server.bind
    default_port: int | None = None  # None = standard_port + 10000

    @property
    def implicit_tls(self) -> bool:
        return self.tls is TLSMode.IMPLICIT

    def default_address(self) -> str:
        if not self.enabled:
            return "off"
        port = self.standard_port + 10000 if self.default_port is None else self.default_port
        return f"{self.default_host or ''}:{port}"


@dataclass(frozen=True)
class StreamHandler:
    """What a TCP listener needs from its service."""

    factory: SessionFactory  # builds the session for one accepted connection
    refuse: Callable[[str], bytes]  # the protocol's "too many connections" line
    idle_timeout: float  # seconds a client may stay silent


class RunningServer(Protocol):
    """A library's server on a socket netpost listens on (asyncssh's, an ASGI server's)."""

    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


@dataclass(frozen=True)
class ServerHandler:
    """What a service's `build` returns for a TCP listener that a library serves itself:
    `serve(sock, listener)` takes the bound, listening socket (net/served.py)."""

    serve: Callable[[socket.socket, ServedListener], Awaitable[RunningServer]]


@dataclass(frozen=True)
class BuildContext:
    """What a service's `build` and `workers` functions get: the shared services, the whole
    configuration and the service's own section."""

    services: Services
    config: Config
    settings: Any  # the instance of the service's `settings` class


Handler = StreamHandler | ServerHandler | Callable[["DatagramListener"], "DatagramHandler"]


@dataclass(frozen=True)
class Service:
    name: str  # the config section, [name]; by convention the package name
    listeners: tuple[ListenerDecl, ...]
    build: Callable[[BuildContext, ListenerDecl], Handler]
    settings: type[Any] | None = None  # frozen dataclass of `setting` fields, or no section
    doc: str = ""  # the section's comment in `netpost init`
    workers: Callable[[BuildContext], Sequence[Worker]] | None = None


def setting(default: T, doc: str, *, positive: bool = False,
            parse: Callable[[Any], T] | None = None) -> T:
    """A config field: its default, the comment `netpost init` writes beside it, and whether
    0 is refused (a limit of 0 would make the service unusable).  `parse` takes the TOML
    value of a table-valued setting (e.g. [[dhcp.subnets]]) and returns the field's value, or
    raises ValueError naming what is wrong."""
    return field(default=default, metadata={"doc": doc, "positive": positive, "parse": parse})


def setting_doc(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("doc", ""))


def setting_parse(f: dataclasses.Field[Any]) -> Callable[[Any], Any] | None:
    parse = f.metadata.get("parse")
    return parse if callable(parse) else None


def setting_positive(f: dataclasses.Field[Any]) -> bool:
    return bool(f.metadata.get("positive", False))


class RegistryError(Exception):
    pass


class Registry:
    """The services netpost runs, in registration order."""

    def __init__(self, services: Sequence[Service] = ()) -> None:
        self._services: dict[str, Service] = {}
        self._listeners: dict[str, tuple[Service, ListenerDecl]] = {}
        for service in services:
            self.register(service)

    def register(self, service: Service) -> None:
        if service.name in self._services:
            raise RegistryError(f"service {service.name!r} is registered twice")
        for decl in service.listeners:
            if decl.name in self._listeners:
                raise RegistryError(f"listener {decl.name!r} is declared twice")
        if service.settings is not None and not dataclasses.is_dataclass(service.settings):
            raise RegistryError(f"service {service.name!r}: settings must be a dataclass")
        self._services[service.name] = service
        for decl in service.listeners:
            self._listeners[decl.name] = (service, decl)

    def services(self) -> Iterator[Service]:
        return iter(self._services.values())

    def service(self, name: str) -> Service:
        return self._services[name]

    def listeners(self) -> Iterator[tuple[Service, ListenerDecl]]:
        return iter(self._listeners.values())

    def listener(self, name: str) -> ListenerDecl:
        return self._listeners[name][1]

    def listener_names(self) -> list[str]:
        return list(self._listeners)

    def sections(self) -> Mapping[str, type[Any]]:
        """Config section name -> settings class, for the services that have one."""
        return {s.name: s.settings for s in self._services.values() if s.settings is not None}

    def with_services(self, *extra: Service) -> Registry:
        """A copy of this registry with `extra` registered after the others."""
        return Registry([*self._services.values(), *extra])


_default: Registry | None = None


def default_registry() -> Registry:
    """The built-in services (imported on first use, so that importing config is cheap)."""
    global _default
    if _default is None:
        registry = Registry()
        for module in BUILTIN:
            registry.register(importlib.import_module(module).SERVICE)
        _default = registry
    return _default
