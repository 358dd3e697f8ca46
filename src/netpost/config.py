"""Typed configuration: defaults, `netpost.toml` loading with strict validation, `netpost init`.

Every setting has a default, so an empty data directory runs. A config file may set any subset;
an unknown key or a value of the wrong type is refused with one line naming it.

The core sections ([server], [tls], [auth], [limits], [trace], [demo]) are defined here; each
service adds its own section and listeners through the registry (`netpost.registry`).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from netpost.registry import (
    OUTBOUND_TRACE,
    Registry,
    TLSMode,
    Transport,
    default_registry,
    setting,
    setting_doc,
    setting_parse,
    setting_positive,
)

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem, described in one line fit for the user."""


# The port of a listener given only an interface ("--listen dhcp=eth0"): its standard port.
STANDARD_PORT = -1


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int  # STANDARD_PORT until the supervisor puts the listener's own in
    interface: str | None = None  # bound to this network interface (SO_BINDTODEVICE)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == STANDARD_PORT else f":{self.port}"
        return f"{host}{port}" + (f"%{self.interface}" if self.interface else "")


def _interface_name(name: str, what: str) -> str:
    """A Linux interface name (IFNAMSIZ: 15 octets, no '/', ':', '%' or space)."""
    if not name or len(name.encode()) > 15 or any(c in name for c in "/:% ") \
            or not name.isprintable():
        raise ConfigError(f"{what}: {name!r} is not a network interface name")
    return name


def parse_listen(value: str, what: str) -> ListenAddress | None:
    """Parse "HOST:PORT", "[v6]:PORT", ":PORT" (default host later), "off", or for UDP
    listeners that serve a link (DHCP) "IFACE" (all addresses, standard port, bound to the
    interface) and "HOST:PORT%IFACE"."""
    value = value.strip()
    if value == "off":
        return None
    if ":" not in value and "%" not in value:
        return ListenAddress("0.0.0.0", STANDARD_PORT, _interface_name(value, what))
    value, percent, interface = value.partition("%")
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"{what}: {value!r} is not HOST:PORT, IFACE or 'off'")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is out of range 0-65535")
    host = host.strip("[]") or ("0.0.0.0" if percent else "127.0.0.1")
    return ListenAddress(host, port, _interface_name(interface, what) if percent else None)


@dataclass(frozen=True)
class ServerSettings:
    hostname: str = setting(
        "localhost", "name in greetings, Received: fields and the self-signed certificate")
    bind: str = setting("127.0.0.1", "default address of every listener")
    shutdown_grace: float = setting(30.0, "seconds SIGTERM waits for transactions in flight")


@dataclass(frozen=True)
class TLSSettings:
    certificate: str = setting("", "PEM certificate chain file")
    key: str = setting("", "PEM private key file")


@dataclass(frozen=True)
class AuthSettings:
    allow_plaintext: bool = setting(
        False, "accept passwords before TLS: ONLY for development on loopback")
    failure_delay: float = setting(0.5, "seconds of delay after a failed login; doubles per "
                                   "failure")
    failure_max_delay: float = setting(16.0, "upper bound of that delay")
    failure_window: float = setting(
        900.0, "seconds without failure after which an address is forgiven")
    verified_cache_ttl: float = setting(
        3600.0, "seconds a successful login is remembered (an HMAC of the password, in memory "
        "only) so the next ones skip the argon2 check, as Dovecot's auth_cache; a password "
        "change ends it; 0: verify every login")


@dataclass(frozen=True)
class LimitSettings:
    max_message_size: int = setting(50 * 1024 * 1024, "octets; larger messages get 552 5.3.4 "
                                    "(RFC 1870)", positive=True)
    max_errors: int = setting(20, "bad commands before a session is closed", positive=True)
    max_connections_per_ip: int = setting(
        32, "concurrent sessions from one client address (IPv6: one /64)", positive=True)
    max_connections: int = setting(2048, "concurrent sessions per listener", positive=True)
    datagram_rate: float = setting(100.0, "UDP datagrams per second from one address (IPv6: one "
                                   "/64); more are dropped", positive=True)
    datagram_burst: int = setting(200, "UDP datagrams one address may send at once",
                                  positive=True)


@dataclass(frozen=True)
class StoreSettings:
    small_body_limit: int = setting(
        128 * 1024, "octets; bodies up to this are rows of blobs.db (one fsync per group "
        "commit), larger ones files of their own", positive=True)


@dataclass(frozen=True)
class TraceSettings:
    listeners: tuple[str, ...] = setting((), "listener names to trace, or [\"all\"]")
    file: str = setting("trace.log", "trace file, relative to the data directory")


@dataclass(frozen=True)
class DemoSettings:
    domain: str = setting("netpost.test", "mail domain of the demo account")
    user: str = setting("demo", "local part of the demo account")


