"""What the MX does with the verdict of the inbound checks (DKIM, SPF, DMARC).

`mail.authcheck` judges a message; this service decides: which clients are checked at all,
the Authentication-Results field to add (after removing any that claims our name), and what
a failed DMARC check leads to when the author domain's policy asks for it (RFC 7489 6.7):
`reject` refuses the message in the SMTP dialogue (550 5.7.1, RFC 7489 6.7 / 10.3), and
`quarantine` files it in the recipients' Junk mailbox.

Mail from the networks in `[smtp] auth_checks_skip` (loopback by default: local programs
and the host's own tools, as OpenDKIM's InternalHosts and OpenDMARC's IgnoreHosts default to
127.0.0.1) is not checked; neither is authenticated submission.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from netpost.mail import authcheck

log = logging.getLogger("netpost.smtp")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class InboundVerdict:
    header: bytes  # Authentication-Results field to prepend ("" when not checked)
    content: bytes  # the message without forged Authentication-Results fields of ours
    action: str  # "accept", "quarantine" or "reject"
    reason: str = ""  # for a reject: what to say to the client


def parse_networks(specs: Sequence[str]) -> tuple[Network, ...]:
    """ "127.0.0.0/8", "::1", "192.0.2.7" → networks; ValueError names a bad one."""
    out: list[Network] = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{spec!r} is not an IP address or network") from None
    return tuple(out)


class InboundChecks:
    """DKIM/SPF/DMARC on mail arriving at the MX, and the DMARC policy applied."""

    def __init__(self, resolver: authcheck.AuthResolver, hostname: str, *,
                 skip: Sequence[Network] = (), enforce_dmarc: bool = True) -> None:
        self.resolver = resolver
        self.hostname = hostname
        self.skip = tuple(skip)
        self.enforce_dmarc = enforce_dmarc
        self.checked = 0
        self.rejected = 0
        self.quarantined = 0

    def applies_to(self, client_ip: str) -> bool:
        try:
            address = ipaddress.ip_address(client_ip.partition("%")[0])
        except ValueError:
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return not any(address in net for net in self.skip)

    async def judge(self, content: bytes, *, client_ip: str, helo: str | None,
                    mail_from: str) -> InboundVerdict:
        if not self.applies_to(client_ip):
            return InboundVerdict(b"", content, "accept")
        # RFC 8601 5: fields claiming our authserv-id come from someone else; remove them.
        content = authcheck.strip_our_results(content, self.hostname)
        try:
            verdict = await authcheck.check(content, client_ip=client_ip, helo=helo,
                                            mail_from=mail_from, resolver=self.resolver,
                                            hostname=self.hostname)
        except Exception:
            # The checks must never cost a message: deliver it unjudged and say so in the log.
            log.exception("inbound checks failed for a message from %s", client_ip)
            return InboundVerdict(b"", content, "accept")
        self.checked += 1
        disposition = verdict.disposition if self.enforce_dmarc else "none"
        if disposition == "reject":
            self.rejected += 1
            domain = next((r.from_domain for r in verdict.dmarc_results
                           if r.result == "fail"), "the author domain")
            return InboundVerdict(verdict.header, content, "reject",
                                  f"Message rejected by the DMARC policy of {domain} "
                                  "(no aligned DKIM or SPF pass)")
        if disposition == "quarantine":
            self.quarantined += 1
            return InboundVerdict(verdict.header, content, "quarantine")
        return InboundVerdict(verdict.header, content, "accept")
