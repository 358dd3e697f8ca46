"""The web application: one Starlette app that the HTTP listener serves.

Today it serves shared files (`/s/...`, `web/shares.py`); the web API (`/api/v1`) and the UI
(issue 11) mount beside them here, each in a module of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from netpost.web.shares import PREFIX, ShareFiles, share_routes

if TYPE_CHECKING:
    from netpost.services import Services
    from netpost.web.service import WebConfig

# (client host, client port) -> the connection's trace function, or None
TraceLookup = Callable[[tuple[str, int] | None], Callable[[str, str], None] | None]

# Headers every answer gets unless it set them itself.
DEFAULT_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


API_SHARES = "/api/v1/shares/"  # DELETE /api/v1/shares/<token>: a share token too


def shorten(path: str) -> str:
    """A request path for the trace: a share token cut to its first 6 characters."""
    for prefix in (PREFIX, API_SHARES):
        if path.startswith(prefix):
            token, sep, rest = path[len(prefix):].partition("/")
            if len(token) > 8:
                token = token[:6] + "…"
            return prefix + token + sep + rest
    return path


class NetpostMiddleware:
    """Default headers on every answer; each request and answer in the protocol trace
    (`C: GET /s/abcdef…/file` / `S: 206 100`, the number being the body octets sent)."""

    def __init__(self, app: ASGIApp, trace_of: TraceLookup | None = None,
                 status_counts: dict[int, int] | None = None) -> None:
        self.app = app
        self.trace_of = trace_of
        self.status_counts = status_counts  # answers by status, for /metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace = None
        if self.trace_of is not None:
            client = scope.get("client")
            trace = self.trace_of((str(client[0]), int(client[1])) if client else None)
        if trace is not None:
            wanted = [f"{k.decode('latin-1').title()}: {v.decode('latin-1')}"
                      for k, v in scope.get("headers", ())
                      if k.lower() in (b"range", b"if-none-match", b"if-modified-since",
                                       b"if-range")]
            line = f"{scope['method']} {shorten(scope['path'])}"
            if scope.get("query_string"):
                line += "?" + scope["query_string"].decode("latin-1")
            trace("C", "  ".join([line, *wanted]))
        status = 0
        sent = 0
        done = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent, done
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.status_counts is not None:
                    self.status_counts[status] = self.status_counts.get(status, 0) + 1
                headers = list(message.get("headers", ()))
                have = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in DEFAULT_HEADERS if k not in have]
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    done = True
                    if trace is not None:
                        trace("S", f"{status} {sent}")
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if trace is not None and status and not done:
                trace("S", f"{status} {sent} (cut short)")  # the client left, or stalled


async def not_found(request: Request, exc: Exception) -> Response:
    """What no route matched.  Under /api/ it is the API's JSON error, also for the paths
    the API's mount cannot match (a %0A in a segment: Starlette's `.*` stops at a newline)."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": "no such API endpoint"}, status_code=404)
    return PlainTextResponse("Not Found", status_code=404)


def create_app(services: Services, *, send_timeout: float = 60.0,
               trace_of: TraceLookup | None = None,
               settings: WebConfig | None = None) -> Starlette:
    """The web app over netpost's services: shared files at `/s/<token>[/<path>]`, users'
    OpenPGP keys at `/.well-known/openpgpkey/...` (WKD)."""
    if services.files is None:
        raise ValueError("the web service needs the users' file trees (a data directory)")
    files = ShareFiles(services.stores.shares, services.files)
    routes: list[BaseRoute] = [*share_routes(files, send_timeout=send_timeout)]
    if services.data_dir is not None:  # users' OpenPGP keys by WKD (web/wkd.py)
        from netpost.mail.webkeys import WebKeys
        from netpost.web.wkd import wkd_routes

        routes += wkd_routes(WebKeys(services.data_dir))
    # The web API at /api/v1 and /metrics (web/api/, web/metrics.py); the UI goes here too.
    from netpost.web.api import api_routes
    from netpost.web.service import WebConfig

    status_counts: dict[int, int] = {}
    routes += api_routes(services, settings or WebConfig(), status_counts)
    from netpost.web.ui import ui_routes

    routes += ui_routes()  # the browser UI at / (web/ui)
    app = Starlette(routes=routes, exception_handlers={404: not_found})
    app.add_middleware(NetpostMiddleware, trace_of=trace_of, status_counts=status_counts)
    return app
