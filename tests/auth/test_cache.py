"""The cache of successful logins: what it remembers, what ends an entry, and that failures and
throttled addresses always pay the full argon2 verification."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from netpost.auth import service as auth_service
from netpost.auth.cache import VerifiedCache
from netpost.auth.passwords import hash_password
from netpost.auth.sasl import Credentials
from netpost.auth.service import Authenticator
from netpost.auth.throttle import FailureThrottle
from netpost.store.sqlite import SQLiteStore


def test_remembers_only_the_same_password_and_hash() -> None:
    cache = VerifiedCache(ttl=60)
    cache.remember("a@x.test", "$argon2id$one", "secret")
    assert cache.check("a@x.test", "$argon2id$one", "secret")
    assert not cache.check("a@x.test", "$argon2id$one", "Secret")
    assert not cache.check("b@x.test", "$argon2id$one", "secret")
    # A new stored hash (the password was changed) ends the entry.
    assert not cache.check("a@x.test", "$argon2id$two", "secret")
    assert not cache.check("a@x.test", "$argon2id$one", "secret")


def test_ttl_and_disabled() -> None:
    cache = VerifiedCache(ttl=0.05)
    cache.remember("a@x.test", "h", "pw")
    time.sleep(0.1)
    assert not cache.check("a@x.test", "h", "pw")
    off = VerifiedCache(ttl=0)
    off.remember("a@x.test", "h", "pw")
    assert not off.check("a@x.test", "h", "pw")


def test_bounded() -> None:
    cache = VerifiedCache(ttl=60, max_entries=3)
    for i in range(10):
        cache.remember(f"u{i}@x.test", "h", "pw")
    assert len(cache._entries) <= 3
    assert cache.check("u9@x.test", "h", "pw")


@pytest.fixture()
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(str(tmp_path / "mail.db"))
    s.add_domain("x.test")
    s.add_account("a@x.test", hash_password("right"))
    return s


def test_authenticator_verifies_once_then_trusts_the_cache(
        store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = auth_service.verify_password

    def counting(stored: str | None, password: str) -> bool:
        calls.append(password)
        return real(stored, password)

    monkeypatch.setattr(auth_service, "verify_password", counting)
    auth = Authenticator(store, FailureThrottle(0.01, 0.02, 60), VerifiedCache(ttl=60))

    async def login(password: str, peer: str = "192.0.2.1") -> bool:
        return await auth.login(Credentials("PLAIN", "a@x.test", password), peer,
                                "test") is not None

    assert asyncio.run(login("right")) and asyncio.run(login("right"))
    assert calls == ["right"]  # the second login came from the cache
    assert not asyncio.run(login("wrong"))
    assert calls == ["right", "wrong"]  # failures always verify
    # An address with recent failures is not served from the cache either.
    assert asyncio.run(login("right"))
    assert calls == ["right", "wrong", "right"]
    # A password change ends the cached login at once.
    store.set_password_hash("a@x.test", hash_password("new"))
    assert not asyncio.run(login("right", "192.0.2.9"))
