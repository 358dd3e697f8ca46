#!/usr/bin/env python3
"""Fuzz target: the POP3 engine must answer any byte stream and never raise.

Coverage-guided with atheris (`pip install atheris`):
    python fuzz/fuzz_pop3.py -max_total_time=300 fuzz/corpus/pop3
Without atheris it replays the files given (or the corpus directory) once each.
"""

from __future__ import annotations

import sys
from pathlib import Path

from netpost.pop3.protocol import (
    AuthRequest,
    MaildropEntry,
    POP3Connection,
    POP3Settings,
    Retrieve,
    StartTLS,
    Update,
)

SETTINGS = POP3Settings(allow_plaintext_auth=True)
MESSAGES = [b"Subject: a\r\n\r\n.dot\r\nbody\r\n", b"Subject: b\r\n\r\n", b""]
MAILDROP = [MaildropEntry(len(m), f"u{i}", i) for i, m in enumerate(MESSAGES)]


def one_input(data: bytes) -> None:
    step = (data[0] % 64 + 1) if data else 1
    conn = POP3Connection(SETTINGS, trace=lambda d, line: None)
    conn.greeting()
    for i in range(1, len(data), step):
        conn.receive_data(data[i:i + step])
        while (event := conn.next_event()) is not None:
            if isinstance(event, StartTLS):
                conn.tls_started()
            elif isinstance(event, AuthRequest):
                if event.credentials.password == "ok":
                    conn.accept_auth(MAILDROP)
                else:
                    conn.reject_auth()
            elif isinstance(event, Retrieve):
                conn.send_message(MESSAGES[event.entry.key])  # type: ignore[index]
            elif isinstance(event, Update):
                conn.update_done(True)
        conn.data_to_send()
        if conn.closed:
            break
    conn.receive_data(b"")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fuzz.replay import fuzz_main

    fuzz_main(one_input, "fuzz/corpus/pop3")
