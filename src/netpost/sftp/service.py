"""The SFTP service's registration: the `sftp` listener (SSH, 22 + 10000) and [sftp].

asyncssh serves the socket netpost binds (`ServerHandler`); the host key is made on first
start (DATA/ssh/host_ed25519) and its fingerprint logged, as clients show it.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

import asyncssh

from netpost.net.served import ServedListener
from netpost.registry import BuildContext, ListenerDecl, ServerHandler, Service, TLSMode, setting
from netpost.sftp.keys import AuthorizedKeys, ensure_host_key, fingerprint
from netpost.sftp.server import SFTPContext, SSHSession, sftp_factory

log = logging.getLogger("netpost.sftp")


@dataclass(frozen=True)
class SFTPConfig:
    """[sftp]: SFTP over SSH on each account's file tree (the FTP tree and [ftp] quota)."""

    idle_timeout: float = setting(300.0, "seconds an SSH connection may stay without a "
                                  "request (a running transfer counts as activity)",
                                  positive=True)
    login_grace: float = setting(60.0, "seconds a client has to log in after connecting",
                                 positive=True)
    keepalive: float = setting(60.0, "seconds between SSH keepalive probes of a silent "
                               "client (3 unanswered close the connection; 0: none)")

    def validate(self) -> None:
        if self.keepalive < 0:
            raise ValueError("keepalive must be 0 (none) or a number of seconds")


def build(ctx: BuildContext, decl: ListenerDecl) -> ServerHandler:
    settings: SFTPConfig = ctx.settings
    services = ctx.services
    data_dir = services.data_dir
    if data_dir is None or services.files is None:
        raise ValueError("SFTP needs a data directory for the users' file trees")
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # asyncssh logs every connection and channel at INFO; netpost's trace says it better.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
    host_key, path, made = ensure_host_key(data_dir)
    if made:
        log.info("made an SSH host key: %s", path)
    log.info("SSH host key %s %s", host_key.get_algorithm(), fingerprint(host_key))
    keys = AuthorizedKeys(data_dir)
    trees = services.files

    async def serve(sock: socket.socket, listener: ServedListener) -> asyncssh.SSHAcceptor:
        context = SFTPContext(auth=services.auth, accounts=services.stores.accounts,
                              trees=trees, keys=keys, listener=listener,
                              idle_timeout=settings.idle_timeout)
        return await asyncssh.listen(
            sock=sock,
            server_factory=lambda: SSHSession(context),
            server_host_keys=[host_key],
            sftp_factory=sftp_factory(context),
            sftp_version=3,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_pty=False,
            login_timeout=settings.login_grace,
            keepalive_interval=settings.keepalive,
            keepalive_count_max=3,
            server_version="netpost",
        )

    return ServerHandler(serve)


SERVICE = Service(
    name="sftp",
    doc="SFTP (SSH File Transfer Protocol v3) on each account's file tree (the FTP tree, "
        "with [ftp] quota): password or public keys ('netpost user key add'); no shell, exec, "
        "SCP or forwarding.",
    settings=SFTPConfig,
    listeners=(ListenerDecl("sftp", "sftp", 22, "SFTP (SSH)", tls=TLSMode.NONE),),
    build=build,
)
