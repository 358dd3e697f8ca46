"""The Postfix fixture works: mail reaches the Maildir, relaying and retrying work, smtp-sink
counts, and leftover instances are cleaned up."""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.certs import TestCA
from tests.support.postfix import OWNER_FILE, PostfixPeer, SmtpSink, clean_leftovers, free_port

MESSAGE = (b"From: <sender@a.test>\r\nTo: <u1@b.test>\r\nSubject: fixture check\r\n"
           b"Message-ID: <fixture-check@a.test>\r\n\r\nhello from smtplib\r\n")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_delivers_to_maildir_and_refuses_others() -> None:
    with PostfixPeer(domain="b.test", users=["u1", "u2"]) as mx:
        with smtplib.SMTP("127.0.0.1", mx.port) as smtp:
            code, banner = smtp.ehlo("client.test")
            assert code == 250 and b"STARTTLS" not in banner  # no TLS unless asked for
            smtp.sendmail("sender@a.test", ["u1@b.test"], MESSAGE)
            with pytest.raises(smtplib.SMTPRecipientsRefused) as unknown:
                smtp.sendmail("sender@a.test", ["nobody@b.test"], MESSAGE)
            assert unknown.value.recipients["nobody@b.test"][0] == 550
            with pytest.raises(smtplib.SMTPRecipientsRefused) as relay:
                smtp.sendmail("sender@a.test", ["x@elsewhere.test"], MESSAGE)
            assert relay.value.recipients["x@elsewhere.test"][0] == 554  # not an open relay
        [delivered] = mx.wait_for_messages("u1", 1)
        assert b"Subject: fixture check" in delivered
        assert b"hello from smtplib" in delivered
        assert delivered.startswith(b"Return-Path: <sender@a.test>")
        assert mx.messages("u2") == []
        root = mx.root
        assert root is not None and root.is_dir()
        port = mx.port
    assert not listening(port)
    assert not root.exists()


def test_relays_and_retries_until_the_peer_is_up() -> None:
    peer_port = free_port()
    with PostfixPeer(domain="b.test", relayhost=("127.0.0.1", peer_port)) as relay:
        relay.send("sender@b.test", ["u1@c.test"], MESSAGE.replace(b"b.test", b"c.test"))
        assert len(relay.queue_ids()) == 1  # deferred: nothing listens on the relayhost yet
        with PostfixPeer(domain="c.test", users=["u1"], port=peer_port) as peer:
            relay.flush()
            [got] = peer.wait_for_messages("u1", 1)
            assert b"hello from smtplib" in got
            relay.wait_queue_empty()
        assert "status=sent" in relay.log


def test_repeated_starts_on_one_port() -> None:
    port = free_port()
    for _ in range(2):
        with PostfixPeer(port=port) as mx:
            assert listening(port)
            mx.send("s@a.test", ["u1@b.test"], MESSAGE)
            mx.wait_for_messages("u1", 1)
        assert not listening(port)


def test_leftover_instance_is_cleaned_up() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    mx = PostfixPeer().start()
    root, port = mx.root, mx.port
    assert root is not None
    (root / OWNER_FILE).write_text(str(dead.pid))  # as if the test process had died
    mx.root = None  # forget it, as a crashed run would
    try:
        clean_leftovers()
        assert not root.exists() and not listening(port)
    finally:
        if root.exists():
            (root / OWNER_FILE).write_text(str(os.getpid()))
            mx.root = root
            mx.stop()


def test_smtp_sink_counts() -> None:
    with SmtpSink() as sink:
        with smtplib.SMTP("127.0.0.1", sink.port) as smtp:
            for _ in range(5):
                smtp.sendmail("a@a.test", ["b@b.test"], MESSAGE)
        sink.wait_for(5, timeout=10)
        assert sink.count == 5
        port = sink.port
    assert not listening(port)


def test_starttls_when_given_a_certificate(tmp_path: Path) -> None:
    ca = TestCA()
    with PostfixPeer(tls_cert=ca.issue("mx.b.test", directory=tmp_path)) as mx:
        context = ca.client_context()
        with smtplib.SMTP("127.0.0.1", mx.port) as smtp:
            smtp.ehlo("client.test")
            assert smtp.has_extn("starttls")
            # smtplib checks the certificate against the host it connected to (127.0.0.1),
            # so check the name by hand after the handshake instead.
            context.check_hostname = False
            smtp.starttls(context=context)
            cert = smtp.sock.getpeercert()  # type: ignore[union-attr]
            assert ("DNS", "mx.b.test") in cert["subjectAltName"]
            smtp.sendmail("sender@a.test", ["u1@b.test"], MESSAGE)
        [got] = mx.wait_for_messages("u1", 1)
        assert b"using TLS" in got or b"with ESMTPS" in got
