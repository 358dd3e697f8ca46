"""The web API (`/api/v1`, issue 11): JSON over the http and https listeners.

Modules: framework (endpoints, checks, errors), models (pydantic: validation and schemas),
openapi (the document and the docs page), auth (sessions, CSRF, tokens), admin (what the CLI
does), mail (the user's mailboxes and messages, sending, the change feed), live (listeners,
sessions, the trace stream).  docs/api.md says how to use it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from netpost.mail.address import normalize_address
from netpost.web.api.admin import AdminApi
from netpost.web.api.auth import WebAuth
from netpost.web.api.framework import Api, error_response
from netpost.web.api.live import LiveApi
from netpost.web.api.mail import MailApi
from netpost.web.api.openapi import DOCS_PAGE, build_document
from netpost.web.api.ui import UiApi

if TYPE_CHECKING:
    from netpost.services import Services
    from netpost.web.service import WebConfig

PREFIX = "/api/v1"


def _script_hash(page: str) -> str:
    script = re.search(r"<script>(.*?)</script>", page, re.S)
    assert script is not None
    digest = hashlib.sha256(script.group(1).encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


DOCS_CSP = (f"default-src 'none'; script-src {_script_hash(DOCS_PAGE)}; style-src "
            "'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def build_api(services: Services, settings: WebConfig) -> tuple[Api, WebAuth]:
    config = services.config
    stores = services.stores
    auth = WebAuth(stores.accounts, stores.tokens, services.auth,
                   admins=frozenset(normalize_address(a) for a in settings.admins),
                   session_lifetime=settings.session_lifetime,
                   allow_plaintext=config.auth.allow_plaintext if config is not None else False)
    max_message = config.limits.max_message_size if config is not None else 50 << 20
    # A message's attachments travel base64 in JSON: 4/3 of the message, and some room.
    api = Api(auth.authenticate, auth.check_csrf, max_body=max_message * 4 // 3 + (1 << 20))
    hostname = config.server.hostname if config is not None else "localhost"
    mail = MailApi(services, max_message_size=max_message, hostname=hostname)
    parts = [
        auth.endpoints(),
        AdminApi(services, auth, base_url=settings.base_url).endpoints(),
        mail.endpoints(),
        LiveApi(services).endpoints(),
        UiApi(services, composer=mail).endpoints(),  # what the browser UI needs (web/ui)
    ]
    for endpoints in parts:
        for e in endpoints:
            api.add(e)
    return api, auth


def api_routes(services: Services, settings: WebConfig, http_status: dict[int, int]
               ) -> list[BaseRoute]:
    """`/api/v1/...` and `/metrics`."""
    from netpost.web.metrics import metrics_route

    api, auth = build_api(services, settings)
    document = json.dumps(build_document(api.endpoints, prefix=PREFIX)).encode()

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE, headers={"Content-Security-Policy": DOCS_CSP})

    async def unknown(request: Request) -> Response:
        return error_response(404, f"no such API endpoint: {request.method} {request.url.path}")

    routes: list[BaseRoute] = [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        *api.routes(),
        Route("/{rest:path}", unknown,
              methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    ]
    return [Mount(PREFIX, routes=routes),
            metrics_route(services, auth, settings.metrics, http_status)]
