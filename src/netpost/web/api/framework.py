"""The web API's small framework: endpoints declared once, with what they take and give.

An `Endpoint` names its method and path, who may call it (public, any user, admins), the
pydantic models of its query, body and answer, and its handler.  `Api.routes()` turns them
into Starlette routes whose wrapper does, in order: authenticate, check the role, check CSRF
(cookie sessions), parse and validate the query and the body (with a size bound), call the
handler, and answer JSON.  The OpenAPI document (web/api/openapi.py) is made from the same
declarations, so it cannot drift from what the server does.

Errors are JSON `{"error": "..."}` with the HTTP status that says what kind: 400 bad request,
401 not logged in, 403 not allowed or CSRF, 404 not there (also for other users' things: a
user cannot tell "yours" from "nobody's"), 409 conflict, 413 too large, 422 invalid.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from netpost.store.interfaces import StoreError

if TYPE_CHECKING:
    from netpost.store.interfaces import Account

log = logging.getLogger("netpost.web")

Access = Literal["public", "user", "admin"]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_ID = 2 ** 62  # the largest integer id or UID a path or query may name
# The errors every endpoint may answer (documented in the OpenAPI document for each).
COMMON_ERRORS: tuple[int, ...] = (400, 401, 403, 404, 409, 413, 422, 429)


class ApiError(Exception):
    """An answer other than success: status and one line for the caller."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def not_found(what: str = "not found") -> ApiError:
    return ApiError(404, what)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the account, its role, and how it proved it."""

    account: Account
    admin: bool
    via: Literal["session", "token"]
    credential_id: str  # the token's or session's id
    csrf_token: str | None = None  # sessions: what X-CSRF-Token must say
    expires: float | None = None

    @property
    def address(self) -> str:
        return self.account.address


@dataclass
class Call:
    """One request as a handler sees it."""

    request: Request
    caller: Caller | None
    path: dict[str, Any]
    query: Any = None  # an instance of the endpoint's query model
    body: Any = None  # an instance of the endpoint's body model

    @property
    def user(self) -> Caller:
        assert self.caller is not None  # endpoints that are not public always have one
        return self.caller


Handler = Callable[[Call], Awaitable[Any]]
# (request, access) -> the caller (None for public endpoints without credentials)
Authenticate = Callable[[Request, Access], Awaitable[Caller | None]]
CSRFCheck = Callable[[Request, Caller], None]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # OpenAPI style, below /api/v1: "/mailboxes/{mailbox_id}/messages"
    handler: Handler
    summary: str
    tag: str
    access: Access = "user"
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    media_type: str | None = None  # a non-JSON answer: "message/rfc822", "text/event-stream"
    description: str = ""
    path_types: dict[str, type] = field(default_factory=dict)  # {name}: int or str

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.strip("_")

    def route_path(self) -> str:
        def convert(m: re.Match[str]) -> str:
            name = m.group(1)
            return f"{{{name}:int}}" if self.path_types.get(name) is int else f"{{{name}}}"
        return re.sub(r"\{(\w+)\}", convert, self.path)


def error_response(status: int, message: str, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(x) for x in first.get("loc", ())) or "request"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed `limit` octets."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(413, f"the request body is larger than {limit} octets")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is larger than {limit} octets")
        chunks.append(chunk)
    return b"".join(chunks)


class Api:
    """The endpoints, and how each request to one is checked before its handler runs."""

    def __init__(self, authenticate: Authenticate, check_csrf: CSRFCheck, *,
                 max_body: int) -> None:
        self.endpoints: list[Endpoint] = []
        self.authenticate = authenticate
        self.check_csrf = check_csrf
        self.max_body = max_body

    def add(self, endpoint: Endpoint) -> None:
        self.endpoints.append(endpoint)

    def routes(self) -> list[Route]:
        by_path: dict[str, list[Endpoint]] = {}
        for e in self.endpoints:
            by_path.setdefault(e.route_path(), []).append(e)
        return [Route(path, self._dispatch({e.method: e for e in group}),
                      methods=sorted({e.method for e in group}))
                for path, group in by_path.items()]

    def _dispatch(self, by_method: dict[str, Endpoint]) -> Callable[[Request], Awaitable[Response]]:
        async def dispatch(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            endpoint = by_method.get(method)
            if endpoint is None:
                return error_response(405, f"{request.method} is not allowed here")
            try:
                return await self._call(endpoint, request)
            except ApiError as exc:
                return error_response(exc.status, exc.message, exc.headers)
            except StoreError as exc:
                return error_response(400, str(exc))
            except Exception:  # a bug: logged with its traceback, answered in JSON
                log.exception("%s %s failed", request.method, request.url.path)
                return error_response(500, "internal error (logged on the server)")
        return dispatch

    async def _call(self, endpoint: Endpoint, request: Request) -> Response:
        caller = await self.authenticate(request, endpoint.access)
        if endpoint.access != "public" and caller is None:
            raise ApiError(401, "log in first (POST /api/v1/login) or send "
                           "'Authorization: Bearer <token>'",
                           {"WWW-Authenticate": 'Bearer realm="netpost"'})
        if endpoint.access == "admin" and not (caller and caller.admin):
            raise ApiError(403, "only administrators may do this")
        if caller is not None and request.method not in SAFE_METHODS:
            self.check_csrf(request, caller)
        call = Call(request, caller, dict(request.path_params))
        for name, kind in endpoint.path_types.items():  # ids beyond SQLite's integers
            if kind is int and name in call.path and not 0 <= int(call.path[name]) <= MAX_ID:
                raise ApiError(404, f"no such {name.removesuffix('_id')}")
        if endpoint.query is not None:
            try:
                call.query = endpoint.query.model_validate(dict(request.query_params))
            except ValidationError as exc:
                raise ApiError(422, _validation_message(exc)) from None
        if endpoint.body is not None:
            raw = await read_body(request, self.max_body)
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype not in ("application/json", ""):
                raise ApiError(415, "send the body as application/json")
            try:
                data = json.loads(raw) if raw else None
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "the body is not JSON") from None
            try:
                call.body = endpoint.body.model_validate(data)
            except ValidationError as exc:
                raise ApiError(422, _validation_message(exc)) from None
        result = await endpoint.handler(call)
        if isinstance(result, Response):
            return result
        if isinstance(result, BaseModel):
            return JSONResponse(result.model_dump(mode="json", by_alias=True),
                                status_code=endpoint.status)
        raise TypeError(f"{endpoint.operation_id} answered {type(result).__name__}")
