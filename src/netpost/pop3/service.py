"""The POP3 service's registration: pop3 (STLS) and pop3s (implicit TLS), [pop3]."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from netpost.net.stream import StreamListener
from netpost.pop3.protocol import POP3Settings
from netpost.pop3.server import POP3Session, refuse_line
from netpost.registry import BuildContext, ListenerDecl, Service, StreamHandler, TLSMode, setting


@dataclass(frozen=True)
class POP3Config:
    """[pop3]: settings of the POP3 listeners."""

    idle_timeout: float = setting(600.0, "seconds a client may stay silent (RFC 1939 3: at "
                                  "least 10 minutes)", positive=True)

    RENAMED: ClassVar[dict[str, str]] = {"limits.pop3_idle_timeout": "idle_timeout"}


def build(ctx: BuildContext, decl: ListenerDecl) -> StreamHandler:
    cfg = ctx.config
    pop3: POP3Config = ctx.settings
    settings = POP3Settings(
        allow_plaintext_auth=cfg.auth.allow_plaintext,
        max_errors=cfg.limits.max_errors,
    )
    hostname = cfg.server.hostname
    mailboxes, auth = ctx.services.mailboxes, ctx.services.auth

    def factory(listener: StreamListener, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter, peer: str) -> POP3Session:
        return POP3Session(listener, reader, writer, peer, settings=settings, hostname=hostname,
                           mailboxes=mailboxes, auth=auth)

    return StreamHandler(factory, refuse_line, pop3.idle_timeout)


SERVICE = Service(
    name="pop3",
    doc="POP3 (RFC 1939): the maildrop is each account's INBOX.",
    settings=POP3Config,
    listeners=(
        ListenerDecl("pop3", "pop3", 110, "POP3, STLS"),  # RFC 2595
        ListenerDecl("pop3s", "pop3", 995, "POP3, implicit TLS", tls=TLSMode.IMPLICIT),  # RFC 8314
    ),
    build=build,
)
