"""Protocol trace: each traced session is logged as its conversation.

Lines look like `2026-11-23T10:00:00.123Z smtp#12 127.0.0.1:53211 C: EHLO client.example`
(datagram listeners: `... ntp 127.0.0.1:40000 C: ...`, one exchange per datagram).
The engines redact secrets and message bodies before a line gets here.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

_session_ids = itertools.count(1)


def _stamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class TraceLog:
    """Appends conversation lines to one file; line-buffered so `netpost trace` sees them live."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(path, "a", encoding="utf-8", errors="replace", buffering=1)
        # Live readers (the web API's trace stream): each gets every line as it is written.
        self.taps: set[Callable[[str], None]] = set()

    def _writer(self) -> Callable[[str], None]:
        file_write = self._file.write
        taps = self.taps

        def write(line: str) -> None:
            file_write(line)
            if taps:
                for tap in list(taps):
                    tap(line)

        return write

    def session(self, listener: str, peer: str) -> Callable[[str, str], None]:
        sid = f"{listener}#{next(_session_ids)}"
        write = self._writer()

        def trace(direction: str, line: str) -> None:
            write(f"{_stamp()} {sid} {peer} {direction}: {line}\n")

        trace("*", "connected")
        return trace

    def datagrams(self, listener: str) -> Callable[[str, str, str], None]:
        """A tracer for a datagram listener: (peer, direction, line); each datagram is its own
        exchange, so lines carry the listener's name and the peer, not a session number."""
        write = self._writer()

        def trace(peer: str, direction: str, line: str) -> None:
            write(f"{_stamp()} {listener} {peer} {direction}: {line}\n")

        return trace

    def close(self) -> None:
        self._file.close()


def follow(path: Path, out: Callable[[str], None], from_start: bool = False,
           poll: float = 0.2, stop: Callable[[], bool] = lambda: False) -> None:
    """Print lines appended to `path` as they come (like `tail -f`), surviving truncation."""
    while not path.exists():
        if stop():
            return
        time.sleep(poll)
    with open(path, encoding="utf-8", errors="replace") as f:
        if not from_start:
            f.seek(0, os.SEEK_END)
        while not stop():
            line = f.readline()
            if line:
                out(line.rstrip("\n"))
                continue
            if f.tell() > path.stat().st_size:  # truncated or rotated
                f.seek(0)
            time.sleep(poll)
