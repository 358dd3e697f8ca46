"""The FTP service's registration: ftp (AUTH TLS, RFC 4217) and ftps (implicit TLS), [ftp]."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from netpost.ftp.protocol import FTPSettings
from netpost.ftp.server import FTPSession, refuse_line
from netpost.net.stream import StreamListener
from netpost.registry import BuildContext, ListenerDecl, Service, StreamHandler, TLSMode, setting


@dataclass(frozen=True)
class FTPConfig:
    """[ftp]: the FTP and FTPS listeners and each account's file tree."""

    idle_timeout: float = setting(300.0, "seconds a control connection may stay silent "
                                  "(a running transfer counts as activity)", positive=True)
    data_timeout: float = setting(60.0, "seconds a data connection may wait for its client or "
                                  "make no progress", positive=True)
    passive_ports: str = setting("", "LOW-HIGH: the ports PASV/EPSV listen on (empty: any "
                                 "free port); open them in your firewall")
    active_port: str = setting("L-1", "source port of active-mode (PORT/EPRT) data "
                               "connections: L-1 = the control port minus one (RFC 959 3.2: 20 "
                               "beside 21), any = a port the system picks, or a port number")
    require_tls_reuse: bool = setting(True, "a protected data connection must resume the "
                                      "control connection's TLS session (like vsftpd's "
                                      "require_ssl_reuse), so no one else can take its place")
    require_protected_data: bool = setting(True, "after AUTH TLS, data connections must be "
                                           "protected too (PROT P)")
    require_close_notify: bool = setting(True, "a protected upload must end with the client's "
                                         "TLS close_notify; one cut without it is answered "
                                         "426 and discarded (RFC 4217 12.6: a forged FIN "
                                         "would truncate the file). false accepts a bare "
                                         "FIN, as vsftpd's default strict_ssl_read_eof=NO")
    quota: int = setting(0, "octets each account's file tree may hold (0: no limit); uploads "
                         "beyond it get 552")

    def validate(self) -> None:
        parse_port_range(self.passive_ports)
        parse_active_port(self.active_port, 21)
        if self.quota < 0:
            raise ValueError("quota must be 0 (no limit) or a number of octets")


def parse_port_range(text: str) -> range | None:
    """ "50000-50100" → range(50000, 50101); "" → None; ValueError names what is wrong."""
    if not text.strip():
        return None
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise ValueError(f"passive_ports must be LOW-HIGH, not {text!r}") from None
    if not 1024 <= first <= last <= 65535:
        raise ValueError(f"passive_ports {text!r}: want 1024 <= LOW <= HIGH <= 65535")
    return range(first, last + 1)


def parse_active_port(text: str, control_port: int) -> int | None:
    """The source port of active data connections; None = any."""
    text = text.strip().lower()
    if text == "any":
        return None
    if text == "l-1":
        return control_port - 1 if control_port > 1 else None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"active_port must be L-1, any or a port number, not {text!r}")
    return int(text)


def build(ctx: BuildContext, decl: ListenerDecl) -> StreamHandler:
    cfg = ctx.config
    ftp: FTPConfig = ctx.settings
    auth = ctx.services.auth
    files = ctx.services.files
    if files is None:
        raise ValueError("FTP needs a data directory for the users' file trees")
    passive = parse_port_range(ftp.passive_ports)

    def factory(listener: StreamListener, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter, peer: str) -> FTPSession:
        implicit = listener.spec.implicit_tls
        settings = FTPSettings(
            client_address=peer,
            tls_available=listener.ssl_context is not None and not implicit,
            tls_active=implicit,
            allow_plaintext_login=cfg.auth.allow_plaintext,
            require_protected_data=ftp.require_protected_data,
            max_errors=cfg.limits.max_errors,
            server_name=cfg.server.hostname,
        )
        port = listener.bound.port if listener.bound is not None else 0
        active = parse_active_port(ftp.active_port, port)
        return FTPSession(listener, reader, writer, peer, settings=settings, auth=auth,
                          trees=files.tree, passive_ports=passive,
                          active_port=active, data_timeout=ftp.data_timeout,
                          require_tls_reuse=ftp.require_tls_reuse,
                          require_close_notify=ftp.require_close_notify,
                          tree_cache=files.cached)

    return StreamHandler(factory, refuse_line, ftp.idle_timeout)


SERVICE = Service(
    name="ftp",
    doc="FTP (RFC 959) with AUTH TLS (RFC 4217) and implicit FTPS: each account's file tree.",
    settings=FTPConfig,
    listeners=(
        ListenerDecl("ftp", "ftp", 21, "FTP, AUTH TLS"),
        ListenerDecl("ftps", "ftp", 990, "FTP, implicit TLS", tls=TLSMode.IMPLICIT),
    ),
    build=build,
)
