#!/usr/bin/env python3
"""Summarise py-spy collapsed stacks (from `--profile` of bench/smtp_ingest.py or
bench/pop3_retrieve.py: `py-spy record --format raw --function --threads`, on-CPU samples only).

usage: bench/profile_top.py FILE... [--top 25] [--thread MainThread]

Prints, for all FILEs together:
  * on-CPU samples per thread group (thread names without their pool number);
  * the top functions by self time (leaf frame) and by inclusive time (anywhere on the stack,
    counted once per sample), each as % of the chosen thread's on-CPU samples and of all
    on-CPU samples. Frames are "function (file:first line of the function)".
A leaf inside the event loop itself ("Runner.run (asyncio/runners.py)" / uvloop) means time in
uvloop's C code (socket reads/writes, callbacks' C part), which py-spy cannot see into.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

THREAD = re.compile(r"^thread \((?:0x)?[0-9A-Fa-f]+\): ?(.*)$")


def parse(paths: list[str]):
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if not line:
                    continue
                stack, _, count = line.rpartition(" ")
                frames = stack.split(";")
                m = THREAD.match(frames[0])
                thread = m.group(1) if m else "?"
                if m:
                    frames = frames[1:]
                yield re.sub(r"[_-]?\d+$", "", thread) or "?", frames, int(count)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--thread", default="MainThread", help="thread group for the tables")
    a = ap.parse_args()
    per_thread: collections.Counter[str] = collections.Counter()
    self_t: collections.Counter[str] = collections.Counter()
    incl_t: collections.Counter[str] = collections.Counter()
    self_all: collections.Counter[str] = collections.Counter()
    total = 0
    for thread, frames, n in parse(a.files):
        total += n
        per_thread[thread] += n
        if frames:
            self_all[frames[-1]] += n
        if thread != a.thread or not frames:
            continue
        self_t[frames[-1]] += n
        for fr in set(frames):
            incl_t[fr] += n
    if not total:
        print("no samples")
        return 1
    tsum = per_thread[a.thread] or 1
    print(f"on-CPU samples: {total} in {len(a.files)} file(s)")
    print("\nper thread group (share of all on-CPU samples):")
    for t, n in per_thread.most_common():
        print(f"  {n / total:6.1%}  {n:7d}  {t}")
    print(f"\n{a.thread}: top self time (% of {a.thread} samples / of all samples)")
    for fr, n in self_t.most_common(a.top):
        print(f"  {n / tsum:6.1%} {n / total:6.1%}  {fr}")
    print(f"\n{a.thread}: top inclusive time, netpost and library frames "
          f"(% of {a.thread} samples)")
    shown = 0
    skip = ("<frozen runpy>", "netpost/__main__.py", "netpost/cli.py", "uvloop/__init__.py",
            "netpost/server.py:19", "asyncio/runners.py")
    for fr, n in incl_t.most_common():
        if any(s in fr for s in skip) or fr.startswith(("_run_module_as_main", "_run_code")):
            continue
        print(f"  {n / tsum:6.1%}  {fr}")
        shown += 1
        if shown >= a.top:
            break
    print("\nall threads: top self time (% of all samples)")
    for fr, n in self_all.most_common(a.top // 2):
        print(f"  {n / total:6.1%}  {fr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
