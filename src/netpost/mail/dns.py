"""DNS for outbound mail: MX, address and TXT lookups with the errors a relay acts on.

A thin layer over dnspython's stub resolver. It asks a configured recursive resolver (or, in
tests, an authoritative server directly) and turns its answers into what RFC 5321 section 5.1
needs: an ordered list of MX hosts, or a reason the domain cannot receive mail, told apart as
temporary (defer and retry) or permanent (bounce now).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset

_R = TypeVar("_R", bound=dns.resolver.BaseResolver)

DEFAULT_TIMEOUT = 10.0  # seconds for one lookup, all nameservers and retries included


class DNSTempError(Exception):
    """The answer could not be had now (SERVFAIL, REFUSED, timeout): try again later."""


class PermanentDNSError(Exception):
    """The DNS says, authoritatively, that mail cannot go there."""


class NullMX(PermanentDNSError):
    """RFC 7505: the domain publishes a null MX, it accepts no mail."""


@dataclass(frozen=True)
class MXHost:
    preference: int
    host: str  # lower case, no trailing dot


def parse_nameserver(spec: str) -> tuple[str, int]:
    """ "192.0.2.1", "192.0.2.1:5353", "2001:db8::1" or "[2001:db8::1]:5353" → (ip, port)."""
    spec = spec.strip()
    port = 53
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad nameserver {spec!r}")
        if rest:
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, _, port_text = spec.partition(":")
        port = int(port_text)
    else:
        host = spec
    ipaddress.ip_address(host)  # raises ValueError for anything but an IP address
    if not 0 < port < 65536:
        raise ValueError(f"bad nameserver port in {spec!r}")
    return host, port


def _host_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


class Resolver:
    """Lookups for the relay. `nameservers` are "ip" or "ip:port" strings; without them the
    system's /etc/resolv.conf is read. A cache honours the records' TTLs."""

    def __init__(self, nameservers: Sequence[str] | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, cache: bool = True) -> None:
        self.timeout = timeout
        self._servers = [parse_nameserver(s) for s in nameservers] if nameservers else None
        self._cache = dns.resolver.LRUCache() if cache else None
        self._async = self._configure(dns.asyncresolver.Resolver(configure=self._servers is None))

    def _configure(self, resolver: _R) -> _R:
        if self._servers is not None:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port)
                                    for ip, port in self._servers]
        resolver.lifetime = self.timeout
        resolver.timeout = min(self.timeout, 2.0)  # per try; lifetime bounds the whole lookup
        resolver.cache = self._cache
        return resolver

    def sync_resolver(self) -> dns.resolver.Resolver:
        """A blocking dnspython resolver with the same nameservers, timeout and cache (for
        libraries such as the SPF and DKIM checkers that want one)."""
        return self._configure(dns.resolver.Resolver(configure=self._servers is None))

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.rrset.RRset | None:
        """The answer's RRset; None for "no such data" (NoAnswer). Raises
        PermanentDNSError for NXDOMAIN, DNSTempError for everything that may pass."""
        try:
            answer = await self._async.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as exc:
            raise PermanentDNSError(f"{name}: domain does not exist") from exc
        except dns.resolver.NoAnswer:
            return None
        except dns.resolver.NoNameservers as exc:  # SERVFAIL or REFUSED from every server
            raise DNSTempError(f"{name}/{dns.rdatatype.to_text(rdtype)}: {exc}") from exc
        except dns.exception.Timeout as exc:
            raise DNSTempError(f"{name}/{dns.rdatatype.to_text(rdtype)}: timed out") from exc
        except dns.name.NameTooLong as exc:
            raise PermanentDNSError(f"{name}: name too long") from exc
        except (dns.exception.DNSException, OSError) as exc:
            # YXDOMAIN, malformed answers, unreachable resolver: nothing that proves the
            # domain cannot receive mail, so the caller retries.
            raise DNSTempError(f"{name}/{dns.rdatatype.to_text(rdtype)}: {exc!r}") from exc
        return answer.rrset

    async def mx(self, domain: str) -> list[MXHost]:
        """The hosts to try for `domain`, best first (RFC 5321 5.1)."""
        try:
            rrset = await self._query(domain, dns.rdatatype.MX)
        except PermanentDNSError as exc:
            raise PermanentDNSError(f"{domain}: domain does not exist") from exc
        if rrset is None:
            # RFC 5321 5.1: no MX records → the domain itself is the implicit MX, preference 0;
            # the caller resolves its A/AAAA records (and fails if there are none).
            return [MXHost(0, domain.lower().rstrip("."))]
        records = [(rr.preference, rr.exchange) for rr in rrset]
        if len(records) == 1 and records[0][1] == dns.name.root:
            # RFC 7505 3: a single MX whose exchange is "." (preference 0 by convention)
            # declares that the domain accepts no mail; RFC 7505 4.1: fail without retrying.
            raise NullMX(f"{domain}: domain accepts no mail (null MX)")
        # RFC 7505 3 forbids a null MX beside other MX records; a "." among them is an
        # unusable host, so it is left out and the others are tried.
        hosts = [(pref, _host_text(name)) for pref, name in records if name != dns.name.root]
        best: dict[str, int] = {}
        for pref, host in hosts:
            best[host] = min(pref, best.get(host, pref))
        # RFC 5321 5.1: lowest preference first; among equal preferences pick at random.
        ordered = list(best.items())
        random.shuffle(ordered)
        ordered.sort(key=lambda item: item[1])  # stable: the shuffle survives within a level
        return [MXHost(pref, host) for host, pref in ordered]

    async def addresses(self, host: str) -> list[str]:
        """A then AAAA addresses of `host`; [] when it has none or does not exist. Raises
        DNSTempError only when neither lookup could give an answer."""
        results = await asyncio.gather(self._addresses(host, dns.rdatatype.A),
                                       self._addresses(host, dns.rdatatype.AAAA),
                                       return_exceptions=True)
        found: list[str] = []
        temp: DNSTempError | None = None
        for result in results:
            if isinstance(result, DNSTempError):
                temp = result
            elif isinstance(result, BaseException):
                raise result
            else:
                found.extend(result)
        if not found and temp is not None:
            raise temp
        return found

    async def _addresses(self, host: str, rdtype: dns.rdatatype.RdataType) -> list[str]:
        try:
            rrset = await self._query(host, rdtype)
        except PermanentDNSError:
            return []
        return [rr.address for rr in rrset] if rrset is not None else []

    async def txt(self, name: str) -> list[str]:
        """The TXT records at `name`, each record's strings joined without spaces (as SPF,
        DKIM, DMARC and MTA-STS all read them); [] for no such name or no TXT."""
        try:
            rrset = await self._query(name, dns.rdatatype.TXT)
        except PermanentDNSError:
            return []
        if rrset is None:
            return []
        return [b"".join(rr.strings).decode("utf-8", "replace") for rr in rrset]
