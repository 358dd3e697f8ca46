"""MTA-STS (RFC 8461): may this recipient domain's mail go only over authenticated TLS, and to
which MX hosts?

A domain announces a policy with a TXT record at `_mta-sts.<domain>` ("v=STSv1; id=...") and
serves it at `https://mta-sts.<domain>/.well-known/mta-sts.txt`. Policies are cached by id for
their max_age; a changed id means a new policy to fetch. The relay asks fetch_policy() before
delivering; with mode "enforce" it delivers only to MX hosts the policy allows, over TLS with a
certificate valid for the MX name (RFC 8461 4.2).

The policy host is looked up with netpost's own resolver and the HTTPS connection made to that
address, with SNI, certificate check and Host all naming mta-sts.<domain>.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import ssl
import tempfile
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import dns.exception
import dns.name
import httpx

from netpost.mail.dns import DNSTempError, Resolver

log = logging.getLogger(__name__)

POLICY_PATH = "/.well-known/mta-sts.txt"  # RFC 8461 3.3
MAX_POLICY_SIZE = 64 * 1024  # RFC 8461 3.3: senders may limit the body, e.g. to 64 KiB
FETCH_TIMEOUT = 60.0  # RFC 8461 3.3: a timeout of about a minute for the whole fetch
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 3.2: max_age is at most one year
FAILED_FETCH_BACKOFF = 300.0  # seconds before fetching the same (domain, id) again after a failure
CACHE_FILE = "mta-sts-policies.json"


class Mode(StrEnum):
    ENFORCE = "enforce"  # deliver only to allowed MX hosts over validated TLS
    TESTING = "testing"  # report failures (TLSRPT) but deliver anyway
    NONE = "none"  # the domain has withdrawn its policy


class PolicyError(ValueError):
    """A TXT record or policy body that does not follow RFC 8461's grammar."""


class FetchError(Exception):
    """The policy could not be fetched (DNS, TCP, TLS, HTTP status, type, size, timeout)."""


@dataclass(frozen=True)
class Policy:
    domain: str  # the recipient domain, A-labels, lower case
    id: str  # the TXT record's id the policy was fetched for
    mode: Mode
    mx: tuple[str, ...]  # patterns: "mx.example.com" or "*.example.com"
    max_age: int  # seconds
    fetched_at: float  # time.time()

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.max_age

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at

    @property
    def enforce(self) -> bool:
        return self.mode is Mode.ENFORCE

    def allows_mx(self, hostname: str) -> bool:
        """Does `hostname` (an MX record's exchange) match one of the policy's mx patterns?
        Pure matching, whatever the mode: the caller decides what a mismatch means
        (enforce: do not deliver there; testing: deliver and report; none: ignore)."""
        host = _a_labels(hostname)
        if host is None:
            return False
        for pattern in self.mx:
            # RFC 8461 4.1: "*." matches exactly one leftmost label: *.example.com matches
            # mx.example.com, not example.com and not a.b.example.com.
            if pattern.startswith("*."):
                first, dot, rest = host.partition(".")
                if dot and first and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def _a_labels(name: str) -> str | None:
    """`name` in lower-case A-labels without the final dot, or None if it is no domain."""
    try:
        text = dns.name.from_text(name.strip()).to_text(omit_final_dot=True)
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return None
    return text.lower() if text and text != "." else None


# RFC 8461 3.1 TXT record grammar.
_WSP = r"[ \t]*"
_RECORD_START = re.compile(r"v=STSv1" + _WSP + ";")
_RECORD_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31})=([\x21-\x3a\x3c\x3e-\x7e]+)")
_ID = re.compile(r"[A-Za-z0-9]{1,32}")


def is_sts_record(text: str) -> bool:
    """RFC 8461 3.1: TXT records that do not begin with "v=STSv1;" are not MTA-STS records."""
    return _RECORD_START.match(text) is not None


def parse_record(text: str) -> str:
    """The id of an MTA-STS TXT record (RFC 8461 3.1); PolicyError if it is malformed."""
    if not is_sts_record(text):
        raise PolicyError("record does not start with v=STSv1;")
    fields = [f.strip(" \t") for f in text[len("v=STSv1"):].strip(" \t").split(";")]
    if fields[0] != "":
        raise PolicyError("v=STSv1 not followed by ';'")
    fields = fields[1:]
    if fields and fields[-1] == "":
        fields.pop()  # a trailing delimiter is allowed
    record_id: str | None = None
    for field in fields:
        match = _RECORD_FIELD.fullmatch(field)
        if match is None:
            raise PolicyError(f"bad field {field!r}")
        name, value = match.groups()
        if name == "id" and record_id is None:  # like policy fields, the first one counts
            if _ID.fullmatch(value) is None:
                raise PolicyError(f"bad id {value!r}")
            record_id = value
    if record_id is None:
        raise PolicyError("no id")
    return record_id


