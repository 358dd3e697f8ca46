"""Showing a message: text/plain preferred, HTML made into text, attachments listed
(pure; the message parsed by `email` with policy.default)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes
from email.errors import MessageDefect
from email.message import EmailMessage
from email.policy import default
from html.parser import HTMLParser
from typing import cast

from netpost.agent import AgentError

SHOWN_HEADERS = ("Date", "From", "To", "Cc", "Reply-To", "Subject")


@dataclass(frozen=True)
class Part:
    number: int  # 1-based, as `save-attachment` takes it
    filename: str
    content_type: str
    size: int
    part: EmailMessage


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=default)
    assert isinstance(msg, EmailMessage)
    return msg


def header(msg: EmailMessage, name: str) -> str:
    try:
        value = msg.get(name)
    except (ValueError, IndexError, MessageDefect):  # a field email cannot parse
        raw = msg.get_all(name, failobj=[])
        return str(raw[0]) if raw else ""
    return "" if value is None else str(value)


def attachments(msg: EmailMessage) -> list[Part]:
    """Every leaf part that is not the body shown: those with a filename or
    Content-Disposition: attachment, numbered in document order."""
    body = body_part(msg)
    out: list[Part] = []
    for part in msg.walk():
        if part.is_multipart() or part is body:
            continue
        if part.get_content_maintype() == "message":
            continue
        disposition = part.get_content_disposition()
        filename = part.get_filename()
        if disposition == "attachment" or filename:
            payload = part.get_payload(decode=True)
            size = len(payload) if isinstance(payload, bytes) else 0
            out.append(Part(len(out) + 1, filename or f"part{len(out) + 1}",
                            part.get_content_type(), size, part))
    return out


def body_part(msg: EmailMessage) -> EmailMessage | None:
    return cast(EmailMessage | None, msg.get_body(preferencelist=("plain", "html")))


def text_of(msg: EmailMessage) -> str:
    part = body_part(msg)
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, ValueError) as exc:  # unknown charset, bad encoding
        raise AgentError(f"cannot decode the message body: {exc}") from None
    if not isinstance(content, str):
        return ""
    content = content.replace("\r\n", "\n")
    if part.get_content_subtype() == "html":
        return html_to_text(content)
    return content


def render(msg: EmailMessage, *, extra: list[str] | None = None) -> str:
    lines = [f"{h}: {v}" for h in SHOWN_HEADERS if (v := header(msg, h))]
    lines.extend(extra or [])
    lines.append("")
    lines.append(text_of(msg).rstrip("\n"))
    parts = attachments(msg)
    if parts:
        lines.append("")
        lines.append("Attachments:")
        lines.extend(f"  [{p.number}] {p.filename} ({p.content_type}, {p.size} octets)"
                     for p in parts)
    return "\n".join(lines) + "\n"


class _TextMaker(HTMLParser):
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table",
             "ul", "ol", "blockquote", "pre", "hr", "section", "article", "header", "footer"}
    SKIP = {"script", "style", "head", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.href: str | None = None
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.out.append("\n")
            if tag == "li":
                self.out.append("* ")
            if tag == "pre":
                self.pre += 1
        elif tag == "a":
            self.href = dict(attrs).get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK and tag != "li":
            self.out.append("\n")
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
        elif tag == "a" and self.href:
            if self.href.startswith(("http:", "https:", "mailto:")):
                self.out.append(f" <{self.href}>")
            self.href = None

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        # inside <pre> spaces are kept (as NBSP until the lines are trimmed)
        self.out.append(data.replace(" ", "\xa0") if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(source: str) -> str:
    maker = _TextMaker()
    maker.feed(source)
    maker.close()
    text = "".join(maker.out)
    lines = [line.strip(" \t") for line in text.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text.replace("\xa0", " ") + "\n"
