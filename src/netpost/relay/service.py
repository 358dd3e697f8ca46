"""The relay service's registration: [relay] settings and the queue runner worker.

It has no listener of its own: mail enters the queue through the SMTP listeners (submission
for a user's mail to other domains; the MX for ETRN client domains and forwarding aliases),
and the runner delivers it over SMTP to each domain's MX or a smart host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from netpost.net.workers import Worker
from netpost.registry import BuildContext, ListenerDecl, Service, StreamHandler, setting

TLS_POLICIES = ("opportunistic", "required", "verify", "none")


@dataclass(frozen=True)
class RelayConfig:
    """[relay]: delivering mail to other domains."""

    enabled: bool = setting(True, "accept mail for other domains from logged-in users and "
                            "deliver it (false: submission takes local domains only)")
    smarthost: str = setting("", "HOST[:PORT]: relay everything through this host instead of "
                             "looking up MX records (empty: deliver by MX)")
    smarthost_user: str = setting("", "AUTH user name for the smart host (empty: no AUTH); "
                                  "with it, STARTTLS is required and the smart host's "
                                  "certificate checked")
    smarthost_password_file: str = setting("", "file holding the smart host's password")
    remote_port: int = setting(25, "port of the remote MX hosts (RFC 5321: 25)", positive=True)
    nameservers: tuple[str, ...] = setting((), "DNS servers for MX lookups and inbound checks, as "
                                           "\"IP\" or \"IP:PORT\" "
                                           "(empty: those of /etc/resolv.conf)")
    source_address: str = setting("", "local address outbound connections come from "
                                  "(empty: the system chooses)")
    tls: str = setting("opportunistic", "STARTTLS: opportunistic (when offered, unverified), "
                       "verify (when offered, certificate checked), required (always, "
                       "checked), none")
    ca_file: str = setting("", "CA certificates for checking remote hosts (empty: the "
                           "system's)")
    mta_sts: bool = setting(True, "honour MTA-STS policies (RFC 8461): enforce means TLS with "
                            "a checked certificate to a listed MX")
    mta_sts_port: int = setting(443, "HTTPS port MTA-STS policies are fetched from",
                                positive=True)
    first_retry: float = setting(300.0, "seconds before the first retry of a deferred "
                                 "recipient; each retry waits twice as long", positive=True)
    max_retry: float = setting(14400.0, "the longest wait between retries (4 h)", positive=True)
    max_age: float = setting(432000.0, "seconds after which a message still not delivered is "
                             "bounced (5 days, RFC 5321 4.5.4.1)", positive=True)
    delay_warning: float = setting(14400.0, "send a delay notice (DSN) to the sender after this "
                                   "many seconds (0: never)")
    connections: int = setting(50, "outbound connections at once", positive=True)
    connections_per_domain: int = setting(5, "outbound connections at once to one domain",
                                          positive=True)
    connect_timeout: float = setting(30.0, "seconds to wait for a TCP connection",
                                     positive=True)
    command_timeout: float = setting(300.0, "seconds to wait for a reply (RFC 5321 4.5.3.2: "
                                     "5 minutes; the final dot 10 minutes)", positive=True)
    etrn_domains: tuple[str, ...] = setting((), "client domains whose mail is held until they "
                                            "ask for it with ETRN (RFC 1985); the MX accepts "
                                            "mail for them")
    dkim_sign: bool = setting(True, "DKIM-sign mail users send to other domains when the "
                              "sender's domain has a key (netpost dkim)")

    def validate(self) -> None:
        if self.tls not in TLS_POLICIES:
            raise ValueError(f"tls must be one of {', '.join(TLS_POLICIES)}, not {self.tls!r}")
        if self.max_retry < self.first_retry:
            raise ValueError("max_retry must be at least first_retry")
        if self.smarthost_user and not self.smarthost_password_file:
            raise ValueError("smarthost_user needs smarthost_password_file")
        if self.smarthost_user and self.tls == "none":
            raise ValueError("smarthost_user needs TLS (tls = \"none\" would send the "
                             "password in clear); the smart host's certificate is checked "
                             "against ca_file or the system's CAs")


def build(ctx: BuildContext, decl: ListenerDecl) -> StreamHandler:
    raise TypeError("the relay has no listeners")


def workers(ctx: BuildContext) -> Sequence[Worker]:
    relay = ctx.services.relay
    if relay is None:
        return ()
    return (Worker("relay", relay.run),)


SERVICE = Service(
    name="relay",
    doc="Outbound mail: the queue runner delivering to other domains (RFC 5321 5).",
    settings=RelayConfig,
    listeners=(),
    build=build,
    workers=workers,
)
