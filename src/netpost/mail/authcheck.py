"""Checks on inbound mail: DKIM (RFC 6376), SPF (RFC 7208), DMARC (RFC 7489), reported in an
Authentication-Results field (RFC 8601).

`check()` runs all three for one message and returns an `AuthVerdict`: the field to prepend,
the DMARC result and the policy the sender's domain asks for.  What to do with a failing
message (refuse, Junk, keep) is the caller's decision; this module only judges.

The cryptography and the SPF rules are dkimpy's and pyspf's.  DMARC is evaluated here rather
than through a wrapper of all three (authheaders): it is a policy record lookup and a comparison
of domains (RFC 7489 3.1, 6.6), and doing it here keeps every query on our resolver and the
mapping of DNS errors (temperror versus no record) in our hands.  The Organizational Domain
comes from the Public Suffix List snapshot bundled with `publicsuffixlist` (never fetched at
run time).

Every DNS query goes through the dnspython resolver the caller configures (its nameservers
and port, never /etc/resolv.conf unless the caller built it so): dkimpy takes a `dnsfunc`,
and pyspf's per-query `dns()` method is overridden, so no module-global state is touched and
two checks with different resolvers can run at once.  The lookups block, so they run in
worker threads (asyncio.to_thread).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import dkim
import dns.exception
import dns.resolver
import spf
from publicsuffixlist import PublicSuffixList

__all__ = [
    "MAX_DKIM_SIGNATURES",
    "AuthResolver",
    "AuthVerdict",
    "DKIMResult",
    "DMARCResult",
    "DMARCLookup",
    "DMARCRecord",
    "SPFResult",
    "check",
    "check_spf",
    "evaluate_dmarc",
    "lookup_dmarc",
    "org_domain",
    "parse_dmarc",
    "strip_our_results",
    "verify_dkim",
]

# RFC 6376 6.1: a verifier MAY limit the signatures it tries; the rest are not reported.
MAX_DKIM_SIGNATURES = 5
# A From field may hold many addresses; each domain costs up to two DNS queries.
MAX_AUTHOR_DOMAINS = 10
MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers MUST NOT consider shorter keys valid
SPF_QUERY_TIME = 20.0  # seconds for a whole SPF evaluation (RFC 7208 4.6.4: at least 20)
_MAX_HEADER = 256 * 1024  # header sections beyond this are not read further

_psl = PublicSuffixList()  # the bundled snapshot


class AuthResolver(Protocol):
    """What the checks need of netpost's resolver (netpost.mail.dns.Resolver has it): a
    synchronous dnspython resolver aimed at the configured nameservers."""

    def sync_resolver(self) -> dns.resolver.Resolver: ...


# --- DNS ---------------------------------------------------------------------------------------


class _TempFail(Exception):
    """A lookup could not be answered now (timeout, SERVFAIL, no nameserver)."""


def _lookup(resolver: dns.resolver.Resolver, name: str, rdtype: str) -> list[Any]:
    """The records of `rdtype` at `name`: [] when there are none (NXDOMAIN, no data, a name
    that is not a valid DNS name); _TempFail when the answer cannot be had now."""
    try:
        answer = resolver.resolve(name.rstrip(".") + ".", rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
        return []
    except dns.exception.SyntaxError:  # empty or overlong label: no such name
        return []
    except dns.exception.DNSException as exc:  # Timeout, NoNameservers (SERVFAIL/REFUSED)
        raise _TempFail(f"{rdtype} {name}: {exc.__class__.__name__}") from None
    return list(answer)


def _txt(resolver: dns.resolver.Resolver, name: str) -> list[bytes]:
    """Each TXT record at `name`, its strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
    return [b"".join(r.strings) for r in _lookup(resolver, name, "TXT")]


# --- header fields -----------------------------------------------------------------------------


def _header_fields(message: bytes) -> tuple[list[bytes], int]:
    """The raw header fields of `message` (each with its continuation lines and line ends)
    and the offset where the header section ends (the blank line, or the end of the data)."""
    end = re.search(rb"\r?\n\r?\n", message[:_MAX_HEADER])
    stop = end.start() + (2 if message[end.start()] == 0x0D else 1) if end else len(message)
    fields: list[bytes] = []
    for line in message[:stop].splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields, stop


def _field_name(raw: bytes) -> bytes:
    return raw.partition(b":")[0].strip().lower()


def _field_value(raw: bytes) -> str:
    value = raw.partition(b":")[2]
    return re.sub(r"\r?\n(?=[ \t])", "", value.decode("utf-8", "replace")).strip()


