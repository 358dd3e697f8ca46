"""The services sessions use, built once by the supervisor from the store roles.

A session's constructor names the ones it needs (an SMTP session: delivery and auth; a POP3
session: mailboxes and auth), so its dependencies are visible where it is made.
"""

from __future__ import annotations

from dataclasses import dataclass

from netpost.auth.service import Authenticator
from netpost.auth.throttle import FailureThrottle
from netpost.config import Config
from netpost.mail.delivery import LocalDelivery
from netpost.mail.mailboxes import Mailboxes
from netpost.store.interfaces import ChangeFeed, Stores


@dataclass(frozen=True)
class Services:
    auth: Authenticator
    delivery: LocalDelivery
    mailboxes: Mailboxes
    changes: ChangeFeed
    stores: Stores  # for services that build their own (a protocol's `build` may use them)


def build_services(stores: Stores, config: Config) -> Services:
    a = config.auth
    throttle = FailureThrottle(a.failure_delay, a.failure_max_delay, a.failure_window)
    return Services(
        auth=Authenticator(stores.accounts, throttle),
        delivery=LocalDelivery(stores.domains, stores.accounts, stores.aliases,
                               stores.mailboxes, stores.delivery, config.server.hostname),
        mailboxes=Mailboxes(stores.mailboxes, stores.messages, stores.blobs, stores.changes,
                            stores.delivery),
        changes=stores.changes,
        stores=stores,
    )
