"""Store roles: small interfaces that services depend on, nothing about protocols.

Each role is a `typing.Protocol` with one job (after Maddy's one-role modules): callers take
the roles they use and never import a backend.  The embedded backend (SQLite + files + an
in-process change feed, `netpost.store.embedded`) implements all of them; a PostgreSQL + shared
blob backend will be the second implementation of the same roles.

Roles for services:
  Domains, Accounts, Aliases     who exists (the CLI, logins, recipient lookups)
  MailboxCatalogue               an account's mailboxes: list, create, rename, delete, subscribe
  Messages                       a mailbox's messages: read, flags, copy, move, expunge
  DeliveryTarget                 append: begin / add mailbox / body / commit or abort
  BlobStore                      message content: create (streaming) / read / open / delete
  ChangeFeed                     publish / subscribe in process, with a cursor into ChangeLog
  MailQueue                      the outbound queue: per-recipient state, claim due, outcomes
  Shares                         files and folders published at unguessable URLs (web/)
  Leases                         DHCP address bindings, v4 and v6: committed in batches
  Tokens                         web API tokens and browser sessions (hashed secrets)
  Maintenance                    collect what nothing references any more

Roles between parts of a backend (the group committer is shared by backends that keep
blobs as files): MetadataBatches, StagingBlobStore, ChangeLog.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, Protocol

# RFC 6154 special-use mailboxes every account gets (plus INBOX).
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)

# Mailbox names form a hierarchy with this separator (IMAP's LIST shows it, RFC 9051 5.1).
HIERARCHY_SEPARATOR = "/"


class StoreError(Exception):
    """A store operation failed because of the caller's input (duplicate, unknown name...).

    The message is one line that says what is wrong, fit to show to a user.
    """


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    id: int
    address: str  # lower-cased local@domain
    password_hash: str


@dataclass(frozen=True)
class Mailbox:
    id: int
    account_id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    subscribed: bool = True


@dataclass(frozen=True)
class BlobRef:
    """Content-addressed message content: sha256 hex digest and size in octets."""

    sha256: str
    size: int


def blob_ref(data: bytes) -> BlobRef:
    """The address of these octets."""
    return BlobRef(hashlib.sha256(data).hexdigest(), len(data))


@dataclass(frozen=True)
class GarbageReport:
    """What a garbage collection removed."""

    bodies: int = 0  # message bodies nothing referenced any more
    octets: int = 0  # their size
    reclaimed: int = 0  # octets handed back to the file system (free pages of blobs.db)

    def __add__(self, other: GarbageReport) -> GarbageReport:
        return GarbageReport(self.bodies + other.bodies, self.octets + other.octets,
                             self.reclaimed + other.reclaimed)

    def describe(self) -> str:
        return (f"removed {self.bodies} unreferenced message bodies ({_octets(self.octets)}); "
                f"{_octets(self.reclaimed)} of free space handed back to the file system")


def _octets(n: int) -> str:
    if n < 1024:
        return f"{n} octets"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


@dataclass(frozen=True)
class MessageMeta:
    """What is known of a message at delivery, stored beside it (parsed once)."""

    size: int  # RFC 822 size in octets (the blob is stored with CRLF line ends)
    internaldate: float  # POSIX seconds
    headers: dict[str, str] = field(default_factory=dict)  # ENVELOPE/SEARCH fields, decoded
    has_dot_lines: bool = False  # some line starts with "." (POP3 must byte-stuff)


@dataclass(frozen=True)
class MessageRow:
    mailbox_id: int
    uid: int
    blob: BlobRef
    size: int
    internaldate: float
    modseq: int
    flags: frozenset[str]
    has_dot_lines: bool


@dataclass(frozen=True)
class MessageSummary:
    """A line of a mailbox listing (the web API): what was kept at delivery, no body."""

    uid: int
    size: int
    internaldate: float
    modseq: int
    flags: frozenset[str]
    headers: dict[str, str]


# What was parsed of a message, or a function that parses it: the group committer calls it on
# its own thread, so that header parsing does not take the event loop's time.
MetaSource = MessageMeta | Callable[[], MessageMeta]

# A message as a selected IMAP mailbox holds it: (uid, size, internaldate, modseq, flags text,
# blob sha256).
MessageState = tuple[int, int, float, int, str, str]

# A POP3 maildrop entry, lean: (uid, size, blob sha256, has_dot_lines), in UID order.
MaildropRow = tuple[int, int, str, int]


@dataclass(frozen=True)
class Delivery:
    """One message for one or more mailboxes, committed atomically."""

    blob: BlobRef
    meta: MessageMeta
    mailbox_ids: Sequence[int]
    flags: frozenset[str] = frozenset()  # given to every copy (IMAP APPEND's flag list)
    outbound: OutboundEnvelope | None = None  # queued for remote recipients in the same commit


# --- the outbound queue --------------------------------------------------------------------------

# A recipient's state in the queue.  "queued" and "deferred" wait for their next attempt;
# "sending" is claimed by a relay run (back to "queued" after a crash); "delivered" and
# "bounced" are final and go with their message once its notices are sent.
QueueState = Literal["queued", "deferred", "sending", "delivered", "bounced"]
WAITING: tuple[QueueState, ...] = ("queued", "deferred")
# next_attempt of a recipient held until an ETRN for its domain (RFC 1985).
HELD = 1e18


@dataclass(frozen=True)
class OutboundRecipient:
    address: str
    notify: frozenset[str] | None = None  # RFC 3461 NOTIFY (None: not given)
    orcpt: tuple[str, str] | None = None  # RFC 3461 ORCPT (address type, address)
    held: bool = False  # wait for an ETRN instead of being tried at once


@dataclass(frozen=True)
class OutboundEnvelope:
    """What the queue keeps beside the body: the envelope and the DSN parameters."""

    queue_id: str  # the id in the 250 reply and the Received field
    mail_from: str  # "" for the null reverse-path (a bounce)
    recipients: Sequence[OutboundRecipient]
    arrival: float
    ret: str | None = None  # RFC 3461 RET (FULL / HDRS)
    envid: str | None = None  # RFC 3461 ENVID
    smtputf8: bool = False  # needs SMTPUTF8 (RFC 6531)
    eightbit: bool = False  # the content has octets above 127 (needs 8BITMIME, RFC 6152)
    origin: str = ""  # who handed it to us: the account, or the client's address


@dataclass(frozen=True)
class QueuedMessage:
    id: int
    queue_id: str
    blob: BlobRef
    mail_from: str
    arrival: float
    ret: str | None
    envid: str | None
    smtputf8: bool
    eightbit: bool
    origin: str


@dataclass(frozen=True)
class QueuedRecipient:
    id: int
    message_id: int
    address: str
    domain: str  # lower-case, what the relay routes by
    notify: frozenset[str] | None
    orcpt: tuple[str, str] | None
    state: QueueState
    attempts: int
    next_attempt: float
    last_attempt: float | None
    last_error: str | None  # the last reply or failure, as a person reads it
    status: str | None  # RFC 3463 code of the last result, e.g. "4.4.1"
    remote_mta: str | None
    delay_notified: bool
    notice: str | None  # a DSN still to send for it: "failed", "delayed", "delivered", "relayed"


@dataclass(frozen=True)
class QueueEntry:
    message: QueuedMessage
    recipients: list[QueuedRecipient]


@dataclass(frozen=True)
class Outcome:
    """What one attempt did to one recipient."""

    recipient_id: int
    state: QueueState  # delivered, bounced, deferred
    when: float
    next_attempt: float = 0.0  # for deferred
    error: str | None = None
    status: str | None = None
    remote_mta: str | None = None
    notice: str | None = None  # the DSN this result calls for, if any
    delay_notified: bool = False


class MailQueue(Protocol):
    """The outbound queue's store.  Messages enter it with a delivery (`Delivery.outbound`),
    in the same commit as their local copies."""

    def recover(self) -> int:
        """After a restart: recipients a crashed run had claimed wait again; how many."""
    def claim_due(self, now: float, limit: int, domain: str | None = None) -> list[QueueEntry]:
        """Take up to `limit` recipients due by `now` (oldest due first; `domain`: only that
        one, held ones included) and mark them "sending"; grouped by message."""
    def claim_expired_held(self, arrived_before: float, limit: int) -> list[QueueEntry]:
        """Take up to `limit` held (ETRN) recipients of messages that arrived before
        `arrived_before` and mark them "sending": they are to be bounced."""
    def next_due(self) -> float | None:
        """When the earliest waiting, not held, recipient is due."""
    def record(self, outcomes: Sequence[Outcome]) -> None:
        """Store the attempts' results in one transaction; a message whose recipients are all
        final and whose notices are sent leaves the queue (and its body's reference)."""
    def pending_notices(self, limit: int) -> list[QueueEntry]:
        """Messages with DSNs to send (only the recipients that need one)."""
    def notices_sent(self, recipient_ids: Sequence[int]) -> None: ...
    def entries(self, limit: int = 1000, after_id: int = 0) -> list[QueueEntry]:
        """The queue in arrival order (the CLI's list)."""
    def entry(self, queue_id: str) -> QueueEntry | None: ...
    def retry_now(self, now: float, queue_id: str | None = None,
                  domain: str | None = None) -> int:
        """Make waiting recipients due now (all, one message's, or one domain's, held ones
        included); how many."""
    def remove(self, queue_id: str) -> bool:
        """Delete a message from the queue without any notice."""
    def queue_counts(self) -> dict[str, int]:
        """Recipients per state."""


@dataclass(frozen=True)
class Share:
    """A file or folder of an account's file tree, published at `/s/<token>` (web/shares.py)."""

    token: str  # the unguessable part of the URL (secrets.token_urlsafe)
    address: str  # the account whose tree holds it
    path: str  # its virtual path in that tree ("/photos", "/report.pdf")
    created: float  # POSIX seconds
    expires: float | None  # POSIX seconds; None: until removed

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


class Shares(Protocol):
    """Published files and folders.  Removing an account removes its shares."""

    def add_share(self, token: str, address: str, path: str,
                  expires: float | None = None) -> Share:
        """Record a share (StoreError for an unknown account or a token already used)."""
    def get_share(self, token: str) -> Share | None: ...
    def list_shares(self, address: str | None = None) -> list[Share]:
        """Every share (or one account's), oldest first."""
    def remove_share(self, token: str) -> bool:
        """Forget a share; False if there was none."""


# A lease's state in the store.  "bound": the client holds it until `expires`; "released":
# given back (RFC 2131 4.3.4, RFC 8415 18.4.6); "declined": a client found it in use, kept out
# of the pool until `expires`; "expired": ended without a word from the client.
LeaseState = Literal["bound", "released", "declined", "expired"]


@dataclass(frozen=True)
class Lease:
    """One address binding of the DHCP servers.  One row per address: an address is never
    bound to two clients.  DHCPv4: `client` is the client identifier (option 61) or hardware
    type + chaddr, `iaid` None.  DHCPv6 (RFC 8415): `client` is the DUID, `iaid` the IA's."""

    address: str  # "10.99.0.147" or "2001:db8::147"
    client: bytes
    state: LeaseState
    starts: float  # POSIX seconds
    expires: float
    iaid: int | None = None
    hardware: str = ""  # "aa:bb:cc:dd:ee:ff" when known
    hostname: str = ""  # option 12 / 81 (v6: option 39)
    subnet: str = ""  # "10.99.0.0/24": the configured subnet it came from
    relay: str = ""  # the relay (giaddr, circuit id) it came through, if any

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    def active(self, now: float) -> bool:
        return self.state in ("bound", "declined") and self.expires > now


class Leases(Protocol):
    """DHCP leases.  A server loads them at start and writes each batch of changes in one
    durable transaction before it acknowledges any of them (group commit)."""

    def load_leases(self, family: int) -> list[Lease]:
        """Every lease of the family (4 or 6), for a server starting."""
    def commit_leases(self, leases: Sequence[Lease]) -> None:
        """Store these (by address, replacing what was there) in ONE transaction; durable
        when it returns."""
    def get_lease(self, address: str) -> Lease | None: ...
    def list_leases(self, family: int | None = None) -> list[Lease]:
        """Leases in address order (the CLI's list)."""
    def release_lease(self, address: str, now: float) -> Lease | None:
        """An administrator ends a lease (`netpost leases release`): "released", expiring
        `now`; the lease before the change, or None if there was none."""
    def leases_changed_since(self, serial: int) -> tuple[list[Lease], int]:
        """Leases an administrator changed (`release_lease`) after change `serial` (0: all
        such) and the serial now: how a running server notices the command line's changes."""


# "api": a bearer token made with `netpost token create`; "session": a browser's login cookie.
TokenKind = Literal["api", "session"]


@dataclass(frozen=True)
class Token:
    """A credential of the web API (web/api/auth.py): `np_<id>_<secret>`, of which only the
    secret's SHA-256 is kept."""

    id: str  # public part, shown by `netpost token list`
    address: str  # the account it acts as
    kind: TokenKind
    name: str  # what its maker called it ("ci", "grafana"); "" for sessions
    secret_sha256: str  # hex
    created: float  # POSIX seconds
    expires: float | None  # POSIX seconds; None: until revoked

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


class Tokens(Protocol):
    """Web credentials.  Removing an account removes its tokens and sessions."""

    def add_token(self, token_id: str, address: str, kind: TokenKind, secret_sha256: str, *,
                  name: str = "", expires: float | None = None) -> Token:
        """Record a credential (StoreError for an unknown account or an id already used)."""
    def get_token(self, token_id: str) -> Token | None: ...
    def list_tokens(self, address: str | None = None, kind: TokenKind = "api") -> list[Token]:
        """Every credential of the kind (or one account's), oldest first."""
    def remove_token(self, token_id: str) -> bool:
        """Revoke; False if there was none."""
    def remove_expired_tokens(self, now: float) -> int:
        """Forget credentials that expired by `now`; how many."""


ChangeKind = Literal["append", "expunge", "flags"]


@dataclass(frozen=True)
class Change:
    """One entry of an account's change feed (IMAP IDLE, CONDSTORE/QRESYNC, POP3, web UI)."""

    id: int  # feed position: increasing in commit order over the whole store
    account_id: int
    mailbox_id: int
    uid: int
    modseq: int
    kind: ChangeKind


FlagMode = Literal["add", "remove", "replace"]  # IMAP STORE +FLAGS / -FLAGS / FLAGS


@dataclass(frozen=True)
class FlagUpdate:
    """What `Messages.set_flags` did."""

    changed: list[tuple[int, frozenset[str], int]]  # (uid, flags now, modseq) per changed message
    failed: list[int]  # UIDs whose MODSEQ was above UNCHANGEDSINCE (RFC 7162 3.1.3)


# --- roles for services --------------------------------------------------------------------------


class Domains(Protocol):
    def add_domain(self, name: str) -> None: ...
    def remove_domain(self, name: str) -> None:
        """Refused (StoreError) while the domain still has accounts or aliases."""
    def list_domains(self) -> list[str]: ...
    def has_domain(self, name: str) -> bool: ...


class Accounts(Protocol):
    def add_account(self, address: str, password_hash: str) -> Account:
        """Create the account and its default mailboxes (DEFAULT_MAILBOXES)."""
    def remove_account(self, address: str) -> None:
        """Remove the account with its mailboxes and messages."""
    def list_accounts(self) -> list[Account]: ...
    def get_account(self, address: str) -> Account | None: ...
    def set_password_hash(self, address: str, password_hash: str) -> None: ...
    def set_account_quota(self, address: str, octets: int | None) -> None:
        """The account's storage limit (RFC 9208 STORAGE), None for the server's default."""


class Aliases(Protocol):
    def add_alias(self, source: str, target: str) -> None: ...
    def remove_alias(self, source: str, target: str) -> None: ...
    def list_aliases(self) -> list[tuple[str, str]]: ...
    def alias_targets(self, source: str, *, catch_all: bool = True) -> list[str]:
        """Targets of the exact address, else (unless catch_all is False) of its domain's
        catch-all; [] when neither."""


class MailboxCatalogue(Protocol):
    def get_mailbox(self, account_id: int, name: str) -> Mailbox | None: ...
    def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None: ...
    def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        """Every mailbox of the account, oldest first."""
    def create_mailbox(self, account_id: int, name: str,
                       special_use: str | None = None) -> Mailbox:
        """A new, empty mailbox with a UIDVALIDITY never used before in this store."""
    def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        """Rename `old` and its inferiors (`old/...` become `new/...`); UIDs are kept."""
    def delete_mailbox(self, account_id: int, name: str) -> None:
        """Remove the mailbox and its messages (INBOX cannot be deleted)."""
    def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        """Subscribe to a name or not; the name need not exist (RFC 9051 6.3.7)."""
    def subscriptions(self, account_id: int) -> list[str]: ...


class Messages(Protocol):
    def messages(self, mailbox_id: int) -> list[MessageRow]:
        """All messages of a mailbox in UID order."""
    def message(self, mailbox_id: int, uid: int) -> MessageRow | None: ...
    def maildrop(self, mailbox_id: int) -> list[MaildropRow]:
        """The lean form of `messages` for a POP3 login."""
    def headers(self, mailbox_id: int, uid: int) -> dict[str, str] | None:
        """The header fields parsed at delivery (keys lower-case), or None."""
    def set_flags(self, mailbox_id: int, uids: Sequence[int], flags: frozenset[str],
                  mode: FlagMode, *, unchanged_since: int | None = None) -> FlagUpdate:
        """Add, remove or replace flags; messages whose flags change get one new MODSEQ."""
    def copy(self, source_id: int, uids: Sequence[int], target_id: int) -> list[tuple[int, int]]:
        """Copy with flags and internal date; (source UID, new UID) pairs, in UID order."""
    def move(self, source_id: int, uids: Sequence[int], target_id: int) -> list[tuple[int, int]]:
        """Copy, then expunge from the source, in one transaction (RFC 6851)."""
    def expunge(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        """Remove these messages (those still present); return the UIDs removed."""

    # What IMAP sessions read (lean rows: a selected mailbox may hold 100,000 messages).
    def states(self, mailbox_id: int, after_uid: int = 0) -> list[MessageState]:
        """(uid, size, internaldate, modseq, flags text, sha256) above `after_uid`, UID order."""
    def flag_states(self, mailbox_id: int, uids: Sequence[int]) -> list[tuple[int, str, int]]:
        """(uid, flags text, modseq) of those of these messages that exist."""
    def header_texts(self, mailbox_id: int, name: str) -> list[tuple[int, str]]:
        """(uid, decoded text) of a header field kept at delivery (MessageMeta.headers)."""
    def header_candidates(self, mailbox_id: int, name: str, needle: str, *,
                          address: bool) -> list[tuple[int, str]]:
        """A superset of the messages whose field may contain the ASCII lower-case `needle`
        (SEARCH narrows in the store, then decides)."""
    def expunged_since(self, mailbox_id: int, modseq: int) -> list[int]:
        """UIDs expunged with a MODSEQ above `modseq` (RFC 7162 VANISHED)."""
    def message_page(self, mailbox_id: int, *, before_uid: int | None, limit: int
                     ) -> list[MessageSummary]:
        """Up to `limit` messages with a UID below `before_uid` (None: from the newest), newest
        first: a page of a mailbox listing, read from the store without the rest."""
    def message_count(self, mailbox_id: int) -> int: ...
    def mailbox_counts(self, mailbox_id: int) -> tuple[int, int, int, int]:
        """(messages, unseen, octets, deleted)."""
    def claim_recent(self, mailbox_id: int) -> int:
        """Claim unseen-by-any-session messages as \\Recent: the highest UID claimed before."""
    def recent_mark(self, mailbox_id: int) -> int: ...
    def account_usage(self, account_id: int) -> tuple[int, int]:
        """(octets, messages) in all of the account's mailboxes."""
    def account_quota(self, account_id: int) -> int | None:
        """The account's storage limit in octets, None for the server's default."""


class DeliveryTransaction(Protocol):
    """One message on its way into mailboxes: nothing is visible until `commit` returns."""

    def add_mailbox(self, mailbox_id: int) -> None: ...
    def add_outbound(self, envelope: OutboundEnvelope) -> None:
        """Queue the message for remote recipients too, in the same commit."""
    def body(self, data: bytes, meta: MetaSource, flags: frozenset[str] = frozenset()) -> None:
        """The content (CRLF line ends) and what was parsed of it (or how to parse it)."""
    async def commit(self) -> list[int]:
        """Make the message durable in every mailbox; the UIDs given, in add_mailbox order."""
    def abort(self) -> None: ...


class DeliveryTarget(Protocol):
    def begin(self) -> DeliveryTransaction: ...


class BlobWriter(Protocol):
    """A blob being written in pieces; nothing exists under its name before `commit`."""

    def write(self, data: bytes) -> None: ...
    def commit(self) -> BlobRef:
        """Durable (and deduplicated) when it returns."""
    def abort(self) -> None: ...


class BlobStore(Protocol):
    def create(self) -> BlobWriter: ...
    def put(self, data: bytes) -> BlobRef:
        """Store `data` durably; storing bytes already present is cheap, same ref."""
    def read(self, ref: BlobRef) -> bytes:
        """The whole content (for small blobs; more than ref.size octets if it has more)."""
    def read_many(self, refs: Sequence[BlobRef]) -> dict[str, bytes]:
        """sha256 -> content of those of `refs` that exist (a download reads ahead)."""
    def open(self, ref: BlobRef) -> BinaryIO:
        """A file object for streaming reads (IMAP partial FETCH, large RETR)."""
    def local_path(self, ref: BlobRef) -> str | None:
        """A path for sendfile, or None when the blob is not on a local filesystem."""
    def delete(self, ref: BlobRef) -> None: ...


class ChangeLog(Protocol):
    """The durable change table a feed catches up from."""

    def changes_since(self, account_id: int, after: int = 0, limit: int = 1000) -> list[Change]:
        """Entries of an account with position > `after`, oldest first."""
    def last_change(self, account_id: int) -> int:
        """The position of the account's newest entry (0 when none)."""


class Subscription(Protocol):
    """One subscriber's view of an account's feed, in order, from its cursor on."""

    account_id: int
    cursor: int  # the position of the last change handed out

    def poll(self) -> list[Change]:
        """Changes after the cursor that are known now (never waits); advances the cursor."""
    async def wait(self, timeout: float | None = None) -> list[Change]:
        """Like `poll`, but waits until there is at least one change ([] on timeout)."""
    def close(self) -> None: ...


class ChangeFeed(Protocol):
    def publish(self, changes: Sequence[Change]) -> None:
        """Hand committed changes to their account's subscribers (callable from any thread,
        in commit order)."""
    def subscribe(self, account_id: int, *, after: int | None = None) -> Subscription:
        """Changes committed after now, or after position `after` (caught up from the log)."""


class Maintenance(Protocol):
    async def collect_garbage(self, orphans_older_than: float | None = None) -> GarbageReport:
        """Remove content nothing references; with `orphans_older_than` (seconds) also content
        a crash left before its message was committed; hand freed space back."""
    def collect_garbage_sync(self, orphans_older_than: float | None = None) -> GarbageReport:
        """The same, for the command line (not on an event loop)."""


# --- roles between parts of a backend ------------------------------------------------------------


class MetadataBatches(Protocol):
    """What the group committer needs from a metadata store."""

    def deliver(self, deliveries: Sequence[Delivery]) -> list[list[int]]:
        """Append every delivery in ONE transaction (group commit); return the UIDs given,
        per delivery, in the order of its mailbox_ids. Durable when it returns."""
    def unreferenced_blobs(self) -> list[BlobRef]: ...
    def known_blobs(self, shas: Sequence[str]) -> set[str]:
        """Which of these blobs have a row (referenced now, or awaiting collection)."""
    def forget_blobs(self, shas: Sequence[str]) -> int:
        """Drop the rows of these blobs that are still unreferenced; return how many."""


@dataclass(frozen=True)
class StagedBlobs:
    """A batch written by `StagingBlobStore.stage_many`, durable once `finish`ed."""

    refs: list[BlobRef]
    pending: Sequence[str] = ()  # what `finish` still has to make durable (backend's own)


class StagingBlobStore(BlobStore, Protocol):
    """A blob store that writes a batch in two steps, so a pipeline can overlap them."""

    def stage_many(self, items: Sequence[bytes]) -> StagedBlobs:
        """Every item written and fsync'd under its final name; not durable until finish."""
    def finish(self, staged: StagedBlobs) -> None: ...
    def stored(self) -> Iterator[tuple[str, float]]:
        """(sha256, time written) of every stored blob."""
    def delete_many(self, refs: Sequence[BlobRef]) -> None: ...
    def reclaim(self) -> int:
        """Hand space freed by deletions back to the file system; return the octets."""


# --- what a backend hands the rest of the program ------------------------------------------------


@dataclass(frozen=True)
class AdminStores:
    """The roles the command line's admin commands use (no delivery machinery started)."""

    domains: Domains
    accounts: Accounts
    aliases: Aliases
    mailboxes: MailboxCatalogue
    queue: MailQueue
    shares: Shares
    leases: Leases
    tokens: Tokens
    closer: Callable[[], None]

    def close(self) -> None:
        self.closer()


@dataclass(frozen=True)
class Stores:
    """Every role, as a running server needs them."""

    domains: Domains
    accounts: Accounts
    aliases: Aliases
    mailboxes: MailboxCatalogue
    messages: Messages
    delivery: DeliveryTarget
    blobs: BlobStore
    changes: ChangeFeed
    log: ChangeLog
    maintenance: Maintenance
    queue: MailQueue
    shares: Shares
    leases: Leases
    tokens: Tokens
    closer: Callable[[], None]  # commits what is queued, then closes; blocking

    def close(self) -> None:
        self.closer()
