"""uvicorn on netpost's own listening socket (a `ServerHandler`, net/served.py).

- netpost owns the process's signals and logging: uvicorn's signal capture is switched off
  (`Server.capture_signals` replaced by a no-op) and `log_config=None`, no access log.
- Connection limits: the HTTP/1.1 protocol class is uvicorn's h11 one with `connection_made`
  asking `listener.admit(peer)` (per-address and total limits, [limits]); a refused
  connection gets `503` and is closed; `connection_lost` releases it.  A connection must send
  a whole request head within the idle timeout (uvicorn would otherwise wait forever for the
  first request), and between requests the same timeout applies (keep-alive).
- Trace: each connection is a trace session (`http#12 127.0.0.1:40000 * connected`); the
  app's middleware finds it by the client address and adds `C:`/`S:` lines.
- Shutdown: `close()` makes uvicorn stop accepting and end idle connections; answers in
  flight may finish within [server] shutdown_grace, at most 4 s (the supervisor waits 5 s for
  a served listener), then uvicorn cancels them; `wait_closed()` waits for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from netpost.net.served import ServedListener

Trace = Callable[[str, str], None]

_REFUSED = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            "Connection: close\r\nRetry-After: 10\r\nContent-Length: {n}\r\n\r\n{text}")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # netpost's supervisor handles SIGTERM and SIGINT


class RunningHTTP:
    """The `RunningServer` netpost's supervisor stops."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None]) -> None:
        self.server = server
        self.task = task

    def close(self) -> None:
        self.server.should_exit = True

    async def wait_closed(self) -> None:
        await asyncio.wait({self.task})  # its errors were logged by uvicorn


def protocol_class(listener: ServedListener, traces: dict[tuple[str, int], Trace],
                   idle_timeout: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol, admitted and released by `listener`, traced."""

    class AdmittedH11(H11Protocol):
        _peer: tuple[str, int] | None = None
        _trace: Trace | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peername = transport.get_extra_info("peername")
            host, port = (str(peername[0]), int(peername[1])) if peername else ("?", 0)
            refused = listener.admit(host)
            if refused is not None:
                self.transport = transport
                text = refused + "\n"
                transport.write(_REFUSED.format(n=len(text), text=text).encode())
                transport.close()
                return
            self._peer = (host, port)
            if listener.trace_log is not None:
                self._trace = listener.trace_log.session(listener.spec.name, f"{host}:{port}")
                traces[(host, port)] = self._trace
            super().connection_made(transport)
            # The first request head must come within the idle timeout, as later ones must.
            self.timeout_keep_alive_task = self.loop.call_later(
                idle_timeout, self.timeout_keep_alive_handler)

        def connection_lost(self, exc: Exception | None) -> None:
            peer, self._peer = self._peer, None
            if peer is not None:
                listener.release(peer[0])
                traces.pop(peer, None)
                if self._trace is not None:
                    self._trace("*", "closed")
            super().connection_lost(exc)

    return AdmittedH11


def serve_app(app_of: Callable[[Callable[[tuple[str, int] | None], Trace | None]], ASGIApp], *,
              idle_timeout: float, shutdown_grace: float
              ) -> Callable[[socket.socket, ServedListener], Any]:
    """The `serve(sock, listener)` of a ServerHandler running the app `app_of(trace_lookup)`."""
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # no start/stop chatter

    async def serve(sock: socket.socket, listener: ServedListener) -> RunningHTTP:
        traces: dict[tuple[str, int], Trace] = {}

        def trace_of(client: tuple[str, int] | None) -> Trace | None:
            return traces.get(client) if client is not None else None

        # The lookup finds nothing for connections that are not traced; tracing may be
        # switched on while the server runs (PUT /api/v1/traces/{listener}).
        app = app_of(trace_of)
        config = uvicorn.Config(
            app, http=protocol_class(listener, traces, idle_timeout), ws="none",
            lifespan="off", log_config=None, access_log=False, proxy_headers=False,
            server_header=False, timeout_keep_alive=max(1, int(idle_timeout)),
            timeout_graceful_shutdown=max(1, min(4, int(shutdown_grace))), backlog=1024,
            # Implicit TLS (the https listener): the certificate of every other service.
            ssl_context_factory=((lambda _config, _default: tls) if (tls := listener.ssl_context)
                                 is not None else None),
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()  # its error
                raise OSError("the HTTP server stopped at start")
            await asyncio.sleep(0.005)
        return RunningHTTP(server, task)

    return serve
