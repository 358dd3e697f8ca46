"""LocalDelivery rules on a real SQLite store: recipients, aliases, sender ownership."""

from __future__ import annotations

from pathlib import Path

import pytest

from netpost.mail.delivery import LocalDelivery, NotLocal, UnknownRecipient
from netpost.store.embedded import open_stores


@pytest.fixture()
def delivery(tmp_path: Path):  # type: ignore[no-untyped-def]
    stores = open_stores(tmp_path)
    for domain in ("example.org", "other.org"):
        stores.domains.add_domain(domain)
    for user in ("alice", "bob"):
        stores.accounts.add_account(f"{user}@example.org", "x")
    yield LocalDelivery(stores.domains, stores.accounts, stores.aliases, stores.mailboxes,
                        stores.delivery, "mx.example.org")
    stores.close()


def test_catch_all_never_makes_another_account_ownable(delivery: LocalDelivery) -> None:
    delivery.aliases.add_alias("@example.org", "alice@example.org")
    delivery.aliases.add_alias("sales@example.org", "alice@example.org")
    assert delivery.owns("alice@example.org", "alice@example.org")
    assert delivery.owns("alice@example.org", "sales@example.org")
    assert not delivery.owns("alice@example.org", "bob@example.org")  # an account
    assert not delivery.owns("alice@example.org", "random@example.org")  # only the catch-all
    assert not delivery.owns("bob@example.org", "sales@example.org")
    # ... while for delivery the catch-all does apply.
    assert delivery.resolve("random@example.org").mailbox_ids


def test_recipients(delivery: LocalDelivery) -> None:
    with pytest.raises(NotLocal):
        delivery.resolve("x@elsewhere.example")
    with pytest.raises(UnknownRecipient):
        delivery.resolve("nobody@example.org")
    with pytest.raises(UnknownRecipient):  # cached negative answers raise fresh exceptions
        delivery.resolve("nobody@example.org")
    assert delivery.resolve("Alice@Example.ORG").address == "alice@example.org"
