"""The services sessions use, built once by the supervisor from the store roles.

A session's constructor names the ones it needs (an SMTP session: delivery and auth; a POP3
session: mailboxes and auth), so its dependencies are visible where it is made.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from netpost.auth.cache import VerifiedCache
from netpost.auth.service import Authenticator
from netpost.auth.throttle import FailureThrottle
from netpost.config import Config
from netpost.files.trees import FileTrees
from netpost.mail.delivery import LocalDelivery, RelayPolicy, UnknownRecipient
from netpost.mail.dns import Resolver
from netpost.mail.mailboxes import Mailboxes
from netpost.runtime import Runtime
from netpost.store.interfaces import ChangeFeed, Stores

if TYPE_CHECKING:
    from netpost.mail.relay import Relay
    from netpost.relay.service import RelayConfig

log = logging.getLogger("netpost.relay")

# Makes a tracer for an outbound session: (name, peer) -> trace(direction, line).
Tracer = Callable[[str, str], Callable[[str, str], None]]


@dataclass(frozen=True)
class Services:
    auth: Authenticator
    delivery: LocalDelivery
    mailboxes: Mailboxes
    changes: ChangeFeed
    stores: Stores  # for services that build their own (a protocol's `build` may use them)
    resolver: Resolver  # DNS for the relay and the inbound checks ([relay] nameservers)
    relay: Relay | None = None  # the outbound queue's runner ([relay] enabled)
    data_dir: Path | None = None  # where services keep their files (users' file trees)
    files: FileTrees | None = None  # each account's file tree (FTP, SFTP); needs data_dir
    config: Config | None = None  # the whole configuration (the web API shows and uses it)
    runtime: Runtime = field(default_factory=Runtime)  # listeners, trace (filled at start)


def relay_config(config: Config) -> RelayConfig:
    from netpost.relay.service import RelayConfig

    settings = config.services.get("relay")
    return settings if isinstance(settings, RelayConfig) else RelayConfig()


def files_quota(config: Config) -> int | None:
    """The octets each account's file tree may hold: [ftp] quota (0: no limit), which SFTP
    shares."""
    settings = config.services.get("ftp")
    quota = getattr(settings, "quota", 0)
    return quota if isinstance(quota, int) and quota > 0 else None


def build_services(stores: Stores, config: Config, *, data_dir: Path | None = None,
                   tracer: Tracer | None = None) -> Services:
    a = config.auth
    throttle = FailureThrottle(a.failure_delay, a.failure_max_delay, a.failure_window)
    rc = relay_config(config)
    held = frozenset(d.lower().rstrip(".") for d in rc.etrn_domains)
    delivery = LocalDelivery(stores.domains, stores.accounts, stores.aliases,
                             stores.mailboxes, stores.delivery, config.server.hostname,
                             RelayPolicy(rc.enabled, held))
    resolver = Resolver(list(rc.nameservers) or None)
    relay = (build_relay(stores, config, rc, delivery, resolver, data_dir, tracer)
             if rc.enabled else None)
    if relay is not None:
        delivery.queued = relay.wake
        if rc.dkim_sign and data_dir is not None:
            from netpost.mail import dkim

            keys = data_dir

            def signer(content: bytes, domain: str) -> bytes:
                try:
                    return dkim.sign(content, domain, keys)
                except dkim.DKIMError as e:  # no From: field; sent unsigned
                    log.warning("not DKIM-signed: %s", e)
                    return b""

            delivery.signer = signer
    return Services(
        auth=Authenticator(stores.accounts, throttle, VerifiedCache(a.verified_cache_ttl)),
        delivery=delivery,
        mailboxes=Mailboxes(stores.mailboxes, stores.messages, stores.blobs, stores.changes,
                            stores.delivery),
        changes=stores.changes,
        stores=stores,
        resolver=resolver,
        relay=relay,
        data_dir=data_dir,
        files=(FileTrees(data_dir / "files", files_quota(config))
               if data_dir is not None else None),
        config=config,
    )


def build_relay(stores: Stores, config: Config, rc: RelayConfig, delivery: LocalDelivery,
                resolver: Resolver, data_dir: Path | None, tracer: Tracer | None) -> Relay:
    from netpost.mail.relay import Relay, RelayOptions
    from netpost.smtp.outbound import Timeouts

    smarthost = None
    auth = None
    if rc.smarthost:
        host, _, port = rc.smarthost.rpartition(":") if ":" in rc.smarthost else (
            rc.smarthost, "", "")
        smarthost = (host.strip("[]"), int(port) if port else 587)
        if rc.smarthost_user:
            password = Path(rc.smarthost_password_file).read_text().strip()
            auth = (rc.smarthost_user, password)
    verify = ssl.create_default_context(cafile=rc.ca_file or None)
    verify.minimum_version = ssl.TLSVersion.TLSv1_2
    t = rc.command_timeout
    timeouts = Timeouts(connect=rc.connect_timeout, greeting=t, command=t, mail=t, rcpt=t,
                        data_init=min(t, 120.0), data_block=min(t, 180.0), final_dot=2 * t)
    options = RelayOptions(
        hostname=config.server.hostname, remote_port=rc.remote_port, smarthost=smarthost,
        smarthost_auth=auth, source_address=rc.source_address or None, tls=rc.tls,
        verify_context=verify, mta_sts=rc.mta_sts, mta_sts_port=rc.mta_sts_port,
        first_retry=rc.first_retry, max_retry=rc.max_retry, max_age=rc.max_age,
        delay_warning=rc.delay_warning, connections=rc.connections,
        connections_per_domain=rc.connections_per_domain, timeouts=timeouts,
        held_domains=delivery.relay.held_domains,
    )

    async def notify(report: bytes, recipient: str) -> None:
        # RFC 3461 6 / RFC 5321 4.5.5: notices go out with the null reverse-path.
        try:
            await delivery.submit(report, mail_from="", recipients=[recipient],
                                  origin="delivery notice")
        except UnknownRecipient:
            # A local sender that no longer exists: nobody to tell (RFC 3464 has no
            # notice about a notice); dropped with a log line.
            log.warning("delivery notice for <%s> dropped: no such local user", recipient)

    return Relay(stores.queue, stores.blobs, options, resolver, notify=notify, trace=tracer,
                 policy_dir=data_dir / "mta-sts" if data_dir is not None else None)