# The core sections, in the order `netpost init` writes them (services' sections follow).
CORE_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "tls": TLSSettings,
    "auth": AuthSettings,
    "limits": LimitSettings,
    "store": StoreSettings,
    "trace": TraceSettings,
    "demo": DemoSettings,
}

_DOCS = {
    "server": "The process as a whole.",
    "listen": "Where each service listens: \"HOST:PORT\", \":PORT\" (on server.bind) or \"off\".\n"
    "# Defaults are the standard ports + 10000 so that no root is needed.",
    "tls": "TLS 1.2 or newer on every listener. Empty = a self-signed certificate for\n"
    "# server.hostname is made on first start in DATA/tls/.",
    "auth": "Accounts and logins.",
    "limits": "Bounds shared by every service; going past them gets the protocol's own error.",
    "store": "Where mail is kept (the embedded backend: DATA/netpost.db, DATA/blobs.db,\n"
    "# DATA/blobs/ for large bodies).",
    "trace": "Protocol trace: sessions logged as `C: ...` / `S: ...` conversations\n"
    "# (secrets and message bodies redacted). Follow it with `netpost trace`.",
    "demo": "What `netpost serve` creates on first start when no domain exists yet.",
}


def _default_listen(registry: Registry) -> dict[str, str]:
    return {decl.name: decl.default_address() for _, decl in registry.listeners()}


def _default_sections(registry: Registry) -> dict[str, Any]:
    return {name: cls() for name, cls in registry.sections().items()}


@dataclass(frozen=True)
class Config:
    server: ServerSettings = field(default_factory=ServerSettings)
    listen: dict[str, str] = field(default_factory=lambda: _default_listen(default_registry()))
    tls: TLSSettings = field(default_factory=TLSSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    trace: TraceSettings = field(default_factory=TraceSettings)
    demo: DemoSettings = field(default_factory=DemoSettings)
    # Each service's own section ([smtp], [pop3], ...), by section name.
    services: Mapping[str, Any] = field(
        default_factory=lambda: _default_sections(default_registry()))
    # One line per deprecated setting found in the file (logged at start).
    warnings: tuple[str, ...] = ()

    @classmethod
    def defaults(cls, registry: Registry | None = None) -> Config:
        registry = registry or default_registry()
        return cls(listen=_default_listen(registry), services=_default_sections(registry))

    def listen_address(self, name: str) -> ListenAddress | None:
        addr = parse_listen(self.listen[name], f"listen.{name}")
        if addr is not None and self.listen[name].strip().startswith(":"):
            addr = ListenAddress(self.server.bind, addr.port, addr.interface)
        return addr

    def traced(self, listener: str) -> bool:
        return "all" in self.trace.listeners or listener in self.trace.listeners

    def section(self, name: str, cls: type[T]) -> T:
        """The settings of service section `name`, typed."""
        value = self.services[name]
        if not isinstance(value, cls):
            raise TypeError(f"section [{name}] holds {type(value).__name__}, not {cls.__name__}")
        return value


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Check a TOML value against the type of the default; ints are fine where floats go."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{key}: expected a non-negative integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{key}: expected a non-negative number, got {value!r}")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _apply(current: Any, section: str, table: dict[str, Any]) -> Any:
    """`current` (a settings dataclass) with the keys of `table` set, each checked."""
    known = {f.name: f for f in fields(current)}
    changes = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"unknown key {section}.{key} (known: {', '.join(known)})")
        parse = setting_parse(known[key])
        if parse is not None:  # a table or list of tables ([[dhcp.subnets]])
            try:
                changes[key] = parse(value)
            except ValueError as exc:
                raise ConfigError(f"{section}.{key}: {exc}") from None
            continue
        changes[key] = _coerce(value, getattr(current, key), f"{section}.{key}")
        if setting_positive(known[key]) and changes[key] <= 0:
            raise ConfigError(f"{section}.{key} must be greater than 0")
    return replace(current, **changes)


def _renamed(registry: Registry) -> dict[str, tuple[str, str]]:
    """Old "section.key" -> (section, key) for settings that moved to a service's section."""
    out: dict[str, tuple[str, str]] = {}
    for service in registry.services():
        for old, new in getattr(service.settings, "RENAMED", {}).items():
            out[old] = (service.name, new)
    return out


