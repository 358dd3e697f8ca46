#!/usr/bin/env python3
"""Fuzz target: the SMTP client engine must take any server bytes and never raise.

The bytes are the server's side of a session, fed into `SMTPClient` from the greeting on
(the client starts transactions whenever it is ready, upgrades on STARTTLS, authenticates).
Coverage-guided with atheris (`pip install atheris`):
    python fuzz/fuzz_smtp_client.py -max_total_time=300 fuzz/corpus/smtp_client
Without atheris it replays the files given (or the corpus directory) once each, which is how
`tests/test_fuzz_targets.py` runs it in the suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

from netpost.smtp.client import (
    Closed,
    ConnectionFailed,
    NeedTLS,
    OutRecipient,
    Ready,
    SMTPClient,
    TransactionDone,
)

RECIPIENTS = [OutRecipient("b@y.example", ("SUCCESS", "FAILURE"), "b@y.example"),
              OutRecipient("c@y.example")]
CONTENT = b"Subject: fuzz\r\n\r\n.line\r\nbody\r\n"
COMMANDS = (b"EHLO", b"HELO", b"STARTTLS", b"AUTH", b"MAIL", b"RCPT", b"DATA", b"BDAT",
            b"RSET", b"QUIT")


def one_input(data: bytes) -> None:
    # First byte: chunk size and options; the rest is what the server says.
    head = data[0] if data else 0
    step = head % 32 + 1
    client = SMTPClient("fuzz.example", starttls=bool(head & 0x20),
                        auth=("user", "pass") if head & 0x40 else None,
                        allow_plaintext_auth=True, chunking=bool(head & 0x80),
                        trace=lambda d, line: None)
    transactions = 0
    finished = False
    # Fed a line at a time (cut into `step`-octet pieces), as a server answers a command:
    # replies sent ahead of their commands would be (rightly) refused as unexpected.
    pieces = [line[j:j + step] for line in data[1:].splitlines(keepends=True)
              for j in range(0, len(line), step)]
    for piece in [*pieces, b""]:
        client.receive_data(piece)
        while (event := client.next_event()) is not None:
            assert not finished, event  # nothing after the connection failed or closed
            if isinstance(event, NeedTLS):
                client.tls_started()
            elif isinstance(event, ConnectionFailed | Closed):
                finished = True
                assert not client.usable
            elif isinstance(event, TransactionDone):
                assert len(event.result.recipients) == len(RECIPIENTS)
            else:
                assert isinstance(event, Ready)
        if client.state == "ready" and not finished:
            if transactions < 3:
                transactions += 1
                client.start_transaction("a@x.example", RECIPIENTS, CONTENT,
                                         smtputf8=bool(head & 1), envid="e+1")
            else:
                client.quit()
        out = client.data_to_send()
        if out and not out.startswith((b"Subject", b".")):
            word = out.split(b" ", 1)[0].split(b"\r\n", 1)[0].upper()
            assert word in COMMANDS or word == b"*" or word.isalnum() or word.endswith(b"="), out
    assert client.state == "done"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fuzz.replay import fuzz_main

    fuzz_main(one_input, "fuzz/corpus/smtp_client")
