"""The logged-in user's mail over the web API: mailboxes, pages of messages, a message as JSON
with its MIME parts, raw download, flags, move, delete, search, sending, and the change feed
as server-sent events.

Mailboxes are named by id in paths (names hold '/', the hierarchy separator).  A mailbox of
another account is 404, the same answer as a mailbox that does not exist (IDOR).

Listing reads one page from the store (`Messages.message_page`: a range scan of the primary
key below a UID, newest first), whatever the mailbox's size.  Sending goes the way of
submission: `LocalDelivery.deliver` as for a logged-in SMTP client (trace fields, DKIM for
remote recipients), which answers once the message is durable in the local mailboxes and the
outbound queue (accepted means durable); then a copy is kept in Sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.policy
import email.utils
import json
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage, Message
from email.parser import BytesParser

from pydantic import BaseModel, Field
from starlette.responses import Response, StreamingResponse

from netpost.mail import address as names
from netpost.mail.delivery import NotLocal, Recipient, UnknownRecipient
from netpost.services import Services
from netpost.store.interfaces import Mailbox
from netpost.store.interfaces import MessageSummary as StoredSummary
from netpost.web.api.framework import MAX_ID, ApiError, Call, Endpoint
from netpost.web.api.models import (
    FlagChange,
    FlagResult,
    MailboxCreate,
    MailboxInfo,
    MailboxList,
    MessageDetail,
    MessagePage,
    MessageSummary,
    MimePart,
    MoveRequest,
    MoveResult,
    Ok,
    SearchResult,
    SendRequest,
    SendResult,
)

TEXT_LIMIT = 1024 * 1024  # octets of a text part given inline in a message's JSON
KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream
COUNT_CACHE = 10_000  # mailboxes whose counts are remembered (all forgotten when full)
# Served parts and raw messages are downloads that no browser may run as a page of this site.
DOWNLOAD_HEADERS = {"Content-Security-Policy": "sandbox; default-src 'none'",
                    "X-Frame-Options": "DENY"}
_FLAG_CHARS = set("\\$") | {chr(c) for c in range(0x21, 0x7F)} - set('(){%*"]')


class PageQuery(BaseModel):
    before: int | None = Field(None, ge=1, le=MAX_ID, description="list UIDs below this (the "
                               "previous page's next_before); none: from the newest")
    limit: int = Field(50, ge=1, le=500)


class SearchQuery(BaseModel):
    q: str = Field(min_length=1, max_length=200, description="text to find (case-insensitive)")
    field: str = Field("any", pattern="^(any|subject|from|to)$")
    limit: int = Field(50, ge=1, le=500)


class DeleteQuery(BaseModel):
    trash: bool = Field(False, description="move to Trash instead of deleting for good")


class EventQuery(BaseModel):
    after: int | None = Field(None, ge=0, le=MAX_ID, description="resume after this feed "
                              "position (or "
                              "send Last-Event-ID)")


def summary(m: StoredSummary) -> MessageSummary:
    h = m.headers
    return MessageSummary.model_validate({
        "uid": m.uid, "size": m.size, "internaldate": m.internaldate, "modseq": m.modseq,
        "flags": sorted(m.flags), "subject": h.get("subject", ""), "from": h.get("from", ""),
        "to": h.get("to", ""), "date": h.get("date", ""),
        "message_id": h.get("message-id", "")})


def mailbox_info(m: Mailbox, counts: tuple[int, int, int, int] | None = None) -> MailboxInfo:
    return MailboxInfo(id=m.id, name=m.name, special_use=m.special_use,
                       uidvalidity=m.uidvalidity, uidnext=m.uidnext,
                       highestmodseq=m.highestmodseq, subscribed=m.subscribed,
                       messages=counts[0] if counts else None,
                       unseen=counts[1] if counts else None)


def _parts(msg: Message, prefix: str = "") -> list[tuple[str, Message]]:
    """(IMAP part number, part) of every leaf, in order (RFC 9051 6.4.5 numbering)."""
    if not msg.is_multipart():
        return [(prefix or "1", msg)]
    out: list[tuple[str, Message]] = []
    payload = msg.get_payload()
    assert isinstance(payload, list)
    for i, child in enumerate(payload, 1):
        out.extend(_parts(child, f"{prefix}.{i}" if prefix else str(i)))
    return out


def _decoded(part: Message) -> bytes:
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _text(part: Message, data: bytes) -> str:
    """The decoded text, with the wire's CRLF line ends made \n."""
    charset = part.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset, "replace")
    except LookupError:
        text = data.decode("utf-8", "replace")
    return text.replace("\r\n", "\n")