def _strip_comments(text: str) -> str:
    """`text` without RFC 5322 3.2.2 comments (nested, with quoted-pairs)."""
    out, depth, i = [], 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and depth:
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(c)
        i += 1
    return "".join(out)


def _authserv_id(value: str) -> str:
    """The authserv-id of an Authentication-Results value (RFC 8601 2.2), lower-cased."""
    text = _strip_comments(value).strip()
    return re.split(r"[\s;]", text, maxsplit=1)[0].lower() if text else ""


def strip_our_results(message: bytes, hostname: str) -> bytes:
    """`message` without Authentication-Results fields that claim our authserv-id: a sender
    must not be able to forge our verdict (RFC 8601 5).  Other fields, and the body, are left
    as they are."""
    fields, stop = _header_fields(message)
    ours = hostname.strip().lower().rstrip(".")
    kept = [f for f in fields if not (_field_name(f) == b"authentication-results"
                                      and _authserv_id(_field_value(f)) == ours)]
    if len(kept) == len(fields):
        return message
    return b"".join(kept) + message[stop:]


def author_domains(message: bytes) -> list[str]:
    """The domains of the addresses in the From field(s) (RFC 5322 3.6.2), lower-case, A-label
    form, without repeats; [] when there is no usable address."""
    values = [_field_value(f) for f in _header_fields(message)[0]
              if _field_name(f) == b"from"]
    domains: list[str] = []
    for _, address in email.utils.getaddresses(values):
        domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        if not domain or "@" not in address:
            continue
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            continue
        if domain not in domains:
            domains.append(domain)
    return domains


def org_domain(domain: str) -> str:
    """The Organizational Domain of `domain` (RFC 7489 3.2): the public suffix plus one label;
    `domain` itself when it is a public suffix."""
    domain = domain.lower().rstrip(".")
    return _psl.privatesuffix(domain) or domain


# --- DKIM (RFC 6376) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DKIMResult:
    """One DKIM-Signature's outcome, in RFC 8601 2.7.1 words: pass, fail, neutral (the
    signature could not be processed), temperror, permerror (no usable key)."""

    result: str
    domain: str  # d=
    selector: str  # s=
    identity: str  # i= (default "@" + d=, RFC 6376 3.5)
    signature: str  # the first 8 characters of b= (RFC 6008)
    reason: str = ""


def _tag(fields: dict[bytes, bytes], name: bytes) -> str:
    return re.sub(rb"\s+", b"", fields.get(name, b"")).decode("ascii", "replace")


def verify_dkim(message: bytes, resolver: dns.resolver.Resolver,
                limit: int = MAX_DKIM_SIGNATURES) -> list[DKIMResult]:
    """Verify the first `limit` DKIM-Signature fields of `message` (blocking)."""
    count = sum(1 for f in _header_fields(message)[0] if _field_name(f) == b"dkim-signature")
    if not count:
        return []
    try:
        verifier = dkim.DKIM(message, minkey=MIN_RSA_BITS)
    except dkim.DKIMException as exc:
        return [DKIMResult("neutral", "", "", "", "", f"unparsable message: {exc}")]
    results = []
    for idx in range(min(count, limit)):
        results.append(_verify_one(verifier, idx, resolver))
    return results


def _verify_one(verifier: Any, idx: int, resolver: dns.resolver.Resolver) -> DKIMResult:
    key_state = {"found": False, "temp": False, "bad": ""}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            records = _txt(resolver, name.decode("ascii", "replace"))
        except _TempFail as exc:
            key_state["temp"] = True
            raise dkim.DnsTimeoutError(str(exc)) from None
        if not records:
            return None
        key_state["found"] = True
        try:
            dkim.evaluate_pk(name, records[0])
        except dkim.DKIMException as exc:
            key_state["bad"] = str(exc)
        return records[0]

    d = s = i = b = ""
    try:
        prep = verifier.verify_headerprep(idx)
        fields = prep[0] if prep else {}
        d, s, b = _tag(fields, b"d").lower(), _tag(fields, b"s"), _tag(fields, b"b")[:8]
        i = _tag(fields, b"i") or f"@{d}"
        ok = bool(verifier.verify(idx=idx, dnsfunc=dnsfunc))
    except dkim.KeyFormatError as exc:  # e.g. a key under 1024 bits (RFC 8301 3.2)
        return DKIMResult("permerror", d, s, i, b, str(exc))
    except dkim.ValidationError as exc:
        # RFC 6376 6.1.3: a body that does not match bh= is a failed signature; other
        # ValidationErrors are tags that break the rules (RFC 8601 2.7.1 neutral).
        if "body hash mismatch" in str(exc):
            return DKIMResult("fail", d, s, i, b, "body hash mismatch")
        return DKIMResult("neutral", d, s, i, b, str(exc))
    except dkim.DKIMException as exc:
        return DKIMResult("neutral", d, s, i, b, str(exc))
    if ok:
        return DKIMResult("pass", d, s, i, b)
    if key_state["temp"]:
        return DKIMResult("temperror", d, s, i, b, "key lookup failed")
    if not key_state["found"]:
        return DKIMResult("permerror", d, s, i, b, "no key")  # RFC 6376 6.1.2
    if key_state["bad"]:
        return DKIMResult("permerror", d, s, i, b, f"bad key: {key_state['bad']}")
    return DKIMResult("fail", d, s, i, b, "signature did not verify")


