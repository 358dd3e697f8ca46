"""Building messages: new, reply, reply-all, forward (pure; `email`, policy.default).

RFC 5322 3.6.4 for threading (In-Reply-To, References), 3.6.3 for Bcc; attachments are
MIME parts (RFC 2045-2049) typed from their names by `mimetypes`.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import default
from email.utils import format_datetime, getaddresses, localtime, make_msgid
from pathlib import Path

from netpost.agent import AgentError


@dataclass(frozen=True)
class Attachment:
    filename: str
    data: bytes
    content_type: str  # "maintype/subtype"


def attachment_from_file(path: Path) -> Attachment:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AgentError(f"cannot read attachment {path}: {exc.strerror}") from None
    guessed, encoding = mimetypes.guess_type(path.name)
    if guessed is None or encoding is not None:  # unknown, or compressed (.gz, ...)
        guessed = "application/octet-stream"
    return Attachment(path.name, data, guessed)


def sender(address: str, name: str = "") -> str:
    return str(Address(display_name=name, addr_spec=address)) if name else address


def new_message(*, from_: str, to: Sequence[str] = (), cc: Sequence[str] = (),
                bcc: Sequence[str] = (), subject: str = "", body: str = "",
                attachments: Sequence[Attachment] = (), reply_to: str | None = None,
                in_reply_to: str | None = None, references: str | None = None,
                attach_messages: Sequence[EmailMessage] = ()) -> EmailMessage:
    msg = EmailMessage(policy=default)
    msg["From"] = from_
    if to:
        msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    if bcc:
        msg["Bcc"] = ", ".join(bcc)
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(localtime())
    domain = from_.rpartition("@")[2].rstrip(">") or None
    msg["Message-ID"] = make_msgid(domain=domain)
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    if not body.endswith("\n"):
        body += "\n"
    # quoted-printable keeps the body 7-bit, which signing needs (RFC 3156 3)
    msg.set_content(body, cte="quoted-printable")
    for a in attachments:
        # the file's octets as they are, base64 (a text file keeps its exact line ends)
        maintype, _, subtype = a.content_type.partition("/")
        params = {}
        if maintype == "text":
            try:
                a.data.decode("utf-8")
                params["charset"] = "utf-8"
            except UnicodeDecodeError:
                maintype, subtype = "application", "octet-stream"
        msg.add_attachment(a.data, maintype=maintype, subtype=subtype, filename=a.filename,
                           params=params)
        parts = msg.get_payload()
        if isinstance(parts, list) and isinstance(parts[-1], EmailMessage):
            del parts[-1]["MIME-Version"]  # only the top level has one (RFC 2045 4)
    for original in attach_messages:
        msg.add_attachment(original)  # message/rfc822 (RFC 2046 5.2.1)
    return msg


def recipients(msg: EmailMessage) -> list[str]:
    """The envelope recipients: every address in To, Cc and Bcc, once each."""
    seen: dict[str, None] = {}
    for _, addr in getaddresses([str(v) for f in ("To", "Cc", "Bcc")
                                 for v in msg.get_all(f, [])]):
        if addr:
            seen.setdefault(addr, None)
    if not seen:
        raise AgentError("the message has no recipient (To, Cc or Bcc)")
    return list(seen)


def _addresses(msg: EmailMessage, *fields: str) -> list[tuple[str, str]]:
    return [(n, a) for n, a in getaddresses([str(v) for f in fields
                                             for v in msg.get_all(f, [])]) if a]


def _format(pairs: list[tuple[str, str]]) -> list[str]:
    return [str(Address(display_name=n, addr_spec=a)) if n else a for n, a in pairs]


def quote(original: EmailMessage, text: str) -> str:
    who = original.get("From", "someone")
    when = original.get("Date")
    intro = f"On {when}, {who} wrote:" if when else f"{who} wrote:"
    quoted = "\n".join(("> " + line) if line else ">" for line in text.rstrip("\n").split("\n"))
    return f"{intro}\n{quoted}\n"


def reply(original: EmailMessage, *, me: str, from_: str, body: str, quoted_text: str,
          to_all: bool = False) -> EmailMessage:
    """A reply (RFC 5322 3.6.4): to Reply-To or From; with `to_all`, Cc the original's
    other To and Cc addresses, never `me`."""
    to = _addresses(original, "Reply-To") or _addresses(original, "From")
    cc: list[tuple[str, str]] = []
    if to_all:
        taken = {a.lower() for _, a in to} | {me.lower()}
        for n, a in _addresses(original, "To", "Cc"):
            if a.lower() not in taken:
                cc.append((n, a))
                taken.add(a.lower())
        to = [p for p in to if p[1].lower() != me.lower()] or to
    subject = str(original.get("Subject", ""))
    if not subject.lower().startswith("re:"):
        subject = "Re: " + subject
    msgid = original.get("Message-ID")
    refs = " ".join(x for x in (str(original.get("References", "")).strip(),
                                str(msgid or "").strip()) if x)
    text = body.rstrip("\n") + "\n\n" + quote(original, quoted_text) if body.strip() \
        else quote(original, quoted_text)
    return new_message(from_=from_, to=_format(to), cc=_format(cc), subject=subject, body=text,
                       in_reply_to=str(msgid) if msgid else None, references=refs or None)


def forward(original: EmailMessage, *, from_: str, to: Sequence[str], body: str,
            cc: Sequence[str] = ()) -> EmailMessage:
    """A forward: the new text, and the original whole as a message/rfc822 attachment."""
    subject = str(original.get("Subject", ""))
    if not subject.lower().startswith(("fwd:", "fw:")):
        subject = "Fwd: " + subject
    return new_message(from_=from_, to=to, cc=cc, subject=subject, body=body,
                       attach_messages=[original])
