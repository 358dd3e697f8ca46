#!/usr/bin/env python3
"""Fuzz target: the IMAP engine, its lexer and grammar, and the MIME parser never raise.

The first byte picks how the input is cut into reads, whether the session is logged in
first and whether the limits are small; the rest is the client's bytes.  After COMPRESS the
target deflates what it feeds and inflates what it reads, so compressed sessions are reached
too.  Then the same bytes go through the lexer and the command grammar (SEARCH, SORT and
THREAD arguments too), and every APPEND literal (or the bytes themselves) through
mime.parse, BODYSTRUCTURE, BODY, ENVELOPE and the sections.

Coverage-guided with atheris (`pip install atheris`):
    python fuzz/fuzz_imap.py -max_total_time=300 fuzz/corpus/imap
FUZZ_MIME_STRICT=1 lets the MIME parser's never-raise guards re-raise (as tests/imap/test_mime
does), so that a parser bug shows instead of its fallback.
Without atheris it replays the files given (or the corpus directory) once each.
"""

from __future__ import annotations

import os
import re
import sys
import zlib
from pathlib import Path

from netpost.auth.sasl import Credentials  # noqa: F401  (imported for atheris instrumentation)
from netpost.imap import commands as cmds
from netpost.imap import mime, search, sort
from netpost.imap.parser import CommandReader, Frame, Limits, ParseError, tokenize
from netpost.imap.protocol import (
    IdleDone,
    IMAPConnection,
    IMAPSettings,
    LoginRequest,
    Request,
    StartTLS,
)
from netpost.imap.wire import encode_value

DEFAULT = IMAPSettings(allow_plaintext_auth=True, max_literal=64 * 1024, max_line=8192)
SMALL = IMAPSettings(allow_plaintext_auth=True, max_literal=64, max_line=80, max_errors=6)
LOGIN = b"L1 LOGIN fuzz fuzz\r\n"
if os.environ.get("FUZZ_MIME_STRICT"):
    mime._STRICT = True
RESPONSE = re.compile(rb"\* [A-Z0-9]|\+ |\+\Z|[^\x00-\x20\x7f-\xff(){%*\"\\+]+ (OK|NO|BAD)( |\Z)")


def answer(conn: IMAPConnection, event: object, appended: list[bytes]) -> None:
    if isinstance(event, StartTLS):
        conn.tls_started()
    elif isinstance(event, LoginRequest):
        conn.login_done(event.tag, event.credentials.password != "bad")
    elif isinstance(event, IdleDone):
        if event.tag:
            conn.complete(event.tag, "OK", "IDLE terminated")
        else:
            conn.defer()
    elif isinstance(event, Request):
        cmd = event.command
        if cmd.name == "IDLE":
            conn.start_idle(cmd.tag)
            return
        if cmd.name in ("SELECT", "EXAMINE"):
            conn.set_selected(True, readonly=cmd.name == "EXAMINE")
        elif cmd.name in ("CLOSE", "UNSELECT"):
            conn.set_selected(False)
        elif isinstance(cmd, cmds.Append):
            appended.extend(m.content for m in cmd.messages)
        conn.complete(cmd.tag, "OK", "done")


def check_lines(out: bytes) -> None:
    assert out == b"" or out.endswith(b"\r\n"), out[-100:]
    for line in out.split(b"\r\n")[:-1]:
        assert RESPONSE.match(line), line[:200]


def run_engine(data: bytes, step: int, settings: IMAPSettings, login: bool) -> list[bytes]:
    appended: list[bytes] = []
    conn = IMAPConnection(settings, tls_active=False, trace=lambda d, line: None)
    conn.greeting("fuzz.test")
    deflate: zlib._Compress | None = None  # the client's side of COMPRESS
    inflate: zlib._Decompress | None = None
    pending = b""  # output not yet a whole line (compressed output arrives in pieces)

    def settle() -> None:
        nonlocal deflate, inflate, pending
        while True:
            while (event := conn.next_event()) is not None:
                answer(conn, event, appended)
            out = conn.data_to_send()
            if not out:
                return
            if inflate is not None:
                out = inflate.decompress(out)
            pending += out
            cut = pending.rfind(b"\r\n") + 2
            check_lines(pending[:cut])
            pending = pending[cut:]
            if inflate is None and conn._deflate is not None:  # COMPRESS went on now
                deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
                inflate = zlib.decompressobj(-15)

    settle()
    stream = (LOGIN if login else b"") + data
    # Reads end where a COMPRESS command does, so that what follows can go compressed.
    cuts = {*range(step, len(stream), step), len(stream)}
    cuts.update(m.end() for m in re.finditer(rb"(?i)COMPRESS DEFLATE\r\n", stream))
    start = 0
    for end in sorted(cuts):
        chunk, start = stream[start:end], end
        if deflate is not None:
            chunk = deflate.compress(chunk) + deflate.flush(zlib.Z_SYNC_FLUSH)
        conn.receive_data(chunk)
        settle()
        if conn.closed:
            break
        assert len(conn._reader._buf) <= settings.max_line + step
    conn.receive_data(b"")
    settle()
    assert conn.closed
    return appended


def run_grammar(data: bytes, limits: Limits) -> None:
    reader = CommandReader(limits)
    reader.feed(data)
    for _ in range(200):
        item = reader.next()
        if item is None:
            break
        if not isinstance(item, Frame) or item.error is not None or not item.lines:
            continue
        tag = item.tag
        try:
            tokens = tokenize(item, limits, skip=len(tag) + 1)
            command = cmds.parse_command(tag, tokens, utf8=bool(data[:1] == b"u"))
        except ParseError:
            continue
        if isinstance(command, cmds.Search):
            for parse in (search.parse_search, sort.parse_sort, sort.parse_sort_command,
                          sort.parse_thread):
                try:
                    parse(command.args)
                except (ParseError, search.BadCharset):
                    pass


def run_mime(raw: bytes) -> None:
    part = mime.parse(raw)
    encode_value(mime.bodystructure(part, extensible=True))
    encode_value(mime.bodystructure(raw, extensible=False))
    encode_value(mime.envelope(part))
    for parts in ((), (1,), (1, 1), (2,)):
        for text in ("", "HEADER", "TEXT", "MIME"):
            mime.section(part, mime.Section(parts, text))
        mime.section(part, mime.Section(parts, "HEADER.FIELDS", ("Subject", "From")))
        found = mime.locate(part, parts)
        if found is not None:
            encode_value(mime.bodystructure(found, extensible=True))
        try:
            mime.binary_size(part, parts)
        except mime.UnknownCTE:
            pass


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    step = (mode & 0x3F) + 1 if mode & 0x3F != 0x3F else max(len(body), 1)
    settings = SMALL if mode & 0x40 else DEFAULT
    appended = run_engine(body, step, settings, login=bool(mode & 0x80))
    run_grammar(body, Limits(max_line=settings.max_line, max_literal=settings.max_literal))
    for raw in appended[:4] or [body]:
        run_mime(raw)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fuzz.replay import fuzz_main

    fuzz_main(one_input, "fuzz/corpus/imap")