# --- SPF (RFC 7208) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SPFResult:
    """pass, fail, softfail, neutral, none, temperror or permerror (RFC 7208 2.6)."""

    result: str
    identity: str  # "mailfrom", or "helo" when MAIL FROM is null (RFC 7208 2.4)
    domain: str  # the domain checked
    sender: str  # the MAIL FROM address, or the HELO name
    reason: str = ""


class _SPFQuery(spf.query):  # type: ignore[misc]
    """pyspf's query with its DNS sent to our resolver.  pyspf looks up names through a
    module-global function; this per-query method replaces it (same contract as
    spf.query.dns: a list of values, [] for no data, void lookups counted)."""

    def __init__(self, *args: Any, resolver: dns.resolver.Resolver, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resolver = resolver

    def dns(self, name: str, qtype: str, cnames: object = None,
            ignore_void: bool = False) -> list[Any]:
        name = str(name).rstrip(".").lower()
        if not name:
            raise spf.PermError("empty domain name")
        key = (name, qtype)
        if key in self.cache:
            return list(self.cache[key])
        result: list[Any] = []
        if qtype != "SPF":  # RFC 7208 3.1: the SPF RR type is not used
            try:
                records = _lookup(self._resolver, name, qtype)
            except _TempFail as exc:
                raise spf.TempError(f"DNS {exc}") from None
            for r in records:
                if qtype in ("A", "AAAA"):
                    result.append(r.address)
                elif qtype == "MX":
                    result.append((r.preference, r.exchange.to_text(omit_final_dot=True)))
                elif qtype == "PTR":
                    result.append(r.target.to_text(omit_final_dot=True))
                elif qtype == "TXT":
                    result.append(tuple(r.strings))
        self.cache[key] = result
        if not result and not ignore_void:
            # RFC 7208 4.6.4: at most 2 lookups that find nothing
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return list(result)


def check_spf(client_ip: str, mail_from: str, helo: str | None, hostname: str,
              resolver: dns.resolver.Resolver) -> SPFResult:
    """SPF for the MAIL FROM identity, or for HELO when the reverse path is null
    (RFC 7208 2.4).  Blocking."""
    sender = mail_from.strip().strip("<>")
    if sender:
        identity, domain = "mailfrom", sender.rpartition("@")[2] or (helo or "")
    elif helo:
        identity, domain, sender = "helo", helo, helo
    else:
        return SPFResult("none", "helo", "", "", "no identity to check")
    domain = domain.lower().rstrip(".")
    try:
        query = _SPFQuery(i=client_ip, s=mail_from.strip().strip("<>"), h=helo or "",
                          receiver=hostname, querytime=SPF_QUERY_TIME, resolver=resolver)
        result, _, explanation = query.check()
    except (ValueError, spf.PermError) as exc:  # e.g. an unparsable client address
        return SPFResult("permerror", identity, domain, sender, str(exc))
    return SPFResult(str(result), identity, domain, sender, str(explanation))


# --- DMARC (RFC 7489) --------------------------------------------------------------------------

_POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True)
class DMARCRecord:
    """The tags of a DMARC record that decide a message's fate (RFC 7489 6.3)."""

    domain: str  # where it was found: the From domain or its Organizational Domain
    policy: str  # p=
    subdomain_policy: str | None  # sp=
    pct: int  # pct=, 0-100
    adkim: str  # "r" (relaxed) or "s" (strict)
    aspf: str