# RFC 8461 3.2 policy grammar.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_MX_PATTERN = re.compile(rf"(\*\.)?{_LABEL}(?:\.{_LABEL})*")
_POLICY_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31}):[ \t]*(.*?)[ \t]*")
_MAX_AGE = re.compile(r"[0-9]{1,10}")


def parse_policy(body: str, *, domain: str, policy_id: str, fetched_at: float) -> Policy:
    """Parse a policy body (RFC 8461 3.2); PolicyError if it is malformed or incomplete."""
    values: dict[str, str] = {}
    mx: list[str] = []
    # RFC 8461 3.2: lines end in LF or CRLF. Blank lines are not in the grammar; they are
    # skipped rather than failing a policy over trailing whitespace.
    for line in body.split("\n"):
        line = line.removesuffix("\r")
        if not line.strip(" \t"):
            continue
        match = _POLICY_FIELD.fullmatch(line)
        if match is None:
            raise PolicyError(f"bad policy line {line!r}")
        name, value = match.groups()
        if name == "mx":
            if _MX_PATTERN.fullmatch(value) is None:
                raise PolicyError(f"bad mx pattern {value!r}")
            mx.append(value.lower())
        else:
            # RFC 8461 3.2: for fields other than mx only the first instance is used, and
            # fields not defined there are ignored.
            values.setdefault(name, value)
    for required in ("version", "mode", "max_age"):
        if required not in values:
            raise PolicyError(f"policy has no {required}")
    if values["version"] != "STSv1":
        raise PolicyError(f"unknown policy version {values['version']!r}")
    try:
        mode = Mode(values["mode"])
    except ValueError:
        raise PolicyError(f"unknown policy mode {values['mode']!r}") from None
    if _MAX_AGE.fullmatch(values["max_age"]) is None:
        raise PolicyError(f"bad max_age {values['max_age']!r}")
    # RFC 8461 3.2: at most 31557600; a longer promise is held to a year.
    max_age = min(int(values["max_age"]), MAX_AGE_LIMIT)
    if not mx and mode is not Mode.NONE:
        raise PolicyError("policy has no mx")  # RFC 8461 3.2: mx is required but for "none"
    return Policy(domain=domain, id=policy_id, mode=mode, mx=tuple(dict.fromkeys(mx)),
                  max_age=max_age, fetched_at=fetched_at)


