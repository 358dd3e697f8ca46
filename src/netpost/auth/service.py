"""The login service: checks a password against an account, slowing down repeated failures."""

from __future__ import annotations

import asyncio

from netpost.auth.cache import VerifiedCache
from netpost.auth.passwords import verify_password
from netpost.auth.sasl import Credentials
from netpost.auth.throttle import FailureThrottle
from netpost.mail.address import normalize_address, valid_address
from netpost.store.interfaces import Account, Accounts


class Authenticator:
    """Logins for every protocol (SMTP AUTH, POP3, later IMAP, FTP, SFTP, the web)."""

    def __init__(self, accounts: Accounts, throttle: FailureThrottle,
                 cache: VerifiedCache | None = None) -> None:
        self.accounts = accounts
        self.throttle = throttle
        self.cache = cache or VerifiedCache(ttl=0)

    async def login(self, creds: Credentials, peer: str, protocol: str) -> Account | None:
        """The account, or None. Failures are answered late, later each time, with the same
        reply whether or not the user exists."""
        throttle = self.throttle
        earlier = throttle.failures(peer)
        if earlier:
            await asyncio.sleep(min(throttle.maximum, throttle.base * 2 ** (earlier - 1)))
        address = normalize_address(creds.authcid)
        account = self.accounts.get_account(address) if valid_address(address) else None
        authz_ok = not creds.authzid or normalize_address(creds.authzid) == address
        if (account is not None and authz_ok and not earlier
                and self.cache.check(address, account.password_hash, creds.password)):
            throttle.record_success(peer)
            return account
        ok = await asyncio.to_thread(
            verify_password, account.password_hash if account else None, creds.password
        )
        if ok and authz_ok and account is not None:
            throttle.record_success(peer)
            self.cache.remember(address, account.password_hash, creds.password)
            return account
        await asyncio.sleep(throttle.record_failure(peer, creds.authcid, protocol))
        return None
