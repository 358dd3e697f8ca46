"""Shared files and folders: `/s/<token>` and `/s/<token>/<path inside a shared folder>`.

A share (store role `Shares`) names an account and a virtual path in its file tree
(`files/tree.py`).  Nothing else is reachable: an unknown or removed token is a 404 that says
no more than any other 404; an expired one is 410 Gone; inside a shared folder, "." and ".."
segments (also sent as %2e%2e, which the server decodes first), control characters (NUL among
them) and names the tree refuses are 404, and a symbolic link is followed only while its
target stays inside the shared folder (not merely inside the account's tree).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import stat as stat_mod
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from netpost.files.tree import Entry, FileTree, TreeError
from netpost.files.trees import FileTrees
from netpost.store.interfaces import Share, Shares
from netpost.web.files import FileAnswer
from netpost.web.listing import LISTING_HEADERS, render_listing

PREFIX = "/s/"
TOKEN_BYTES = 24  # secrets.token_urlsafe(24): 192 random bits, 32 characters


def new_token() -> str:
    """A share's token: 192 random bits in 32 URL-safe characters, never starting with "-"
    (a token given to `netpost share remove` would read as an option)."""
    while True:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        if not token.startswith("-"):
            return token
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")

_O_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(
    os, "O_NONBLOCK", 0)


@dataclass(frozen=True)
class Found:
    """What a share URL names: a file (open) or a folder's entries."""

    share: Share
    inner: str  # the path inside the share, "/" for the shared file or folder itself
    file: tuple[int, os.stat_result, str] | None = None  # fd, its stat, its name
    entries: list[Entry] | None = None


class Gone(Exception):
    """The share has expired."""


class ShareFiles:
    """Resolves share URLs to files and folders, confined to what was shared (blocking: call
    `find` in a thread).  The trees are the ones FTP and SFTP use (`Services.files`)."""

    def __init__(self, shares: Shares, trees: FileTrees,
                 clock: Callable[[], float] = time.time) -> None:
        self.shares = shares
        self.trees = trees
        self.clock = clock

    def tree(self, address: str) -> FileTree:
        return self.trees.tree(address)

    def find(self, token: str, inner: str) -> Found | None:
        """None for anything that is not there or not shared; Gone for an expired share."""
        if _TOKEN.match(token) is None:
            return None
        share = self.shares.get_share(token)
        if share is None:
            return None
        if share.expired(self.clock()):
            raise Gone(token)
        segments = [s for s in inner.split("/") if s != ""]
        if any(s in (".", "..") for s in segments):
            return None
        try:
            tree = self.tree(share.address)
            base = tree.resolve("/", share.path)
            vpath = tree.resolve(base, "/".join(segments)) if segments else base
            base_real = os.fspath(tree.real(base))
            real = os.fspath(tree.real(vpath))
        except TreeError:
            return None
        if real != base_real and not real.startswith(base_real.rstrip(os.sep) + os.sep):
            return None  # a link out of the shared folder
        shown = "/" + "/".join(segments)
        try:
            st = os.stat(real)
        except OSError:
            return None
        if stat_mod.S_ISDIR(st.st_mode):
            try:
                listed = tree.listdir(vpath)
            except TreeError:
                return None
            entries = [e for e in listed if self._inside(tree, vpath, e.name, base_real)]
            return Found(share, shown, entries=entries)
        try:
            fd = os.open(real, _O_FLAGS)
        except OSError:
            return None
        try:
            fst = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        if not stat_mod.S_ISREG(fst.st_mode):
            os.close(fd)
            return None
        name = segments[-1] if segments else base.rpartition("/")[2] or "download"
        return Found(share, shown, file=(fd, fst, name))

    @staticmethod
    def _inside(tree: FileTree, vdir: str, name: str, base_real: str) -> bool:
        """Whether entry `name` of `vdir` stays inside the shared folder (links may not)."""
        try:
            real = os.fspath(tree.real(vdir.rstrip("/") + "/" + name))
        except TreeError:
            return False
        return real.startswith(base_real.rstrip(os.sep) + os.sep)


def not_found() -> Response:
    # The same answer for an unknown token, a removed share and a missing path.
    return PlainTextResponse("Not Found", status_code=404, headers=dict(LISTING_HEADERS))


def gone() -> Response:
    return PlainTextResponse("This link has expired.", status_code=410,
                             headers=dict(LISTING_HEADERS))


class _Answer(Response):
    """An ASGI answer built from a `Found` (a Response only in name: it streams its own)."""

    def __init__(self, found: Found, base: str, *, download: bool, send_timeout: float) -> None:
        self.background = None
        self.found = found
        self.base = base
        self.download = download
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.found
        if found.file is not None:
            fd, st, name = found.file
            await FileAnswer(fd, st, name, download=self.download,
                             send_timeout=self.send_timeout)(scope, receive, send)
            return
        assert found.entries is not None
        page = render_listing(self.base, found.inner, found.entries,
                              parent=found.inner != "/")
        await HTMLResponse(page, headers=dict(LISTING_HEADERS))(scope, receive, send)


def share_routes(files: ShareFiles, *, send_timeout: float = 60.0) -> list[Route]:
    """The routes of shared files, to mount in the app (`web/app.py`)."""

    async def share(request: Request) -> Response:
        token = request.path_params["token"]
        inner = request.path_params.get("path", "")
        try:
            found = await asyncio.to_thread(files.find, token, inner)
        except Gone:
            return gone()
        if found is None:
            return not_found()
        base = f"{PREFIX}{token}" + "".join(
            "/" + quote_segment(s) for s in found.inner.split("/") if s) + "/"
        return _Answer(found, base, download="download" in request.query_params,
                       send_timeout=send_timeout)

    return [
        Route(PREFIX + "{token}", share, methods=["GET", "HEAD"]),
        Route(PREFIX + "{token}/{path:path}", share, methods=["GET", "HEAD"]),
    ]


def quote_segment(segment: str) -> str:
    return quote(segment, safe="")
