"""Delivery status notifications: the bounce, delay and success reports an MTA sends.

`build_dsn` makes one multipart/report (RFC 6522) with report-type=delivery-status:

1. a text/plain part in plain English for the person who sent the message;
2. the machine-readable report, message/delivery-status (RFC 3464 2.2, 2.3), or
   message/global-delivery-status (RFC 6533 3) when an address is not ASCII;
3. the original: message/rfc822 (message/global for UTF-8 headers, RFC 6532 3.7) or only its
   header as text/rfc822-headers (message/global-headers, RFC 6533 6.3).

Everything is built with the standard `email` package.  The original is carried verbatim
(its bytes unchanged, so a DKIM signature in it still verifies).  Every value that comes from
the network (a remote reply, an address, an envelope id) is reduced to one line first, so it
can never add header lines or break the report's structure.

A DSN is sent with the null reverse-path, MAIL FROM:<> (RFC 3461 6, RFC 5321 4.5.5), and
never in answer to a message whose reverse-path was null (RFC 3461 6.2, RFC 5321 6.1).
`wants_dsn` says whether a recipient's NOTIFY asks for a report (RFC 3461 4.1).
"""

from __future__ import annotations

import datetime
import email.policy
import io
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import Message, MIMEPart
from email.utils import format_datetime, make_msgid
from typing import Literal

from netpost.mail.message import header_end

__all__ = [
    "MAX_RETURNED",
    "Action",
    "RecipientStatus",
    "build_dsn",
    "wants_dsn",
]

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_SUCCESS = frozenset({"delivered", "relayed", "expanded"})

MAX_RETURNED = 256 * 1024  # a larger original is returned as its header only
_MAX_DIAGNOSTIC = 900  # characters of a remote reply kept (the field stays under 998 octets)
_MAX_VALUE = 512  # characters kept of any other value from outside

# RFC 3463 2: status-code = class "." subject "." detail
_STATUS_RE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
# RFC 3464 2.3.6: diagnostic-type ";" *text; an SMTP reply text never starts like this.
_DIAG_TYPE_RE = re.compile(r"([A-Za-z][A-Za-z0-9-]*)[ \t]*;[ \t]*(.*)", re.DOTALL)
_CONTROLS_RE = re.compile(r"[\x00-\x1f\x7f\x80-\x9f\u2028\u2029]+")
_SPACES_RE = re.compile(r" {2,}")
_BARE_EOL_RE = re.compile(rb"\r\n|\r|\n")

# Policies: CRLF line ends (RFC 5322 2.1); no folding below 998 octets (RFC 5322 2.1.1), so
# the email package never rewrites a long report field as RFC 2047 encoded words.
_POLICY = email.policy.SMTP.clone(max_line_length=998)
_UTF8_POLICY = email.policy.SMTPUTF8.clone(max_line_length=998)  # RFC 6532 raw UTF-8
_TEXT_POLICY = email.policy.SMTP.clone(cte_type="7bit")  # the text part travels 7-bit safe


@dataclass(frozen=True)
class RecipientStatus:
    """What happened to one recipient (the per-recipient fields of RFC 3464 2.3)."""

    final_recipient: str  # the address tried, without angle brackets
    original_recipient: tuple[str, str] | None  # RFC 3461 ORCPT (type, decoded address)
    action: Action
    status: str  # RFC 3463 code, e.g. "5.1.1"
    remote_mta: str | None = None  # host name of the server that answered
    diagnostic: str | None = None  # the remote reply, "smtp; 550 5.1.1 ..." or "550 5.1.1 ..."
    last_attempt: float | None = None  # POSIX time of the last attempt
    will_retry_until: float | None = None  # POSIX time the queue gives up (delayed only)

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            raise ValueError(f"unknown DSN action {self.action!r}")  # RFC 3464 2.3.3
        if _STATUS_RE.fullmatch(self.status) is None:
            raise ValueError(f"bad status code {self.status!r}")  # RFC 3463 2
        if not self.final_recipient:
            raise ValueError("a DSN needs the final recipient")  # RFC 3464 2.3.2


