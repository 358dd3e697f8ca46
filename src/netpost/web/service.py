"""The web service's registration: the `http` listener (80 + 10000) and [web] settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from netpost.registry import BuildContext, ListenerDecl, ServerHandler, Service, TLSMode, setting

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from netpost.web.app import TraceLookup


@dataclass(frozen=True)
class WebConfig:
    """[web]: the HTTP listener serving shared files (`netpost share`)."""

    base_url: str = setting("", "the URL shares are published under, e.g. "
                            "https://files.example.org (empty: http://[server] hostname and "
                            "the http listener's port)")
    idle_timeout: float = setting(30.0, "seconds a connection may take to send a request "
                                  "head, and stay idle between requests", positive=True)
    send_timeout: float = setting(60.0, "seconds a client may take to accept each 256 KiB "
                                  "of a download before it is cut off", positive=True)

    def validate(self) -> None:
        if self.base_url:
            parts = urlsplit(self.base_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"base_url must be an http:// or https:// URL, not "
                                 f"{self.base_url!r}")


def build(ctx: BuildContext, decl: ListenerDecl) -> ServerHandler:
    from netpost.web.app import create_app
    from netpost.web.server import serve_app

    web: WebConfig = ctx.settings
    services = ctx.services

    def app_of(trace_of: TraceLookup) -> ASGIApp:
        return create_app(services, send_timeout=web.send_timeout, trace_of=trace_of)

    return ServerHandler(serve_app(app_of, idle_timeout=web.idle_timeout,
                                   shutdown_grace=ctx.config.server.shutdown_grace))


SERVICE = Service(
    name="web",
    doc="HTTP: files and folders users publish with 'netpost share add' (issue 11 adds the "
        "API and UI).",
    settings=WebConfig,
    listeners=(ListenerDecl("http", "http", 80, "HTTP: shared files", tls=TLSMode.NONE),),
    build=build,
)
