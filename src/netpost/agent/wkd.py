"""Finding a recipient's key by the Web Key Directory (draft-koch-openpgp-webkey-service,
section 3.1): an HTTPS GET of

    advanced: https://openpgpkey.DOMAIN/.well-known/openpgpkey/DOMAIN/hu/HASH?l=LOCAL
    direct:   https://DOMAIN/.well-known/openpgpkey/hu/HASH?l=LOCAL

where HASH is the z-base-32 encoding (RFC 6189 5.1.6) of the SHA-1 of the lowercased local
part. The direct method is used only when the openpgpkey host does not exist or cannot be
reached. The certificate must be valid for the TLS host name (never fetched over plain HTTP).
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import quote

from netpost.agent import AgentError

ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"
MAX_KEY_SIZE = 1 << 20  # a key block bigger than 1 MiB is refused


def zbase32(data: bytes) -> str:
    bits = int.from_bytes(data, "big")
    nbits = len(data) * 8
    out = []
    for shift in range(nbits - 5, -5, -5):
        chunk = (bits >> shift) & 31 if shift >= 0 else (bits << -shift) & 31
        out.append(ZBASE32[chunk])
    return "".join(out)


def wkd_hash(local_part: str) -> str:
    """z-base-32 of SHA-1 of the local part, lowercased (ASCII only, section 3.1)."""
    return zbase32(hashlib.sha1(local_part.lower().encode("utf-8")).digest())


@dataclass(frozen=True)
class WkdUrl:
    host: str
    path: str

    def __str__(self) -> str:
        return f"https://{self.host}{self.path}"


def urls(address: str) -> tuple[WkdUrl, WkdUrl]:
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise AgentError(f"{address!r} is not an address (like alice@example.org)")
    domain = domain.lower()
    h = wkd_hash(local)
    query = "?l=" + quote(local, safe="")
    return (WkdUrl(f"openpgpkey.{domain}", f"/.well-known/openpgpkey/{domain}/hu/{h}{query}"),
            WkdUrl(domain, f"/.well-known/openpgpkey/hu/{h}{query}"))


class _Unreachable(Exception):
    pass


def _get(url: WkdUrl, ctx: ssl.SSLContext, connect_to: dict[str, tuple[str, int]],
         timeout: float) -> bytes | None:
    """The body of a 200 answer; None for 404; _Unreachable when the host is not there."""
    target_host, target_port = connect_to.get(url.host, (url.host, 443))
    try:
        sock = socket.create_connection((target_host, target_port), timeout=timeout)
    except OSError as exc:  # no such host, refused, unreachable
        raise _Unreachable(str(exc)) from None
    conn = http.client.HTTPSConnection(url.host, target_port, timeout=timeout, context=ctx)
    try:
        try:
            conn.sock = ctx.wrap_socket(sock, server_hostname=url.host)
        except ssl.SSLCertVerificationError as exc:
            raise AgentError(f"{url}: the certificate is not valid for {url.host}: "
                             f"{exc.verify_message}") from None
        conn.request("GET", url.path, headers={"Host": url.host,
                                               "User-Agent": "netpost-mail"})
        response = conn.getresponse()
        if response.status == 404:
            return None
        if response.status != 200:
            raise AgentError(f"{url}: HTTP {response.status} {response.reason}")
        body = response.read(MAX_KEY_SIZE + 1)
        if len(body) > MAX_KEY_SIZE:
            raise AgentError(f"{url}: the answer is larger than {MAX_KEY_SIZE} octets")
        return body
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, ssl.SSLError):
            raise AgentError(f"{url}: TLS failed: {exc}") from None
        raise AgentError(f"{url}: {exc}") from None
    finally:
        conn.close()


def locate(address: str, *, ca_file: str | None = None,
           connect_to: dict[str, tuple[str, int]] | None = None,
           timeout: float = 15.0) -> tuple[bytes, str]:
    """The key block published for `address` and the URL it came from."""
    ctx = ssl.create_default_context(cafile=ca_file)
    advanced, direct = urls(address)
    try:
        body = _get(advanced, ctx, connect_to or {}, timeout)
        where = advanced
    except _Unreachable:
        try:
            body = _get(direct, ctx, connect_to or {}, timeout)
        except _Unreachable as exc:
            raise AgentError(f"no web key directory for {address}: neither "
                             f"{advanced.host} nor {direct.host} can be reached ({exc})") \
                from None
        where = direct
    if body is None:
        raise AgentError(f"{where.host} publishes no key for {address}")
    return body, str(where)
