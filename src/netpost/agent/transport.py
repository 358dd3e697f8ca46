"""Submission (RFC 6409) with smtplib and POP3 (RFC 1939) with poplib, TLS as the account
says, the pinned certificate checked right after each handshake."""

from __future__ import annotations

import poplib
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from netpost.agent import AgentError
from netpost.agent.account import Account


class _PinnedSMTP_SSL(smtplib.SMTP_SSL):
    account: Account

    def _get_socket(self, host: str, port: int, timeout: float) -> Any:
        sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self.account.check_pin(sock, f"smtp {host}:{port}")  # before the greeting
        return sock


def submit(account: Account, message: EmailMessage, recipients: Sequence[str],
           timeout: float = 60.0) -> bytes:
    """Send `message` to `recipients` (the envelope, Bcc included) by submission; the
    message is sent without its Bcc field (RFC 5322 3.6.3).  Returns the octets sent."""
    ep = account.smtp
    where = f"smtp {ep.host}:{ep.port}"
    wire = _without_bcc(message)
    try:
        if ep.tls == "implicit":
            _PinnedSMTP_SSL.account = account
            client: smtplib.SMTP = _PinnedSMTP_SSL(ep.host, ep.port, timeout=timeout,
                                                   context=account.ssl_context())
        else:
            client = smtplib.SMTP(ep.host, ep.port, timeout=timeout)
            if ep.tls == "starttls":
                client.starttls(context=account.ssl_context())
                account.check_pin(client.sock, where)
        with client:
            client.login(account.user, account.password())
            refused = client.sendmail(account.address, list(recipients), wire)
    except smtplib.SMTPRecipientsRefused as exc:
        first = next(iter(exc.recipients.items()))
        raise AgentError(f"{where}: every recipient was refused ({first[0]}: "
                         f"{first[1][0]} {first[1][1].decode('utf-8', 'replace')})") from None
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) \
            else str(exc.smtp_error)
        raise AgentError(f"{where}: {exc.smtp_code} {text}") from None
    except (TimeoutError, smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        if isinstance(exc, AgentError):
            raise
        raise AgentError(f"{where}: {exc}") from None
    if refused:
        bad = ", ".join(f"{r} ({c} {t.decode('utf-8', 'replace')})"
                        for r, (c, t) in refused.items())
        raise AgentError(f"sent, but these recipients were refused: {bad}")
    return wire


def _without_bcc(message: EmailMessage) -> bytes:
    bcc = message.get_all("Bcc")
    del message["Bcc"]
    try:
        return message.as_bytes(policy=SMTP)
    finally:
        for value in bcc or ():
            message["Bcc"] = value


class _PinnedPOP3_SSL(poplib.POP3_SSL):
    account: Account

    def _create_socket(self, timeout: float) -> Any:
        sock = super()._create_socket(timeout)  # type: ignore[misc]
        self.account.check_pin(sock, f"pop3 {self.host}:{self.port}")
        return sock


class Pop3Session:
    """A POP3 maildrop (RFC 1939); messages are named by UIDL (section 7), which is stable
    across sessions where message numbers are not."""

    def __init__(self, account: Account, timeout: float = 60.0) -> None:
        ep = account.pop3
        where = f"pop3 {ep.host}:{ep.port}"
        try:
            if ep.tls == "implicit":
                _PinnedPOP3_SSL.account = account
                self.conn: poplib.POP3 = _PinnedPOP3_SSL(ep.host, ep.port, timeout=timeout,
                                                         context=account.ssl_context())
            else:
                self.conn = poplib.POP3(ep.host, ep.port, timeout=timeout)
                if ep.tls == "starttls":
                    self.conn.stls(account.ssl_context())  # RFC 2595 4
                    account.check_pin(self.conn.sock, where)
            self.conn.user(account.user)
            self.conn.pass_(account.password())
        except (poplib.error_proto, OSError) as exc:
            raise AgentError(f"{where}: {_text(exc)}") from None

    def __enter__(self) -> Pop3Session:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.conn.quit()  # DELE takes effect here (RFC 1939 6)
        except (poplib.error_proto, OSError):
            pass

    def uidls(self) -> list[tuple[int, str]]:
        _, lines, _ = self.conn.uidl()
        out = []
        for line in lines:
            number, _, uid = line.decode("ascii", "replace").partition(" ")
            out.append((int(number), uid))
        return out

    def sizes(self) -> dict[int, int]:
        _, lines, _ = self.conn.list()
        return {int(a): int(b) for a, b in (line.split()[:2] for line in lines)}

    def number_of(self, uid: str) -> int:
        for number, u in self.uidls():
            if u == uid:
                return number
        raise AgentError(f"no message with UIDL {uid} in the POP3 maildrop")

    def headers(self, number: int) -> bytes:
        _, lines, _ = self.conn.top(number, 0)
        return b"\r\n".join(lines) + b"\r\n"

    def message(self, number: int) -> bytes:
        _, lines, _ = self.conn.retr(number)
        return b"\r\n".join(lines) + b"\r\n"

    def delete(self, number: int) -> None:
        self.conn.dele(number)


def _text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
