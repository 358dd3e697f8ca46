"""The IMAP service's registration: imap (STARTTLS) and imaps (implicit TLS), [imap]."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from netpost import __version__
from netpost.imap.protocol import IMAPSettings
from netpost.imap.server import IMAPSession, refuse_line
from netpost.net.stream import StreamListener
from netpost.registry import BuildContext, ListenerDecl, Service, StreamHandler, TLSMode, setting


@dataclass(frozen=True)
class IMAPConfig:
    """[imap]: settings of the IMAP listeners."""

    idle_timeout: float = setting(1800.0, "seconds a client may stay silent, IDLE included "
                                  "(RFC 9051 5.4: at least 30 minutes)", positive=True)
    quota: int = setting(0, "default storage quota per account in octets (RFC 9208); 0 = none; "
                         "'netpost user quota' sets one account's")
    compress: bool = setting(True, "offer COMPRESS=DEFLATE (RFC 4978)")


def build(ctx: BuildContext, decl: ListenerDecl) -> StreamHandler:
    cfg = ctx.config
    imap: IMAPConfig = ctx.settings
    settings = IMAPSettings(
        allow_plaintext_auth=cfg.auth.allow_plaintext,
        max_errors=cfg.limits.max_errors,
        max_literal=cfg.limits.max_message_size,
        version=__version__,
        compress=imap.compress,
    )
    hostname = cfg.server.hostname
    mailboxes, auth = ctx.services.mailboxes, ctx.services.auth

    def factory(listener: StreamListener, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter, peer: str) -> IMAPSession:
        return IMAPSession(listener, reader, writer, peer, settings=settings, hostname=hostname,
                           mailboxes=mailboxes, auth=auth, quota=imap.quota)

    return StreamHandler(factory, refuse_line, imap.idle_timeout)


SERVICE = Service(
    name="imap",
    doc="IMAP4rev2 and IMAP4rev1 (RFC 9051, RFC 3501) on every account's mailboxes.",
    settings=IMAPConfig,
    listeners=(
        ListenerDecl("imap", "imap", 143, "IMAP, STARTTLS"),  # RFC 9051 6.2.1
        ListenerDecl("imaps", "imap", 993, "IMAP, implicit TLS", tls=TLSMode.IMPLICIT),  # RFC 8314
    ),
    build=build,
)
