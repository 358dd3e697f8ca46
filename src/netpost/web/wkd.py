"""The Web Key Directory (draft-koch-openpgp-webkey-service section 3.1): local users'
OpenPGP keys at

    /.well-known/openpgpkey/<domain>/hu/<hash>   the advanced method (openpgpkey.<domain>)
    /.well-known/openpgpkey/hu/<hash>            the direct method (the Host is the domain)
    .../policy                                   the policy file (section 4.5), empty

Keys come from `mail/webkeys.py` (`netpost user pgp-key set`). WKD clients fetch over
HTTPS only: netpost's http listener serves the routes and a TLS front (or a proxy) gives
them their https:// names.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from netpost.mail.webkeys import WebKeys

PREFIX = "/.well-known/openpgpkey"
HEADERS = {"access-control-allow-origin": "*", "cache-control": "max-age=3600"}


def _host_domain(request: Request) -> str:
    host = request.headers.get("host", "").rpartition(":")[0] or request.headers.get("host", "")
    return host.lower().removeprefix("openpgpkey.")


def wkd_routes(keys: WebKeys) -> list[BaseRoute]:
    async def key(domain: str, hu: str) -> Response:
        data = await asyncio.to_thread(keys.get, domain, hu)
        if data is None:
            return PlainTextResponse("no such key\n", status_code=404)
        return Response(data, media_type="application/octet-stream", headers=HEADERS)

    async def advanced(request: Request) -> Response:
        return await key(request.path_params["domain"], request.path_params["hu"])

    async def direct(request: Request) -> Response:
        return await key(_host_domain(request), request.path_params["hu"])

    async def policy(request: Request) -> Response:
        domain = request.path_params.get("domain") or _host_domain(request)
        if not keys.has_domain(domain):
            return PlainTextResponse("no web key directory for this domain\n",
                                     status_code=404)
        return Response(b"", media_type="text/plain", headers=HEADERS)

    return [
        Route(PREFIX + "/hu/{hu}", direct, methods=["GET", "HEAD"]),
        Route(PREFIX + "/policy", policy, methods=["GET", "HEAD"]),
        Route(PREFIX + "/{domain}/hu/{hu}", advanced, methods=["GET", "HEAD"]),
        Route(PREFIX + "/{domain}/policy", policy, methods=["GET", "HEAD"]),
    ]
