"""The browser UI (issue 11): one page and its script, built on the web API (`/api/v1`).

`/` is the page (login, webmail, files, the protocol inspector, admin), `/ui/<file>` its
assets, read once from this package (no CDN, no build step: plain HTML, CSS and JavaScript
in `static/`).  Everything the page shows comes from the API with the session cookie;
the page never writes text from a message, a header or a file name as HTML (the script
builds DOM nodes and sets their text), and shows a message's HTML only as the API's
sanitised page in a sandboxed frame.  docs/web.md describes each page.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

# No inline script, no eval; scripts, styles and images from netpost only; frames only
# netpost's sanitised message pages; nothing may frame the UI.
UI_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
          "object-src 'none'; frame-ancestors 'none'")
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}


def _assets() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("static")
    return {f.name: f.read_bytes() for f in folder.iterdir()
            if f.is_file() and any(f.name.endswith(ext) for ext in TYPES)}


def ui_routes() -> list[BaseRoute]:
    assets = _assets()
    etags = {name: '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
             for name, data in assets.items()}
    page_headers = {"Content-Security-Policy": UI_CSP, "X-Frame-Options": "DENY",
                    "Cache-Control": "no-cache"}

    async def page(request: Request) -> Response:
        return Response(assets["index.html"], media_type=TYPES[".html"], headers=page_headers)

    async def asset(request: Request) -> Response:
        name = str(request.path_params["name"])
        data = assets.get(name)
        if data is None:
            return Response("not found\n", status_code=404, media_type="text/plain")
        etag = etags[name]
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=TYPES["." + name.rpartition(".")[2]], headers=headers)

    return [Route("/", page, methods=["GET"]),
            Route("/ui/{name}", asset, methods=["GET"])]
