"""The MX's use of the inbound checks: who is checked, and the [smtp] settings behind it.
(The checks themselves run end to end in tests/interop/test_relay_dns.py.)"""

from __future__ import annotations

import asyncio

import pytest

from netpost.config import ConfigError, from_dict
from netpost.mail.dns import Resolver
from netpost.mail.inbound import InboundChecks, parse_networks


def checks(*skip: str) -> InboundChecks:
    return InboundChecks(Resolver(["127.0.0.1:9"]), "mx.test", skip=parse_networks(skip))


def test_loopback_skipped_by_default_networks() -> None:
    c = checks("127.0.0.0/8", "::1")
    assert not c.applies_to("127.0.0.1") and not c.applies_to("127.3.2.1")
    assert not c.applies_to("::1") and not c.applies_to("::ffff:127.0.0.1")
    assert c.applies_to("192.0.2.1") and c.applies_to("2001:db8::1")


def test_nothing_skipped() -> None:
    assert checks().applies_to("127.0.0.1")


def test_single_address_and_network() -> None:
    c = checks("192.0.2.7", "198.51.100.0/24")
    assert not c.applies_to("192.0.2.7") and c.applies_to("192.0.2.8")
    assert not c.applies_to("198.51.100.200")


def test_bad_network_is_named() -> None:
    with pytest.raises(ValueError, match="'not-a-net'"):
        parse_networks(["10.0.0.0/8", "not-a-net"])


def test_config_refuses_bad_network() -> None:
    with pytest.raises(ConfigError, match="smtp: 'x.y' is not an IP address or network"):
        from_dict({"smtp": {"auth_checks_skip": ["x.y"]}})


def test_skipped_client_is_passed_through_unchanged() -> None:
    data = (b"Authentication-Results: mx.test; dkim=pass\r\nFrom: a@b.test\r\n\r\nhi\r\n")
    verdict = asyncio.run(checks("127.0.0.0/8").judge(data, client_ip="127.0.0.1", helo="x",
                                                       mail_from="a@b.test"))
    assert verdict.action == "accept" and verdict.header == b"" and verdict.content == data
