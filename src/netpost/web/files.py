"""Sending one open file over ASGI: GET and HEAD, single ranges (206), multipart/byteranges,
416, 304 and 412, streamed from the file descriptor in pieces (never the whole file in memory).

uvicorn has no zero-copy path for ASGI (neither the `http.response.zerocopy` nor the
`http.response.pathsend` extension), so each piece is read with pread(2) (from the page cache
on the loop, a miss in a worker: files/reads.py) and handed to the server, which waits for the
socket to drain before taking the next (flow control): memory per download stays at one piece.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import secrets
import stat as stat_mod
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

from starlette.types import Message, Receive, Scope, Send

from netpost.files.reads import pread
from netpost.web.ranges import (
    Unsatisfiable,
    content_range,
    etag_of,
    http_date,
    if_range_holds,
    preconditions,
    select_ranges,
)

CHUNK = 512 * 1024  # octets per read and per send (256 KiB measured 0.5-0.7x nginx, 512 KiB 1.0x)

# Types a browser may show in place; anything else is sent as an attachment, so that a shared
# HTML or SVG file never runs as a page of this origin (the web UI will live here too).
INLINE_TYPES = frozenset({
    "text/plain", "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif",
    "application/pdf", "audio/mpeg", "audio/ogg", "audio/wav", "audio/flac", "video/mp4",
    "video/webm", "video/ogg",
})

# Every answer about a shared file: no sniffing, no scripts, no Referer carrying the token.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("x-content-type-options", "nosniff"),
    ("content-security-policy", "default-src 'none'; img-src 'self'; media-src 'self'; "
                                "style-src 'unsafe-inline'; sandbox"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "private, no-cache"),
)


def content_type(name: str) -> str:
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if guessed is None or encoding is not None:  # .gz, .bz2: the bytes are what is sent
        return "application/octet-stream"
    return guessed


def content_disposition(name: str, inline: bool) -> str:
    """RFC 6266: a quoted ASCII fallback and the UTF-8 name (RFC 8187)."""
    kind = "inline" if inline else "attachment"
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def request_headers(scope: Scope) -> dict[str, str]:
    """Lower-case name -> value; repeated fields joined with ", " (RFC 9110 5.3)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _encode(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


@dataclass
class FileAnswer:
    """One open regular file (its descriptor is closed after the answer) and its name."""

    fd: int
    st: os.stat_result
    name: str
    download: bool = False  # ?download: always an attachment
    send_timeout: float = 60.0  # seconds a client may take to accept one piece

    def __post_init__(self) -> None:
        if not stat_mod.S_ISREG(self.st.st_mode):
            raise ValueError("not a regular file")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._answer(scope, receive, send)
        finally:
            os.close(self.fd)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        head = method == "HEAD"
        size = self.st.st_size
        etag = etag_of(self.st)
        mtime = self.st.st_mtime
        ctype = content_type(self.name)
        validators = [("etag", etag), ("last-modified", http_date(mtime))]
        common = [*validators, *SECURITY_HEADERS]
        headers = request_headers(scope)
        verdict = preconditions(method, headers, etag, mtime)
        if verdict == "not-modified":  # RFC 9110 15.4.5: validators, no body
            await _send_empty(send, 304, common)
            return
        if verdict == "failed":
            await _send_empty(send, 412, [*SECURITY_HEADERS, ("content-length", "0")])
            return
        ranges = None
        field = headers.get("range")
        if field is not None and method == "GET" and (
                "if-range" not in headers or if_range_holds(headers["if-range"], etag, mtime)):
            ranges = select_ranges(field, size)
        entity = [("content-type", ctype),
                  ("content-disposition",
                   content_disposition(self.name, ctype in INLINE_TYPES and not self.download)),
                  ("accept-ranges", "bytes"), *common]
        if isinstance(ranges, Unsatisfiable):
            body = b"range not satisfiable\n"
            await send({"type": "http.response.start", "status": 416, "headers": _encode([
                ("content-range", f"bytes */{size}"), ("content-type", "text/plain"),
                ("content-length", str(len(body))), *common])})
            await send({"type": "http.response.body", "body": body})
            return
        if ranges is None:
            await self._start(send, 200, [*entity, ("content-length", str(size))])
            if not head:
                await self._stream(receive, send, [(0, size - 1)] if size else [], b"")
            else:
                await send({"type": "http.response.body", "body": b""})
            return
        if len(ranges) == 1:
            first, last = ranges[0]
            await self._start(send, 206, [*entity, ("content-length", str(last - first + 1)),
                                          ("content-range", content_range(first, last, size))])
            await self._stream(receive, send, ranges, b"")
            return
        # RFC 9110 14.6: multipart/byteranges, each part with its Content-Type and range.
        boundary = secrets.token_hex(16)
        parts = [(f"\r\n--{boundary}\r\ncontent-type: {ctype}\r\ncontent-range: "
                  f"{content_range(first, last, size)}\r\n\r\n").encode("latin-1")
                 for first, last in ranges]
        closing = f"\r\n--{boundary}--\r\n".encode("latin-1")
        length = sum(len(p) for p in parts) + sum(b - a + 1 for a, b in ranges) + len(closing)
        multipart = [(k, v) for k, v in entity if k not in ("content-type",)]
        await self._start(send, 206, [
            ("content-type", f"multipart/byteranges; boundary={boundary}"),
            *multipart, ("content-length", str(length))])
        await self._stream(receive, send, ranges, closing, parts)

    async def _start(self, send: Send, status: int, headers: list[tuple[str, str]]) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": _encode(headers)})

    async def _stream(self, receive: Receive, send: Send, ranges: list[tuple[int, int]],
                      closing: bytes, parts: list[bytes] | None = None) -> None:
        """Send `ranges` of the file (each after its part header, if any), then `closing`;
        stop as soon as the client goes away."""
        gone = asyncio.create_task(_disconnected(receive))

        async def put(data: bytes, more: bool) -> None:
            if gone.done():
                raise _Gone
            message: Message = {"type": "http.response.body", "body": data, "more_body": more}
            await asyncio.wait_for(send(message), self.send_timeout)

        try:
            for i, (first, last) in enumerate(ranges):
                if parts is not None:
                    await put(parts[i], True)
                offset = first
                while offset <= last:
                    want = min(CHUNK, last - offset + 1)
                    data = await pread(self.fd, want, offset)
                    if not data:  # the file shrank while it was sent: cut the answer short
                        raise ConnectionResetError("the file shrank while it was sent")
                    offset += len(data)
                    more = bool(closing) or offset <= last or i + 1 < len(ranges)
                    await put(data, more)
            if closing or not ranges:
                await put(closing, False)
        except _Gone:
            pass  # nobody to tell
        except TimeoutError:
            pass  # a stalled client: the server closes the connection of an unfinished answer
        finally:
            gone.cancel()


class _Gone(Exception):
    """The client closed the connection while its answer was being sent."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_empty(send: Send, status: int, headers: list[tuple[str, str]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _encode(headers)})
    await send({"type": "http.response.body", "body": b""})