class PolicyCache:
    """Policies by recipient domain, in memory and, with `directory`, in a JSON file there
    (rewritten whole, atomically, when a policy is added: fetches are rare)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.path = directory / CACHE_FILE if directory is not None else None
        self._policies: dict[str, Policy] = {}
        self._failed: dict[tuple[str, str], float] = {}  # (domain, id) → monotonic time
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        try:
            entries = json.loads(path.read_text())
            for entry in entries.values():
                policy = Policy(domain=entry["domain"], id=entry["id"], mode=Mode(entry["mode"]),
                                mx=tuple(entry["mx"]), max_age=int(entry["max_age"]),
                                fetched_at=float(entry["fetched_at"]))
                self._policies[policy.domain] = policy
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # A damaged cache costs refetches, never delivery: start empty.
            log.warning("ignoring unreadable MTA-STS cache %s: %s", path, exc)
            self._policies.clear()

    def get(self, domain: str) -> Policy | None:
        """The cached policy for `domain`, expired or not."""
        return self._policies.get(domain)

    def put(self, policy: Policy) -> None:
        self._policies[policy.domain] = policy
        now = time.time()
        for domain in [d for d, p in self._policies.items() if p.expired(now)]:
            del self._policies[domain]
        self._failed.pop((policy.domain, policy.id), None)
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        data: dict[str, Any] = {d: {**asdict(p), "mx": list(p.mx), "mode": p.mode.value}
                                for d, p in self._policies.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".mta-sts-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def note_failure(self, domain: str, policy_id: str) -> None:
        self._failed[(domain, policy_id)] = time.monotonic()
        if len(self._failed) > 10_000:
            self._failed.clear()

    def recently_failed(self, domain: str, policy_id: str) -> bool:
        at = self._failed.get((domain, policy_id))
        return at is not None and time.monotonic() - at < FAILED_FETCH_BACKOFF


async def fetch_policy(domain: str, resolver: Resolver, *, cache: PolicyCache,
                       https_port: int = 443, ssl_context: ssl.SSLContext | None = None,
                       timeout: float = FETCH_TIMEOUT) -> Policy | None:
    """The MTA-STS policy in force for `domain`, or None if it has none we know of.

    A returned policy may have mode "none" (the domain withdrew its policy): treat that as
    no policy. `ssl_context` verifies the policy host's certificate (default: the system's
    trust store); `https_port` exists for tests.
    """
    name = _a_labels(domain)
    if name is None:
        return None
    cached = cache.get(name)
    usable = cached if cached is not None and not cached.expired() else None
    try:
        records = [r for r in await resolver.txt(f"_mta-sts.{name}") if is_sts_record(r)]
    except DNSTempError as exc:
        log.info("MTA-STS TXT lookup for %s failed: %s", name, exc)
        return usable
    # RFC 8461 3.1: anything but exactly one valid record means no policy is announced.
    # RFC 8461 5.1: a cached, unexpired policy still applies then.
    if len(records) != 1:
        return usable
    try:
        policy_id = parse_record(records[0])
    except PolicyError as exc:
        log.info("MTA-STS record for %s: %s", name, exc)
        return usable
    if usable is not None and usable.id == policy_id:
        return usable  # RFC 8461 3.1: same id, same policy: no fetch
    if cache.recently_failed(name, policy_id):
        return usable
    try:
        body = await asyncio.wait_for(
            _fetch(name, resolver, https_port, ssl_context or ssl.create_default_context(),
                   timeout), timeout)
        policy = parse_policy(body, domain=name, policy_id=policy_id, fetched_at=time.time())
    except (FetchError, PolicyError, TimeoutError) as exc:
        # RFC 8461 5.1: no policy could be fetched: use the cached one while it is valid,
        # otherwise deliver as though the domain had no MTA-STS.
        log.info("MTA-STS policy for %s (id %s) not fetched: %s", name, policy_id,
                 str(exc) or type(exc).__name__)
        cache.note_failure(name, policy_id)
        return usable
    cache.put(policy)
    return policy


async def _fetch(domain: str, resolver: Resolver, port: int, context: ssl.SSLContext,
                 timeout: float) -> str:
    """GET the policy from the policy host's addresses in turn; the body as text."""
    if not context.check_hostname or context.verify_mode != ssl.CERT_REQUIRED:
        # RFC 8461 3.3: the certificate must be valid for the policy host, always.
        raise ValueError("the MTA-STS ssl_context must verify certificates and host names")
    host = f"mta-sts.{domain}"
    try:
        addresses = await resolver.addresses(host)
    except DNSTempError as exc:
        raise FetchError(f"{host}: {exc}") from exc
    if not addresses:
        raise FetchError(f"{host} has no address")
    errors: list[str] = []
    for address in addresses:
        try:
            return await _get(address, host, port, context, timeout)
        except httpx.TransportError as exc:  # connect, TLS or read failure: try the next one
            errors.append(f"{address}: {exc!r}")
    raise FetchError(f"{host}: " + "; ".join(errors))


async def _get(address: str, host: str, port: int, context: ssl.SSLContext,
               timeout: float) -> str:
    url_host = f"[{address}]" if ":" in address else address
    authority = host if port == 443 else f"{host}:{port}"
    async with httpx.AsyncClient(verify=context, trust_env=False, timeout=timeout,
                                 follow_redirects=False) as client:  # RFC 8461 3.3: no 3xx
        request = client.build_request(
            "GET", f"https://{url_host}:{port}{POLICY_PATH}",
            headers={"Host": authority, "Accept-Encoding": "identity"},
            extensions={"sni_hostname": host})  # certificate checked against `host`
        response = await client.send(request, stream=True)
        try:
            if response.status_code != 200:  # RFC 8461 3.3: only 200 counts
                raise FetchError(f"{host}: HTTP status {response.status_code}")
            # RFC 8461 3.2: the policy is text/plain (parameters such as charset ignored).
            media_type = response.headers.get("content-type", "").split(";")[0].strip()
            if media_type.lower() != "text/plain":
                raise FetchError(f"{host}: Content-Type {media_type!r}, not text/plain")
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_POLICY_SIZE:
                raise FetchError(f"{host}: policy of {length} bytes is too large")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_POLICY_SIZE:
                    raise FetchError(f"{host}: policy larger than {MAX_POLICY_SIZE} bytes")
        finally:
            await response.aclose()
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{host}: policy is not UTF-8") from exc