def wants_dsn(notify: frozenset[str] | None, action: str) -> bool:
    """Whether a recipient with this NOTIFY gets a DSN for this action (RFC 3461 4.1).

    No NOTIFY: by local policy, failure and delay notices but no success reports.  NEVER:
    none.  A list: only what it names (SUCCESS covers delivered, relayed and expanded).
    """
    if action not in _ACTIONS:
        raise ValueError(f"unknown DSN action {action!r}")
    if notify is None:
        return action in ("failed", "delayed")
    if "NEVER" in notify:
        return False
    if action == "failed":
        return "FAILURE" in notify
    if action == "delayed":
        return "DELAY" in notify
    return "SUCCESS" in notify


def build_dsn(
    *,
    reporting_mta: str,
    original: bytes,
    envelope_from: str,
    envid: str | None,
    ret: str | None,
    recipients: Sequence[RecipientStatus],
    arrival: float,
    now: float,
    postmaster: str,
) -> bytes:
    """A DSN for `original` (its exact bytes) to `envelope_from`, as CRLF-terminated bytes.

    Send it with MAIL FROM:<> (RFC 3461 6).  It contains 8-bit data when the original does
    and UTF-8 header fields (RFC 6532) when an address is not ASCII: then the transfer needs
    8BITMIME and SMTPUTF8 respectively.
    """
    if not envelope_from:
        raise ValueError("no DSN is sent for a null reverse-path (RFC 3461 6.2)")
    if not recipients:
        raise ValueError("a DSN reports on at least one recipient (RFC 3464 2.1)")
    if ret is not None and ret.upper() not in ("FULL", "HDRS"):
        raise ValueError(f"RET must be FULL or HDRS, not {ret!r}")  # RFC 3461 4.3
    reporting_mta = _one_line(reporting_mta)
    envid = None if envid is None else _one_line(envid)
    global_report = any(
        not r.final_recipient.isascii()
        or (r.original_recipient is not None and not r.original_recipient[1].isascii())
        for r in recipients
    )
    header_policy = _UTF8_POLICY if not (envelope_from + postmaster).isascii() else _POLICY

    report = MIMEPart(policy=header_policy)
    report["From"] = _address(postmaster, "Mail Delivery System")
    report["To"] = _address(envelope_from)
    report["Subject"] = _subject(recipients)
    report["Date"] = _date(now)
    report["Message-ID"] = make_msgid("dsn", domain=_ascii_host(reporting_mta))
    report["MIME-Version"] = "1.0"
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834 5, RFC 3461 6.2
    report["Content-Type"] = "multipart/report"
    report.set_param("report-type", "delivery-status")  # RFC 6522 3

    returned, whole = _returned_part(original, ret, recipients)
    report.attach(_text_part(reporting_mta, recipients, whole, len(original), ret))
    report.attach(
        _status_part(reporting_mta, envid, arrival, recipients, global_report=global_report)
    )
    report.attach(returned)
    out = io.BytesIO()
    _VerbatimGenerator(out, policy=header_policy).flatten(report)
    return out.getvalue()


class _VerbatimGenerator(BytesGenerator):
    """BytesGenerator that also writes a message/* payload given as text with its 8-bit
    octets (held as surrogateescape characters) unchanged, as it already does for text/*."""

    def _encode(self, s: str) -> bytes:
        return s.encode("ascii", "surrogateescape")


def _address(addr_spec: str, display_name: str = "") -> Address:
    """A header address from an envelope address; a UTF-8 local part is allowed (RFC 6532)."""
    local, _, domain = addr_spec.rpartition("@")
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = re.sub(r"\\(.)", r"\1", local[1:-1])  # RFC 5321 4.1.2 Quoted-string
    return Address(display_name, username=_one_line(local), domain=_one_line(domain))


# --- the human-readable part ------------------------------------------------------------------

_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
}


def _kind(action: str) -> str:
    return "success" if action in _SUCCESS else action