def parse_dmarc(text: str, domain: str) -> DMARCRecord | None:
    """The record in TXT `text` found at _dmarc.`domain`, or None when it is not a DMARC
    record or cannot be used (RFC 7489 6.6.3)."""
    parts = [p.strip() for p in text.split(";")]
    tags: dict[str, str] = {}
    for part in parts:
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    first = parts[0].replace(" ", "").replace("\t", "") if parts else ""
    if first != "v=DMARC1":  # RFC 7489 6.4: v= first, exactly "DMARC1"
        return None
    policy = tags.get("p", "").lower()
    if policy not in _POLICIES:
        # RFC 7489 6.6.3 step 6: a bad or missing p= with a rua= is taken as p=none;
        # without one the record is not used.
        if not tags.get("rua"):
            return None
        policy = "none"
    sp = tags.get("sp", "").lower()
    try:
        pct = min(100, max(0, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    adkim, aspf = tags.get("adkim", "r").lower(), tags.get("aspf", "r").lower()
    return DMARCRecord(domain, policy, sp if sp in _POLICIES else None, pct,
                       adkim if adkim in ("r", "s") else "r", aspf if aspf in ("r", "s") else "r")


@dataclass(frozen=True)
class DMARCLookup:
    record: DMARCRecord | None
    error: str = ""  # "temperror" when DNS could not answer


def lookup_dmarc(from_domain: str, resolver: dns.resolver.Resolver) -> DMARCLookup:
    """The DMARC record for `from_domain`: its own, else its Organizational Domain's
    (RFC 7489 6.6.3).  Blocking."""
    candidates = [from_domain]
    org = org_domain(from_domain)
    if org != from_domain:
        candidates.append(org)
    for domain in candidates:
        try:
            texts = _txt(resolver, f"_dmarc.{domain}")
        except _TempFail:
            return DMARCLookup(None, "temperror")
        records = [t.decode("utf-8", "replace") for t in texts]
        records = [t for t in records if re.match(r"v\s*=\s*DMARC1\b", t)]
        if len(records) > 1:  # step 5: more than one record, no DMARC for this message
            return DMARCLookup(None)
        if records:
            return DMARCLookup(parse_dmarc(records[0], domain))
    return DMARCLookup(None)


@dataclass(frozen=True)
class DMARCResult:
    """pass, fail, none (no policy), temperror or permerror (RFC 7489 11.2)."""

    result: str
    from_domain: str
    policy: str | None = None  # the policy to apply to this message when it fails
    requested: str | None = None  # p= or sp= as published, before pct= sampling
    reason: str = ""


def _aligned(a: str, b: str, mode: str) -> bool:
    """Identifier alignment (RFC 7489 3.1): the same domain (strict), or the same
    Organizational Domain (relaxed)."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


def evaluate_dmarc(from_domain: str, lookup: DMARCLookup, dkim_results: Sequence[DKIMResult],
                   spf_result: SPFResult,
                   sample: Callable[[], float] = random.random) -> DMARCResult:
    """DMARC for one author domain (RFC 7489 6.6.2): pass when an aligned identifier passed
    DKIM or SPF.  `sample` is a number in [0, 1) for pct= (RFC 7489 6.6.4)."""
    if lookup.error:
        return DMARCResult("temperror", from_domain, reason="policy lookup failed")
    record = lookup.record
    if record is None:
        return DMARCResult("none", from_domain)
    # RFC 7489 6.3 sp=: the policy for subdomains of the domain where the record was found.
    requested = record.policy
    if record.domain != from_domain and record.subdomain_policy is not None:
        requested = record.subdomain_policy
    for result in dkim_results:
        if result.result == "pass" and _aligned(result.domain, from_domain, record.adkim):
            return DMARCResult("pass", from_domain, requested, requested, "dkim aligned")
    if spf_result.result == "pass" and _aligned(spf_result.domain, from_domain, record.aspf):
        return DMARCResult("pass", from_domain, requested, requested, "spf aligned")
    if any(r.result == "temperror" for r in dkim_results) or spf_result.result == "temperror":
        # An aligned pass might have been found with an answer from DNS: try again later.
        return DMARCResult("temperror", from_domain, None, requested, "dkim/spf temperror")
    policy = requested
    if sample() * 100 >= record.pct:
        # RFC 7489 6.6.4: outside the pct= sample, apply the next less strict policy.
        policy = {"reject": "quarantine", "quarantine": "none"}.get(requested, "none")
    return DMARCResult("fail", from_domain, policy, requested, "no aligned identifier")


# --- the whole check ---------------------------------------------------------------------------

# Worst first: the verdict of a message with several author domains is its worst one
# (RFC 7489 6.6.1 lets a receiver apply the strictest policy).
_DMARC_ORDER = ("fail", "temperror", "permerror", "none", "pass")
_POLICY_ORDER = ("reject", "quarantine", "none")


@dataclass(frozen=True)
class AuthVerdict:
    header: bytes  # the Authentication-Results field, CRLF-terminated, to prepend
    dmarc: str  # pass, fail, none, temperror, permerror
    policy: str | None  # none/quarantine/reject asked for by the author domain (after pct=)
    dkim: tuple[DKIMResult, ...]
    spf: SPFResult
    dmarc_results: tuple[DMARCResult, ...] = field(default=())

    @property
    def disposition(self) -> str:
        """What DMARC asks to be done with this message: "reject", "quarantine" or "none"
        (only a failed DMARC check has a disposition other than none)."""
        return (self.policy or "none") if self.dmarc == "fail" else "none"


async def check(message: bytes, *, client_ip: str, helo: str | None, mail_from: str,
                resolver: AuthResolver, hostname: str) -> AuthVerdict:
    """DKIM, SPF and DMARC for a message received from `client_ip` (which said `helo` and
    MAIL FROM:<`mail_from`>, "" for the null path).  `hostname` is our authserv-id."""
    res = resolver.sync_resolver()
    domains = author_domains(message)
    too_many = len(domains) > MAX_AUTHOR_DOMAINS
    if too_many:
        domains = []
    dkim_task = asyncio.ensure_future(asyncio.to_thread(verify_dkim, message, res))
    spf_task = asyncio.ensure_future(
        asyncio.to_thread(check_spf, client_ip, mail_from, helo, hostname, res))
    lookups = await asyncio.gather(*(asyncio.to_thread(lookup_dmarc, d, res) for d in domains))
    dkim_results, spf_result = await dkim_task, await spf_task
    dmarc_results = tuple(evaluate_dmarc(d, lookup, dkim_results, spf_result)
                          for d, lookup in zip(domains, lookups, strict=True))
    if not dmarc_results:
        # RFC 7489 6.6.1: without an author domain there is nothing to evaluate.
        reason = "too many author domains" if too_many else "no author domain in From"
        dmarc_results = (DMARCResult("permerror", "", reason=reason),)
    worst = min(dmarc_results, key=lambda r: _DMARC_ORDER.index(r.result))
    policy = worst.policy
    if worst.result == "fail":
        policy = min((r.policy or "none" for r in dmarc_results if r.result == "fail"),
                     key=_POLICY_ORDER.index)
    header = results_field(hostname, dkim_results, spf_result, dmarc_results)
    return AuthVerdict(header, worst.result, policy, tuple(dkim_results), spf_result,
                       dmarc_results)


# --- Authentication-Results (RFC 8601) ---------------------------------------------------------

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~]+")  # RFC 2045 5.1 token
_ADDRESS = re.compile(rf"(?:{_TOKEN.pattern})?@[A-Za-z0-9.\-]+")  # RFC 8601 2.2 pvalue form
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def _pvalue(text: str) -> str:
    """`text` as an RFC 8601 2.2 pvalue: bare when it is a token or [local-part]@domain, else a
    quoted-string; control characters (CR, LF) never pass."""
    text = _UNSAFE.sub("", text)
    if _TOKEN.fullmatch(text) or _ADDRESS.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    text = re.sub(r"[()\\]", "", _UNSAFE.sub(" ", text)).strip()[:120]
    return f" ({text})" if text else ""


def results_field(hostname: str, dkim_results: Sequence[DKIMResult], spf_result: SPFResult,
                  dmarc_results: Sequence[DMARCResult]) -> bytes:
    """The Authentication-Results field for these results, authserv-id `hostname`, one
    resinfo per line (RFC 8601 2.2)."""
    resinfos: list[str] = []
    if not dkim_results:
        resinfos.append("dkim=none")
    for d in dkim_results:
        props = [f"header.d={_pvalue(d.domain)}", f"header.i={_pvalue(d.identity)}",
                 f"header.s={_pvalue(d.selector)}", f"header.b={_pvalue(d.signature)}"]
        resinfos.append(f"dkim={d.result}{_comment(d.reason)} " + " ".join(props))
    s = spf_result
    prop = f"smtp.mailfrom={_pvalue(s.sender)}" if s.identity == "mailfrom" else \
        f"smtp.helo={_pvalue(s.sender)}"
    resinfos.append(f"spf={s.result}{_comment(s.reason)} {prop}".rstrip())
    for m in dmarc_results:
        note = ""
        if m.requested is not None:
            disposition = m.policy if m.result == "fail" and m.policy else "none"
            note = f"p={m.requested} dis={disposition}"
        elif m.reason:
            note = m.reason
        from_prop = f" header.from={_pvalue(m.from_domain)}" if m.from_domain else ""
        resinfos.append(f"dmarc={m.result}{_comment(note)}{from_prop}")
    text = f"Authentication-Results: {hostname};\r\n\t" + ";\r\n\t".join(resinfos) + "\r\n"
    return text.encode("utf-8", "replace")
