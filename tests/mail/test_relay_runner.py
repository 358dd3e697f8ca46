"""The relay runner's bound on message content in memory across concurrent sends, and the
settings it refuses."""

from __future__ import annotations

import asyncio

import pytest

from netpost.config import ConfigError, from_dict
from netpost.mail.relay import ByteBudget


def test_waits_for_room_and_lets_an_oversized_message_go_alone() -> None:
    async def run() -> list[str]:
        budget = ByteBudget(100)
        order: list[str] = []
        release = asyncio.Event()

        async def send(name: str, size: int, wait: bool = False) -> None:
            async with budget.hold(size):
                order.append(f"+{name}")
                assert budget.used <= 100 or budget.used == size
                if wait:
                    await release.wait()
            order.append(f"-{name}")

        first = asyncio.create_task(send("a", 60, wait=True))
        await asyncio.sleep(0)
        second = asyncio.create_task(send("b", 50))  # 60 + 50 > 100: waits for a
        big = asyncio.create_task(send("big", 500))  # larger than the budget: alone
        await asyncio.sleep(0.01)
        assert order == ["+a"] and budget.used == 60
        release.set()
        await asyncio.gather(first, second, big)
        assert budget.used == 0
        return order

    order = asyncio.run(run())
    assert order[:2] == ["+a", "-a"]
    assert set(order[2:]) == {"+b", "-b", "+big", "-big"}
    i, j = order.index("+big"), order.index("-big")
    assert j == i + 1  # nothing else held content while the oversized one did


@pytest.mark.parametrize(("relay", "error"), [
    ({"tls": "sometimes"}, "tls must be one of"),
    ({"first_retry": 600.0, "max_retry": 60.0}, "max_retry must be at least first_retry"),
    ({"smarthost_user": "me"}, "smarthost_user needs smarthost_password_file"),
    ({"smarthost_user": "me", "smarthost_password_file": "/x", "tls": "none"},
     "smarthost_user needs TLS"),
])
def test_relay_settings_refused(relay: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=f"relay: {error}"):
        from_dict({"relay": relay})
