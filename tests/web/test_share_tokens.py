"""Share tokens: 32 URL-safe characters, never read as a command-line option."""

from __future__ import annotations

import re

from netpost.web.shares import new_token


def test_tokens_never_start_with_a_dash() -> None:
    # One in 64 of secrets.token_urlsafe's strings starts with "-": 5,000 draws would meet
    # ~78 of them.  `netpost share remove -xyz...` failed in CI on such a token.
    tokens = {new_token() for _ in range(5000)}
    assert len(tokens) == 5000
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{31}", t) for t in tokens)
