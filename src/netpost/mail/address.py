"""What an account, alias or domain name may be, and its canonical form.

The one place these rules live; the store, local delivery and the command line all use it.
(The SMTP engine checks RFC 5321 4.1.2 *wire* syntax on its own; a path can be well-formed
there and still not be a name an account or alias may have here.)

Rules:

* Domains are ASCII host names (RFC 1035 2.3.1 / RFC 1123 2.1, as RFC 5321 2.3.5 asks):
  dot-separated labels of letters, digits and inner hyphens, 1-63 characters each, at most
  253 in all without the root dot.  Single-label names (``localhost``) are allowed.
  Internationalised names only in their ``xn--`` (A-label) form.
* A local part is an ASCII dot-atom (RFC 5321 4.1.2 ``Dot-string``) of at most 64 characters
  (RFC 5321 4.5.3.1.1); quoted local parts are not names an account or alias may have.
* A whole address is at most 254 characters (a 256-octet path minus its angle brackets,
  RFC 5321 4.5.3.1.3).
* Names compare case-insensitively, in ASCII only (RFC 4343 for domains; for local parts a
  choice, as in most servers, though RFC 5321 2.4 lets them be case-sensitive).  The
  canonical form is lower-case, without surrounding white space and without the trailing
  root dot(s) of the domain.

The SMTP engine checks the looser *wire* syntax of RFC 5321 4.1.2 (any case, U-labels under
SMTPUTF8, no label length bound): `valid_wire_domain` and `WIRE_LABEL` here are that rule, so
both rules for what a domain looks like live in this one module.

`normalize_address` / `normalize_domain` give the canonical form of any text and never fail
(use them to look names up); `parse_address` / `parse_domain` / `parse_alias_source` also
check the rules and raise `InvalidAddress` / `InvalidDomain` (use them before storing a name).
"""

from __future__ import annotations

import re

MAX_LOCAL = 64
MAX_DOMAIN = 253
MAX_ADDRESS = 254

# RFC 5321 4.1.2 Dot-string: atext (RFC 5322 3.2.3) atoms joined by single dots; lower-case
# because it is matched against the canonical form.
_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_RE = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")

# RFC 5321 4.1.2 Domain as it may appear in a command: sub-domains of letters, digits and inner
# hyphens in any case, plus UTF8-non-ascii (RFC 6531 3.3) for SMTPUTF8.
UTF8_NON_ASCII = "\u0080-\U0010ffff"
WIRE_LABEL = (rf"[A-Za-z0-9{UTF8_NON_ASCII}]"
              rf"(?:[A-Za-z0-9{UTF8_NON_ASCII}-]*[A-Za-z0-9{UTF8_NON_ASCII}])?")
_WIRE_DOMAIN_RE = re.compile(rf"{WIRE_LABEL}(?:\.{WIRE_LABEL})*")
MAX_WIRE_DOMAIN = 255  # octets (RFC 5321 4.5.3.1.2)

# Only ASCII letters change case: str.lower() would also turn U+212A KELVIN SIGN into "k".
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class InvalidName(ValueError):
    """`text` (as given) is not an acceptable name; `reason` says why, in a few words."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"{text!r}: {reason}")
        self.text = text
        self.reason = reason


class InvalidDomain(InvalidName):
    pass


class InvalidAddress(InvalidName):
    def __init__(self, text: str, reason: str, bad_domain: str | None = None) -> None:
        super().__init__(text, reason)
        self.bad_domain = bad_domain  # the (canonical) domain part, when it is what is wrong


def _trim_root(domain: str) -> str:
    """`domain` without trailing dots (the root) and white space."""
    end = len(domain)
    while end and (domain[end - 1] == "." or domain[end - 1].isspace()):
        end -= 1
    return domain[:end]


def normalize_domain(name: str) -> str:
    """The canonical form of a domain name (not checked): ASCII lower-case, no surrounding
    white space, no trailing root dot."""
    return _trim_root(name.strip().translate(_ASCII_LOWER))


def normalize_address(address: str) -> str:
    """The canonical form of an address (not checked); text without "@" (like RFC 5321's
    bare ``postmaster``) is only trimmed and lower-cased."""
    a = address.strip().translate(_ASCII_LOWER)
    local, sep, domain = a.rpartition("@")
    return f"{local}@{_trim_root(domain)}" if sep else a


def split_address(address: str) -> tuple[str, str]:
    """(local part, domain) of the canonical form of `address` (not checked)."""
    local, _, domain = normalize_address(address).rpartition("@")
    return local, domain


def parse_domain(name: str) -> str:
    """The canonical form of domain `name`; InvalidDomain if it breaks the rules."""
    d = normalize_domain(name)
    if not d or len(d) > MAX_DOMAIN or not _DOMAIN_RE.fullmatch(d):
        raise InvalidDomain(name, "not a domain name")
    return d


def parse_address(address: str) -> tuple[str, str]:
    """(canonical address, its domain) for local@domain; InvalidAddress if it breaks the
    rules.  The reasons are the store's words: "expected local@domain", "bad domain part"."""
    a = normalize_address(address)
    local, sep, domain = a.rpartition("@")
    if not sep or not local or len(local) > MAX_LOCAL or not _LOCAL_RE.fullmatch(local):
        raise InvalidAddress(address, "expected local@domain")
    if not domain or len(domain) > MAX_DOMAIN or not _DOMAIN_RE.fullmatch(domain):
        raise InvalidAddress(address, "bad domain part", bad_domain=domain)
    if len(a) > MAX_ADDRESS:
        raise InvalidAddress(address, f"longer than {MAX_ADDRESS} characters")
    return a, domain


def parse_alias_source(source: str) -> tuple[str, str]:
    """(canonical source, its domain) for an alias source: local@domain, or "@domain" for a
    domain's catch-all.  InvalidAddress, or InvalidDomain for a bad catch-all domain."""
    s = normalize_address(source)
    if s.startswith("@"):
        domain = parse_domain(s[1:])
        return "@" + domain, domain
    return parse_address(source)


def valid_domain(name: str) -> bool:
    try:
        parse_domain(name)
    except InvalidDomain:
        return False
    return True


def valid_address(address: str) -> bool:
    """Is `address` (in any case) a name an account or alias may have?"""
    try:
        parse_address(address)
    except InvalidAddress:
        return False
    return True


def valid_wire_domain(text: str) -> bool:
    """Is `text` a Domain by RFC 5321 4.1.2 (U-labels allowed; address literals are the
    SMTP engine's)?  Looser than `parse_domain`: this is syntax, not a name we store."""
    return (len(text.encode("utf-8")) <= MAX_WIRE_DOMAIN
            and _WIRE_DOMAIN_RE.fullmatch(text) is not None)
