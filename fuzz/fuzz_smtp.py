#!/usr/bin/env python3
"""Fuzz target: the SMTP engine must answer any byte stream and never raise.

Coverage-guided with atheris (`pip install atheris`):
    python fuzz/fuzz_smtp.py -max_total_time=300 fuzz/corpus/smtp
Without atheris it replays the files given (or the corpus directory) once each, which is how
`tests/test_fuzz_targets.py` runs it in the suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

from netpost.auth.sasl import Credentials  # noqa: F401  (imported for atheris instrumentation)
from netpost.smtp.protocol import (
    AuthRequest,
    MailFrom,
    MessageData,
    RcptTo,
    Reply,
    SMTPConnection,
    SMTPSettings,
    StartTLS,
)

SETTINGS = SMTPSettings(hostname="fuzz.test", submission=True, allow_plaintext_auth=True,
                        max_message_size=4096, max_recipients=5, max_command_line=512)


def one_input(data: bytes) -> None:
    # The first byte picks how the input is cut into reads; the rest is the client's bytes.
    step = (data[0] % 64 + 1) if data else 1
    conn = SMTPConnection(SETTINGS, trace=lambda d, line: None)
    conn.greeting()
    for i in range(1, len(data), step):
        conn.receive_data(data[i:i + step])
        while (event := conn.next_event()) is not None:
            if isinstance(event, StartTLS):
                conn.tls_started()
            elif isinstance(event, AuthRequest):
                conn.accept_auth(event.credentials.authcid or "x")
            elif isinstance(event, MailFrom):
                conn.send(Reply(250, "2.1.0", "ok"))
            elif isinstance(event, RcptTo):
                conn.send(Reply(250 if "@" in event.address else 550, "2.1.5", "ok"))
            elif isinstance(event, MessageData):
                conn.send(Reply(250, "2.0.0", "stored"))
        out = conn.data_to_send()
        for line in out.split(b"\r\n")[:-1]:
            assert line[:3].isdigit() and line[:1] in b"2345", line
        if conn.closed:
            break
    conn.receive_data(b"")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fuzz.replay import fuzz_main

    fuzz_main(one_input, "fuzz/corpus/smtp")