def _subject(recipients: Sequence[RecipientStatus]) -> str:
    kinds = {_kind(r.action) for r in recipients}
    return _SUBJECTS[kinds.pop()] if len(kinds) == 1 else "Mail Delivery Status Report"


# What the sender can do, by status class and subject (RFC 3463 3.x).
_ADVICE = {
    "1": "Check the address for typing mistakes; the address may not exist (any more).",
    "2": "The recipient's mailbox could not take the message (it may be full or disabled); "
    "try again later or reach the recipient another way.",
    "3": "The receiving mail system had a problem; try again later or contact its "
    "administrator.",
    "4": "The receiving system could not be reached or did not answer in time; check the "
    "domain name of the address.",
    "5": "The mail systems could not agree on how to transfer the message.",
    "6": "The message's content or format was not accepted; try sending it in a simpler "
    "form (for example without attachments).",
    "7": "The receiving system refused the message by its security or spam policy; contact "
    "the recipient another way if the message is legitimate.",
}


def _text_part(
    reporting_mta: str,
    recipients: Sequence[RecipientStatus],
    whole: bool,
    size: int,
    ret: str | None,
) -> MIMEPart:
    paras = [f"This is the mail system at {reporting_mta}."]
    groups: dict[str, list[RecipientStatus]] = {}
    for r in recipients:
        groups.setdefault(_kind(r.action), []).append(r)
    if "failed" in groups:
        paras.append(
            "Your message could not be delivered to the recipients below. This is a "
            "permanent error; the mail system has given up on them."
        )
        paras.extend(_describe(r) for r in groups["failed"])
    if "delayed" in groups:
        paras.append(
            "Your message has not been delivered yet to the recipients below. The mail "
            "system will keep trying; you do not need to send the message again."
        )
        paras.extend(_describe(r) for r in groups["delayed"])
    if "success" in groups:
        paras.append("Your message was handed on successfully for the recipients below.")
        paras.extend(_describe(r) for r in groups["success"])
    if whole:
        paras.append("Your message is attached.")
    elif size > MAX_RETURNED and ret != "HDRS":
        paras.append(
            f"Your message was larger than {MAX_RETURNED // 1024} KiB, so only its header "
            "is attached."
        )
    else:
        paras.append("The header of your message is attached.")
    wrapped = [textwrap.fill(p, 76, break_long_words=False, break_on_hyphens=False)
               if "\n" not in p else p for p in paras]
    part = MIMEPart(policy=_TEXT_POLICY)
    part.set_content("\n\n".join(wrapped) + "\n", disposition="inline")
    part["Content-Description"] = "Notification"
    return part


def _describe(r: RecipientStatus) -> str:
    who = _one_line(r.final_recipient)
    if r.original_recipient is not None and r.original_recipient[1] != r.final_recipient:
        who += f" (originally {_one_line(r.original_recipient[1])})"
    lines = [f"<{who}>"]
    what = {
        "failed": "delivery failed",
        "delayed": "delivery delayed",
        "delivered": "delivered to the recipient's mailbox",
        "relayed": "relayed to a mail system that sends no delivery reports",
        "expanded": "delivered to a list or alias, which passed it on",
    }[r.action]
    lines.append(f"    {what} (status {r.status})")
    if r.diagnostic:
        reply = _diagnostic(r.diagnostic)[1]
        said = (f"The remote server {_one_line(r.remote_mta)} answered: {reply}"
                if r.remote_mta else f"The last attempt ended with: {reply}")
        lines.append(
            textwrap.fill(
                said,
                76,
                initial_indent="    ",
                subsequent_indent="      ",
                break_long_words=True,
            )
        )
    elif r.remote_mta:
        lines.append(f"    via {_one_line(r.remote_mta)}")
    if r.last_attempt is not None:
        lines.append(f"    last attempt: {_date(r.last_attempt)}")
    if r.action == "delayed" and r.will_retry_until is not None:
        lines.append(f"    the mail system will keep trying until {_date(r.will_retry_until)}")
    if r.action == "failed":
        subject = r.status.split(".")[1]
        if r.status == "4.4.7" or r.status.startswith("4."):
            advice = ("The message could not be delivered in the time allowed; try again "
                      "later or reach the recipient another way.")
        else:
            advice = _ADVICE.get(subject, "Contact your mail administrator if this persists.")
        lines.append(
            textwrap.fill(advice, 76, initial_indent="    What you can do: ",
                          subsequent_indent="      ")
        )
    return "\n".join(lines)


