"""The NTS-KE listener (RFC 8915 §4): TLS 1.3 with ALPN "ntske/1", one request per connection.

netpost binds the socket (net/served.py, so --listen, the limits and the start-up listing hold);
this module serves it with asyncio's TLS and netpost's certificate (net/tls.py), reads the
client's records, exports the two keys from the TLS session (RFC 8915 §5.1) and answers with
eight cookies made with the server's current cookie key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from netpost.net.served import ServedListener
from netpost.ntp.keys import KeyStore
from netpost.ntp.nts import KEY_SIZE, MAX_COOKIES
from netpost.ntp.ntske import (
    ALPN,
    EXPORTER_LABEL,
    NTSKEConnection,
    exporter_context,
)
from netpost.ntp.tls_export import ExporterUnavailable, export_keying_material

log = logging.getLogger("netpost.ntp")

READ_TIMEOUT = 10.0  # seconds a client has to send its request after the handshake


def ntske_context(cert: Path, key: Path) -> ssl.SSLContext:
    """RFC 8915 §3: TLS 1.3 or newer only, ALPN "ntske/1"."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols([ALPN])
    return ctx


class NTSKEServer:
    def __init__(self, keys: KeyStore, ctx: ssl.SSLContext, *, ntp_server: str | None,
                 ntp_port: Callable[[], int | None]) -> None:
        self.keys = keys
        self.ctx = ctx
        self.ntp_server = ntp_server
        self.ntp_port = ntp_port
        self.exchanges = 0  # key establishments answered with cookies
        self.failures = 0

    async def serve(self, sock: socket.socket, listener: ServedListener) -> asyncio.Server:
        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peername = writer.get_extra_info("peername")
            peer = str(peername[0]) if peername else "unknown"
            refused = listener.admit(peer)
            if refused is not None:
                writer.close()
                return
            try:
                await self.exchange(reader, writer, peer)
            except (ConnectionError, ssl.SSLError, TimeoutError, OSError) as exc:
                log.debug("nts-ke %s: %s", peer, exc)
            finally:
                listener.release(peer)
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1)

        return await asyncio.start_server(connected, sock=sock, ssl=self.ctx,
                                          ssl_handshake_timeout=READ_TIMEOUT)

    async def exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       peer: str) -> None:
        sslobj = writer.get_extra_info("ssl_object")
        if sslobj is None or sslobj.selected_alpn_protocol() != ALPN:
            # RFC 8915 §4: the client must offer "ntske/1"; anything else is not NTS-KE.
            log.info("nts-ke %s: no ALPN %s: closed", peer, ALPN)
            self.failures += 1
            return
        conn = NTSKEConnection(ntp_server=self.ntp_server, ntp_port=self.ntp_port())
        async with asyncio.timeout(READ_TIMEOUT):
            while True:
                data = await reader.read(4096)
                if conn.receive_data(data) or not data:
                    break
        made = [0]

        def cookies(aead: int) -> list[bytes]:
            c2s = export_keying_material(sslobj, EXPORTER_LABEL,
                                         exporter_context(aead, False), KEY_SIZE)
            s2c = export_keying_material(sslobj, EXPORTER_LABEL,
                                         exporter_context(aead, True), KEY_SIZE)
            made[0] = MAX_COOKIES
            return [self.keys.keys.make_cookie(c2s, s2c) for _ in range(MAX_COOKIES)]

        try:
            reply = conn.response(cookies)
        except ExporterUnavailable as exc:
            log.error("nts-ke: cannot export TLS keys: %s", exc)
            reply = conn.internal_error()
        writer.write(reply)
        await writer.drain()
        if made[0]:
            self.exchanges += 1
        else:
            self.failures += 1