def describe(raw: bytes) -> tuple[list[tuple[str, str]], list[MimePart]]:
    """Header fields (decoded) and MIME parts of a message; never raises on odd input."""
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    headers: list[tuple[str, str]] = []
    for name, value in msg.items():
        try:
            headers.append((name, str(value)))
        except Exception:  # a field the parser cannot decode: shown raw
            headers.append((name, repr(value)))
    parts: list[MimePart] = []
    for number, part in _parts(msg):
        data = _decoded(part)
        ctype = part.get_content_type()
        text = None
        if ctype in ("text/plain", "text/html") and len(data) <= TEXT_LIMIT:
            text = _text(part, data)
        try:
            filename = part.get_filename()
        except Exception:
            filename = None
        parts.append(MimePart(part=number, content_type=ctype,
                              charset=part.get_content_charset(), filename=filename,
                              disposition=part.get_content_disposition(), size=len(data),
                              text=text))
    return headers, parts


def _header(headers: list[tuple[str, str]], name: str) -> str:
    for k, v in headers:
        if k.lower() == name:
            return v
    return ""


def _checked_flags(flags: list[str]) -> frozenset[str]:
    for f in flags:
        if not f or len(f) > 100 or any(c not in _FLAG_CHARS for c in f) or (
                f.startswith("\\") and f.lower() not in
                ("\\seen", "\\answered", "\\flagged", "\\deleted", "\\draft")):
            raise ApiError(422, f"{f!r} is not a flag (\\Seen, \\Flagged, ... or a keyword)")
    return frozenset("\\" + f[1:].capitalize() if f.startswith("\\") else f for f in flags)


