"""netpost.mail.dns against a real authoritative server (Knot, tests/support/dns.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import dns.message
import dns.rcode
import pytest

from netpost.mail.dns import (
    DNSTempError,
    MXHost,
    NullMX,
    PermanentDNSError,
    Resolver,
    parse_nameserver,
)
from tests.support.dns import (
    DNSServer,
    a,
    aaaa,
    cname,
    dns_server_fixture,
    mx,
    null_mx,
    txt,
)

DKIM_KEY = "v=DKIM1; k=rsa; p=" + "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" * 12
ZONES = {
    "a.test": [
        mx("@", 20, "mx2.a.test"), mx("@", 10, "mx1.a.test"), mx("@", 10, "MX1b.a.test"),
        a("mx1", "127.0.0.2"), a("mx1b", "127.0.0.3"), a("mx2", "127.0.0.4"),
        aaaa("mx1", "::1"),
        cname("alias", "mx2.a.test"),
        txt("@", "v=spf1 ip4:127.0.0.0/8 -all"), txt("@", "second record"),
        txt("sel._domainkey", DKIM_KEY),
        txt("quoted", 'with "quotes" and \\ backslash'),
    ],
    "b.test": [a("@", "127.0.0.5")],  # no MX: implicit MX
    "nomail.test": [null_mx(), a("@", "127.0.0.6")],
    "odd.test": [mx("@", 0, "."), mx("@", 5, "mx.odd.test")],
}

ns = dns_server_fixture(ZONES)
T = TypeVar("T")


def resolve(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def resolver(ns: DNSServer) -> Resolver:
    return Resolver([ns.address], timeout=3)


def test_mx_sorted_by_preference(resolver: Resolver) -> None:
    hosts = resolve(resolver.mx("a.test"))
    assert [h.preference for h in hosts] == [10, 10, 20]
    assert {h.host for h in hosts[:2]} == {"mx1.a.test", "mx1b.a.test"}  # lower-cased
    assert hosts[2] == MXHost(20, "mx2.a.test")


def test_mx_equal_preferences_shuffled(resolver: Resolver) -> None:
    async def firsts() -> set[str]:
        return {(await resolver.mx("a.test"))[0].host for _ in range(40)}
    # RFC 5321 5.1: both preference-10 hosts come first sometimes (chance of failure 2^-39).
    assert resolve(firsts()) == {"mx1.a.test", "mx1b.a.test"}


def test_implicit_mx(resolver: Resolver) -> None:
    assert resolve(resolver.mx("b.test")) == [MXHost(0, "b.test")]
    assert resolve(resolver.mx("B.Test.")) == [MXHost(0, "b.test")]


def test_nxdomain_is_permanent(resolver: Resolver) -> None:
    with pytest.raises(PermanentDNSError, match="does not exist") as info:
        resolve(resolver.mx("nowhere.a.test"))
    assert not isinstance(info.value, NullMX)
    with pytest.raises(PermanentDNSError, match="does not exist"):
        resolve(resolver.mx("nowhere.example"))  # outside every zone: the root says NXDOMAIN


def test_null_mx(resolver: Resolver) -> None:
    with pytest.raises(NullMX):
        resolve(resolver.mx("nomail.test"))


def test_dot_beside_other_mx_is_skipped(resolver: Resolver) -> None:
    assert resolve(resolver.mx("odd.test")) == [MXHost(5, "mx.odd.test")]


def test_addresses(resolver: Resolver) -> None:
    assert resolve(resolver.addresses("mx1.a.test")) == ["127.0.0.2", "::1"]
    assert resolve(resolver.addresses("mx2.a.test")) == ["127.0.0.4"]
    assert resolve(resolver.addresses("alias.a.test")) == ["127.0.0.4"]  # CNAME followed
    assert resolve(resolver.addresses("nowhere.a.test")) == []
    assert resolve(resolver.addresses("a.test")) == []  # exists, no address records


def test_txt(resolver: Resolver) -> None:
    assert sorted(resolve(resolver.txt("a.test"))) == ["second record",
                                                        "v=spf1 ip4:127.0.0.0/8 -all"]
    # A key longer than 255 bytes is served as several strings and read back joined.
    assert len(DKIM_KEY) > 255
    assert resolve(resolver.txt("sel._domainkey.a.test")) == [DKIM_KEY]
    assert resolve(resolver.txt("quoted.a.test")) == ['with "quotes" and \\ backslash']
    assert resolve(resolver.txt("nowhere.a.test")) == []
    assert resolve(resolver.txt("b.test")) == []


def test_sync_resolver_same_servers(ns: DNSServer, resolver: Resolver) -> None:
    sync = resolver.sync_resolver()
    answer = sync.resolve("sel._domainkey.a.test", "TXT")
    assert b"".join(answer[0].strings).decode() == DKIM_KEY
    assert sync.lifetime == 3


def test_update_changes_answers(ns: DNSServer, resolver: Resolver) -> None:
    try:
        ns.update({**ZONES, "b.test": [mx("@", 5, "mx.c.test")],
                   "c.test": [a("mx", "127.0.0.9")]})
        assert resolve(resolver.mx("b.test")) == [MXHost(5, "mx.c.test")]
        assert resolve(resolver.addresses("mx.c.test")) == ["127.0.0.9"]
    finally:
        ns.update(ZONES)
    assert resolve(resolver.mx("b.test")) == [MXHost(0, "b.test")]
    with pytest.raises(PermanentDNSError):
        resolve(resolver.mx("c.test"))


@pytest.fixture
def servfail_server() -> Iterator[str]:
    """A UDP socket that answers every query with SERVFAIL (a broken upstream)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            reply = dns.message.make_response(dns.message.from_wire(data))
            reply.set_rcode(dns.rcode.SERVFAIL)
            sock.sendto(reply.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join()
    sock.close()


def test_servfail_is_temporary(servfail_server: str) -> None:
    resolver = Resolver([servfail_server], timeout=2)
    with pytest.raises(DNSTempError):
        resolve(resolver.mx("a.test"))
    with pytest.raises(DNSTempError):
        resolve(resolver.addresses("mx1.a.test"))
    with pytest.raises(DNSTempError):
        resolve(resolver.txt("a.test"))


def test_timeout_is_temporary() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers
        resolver = Resolver([f"127.0.0.1:{silent.getsockname()[1]}"], timeout=0.5)
        with pytest.raises(DNSTempError):
            resolve(resolver.mx("a.test"))


def test_parse_nameserver() -> None:
    assert parse_nameserver("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("2001:db8::1") == ("2001:db8::1", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    for bad in ("ns.example", "127.0.0.1:0", "[::1", "127.0.0.1:x"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


def test_system_resolver_configuration() -> None:
    # Without nameservers the system's resolv.conf is read (the file exists on Debian).
    resolver = Resolver(timeout=1)
    assert resolver.sync_resolver().nameservers
