"""Unit tests for the shared sans-I/O SASL exchange (PLAIN, RFC 4616; LOGIN)."""

from __future__ import annotations

import base64

import pytest

from netpost.auth.sasl import (
    LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USERNAME_CHALLENGE,
    Credentials,
    SASLBase64Error,
    SASLCancelled,
    SASLError,
    SASLExchange,
    b64decode,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_challenges_are_base64_prompts() -> None:
    assert b64decode(LOGIN_USERNAME_CHALLENGE) == b"Username:"
    assert b64decode(LOGIN_PASSWORD_CHALLENGE) == b"Password:"


def test_plain_with_challenge() -> None:
    exchange = SASLExchange("PLAIN")
    assert exchange.start() == ""  # RFC 4954 4 / RFC 5034 4: an empty challenge
    assert not exchange.done
    assert exchange.step(b64(b"zid\0bob\0pw")) == Credentials("PLAIN", "bob", "pw", "zid")
    assert exchange.done


def test_plain_initial_response_str_or_bytes() -> None:
    assert SASLExchange("PLAIN", b64(b"\0bob\0pw")).start() == Credentials("PLAIN", "bob", "pw")
    data = b64(b"\0bob\0pw").encode()
    assert SASLExchange("plain", data).start() == Credentials("PLAIN", "bob", "pw")


def test_login_flow() -> None:
    exchange = SASLExchange("LOGIN")
    assert exchange.start() == LOGIN_USERNAME_CHALLENGE
    assert exchange.step(b64(b"bob").encode()) == LOGIN_PASSWORD_CHALLENGE
    assert exchange.step(b64(b"pass word")) == Credentials("LOGIN", "bob", "pass word")
    assert exchange.done


def test_login_initial_response_is_the_username() -> None:
    exchange = SASLExchange("LOGIN", b64(b"bob"))
    assert exchange.start() == LOGIN_PASSWORD_CHALLENGE
    assert exchange.step("=") == Credentials("LOGIN", "bob", "")  # an empty password is data


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("line", [b"*", b" *", "*"])
def test_star_cancels(mech: str, line: str | bytes) -> None:
    exchange = SASLExchange(mech)
    exchange.start()
    with pytest.raises(SASLCancelled):
        exchange.step(line)
    assert exchange.done


def test_star_as_initial_response_is_bad_base64() -> None:
    with pytest.raises(SASLBase64Error):
        SASLExchange("PLAIN", "*").start()


@pytest.mark.parametrize("line", [b"!!!", b"YQ", b"Y\xffQ="])
def test_bad_base64(line: bytes) -> None:
    exchange = SASLExchange("LOGIN")
    exchange.start()
    with pytest.raises(SASLBase64Error):
        exchange.step(line)
    assert exchange.done


@pytest.mark.parametrize(
    ("mech", "initial", "message"),
    [
        # One rule for both mechanisms: the identity must not be empty (RFC 4616 2).
        ("PLAIN", b64(b"zid\0\0pw"), "authzid NUL authcid NUL password"),
        ("PLAIN", "=", "authzid NUL authcid NUL password"),
        ("PLAIN", b64(b"no-nuls"), "authzid NUL authcid NUL password"),
        ("PLAIN", b64(b"a\0b\0c\0d"), "authzid NUL authcid NUL password"),
        ("PLAIN", b64(b"\0b\xff\0c"), "not UTF-8"),
        ("LOGIN", "=", "empty username"),
        ("LOGIN", b64(b"\xff"), "username is not UTF-8"),
    ],
)
def test_malformed_data(mech: str, initial: str, message: str) -> None:
    exchange = SASLExchange(mech, initial)
    with pytest.raises(SASLError, match=message) as info:
        exchange.start()
    assert not isinstance(info.value, SASLBase64Error)
    assert exchange.done


def test_empty_login_username_in_continuation_and_bad_password() -> None:
    exchange = SASLExchange("LOGIN")
    exchange.start()
    with pytest.raises(SASLError, match="empty username"):
        exchange.step("=")
    exchange = SASLExchange("LOGIN", b64(b"bob"))
    exchange.start()
    with pytest.raises(SASLError, match="password is not UTF-8"):
        exchange.step(b64(b"\xfe"))


def test_misuse() -> None:
    with pytest.raises(ValueError):
        SASLExchange("CRAM-MD5")
    exchange = SASLExchange("PLAIN")
    with pytest.raises(RuntimeError):
        exchange.step("=")  # not started
    exchange.start()
    with pytest.raises(RuntimeError):
        exchange.start()
    exchange.step(b64(b"\0a\0b"))
    with pytest.raises(RuntimeError):
        exchange.step(b64(b"\0a\0b"))  # already finished