class MailApi:
    def __init__(self, services: Services, *, max_message_size: int, hostname: str) -> None:
        self.s = services
        self.catalogue = services.stores.mailboxes
        self.messages = services.stores.messages
        self.max_message_size = max_message_size
        self.hostname = hostname
        # mailbox id -> (HIGHESTMODSEQ when counted, counts): see _counts
        self._count_cache: dict[int, tuple[int, tuple[int, int, int, int]]] = {}
        self._total_cache: dict[int, tuple[int, int]] = {}

    def _counts(self, mailbox: Mailbox) -> tuple[int, int, int, int]:
        """(messages, unseen, octets, deleted), remembered until the mailbox's HIGHESTMODSEQ
        moves (every append, flag change and expunge moves it, in any process): counting
        100,000 rows costs milliseconds, a page of them a tenth of one."""
        cached = self._count_cache.get(mailbox.id)
        if cached is not None and cached[0] == mailbox.highestmodseq:
            return cached[1]
        counts = self.messages.mailbox_counts(mailbox.id)
        if len(self._count_cache) >= COUNT_CACHE:
            self._count_cache.clear()
        self._count_cache[mailbox.id] = (mailbox.highestmodseq, counts)
        return counts

    def _total(self, mailbox: Mailbox) -> int:
        cached = self._count_cache.get(mailbox.id)
        if cached is not None and cached[0] == mailbox.highestmodseq:
            return cached[1][0]
        cached_total = self._total_cache.get(mailbox.id)
        if cached_total is not None and cached_total[0] == mailbox.highestmodseq:
            return cached_total[1]
        total = self.messages.message_count(mailbox.id)
        if len(self._total_cache) >= COUNT_CACHE:
            self._total_cache.clear()
        self._total_cache[mailbox.id] = (mailbox.highestmodseq, total)
        return total

    def endpoints(self) -> list[Endpoint]:
        ids: dict[str, type] = {"mailbox_id": int, "uid": int}
        one = "/mailboxes/{mailbox_id}/messages/{uid}"
        return [
            Endpoint("GET", "/mailboxes", self.list_mailboxes, "Your mailboxes with counts",
                     "mail", response=MailboxList),
            Endpoint("POST", "/mailboxes", self.create_mailbox, "Create a mailbox", "mail",
                     body=MailboxCreate, response=MailboxInfo, status=201),
            Endpoint("DELETE", "/mailboxes/{mailbox_id}", self.delete_mailbox, "Delete a "
                     "mailbox and its messages", "mail", response=Ok, path_types=ids),
            Endpoint("GET", "/mailboxes/{mailbox_id}/messages", self.list_messages, "A page of "
                     "messages, newest first", "mail", query=PageQuery, response=MessagePage,
                     path_types=ids),
            Endpoint("GET", "/mailboxes/{mailbox_id}/search", self.search, "Messages whose "
                     "subject, From or To contains the text", "mail", query=SearchQuery,
                     response=SearchResult, path_types=ids),
            Endpoint("GET", one, self.get_message, "A message as JSON with its MIME parts",
                     "mail", response=MessageDetail, path_types=ids),
            Endpoint("GET", one + "/raw", self.raw_message, "The message as it was stored "
                     "(RFC 5322)", "mail", media_type="message/rfc822", path_types=ids),
            Endpoint("GET", one + "/parts/{part}", self.get_part, "One MIME part, decoded, "
                     "as a download", "mail", media_type="application/octet-stream",
                     path_types=ids),
            Endpoint("POST", one + "/flags", self.set_flags, "Add and remove flags", "mail",
                     body=FlagChange, response=FlagResult, path_types=ids),
            Endpoint("POST", one + "/move", self.move, "Move to another of your mailboxes",
                     "mail", body=MoveRequest, response=MoveResult, path_types=ids),
            Endpoint("DELETE", one, self.delete_message, "Delete (or move to Trash)", "mail",
                     query=DeleteQuery, response=Ok, path_types=ids),
            Endpoint("POST", "/send", self.send, "Send a message through the queue (durable "
                     "when answered)", "mail", body=SendRequest, response=SendResult,
                     status=202),
            Endpoint("GET", "/events", self.events, "Your change feed as server-sent events",
                     "mail", query=EventQuery, media_type="text/event-stream",
                     description="Each event is `event: change`, `id: <feed position>`, "
                     "`data: <Event JSON>`; a quiet stream gets a comment every 15 s."),
        ]

    # --- helpers ---------------------------------------------------------------------------

    def _mailbox(self, call: Call, key: str = "mailbox_id") -> Mailbox:
        mailbox = self.catalogue.get_mailbox_by_id(int(call.path[key]))
        if mailbox is None or mailbox.account_id != call.user.account.id:
            raise ApiError(404, "no such mailbox")
        return mailbox

    async def _content(self, call: Call) -> tuple[Mailbox, int, bytes]:
        mailbox = self._mailbox(call)
        uid = int(call.path["uid"])
        row = self.messages.message(mailbox.id, uid)
        if row is None:
            raise ApiError(404, "no such message")
        return mailbox, uid, await self.s.mailboxes.read(row.blob)

    # --- mailboxes -------------------------------------------------------------------------

    async def list_mailboxes(self, call: Call) -> MailboxList:
        boxes = self.catalogue.list_mailboxes(call.user.account.id)
        return MailboxList(mailboxes=[mailbox_info(m, self._counts(m)) for m in boxes])

    async def create_mailbox(self, call: Call) -> MailboxInfo:
        account_id = call.user.account.id
        name = call.body.name
        if self.catalogue.get_mailbox(account_id, name) is not None:
            raise ApiError(409, f"mailbox {name} exists already")
        return mailbox_info(self.catalogue.create_mailbox(account_id, name))

    async def delete_mailbox(self, call: Call) -> Ok:
        mailbox = self._mailbox(call)
        if mailbox.name == "INBOX":
            raise ApiError(409, "INBOX cannot be deleted")
        await asyncio.to_thread(self.catalogue.delete_mailbox, mailbox.account_id, mailbox.name)
        return Ok(detail=f"deleted {mailbox.name}")

    # --- messages --------------------------------------------------------------------------

    async def list_messages(self, call: Call) -> MessagePage:
        mailbox = self._mailbox(call)
        q: PageQuery = call.query
        rows = self.messages.message_page(mailbox.id, before_uid=q.before, limit=q.limit + 1)
        more = len(rows) > q.limit
        rows = rows[:q.limit]
        return MessagePage(mailbox=mailbox.name, total=self._total(mailbox),
                           messages=[summary(m) for m in rows],
                           next_before=rows[-1].uid if more else None)

    async def search(self, call: Call) -> SearchResult:
        mailbox = self._mailbox(call)
        q: SearchQuery = call.query
        needle = q.q.casefold()
        fields = ("subject", "from", "to") if q.field == "any" else (q.field,)

        def find() -> list[int]:
            hits: set[int] = set()
            ascii_needle = needle if needle.isascii() else ""
            for name in fields:
                if ascii_needle:
                    found = self.messages.header_candidates(
                        mailbox.id, name, ascii_needle, address=name != "subject")
                else:
                    found = self.messages.header_texts(mailbox.id, name)
                hits.update(uid for uid, text in found if needle in text.casefold())
            return sorted(hits, reverse=True)

        uids = await asyncio.to_thread(find)
        out: list[MessageSummary] = []
        for uid in uids[:q.limit]:
            row = self.messages.message(mailbox.id, uid)
            headers = self.messages.headers(mailbox.id, uid)
            if row is None or headers is None:
                continue
            out.append(summary(StoredSummary(uid, row.size, row.internaldate, row.modseq,
                                             row.flags, headers)))
        return SearchResult(mailbox=mailbox.name, total=len(uids), messages=out)

    async def get_message(self, call: Call) -> MessageDetail:
        mailbox, uid, raw = await self._content(call)
        row = self.messages.message(mailbox.id, uid)
        assert row is not None
        headers, parts = await asyncio.to_thread(describe, raw)
        return MessageDetail.model_validate({
            "mailbox": mailbox.name, "uid": uid, "size": row.size,
            "internaldate": row.internaldate, "modseq": row.modseq, "flags": sorted(row.flags),
            "headers": headers, "subject": _header(headers, "subject"),
            "from": _header(headers, "from"), "to": _header(headers, "to"),
            "cc": _header(headers, "cc"), "date": _header(headers, "date"), "parts": parts})

    async def raw_message(self, call: Call) -> Response:
        mailbox, uid, raw = await self._content(call)
        return Response(raw, media_type="message/rfc822", headers={
            **DOWNLOAD_HEADERS,
            "Content-Disposition": f'attachment; filename="{mailbox.id}-{uid}.eml"'})

    async def get_part(self, call: Call) -> Response:
        _mailbox, _uid, raw = await self._content(call)
        wanted = str(call.path["part"])

        def find() -> tuple[str, str | None, bytes] | None:
            msg = BytesParser(policy=email.policy.default).parsebytes(raw)
            for number, part in _parts(msg):
                if number == wanted:
                    try:
                        filename = part.get_filename()
                    except Exception:
                        filename = None
                    return part.get_content_type(), filename, _decoded(part)
            return None

        found = await asyncio.to_thread(find)
        if found is None:
            raise ApiError(404, "no such part")
        ctype, filename, data = found
        safe = "".join(c for c in (filename or f"part-{wanted}") if c.isalnum() or c in "._- ")
        return Response(data, media_type="application/octet-stream", headers={
            **DOWNLOAD_HEADERS, "X-Netpost-Content-Type": ctype,
            "Content-Disposition": f'attachment; filename="{safe or "part"}"'})

    async def set_flags(self, call: Call) -> FlagResult:
        mailbox = self._mailbox(call)
        uid = int(call.path["uid"])
        body: FlagChange = call.body
        add, remove = _checked_flags(body.add), _checked_flags(body.remove)
        if self.messages.message(mailbox.id, uid) is None:
            raise ApiError(404, "no such message")
        if add:
            await self.s.mailboxes.set_flags(mailbox.id, [uid], add, "add")
        if remove:
            await self.s.mailboxes.set_flags(mailbox.id, [uid], remove, "remove")
        row = self.messages.message(mailbox.id, uid)
        if row is None:
            raise ApiError(404, "no such message")
        return FlagResult(uid=uid, flags=sorted(row.flags), modseq=row.modseq)

    async def _move(self, mailbox: Mailbox, uid: int, target: Mailbox) -> MoveResult:
        if target.id == mailbox.id:
            raise ApiError(409, "the message is in that mailbox already")
        pairs = await asyncio.to_thread(self.messages.move, mailbox.id, [uid], target.id)
        if not pairs:
            raise ApiError(404, "no such message")
        return MoveResult(mailbox=target.name, uid=pairs[0][1])

    async def move(self, call: Call) -> MoveResult:
        mailbox = self._mailbox(call)
        target = self.catalogue.get_mailbox(call.user.account.id, call.body.mailbox)
        if target is None:
            raise ApiError(404, f"no mailbox {call.body.mailbox}")
        return await self._move(mailbox, int(call.path["uid"]), target)

    async def delete_message(self, call: Call) -> Ok:
        mailbox = self._mailbox(call)
        uid = int(call.path["uid"])
        if call.query.trash:
            trash = self.catalogue.get_mailbox(call.user.account.id, "Trash")
            if trash is not None and trash.id != mailbox.id:
                moved = await self._move(mailbox, uid, trash)
                return Ok(detail=f"moved to Trash as UID {moved.uid}")
        gone = await self.s.mailboxes.expunge(mailbox.id, [uid])
        if not gone:
            raise ApiError(404, "no such message")
        return Ok(detail="deleted")

    # --- sending ---------------------------------------------------------------------------

    def _recipient(self, text: str) -> Recipient:
        try:
            address = names.parse_address(text)[0]
        except names.InvalidAddress:
            raise ApiError(422, f"{text!r} is not a valid address") from None
        delivery = self.s.delivery
        try:
            return delivery.resolve(address)
        except NotLocal:
            if not delivery.relay.enabled:
                raise ApiError(400, f"{address} is not local and the relay is off") from None
            return delivery.remote(address)
        except UnknownRecipient:
            raise ApiError(400, f"no such local user {address}") from None

    def compose(self, sender: str, body: SendRequest) -> tuple[bytes, str]:
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = sender
        msg["To"] = ", ".join(body.to)
        if body.cc:
            msg["Cc"] = ", ".join(body.cc)
        msg["Subject"] = body.subject
        msg["Date"] = email.utils.formatdate(time.time(), localtime=False)
        message_id = email.utils.make_msgid(domain=sender.rpartition("@")[2])
        msg["Message-ID"] = message_id
        if body.in_reply_to:
            msg["In-Reply-To"] = body.in_reply_to
            msg["References"] = body.in_reply_to
        msg.set_content(body.text)
        if body.html is not None:
            msg.add_alternative(body.html, subtype="html")
        for a in body.attachments:
            try:
                data = base64.b64decode(a.content_base64, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(422, f"attachment {a.filename!r}: not base64") from None
            maintype, _, subtype = a.content_type.partition("/")
            if not maintype.isascii() or not subtype or "/" in subtype:
                maintype, subtype = "application", "octet-stream"
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=a.filename)
        try:
            return msg.as_bytes(), message_id
        except (ValueError, TypeError, UnicodeError) as exc:
            raise ApiError(422, f"cannot make a message of this: {exc}") from None

    async def send(self, call: Call) -> SendResult:
        body: SendRequest = call.body
        sender = call.user.address
        recipients: list[Recipient] = []
        for text in [*body.to, *body.cc, *body.bcc]:
            recipient = self._recipient(text)
            if recipient.address not in [r.address for r in recipients]:
                recipients.append(recipient)
        content, message_id = await asyncio.to_thread(self.compose, sender, body)
        if len(content) > self.max_message_size:
            raise ApiError(413, f"the message is larger than {self.max_message_size} octets")
        # As submission does for a logged-in client (smtp/server.py): trace fields naming
        # the account, DKIM-signed as the sender's domain for remote recipients, local
        # mailboxes and the outbound queue in one durable commit before the answer.
        request = call.request
        scheme = request.url.scheme.upper()
        queue_id = await self.s.delivery.deliver(
            content, mail_from=sender, recipients=recipients, helo=None,
            client_ip=request.client.host if request.client else "", with_protocol=scheme,
            tls="TLS" if scheme == "HTTPS" else None, authenticated=sender,
            sign_as=sender.rpartition("@")[2])
        sent_uid = None
        if body.save_sent:
            sent = self.catalogue.get_mailbox(call.user.account.id, "Sent")
            if sent is not None:
                sent_uid = await self.s.mailboxes.append(sent, content,
                                                         flags=frozenset({"\\Seen"}))
        return SendResult(queue_id=queue_id, message_id=message_id,
                          recipients=[r.address for r in recipients], sent_uid=sent_uid)

    # --- change feed -----------------------------------------------------------------------

    async def events(self, call: Call) -> Response:
        account = call.user.account
        after = call.query.after
        last = call.request.headers.get("last-event-id")
        if after is None and last is not None and last.isdigit():
            after = int(last)
        subscription = self.s.mailboxes.watch(account, after=after)
        names_by_id: dict[int, str] = {}

        def name_of(mailbox_id: int) -> str:
            if mailbox_id not in names_by_id:
                m = self.catalogue.get_mailbox_by_id(mailbox_id)
                names_by_id[mailbox_id] = m.name if m is not None else ""
            return names_by_id[mailbox_id]

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b": netpost change feed\n\n"
                while True:
                    changes = await subscription.wait(KEEPALIVE)
                    if not changes:
                        yield b": keepalive\n\n"
                        continue
                    out = []
                    for c in changes:
                        data = json.dumps({"id": c.id, "mailbox": name_of(c.mailbox_id),
                                           "mailbox_id": c.mailbox_id, "uid": c.uid,
                                           "modseq": c.modseq, "kind": c.kind})
                        out.append(f"event: change\nid: {c.id}\ndata: {data}\n\n")
                    yield "".join(out).encode()
            finally:
                subscription.close()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

