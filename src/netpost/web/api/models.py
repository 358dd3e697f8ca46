"""What the web API takes and gives, as pydantic models: they validate requests and are the
source of the OpenAPI document's schemas (web/api/openapi.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Bounds on what a request may name (the store has its own; these keep answers clear).
ADDRESS = Field(min_length=3, max_length=320)
PASSWORD = Field(min_length=1, max_length=1024)


class Strict(BaseModel):
    """Requests: unknown fields are refused (a typo is a 422, not silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class Error(BaseModel):
    error: str = Field(description="what is wrong, one line fit to show a person")


class Ok(BaseModel):
    ok: bool = True
    detail: str = ""


# --- auth ----------------------------------------------------------------------------------------


class LoginRequest(Strict):
    address: str = ADDRESS
    password: str = PASSWORD


class Me(BaseModel):
    address: str
    admin: bool
    auth: Literal["session", "token"]
    csrf_token: str | None = Field(
        None, description="send it back as X-CSRF-Token on every state-changing request made "
        "with the session cookie (it is also in the netpost_csrf cookie)")
    expires: float | None = None


class TokenCreate(Strict):
    name: str = Field("", max_length=100)
    days: float | None = Field(None, gt=0, le=36500, description="lifetime; none: until revoked")


class TokenInfo(BaseModel):
    id: str
    address: str
    name: str
    created: float
    expires: float | None


class TokenCreated(TokenInfo):
    token: str = Field(description="the bearer token: shown once, only its hash is kept")


class TokenList(BaseModel):
    tokens: list[TokenInfo]


# --- admin ---------------------------------------------------------------------------------------


class Domain(BaseModel):
    name: str


class DomainList(BaseModel):
    domains: list[str]


class DomainCreate(Strict):
    name: str = Field(min_length=1, max_length=253)


class DKIMRecord(BaseModel):
    domain: str
    selector: str
    name: str = Field(description="the DNS name of the TXT record")
    value: str = Field(description="the TXT record's value")
    zone: str = Field(description="the record as a zone-file line (strings of <= 255 octets)")


class AccountInfo(BaseModel):
    address: str
    admin: bool
    quota: int | None = None
    usage: int | None = None
    messages: int | None = None


class AccountList(BaseModel):
    accounts: list[AccountInfo]


class AccountCreate(Strict):
    address: str = ADDRESS
    password: str = PASSWORD


class PasswordChange(Strict):
    password: str = PASSWORD
    current_password: str | None = Field(
        None, max_length=1024, description="required when users change their own password")


class QuotaChange(Strict):
    octets: int | None = Field(None, ge=0, le=2 ** 62, description="null: the server's "
                               "default")


class Alias(BaseModel):
    source: str
    target: str


class AliasList(BaseModel):
    aliases: list[Alias]


class AliasCreate(Strict):
    source: str = ADDRESS
    target: str = ADDRESS


class QueueRecipient(BaseModel):
    address: str
    state: str
    attempts: int
    next_attempt: float | None
    last_attempt: float | None
    last_error: str | None
    status: str | None
    remote_mta: str | None
    held: bool


class QueueMessage(BaseModel):
    queue_id: str
    mail_from: str
    arrival: float
    size: int
    origin: str
    recipients: list[QueueRecipient]


class QueueList(BaseModel):
    messages: list[QueueMessage]
    counts: dict[str, int]


class Count(BaseModel):
    count: int


class ShareInfo(BaseModel):
    token: str
    address: str
    path: str
    url: str
    created: float
    expires: float | None


class ShareList(BaseModel):
    shares: list[ShareInfo]


class ShareCreate(Strict):
    path: str = Field(min_length=1, max_length=4096)
    address: str | None = Field(None, max_length=320,
                                description="whose tree (admins only; default: yours)")
    days: float | None = Field(None, gt=0, le=36500)


class SessionInfo(BaseModel):
    listener: str
    protocol: str
    peer: str
    tls: bool
    idle: float = Field(description="seconds since the client last sent something")


class ListenerInfo(BaseModel):
    name: str
    protocol: str
    address: str
    transport: str
    traced: bool
    connections: int


class SessionList(BaseModel):
    listeners: list[ListenerInfo]
    sessions: list[SessionInfo]


class TraceSwitch(Strict):
    enabled: bool


class TraceStatus(BaseModel):
    enabled: bool
    file: str | None
    listeners: list[str]


class NTPUpstream(BaseModel):
    name: str
    address: str | None
    reach: int
    stratum: int | None
    offset: float | None = Field(description="seconds; + = the upstream is ahead")
    delay: float | None
    jitter: float | None
    selected: bool
    error: str | None


class NTPStatus(BaseModel):
    running: bool = Field(description="an ntp listener is serving")
    synchronized: bool = Field(description="to an upstream (else the local clock, or none)")
    stratum: int
    reference_id: str
    root_delay: float
    root_dispersion: float
    nts: bool = Field(description="NTS cookies can be made (NTS-KE keys loaded)")
    system_peer: str | None
    offset: float | None
    upstreams: list[NTPUpstream]
    counters: dict[str, int] = Field(description="requests, replies, KoD RATE, ... since start")


# --- mail ----------------------------------------------------------------------------------------


class MailboxInfo(BaseModel):
    id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    subscribed: bool
    messages: int | None = None
    unseen: int | None = None


class MailboxList(BaseModel):
    mailboxes: list[MailboxInfo]


class MailboxCreate(Strict):
    name: str = Field(min_length=1, max_length=1000)


class MessageSummary(BaseModel):
    uid: int
    size: int
    internaldate: float
    modseq: int
    flags: list[str]
    subject: str = ""
    from_: str = Field("", alias="from")
    to: str = ""
    date: str = ""
    message_id: str = ""

    model_config = ConfigDict(populate_by_name=True)


class MessageList(BaseModel):
    mailbox: str
    total: int
    messages: list[MessageSummary]


class MessagePage(MessageList):
    next_before: int | None = Field(
        description="pass as ?before= for the next (older) page; null: this is the last")


class MimePart(BaseModel):
    part: str = Field(description="IMAP-style part number ('1', '2.1'); download it at "
                      "/parts/{part}")
    content_type: str
    charset: str | None = None
    filename: str | None = None
    disposition: str | None = None
    size: int = Field(description="octets of the decoded content")
    text: str | None = Field(None, description="the decoded text of text/plain and text/html "
                             "parts up to 1 MiB, lines ending in \\n (HTML is NOT "
                             "sanitised: render it with care)")


class MessageDetail(BaseModel):
    mailbox: str
    uid: int
    size: int
    internaldate: float
    modseq: int
    flags: list[str]
    headers: list[tuple[str, str]]
    subject: str
    from_: str = Field(alias="from")
    to: str
    cc: str
    date: str
    parts: list[MimePart]

    model_config = ConfigDict(populate_by_name=True)


class FlagChange(Strict):
    add: list[str] = Field(default_factory=list, max_length=50)
    remove: list[str] = Field(default_factory=list, max_length=50)


class FlagResult(BaseModel):
    uid: int
    flags: list[str]
    modseq: int


class MoveRequest(Strict):
    mailbox: str = Field(min_length=1, max_length=1000)


class MoveResult(BaseModel):
    mailbox: str
    uid: int


class Attachment(Strict):
    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field("application/octet-stream", max_length=255)
    content_base64: str


class SendRequest(Strict):
    to: list[str] = Field(min_length=1, max_length=100)
    cc: list[str] = Field(default_factory=list, max_length=100)
    bcc: list[str] = Field(default_factory=list, max_length=100)
    subject: str = Field("", max_length=998)
    text: str = ""
    html: str | None = None
    in_reply_to: str | None = Field(None, max_length=998)
    attachments: list[Attachment] = Field(default_factory=list, max_length=50)
    save_sent: bool = Field(True, description="keep a copy in the Sent mailbox")


class SendResult(BaseModel):
    queue_id: str = Field(description="the id in the Received field and the queue")
    message_id: str
    recipients: list[str]
    sent_uid: int | None = None


class SearchResult(MessageList):
    """The messages a search matched in one mailbox."""


class Event(BaseModel):
    """One change-feed entry as the SSE stream sends it (event: change)."""

    id: int
    mailbox: str
    uid: int
    modseq: int
    kind: Literal["append", "expunge", "flags"]
