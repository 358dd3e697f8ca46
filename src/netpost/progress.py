"""Progress of long jobs (migration, check, import, export) for people and for logs."""

from __future__ import annotations

import sys
from collections.abc import Callable


class ProgressBar:
    """`label [#####.....]  50%  2500/5000` on a terminal (redrawn in place); on anything else,
    or to `lines` when given, a plain line at every tenth, so logs stay readable."""

    def __init__(self, label: str, lines: Callable[[str], None] | None = None) -> None:
        self.label = label
        self.lines = lines or (lambda text: print(text, file=sys.stderr, flush=True))
        self.tty = lines is None and sys.stderr.isatty()
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        if self.tty:
            if percent != self.last or (done == total and self.last != 100):
                filled = percent * 30 // 100
                sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] "
                                 f"{percent:3d}%  {done}/{total}")
                if done >= total:
                    sys.stderr.write("\n")
                sys.stderr.flush()
        elif percent // 10 != self.last // 10 or (done == total and self.last != 100):
            self.lines(f"{self.label}: {done}/{total} ({percent}%)")
        self.last = percent
