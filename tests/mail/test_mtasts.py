"""MTA-STS (RFC 8461) policy discovery against real parts on loopback: Knot for the TXT and
policy-host records, an HTTPS server with certificates from a test CA for the policies."""

from __future__ import annotations

import asyncio
import http.server
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netpost.mail.dns import Resolver
from netpost.mail.mtasts import (
    MAX_AGE_LIMIT,
    MAX_POLICY_SIZE,
    Mode,
    Policy,
    PolicyCache,
    PolicyError,
    fetch_policy,
    parse_policy,
    parse_record,
)
from tests.support.certs import TestCA
from tests.support.dns import DNSServer, Record, a, dns_server_fixture, txt

ENFORCE = ("version: STSv1\r\nmode: enforce\r\nmx: mx.a.test\r\nmx: *.mx.a.test\r\n"
           "max_age: 86400\r\n")


@dataclass
class Reply:
    body: bytes
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    content_length: bool = True  # False: body ends when the connection closes (HTTP/1.0)


class PolicyServer:
    """HTTPS on 127.0.0.1: a certificate per SNI name it knows (the first is the default, for
    names it does not know) and a reply per Host."""

    def __init__(self, ca: TestCA, names: list[str], directory: Path) -> None:
        self.replies: dict[str, Reply] = {}
        self.requests: Counter[str] = Counter()
        contexts = {n: ca.server_context(n, directory=directory) for n in names}
        default = contexts[names[0]]

        def pick(sock: ssl.SSLObject, server_name: str, _: ssl.SSLContext) -> None:
            if server_name in contexts:
                sock.context = contexts[server_name]

        default.sni_callback = pick
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                host = self.headers.get("Host", "").rsplit(":", 1)[0]
                owner.requests[host] += 1
                reply = owner.replies.get(host)
                if reply is None or self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                if reply.content_length:
                    self.send_header("Content-Length", str(len(reply.body)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = default.wrap_socket(self.httpd.socket, server_side=True)
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def sts_zone(policy_id: str, *extra: Record) -> list[Record]:
    return [txt("_mta-sts", f"v=STSv1; id={policy_id};"), a("mta-sts", "127.0.0.1"), *extra]


ZONES = {
    "a.test": sts_zone("20240101"),
    "t.test": sts_zone("1"), "n.test": sts_zone("1"), "w.test": sts_zone("1"),
    "bad.test": sts_zone("1"), "big.test": sts_zone("1"), "r.test": sts_zone("1"),
    "ct.test": sts_zone("1"), "gone.test": sts_zone("1"),
    "noaddr.test": [txt("_mta-sts", "v=STSv1; id=1")],
    "none.test": [a("mta-sts", "127.0.0.1")],  # no TXT: no MTA-STS
    "two.test": [txt("_mta-sts", "v=STSv1; id=1"), txt("_mta-sts", "v=STSv1; id=2"),
                 a("mta-sts", "127.0.0.1")],
    "mixed.test": [txt("_mta-sts", "v=spf1 -all"), txt("_mta-sts", "v=STSv1; id=7"),
                   a("mta-sts", "127.0.0.1")],
}

ns = dns_server_fixture(ZONES)
Fetch = Callable[..., Policy | None]


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def server(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyServer]:
    names = [f"mta-sts.{d}" for d in ZONES if d != "w.test"]  # w.test gets a.test's cert
    srv = PolicyServer(ca, names, tmp_path_factory.mktemp("certs"))
    yield srv
    srv.close()


@pytest.fixture
def fetch(ns: DNSServer, ca: TestCA, server: PolicyServer) -> Fetch:
    ns.update(ZONES)
    server.replies.clear()
    server.requests.clear()
    resolver = Resolver([ns.address], timeout=3)

    def run(domain: str, cache: PolicyCache, **kw: Any) -> Policy | None:
        options: dict[str, Any] = {"https_port": server.port,
                                      "ssl_context": ca.client_context(), "timeout": 5.0}
        options.update(kw)
        return asyncio.run(fetch_policy(domain, resolver, cache=cache, **options))

    return run


def reply(server: PolicyServer, domain: str, body: str | bytes, **kw: Any) -> None:
    server.replies[f"mta-sts.{domain}"] = Reply(
        body.encode() if isinstance(body, str) else body, **kw)


def test_enforce(fetch: Fetch, server: PolicyServer) -> None:
    reply(server, "a.test", ENFORCE)
    policy = fetch("a.test", PolicyCache())
    assert policy is not None
    assert policy.mode is Mode.ENFORCE and policy.enforce
    assert policy.id == "20240101" and policy.domain == "a.test"
    assert policy.mx == ("mx.a.test", "*.mx.a.test") and policy.max_age == 86400
    assert policy.allows_mx("mx.a.test") and policy.allows_mx("MX.A.TEST.")
    assert policy.allows_mx("eu.mx.a.test")
    assert not policy.allows_mx("a.b.mx.a.test") and not policy.allows_mx("evil.test")
    assert server.requests["mta-sts.a.test"] == 1


def test_testing_and_none(fetch: Fetch, server: PolicyServer) -> None:
    reply(server, "t.test", "version: STSv1\nmode: testing\nmx: mx.t.test\nmax_age: 600\n")
    reply(server, "n.test", "version: STSv1\nmode: none\nmax_age: 600\n")
    cache = PolicyCache()
    testing = fetch("t.test", cache)
    assert testing is not None and testing.mode is Mode.TESTING and not testing.enforce
    assert testing.allows_mx("mx.t.test")
    none = fetch("n.test", cache)
    assert none is not None and none.mode is Mode.NONE and none.mx == ()


def test_cached_by_id_and_refetched_when_id_changes(fetch: Fetch, ns: DNSServer,
                                                    server: PolicyServer) -> None:
    reply(server, "a.test", ENFORCE)
    cache = PolicyCache()
    first = fetch("a.test", cache)
    assert first is not None and fetch("a.test", cache) == first
    assert server.requests["mta-sts.a.test"] == 1  # same id: no second fetch
    ns.update({**ZONES, "a.test": sts_zone("20240202")})
    reply(server, "a.test", ENFORCE.replace("enforce", "testing"))
    second = fetch("a.test", cache)
    assert second is not None and second.id == "20240202" and second.mode is Mode.TESTING
    assert server.requests["mta-sts.a.test"] == 2
    assert cache.get("a.test") == second


def test_wrong_certificate_name(fetch: Fetch, server: PolicyServer) -> None:
    # mta-sts.w.test is served with the certificate of mta-sts.a.test: RFC 8461 3.3 refuses it.
    reply(server, "w.test", ENFORCE)
    assert fetch("w.test", PolicyCache()) is None
    assert server.requests["mta-sts.w.test"] == 0  # no request was sent over that TLS


def test_failed_fetch_uses_unexpired_cached_policy(fetch: Fetch, server: PolicyServer) -> None:
    reply(server, "w.test", ENFORCE)
    cache = PolicyCache()
    old = Policy(domain="w.test", id="0", mode=Mode.ENFORCE, mx=("mx.w.test",),
                 max_age=3600, fetched_at=time.time() - 60)
    cache.put(old)
    assert fetch("w.test", cache) == old  # RFC 8461 5.1
    expired = PolicyCache()
    expired.put(Policy(domain="w.test", id="0", mode=Mode.ENFORCE, mx=("mx.w.test",),
                       max_age=60, fetched_at=time.time() - 61))
    assert fetch("w.test", expired) is None


def test_bad_policy_syntax(fetch: Fetch, server: PolicyServer) -> None:
    reply(server, "bad.test", "version: STSv1\nmode: enforce\nmx: mx.bad.test\n")  # no max_age
    assert fetch("bad.test", PolicyCache()) is None
    assert server.requests["mta-sts.bad.test"] == 1


def test_failed_fetch_not_repeated_at_once(fetch: Fetch, server: PolicyServer) -> None:
    reply(server, "bad.test", "garbage")
    cache = PolicyCache()
    assert fetch("bad.test", cache) is None
    assert fetch("bad.test", cache) is None
    assert server.requests["mta-sts.bad.test"] == 1  # backed off for this id


def test_oversized_body(fetch: Fetch, server: PolicyServer) -> None:
    body = ENFORCE + "x-padding: " + "p" * MAX_POLICY_SIZE + "\n"
    reply(server, "big.test", body)
    assert fetch("big.test", PolicyCache()) is None
    reply(server, "big.test", body, content_length=False)  # the cap applies while reading
    assert fetch("big.test", PolicyCache()) is None
    assert server.requests["mta-sts.big.test"] == 2
    # Just under the cap is fine.
    reply(server, "big.test", ENFORCE + "x-padding: " + "p" * (MAX_POLICY_SIZE - 200) + "\n")
    policy = fetch("big.test", PolicyCache())
    assert policy is not None and policy.enforce


def test_redirect_refused(fetch: Fetch, server: PolicyServer) -> None:
    reply(server, "a.test", ENFORCE)
    reply(server, "r.test", "", status=301, headers={
        "Location": f"https://mta-sts.a.test:{server.port}/.well-known/mta-sts.txt"})
    assert fetch("r.test", PolicyCache()) is None
    assert server.requests["mta-sts.r.test"] == 1
    assert server.requests["mta-sts.a.test"] == 0  # RFC 8461 3.3: 3xx not followed


def test_content_type_and_status(fetch: Fetch, server: PolicyServer) -> None:
    reply(server, "ct.test", ENFORCE.replace("a.test", "ct.test"), content_type="text/html")
    assert fetch("ct.test", PolicyCache()) is None
    reply(server, "ct.test", ENFORCE.replace("a.test", "ct.test"), content_type="TEXT/PLAIN")
    assert fetch("ct.test", PolicyCache()) is not None
    assert fetch("gone.test", PolicyCache()) is None  # 404
    assert server.requests["mta-sts.gone.test"] == 1


def test_no_record_or_several(fetch: Fetch, server: PolicyServer) -> None:
    for domain in ("none.test", "two.test", "noaddr.test"):
        reply(server, domain, ENFORCE)
    assert fetch("none.test", PolicyCache()) is None
    assert fetch("two.test", PolicyCache()) is None  # RFC 8461 3.1: not exactly one record
    assert fetch("noaddr.test", PolicyCache()) is None  # policy host has no address
    assert server.requests["mta-sts.none.test"] == 0
    assert server.requests["mta-sts.two.test"] == 0
    reply(server, "mixed.test", ENFORCE)
    mixed = fetch("mixed.test", PolicyCache())  # non-STS TXT records beside it are ignored
    assert mixed is not None and mixed.id == "7"


def test_record_withdrawn_cached_policy_still_applies(fetch: Fetch, server: PolicyServer) -> None:
    cache = PolicyCache()
    cached = Policy(domain="none.test", id="5", mode=Mode.ENFORCE, mx=("mx.none.test",),
                    max_age=3600, fetched_at=time.time())
    cache.put(cached)
    assert fetch("none.test", cache) == cached  # RFC 8461 5.1


def test_timeout(fetch: Fetch) -> None:
    with socket.socket() as silent:  # accepts TCP, never speaks TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.monotonic()
        policy = fetch("a.test", PolicyCache(), https_port=silent.getsockname()[1],
                       timeout=1.0)
        assert policy is None and time.monotonic() - start < 4


def test_refuses_unverifying_context(fetch: Fetch) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    with pytest.raises(ValueError):
        fetch("a.test", PolicyCache(), ssl_context=context)


def test_cache_persisted(tmp_path: Path) -> None:
    cache = PolicyCache(tmp_path)
    policy = Policy(domain="a.test", id="9", mode=Mode.TESTING, mx=("*.a.test",),
                    max_age=600, fetched_at=time.time())
    cache.put(policy)
    assert PolicyCache(tmp_path).get("a.test") == policy
    (tmp_path / "mta-sts-policies.json").write_text("{not json")
    assert PolicyCache(tmp_path).get("a.test") is None  # damaged file: start empty


def parse(body: str) -> Policy:
    return parse_policy(body, domain="x.test", policy_id="1", fetched_at=0.0)


def test_parse_policy_rules() -> None:
    p = parse("version: STSv1\nmode: testing\nmode: enforce\nmx:mx.x.test  \n"
              "max_age: 9999999999\nfuture_field: anything at all\n\n")
    assert p.mode is Mode.TESTING  # RFC 8461 3.2: first instance counts
    assert p.mx == ("mx.x.test",) and p.max_age == MAX_AGE_LIMIT
    for bad in (
        "mode: enforce\nmx: m.x.test\nmax_age: 1",  # no version
        "version: STSv2\nmode: enforce\nmx: m.x.test\nmax_age: 1",
        "version: STSv1\nmode: strict\nmx: m.x.test\nmax_age: 1",
        "version: STSv1\nmode: enforce\nmax_age: 1",  # mx required unless mode none
        "version: STSv1\nmode: enforce\nmx: *.*.x.test\nmax_age: 1",
        "version: STSv1\nmode: enforce\nmx: m..x.test\nmax_age: 1",
        "version: STSv1\nmode: enforce\nmx: m.x.test\nmax_age: -1",
        "version: STSv1\nmode: enforce\nmx: m.x.test\nmax_age: 12345678901",
        "version: STSv1\nmode enforce\nmx: m.x.test\nmax_age: 1",
    ):
        with pytest.raises(PolicyError):
            parse(bad)


def test_parse_record_rules() -> None:
    assert parse_record("v=STSv1; id=20160831085700Z;") == "20160831085700Z"
    assert parse_record("v=STSv1 ;id=abc; ext=val") == "abc"
    for bad in ("v=STSv1; id=" + "a" * 33, "v=STSv1; ext=1", "v=STSv1; id=a-b",
                "v=STSv1", "v=STSv2; id=1", "v=STSv1; id=1; =x"):
        with pytest.raises(PolicyError):
            parse_record(bad)
