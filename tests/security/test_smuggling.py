"""SMTP smuggling (bare CR / LF around the end-of-data marker) never yields a second message."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import Server
from tests.security import BOB, Raw, launch, mailbox, smtp_session, stop, strip_trace


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = launch(tmp_path_factory, "smuggling")
    yield s
    stop(s)


# name -> the bytes that end the first message in a lax receiver's eyes.
BAD_ENDINGS = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "CRLF.LF": b"\r\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "CR.LF": b"\r.\n",
    "LF.CR": b"\n.\r",
}
# A bare line break inside an otherwise ordinary line.
BARE_IN_LINE = {"bare-LF-in-line": b"first half\nsecond half\r\n",
                "bare-CR-in-line": b"first half\rsecond half\r\n"}

MODES = ("after-354", "pipelined", "split-write")


def smuggled_commands(tag: str) -> bytes:
    return (b"MAIL FROM:<smuggled@example.org>\r\n"
            + f"RCPT TO:<{BOB}>\r\n".encode()
            + b"DATA\r\n"
            + f"From: smuggled@example.org\r\nSubject: smuggled {tag}\r\n\r\n"
              "smuggled body\r\n".encode())


def legit_head(tag: str) -> bytes:
    return f"From: alice@example.org\r\nSubject: legit {tag}\r\n\r\nlegit body\r\n".encode()


def envelope() -> bytes:
    return (b"EHLO client.test\r\nMAIL FROM:<legit@example.org>\r\n"
            + f"RCPT TO:<{BOB}>\r\n".encode() + b"DATA\r\n")


def run_attack(srv: Server, payload: bytes, mode: str, split_at: int) -> list[tuple[int, bytes]]:
    """Send the envelope and payload; return every reply until the server closes or idles."""
    c = Raw(srv.port("smtp"))
    try:
        replies: list[tuple[int, bytes]] = []
        if mode == "pipelined":
            c.send(envelope() + payload)
        else:
            c.send(envelope())
            for _ in range(5):  # 220, EHLO, MAIL, RCPT, DATA
                code, lines = c.reply()
                replies.append((code, lines[-1] if lines else b""))
            assert [r[0] for r in replies] == [220, 250, 250, 250, 354], replies
            if mode == "split-write":
                # The bad sequence straddles two TCP writes.
                c.send(payload[:split_at])
                time.sleep(0.2)
                c.send(payload[split_at:])
            else:
                c.send(payload)
        c.sock.settimeout(3)
        while True:
            try:
                code, lines = c.reply()
            except TimeoutError:
                replies.append((-2, b"<no close>"))
                break
            if code == -1:
                break
            replies.append((code, lines[-1]))
        return replies
    finally:
        c.close()


def assert_not_smuggled(srv: Server, before: list[bytes], problems: list[str]) -> None:
    """Every attack was refused: bob's maildrop is exactly as before, nothing smuggled."""
    after = mailbox(srv, BOB)
    new = after[len(before):]
    assert after[:len(before)] == before
    assert not any(m.startswith(b"Return-Path: <smuggled@") for m in after), problems
    assert not any(b"smuggled" in m for m in after), problems
    assert new == [], (problems, new)


def attack_payload(name: str, tag: str) -> tuple[bytes, int]:
    """The attack's DATA content and a split point inside its bad sequence."""
    head = legit_head(tag)
    if name in BAD_ENDINGS:
        payload = head + b"last line" + BAD_ENDINGS[name] + smuggled_commands(tag)
        split_at = len(head) + len(b"last line") + 1
    else:
        payload = head + BARE_IN_LINE[name] + b".\r\n" + smuggled_commands(tag)
        split_at = len(head) + len(b"first half")
    return payload + b".\r\nQUIT\r\n", split_at


NAMES = list(BAD_ENDINGS) + list(BARE_IN_LINE)


@pytest.mark.parametrize("mode", MODES)
def test_smuggling_is_refused(srv: Server, mode: str) -> None:
    """Every bad sequence, with smuggled commands behind it in the same write: 554 5.6.0 and
    the connection closes; nothing is stored, least of all a message from smuggled@."""
    before = mailbox(srv, BOB)
    problems = []
    for name in NAMES:
        tag = f"{name}/{mode}"
        payload, split_at = attack_payload(name, tag)
        replies = run_attack(srv, payload, mode, split_at)
        codes = [r[0] for r in replies]
        verdicts = [r for r in replies if r[0] not in (220, 250, 354)]
        if not verdicts or not verdicts[0][1].startswith(b"554 5.6.0"):
            problems.append(f"{tag}: no 554 5.6.0: {replies}")
        elif verdicts[-1][0] == -2:
            problems.append(f"{tag}: connection not closed after 554: {replies}")
        elif len(verdicts) != 1:
            problems.append(f"{tag}: more replies after 554: {replies}")
        if codes.count(354) > 1:
            problems.append(f"{tag}: the smuggled DATA got a go-ahead: {replies}")
    assert_not_smuggled(srv, before, problems)
    assert problems == []


def test_smuggling_in_bdat_is_refused(srv: Server) -> None:
    """BDAT framing is exact, but bare line ends are still refused inside the content and the
    session goes on."""
    before = mailbox(srv, BOB)
    problems = []
    for name in NAMES:
        tag = f"{name}/bdat"
        bad = BAD_ENDINGS.get(name) or BARE_IN_LINE[name]
        content = legit_head(tag) + b"last line" + bad + smuggled_commands(tag) + b"end\r\n"
        with smtp_session(srv.port("smtp")) as c:
            assert c.cmd("MAIL FROM:<legit@example.org>")[0] == 250
            assert c.cmd(f"RCPT TO:<{BOB}>")[0] == 250
            code, lines = c.cmd(f"BDAT {len(content)} LAST\r\n".encode() + content + b"NOOP")
            if code != 554 or not lines[-1].startswith(b"554 5.6.0"):
                problems.append(f"{tag}: {lines}")
            assert c.reply()[0] == 250  # the NOOP: framing kept
            assert c.cmd("QUIT")[0] == 221
    assert_not_smuggled(srv, before, problems)
    assert problems == []


def test_control_clean_pipelined_messages_are_delivered(srv: Server) -> None:
    """The harness itself: proper CRLF.CRLF endings deliver exactly what was sent."""
    before = mailbox(srv, BOB)
    one = legit_head("control one")
    two = legit_head("control two")
    c = Raw(srv.port("smtp"))
    try:
        c.send(envelope() + one + b".\r\n" + b"MAIL FROM:<legit@example.org>\r\n"
               + f"RCPT TO:<{BOB}>\r\n".encode() + b"DATA\r\n" + two + b".\r\nQUIT\r\n")
        codes = []
        while (code := c.reply()[0]) != -1:
            codes.append(code)
        assert codes == [220, 250, 250, 250, 354, 250, 250, 250, 354, 250, 221]
    finally:
        c.close()
    new = mailbox(srv, BOB)[len(before):]
    assert [strip_trace(m) for m in new] == [one, two]
