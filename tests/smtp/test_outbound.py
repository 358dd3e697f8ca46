"""The asyncio SMTP client on 127.0.0.1: against a real `netpost serve` and hostile servers."""

from __future__ import annotations

import asyncio
import poplib
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
from cryptography import x509

from netpost.smtp.client import OutRecipient
from netpost.smtp.outbound import (
    DeliveryError,
    OutboundConnection,
    Timeouts,
    TLSPolicy,
    open_connection,
)
from tests.conftest import DOMAIN, PASSWORD, Server, client_tls

FAST = Timeouts(connect=2, greeting=0.5, command=0.5, tls_handshake=2, mail=0.5, rcpt=0.5,
                data_init=0.5, data_block=2, final_dot=1)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def message(token: str, size: int = 0) -> bytes:
    body = f"From: a@sender.example\r\nTo: alice@{DOMAIN}\r\nSubject: {token}\r\n\r\n"
    body += "hello\r\n.dot line\r\n.\r\n" + ("x" * 70 + "\r\n") * (size // 72)
    return body.encode()


def fetch_all(server: Server, user: str) -> list[bytes]:
    pop = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls(), timeout=30)
    try:
        pop.user(user)
        pop.pass_(PASSWORD)
        count = len(pop.list()[1])
        return [b"\r\n".join(pop.retr(i)[1]) for i in range(1, count + 1)]
    finally:
        pop.quit()


def cert_name(server: Server) -> str:
    cert = x509.load_pem_x509_certificate((server.data / "tls" / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)[0]


# --- against netpost serve ----------------------------------------------------------------------


def test_delivers_to_netpost_over_starttls(server: Server) -> None:
    token = uuid.uuid4().hex
    trace: list[tuple[str, str]] = []

    async def main() -> tuple[str | None, bool, list[tuple[str, int, str]]]:
        conn = await open_connection("127.0.0.1", server.port("smtp"), helo="out.sender.example",
                                     tls=TLSPolicy.OPPORTUNISTIC, ssl_context=None,
                                     trace=lambda d, t: trace.append((d, t)))
        ext = conn.extensions
        result = await conn.send("a@sender.example", [
            OutRecipient(f"alice@{DOMAIN}"),
            OutRecipient(f"nobody-{token}@{DOMAIN}"),
            OutRecipient("someone@elsewhere.example"),
        ], message(token, 200_000))
        second = await conn.send("a@sender.example", [OutRecipient(f"bob@{DOMAIN}")],
                                 message(token + "-2"))
        await conn.aclose()
        assert second.sent and second.recipients[0].delivered
        assert not conn.usable
        return conn.tls_version, ext.pipelining, [
            (r.status, r.code, r.text) for r in result.recipients]

    tls_version, pipelining, results = run(main())
    assert tls_version in ("TLSv1.2", "TLSv1.3") and pipelining
    assert results[0][:2] == ("delivered", 250)
    assert results[1][:2] == ("permanent", 550)
    assert results[2][:2] == ("permanent", 554) and "Relay" in results[2][2]
    got = [m for m in fetch_all(server, f"alice@{DOMAIN}") if token.encode() in m]
    assert len(got) == 1
    # the content arrives un-stuffed: the ".dot line" and "." lines are back
    assert b"\r\nhello\r\n.dot line\r\n.\r\nxxx" in got[0]
    assert [m for m in fetch_all(server, f"bob@{DOMAIN}") if (token + "-2").encode() in m]
    said = [t for d, t in trace if d == "C"]
    assert "STARTTLS" in said and said.count("EHLO out.sender.example") == 2
    assert any(t.startswith("<message: ") for t in said)
    assert not any("hello" in t for _, t in trace)


def test_required_tls_fails_verification_of_self_signed(server: Server) -> None:
    async def main() -> None:
        await open_connection("127.0.0.1", server.port("smtp"), helo="out.example",
                              tls=TLSPolicy.REQUIRED, ssl_context=None,
                              server_name="mx.example.test", timeouts=FAST)

    with pytest.raises(DeliveryError) as info:
        run(main())
    assert info.value.temporary
    assert info.value.reason.startswith("TLS required: TLS handshake")
    assert "certificate verification failed: self-signed" in info.value.reason


def test_required_tls_with_the_cert_as_ca(server: Server) -> None:
    ctx = ssl.create_default_context(cafile=str(server.data / "tls" / "cert.pem"))

    async def main() -> str | None:
        conn = await open_connection("127.0.0.1", server.port("smtp"), helo="out.example",
                                     tls=TLSPolicy.REQUIRED, ssl_context=ctx,
                                     server_name=cert_name(server))
        version = conn.tls_version
        await conn.aclose()
        return version

    assert run(main()) is not None


def test_policy_none_stays_plaintext(server: Server) -> None:
    async def main() -> tuple[str | None, bool]:
        conn = await open_connection("127.0.0.1", server.port("smtp"), helo="out.example",
                                     tls=TLSPolicy.NONE, ssl_context=None)
        offered = conn.extensions.starttls
        version = conn.tls_version
        await conn.aclose()
        return version, offered

    assert run(main()) == (None, True)


# --- hostile servers ----------------------------------------------------------------------------


@asynccontextmanager
async def hostile(handler: Handler) -> AsyncIterator[int]:
    tasks: set[asyncio.Task[None]] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    srv = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def expect_line(reader: asyncio.StreamReader, start: bytes) -> bytes:
    line = await reader.readline()
    assert line.upper().startswith(start), line
    return line


async def ehlo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               extensions: bytes = b"250 PIPELINING\r\n") -> None:
    writer.write(b"220 hostile.test ESMTP\r\n")
    await expect_line(reader, b"EHLO")
    writer.write(b"250-hostile.test\r\n" + extensions)
    await writer.drain()