def from_dict(data: dict[str, Any], registry: Registry | None = None) -> Config:
    registry = registry or default_registry()
    cfg = Config.defaults(registry)
    core: dict[str, dict[str, Any]] = {}
    service_tables: dict[str, dict[str, Any]] = {}
    sections = registry.sections()
    warnings: list[str] = []
    listen = dict(cfg.listen)
    for section, table in data.items():
        if section == "listen":
            if not isinstance(table, dict):
                raise ConfigError("listen: expected a table of NAME = \"HOST:PORT\"")
            for name, value in table.items():
                set_listen(listen, name, value)
            continue
        if section not in CORE_SECTIONS and section not in sections:
            known = ", ".join(("listen", *CORE_SECTIONS, *sections))
            raise ConfigError(f"unknown section [{section}] (known: {known})")
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: expected a table")
        (core if section in CORE_SECTIONS else service_tables)[section] = dict(table)
    # Settings that moved from a core section to a service's own (an old `netpost init` file).
    for old, (section, key) in _renamed(registry).items():
        old_section, _, old_key = old.partition(".")
        table = core.get(old_section, {})
        if old_key in table:
            value = table.pop(old_key)
            service_tables.setdefault(section, {}).setdefault(key, value)
            warnings.append(f"{old} is now {section}.{key}; update the file "
                            "('netpost init --force' writes every setting in its new place)")
    updates: dict[str, Any] = {}
    for section, table in core.items():
        updates[section] = _apply(getattr(cfg, section), section, table)
    services = dict(cfg.services)
    for section, table in service_tables.items():
        services[section] = _apply(services[section], section, table)
    cfg = replace(cfg, listen=listen, services=services, warnings=tuple(warnings), **updates)
    validate(cfg, registry)
    return cfg


def set_listen(listen: dict[str, str], name: str, value: Any) -> None:
    """Set listener `name` (one of the keys `listen` already has) to "HOST:PORT" or "off"."""
    if name not in listen:
        raise ConfigError(f"unknown listener {name!r} (known: {', '.join(listen)})")
    if not isinstance(value, str):
        raise ConfigError(f"listen.{name}: expected \"HOST:PORT\" or \"off\", got {value!r}")
    parse_listen(value, f"listen.{name}")
    listen[name] = value


def validate(cfg: Config, registry: Registry | None = None) -> None:
    registry = registry or default_registry()
    names = [*registry.listener_names(), OUTBOUND_TRACE]
    for name in cfg.trace.listeners:
        if name != "all" and name not in names:
            raise ConfigError(f"trace.listeners: unknown listener {name!r} "
                              f"(known: {', '.join(names)})")
    for _, decl in registry.listeners():
        value = cfg.listen.get(decl.name, "off")
        address = parse_listen(value, f"listen.{decl.name}")
        if address is not None and address.interface is not None and \
                decl.transport is not Transport.UDP:
            raise ConfigError(f"listen.{decl.name}: {value!r} is not HOST:PORT (an interface "
                              "name is only for UDP listeners, e.g. dhcp)")
    if bool(cfg.tls.certificate) != bool(cfg.tls.key):
        raise ConfigError("tls: set both certificate and key, or neither (self-signed)")
    if cfg.auth.failure_max_delay < cfg.auth.failure_delay:
        raise ConfigError("auth.failure_max_delay must be at least auth.failure_delay")
    for name, settings in cfg.services.items():
        check = getattr(settings, "validate", None)
        if check is not None:
            try:
                check()
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None


def load(path: Path | None, registry: Registry | None = None) -> Config:
    """Load `path` if it exists (a missing default file means all defaults)."""
    if path is None or not path.exists():
        return Config.defaults(registry)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return from_dict(data, registry)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _render_section(out: list[str], name: str, doc: str, settings: Any) -> None:
    out.append(f"# {doc}")
    out.append(f"[{name}]")
    for f in dataclasses.fields(settings):
        if setting_parse(f) is not None:  # tables: described, written by hand
            out.append(f"# {f.name}: {setting_doc(f)}")
            continue
        line = f"{f.name} = {_toml_value(getattr(settings, f.name))}"
        out.append(f"{line:<40}# {setting_doc(f)}")
    out.append("")


def render_default(registry: Registry | None = None) -> str:
    """The commented netpost.toml that `netpost init` writes: every setting at its default."""
    registry = registry or default_registry()
    cfg = Config.defaults(registry)
    out = ["# netpost configuration. Every setting is shown at its default value.", ""]
    _render_section(out, "server", _DOCS["server"], cfg.server)
    out.append(f"# {_DOCS['listen']}")
    out.append("[listen]")
    for _, decl in registry.listeners():
        if decl.transport is Transport.UDP:
            kind = "UDP"
        else:
            kind = {TLSMode.IMPLICIT: "implicit TLS", TLSMode.STARTTLS: "STARTTLS",
                    TLSMode.NONE: "no TLS"}[decl.tls]
        out.append(f"{decl.name} = {_toml_value(cfg.listen[decl.name])}  # {decl.protocol}, "
                   f"{kind}, standard port {decl.standard_port}")
    out.append("")
    for name in ("tls", "auth", "limits", "store", "trace", "demo"):
        _render_section(out, name, _DOCS[name], getattr(cfg, name))
    for service in registry.services():
        if service.settings is not None:
            _render_section(out, service.name, service.doc or f"The {service.name} service.",
                            cfg.services[service.name])
    return "\n".join(out)
