"""Inbound DKIM/SPF/DMARC and the Authentication-Results field, against DNS data served by a
real (small, dnspython-built) authoritative server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.resolver
import dns.rrset
import pytest

from netpost.mail import authcheck, dkim

HOST = "mx.ours.test"


class ZoneServer:
    """An authoritative DNS server on 127.0.0.1 (UDP) answering from a dict of records:
    NXDOMAIN for names it has nothing at or under, NOERROR/no data for other types, SERVFAIL
    for names in `servfail`.  Wire format is dnspython's."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.servfail: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def add(self, name: str, rdtype: str, *values: str) -> None:
        self.records.setdefault((name.lower(), rdtype), []).extend(values)

    def txt(self, name: str, text: str) -> None:
        """A TXT record; long texts are split into 255-octet strings (RFC 1035 3.3.14)."""
        chunks = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
        self.add(name, "TXT", " ".join(f'"{c}"' for c in chunks))

    def _answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, rdtype) in self.records:
            response.answer.append(dns.rrset.from_text_list(
                question.name, 300, "IN", rdtype, self.records[(name, rdtype)]))
        elif not any(n == name or n.endswith("." + name) for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.sock.sendto(self._answer(wire), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class LoopbackResolver:
    """netpost's resolver role (authcheck.AuthResolver), aimed at the test server only."""

    def __init__(self, port: int) -> None:
        self.port = port

    def sync_resolver(self) -> dns.resolver.Resolver:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.port
        r.timeout = 1.0
        r.lifetime = 2.0
        return r


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("keys")
    dkim.create_key(data, "example.test")
    dkim.create_key(data, "other.test")
    return data


@pytest.fixture
def zone(keys: Path) -> Iterator[ZoneServer]:
    server = ZoneServer()
    for domain in ("example.test", "other.test"):
        name, value = dkim.dkim_record(keys, domain)
        server.txt(name, value)
    try:
        yield server
    finally:
        server.close()


def message(from_: str = "Alice <alice@example.test>", body: bytes = b"Hello.\r\n") -> bytes:
    return (f"From: {from_}\r\nTo: bob@ours.test\r\nSubject: hi\r\n"
            "Date: Mon, 02 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n"
            "\r\n").encode() + body


def signed(keys: Path, domain: str = "example.test", **kw: str) -> bytes:
    m = message(**kw)
    return dkim.sign(m, domain, keys) + m


def run_check(zone: ZoneServer, msg: bytes, *, ip: str = "203.0.113.9",
              mail_from: str = "alice@example.test",
              helo: str | None = "client.example.test") -> authcheck.AuthVerdict:
    return asyncio.run(authcheck.check(msg, client_ip=ip, helo=helo, mail_from=mail_from,
                                       resolver=LoopbackResolver(zone.port), hostname=HOST))


def spf(zone: ZoneServer, ip: str, mail_from: str = "alice@example.test",
        helo: str | None = "client.example.test") -> authcheck.SPFResult:
    return authcheck.check_spf(ip, mail_from, helo, HOST,
                               LoopbackResolver(zone.port).sync_resolver())


# --- DKIM --------------------------------------------------------------------------------------


def test_dkim_pass(zone: ZoneServer, keys: Path) -> None:
    v = run_check(zone, signed(keys))
    assert [d.result for d in v.dkim] == ["pass"]
    d = v.dkim[0]
    assert d.domain == "example.test" and d.identity == "@example.test"
    assert d.selector == dkim.current_key(keys, "example.test").selector  # type: ignore[union-attr]
    assert b"dkim=pass header.d=example.test header.i=@example.test" in v.header


def test_dkim_body_tampered_fails(zone: ZoneServer, keys: Path) -> None:
    v = run_check(zone, signed(keys).replace(b"Hello.", b"Hello!"))
    assert [(d.result, d.reason) for d in v.dkim] == [("fail", "body hash mismatch")]
    assert b"dkim=fail (body hash mismatch) header.d=example.test" in v.header


def test_dkim_header_tampered_fails(zone: ZoneServer, keys: Path) -> None:
    v = run_check(zone, signed(keys).replace(b"Subject: hi", b"Subject: urgent"))
    assert [(d.result, d.reason) for d in v.dkim] == [("fail", "signature did not verify")]


def test_dkim_no_key_record_is_permerror(zone: ZoneServer, keys: Path) -> None:
    zone.records.clear()  # RFC 6376 6.1.2: no key for the signature
    v = run_check(zone, signed(keys))
    assert [(d.result, d.reason) for d in v.dkim] == [("permerror", "no key")]


def test_dkim_bad_key_record_is_permerror(zone: ZoneServer, keys: Path) -> None:
    zone.records.clear()
    name, _ = dkim.dkim_record(keys, "example.test")
    zone.txt(name, "v=DKIM1; k=rsa; p=bm90IGEga2V5")
    v = run_check(zone, signed(keys))
    assert [d.result for d in v.dkim] == ["permerror"]
    assert v.dkim[0].reason.startswith("bad key")


def test_dkim_key_lookup_temperror(zone: ZoneServer, keys: Path) -> None:
    name, _ = dkim.dkim_record(keys, "example.test")
    zone.servfail.add(name)
    v = run_check(zone, signed(keys))
    assert [d.result for d in v.dkim] == ["temperror"]


def test_dkim_unsigned_is_none(zone: ZoneServer) -> None:
    v = run_check(zone, message())
    assert v.dkim == () and b"dkim=none" in v.header


def test_dkim_broken_signature_is_neutral(zone: ZoneServer) -> None:
    v = run_check(zone, b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test\r\n" + message())
    assert [d.result for d in v.dkim] == ["neutral"]  # RFC 8601 2.7.1: syntax errors


def test_dkim_signature_count_is_bounded(zone: ZoneServer, keys: Path) -> None:
    one = dkim.sign(message(), "example.test", keys)
    v = run_check(zone, one * 50 + message())
    assert len(v.dkim) == authcheck.MAX_DKIM_SIGNATURES
    assert sum(1 for q in zone.queries if "_domainkey" in q[0]) <= \
        authcheck.MAX_DKIM_SIGNATURES


def test_two_signatures_each_reported(zone: ZoneServer, keys: Path) -> None:
    m = message()
    both = dkim.sign(dkim.sign(m, "example.test", keys) + m, "other.test", keys) + \
        dkim.sign(m, "example.test", keys) + m
    v = run_check(zone, both)
    assert sorted((d.domain, d.result) for d in v.dkim) == [("example.test", "pass"),
                                                             ("other.test", "pass")]
    assert v.header.count(b"dkim=pass") == 2


# --- SPF ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("record,ip,result", [
    ("v=spf1 ip4:192.0.2.0/24 -all", "192.0.2.77", "pass"),
    ("v=spf1 ip4:192.0.2.0/24 -all", "198.51.100.1", "fail"),
    ("v=spf1 ip4:192.0.2.0/24 ~all", "198.51.100.1", "softfail"),
    ("v=spf1 ip4:192.0.2.0/24 ?all", "198.51.100.1", "neutral"),
    ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8::25", "pass"),
    ("v=spf1 ip6:2001:db8::/32 -all", "2001:db9::25", "fail"),
    ("v=spf1 a:smtp.example.test -all", "192.0.2.10", "pass"),
    ("v=spf1 a:smtp.example.test -all", "192.0.2.11", "fail"),
    ("v=spf1 a -all", "192.0.2.20", "pass"),
    ("v=spf1 mx -all", "192.0.2.30", "pass"),
    ("v=spf1 mx -all", "2001:db8::30", "pass"),
    ("v=spf1 mx -all", "192.0.2.31", "fail"),
    ("v=spf1 include:other.test -all", "198.51.100.7", "pass"),
    ("v=spf1 include:other.test -all", "198.51.100.8", "fail"),
    ("v=spf1 redirect=other.test", "198.51.100.7", "pass"),
    ("v=spf1 redirect=other.test", "198.51.100.8", "softfail"),  # other.test's ~all
    ("v=spf1 include:nothing.test -all", "192.0.2.1", "permerror"),  # RFC 7208 5.2
    ("v=spf1 ip4:192.0.2.0/99 -all", "192.0.2.1", "permerror"),
    ("v=spf1 bogus:x -all", "192.0.2.1", "permerror"),
])
def test_spf(zone: ZoneServer, record: str, ip: str, result: str) -> None:
    zone.txt("example.test", record)
    zone.add("smtp.example.test", "A", "192.0.2.10")
    zone.add("example.test", "A", "192.0.2.20")
    zone.add("example.test", "MX", "10 mx1.example.test.")
    zone.add("mx1.example.test", "A", "192.0.2.30")
    zone.add("mx1.example.test", "AAAA", "2001:db8::30")
    zone.txt("other.test", "v=spf1 ip4:198.51.100.7 ~all")
    r = spf(zone, ip)
    assert (r.result, r.identity, r.domain) == (result, "mailfrom", "example.test"), r.reason


def test_spf_none_without_record(zone: ZoneServer) -> None:
    assert spf(zone, "192.0.2.1").result == "none"
    zone.txt("example.test", "some other text")  # not an SPF record
    assert spf(zone, "192.0.2.1").result == "none"


def test_spf_two_records_is_permerror(zone: ZoneServer) -> None:
    zone.txt("example.test", "v=spf1 -all")
    zone.txt("example.test", "v=spf1 +all")
    assert spf(zone, "192.0.2.1").result == "permerror"  # RFC 7208 4.5


def test_spf_temperror(zone: ZoneServer) -> None:
    zone.servfail.add("example.test")
    assert spf(zone, "192.0.2.1").result == "temperror"


def test_spf_lookup_limit(zone: ZoneServer) -> None:
    """RFC 7208 4.6.4: more than 10 mechanisms that query DNS is a permerror."""
    zone.txt("example.test", "v=spf1 " + " ".join(f"a:h{i}.example.test" for i in range(11))
             + " -all")
    for i in range(11):
        zone.add(f"h{i}.example.test", "A", f"192.0.2.{100 + i}")
    assert spf(zone, "192.0.2.200").result == "permerror"


def test_spf_helo_identity_for_null_sender(zone: ZoneServer) -> None:
    zone.txt("client.example.test", "v=spf1 ip4:192.0.2.5 -all")
    r = spf(zone, "192.0.2.5", mail_from="", helo="client.example.test")
    assert (r.result, r.identity, r.domain) == ("pass", "helo", "client.example.test")
    v = run_check(zone, message(), ip="192.0.2.5", mail_from="")
    assert b"spf=pass" in v.header and b"smtp.helo=client.example.test" in v.header


def test_spf_in_header(zone: ZoneServer) -> None:
    zone.txt("example.test", "v=spf1 ip4:192.0.2.0/24 -all")
    v = run_check(zone, message(), ip="192.0.2.1")
    assert v.spf.result == "pass"
    assert b"smtp.mailfrom=alice@example.test" in v.header


# --- DMARC -------------------------------------------------------------------------------------


def test_dmarc_pass_by_dkim(zone: ZoneServer, keys: Path) -> None:
    zone.txt("_dmarc.example.test", "v=DMARC1; p=reject")
    v = run_check(zone, signed(keys), mail_from="bounce@elsewhere.test")
    assert (v.dmarc, v.policy, v.disposition) == ("pass", "reject", "none")
    assert b"dmarc=pass (p=reject dis=none) header.from=example.test" in v.header


def test_dmarc_pass_by_spf(zone: ZoneServer) -> None:
    zone.txt("_dmarc.example.test", "v=DMARC1; p=reject")
    zone.txt("bounces.example.test", "v=spf1 ip4:192.0.2.0/24 -all")
    v = run_check(zone, message(), ip="192.0.2.9", mail_from="x@bounces.example.test")
    assert (v.dmarc, v.spf.result) == ("pass", "pass")  # relaxed alignment (RFC 7489 3.1.2)
    zone.records.pop(("_dmarc.example.test", "TXT"))
    zone.txt("_dmarc.example.test", "v=DMARC1; p=reject; aspf=s")
    v = run_check(zone, message(), ip="192.0.2.9", mail_from="x@bounces.example.test")
    assert (v.dmarc, v.policy, v.disposition) == ("fail", "reject", "reject")


def test_dmarc_spf_pass_of_other_domain_is_not_aligned(zone: ZoneServer) -> None:
    zone.txt("_dmarc.example.test", "v=DMARC1; p=reject")
    zone.txt("evil.test", "v=spf1 ip4:192.0.2.0/24 -all")
    v = run_check(zone, message(), ip="192.0.2.9", mail_from="x@evil.test")
    assert (v.spf.result, v.dmarc, v.disposition) == ("pass", "fail", "reject")
    assert b"dmarc=fail (p=reject dis=reject) header.from=example.test" in v.header


def test_dmarc_dkim_of_other_domain_is_not_aligned(zone: ZoneServer, keys: Path) -> None:
    zone.txt("_dmarc.example.test", "v=DMARC1; p=quarantine")
    m = message()
    v = run_check(zone, dkim.sign(m, "other.test", keys) + m)
    assert [d.result for d in v.dkim] == ["pass"]
    assert (v.dmarc, v.policy, v.disposition) == ("fail", "quarantine", "quarantine")


def test_dmarc_dkim_strict_and_relaxed(zone: ZoneServer, keys: Path) -> None:
    zone.txt("_dmarc.example.test", "v=DMARC1; p=reject")
    news = signed(keys, from_="news@news.example.test")  # d=example.test
    assert run_check(zone, news).dmarc == "pass"  # relaxed: same Organizational Domain
    zone.records.pop(("_dmarc.example.test", "TXT"))
    zone.txt("_dmarc.example.test", "v=DMARC1; p=reject; adkim=s")
    v = run_check(zone, news)
    assert (v.dmarc, v.disposition) == ("fail", "reject")


def test_dmarc_subdomain_policy(zone: ZoneServer) -> None:
    zone.txt("_dmarc.example.test", "v=DMARC1; p=reject; sp=quarantine")
    v = run_check(zone, message(from_="a@sub.example.test"), mail_from="x@evil.test")
    assert (v.dmarc, v.policy) == ("fail", "quarantine")  # found at the org domain: sp=
    v = run_check(zone, message(), mail_from="x@evil.test")
    assert (v.dmarc, v.policy) == ("fail", "reject")  # the domain itself: p=
    zone.txt("_dmarc.sub.example.test", "v=DMARC1; p=none")
    v = run_check(zone, message(from_="a@sub.example.test"), mail_from="x@evil.test")
    assert (v.dmarc, v.policy, v.disposition) == ("fail", "none", "none")  # its own record


def test_dmarc_subdomain_without_sp_uses_p(zone: ZoneServer) -> None:
    zone.txt("_dmarc.example.test", "v=DMARC1; p=reject")
    v = run_check(zone, message(from_="a@deep.sub.example.test"), mail_from="x@evil.test")
    assert (v.dmarc, v.policy) == ("fail", "reject")
    assert ("_dmarc.deep.sub.example.test", "TXT") in zone.queries
    assert ("_dmarc.sub.example.test", "TXT") not in zone.queries  # RFC 7489 6.6.3


def test_dmarc_no_record_is_none(zone: ZoneServer) -> None:
    v = run_check(zone, message(), mail_from="x@evil.test")
    assert (v.dmarc, v.policy, v.disposition) == ("none", None, "none")
    assert b"dmarc=none header.from=example.test" in v.header


def test_dmarc_unusable_records(zone: ZoneServer) -> None:
    zone.txt("_dmarc.example.test", "v=DMARC1; p=reject")
    zone.txt("_dmarc.example.test", "v=DMARC1; p=none")
    assert run_check(zone, message(), mail_from="x@evil.test").dmarc == "none"  # two records
    zone.records.clear()
    zone.txt("_dmarc.example.test", "p=reject; v=DMARC1")  # v= must come first
    assert run_check(zone, message(), mail_from="x@evil.test").dmarc == "none"
    zone.records.clear()
    zone.txt("_dmarc.example.test", "v=DMARC1; p=bogus; rua=mailto:d@example.test")
    v = run_check(zone, message(), mail_from="x@evil.test")
    assert (v.dmarc, v.policy) == ("fail", "none")  # RFC 7489 6.6.3 step 6


def test_dmarc_pct(zone: ZoneServer) -> None:
    zone.txt("_dmarc.example.test", "v=DMARC1; p=reject; pct=0")
    v = run_check(zone, message(), mail_from="x@evil.test")
    assert (v.dmarc, v.policy) == ("fail", "quarantine")  # outside the sample: one step less
    record = authcheck.parse_dmarc("v=DMARC1; p=quarantine; pct=50", "example.test")
    lookup = authcheck.DMARCLookup(record)
    none = authcheck.SPFResult("none", "mailfrom", "evil.test", "x@evil.test")
    assert authcheck.evaluate_dmarc("example.test", lookup, [], none,
                                    sample=lambda: 0.49).policy == "quarantine"
    assert authcheck.evaluate_dmarc("example.test", lookup, [], none,
                                    sample=lambda: 0.5).policy == "none"


def test_dmarc_temperror(zone: ZoneServer) -> None:
    zone.servfail.add("_dmarc.example.test")
    v = run_check(zone, message(), mail_from="x@evil.test")
    assert (v.dmarc, v.policy, v.disposition) == ("temperror", None, "none")
    assert b"dmarc=temperror" in v.header


def test_dmarc_temperror_when_spf_could_not_answer(zone: ZoneServer) -> None:
    zone.txt("_dmarc.example.test", "v=DMARC1; p=reject")
    zone.servfail.add("example.test")
    v = run_check(zone, message())
    assert (v.spf.result, v.dmarc, v.disposition) == ("temperror", "temperror", "none")


def test_dmarc_several_authors_strictest_wins(zone: ZoneServer, keys: Path) -> None:
    zone.txt("_dmarc.example.test", "v=DMARC1; p=none")
    zone.txt("_dmarc.other.test", "v=DMARC1; p=reject")
    m = signed(keys, from_="a@example.test, b@other.test")  # d=example.test only
    v = run_check(zone, m, mail_from="x@evil.test")
    assert [(r.from_domain, r.result) for r in v.dmarc_results] == [
        ("example.test", "pass"), ("other.test", "fail")]
    assert (v.dmarc, v.disposition) == ("fail", "reject")


def test_dmarc_without_from_is_permerror(zone: ZoneServer) -> None:
    v = run_check(zone, b"To: bob@ours.test\r\nSubject: x\r\n\r\nbody\r\n")
    assert (v.dmarc, v.policy) == ("permerror", None)


def test_org_domain() -> None:
    assert authcheck.org_domain("a.b.example.co.uk") == "example.co.uk"
    assert authcheck.org_domain("mail.example.test") == "example.test"
    assert authcheck.org_domain("co.uk") == "co.uk"


# --- the field ---------------------------------------------------------------------------------


def test_header_is_one_well_formed_field(zone: ZoneServer, keys: Path) -> None:
    zone.txt("_dmarc.example.test", "v=DMARC1; p=reject")
    v = run_check(zone, signed(keys), mail_from='"we ird;\r\nX-Evil: 1"@example.test')
    assert v.header.startswith(b"Authentication-Results: mx.ours.test;\r\n\t")
    assert v.header.endswith(b"\r\n")
    parsed = email.message_from_bytes(v.header + b"\r\n", policy=email.policy.compat32)
    assert list(parsed.keys()) == ["Authentication-Results"]  # nothing injected
    value = parsed["Authentication-Results"]
    resinfos = [r.strip() for r in value.split(";")[1:]]
    assert [r.split("=")[0] for r in resinfos[:1]] == ["dkim"]
    assert any(r.startswith("dmarc=pass") for r in resinfos)


def test_strip_our_results() -> None:
    m = (b"Received: from x\r\n"
         b"Authentication-Results: MX.OURS.TEST; dkim=pass header.d=bank.test\r\n"
         b"Authentication-Results: (forged)\r\n mx.ours.test;\r\n\tspf=pass\r\n"
         b"Authentication-Results: mx.ours.test.evil; spf=pass\r\n"
         b"Authentication-Results: relay.other.test; spf=fail\r\n"
         b"Subject: s\r\n\r\n"
         b"Authentication-Results: mx.ours.test; in the body stays\r\n")
    out = authcheck.strip_our_results(m, "mx.ours.test")
    assert out == (b"Received: from x\r\n"
                   b"Authentication-Results: mx.ours.test.evil; spf=pass\r\n"
                   b"Authentication-Results: relay.other.test; spf=fail\r\n"
                   b"Subject: s\r\n\r\n"
                   b"Authentication-Results: mx.ours.test; in the body stays\r\n")
    assert authcheck.strip_our_results(message(), HOST) == message()


def test_check_then_strip_round_trip(zone: ZoneServer, keys: Path) -> None:
    """Our own field on a message that comes back (forwarded) is removed before we add ours;
    and prepending our field does not break the DKIM signature."""
    original = signed(keys)
    v = run_check(zone, original)
    stamped = v.header + original
    assert authcheck.strip_our_results(stamped, HOST) == original
    again = run_check(zone, stamped)
    assert [d.result for d in again.dkim] == ["pass"]


# --- end to end: Knot DNS and netpost's resolver -----------------------------------------------


def test_end_to_end_with_knot_and_netpost_resolver(keys: Path) -> None:
    """The same checks through netpost.mail.dns.Resolver against a real authoritative server
    (Knot, tests/support/dns.py): a signed message from an authorised address passes all
    three, a forged one from another sender fails DMARC with p=reject."""
    from netpost.mail.dns import Resolver
    from tests.support.dns import DNSServer, txt

    name, value = dkim.dkim_record(keys, "example.test")
    zones = {
        "example.test": [txt(name + ".", value), txt("@", "v=spf1 ip4:127.0.0.0/8 -all"),
                         txt("_dmarc", "v=DMARC1; p=reject; sp=quarantine")],
        "evil.test": [txt("@", "v=spf1 ip4:127.0.0.0/8 -all")],
    }
    with DNSServer(zones) as ns:
        resolver = Resolver([ns.address], timeout=3.0)

        def run(msg: bytes, mail_from: str) -> authcheck.AuthVerdict:
            return asyncio.run(authcheck.check(
                msg, client_ip="127.0.0.2", helo="client.example.test", mail_from=mail_from,
                resolver=resolver, hostname=HOST))

        good = run(signed(keys), "alice@example.test")
        assert ([d.result for d in good.dkim], good.spf.result, good.dmarc) == \
            (["pass"], "pass", "pass")
        assert b"dkim=pass header.d=example.test" in good.header
        assert b"spf=pass" in good.header and b"dmarc=pass" in good.header

        tampered = run(signed(keys).replace(b"Hello.", b"Hi."), "alice@example.test")
        assert ([d.result for d in tampered.dkim], tampered.dmarc) == (["fail"], "pass")

        forged = run(message(), "mallory@evil.test")
        assert (forged.spf.result, forged.dmarc, forged.disposition) == \
            ("pass", "fail", "reject")
        sub = run(message(from_="a@billing.example.test"), "mallory@evil.test")
        assert (sub.dmarc, sub.disposition) == ("fail", "quarantine")