# --- the machine-readable report (RFC 3464 2, RFC 6533 3) -------------------------------------


def _status_part(
    reporting_mta: str,
    envid: str | None,
    arrival: float,
    recipients: Sequence[RecipientStatus],
    *,
    global_report: bool,
) -> MIMEPart:
    policy = _UTF8_POLICY if global_report else _POLICY
    blocks: list[Message | str] = []

    def group() -> Message:
        block = Message(policy=policy)
        blocks.append(block)
        return block

    def put(block: Message, name: str, value: str) -> None:
        # RFC 3464 fields are US-ASCII; only RFC 6533's global report may carry UTF-8.
        block[name] = value if global_report else _ascii_escape(value)

    # RFC 3464 2.2: the per-message fields.
    block = group()
    put(block, "Reporting-MTA", f"dns; {reporting_mta}")  # RFC 3464 2.2.2
    if envid is not None:
        put(block, "Original-Envelope-Id", envid)  # RFC 3464 2.2.1
    put(block, "Arrival-Date", _date(arrival))  # RFC 3464 2.2.5
    # RFC 3464 2.3: one group of per-recipient fields each.
    for r in recipients:
        block = group()
        put(block, "Final-Recipient", _address_field("rfc822", r.final_recipient))  # 2.3.2
        if r.original_recipient is not None:  # RFC 3464 2.3.1, RFC 3461 6.3
            addr_type, address = r.original_recipient
            put(block, "Original-Recipient", _address_field(addr_type, address))
        put(block, "Action", r.action)  # RFC 3464 2.3.3
        put(block, "Status", r.status)  # RFC 3464 2.3.4
        if r.remote_mta:
            put(block, "Remote-MTA", f"dns; {_one_line(r.remote_mta)}")  # RFC 3464 2.3.5
        if r.diagnostic:
            diag_type, text = _diagnostic(r.diagnostic)
            put(block, "Diagnostic-Code", f"{diag_type}; {text}")  # RFC 3464 2.3.6
        if r.last_attempt is not None:
            put(block, "Last-Attempt-Date", _date(r.last_attempt))  # RFC 3464 2.3.7
        if r.action == "delayed" and r.will_retry_until is not None:
            put(block, "Will-Retry-Until", _date(r.will_retry_until))  # RFC 3464 2.3.9

    part = MIMEPart(policy=policy)
    if not global_report:
        part["Content-Type"] = "message/delivery-status"
        part.set_payload(blocks)  # the generator writes the groups apart by blank lines
        part["Content-Description"] = "Delivery report"
        return part
    # RFC 6533 3: message/global-delivery-status has the same groups, in raw UTF-8.  The
    # email package writes message/* payloads given as text verbatim, so render each group
    # with it and join them here.
    rendered = [
        b.as_bytes(policy=_UTF8_POLICY).removesuffix(b"\r\n")
        for b in blocks
        if isinstance(b, Message)
    ]
    part["Content-Type"] = "message/global-delivery-status"
    part["Content-Transfer-Encoding"] = "8bit"  # RFC 6533 6.2
    part["Content-Description"] = "Delivery report"
    part.set_payload(b"\r\n".join(rendered).decode("ascii", "surrogateescape"))
    return part


def _address_field(addr_type: str, address: str) -> str:
    """RFC 3464 2.3.1/2.3.2 `address-type ";" generic-address`; RFC 6533 3 for UTF-8."""
    addr_type = _one_line(addr_type).replace(";", "").replace(" ", "") or "unknown"
    if addr_type.lower() == "rfc822" and not address.isascii():
        addr_type = "utf-8"  # RFC 6533 3: the utf-8 address type, in global reports only
    return f"{addr_type}; {_one_line(address)}"