def connect_error(handler: Handler, *, tls: TLSPolicy = TLSPolicy.OPPORTUNISTIC,
                  send: bool = False, body: bytes = b"hi\r\n") -> DeliveryError:
    async def main() -> None:
        async with hostile(handler) as port:
            conn = await open_connection("127.0.0.1", port, helo="out.example", tls=tls,
                                         ssl_context=None, timeouts=FAST)
            if send:
                try:
                    await conn.send("a@x.example", [OutRecipient("b@y.example")], body)
                finally:
                    assert not conn.usable
                    await conn.aclose()
            raise AssertionError("no error")

    with pytest.raises(DeliveryError) as info:
        run(main())
    return info.value


def test_connection_refused() -> None:
    async def main() -> None:
        srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        srv.close()
        await srv.wait_closed()
        await open_connection("127.0.0.1", port, helo="out.example",
                              tls=TLSPolicy.OPPORTUNISTIC, ssl_context=None, timeouts=FAST)

    with pytest.raises(DeliveryError) as info:
        run(main())
    assert info.value.temporary and info.value.reason.startswith("cannot connect to 127.0.0.1:")


def test_slow_greeting_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    err = connect_error(handler)
    assert err.temporary and err.reason == "timeout waiting for greeting"


def test_slow_rcpt_reply_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ehlo(reader, writer, b"250 8BITMIME\r\n")  # no PIPELINING: one at a time
        await expect_line(reader, b"MAIL")
        writer.write(b"250 ok\r\n")
        await expect_line(reader, b"RCPT")
        await asyncio.sleep(10)

    err = connect_error(handler, send=True)
    assert err.temporary and err.reason == "timeout waiting for reply to RCPT"


def test_garbage_greeting() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await asyncio.sleep(10)

    err = connect_error(handler)
    assert err.temporary and err.reason.startswith("protocol error: malformed reply line")


