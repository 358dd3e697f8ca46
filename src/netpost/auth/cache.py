"""Successful logins remembered for a while, so that clients which log in again and again (mail
clients polling every minute, FTP clients opening a session per transfer) do not cost an argon2
verification each time.  Dovecot's auth_cache does the same for the same reason.

What is kept per account is the account's stored hash as it was, and an HMAC-SHA256 of the
password under a key made at start and held only in this process's memory: a changed password
(a new stored hash) or the end of the ttl ends the entry.  Failed logins are never cached: they
always pay the full verification and the failure slow-down.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time


class VerifiedCache:
    def __init__(self, ttl: float = 3600.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = os.urandom(32)
        self._entries: dict[str, tuple[float, str, bytes]] = {}
        self.hits = 0

    def _mac(self, address: str, password: str) -> bytes:
        message = address.encode("utf-8") + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def check(self, address: str, stored_hash: str, password: str) -> bool:
        """Did `password` verify against this very `stored_hash` within the ttl?"""
        if self.ttl <= 0:
            return False
        entry = self._entries.get(address)
        if entry is None:
            return False
        until, hashed, mac = entry
        if time.monotonic() > until or hashed != stored_hash:
            del self._entries[address]
            return False
        if not hmac.compare_digest(mac, self._mac(address, password)):
            return False
        self.hits += 1
        return True

    def remember(self, address: str, stored_hash: str, password: str) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            now = time.monotonic()
            self._entries = {a: e for a, e in self._entries.items() if e[0] > now}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[address] = (time.monotonic() + self.ttl, stored_hash,
                                  self._mac(address, password))

    def forget(self, address: str) -> None:
        self._entries.pop(address, None)
