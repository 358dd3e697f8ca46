"""The naming rules for accounts, aliases and domains (netpost.mail.address)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netpost.mail.address import (
    InvalidAddress,
    InvalidDomain,
    normalize_address,
    normalize_domain,
    parse_address,
    parse_alias_source,
    parse_domain,
    split_address,
    valid_address,
    valid_domain,
)

# Text that looks like names often enough to exercise the accepting paths too.
_name_chars = st.sampled_from(list("aZ0-.@_ +\"'[]\t\n\u212a\u00e9\u0130\u00a0xn"))
name_like = st.one_of(st.text(), st.text(_name_chars, max_size=80))


@pytest.mark.parametrize("name, canonical", [
    ("example.org", "example.org"),
    ("Example.ORG", "example.org"),
    (" a.example.org. ", "a.example.org"),
    ("localhost", "localhost"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("a-b.c0", "a-b.c0"),
    ("x" * 63 + ".org", "x" * 63 + ".org"),
    (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),  # 253
])
def test_valid_domains(name: str, canonical: str) -> None:
    assert parse_domain(name) == canonical
    assert valid_domain(name)


@pytest.mark.parametrize("name", [
    "", ".", "-bad.com", "bad-.com", "bad..com", ".bad.com", "sp ace.com", "a@b.com",
    "x" * 64 + ".com", ".".join(["a" * 63] * 3 + ["b" * 62]),  # 254
    "b\u00fccher.example",  # IDNs only as xn--
    "\u212aelvin.example",  # KELVIN SIGN is not a "k"
    "under_score.org", "[127.0.0.1]",
])
def test_invalid_domains(name: str) -> None:
    with pytest.raises(InvalidDomain):
        parse_domain(name)
    assert not valid_domain(name)


@pytest.mark.parametrize("address, canonical", [
    ("bob@example.com", "bob@example.com"),
    ("Bob@Example.COM", "bob@example.com"),
    ("  bob@example.com.\n", "bob@example.com"),
    ("postmaster@localhost", "postmaster@localhost"),
    ("a.b+tag@x.org", "a.b+tag@x.org"),
    ("!#$%&'*+/=?^_`{|}~-@x.org", "!#$%&'*+/=?^_`{|}~-@x.org"),
    ("l" * 64 + "@x.org", "l" * 64 + "@x.org"),
])
def test_valid_addresses(address: str, canonical: str) -> None:
    assert parse_address(address) == (canonical, canonical.rpartition("@")[2])
    assert valid_address(address)


@pytest.mark.parametrize("address, reason", [
    ("bob", "expected local@domain"),
    ("@example.com", "expected local@domain"),
    ("a b@example.com", "expected local@domain"),
    ("bob@@example.com", "expected local@domain"),
    (".b@x.com", "expected local@domain"),
    ("b.@x.com", "expected local@domain"),
    ("a..b@x.com", "expected local@domain"),
    ('"quoted"@x.com', "expected local@domain"),
    ("l" * 65 + "@x.org", "expected local@domain"),
    ("j\u00f6rg@x.org", "expected local@domain"),
    ("\u212ate@x.org", "expected local@domain"),
    ("bob@", "bad domain part"),
    ("bob@-x.com", "bad domain part"),
    ("bob@[127.0.0.1]", "bad domain part"),
    ("l" * 64 + "@" + ".".join(["d" * 63] * 3 + ["e" * 60]), "longer than 254 characters"),
])
def test_invalid_addresses(address: str, reason: str) -> None:
    with pytest.raises(InvalidAddress) as e:
        parse_address(address)
    assert e.value.reason == reason
    assert (e.value.bad_domain is not None) == (reason == "bad domain part")
    assert not valid_address(address)


def test_alias_sources() -> None:
    assert parse_alias_source("@Example.org.") == ("@example.org", "example.org")
    assert parse_alias_source("Info@Example.org") == ("info@example.org", "example.org")
    with pytest.raises(InvalidDomain):
        parse_alias_source("@-bad.org")
    with pytest.raises(InvalidAddress):
        parse_alias_source("a b@example.org")


def test_normalize_and_split() -> None:
    assert normalize_address("Postmaster") == "postmaster"  # RFC 5321 4.5.1, no domain
    assert normalize_address("Bob@Example.ORG..") == "bob@example.org"
    assert normalize_address("\u212a@x.org") == "\u212a@x.org"  # ASCII case-folding only
    assert normalize_domain(" Example.ORG. ") == "example.org"
    assert split_address("Bob@Example.ORG.") == ("bob", "example.org")
    assert split_address("postmaster") == ("", "postmaster")


@given(name_like)
def test_never_raises_on_arbitrary_text(text: str) -> None:
    normalize_address(text)
    normalize_domain(text)
    split_address(text)
    assert isinstance(valid_address(text), bool)
    assert isinstance(valid_domain(text), bool)
    for parse in (parse_address, parse_domain, parse_alias_source):
        try:
            parse(text)
        except (InvalidAddress, InvalidDomain):
            pass


@given(name_like)
def test_normalizing_is_idempotent(text: str) -> None:
    once = normalize_address(text)
    assert normalize_address(once) == once
    once = normalize_domain(text)
    assert normalize_domain(once) == once


@given(name_like)
def test_accepted_names_are_canonical_ascii(text: str) -> None:
    """What is accepted is the canonical form (so looking a name up finds what was stored),
    is ASCII lower-case, and is accepted again unchanged."""
    if valid_address(text):
        address, domain = parse_address(text)
        assert address == normalize_address(text)
        assert address.isascii() and address == address.lower()
        assert parse_address(address) == (address, domain)
        assert split_address(text)[1] == domain
    if valid_domain(text):
        domain = parse_domain(text)
        assert domain == normalize_domain(text)
        assert domain.isascii() and domain == domain.lower()
        assert parse_domain(domain) == domain


@given(st.from_regex(r"[a-z0-9.+_-]{1,70}@[a-zA-Z0-9.-]{1,70}", fullmatch=True))
def test_address_like_text(text: str) -> None:
    if valid_address(text):
        assert parse_address(text)[0] == text.lower().rstrip(".")
