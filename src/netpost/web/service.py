"""The web service's registration: the `http` listener (80 + 10000) and [web] settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from netpost.registry import BuildContext, ListenerDecl, ServerHandler, Service, TLSMode, setting

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from netpost.net.workers import Worker
    from netpost.web.app import TraceLookup


@dataclass(frozen=True)
class WebConfig:
    """[web]: the HTTP(S) listeners: shared files (`netpost share`) and the web API."""

    base_url: str = setting("", "the URL shares are published under, e.g. "
                            "https://files.example.org (empty: http://[server] hostname and "
                            "the http listener's port)")
    idle_timeout: float = setting(30.0, "seconds a connection may take to send a request "
                                  "head, and stay idle between requests", positive=True)
    send_timeout: float = setting(60.0, "seconds a client may take to accept each 256 KiB "
                                  "of a download before it is cut off", positive=True)
    admins: tuple[str, ...] = setting(
        ("demo@netpost.test",), "accounts that administer netpost through the web API "
        "(domains, users, queue...); others see only their own mail and files. The demo "
        "account is one so that the demo works: change this on a real server")
    session_lifetime: float = setting(12 * 3600.0, "seconds a browser login lasts",
                                      positive=True)
    metrics: str = setting("token", "Prometheus /metrics: \"off\", \"token\" (an "
                           "administrator's API token as Bearer) or \"public\"")

    def validate(self) -> None:
        if self.metrics not in ("off", "token", "public"):
            raise ValueError(f"metrics must be \"off\", \"token\" or \"public\", not "
                             f"{self.metrics!r}")
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
        return create_app(services, send_timeout=web.send_timeout, trace_of=trace_of,
                          settings=web)

    return ServerHandler(serve_app(app_of, idle_timeout=web.idle_timeout,
                                   shutdown_grace=ctx.config.server.shutdown_grace))


def workers(ctx: BuildContext) -> list[Worker]:
    """Forget expired browser sessions and API tokens every hour (they are refused anyway)."""
    import asyncio
    import time

    from netpost.net.workers import periodic

    tokens = ctx.services.stores.tokens

    async def forget() -> None:
        await asyncio.to_thread(tokens.remove_expired_tokens, time.time())

    return [periodic("expired web sessions", 3600.0, forget, first=60.0)]


SERVICE = Service(
    name="web",
    doc="HTTP and HTTPS: files and folders users publish with 'netpost share add', and the "
        "web API (/api/v1, docs at /api/v1/docs; docs/api.md).",
    settings=WebConfig,
    listeners=(ListenerDecl("http", "http", 80, "HTTP: shared files, web API (/api/v1)",
                            tls=TLSMode.NONE),
               ListenerDecl("https", "https", 443, "HTTPS: the same, over TLS",
                            tls=TLSMode.IMPLICIT)),
    build=build,
    workers=workers,
)
