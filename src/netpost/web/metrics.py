"""Prometheus metrics at `/metrics` (text exposition format, via prometheus_client).

Nothing is counted twice or kept for this page alone: at each scrape a collector reads what
the server counts anyway — each listener's connections, sessions, engine events ("commands")
and 4xx/5xx replies (net/stream.py, net/session.py), datagram counters (net/datagram.py), the
group committer's batches (store/committer.py), the login throttle's failures, the queue's
recipients by state and the age of the oldest, and the web answers by status (web/app.py).

Who may read it is [web] metrics: "off" (404), "token" (the default: an administrator's API
token as `Authorization: Bearer`), or "public".
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from netpost.store.committer import BATCH_BUCKETS, LATENCY_BUCKETS, CommitStats
from netpost.web.api.framework import ApiError, error_response

if TYPE_CHECKING:
    from netpost.services import Services
    from netpost.web.api.auth import WebAuth

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _histogram(name: str, doc: str, bounds: tuple[float, ...], counts: list[int],
               total: float) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(bounds, counts, strict=False):
        running += n
        buckets.append((repr(float(bound)), running))
    running += counts[-1]
    buckets.append(("+Inf", running))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


class NetpostCollector(Collector):
    def __init__(self, services: Services, http_status: dict[int, int]) -> None:
        self.s = services
        self.http_status = http_status

    def collect(self) -> Iterator[Metric]:
        runtime = self.s.runtime
        yield GaugeMetricFamily("netpost_start_time_seconds", "when the server started",
                                value=runtime.started)
        conns = GaugeMetricFamily("netpost_connections", "open connections per listener",
                                  labels=["listener", "protocol"])
        accepted = CounterMetricFamily("netpost_connections_accepted",
                                       "connections accepted since start",
                                       labels=["listener", "protocol"])
        commands = CounterMetricFamily("netpost_commands", "commands (engine events) handled",
                                       labels=["listener", "command"])
        errors = CounterMetricFamily("netpost_error_replies", "error replies sent: 4xx and "
                                     "5xx (SMTP, submission, FTP), NO and BAD (IMAP), -ERR "
                                     "(POP3)", labels=["listener", "code"])
        datagrams = CounterMetricFamily("netpost_datagrams", "UDP datagrams by outcome",
                                        labels=["listener", "outcome"])
        for lst in runtime.listeners:
            spec = lst.spec
            sessions = getattr(lst, "sessions", None)
            count = len(sessions) if sessions is not None else getattr(lst, "connections", 0)
            conns.add_metric([spec.name, spec.protocol], float(count))
            if hasattr(lst, "accepted"):
                accepted.add_metric([spec.name, spec.protocol], float(lst.accepted))
            for name, n in sorted(getattr(lst, "commands", {}).items()):
                commands.add_metric([spec.name, name], float(n))
            for code, n in sorted(getattr(lst, "error_replies", {}).items()):
                errors.add_metric([spec.name, code], float(n))
            stats = getattr(lst, "stats", None)
            if stats is not None and dataclasses.is_dataclass(stats):
                for f in dataclasses.fields(stats):
                    value = getattr(stats, f.name)
                    if isinstance(value, int):
                        datagrams.add_metric([spec.name, f.name], float(value))
        yield conns
        yield accepted
        yield commands
        yield errors
        yield datagrams
        http = CounterMetricFamily("netpost_http_responses", "web answers by status",
                                   labels=["code"])
        for status, n in sorted(self.http_status.items()):
            http.add_metric([str(status)], float(n))
        yield http
        logins = CounterMetricFamily("netpost_login_failures", "failed logins by protocol",
                                     labels=["protocol"])
        for protocol, n in sorted(self.s.auth.throttle.failed_logins.items()):
            logins.add_metric([protocol], float(n))
        yield logins
        now = time.time()
        sessions = self.s.stores.tokens.list_tokens(kind="session")
        yield GaugeMetricFamily("netpost_web_sessions", "browser sessions logged in (not "
                                "expired)", value=float(sum(not t.expired(now)
                                                            for t in sessions)))
        yield from self._queue()
        yield from self._commits()
        yield from self._ntp()

    def _ntp(self) -> Iterator[Metric]:
        from netpost.ntp.service import runtime_of

        ntp = runtime_of(self.s)
        if ntp is None:
            return
        counts = CounterMetricFamily("netpost_ntp_requests", "NTP requests by what was done "
                                     "with them (replies, nts_replies, kod_rate, malformed, "
                                     "...)", labels=["outcome"])
        for f in dataclasses.fields(ntp.stats):
            counts.add_metric([f.name], float(getattr(ntp.stats, f.name)))
        yield counts
        yield GaugeMetricFamily("netpost_ntp_stratum", "the stratum served",
                                value=float(ntp.clock.state(time.time()).stratum))

    def _queue(self) -> Iterator[Metric]:
        queue = self.s.stores.queue
        depth = GaugeMetricFamily("netpost_queue_recipients", "outbound queue recipients by "
                                  "state", labels=["state"])
        for state, n in sorted(queue.queue_counts().items()):
            depth.add_metric([state], float(n))
        yield depth
        oldest = queue.entries(limit=1)
        age = time.time() - oldest[0].message.arrival if oldest else 0.0
        yield GaugeMetricFamily("netpost_queue_oldest_age_seconds", "age of the oldest queued "
                                "message (0: the queue is empty)", value=max(0.0, age))

    def _commits(self) -> Iterator[Metric]:
        stats = getattr(self.s.stores.delivery, "stats", None)
        if not isinstance(stats, CommitStats):
            return
        yield CounterMetricFamily("netpost_deliveries", "messages committed to mailboxes and "
                                  "the queue (group commit)", value=float(stats.deliveries))
        yield CounterMetricFamily("netpost_delivery_failures", "deliveries whose commit failed",
                                  value=float(stats.failures))
        yield _histogram("netpost_group_commit_batch_size", "messages per group commit",
                         BATCH_BUCKETS, stats.batch_counts,
                         float(stats.deliveries))
        yield _histogram("netpost_group_commit_seconds", "time to make one batch durable",
                         LATENCY_BUCKETS, stats.latency_counts, stats.latency_sum)


def metrics_route(services: Services, auth: WebAuth, mode: str,
                  http_status: dict[int, int]) -> Route:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NetpostCollector(services, http_status))

    async def metrics(request: Request) -> Response:
        if mode == "off":
            return error_response(404, "metrics are off ([web] metrics)")
        if mode == "token":
            try:
                caller = await auth.authenticate(request, "admin")
            except ApiError as exc:
                return error_response(exc.status, exc.message, exc.headers)
            if caller is None or caller.via != "token":
                return error_response(401, "send an administrator's API token as "
                                      "'Authorization: Bearer' ([web] metrics = \"token\")",
                                      {"WWW-Authenticate": 'Bearer realm="netpost"'})
            if not caller.admin:
                return error_response(403, "only administrators may read the metrics")
        body: bytes = generate_latest(registry)
        return Response(body, media_type=CONTENT_TYPE)

    return Route("/metrics", metrics, methods=["GET"])
