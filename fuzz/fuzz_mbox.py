#!/usr/bin/env python3
"""Fuzz target: the mbox reader must take any bytes, never raise, and give CRLF messages.

Coverage-guided with atheris (`pip install atheris`):
    python fuzz/fuzz_mbox.py -max_total_time=300 fuzz/corpus/mbox
Without atheris it replays the files given (or the corpus directory) once each.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from netpost.mail.mailfiles import mbox_entry, read_mbox


def one_input(data: bytes) -> None:
    for message, offset in read_mbox(io.BytesIO(data)):
        assert 0 < offset <= len(data)
        content = message.content
        assert content.count(b"\n") == content.count(b"\r\n")  # CRLF throughout
        # What was read can be written and read back to the same content.
        again = list(read_mbox(io.BytesIO(mbox_entry(content, message.flags, 0.0))))
        assert len(again) == 1 and again[0][0].flags >= message.flags


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fuzz.replay import fuzz_main

    fuzz_main(one_input, "fuzz/corpus/mbox")
