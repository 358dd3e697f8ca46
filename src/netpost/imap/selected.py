"""A selected mailbox as one session sees it (RFC 9051 2.3.1.2, 5.2, 7.5).

Message sequence numbers are the session's own: they change only when the session tells the
client (EXPUNGE/VANISHED, EXISTS).  The view holds one lean entry per message (a 100,000
message mailbox is ~25 MiB here), learns of other sessions' changes from the account's change
feed, and keeps what it has not told the client yet in pending sets until a moment when
telling is allowed (no EXPUNGE during FETCH, STORE or SEARCH, RFC 9051 7.5.1).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from netpost.imap.parser import SequenceSet
from netpost.store.interfaces import Change, Mailbox, MessageState

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_FLAG_CACHE: dict[str, frozenset[str]] = {}


def flags_of(text: str) -> frozenset[str]:
    """The flag set of a stored flags text, shared between messages with the same flags."""
    value = _FLAG_CACHE.get(text)
    if value is None:
        value = frozenset(text.split())
        if len(_FLAG_CACHE) < 10_000:
            _FLAG_CACHE[text] = value
    return value


class View:
    """The messages of a selected mailbox, in UID order, as told to the client."""

    def __init__(self, mailbox: Mailbox, rows: Sequence[MessageState], *, readonly: bool,
                 recent_above: int | None) -> None:
        self.mailbox = mailbox
        self.mailbox_id = mailbox.id
        self.uidvalidity = mailbox.uidvalidity
        self.readonly = readonly
        self.uids: list[int] = []
        self.sizes: list[int] = []
        self.dates: list[float] = []
        self.modseqs: list[int] = []
        self.flags: list[frozenset[str]] = []
        self.shas: list[str] = []
        self.recent: set[int] = set()
        self.uidnext = mailbox.uidnext
        self.highestmodseq = mailbox.highestmodseq
        self.pending_expunge: set[int] = set()  # gone from the store, not yet told
        self.pending_flags: set[int] = set()  # changed by others, not yet told
        self.check_new = False  # the feed said something was appended
        self.saved: list[int] = []  # SEARCHRES "$": UIDs (RFC 5182)
        self.known_keywords: set[str] = set()  # keywords the client was told of in FLAGS
        self.version = 0  # counts changes to the entries (SEARCH keeps its list until then)
        self.infos: list[object] = []
        self.infos_key: object = None
        self.add(rows)
        if recent_above is not None:
            self.recent = {u for u in self.uids if u > recent_above}

    def __len__(self) -> int:
        return len(self.uids)

    def add(self, rows: Iterable[MessageState]) -> int:
        """Append new messages (UIDs above every known one); the number added."""
        n = 0
        self.version += 1
        last = self.uids[-1] if self.uids else 0
        for uid, size, date, modseq, flags, sha in rows:
            if uid <= last:
                continue
            self.uids.append(uid)
            self.sizes.append(size)
            self.dates.append(date)
            self.modseqs.append(modseq)
            self.flags.append(flags_of(flags))
            self.shas.append(sha)
            last = uid
            n += 1
            if uid >= self.uidnext:
                self.uidnext = uid + 1
            if modseq > self.highestmodseq:
                self.highestmodseq = modseq
        return n

    @property
    def last_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def index(self, uid: int) -> int | None:
        """0-based position of a UID, or None."""
        i = bisect.bisect_left(self.uids, uid)
        return i if i < len(self.uids) and self.uids[i] == uid else None

    def seq(self, uid: int) -> int | None:
        i = self.index(uid)
        return None if i is None else i + 1

    # --- sets --------------------------------------------------------------------------------
    def positions(self, sequence: SequenceSet, *, uid: bool) -> list[int]:
        """0-based positions the set names, ascending; "$" is the saved search result."""
        if sequence.saved:
            out = [i for u in self.saved if (i := self.index(u)) is not None]
            return sorted(set(out))
        n = len(self.uids)
        if not n:
            return []
        if not uid:
            return [s - 1 for s in sequence.members(n, n)]
        uids = self.uids
        largest = uids[-1]
        picked: set[int] = set()
        for a, b in sequence.resolve(largest):
            lo = bisect.bisect_left(uids, a)
            hi = bisect.bisect_right(uids, b)
            picked.update(range(lo, hi))
        return sorted(picked)

    def valid_sequence(self, sequence: SequenceSet) -> bool:
        """RFC 9051 9: message numbers beyond the mailbox are an error (BAD) — "*" aside."""
        if sequence.saved:
            return True
        n = len(self.uids)
        return all((a == 0 or a <= n) and (b == 0 or b <= n) for a, b in sequence.ranges)

    def flags_shown(self, i: int, rev1: bool = True) -> frozenset[str]:
        flags = self.flags[i]
        if rev1 and self.uids[i] in self.recent:
            return flags | {"\\Recent"}
        return flags

    def keywords(self) -> list[str]:
        seen: set[frozenset[str]] = set()
        words: set[str] = set()
        for f in self.flags:
            if f not in seen:
                seen.add(f)
                words.update(x for x in f if not x.startswith("\\"))
        return sorted(words)

    # --- changes ------------------------------------------------------------------------------
    def note(self, changes: Iterable[Change]) -> None:
        """Take in feed entries (of any mailbox of the account)."""
        for c in changes:
            if c.mailbox_id != self.mailbox_id:
                continue
            if c.kind == "append":
                if c.uid > self.last_uid:
                    self.check_new = True
            elif c.kind == "expunge":
                if self.index(c.uid) is not None:
                    self.pending_expunge.add(c.uid)
            else:
                i = self.index(c.uid)
                if i is not None and c.modseq > self.modseqs[i]:
                    self.pending_flags.add(c.uid)
            if c.modseq > self.highestmodseq:
                self.highestmodseq = c.modseq

    def set_flags(self, uid: int, flags: frozenset[str], modseq: int) -> int | None:
        """Record a message's new flags; its position, or None if it is not in the view."""
        i = self.index(uid)
        if i is None:
            return None
        self.version += 1
        self.flags[i] = flags_of(" ".join(sorted(flags)))
        if modseq > self.modseqs[i]:
            self.modseqs[i] = modseq
        if modseq > self.highestmodseq:
            self.highestmodseq = modseq
        return i

    def remove(self, uids: Iterable[int]) -> list[int]:
        """Remove messages; the sequence numbers to announce, in the order to announce them
        (descending, so each number is still right when the client applies it)."""
        positions = sorted((i for u in uids if (i := self.index(u)) is not None), reverse=True)
        self.version += 1
        for i in positions:
            uid = self.uids[i]
            del self.uids[i], self.sizes[i], self.dates[i], self.modseqs[i], self.flags[i], \
                self.shas[i]
            self.recent.discard(uid)
            self.pending_expunge.discard(uid)
            self.pending_flags.discard(uid)
        return [i + 1 for i in positions]
