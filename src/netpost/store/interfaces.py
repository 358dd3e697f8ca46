"""Store interfaces: what the services need from storage, nothing about protocols.

The embedded backend (SQLite + files) lives in `netpost.store.sqlite` and
`netpost.store.blobs`; a PostgreSQL backend implements the same protocols later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

# RFC 6154 special-use mailboxes every account gets (plus INBOX).
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


class StoreError(Exception):
    """A store operation failed because of the caller's input (duplicate, unknown name...).

    The message is one line that says what is wrong, fit to show to a user.
    """


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


@dataclass(frozen=True)
class BlobRef:
    """A content-addressed message file: sha256 hex digest and size in octets."""

    sha256: str
    size: int


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
class Delivery:
    """One message for one or more mailboxes, committed atomically."""

    blob: BlobRef
    meta: MessageMeta
    mailbox_ids: Sequence[int]


class BlobStore(Protocol):
    def put(self, data: bytes) -> BlobRef:
        """Write durably (temp file, fsync, rename, directory fsync) and return the ref.

        Storing bytes that are already present is cheap and returns the same ref.
        """

    def open_path(self, ref: BlobRef) -> str:
        """The file path of a blob, for streaming reads."""

    def read(self, ref: BlobRef) -> bytes: ...

    def delete(self, ref: BlobRef) -> None: ...


class AccountStore(Protocol):
    def add_domain(self, name: str) -> None: ...
    def remove_domain(self, name: str) -> None: ...
    def list_domains(self) -> list[str]: ...
    def has_domain(self, name: str) -> bool: ...

    def add_account(self, address: str, password_hash: str) -> Account:
        """Create the account and its default mailboxes (DEFAULT_MAILBOXES)."""

    def remove_account(self, address: str) -> None: ...
    def list_accounts(self) -> list[Account]: ...
    def get_account(self, address: str) -> Account | None: ...
    def set_password_hash(self, address: str, password_hash: str) -> None: ...

    def add_alias(self, source: str, target: str) -> None: ...
    def remove_alias(self, source: str, target: str) -> None: ...
    def list_aliases(self) -> list[tuple[str, str]]: ...
    def alias_targets(self, source: str, *, catch_all: bool = True) -> list[str]: ...


class MailStore(Protocol):
    def get_mailbox(self, account_id: int, name: str) -> Mailbox | None: ...
    def list_mailboxes(self, account_id: int) -> list[Mailbox]: ...

    def deliver(self, deliveries: Sequence[Delivery]) -> list[list[int]]:
        """Append every delivery in ONE transaction (group commit); return the UIDs given,
        per delivery, in the order of its mailbox_ids. Durable when it returns."""

    def messages(self, mailbox_id: int) -> list[MessageRow]:
        """All messages of a mailbox in UID order."""

    def expunge(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        """Remove these messages (those still present); return the UIDs removed."""
