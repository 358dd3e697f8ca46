"""Typed configuration: defaults, `netpost.toml` loading with strict validation, `netpost init`.

Every setting has a default, so an empty data directory runs. A config file may set any subset;
an unknown key or a value of the wrong type is refused with one line naming it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# Listener name -> (protocol, implicit TLS, standard port). Default ports are standard + 10000
# so that an unprivileged user can run everything on a laptop.
LISTENERS: dict[str, tuple[str, bool, int]] = {
    "smtp": ("smtp", False, 25),  # MX: receives mail for local domains (RFC 5321)
    "submission": ("submission", False, 587),  # STARTTLS + AUTH required (RFC 6409)
    "submissions": ("submission", True, 465),  # implicit TLS (RFC 8314)
    "pop3": ("pop3", False, 110),  # STLS (RFC 2595)
    "pop3s": ("pop3", True, 995),  # implicit TLS (RFC 8314)
}


class ConfigError(Exception):
    """A configuration problem, described in one line fit for the user."""


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(value: str, what: str) -> ListenAddress | None:
    """Parse "HOST:PORT", "[v6]:PORT", ":PORT" (default host later) or "off"."""
    value = value.strip()
    if value == "off":
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"{what}: {value!r} is not HOST:PORT or 'off'")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is out of range 0-65535")
    host = host.strip("[]") or "127.0.0.1"
    return ListenAddress(host, port)


@dataclass(frozen=True)
class ServerSettings:
    hostname: str = "localhost"  # name in greetings, Received: fields and the self-signed cert
    bind: str = "127.0.0.1"  # default address for every listener
    shutdown_grace: float = 30.0  # seconds SIGTERM waits for transactions in flight


@dataclass(frozen=True)
class TLSSettings:
    certificate: str = ""  # PEM file; empty = self-signed, made on first start in DATA/tls/
    key: str = ""  # PEM private key for `certificate`


@dataclass(frozen=True)
class AuthSettings:
    # Accept passwords before TLS. Only for development on loopback: passwords travel in clear.
    allow_plaintext: bool = False
    failure_delay: float = 0.5  # delay after the first failure from an address; doubles each time
    failure_max_delay: float = 16.0  # upper bound of that delay
    failure_window: float = 900.0  # seconds without failure after which an address is forgiven


@dataclass(frozen=True)
class LimitSettings:
    max_message_size: int = 50 * 1024 * 1024  # octets (SMTP SIZE, RFC 1870)
    max_recipients: int = 100  # per message (RFC 5321 4.5.3.1.8 asks for at least 100)
    max_errors: int = 20  # bad commands before the session is closed
    idle_timeout: float = 300.0  # SMTP, seconds (RFC 5321 4.5.3.2.7: 5 minutes)
    pop3_idle_timeout: float = 600.0  # seconds (RFC 1939 3: at least 10 minutes)
    max_connections_per_ip: int = 32
    max_connections: int = 2048


@dataclass(frozen=True)
class TraceSettings:
    # Listener names whose sessions are logged as conversations, or ["all"].
    listeners: tuple[str, ...] = ()
    file: str = "trace.log"  # relative to the data directory


@dataclass(frozen=True)
class DemoSettings:
    domain: str = "netpost.test"  # mail domain made on first `serve` when no domain exists
    user: str = "demo"  # demo account made with it, password generated and printed


def _default_listen() -> dict[str, str]:
    return {name: f":{std + 10000}" for name, (_, _, std) in LISTENERS.items()}


@dataclass(frozen=True)
class Config:
    server: ServerSettings = field(default_factory=ServerSettings)
    listen: dict[str, str] = field(default_factory=_default_listen)
    tls: TLSSettings = field(default_factory=TLSSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    trace: TraceSettings = field(default_factory=TraceSettings)
    demo: DemoSettings = field(default_factory=DemoSettings)

    def listen_address(self, name: str) -> ListenAddress | None:
        addr = parse_listen(self.listen[name], f"listen.{name}")
        if addr is not None and self.listen[name].strip().startswith(":"):
            addr = ListenAddress(self.server.bind, addr.port)
        return addr

    def traced(self, listener: str) -> bool:
        return "all" in self.trace.listeners or listener in self.trace.listeners


_SECTIONS = ("server", "tls", "auth", "limits", "trace", "demo")


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


def from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    updates: dict[str, Any] = {}
    for section, table in data.items():
        if section == "listen":
            if not isinstance(table, dict):
                raise ConfigError("listen: expected a table of NAME = \"HOST:PORT\"")
            listen = dict(cfg.listen)
            for name, value in table.items():
                set_listen(listen, name, value)
            updates["listen"] = listen
            continue
        if section not in _SECTIONS:
            known = ", ".join(("listen",) + _SECTIONS)
            raise ConfigError(f"unknown section [{section}] (known: {known})")
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: expected a table")
        current = getattr(cfg, section)
        known_keys = {f.name: getattr(current, f.name) for f in fields(current)}
        changes = {}
        for key, value in table.items():
            if key not in known_keys:
                raise ConfigError(
                    f"unknown key {section}.{key} (known: {', '.join(known_keys)})"
                )
            changes[key] = _coerce(value, known_keys[key], f"{section}.{key}")
        updates[section] = replace(current, **changes)
    cfg = replace(cfg, **updates)
    validate(cfg)
    return cfg


def set_listen(listen: dict[str, str], name: str, value: Any) -> None:
    if name not in LISTENERS:
        raise ConfigError(f"unknown listener {name!r} (known: {', '.join(LISTENERS)})")
    if not isinstance(value, str):
        raise ConfigError(f"listen.{name}: expected \"HOST:PORT\" or \"off\", got {value!r}")
    parse_listen(value, f"listen.{name}")
    listen[name] = value


# Settings where 0 would make the server unusable (every session closed at once...).
_POSITIVE = ("limits.max_message_size", "limits.max_recipients", "limits.max_errors",
             "limits.idle_timeout", "limits.pop3_idle_timeout", "limits.max_connections_per_ip",
             "limits.max_connections")


def validate(cfg: Config) -> None:
    for key in _POSITIVE:
        section, _, name = key.partition(".")
        if getattr(getattr(cfg, section), name) <= 0:
            raise ConfigError(f"{key} must be greater than 0")
    for name in cfg.trace.listeners:
        if name != "all" and name not in LISTENERS:
            raise ConfigError(f"trace.listeners: unknown listener {name!r}")
    if bool(cfg.tls.certificate) != bool(cfg.tls.key):
        raise ConfigError("tls: set both certificate and key, or neither (self-signed)")
    if cfg.auth.failure_max_delay < cfg.auth.failure_delay:
        raise ConfigError("auth.failure_max_delay must be at least auth.failure_delay")


def load(path: Path | None) -> Config:
    """Load `path` if it exists (a missing default file means all defaults)."""
    if path is None or not path.exists():
        return Config()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


_DOCS = {
    "server": "The process as a whole.",
    "listen": "Where each service listens: \"HOST:PORT\", \":PORT\" (on server.bind) or \"off\".\n"
    "# Defaults are the standard ports + 10000 so that no root is needed.",
    "tls": "TLS 1.2 or newer on every listener. Empty = a self-signed certificate for\n"
    "# server.hostname is made on first start in DATA/tls/.",
    "auth": "Accounts and logins.",
    "limits": "Per-session bounds; going past them gets the protocol's own error reply.",
    "trace": "Protocol trace: sessions logged as `C: ...` / `S: ...` conversations\n"
    "# (secrets and message bodies redacted). Follow it with `netpost trace`.",
    "demo": "What `netpost serve` creates on first start when no domain exists yet.",
}

_COMMENTS = {
    "hostname": "name in greetings, Received: fields and the self-signed certificate",
    "bind": "default address of every listener",
    "shutdown_grace": "seconds SIGTERM waits for transactions in flight",
    "certificate": "PEM certificate chain file",
    "key": "PEM private key file",
    "allow_plaintext": "accept passwords before TLS: ONLY for development on loopback",
    "failure_delay": "seconds of delay after a failed login; doubles per failure",
    "failure_max_delay": "upper bound of that delay",
    "failure_window": "seconds without failure after which an address is forgiven",
    "max_message_size": "octets; larger messages get 552 5.3.4",
    "max_recipients": "per message; more get 452 4.5.3",
    "max_errors": "bad commands before the session is closed",
    "idle_timeout": "seconds an SMTP client may stay silent",
    "pop3_idle_timeout": "seconds a POP3 client may stay silent (RFC 1939: >= 600)",
    "max_connections_per_ip": "concurrent sessions from one client address",
    "max_connections": "concurrent sessions in all",
    "listeners": "listener names to trace, or [\"all\"]",
    "file": "trace file, relative to the data directory",
    "domain": "mail domain of the demo account",
    "user": "local part of the demo account",
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_default() -> str:
    """The commented netpost.toml that `netpost init` writes: every setting at its default."""
    cfg = Config()
    out = ["# netpost configuration. Every setting is shown at its default value.", ""]
    for section in ("server", "listen", "tls", "auth", "limits", "trace", "demo"):
        out.append(f"# {_DOCS[section]}")
        out.append(f"[{section}]")
        if section == "listen":
            for name, (proto, implicit, std) in LISTENERS.items():
                tls = "implicit TLS" if implicit else "STARTTLS"
                out.append(f"{name} = {_toml_value(cfg.listen[name])}  # {proto}, {tls}, "
                           f"standard port {std}")
        else:
            settings = getattr(cfg, section)
            for f in fields(settings):
                line = f"{f.name} = {_toml_value(getattr(settings, f.name))}"
                out.append(f"{line:<40}# {_COMMENTS[f.name]}")
        out.append("")
    return "\n".join(out)