def test_huge_multiline_reply() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hostile.test\r\n")
        await expect_line(reader, b"EHLO")
        for i in range(10_000):
            writer.write(b"250-X-FILLER-%d\r\n" % i)
        writer.write(b"250 OK\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    err = connect_error(handler)
    assert err.temporary and "longer than 200 lines" in err.reason


def test_endless_line() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ")
        for _ in range(100):
            writer.write(b"x" * 1000)
            await writer.drain()
        await asyncio.sleep(10)

    err = connect_error(handler)
    assert err.temporary and "longer than 4096 octets" in err.reason


def test_421_at_greeting() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.3.2 too busy, come back later\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    err = connect_error(handler)
    assert err.temporary and err.reply is not None and err.reply.code == 421
    assert "too busy" in err.reason


def test_554_at_greeting_is_permanent_and_quits() -> None:
    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 5.7.1 no mail from you\r\n")
        got.append(await reader.readline())

    err = connect_error(handler)
    assert not err.temporary and err.reply is not None and err.reply.code == 554
    assert got == [b"QUIT\r\n"]


def test_drop_mid_data() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ehlo(reader, writer)
        for start in (b"MAIL", b"RCPT", b"DATA"):
            await expect_line(reader, start)
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await writer.drain()
        await reader.readexactly(1000)
        # drop here, mid-content

    err = connect_error(handler, send=True, body=b"y" * 998 + b"\r\n" * 2_000_000)
    assert err.temporary
    assert err.reason == "connection lost after DATA, before the reply to the end of data"


def test_slow_final_reply_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ehlo(reader, writer)
        for start in (b"MAIL", b"RCPT", b"DATA"):
            await expect_line(reader, start)
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        while await reader.readline() != b".\r\n":
            pass
        await asyncio.sleep(10)

    err = connect_error(handler, send=True)
    assert err.temporary and err.reason == "timeout waiting for reply to end of data"


def test_starttls_offered_but_handshake_fails() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ehlo(reader, writer, b"250 STARTTLS\r\n")
        await expect_line(reader, b"STARTTLS")
        writer.write(b"220 go ahead\r\n")
        await writer.drain()
        await reader.read(100)  # the ClientHello
        writer.write(b"this is not TLS at all\r\n" * 10)
        await writer.drain()
        await asyncio.sleep(10)

    err = connect_error(handler)
    assert err.temporary and err.reason.startswith("TLS handshake with 127.0.0.1:")
    err = connect_error(handler, tls=TLSPolicy.REQUIRED)
    assert err.reason.startswith("TLS required: TLS handshake")


def test_tls_required_but_not_offered() -> None:
    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ehlo(reader, writer, b"250 PIPELINING\r\n")
        got.append(await reader.readline())

    err = connect_error(handler, tls=TLSPolicy.REQUIRED)
    assert err.temporary and err.reason == "TLS required but the server does not offer STARTTLS"
    assert got == [b"QUIT\r\n"]  # never a MAIL in the clear


def test_421_mid_transaction_then_unusable() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ehlo(reader, writer)
        for start in (b"MAIL", b"RCPT", b"RCPT", b"DATA"):
            await expect_line(reader, start)
        writer.write(b"250 ok\r\n550 5.1.1 unknown\r\n421 4.3.2 shutting down\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    async def main() -> None:
        async with hostile(handler) as port:
            conn = await open_connection("127.0.0.1", port, helo="out.example",
                                         tls=TLSPolicy.NONE, ssl_context=None, timeouts=FAST)
            result = await conn.send("a@x.example", [OutRecipient("b@y.example"),
                                                     OutRecipient("c@y.example")], b"x\r\n")
            assert [(r.status, r.code) for r in result.recipients] == [
                ("permanent", 550), ("temporary", 421)]
            assert not conn.usable
            with pytest.raises(DeliveryError) as info:
                await conn.send("a@x.example", [OutRecipient("b@y.example")], b"x\r\n")
            assert "421" in info.value.reason
            await conn.aclose()

    run(main())


def test_many_transactions_one_connection_with_a_scripted_server() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ehlo(reader, writer, b"250-SIZE 100000\r\n250 DSN\r\n")  # no PIPELINING
        while True:
            line = await reader.readline()
            if not line:
                return
            seen.append(line)
            cmd = line[:4].upper()
            if cmd == b"DATA":
                writer.write(b"354 go\r\n")
                while (chunk := await reader.readline()) != b".\r\n":
                    seen.append(chunk)
                writer.write(b"250 2.0.0 queued\r\n")
            elif cmd == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()

    async def main() -> OutboundConnection:
        async with hostile(handler) as port:
            conn = await open_connection("127.0.0.1", port, helo="out.example",
                                         tls=TLSPolicy.OPPORTUNISTIC, ssl_context=None,
                                         timeouts=FAST)
            for i in range(3):
                r = await conn.send("a@x.example",
                                    [OutRecipient("b@y.example", ("FAILURE",), "B@y.example")],
                                    b".%d\r\n" % i, envid=f"env {i}", ret="HDRS")
                assert r.sent and r.recipients[0].delivered
            await conn.aclose()
            return conn

    conn = run(main())
    assert conn.peer.startswith("127.0.0.1:") and conn.tls_version is None
    assert seen[:4] == [
        b"MAIL FROM:<a@x.example> SIZE=4 RET=HDRS ENVID=env+200\r\n",
        b"RCPT TO:<b@y.example> NOTIFY=FAILURE ORCPT=rfc822;B@y.example\r\n",
        b"DATA\r\n", b"..0\r\n"]
    assert seen[-1] == b"QUIT\r\n" and b"RSET\r\n" not in seen
