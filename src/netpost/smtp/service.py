"""The SMTP service's registration: the MX listener, submission on 587 and 465, [smtp]."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from netpost.mail.inbound import InboundChecks, parse_networks
from netpost.net.stream import StreamListener
from netpost.registry import BuildContext, ListenerDecl, Service, StreamHandler, TLSMode, setting
from netpost.smtp.protocol import SMTPSettings
from netpost.smtp.server import SMTPSession, refuse_line


@dataclass(frozen=True)
class SMTPConfig:
    """[smtp]: settings of the MX and submission listeners."""

    idle_timeout: float = setting(300.0, "seconds a client may stay silent (RFC 5321 4.5.3.2.7: "
                                  "5 minutes)", positive=True)
    max_recipients: int = setting(100, "per message; more get 452 4.5.3 (RFC 5321 4.5.3.1.8)",
                                  positive=True)
    auth_checks: bool = setting(True, "check DKIM, SPF and DMARC of mail arriving at the MX and "
                                "add an Authentication-Results field (RFC 8601); DNS through "
                                "[relay] nameservers")
    auth_checks_skip: tuple[str, ...] = setting(
        ("127.0.0.0/8", "::1"), "client networks whose mail is not checked (local programs)")
    dmarc_enforce: bool = setting(True, "apply the author domain's DMARC policy when the check "
                                  "fails (RFC 7489 6.7): reject refuses the message (550 5.7.1), "
                                  "quarantine files it in Junk")

    def validate(self) -> None:
        parse_networks(self.auth_checks_skip)

    # Settings an older netpost.toml kept in [limits].
    RENAMED: ClassVar[dict[str, str]] = {"limits.idle_timeout": "idle_timeout",
                                         "limits.max_recipients": "max_recipients"}


def build(ctx: BuildContext, decl: ListenerDecl) -> StreamHandler:
    cfg = ctx.config
    smtp: SMTPConfig = ctx.settings
    submission = decl.protocol == "submission"
    settings = SMTPSettings(
        hostname=cfg.server.hostname,
        submission=submission,
        auth_enabled=submission,
        allow_plaintext_auth=cfg.auth.allow_plaintext,
        max_message_size=cfg.limits.max_message_size,
        max_recipients=smtp.max_recipients,
        max_errors=cfg.limits.max_errors,
    )
    delivery, auth = ctx.services.delivery, ctx.services.auth
    # RFC 1985: ETRN on the MX, for the client domains whose mail is held.
    if not submission and delivery.relay.held_domains and ctx.services.relay is not None:
        settings = dataclasses.replace(settings, etrn_enabled=True)
    relay = ctx.services.relay
    checks = None
    if not submission and smtp.auth_checks:
        checks = InboundChecks(ctx.services.resolver, cfg.server.hostname,
                               skip=parse_networks(smtp.auth_checks_skip),
                               enforce_dmarc=smtp.dmarc_enforce)

    def factory(listener: StreamListener, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter, peer: str) -> SMTPSession:
        return SMTPSession(listener, reader, writer, peer, settings=settings,
                           delivery=delivery, auth=auth, relay=relay, checks=checks)

    return StreamHandler(factory, refuse_line, smtp.idle_timeout)


SERVICE = Service(
    name="smtp",
    doc="SMTP: the MX listener (mail for local domains) and submission (RFC 6409, RFC 8314).",
    settings=SMTPConfig,
    listeners=(
        # MX: receives mail for local domains (RFC 5321).
        ListenerDecl("smtp", "smtp", 25, "SMTP MX (mail for local domains), STARTTLS"),
        # STARTTLS + AUTH required (RFC 6409).
        ListenerDecl("submission", "submission", 587,
                     "SMTP submission, STARTTLS + AUTH required"),
        # Implicit TLS (RFC 8314 3.3).
        ListenerDecl("submissions", "submission", 465,
                     "SMTP submission, implicit TLS + AUTH required", tls=TLSMode.IMPLICIT),
    ),
    build=build,
)
