"""The running server as the web API shows it (admins): listeners and open sessions, and the
protocol trace live as server-sent events — what the inspector page of the UI will watch.

The trace stream taps the trace log (`TraceLog.taps`): each line written for a traced
listener is also handed to every open stream, filtered by listener or session; a slow
reader's queue is bounded and lines past it are dropped (counted in a comment), so a reader
can never slow the server down.  Only listeners that are traced ([trace] listeners, or
`netpost serve --trace`) have lines; secrets are redacted before a line is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

from pydantic import BaseModel, Field
from starlette.responses import Response, StreamingResponse

from netpost.net.trace import TraceLog
from netpost.services import Services
from netpost.web.api.framework import Access, ApiError, Call, Endpoint
from netpost.web.api.models import (
    ListenerInfo,
    NTPStatus,
    NTPUpstream,
    SessionInfo,
    SessionList,
    TraceStatus,
    TraceSwitch,
)

QUEUE_LINES = 10_000  # lines kept for one slow reader before dropping
KEEPALIVE = 15.0


class TraceQuery(BaseModel):
    listener: str | None = Field(None, max_length=64, description="only this listener's lines "
                                 "(smtp, imap, http, ...)")
    session: str | None = Field(None, max_length=80, description="only this session "
                                "(e.g. smtp#12)")


def _matches(line: str, q: TraceQuery) -> bool:
    # "2026-...Z smtp#12 127.0.0.1:5000 C: EHLO x" / "...Z ntp 127.0.0.1:40000 C: ..."
    parts = line.split(" ", 2)
    if len(parts) < 2:
        return False
    sid = parts[1]
    if q.session is not None and sid != q.session:
        return False
    return q.listener is None or sid.partition("#")[0] == q.listener


class LiveApi:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.runtime = services.runtime

    def endpoints(self) -> list[Endpoint]:
        a: Access = "admin"
        return [
            Endpoint("GET", "/sessions", self.sessions, "Listeners and open sessions",
                     "live", access=a, response=SessionList),
            Endpoint("GET", "/traces", self.trace_status, "Which listeners are traced",
                     "live", access=a, response=TraceStatus),
            Endpoint("PUT", "/traces/{listener}", self.switch_trace, "Trace a listener's "
                     "new sessions from now on, or stop (until the server restarts)", "live",
                     access=a, body=TraceSwitch, response=TraceStatus),
            Endpoint("GET", "/traces/stream", self.trace_stream, "The protocol trace as it is "
                     "written (server-sent events)", "live", access=a, query=TraceQuery,
                     media_type="text/event-stream",
                     description="Each event is `event: trace`, `data: <one trace line>` "
                     "(`<time> <session> <peer> C:|S:|*: <text>`)."),
            Endpoint("GET", "/status/ntp", self.ntp_status, "The NTP service: clock state, "
                     "upstreams, counters", "live", access=a, response=NTPStatus),
        ]

    async def sessions(self, call: Call) -> SessionList:
        listeners: list[ListenerInfo] = []
        sessions: list[SessionInfo] = []
        now = asyncio.get_running_loop().time()
        registry = self.runtime.registry
        for lst in self.runtime.listeners:
            spec = lst.spec
            transport = "tcp"
            if registry is not None:
                transport = registry.listener(spec.name).transport.value
            open_sessions = list(getattr(lst, "sessions", ()))
            count = len(open_sessions) if open_sessions else int(getattr(lst, "connections", 0))
            listeners.append(ListenerInfo(name=spec.name, protocol=spec.protocol,
                                          address=str(lst.bound or spec.address),
                                          transport=transport,
                                          traced=getattr(lst, "trace_log", getattr(
                                              lst, "trace", None)) is not None,
                                          connections=count))
            for s in open_sessions:
                sessions.append(SessionInfo(
                    listener=spec.name, protocol=spec.protocol, peer=str(s.peer),
                    tls=bool(getattr(s, "tls_active", False)),
                    idle=max(0.0, round(now - float(getattr(s, "last_activity", now)), 3))))
        return SessionList(listeners=listeners, sessions=sessions)

    async def trace_status(self, call: Call) -> TraceStatus:
        log = self.runtime.trace_log
        traced = [lst.spec.name for lst in self.runtime.listeners
                  if getattr(lst, "trace_log", getattr(lst, "trace", None)) is not None]
        return TraceStatus(enabled=log is not None, file=str(log.path) if log else None,
                           listeners=traced)

    async def switch_trace(self, call: Call) -> TraceStatus:
        name = str(call.path["listener"])
        found = [lst for lst in self.runtime.listeners if lst.spec.name == name]
        if not found:
            raise ApiError(404, f"no listener {name} is running")
        log = self.runtime.trace_log
        if call.body.enabled and log is None:
            config = self.services.config
            if self.services.data_dir is None or config is None:
                raise ApiError(409, "this server has no data directory to trace into")
            log = self.runtime.trace_log = TraceLog(self.services.data_dir / config.trace.file)
        for lst in found:
            on = log if call.body.enabled else None
            if hasattr(lst, "trace_log"):  # stream and served listeners: new sessions
                lst.trace_log = on
            elif hasattr(lst, "trace"):  # datagram listeners: every datagram from now on
                lst.trace = on.datagrams(name) if on is not None else None
        return await self.trace_status(call)

    async def trace_stream(self, call: Call) -> Response:
        log = self.runtime.trace_log
        if log is None:
            raise ApiError(409, "tracing is off: set [trace] listeners = [\"all\"] or start "
                           "'netpost serve --trace'")
        q: TraceQuery = call.query
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str] = asyncio.Queue(QUEUE_LINES)
        dropped = 0

        def put(line: str) -> None:
            nonlocal dropped
            try:
                lines.put_nowait(line)
            except asyncio.QueueFull:
                dropped += 1

        def tap(line: str) -> None:  # called where the line is written (the loop's thread)
            if _matches(line, q):
                try:
                    asyncio.get_running_loop()
                    put(line)
                except RuntimeError:  # another thread: hand it over
                    loop.call_soon_threadsafe(put, line)

        async def stream() -> AsyncIterator[bytes]:
            nonlocal dropped
            log.taps.add(tap)
            try:
                yield f": netpost trace since {time.strftime('%H:%M:%S')}\n\n".encode()
                while True:
                    try:
                        line = await asyncio.wait_for(lines.get(), KEEPALIVE)
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                    batch = [line]
                    while not lines.empty() and len(batch) < 500:
                        batch.append(lines.get_nowait())
                    out = "".join(f"event: trace\ndata: {x.rstrip()}\n\n" for x in batch)
                    if dropped:
                        out += f": {dropped} lines dropped (reader too slow)\n\n"
                        dropped = 0
                    yield out.encode()
            finally:
                with contextlib.suppress(KeyError):
                    log.taps.remove(tap)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    async def ntp_status(self, call: Call) -> NTPStatus:
        from netpost.ntp.service import runtime_of

        ntp = runtime_of(self.services)
        if ntp is None:
            raise ApiError(404, "the NTP service is not running (no ntp or nts-ke listener)")
        state = ntp.clock.state(time.time())
        ref = state.reference_id
        reference = (ref.decode("ascii") if state.stratum <= 1 and ref.isascii()
                     else ".".join(str(b) for b in ref))
        return NTPStatus(
            running=any(lst.bound is not None for lst in ntp.ntp_listeners),
            synchronized=ntp.clock.synchronized, stratum=state.stratum,
            reference_id=reference, root_delay=state.root_delay,
            root_dispersion=state.root_dispersion, nts=ntp.keys is not None,
            system_peer=ntp.status.system_peer, offset=ntp.status.offset,
            upstreams=[NTPUpstream(**dataclasses.asdict(u)) for u in ntp.status.upstreams],
            counters={f.name: int(getattr(ntp.stats, f.name))
                      for f in dataclasses.fields(ntp.stats)})
