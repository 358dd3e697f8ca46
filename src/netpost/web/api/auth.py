"""Who is calling the web API: browser sessions (cookie + CSRF token) and bearer API tokens.

- A credential is `np_<id>_<secret>` (16 hex digits of id, 43 characters of secret: 256 random
  bits).  The store keeps the id and the SHA-256 of the secret (role `Tokens`), never the
  secret; checking one is a lookup by id and a constant-time comparison of digests.
- Bearer tokens (`Authorization: Bearer np_...`) are made with `netpost token create` or
  `POST /api/v1/tokens`; they act as their account until revoked or expired.  A request with
  a bearer token needs no CSRF token: a browser never sends one on its own.
- Sessions come from `POST /api/v1/login` (the password login of every protocol: the same
  Authenticator and FailureThrottle as SMTP AUTH, POP3, IMAP, FTP, so failures anywhere slow
  the address down everywhere).  The cookie `netpost_session` is HttpOnly, SameSite=Strict,
  and Secure on https.  A state-changing request with it must carry `X-CSRF-Token` (the value
  the login answered, also in the readable `netpost_csrf` cookie: double submit, derived from
  the session's secret so it cannot be forged without it), and, when the browser sends an
  Origin (or Sec-Fetch-Site), come from this very origin.
- A bad token is a login failure like a bad password: answered late, later each time, from
  the same throttle.
- Admins are the accounts named in [web] admins (docs/api.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from netpost.auth.sasl import Credentials
from netpost.auth.service import Authenticator
from netpost.mail.address import normalize_address
from netpost.store.interfaces import Accounts, Token, TokenKind, Tokens
from netpost.web.api.framework import Access, ApiError, Call, Caller, Endpoint
from netpost.web.api.models import (
    LoginRequest,
    Me,
    Ok,
    TokenCreate,
    TokenCreated,
    TokenInfo,
    TokenList,
)

SESSION_COOKIE = "netpost_session"
CSRF_COOKIE = "netpost_csrf"
CSRF_HEADER = "x-csrf-token"
PREFIX = "np_"
ID_HEX = 16
MAX_TOKENS = 100  # API tokens one account may make through the API (the CLI is not bounded)


@dataclass(frozen=True)
class NewCredential:
    token: Token
    secret_text: str  # the whole `np_<id>_<secret>`: shown once


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def csrf_of(secret: str) -> str:
    """The CSRF token of a session: an HMAC of its secret (double submit, not forgeable)."""
    return hmac.new(secret.encode(), b"netpost csrf", hashlib.sha256).hexdigest()


def parse_credential(text: str) -> tuple[str, str] | None:
    """(id, secret) of `np_<id>_<secret>`, or None."""
    if not text.startswith(PREFIX) or len(text) < len(PREFIX) + ID_HEX + 2 or len(text) > 200:
        return None
    token_id = text[len(PREFIX):len(PREFIX) + ID_HEX]
    rest = text[len(PREFIX) + ID_HEX:]
    if not rest.startswith("_") or any(c not in "0123456789abcdef" for c in token_id):
        return None
    return token_id, rest[1:]


def make_credential(tokens: Tokens, address: str, kind: TokenKind, *, name: str = "",
                    lifetime: float | None = None) -> NewCredential:
    """A new token or session for `address`, stored hashed."""
    token_id = secrets.token_hex(ID_HEX // 2)
    secret = secrets.token_urlsafe(32)
    expires = time.time() + lifetime if lifetime is not None else None
    token = tokens.add_token(token_id, address, kind, secret_digest(secret), name=name,
                             expires=expires)
    return NewCredential(token, f"{PREFIX}{token_id}_{secret}")


def token_info(t: Token) -> TokenInfo:
    return TokenInfo(id=t.id, address=t.address, name=t.name, created=t.created,
                     expires=t.expires)


def _loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def peer_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class WebAuth:
    """Authentication of API requests, and the login, logout and token endpoints."""

    def __init__(self, accounts: Accounts, tokens: Tokens, authenticator: Authenticator, *,
                 admins: frozenset[str], session_lifetime: float,
                 allow_plaintext: bool = False) -> None:
        self.accounts = accounts
        self.allow_plaintext = allow_plaintext
        self.tokens = tokens
        self.authenticator = authenticator
        self.throttle = authenticator.throttle
        self.admins = admins
        self.session_lifetime = session_lifetime

    def is_admin(self, address: str) -> bool:
        return address in self.admins

    async def _failed(self, request: Request, who: str) -> ApiError:
        """A wrong credential: counted by the shared throttle, answered late."""
        delay = self.throttle.record_failure(peer_of(request), who, "web")
        await asyncio.sleep(delay)
        return ApiError(401, "the credentials are not valid (expired or revoked?)",
                        {"WWW-Authenticate": 'Bearer realm="netpost", error="invalid_token"'})

    async def _check(self, request: Request, text: str, kind: TokenKind) -> Caller:
        peer = peer_of(request)
        earlier = self.throttle.failures(peer)
        if earlier:  # as Authenticator.login: a guesser waits before every answer
            await asyncio.sleep(min(self.throttle.maximum, self.throttle.base * 2 ** (earlier - 1)))
        parsed = parse_credential(text)
        token = self.tokens.get_token(parsed[0]) if parsed else None
        if (parsed is None or token is None or token.kind != kind
                or not hmac.compare_digest(token.secret_sha256, secret_digest(parsed[1]))):
            raise await self._failed(request, f"{kind} {parsed[0] if parsed else '?'}")
        if token.expired(time.time()):
            raise await self._failed(request, f"{kind} {token.id} (expired)")
        account = self.accounts.get_account(token.address)
        if account is None:
            raise await self._failed(request, f"{kind} {token.id} (no account)")
        if earlier:
            self.throttle.record_success(peer)
        return Caller(account, self.is_admin(account.address), "session" if kind == "session"
                      else "token", token.id,
                      csrf_of(parsed[1]) if kind == "session" else None, token.expires)

    async def authenticate(self, request: Request, access: Access) -> Caller | None:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise ApiError(401, "use 'Authorization: Bearer <token>'",
                               {"WWW-Authenticate": 'Bearer realm="netpost"'})
            return await self._check(request, value.strip(), "api")
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            if access == "public":
                return None  # a stale cookie must not stop a login
            return await self._check(request, cookie, "session")
        return None

    def check_csrf(self, request: Request, caller: Caller) -> None:
        if caller.via != "session":
            return
        same_origin(request)
        sent = request.headers.get(CSRF_HEADER, "")
        if caller.csrf_token is None or not hmac.compare_digest(sent.encode(),
                                                                caller.csrf_token.encode()):
            raise ApiError(403, "missing or wrong X-CSRF-Token (it came with the login and is "
                           f"in the {CSRF_COOKIE} cookie)")

    # --- endpoints -------------------------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/login", self.login, "Log in with a password; sets the session "
                     "cookie", "auth", access="public", body=LoginRequest, response=Me),
            Endpoint("POST", "/logout", self.logout, "End this session", "auth", response=Ok),
            Endpoint("GET", "/me", self.me, "Who is calling", "auth", response=Me),
            Endpoint("GET", "/tokens", self.list_tokens, "Your API tokens", "auth",
                     response=TokenList),
            Endpoint("POST", "/tokens", self.create_token, "Make an API token for yourself",
                     "auth", body=TokenCreate, response=TokenCreated, status=201),
            Endpoint("DELETE", "/tokens/{token_id}", self.revoke_token, "Revoke one of your "
                     "API tokens (admins: anyone's)", "auth", response=Ok),
        ]

    async def login(self, call: Call) -> Response:
        body: LoginRequest = call.body
        request = call.request
        same_origin(request)  # login CSRF: another site may not log a browser in
        if request.url.scheme != "https" and not self.allow_plaintext \
                and not _loopback(peer_of(request)):
            # Safe by default, as the mail listeners: no password in clear over a network.
            # A browser on the same machine (http://localhost) never puts it on one.
            raise ApiError(403, "log in over https: a password is not taken over plain HTTP "
                                "from another host ([auth] allow_plaintext = true allows it)")
        account = await self.authenticator.login(
            Credentials("web", normalize_address(body.address), body.password),
            peer_of(request), "web")
        if account is None:
            raise ApiError(401, "wrong address or password")
        new = make_credential(self.tokens, account.address, "session",
                              lifetime=self.session_lifetime)
        csrf = csrf_of(new.secret_text[len(PREFIX) + ID_HEX + 1:])
        me = Me(address=account.address, admin=self.is_admin(account.address), auth="session",
                csrf_token=csrf, expires=new.token.expires)
        response = JSONResponse(me.model_dump(mode="json"))
        secure = request.url.scheme == "https"
        response.set_cookie(SESSION_COOKIE, new.secret_text, max_age=int(self.session_lifetime),
                            path="/", secure=secure, httponly=True, samesite="strict")
        response.set_cookie(CSRF_COOKIE, csrf, max_age=int(self.session_lifetime), path="/",
                            secure=secure, httponly=False, samesite="strict")
        return response

    async def logout(self, call: Call) -> Response:
        caller = call.user
        if caller.via == "session":
            self.tokens.remove_token(caller.credential_id)
        response = JSONResponse(Ok(detail="logged out").model_dump())
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE, path="/")
        return response

    async def me(self, call: Call) -> Me:
        c = call.user
        return Me(address=c.address, admin=c.admin, auth=c.via, csrf_token=c.csrf_token,
                  expires=c.expires)

    async def list_tokens(self, call: Call) -> TokenList:
        return TokenList(tokens=[token_info(t) for t in self.tokens.list_tokens(call.user.address)])

    async def create_token(self, call: Call) -> TokenCreated:
        body: TokenCreate = call.body
        if len(self.tokens.list_tokens(call.user.address)) >= MAX_TOKENS:
            raise ApiError(409, f"you have {MAX_TOKENS} API tokens: revoke some first")
        new = make_credential(self.tokens, call.user.address, "api", name=body.name,
                              lifetime=body.days * 86400 if body.days is not None else None)
        return TokenCreated(token=new.secret_text, **token_info(new.token).model_dump())

    async def revoke_token(self, call: Call) -> Ok:
        token = self.tokens.get_token(str(call.path["token_id"]))
        if token is None or token.kind != "api" or (
                token.address != call.user.address and not call.user.admin):
            raise ApiError(404, "no such token")
        self.tokens.remove_token(token.id)
        return Ok(detail=f"revoked token {token.id}")


def same_origin(request: Request) -> None:
    """Refuse a request a browser sent from another site (Origin / Sec-Fetch-Site)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise ApiError(403, "cross-site requests are refused")
    origin = request.headers.get("origin")
    if origin is None:
        return
    host = request.headers.get("host", "")
    if origin != f"{request.url.scheme}://{host}":
        raise ApiError(403, f"requests from {origin} are refused (not this site's origin)")