def _diagnostic(diagnostic: str) -> tuple[str, str]:
    """(diagnostic-type, one-line text) of a remote reply; multi-line replies are joined."""
    text = _one_line(diagnostic, limit=_MAX_DIAGNOSTIC + 64)
    m = _DIAG_TYPE_RE.fullmatch(text)
    diag_type, text = (m.group(1).lower(), m.group(2)) if m else ("smtp", text)
    if len(text) > _MAX_DIAGNOSTIC:
        text = text[: _MAX_DIAGNOSTIC - 3] + "..."
    return diag_type, text


def _ascii_escape(text: str) -> str:
    # Non-ASCII in an ASCII report, written as RFC 6533 3's EmbeddedUnicodeChar "\x{HEX}".
    return "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in text)


# --- the returned original (RFC 3461 4.3, RFC 6522 4, RFC 6533 6) -----------------------------


def _returned_part(
    original: bytes, ret: str | None, recipients: Sequence[RecipientStatus]
) -> tuple[MIMEPart, bool]:
    """The part carrying the original, and whether it is the whole message.

    RET=FULL returns the whole message, RET=HDRS its header.  Without RET: the whole message
    in a failure report, the header in delay and success reports.  Above MAX_RETURNED
    octets only the header is returned, whatever RET says.
    """
    if original.count(b"\n") != original.count(b"\r\n") or original.count(b"\r") != (
        original.count(b"\r\n")
    ):
        # RFC 5322 2.3: CR and LF only together.  What SMTP accepted always is so (netpost
        # refuses bare ones); anything else gets CRLF so the report's structure holds.
        original = _BARE_EOL_RE.sub(b"\r\n", original)
    failed = any(r.action == "failed" for r in recipients)
    whole = (ret is None and failed) or (ret is not None and ret.upper() == "FULL")
    if len(original) > MAX_RETURNED:
        whole = False
    # RFC 5322 2.1: the header ends at the first empty line (and may itself be empty).
    empty = original.startswith((b"\r\n", b"\n"))
    header = b"" if empty else original[: header_end(original)]
    headers_utf8 = not header.isascii()
    part = MIMEPart(policy=_POLICY)
    if whole:
        data = original if original.endswith(b"\n") or not original else original + b"\r\n"
        # RFC 6532 3.7 message/global for UTF-8 header fields; RFC 2046 5.2.1: 8bit at most.
        part["Content-Type"] = "message/global" if headers_utf8 else "message/rfc822"
        part["Content-Description"] = "Undelivered message"
        if not data.isascii():
            part["Content-Transfer-Encoding"] = "8bit"
    else:
        data = header + b"\r\n" if header else b""
        # RFC 6522 4 text/rfc822-headers; RFC 6533 6.3 message/global-headers for UTF-8.
        part["Content-Type"] = "message/global-headers" if headers_utf8 else "text/rfc822-headers"
        part["Content-Description"] = "Message header"
        if not data.isascii():
            part["Content-Transfer-Encoding"] = "8bit"
    # Given as text, the payload is written out verbatim (surrogateescape keeps every octet).
    part.set_payload(data.decode("ascii", "surrogateescape"))
    return part, whole


# --- values -----------------------------------------------------------------------------------


def _one_line(value: str, *, limit: int = _MAX_VALUE) -> str:
    """`value` as one line: controls (CR, LF, NUL, ...) become spaces, runs of spaces one."""
    value = _CONTROLS_RE.sub(" ", value[: limit * 2])
    value = _SPACES_RE.sub(" ", value).strip()
    return value[:limit]


def _ascii_host(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii") or "localhost"
    except UnicodeError:
        return "localhost"


def _date(when: float) -> str:
    """RFC 5322 3.3 date-time in UTC (RFC 3464 uses it for every date field)."""
    return format_datetime(datetime.datetime.fromtimestamp(when, datetime.UTC))
