"""IMAP session: the engine's mailbox commands run against the store (RFC 9051 6).

The engine (`protocol.py`) frames, parses and checks states; this session answers each
`Request` with the mailbox service and the store roles, keeps the selected mailbox's `View`
in step with the account's change feed, and says what changed at the moments RFC 9051 7.5
allows.  Pipelined APPENDs commit concurrently (each tagged OK only once its message is
durable); any other command first waits for them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from netpost.auth.service import Authenticator
from netpost.imap import commands as cmds
from netpost.imap import mime
from netpost.imap.parser import ParseError, format_sequence_set
from netpost.imap.protocol import (
    IdleDone,
    IMAPConnection,
    IMAPSettings,
    LoginRequest,
    Request,
    StartTLS,
)
from netpost.imap.selected import SYSTEM_FLAGS, View, flags_of
from netpost.imap.wire import Raw, encode_mutf7, encode_value, flag_list, quoted_or_literal
from netpost.mail.mailboxes import Mailboxes
from netpost.mail.message import parse_meta, to_crlf
from netpost.net.session import Engine, Session
from netpost.store.interfaces import (
    HIERARCHY_SEPARATOR,
    Account,
    BlobRef,
    Change,
    Mailbox,
    StoreError,
    Subscription,
)

if TYPE_CHECKING:
    from netpost.net.stream import StreamListener

log = logging.getLogger("netpost.imap")
# Keywords a mailbox's list keeps at most; beyond, sessions still learn those they see set.
MAX_DEFINED_KEYWORDS = 1000

SEP = HIERARCHY_SEPARATOR
FLUSH_AFTER = 4 * 1024 * 1024  # octets of queued responses before waiting for the socket
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_STATUS_ITEMS = frozenset({"MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "RECENT", "SIZE",
                           "HIGHESTMODSEQ", "DELETED", "APPENDLIMIT"})


def refuse_line(reason: str) -> bytes:
    return f"* BYE [UNAVAILABLE] {reason}, try again later\r\n".encode()


def internaldate_text(t: float) -> bytes:
    """RFC 9051 9 date-time in UTC: "02-Dec-2026 15:41:03 +0000"."""
    tm = time.gmtime(t)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        tm.tm_mday, _MONTHS[tm.tm_mon - 1].encode(), tm.tm_year, tm.tm_hour, tm.tm_min,
        tm.tm_sec)


def valid_flag(flag: str) -> bool:
    """A system flag or a keyword atom (RFC 9051 9: flag-keyword is an atom)."""
    if flag.startswith("\\"):
        return canonical_flag(flag) in SYSTEM_FLAGS
    return bool(flag) and not any(c in '(){%*"\\]' or ord(c) <= 32 or ord(c) >= 127
                                  for c in flag)


def canonical_flag(flag: str) -> str:
    """System flags are case-insensitive (RFC 9051 2.3.2): \\SEEN is \\Seen."""
    return "\\" + flag[1:].capitalize() if flag.startswith("\\") else flag


def canonical_mailbox(name: str) -> str:
    """INBOX in any case is INBOX (RFC 9051 5.1), also as the first level of a name."""
    head, sep, tail = name.partition(SEP)
    if head.upper() == "INBOX":
        return "INBOX" + sep + tail
    return name


@dataclasses.dataclass
class _Pending:
    tag: str
    task: asyncio.Task[None]


class _SearchData:
    """`search.SearchData` over the store for the selected mailbox."""

    def __init__(self, session: IMAPSession, view: View) -> None:
        self.session = session
        self.view = view
        self._cache: dict[str, dict[int, str]] = {}

    def header_texts(self, field: str, uids: Sequence[int]) -> dict[int, str]:
        texts = self._cache.get(field)
        if texts is None:
            rows = self.session.mailboxes.messages.header_texts(self.view.mailbox_id, field)
            texts = self._cache[field] = {uid: text for uid, text in rows if text}
        return {u: texts[u] for u in uids if u in texts}

    def header_candidates(self, field: str, needle: str, *, address: bool) -> dict[int, str]:
        rows = self.session.mailboxes.messages.header_candidates(
            self.view.mailbox_id, field, needle, address=address)
        return dict(rows)

    def raw_message(self, uid: int) -> bytes | None:
        i = self.view.index(uid)
        if i is None:
            return None
        try:
            return self.session.mailboxes.blobs.read(BlobRef(self.view.shas[i],
                                                             self.view.sizes[i]))
        except OSError:
            return None


class IMAPSession(Session):
    """One IMAP connection."""

    def __init__(self, listener: StreamListener, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: str, *, settings: IMAPSettings,
                 hostname: str, mailboxes: Mailboxes, auth: Authenticator,
                 quota: int) -> None:
        super().__init__(listener, reader, writer, peer)
        self.settings = settings
        self.hostname = hostname
        self.mailboxes = mailboxes
        self.auth = auth
        self.default_quota = quota
        self.account: Account | None = None
        self.sub: Subscription | None = None
        self.view: View | None = None
        self.condstore = False  # MODSEQ goes into FETCH responses (RFC 7162 3.1)
        self.appends: list[_Pending] = []
        self.idle_task: asyncio.Task[None] | None = None
        self.unflushed = 0

    # --- session plumbing ----------------------------------------------------------------------
    def make_engine(self) -> Engine:
        settings = self.settings
        if self.listener.ssl_context is None and settings.tls_available:
            settings = dataclasses.replace(settings, tls_available=False)
        self.imap = IMAPConnection(settings, tls_active=self.tls_active, trace=self.trace)
        return self.imap

    def start(self) -> None:
        self.imap.greeting(self.hostname)

    def say_goodbye(self, reason: str) -> None:
        if reason == "idle":
            self.imap.bye("Idle timeout, closing connection")
        else:
            self.imap.bye("[UNAVAILABLE] Server shutting down")

    def in_transaction(self) -> bool:
        return bool(self.appends)

    @property
    def rev2(self) -> bool:
        return "IMAP4REV2" in self.imap.enabled

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.imap.enabled

    def _write_out(self) -> None:
        data = self.imap.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def handle(self, event: Any) -> None:
        if isinstance(event, Request):
            await self.request(event.command)
        elif isinstance(event, LoginRequest):
            await self.login(event)
        elif isinstance(event, IdleDone):
            await self.idle_done(event)
        elif isinstance(event, StartTLS):
            await self.start_tls()
        else:  # pragma: no cover - the engine has no other events
            raise TypeError(f"unexpected event {event!r}")

    async def login(self, event: LoginRequest) -> None:
        try:
            account = await self.auth.login(event.credentials, self.peer, "imap")
        except Exception:
            log.exception("imap %s: login failed on a server error", self.peer)
            self.imap.login_done(event.tag, False, "[UNAVAILABLE] Temporary problem, try again")
            return
        if account is None:
            self.imap.login_done(event.tag, False)
            return
        self.account = account
        self.sub = self.mailboxes.watch(account)
        self.on_close(self.sub.close)
        self.on_close(self._cancel_background)
        self.imap.login_done(event.tag, True)

    def _cancel_background(self) -> None:
        if self.idle_task is not None:
            self.idle_task.cancel()

    # --- dispatch ----------------------------------------------------------------------------
    async def request(self, cmd: cmds.Command) -> None:
        if cmd.name != "APPEND" and self.appends:
            await self._wait_appends()
        handler = self._handlers.get(cmd.name.removeprefix("UID "))
        assert handler is not None, cmd.name
        try:
            await handler(self, cmd)
        except ParseError as exc:
            self._finish(cmd, "BAD", f"Syntax error: {exc}")
        except StoreError as exc:
            self._finish(cmd, "NO", str(exc))
        except Exception:
            log.exception("imap %s: %s failed", self.peer, cmd.name)
            self._finish(cmd, "NO", "[SERVERBUG] Internal error, the command was not completed")

    def _finish(self, cmd: cmds.Command, status: str, text: str) -> None:
        if self.imap._pending is not None:  # not deferred or answered already
            self.imap.complete(cmd.tag, status, text)

    def ok(self, cmd: cmds.Command, text: str | None = None) -> None:
        self.imap.complete(cmd.tag, "OK", text or f"{cmd.name} completed")

    def no(self, cmd: cmds.Command, text: str) -> None:
        self.imap.complete(cmd.tag, "NO", text)

    def bad(self, cmd: cmds.Command, text: str) -> None:
        self.imap.complete(cmd.tag, "BAD", text)

    async def _wait_appends(self) -> None:
        pending = [p.task for p in self.appends]
        await asyncio.gather(*pending, return_exceptions=True)

    # --- change announcements ------------------------------------------------------------------
    async def announce(self, *, expunges: bool = True,
                       changes: Sequence[Change] | None = None) -> None:
        """Tell the client what changed in the selected mailbox (RFC 9051 7.5)."""
        sub = self.sub
        if sub is None:
            return
        polled = sub.poll()
        if changes is not None:
            polled = [*changes, *polled]
        view = self.view
        if view is None:
            return
        view.note(polled)
        imap = self.imap
        if expunges and view.pending_expunge:
            uids = sorted(view.pending_expunge)
            if self.qresync:
                view.remove(uids)
                imap.untagged(b"VANISHED " + format_sequence_set(uids).encode())
            else:
                imap.untagged_many([b"%d EXPUNGE" % s for s in view.remove(uids)])
        if view.check_new:
            view.check_new = False
            rows = self.mailboxes.messages.states(view.mailbox_id, view.last_uid)
            first_new = view.last_uid
            if rows and view.add(rows):
                in_use: set[str] = set()
                for row in rows:
                    in_use.update(flags_of(row[4]))
                self._keywords_known(view, frozenset(in_use))
                if not view.readonly:
                    mark = await asyncio.to_thread(self.mailboxes.messages.claim_recent,
                                                   view.mailbox_id)
                    view.recent.update(u for u, *_ in rows if u > max(mark, first_new))
                imap.untagged(b"%d EXISTS" % len(view))
                if not self.rev2:
                    imap.untagged(b"%d RECENT" % len(view.recent))
        if view.pending_flags:
            uids = sorted(view.pending_flags)
            view.pending_flags.clear()
            lines = []
            for uid, text, modseq in self.mailboxes.messages.flag_states(view.mailbox_id, uids):
                i = view.set_flags(uid, flags_of(text), modseq)
                self._keywords_known(view, flags_of(text))
                if i is not None:
                    lines.append(self._flags_fetch(view, i, with_uid=self.qresync))
            imap.untagged_many(lines)
        # A keyword another session defined, on a message this one has not seen (or no more).
        self._keywords_known(view, frozenset())

    def _keywords_known(self, view: View, flags: frozenset[str]) -> None:
        """Announce keywords the client has not seen in FLAGS yet (RFC 9051 7.3.5: FLAGS
        lists the flags defined in the mailbox; clients refuse a keyword they were not told
        of).  Every session with the mailbox selected learns each keyword defined in it, also
        one whose only message was expunged before this session saw it, so all of them
        agree on the list."""
        defined = self._defined_keywords(view)
        if len(defined) < MAX_DEFINED_KEYWORDS:
            defined.update(f for f in flags if not f.startswith("\\"))
        new = [f for f in (defined | flags) if not f.startswith("\\")
               and f not in view.known_keywords]
        if not new:
            return
        view.known_keywords.update(new)
        flags_text = " ".join([*SYSTEM_FLAGS, *sorted(view.known_keywords)])
        self.imap.untagged(f"FLAGS ({flags_text})".encode())
        if not view.readonly:
            self.imap.untagged(f"OK [PERMANENTFLAGS ({flags_text} \\*)] Flags permitted"
                               .encode())

    def _defined_keywords(self, view: View) -> set[str]:
        return self.mailboxes.keywords.setdefault(view.mailbox_id, set())

    def _enable_condstore(self) -> None:
        """A CONDSTORE-enabling command (RFC 7162 3.1): from now on MODSEQ goes with every
        flag change; the first one in a selected mailbox reports HIGHESTMODSEQ."""
        if self.condstore:
            return
        self.condstore = True
        if self.view is not None:
            self.imap.untagged(b"OK [HIGHESTMODSEQ %d] Highest" % self.view.highestmodseq)

    def _flags_fetch(self, view: View, i: int, *, with_uid: bool) -> bytes:
        parts = [b"FLAGS " + flag_list(view.flags_shown(i, not self.rev2))]
        if with_uid:
            parts.insert(0, b"UID %d" % view.uids[i])
        if self.condstore:
            parts.append(b"MODSEQ (%d)" % view.modseqs[i])
        return b"%d FETCH (%s)" % (i + 1, b" ".join(parts))

    # --- simple commands -----------------------------------------------------------------------
    async def cmd_noop(self, cmd: cmds.Command) -> None:
        await self.announce()
        self.ok(cmd)

    async def cmd_namespace(self, cmd: cmds.Command) -> None:
        # RFC 2342: one personal namespace, no others.
        self.imap.untagged(f'NAMESPACE (("" "{SEP}")) NIL NIL'.encode())
        self.ok(cmd)

    async def cmd_idle(self, cmd: cmds.Command) -> None:
        await self.announce()
        self.idle_tag = cmd.tag
        self.imap.start_idle(cmd.tag)
        self.idle_task = asyncio.create_task(self._idle_watch())

    async def _idle_watch(self) -> None:
        sub = self.sub
        assert sub is not None
        try:
            while True:
                changes = await sub.wait()
                await self.announce(changes=changes)
                self._write_out()
                await self.writer.drain()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("imap %s: IDLE update failed", self.peer)

    async def idle_done(self, event: IdleDone) -> None:
        task, self.idle_task = self.idle_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self.announce()
        if event.tag:
            self.imap.complete(event.tag, "OK", "IDLE terminated")
        else:
            self.imap.defer()

    # --- mailboxes -----------------------------------------------------------------------------
    def _account(self) -> Account:
        assert self.account is not None
        return self.account

    def _mailbox(self, name: str) -> Mailbox | None:
        return self.mailboxes.catalogue.get_mailbox(self._account().id, canonical_mailbox(name))

    def _out_name(self, name: str) -> bytes:
        return quoted_or_literal(encode_mutf7(name).encode())

    async def cmd_select(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.Select)
        readonly = cmd.name == "EXAMINE"
        if self.view is not None:
            self.view = None
            self.imap.set_selected(False)
            if self.rev2 or self.qresync:
                self.imap.untagged(b"OK [CLOSED] Previous mailbox closed")
        if cmd.qresync is not None and not self.qresync:
            self.bad(cmd, "QRESYNC must be enabled first (ENABLE QRESYNC)")
            return
        mailbox = self._mailbox(cmd.mailbox)
        if mailbox is None:
            self.no(cmd, "[NONEXISTENT] No such mailbox")
            return
        messages = self.mailboxes.messages
        if self.sub is not None:
            self.sub.poll()  # what is committed now is in the rows read next
        rows = await asyncio.to_thread(messages.states, mailbox.id)  # 100,000 rows: ~0.1 s
        mark = (messages.recent_mark(mailbox.id) if readonly else
                await asyncio.to_thread(messages.claim_recent, mailbox.id))
        mailbox = self.mailboxes.catalogue.get_mailbox_by_id(mailbox.id) or mailbox
        view = View(mailbox, rows, readonly=readonly, recent_above=mark)
        if cmd.condstore:
            self.condstore = True
        if self.qresync or "CONDSTORE" in self.imap.enabled:
            self.condstore = True
        imap = self.imap
        in_use = set(view.keywords())
        defined = self._defined_keywords(view)
        if len(defined) < MAX_DEFINED_KEYWORDS:
            defined.update(in_use)
        keywords = sorted(defined | in_use)
        view.known_keywords.update(keywords)
        flags = " ".join([*SYSTEM_FLAGS, *keywords])
        imap.untagged(b"%d EXISTS" % len(view))
        if not self.rev2:
            imap.untagged(b"%d RECENT" % len(view.recent))
            unseen = next((i + 1 for i, f in enumerate(view.flags) if "\\Seen" not in f), None)
            if unseen is not None:
                imap.untagged(b"OK [UNSEEN %d] First unseen message" % unseen)
        imap.untagged(f"FLAGS ({flags})".encode())
        if readonly:
            imap.untagged(b"OK [PERMANENTFLAGS ()] Read-only mailbox")
        else:
            imap.untagged(f"OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted".encode())
        imap.untagged(b"OK [UIDVALIDITY %d] UIDs valid" % view.uidvalidity)
        imap.untagged(b"OK [UIDNEXT %d] Predicted next UID" % max(view.uidnext,
                                                                    mailbox.uidnext))
        imap.untagged(b"OK [HIGHESTMODSEQ %d] Highest" % max(view.highestmodseq,
                                                               mailbox.highestmodseq))
        view.highestmodseq = max(view.highestmodseq, mailbox.highestmodseq)
        if self.rev2:
            imap.untagged(b'LIST () "/" ' + self._out_name(mailbox.name))
        self.view = view
        imap.set_selected(True, readonly)
        if cmd.qresync is not None:
            self._qresync_select(view, cmd.qresync)
        self.ok(cmd, f"[{'READ-ONLY' if readonly else 'READ-WRITE'}] {cmd.name} completed")

    def _qresync_select(self, view: View, params: Any) -> None:
        uidvalidity, modseq, known, _match = params
        if uidvalidity != view.uidvalidity:
            return  # RFC 7162 3.2.5.2: a different UIDVALIDITY: no VANISHED or FETCH
        gone = self.mailboxes.messages.expunged_since(view.mailbox_id, modseq)
        if known is not None:
            largest = view.last_uid or 1
            gone = [u for u in gone if known.contains(u, max(largest, max(gone, default=1)))]
        gone = [u for u in gone if view.index(u) is None]
        if gone:
            self.imap.untagged(b"VANISHED (EARLIER) " + format_sequence_set(gone).encode())
        lines = []
        for i, m in enumerate(view.modseqs):
            if m > modseq:
                lines.append(b"%d FETCH (UID %d FLAGS %s MODSEQ (%d))" % (
                    i + 1, view.uids[i], flag_list(view.flags_shown(i, not self.rev2)), m))
        self.imap.untagged_many(lines)

    async def cmd_close(self, cmd: cmds.Command) -> None:
        view = self.view
        assert view is not None
        if cmd.name == "CLOSE" and not view.readonly:
            # RFC 9051 6.4.1: remove \Deleted messages silently.
            await self.announce(expunges=False)
            uids = [view.uids[i] for i, f in enumerate(view.flags) if "\\Deleted" in f]
            if uids:
                await self.mailboxes.expunge(view.mailbox_id, uids)
        self.view = None
        self.imap.set_selected(False)
        self.ok(cmd)

    async def cmd_check(self, cmd: cmds.Command) -> None:
        await self.announce()
        self.ok(cmd)

    async def cmd_create(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.MailboxCommand)
        name = canonical_mailbox(cmd.mailbox.rstrip(SEP)) if cmd.mailbox != SEP else ""
        if not name:
            self.no(cmd, "Invalid mailbox name")
            return
        if name == "INBOX" or self._mailbox(name) is not None:
            self.no(cmd, "[ALREADYEXISTS] Mailbox already exists")
            return
        special = cmd.special_use
        if special is not None and canonical_flag(special) not in (
                "\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"):
            self.no(cmd, "[USEATTR] Unknown special-use attribute")
            return
        account = self._account()
        catalogue = self.mailboxes.catalogue
        # RFC 9051 6.3.4: create the superior names that are needed.
        levels = name.split(SEP)
        for n in range(1, len(levels)):
            parent = SEP.join(levels[:n])
            if catalogue.get_mailbox(account.id, parent) is None:
                await asyncio.to_thread(catalogue.create_mailbox, account.id, parent)
        await asyncio.to_thread(catalogue.create_mailbox, account.id, name,
                                canonical_flag(special) if special else None)
        self.ok(cmd)

    async def cmd_delete(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.MailboxCommand)
        name = canonical_mailbox(cmd.mailbox)
        if name == "INBOX":
            self.no(cmd, "[CANNOT] INBOX cannot be deleted")
            return
        mailbox = self._mailbox(name)
        if mailbox is None:
            self.no(cmd, "[NONEXISTENT] No such mailbox")
            return
        if self.view is not None and self.view.mailbox_id == mailbox.id:
            self.view = None
            self.imap.set_selected(False)
        await asyncio.to_thread(self.mailboxes.catalogue.delete_mailbox, self._account().id,
                                name)
        self.ok(cmd)

    async def cmd_rename(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.Rename)
        old, new = canonical_mailbox(cmd.old), canonical_mailbox(cmd.new.rstrip(SEP))
        account = self._account()
        catalogue = self.mailboxes.catalogue
        source = self._mailbox(old)
        if source is None:
            self.no(cmd, "[NONEXISTENT] No such mailbox")
            return
        if not new or self._mailbox(new) is not None or new == "INBOX":
            self.no(cmd, "[ALREADYEXISTS] Target mailbox already exists")
            return
        levels = new.split(SEP)
        for n in range(1, len(levels)):
            parent = SEP.join(levels[:n])
            if parent != old and catalogue.get_mailbox(account.id, parent) is None:
                await asyncio.to_thread(catalogue.create_mailbox, account.id, parent)
        if old == "INBOX":
            # RFC 9051 6.3.6: renaming INBOX moves its messages to the new mailbox.
            target = await asyncio.to_thread(catalogue.create_mailbox, account.id, new)
            uids = [r[0] for r in self.mailboxes.messages.states(source.id)]
            if uids:
                await asyncio.to_thread(self.mailboxes.messages.move, source.id, uids,
                                        target.id)
        else:
            await asyncio.to_thread(catalogue.rename_mailbox, account.id, old, new)
        self.ok(cmd)

    async def cmd_subscribe(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.MailboxCommand)
        name = canonical_mailbox(cmd.mailbox)
        subscribe = cmd.name == "SUBSCRIBE"
        if subscribe and self._mailbox(name) is None:
            self.no(cmd, "[NONEXISTENT] No such mailbox")
            return
        await asyncio.to_thread(self.mailboxes.catalogue.set_subscribed, self._account().id,
                                name, subscribe)
        self.ok(cmd)

    async def cmd_list(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.List)
        imap = self.imap
        for item in cmd.selection:
            if item not in ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"):
                self.bad(cmd, f"Unknown LIST selection option {item}")
                return
        if "RECURSIVEMATCH" in cmd.selection and not (
                set(cmd.selection) - {"RECURSIVEMATCH", "REMOTE"}):
            # RFC 5258 3: RECURSIVEMATCH needs another selection option (not just REMOTE).
            self.bad(cmd, "RECURSIVEMATCH needs another selection option")
            return
        for item in cmd.returns:
            if item not in ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"):
                self.bad(cmd, f"Unknown LIST return option {item}")
                return
        if not cmd.extended and len(cmd.patterns) == 1 and cmd.patterns[0] == "":
            # RFC 9051 6.3.9: the empty pattern asks for the separator and root.
            imap.untagged((b"LSUB" if cmd.lsub else b"LIST") + b' (\\Noselect) "/" ""')
            self.ok(cmd)
            return
        account = self._account()
        catalogue = self.mailboxes.catalogue
        mailboxes = catalogue.list_mailboxes(account.id)
        by_name = {m.name: m for m in mailboxes}
        subscribed = set(catalogue.subscriptions(account.id))
        names = set(by_name)
        for m in mailboxes:  # superiors that do not exist themselves
            levels = m.name.split(SEP)
            for n in range(1, len(levels)):
                names.add(SEP.join(levels[:n]))
        subscribed_only = cmd.lsub or "SUBSCRIBED" in cmd.selection
        if subscribed_only:
            names |= subscribed
        children: dict[str, set[str]] = {}
        for name in names:
            levels = name.split(SEP)
            for n in range(1, len(levels)):
                children.setdefault(SEP.join(levels[:n]), set()).add(name)
        special_only = "SPECIAL-USE" in cmd.selection
        recursive = "RECURSIVEMATCH" in cmd.selection
        matchers = [_pattern(cmd.reference, p) for p in cmd.patterns]

        def matches(name: str) -> bool:
            return any(m(name) for m in matchers)

        lines = []
        for name in sorted(names, key=lambda n: (n != "INBOX", n)):
            if not matches(name):
                continue
            mailbox = by_name.get(name)
            is_subscribed = name in subscribed
            extra = b""
            if subscribed_only and not is_subscribed:
                # RFC 5258 3.5: a name whose subscribed descendants the patterns do not
                # return is listed with CHILDINFO.
                if recursive and any(d in subscribed and not matches(d)
                                     for d in children.get(name, ())):
                    extra = b' ("CHILDINFO" ("SUBSCRIBED"))'
                elif cmd.lsub and any(d in subscribed for d in children.get(name, ())):
                    # RFC 3501 6.3.9: "%" matching a superior of a subscribed name lists
                    # it as \\Noselect.
                    lines.append((name, ["\\Noselect"], b""))
                    continue
                else:
                    continue
            if special_only and (mailbox is None or mailbox.special_use is None):
                continue
            attrs: list[str] = []
            if mailbox is None:
                attrs.append("\\NonExistent" if cmd.extended and name not in
                             children else "\\Noselect")
            if not cmd.lsub and (not cmd.extended or "CHILDREN" in cmd.returns or
                                 not cmd.returns):
                has = any(c in by_name for c in children.get(name, ()))
                attrs.append("\\HasChildren" if has else "\\HasNoChildren")
            if mailbox is not None and mailbox.special_use and (
                    not cmd.extended or "SPECIAL-USE" in cmd.returns or special_only or
                    not cmd.returns):
                attrs.append(mailbox.special_use)
            if is_subscribed and ("SUBSCRIBED" in cmd.returns or
                                  "SUBSCRIBED" in cmd.selection):
                attrs.append("\\Subscribed")
            lines.append((name, attrs, extra))
        kind = b"LSUB" if cmd.lsub else b"LIST"
        for name, attrs, extra in lines:
            imap.untagged(kind + b" (" + " ".join(attrs).encode() + b') "/" ' +
                          self._out_name(name) + extra)
            if cmd.status_items and name in by_name:
                # RFC 5819 2: STATUS right after the mailbox's LIST response.
                try:
                    imap.untagged(self._status_line(by_name[name], cmd.status_items))
                except ParseError:
                    pass
        self.ok(cmd)

    def _status_line(self, mailbox: Mailbox, items: list[str]) -> bytes:
        for item in items:
            if item not in _STATUS_ITEMS:
                raise ParseError(f"Unknown STATUS item {item}")
        view = self.view
        messages = self.mailboxes.messages
        count, unseen, size, deleted = messages.mailbox_counts(mailbox.id)
        values = []
        for item in items:
            if item == "MESSAGES":
                v = count
            elif item == "UIDNEXT":
                v = mailbox.uidnext
            elif item == "UIDVALIDITY":
                v = mailbox.uidvalidity
            elif item == "UNSEEN":
                v = unseen
            elif item == "RECENT":
                if view is not None and view.mailbox_id == mailbox.id:
                    v = len(view.recent)
                else:
                    mark = messages.recent_mark(mailbox.id)
                    v = sum(1 for r in messages.states(mailbox.id, mark))
            elif item == "SIZE":
                v = size
            elif item == "HIGHESTMODSEQ":
                v = mailbox.highestmodseq
            elif item == "DELETED":
                v = deleted
            else:
                v = self.settings.max_literal
            values.append(f"{item} {v}")
        return b"STATUS " + self._out_name(mailbox.name) + b" (" + \
            " ".join(values).encode() + b")"

    async def cmd_status(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.Status)
        mailbox = self._mailbox(cmd.mailbox)
        if mailbox is None:
            self.no(cmd, "[NONEXISTENT] No such mailbox")
            return
        await self.announce()
        self.imap.untagged(self._status_line(mailbox, cmd.items))
        self.ok(cmd)

    # --- quota (RFC 9208) ----------------------------------------------------------------------
    def _quota_limit(self) -> int:
        limit = self.mailboxes.messages.account_quota(self._account().id)
        return self.default_quota if limit is None else limit

    def _quota_line(self) -> bytes:
        octets, count = self.mailboxes.messages.account_usage(self._account().id)
        limit = self._quota_limit()
        # STORAGE is in units of 1024 octets (RFC 9208 5.1).
        return b'QUOTA "" (STORAGE %d %d)' % ((octets + 1023) // 1024, limit // 1024)

    async def cmd_getquotaroot(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.MailboxCommand)
        mailbox = self._mailbox(cmd.mailbox)
        if mailbox is None:
            self.no(cmd, "[NONEXISTENT] No such mailbox")
            return
        if not self._quota_limit():
            self.imap.untagged(b"QUOTAROOT " + self._out_name(mailbox.name))
        else:
            self.imap.untagged(b"QUOTAROOT " + self._out_name(mailbox.name) + b' ""')
            self.imap.untagged(self._quota_line())
        self.ok(cmd)

    async def cmd_getquota(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.Quota)
        if cmd.root != "" or not self._quota_limit():
            self.no(cmd, "[NONEXISTENT] No such quota root")
            return
        self.imap.untagged(self._quota_line())
        self.ok(cmd)

    async def cmd_setquota(self, cmd: cmds.Command) -> None:
        self.no(cmd, "[NOPERM] Quotas are set by the administrator (netpost user quota)")

    def _over_quota(self, adding: int) -> bool:
        limit = self._quota_limit()
        if not limit:
            return False
        octets, _ = self.mailboxes.messages.account_usage(self._account().id)
        return octets + adding > limit

    # --- APPEND ------------------------------------------------------------------------------
    async def cmd_append(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.Append)
        mailbox = self._mailbox(cmd.mailbox)
        if mailbox is None:
            self.no(cmd, "[TRYCREATE] No such mailbox")
            return
        for m in cmd.messages:
            bad = [f for f in m.flags if not valid_flag(f) or canonical_flag(f) == "\\Recent"]
            if bad:
                self.bad(cmd, f"Invalid flag {bad[0]}")
                return
            if not m.content:
                self.no(cmd, "Cannot append an empty message")
                return
            if b"\x00" in m.content and not m.binary:
                self.no(cmd, "[UNKNOWN-CTE] NUL octets need a literal8 (~{n})")
                return
        if self._over_quota(sum(len(m.content) for m in cmd.messages)):
            self.no(cmd, "[OVERQUOTA] Quota exceeded")
            return
        target = self.mailboxes.target
        txs = []
        for m in cmd.messages:
            content = base64_binary_parts(m.content) if m.binary else m.content
            data = to_crlf(content)
            date = time.time() if m.internaldate is None else m.internaldate
            tx = target.begin()
            tx.add_mailbox(mailbox.id)
            tx.body(data, _meta(data, date), frozenset(canonical_flag(f) for f in m.flags))
            txs.append(tx)
        task = asyncio.create_task(self._commit_append(cmd, mailbox, txs))
        self.appends.append(_Pending(cmd.tag, task))
        self.imap.defer()

    async def _commit_append(self, cmd: cmds.Append, mailbox: Mailbox,
                             txs: list[Any]) -> None:
        try:
            results = await asyncio.gather(*(tx.commit() for tx in txs),
                                           return_exceptions=True)
            uids = [r[0] for r in results if isinstance(r, list)]
            failed = [r for r in results if not isinstance(r, list)]
            if failed:
                for tx in txs:
                    tx.abort()
                if uids:  # RFC 3502 6: all or none
                    await self.mailboxes.expunge(mailbox.id, uids)
                log.error("imap %s: APPEND failed: %s", self.peer, failed[0])
                self.imap.respond(cmd.tag, "NO", "[SERVERBUG] Message not saved, try again")
            else:
                if self.view is not None and self.view.mailbox_id == mailbox.id:
                    # RFC 9051 6.3.12: EXISTS for the selected mailbox before the OK.
                    self.view.check_new = True
                    await self.announce(expunges=False)
                uidset = format_sequence_set(sorted(uids))
                self.imap.respond(cmd.tag, "OK",
                                  f"[APPENDUID {mailbox.uidvalidity} {uidset}] APPEND completed")
        except Exception:
            log.exception("imap %s: APPEND failed", self.peer)
            self.imap.respond(cmd.tag, "NO", "[SERVERBUG] Message not saved, try again")
        finally:
            self.appends = [p for p in self.appends if p.task is not asyncio.current_task()]
            self._write_out()

    # --- EXPUNGE -----------------------------------------------------------------------------
    async def cmd_expunge(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, (cmds.Simple, cmds.Expunge))
        view = self.view
        assert view is not None
        if view.readonly:
            self.no(cmd, "[READ-ONLY] Mailbox is read-only")
            return
        await self.announce(expunges=True)
        positions = range(len(view))
        if isinstance(cmd, cmds.Expunge) and cmd.uids is not None:
            positions = view.positions(cmd.uids, uid=True)  # type: ignore[assignment]
        uids = [view.uids[i] for i in positions if "\\Deleted" in view.flags[i]]
        if uids:
            removed = await self.mailboxes.expunge(view.mailbox_id, uids)
            self._send_expunged(view, removed)
        self.ok(cmd)

    def _send_expunged(self, view: View, uids: list[int]) -> None:
        if self.qresync:
            view.remove(uids)
            if uids:
                self.imap.untagged(b"VANISHED " + format_sequence_set(sorted(uids)).encode())
        else:
            self.imap.untagged_many([b"%d EXPUNGE" % s for s in view.remove(uids)])

    # --- STORE -------------------------------------------------------------------------------
    async def cmd_store(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.Store)
        view = self.view
        assert view is not None
        if not cmd.uid and not view.valid_sequence(cmd.sequence):
            self.bad(cmd, "Invalid message sequence number")
            return
        bad = [f for f in cmd.flags if not valid_flag(f)]
        if bad:
            self.bad(cmd, f"Invalid flag {bad[0]}")
            return
        if view.readonly:
            self.no(cmd, "[READ-ONLY] Mailbox is read-only")
            return
        if cmd.unchangedsince is not None:
            self._enable_condstore()
        await self.announce(expunges=cmd.uid)
        flags = frozenset(canonical_flag(f) for f in cmd.flags if canonical_flag(f) != "\\Recent")
        positions = view.positions(cmd.sequence, uid=cmd.uid)
        uids = [view.uids[i] for i in positions]
        update = await self.mailboxes.set_flags(view.mailbox_id, uids, flags, cmd.mode,  # type: ignore[arg-type]
                                                unchanged_since=cmd.unchangedsince)
        changed = {}
        in_use: set[str] = set(flags)
        for uid, new, modseq in update.changed:
            view.set_flags(uid, new, modseq)
            changed[uid] = modseq
            in_use |= new  # may hold keywords another session just set
        self._keywords_known(view, frozenset(in_use))
        failed = set(update.failed)
        lines = []
        for i in positions:
            uid = view.uids[i]
            if uid in failed:
                continue
            if cmd.silent and not (self.condstore and uid in changed):
                continue
            if cmd.silent:
                # RFC 7162 3.1.3: .SILENT with UNCHANGEDSINCE still reports the new MODSEQ.
                lines.append(b"%d FETCH (%sMODSEQ (%d))" % (
                    i + 1, b"UID %d " % uid if cmd.uid else b"", view.modseqs[i]))
                continue
            lines.append(self._flags_fetch(view, i, with_uid=cmd.uid))
        self.imap.untagged_many(lines)
        if failed:
            numbers = sorted(failed) if cmd.uid else sorted(
                s for u in failed if (s := view.seq(u)) is not None)
            self.ok(cmd, f"[MODIFIED {format_sequence_set(numbers)}] Conditional STORE failed")
            return
        self.ok(cmd)

    # --- COPY / MOVE ---------------------------------------------------------------------------
    async def cmd_copy(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.Copy)
        view = self.view
        assert view is not None
        if not cmd.uid and not view.valid_sequence(cmd.sequence):
            self.bad(cmd, "Invalid message sequence number")
            return
        target = self._mailbox(cmd.mailbox)
        if target is None:
            self.no(cmd, "[TRYCREATE] No such mailbox")
            return
        if cmd.move and view.readonly:
            self.no(cmd, "[READ-ONLY] Mailbox is read-only")
            return
        await self.announce(expunges=cmd.uid)
        positions = view.positions(cmd.sequence, uid=cmd.uid)
        uids = [view.uids[i] for i in positions]
        if not uids:
            self.ok(cmd, f"{cmd.name} completed: no messages")
            return
        if self._over_quota(sum(view.sizes[i] for i in positions)):
            self.no(cmd, "[OVERQUOTA] Quota exceeded")
            return
        messages = self.mailboxes.messages
        if cmd.move and target.id == view.mailbox_id:
            # Moving into the same mailbox gives the messages new UIDs (RFC 6851 3.3).
            pairs = await asyncio.to_thread(messages.copy, view.mailbox_id, uids, target.id)
            await self.mailboxes.expunge(view.mailbox_id, [p[0] for p in pairs])
        else:
            op = messages.move if cmd.move else messages.copy
            pairs = await asyncio.to_thread(op, view.mailbox_id, uids, target.id)
        if target.id == view.mailbox_id:
            view.check_new = True
            if not cmd.move:
                await self.announce(expunges=False)  # EXISTS for the copies
        code = ""
        if pairs:
            sources = [p[0] for p in pairs]
            targets = [p[1] for p in pairs]
            if _ascending(pairs):
                src, dst = format_sequence_set(sources), format_sequence_set(targets)
            else:
                src, dst = ",".join(map(str, sources)), ",".join(map(str, targets))
            code = f"[COPYUID {target.uidvalidity} {src} {dst}] "
        if cmd.move:
            # RFC 6851 4.3: COPYUID goes in an untagged OK before the expunges.
            if code:
                self.imap.untagged(f"OK {code}Moved".encode())
            self._send_expunged(view, [p[0] for p in pairs])
            if view.check_new:
                await self.announce(expunges=False)  # moved into itself: EXISTS after
            self.ok(cmd, f"{cmd.name} completed")
            return
        missing = len(pairs) < len(uids)
        if missing and not pairs:
            self.no(cmd, "[EXPUNGEISSUED] The messages were expunged meanwhile")
            return
        self.ok(cmd, f"{code}{cmd.name} completed")

    # --- FETCH -------------------------------------------------------------------------------
    async def cmd_fetch(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.Fetch)
        view = self.view
        assert view is not None
        if not cmd.uid and not view.valid_sequence(cmd.sequence):
            self.bad(cmd, "Invalid message sequence number")
            return
        if cmd.changedsince is not None:
            self._enable_condstore()
        await self.announce(expunges=cmd.uid)
        items = list(cmd.items)
        if cmd.uid and not any(i.name == "UID" for i in items):
            items.insert(0, cmds.FetchItem("UID", label="UID"))  # RFC 9051 6.4.9
        if any(i.name == "MODSEQ" for i in items):
            self._enable_condstore()
        if self.condstore and cmd.changedsince is not None and not any(
                i.name == "MODSEQ" for i in items):
            items.append(cmds.FetchItem("MODSEQ", label="MODSEQ"))
        positions = view.positions(cmd.sequence, uid=cmd.uid)
        if cmd.changedsince is not None:
            positions = [i for i in positions if view.modseqs[i] > cmd.changedsince]
            if cmd.vanished:
                gone = self.mailboxes.messages.expunged_since(view.mailbox_id, cmd.changedsince)
                largest = max(view.last_uid, max(gone, default=0))
                gone = [u for u in gone if cmd.sequence.contains(u, largest)
                        and view.index(u) is None]
                if gone:
                    self.imap.untagged(b"VANISHED (EARLIER) " +
                                       format_sequence_set(gone).encode())
        sets_seen = not view.readonly and any(
            not i.peek and i.name in ("BODY[]", "BINARY[]", "RFC822", "RFC822.TEXT")
            for i in items)
        seen_now: set[int] = set()
        if sets_seen:
            unseen = [view.uids[i] for i in positions if "\\Seen" not in view.flags[i]]
            if unseen:
                update = await self.mailboxes.set_flags(view.mailbox_id, unseen,
                                                        frozenset({"\\Seen"}), "add")
                in_use: set[str] = set()
                for uid, new, modseq in update.changed:
                    view.set_flags(uid, new, modseq)
                    seen_now.add(uid)
                    in_use |= new
                self._keywords_known(view, frozenset(in_use))
        needs_content = any(i.name not in ("UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE",
                                           "MODSEQ") for i in items)
        status, text = "OK", f"{cmd.name} completed"
        if not needs_content:
            self.imap.untagged_many(self._fetch_meta(view, positions, items, seen_now))
            self.ok(cmd, text)
            return
        lines: list[bytes] = []
        size = 0
        for i in positions:
            try:
                line = await self._fetch_one(view, i, items, view.uids[i] in seen_now)
            except mime.UnknownCTE:
                status, text = "NO", "[UNKNOWN-CTE] Unknown Content-Transfer-Encoding"
                continue
            except OSError:
                status, text = "NO", "[EXPUNGEISSUED] Some messages are no longer available"
                continue
            lines.append(line)
            size += len(line)
            if size > FLUSH_AFTER:
                self.imap.untagged_many(lines)
                lines, size = [], 0
                await self.flush()
        self.imap.untagged_many(lines)
        self.imap.complete(cmd.tag, status, text)

    def _fetch_meta(self, view: View, positions: list[int], items: list[cmds.FetchItem],
                    seen_now: set[int]) -> list[bytes]:
        """FETCH of items the view holds (UID FLAGS RFC822.SIZE INTERNALDATE MODSEQ)."""
        rev1 = not self.rev2
        names = [i.name for i in items]
        if seen_now and "FLAGS" not in names:
            names.append("FLAGS")
        uids, sizes, dates, modseqs = view.uids, view.sizes, view.dates, view.modseqs
        flag_text: dict[frozenset[str], bytes] = {}
        recent = view.recent
        out = []
        for i in positions:
            parts = []
            for name in names:
                if name == "UID":
                    parts.append(b"UID %d" % uids[i])
                elif name == "FLAGS":
                    f = view.flags[i]
                    if rev1 and uids[i] in recent:
                        f = f | {"\\Recent"}
                    t = flag_text.get(f)
                    if t is None:
                        t = flag_text[f] = b"FLAGS " + flag_list(f)
                    parts.append(t)
                elif name == "RFC822.SIZE":
                    parts.append(b"RFC822.SIZE %d" % sizes[i])
                elif name == "INTERNALDATE":
                    parts.append(b"INTERNALDATE " + internaldate_text(dates[i]))
                else:
                    parts.append(b"MODSEQ (%d)" % modseqs[i])
            out.append(b"%d FETCH (%s)" % (i + 1, b" ".join(parts)))
        return out

    async def _fetch_one(self, view: View, i: int, items: list[cmds.FetchItem],
                         seen_now: bool) -> bytes:
        ref = BlobRef(view.shas[i], view.sizes[i])
        raw = await self.mailboxes.read(ref)
        raw = raw[:ref.size]
        parsed = mime.parse(raw)
        parts: list[bytes] = []
        names = {it.name for it in items}
        if seen_now and "FLAGS" not in names:
            items = [*items, cmds.FetchItem("FLAGS", label="FLAGS")]
        for it in items:
            name = it.name
            if name == "UID":
                parts.append(b"UID %d" % view.uids[i])
            elif name == "FLAGS":
                parts.append(b"FLAGS " + flag_list(view.flags_shown(i, not self.rev2)))
            elif name == "RFC822.SIZE":
                parts.append(b"RFC822.SIZE %d" % view.sizes[i])
            elif name == "INTERNALDATE":
                parts.append(b"INTERNALDATE " + internaldate_text(view.dates[i]))
            elif name == "MODSEQ":
                parts.append(b"MODSEQ (%d)" % view.modseqs[i])
            elif name == "ENVELOPE":
                parts.append(b"ENVELOPE " + encode_value(mime.envelope(parsed)))
            elif name == "BODYSTRUCTURE":
                parts.append(b"BODYSTRUCTURE " +
                             encode_value(mime.bodystructure(parsed, extensible=True)))
            elif name == "BODY":
                parts.append(b"BODY " + encode_value(mime.bodystructure(parsed,
                                                                          extensible=False)))
            elif name == "RFC822":
                parts.append(b"RFC822 " + quoted_or_literal(raw))
            elif name == "RFC822.HEADER":
                data = mime.section(parsed, mime.Section((), "HEADER")) or b""
                parts.append(b"RFC822.HEADER " + quoted_or_literal(data))
            elif name == "RFC822.TEXT":
                data = mime.section(parsed, mime.Section((), "TEXT")) or b""
                parts.append(b"RFC822.TEXT " + quoted_or_literal(data))
            elif name == "BODY[]":
                content = raw if not it.parts and not it.text else mime.section(
                    parsed, mime.Section(it.parts, it.text, it.fields))
                parts.append(it.label.encode() + b" " + _partial(content, it.partial))
            elif name == "BINARY[]":
                decoded = mime.binary(parsed, it.parts)
                if decoded is not None and it.partial is not None:
                    start, length = it.partial
                    decoded = decoded[start:start + length]
                if decoded is None:
                    parts.append(it.label.encode() + b" NIL")
                elif b"\x00" in decoded:
                    # RFC 3516 4.2: content with NUL goes as a literal8.
                    parts.append(it.label.encode() + b" ~{%d}\r\n" % len(decoded) + decoded)
                else:
                    parts.append(it.label.encode() + b" " + quoted_or_literal(decoded))
            elif name == "BINARY.SIZE[]":
                n = mime.binary_size(parsed, it.parts)
                label = it.label.replace("BINARY.SIZE", "BINARY.SIZE")
                parts.append(label.encode() + (b" NIL" if n is None else b" %d" % n))
        return b"%d FETCH (%s)" % (i + 1, b" ".join(parts))

    # --- SEARCH / SORT / THREAD ----------------------------------------------------------------
    def _infos(self, view: View) -> list[Any]:
        """The view as SEARCH sees it; kept until the view changes (a 100,000-message
        mailbox takes ~0.1 s to describe)."""
        from netpost.imap.search import MessageInfo
        rev1 = not self.rev2
        key = (view.version, rev1, len(view.recent))
        if view.infos_key != key:
            uids, dates, sizes, modseqs = view.uids, view.dates, view.sizes, view.modseqs
            view.infos = [MessageInfo(i + 1, uids[i], view.flags_shown(i, rev1), dates[i],
                                      sizes[i], modseqs[i]) for i in range(len(view))]
            view.infos_key = key
        return view.infos

    async def cmd_search(self, cmd: cmds.Command) -> None:
        assert isinstance(cmd, cmds.Search)
        from netpost.imap import search as searching
        from netpost.imap import sort as sorting
        view = self.view
        assert view is not None
        await self.announce(expunges=cmd.uid)
        data = _SearchData(self, view)
        kind = cmd.name.removeprefix("UID ")
        try:
            if kind == "SORT":
                criteria, _charset, key = sorting.parse_sort(cmd.args)
                found = searching.evaluate(key, self._infos(view), data, saved=view.saved)
                ordered = sorting.sort_messages(criteria, found, data)
                numbers = [m.uid if cmd.uid else m.seq for m in ordered]
                self.imap.untagged(b"SORT" + b"".join(b" %d" % n for n in numbers))
                self.ok(cmd)
                return
            if kind == "THREAD":
                algorithm, _charset, key = sorting.parse_thread(cmd.args)
                found = searching.evaluate(key, self._infos(view), data, saved=view.saved)
                threads = sorting.thread(algorithm, found, data)
                self.imap.untagged(b"THREAD " + sorting.format_threads(threads, cmd.uid).encode())
                self.ok(cmd)
                return
            parsed = searching.parse_search(cmd.args)
        except searching.BadCharset:
            self.no(cmd, "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
            return
        found = await asyncio.to_thread(searching.evaluate, parsed.key, self._infos(view), data,
                                        saved=view.saved) if len(view) > 5000 else \
            searching.evaluate(parsed.key, self._infos(view), data, saved=view.saved)
        uses_modseq = searching.uses_modseq(parsed.key)
        if uses_modseq:
            self._enable_condstore()
        numbers = [m.uid if cmd.uid else m.seq for m in found]
        highest = max((m.modseq for m in found), default=0)
        returns = parsed.returns
        if returns is None and self.rev2:
            returns = ("ALL",)
        if returns is None:
            line = b"SEARCH" + b"".join(b" %d" % n for n in numbers)
            if uses_modseq and found:
                line += b" (MODSEQ %d)" % highest
            self.imap.untagged(line)
            self.ok(cmd)
            return
        opts = set(returns) or {"ALL"}
        if "SAVE" in opts:
            view.saved = [m.uid for m in found]  # RFC 5182: the result is kept by UID
            opts.discard("SAVE")
            if not opts and returns:
                self.ok(cmd)
                return
        if opts:
            parts = [b'(TAG "' + cmd.tag.encode() + b'")']
            if cmd.uid:
                parts.append(b"UID")
            if numbers:
                if "MIN" in opts:
                    parts.append(b"MIN %d" % min(numbers))
                if "MAX" in opts:
                    parts.append(b"MAX %d" % max(numbers))
                if "ALL" in opts:
                    parts.append(b"ALL " + format_sequence_set(sorted(numbers)).encode())
            if "COUNT" in opts:
                parts.append(b"COUNT %d" % len(numbers))
            if uses_modseq and found:
                # RFC 7162 3.1.5: with only MIN and/or MAX, the MODSEQ of those messages.
                if opts <= {"MIN", "MAX"}:
                    picked = []
                    if "MIN" in opts:
                        picked.append(found[0])
                    if "MAX" in opts:
                        picked.append(found[-1])
                    highest = max(m.modseq for m in picked)
                parts.append(b"MODSEQ %d" % highest)
            self.imap.untagged(b"ESEARCH " + b" ".join(parts))
        self.ok(cmd)

    _handlers: dict[str, Callable[[IMAPSession, cmds.Command], Awaitable[None]]] = {}


def _ascending(pairs: list[tuple[int, int]]) -> bool:
    return all(a[0] < b[0] and a[1] < b[1] for a, b in zip(pairs, pairs[1:], strict=False))


def _partial(data: bytes | None, partial: tuple[int, int] | None) -> bytes:
    if data is None:
        return b"NIL"
    if partial is not None:
        start, length = partial
        data = data[start:start + length]
    return quoted_or_literal(data)


def base64_binary_parts(raw: bytes) -> bytes:
    """A message sent as a literal8 (RFC 3516 4.4) with its binary parts made base64, so
    that it is a valid RFC 5322 message (CRLF lines, no NUL) while BINARY[] gives back the
    octets the client sent.  Everything else stays byte for byte."""
    import base64

    edits: list[tuple[int, int, bytes]] = []  # (start, end, replacement)

    def walk(part: mime.Part) -> None:
        if part.children:
            for child in part.children:
                walk(child)
            return
        cte = (part.value(b"content-transfer-encoding") or b"").strip().lower()
        body = part.body
        if cte != b"binary" and b"\x00" not in body:
            return
        encoded = base64.encodebytes(body).replace(b"\n", b"\r\n")
        edits.append((part.body_start, part.end, encoded.rstrip(b"\r\n")))
        header = b"Content-Transfer-Encoding: base64\r\n"
        for name, fstart, _, fend in part.fields:
            if name == b"content-transfer-encoding":
                edits.append((fstart, fend, header))
                break
        else:
            blank = part.body_start - 2 if part.raw[part.body_start - 2:part.body_start] == \
                b"\r\n" else part.body_start - 1
            edits.append((max(blank, part.start), max(blank, part.start), header))

    walk(mime.parse(raw))
    out = raw
    for start, end, text in sorted(edits, reverse=True):
        out = out[:start] + text + out[end:]
    return out


def _meta(data: bytes, date: float) -> Callable[[], Any]:
    return lambda: parse_meta(data, date)


def _pattern(reference: str, pattern: str) -> Callable[[str], bool]:
    """RFC 9051 6.3.9: reference + pattern; "*" matches anything, "%" anything but "/"."""
    import re

    if pattern.startswith(SEP) or not reference:
        full = pattern
    else:
        full = reference + pattern if reference.endswith(SEP) else reference + SEP + pattern
    regex = "".join(".*" if c == "*" else f"[^{SEP}]*" if c == "%" else re.escape(c)
                    for c in full)
    head, sep, tail = full.partition(SEP)
    inbox_ci = head.upper() == "INBOX"
    compiled = re.compile(regex + r"\Z", re.DOTALL)
    compiled_ci = re.compile(regex + r"\Z", re.DOTALL | re.IGNORECASE) if inbox_ci else None

    def match(name: str) -> bool:
        if compiled.match(name):
            return True
        if compiled_ci is not None and name.partition(SEP)[0] == "INBOX":
            return bool(compiled_ci.match(name))
        if name == "INBOX":
            return bool(re.compile(regex + r"\Z", re.IGNORECASE).match(name))
        return False

    return match


def _descendants(name: str, children: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    stack = list(children.get(name, []))
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(children.get(n, []))
    return out


IMAPSession._handlers = {
    "NOOP": IMAPSession.cmd_noop,
    "CHECK": IMAPSession.cmd_check,
    "NAMESPACE": IMAPSession.cmd_namespace,
    "IDLE": IMAPSession.cmd_idle,
    "SELECT": IMAPSession.cmd_select,
    "EXAMINE": IMAPSession.cmd_select,
    "CLOSE": IMAPSession.cmd_close,
    "UNSELECT": IMAPSession.cmd_close,
    "CREATE": IMAPSession.cmd_create,
    "DELETE": IMAPSession.cmd_delete,
    "RENAME": IMAPSession.cmd_rename,
    "SUBSCRIBE": IMAPSession.cmd_subscribe,
    "UNSUBSCRIBE": IMAPSession.cmd_subscribe,
    "LIST": IMAPSession.cmd_list,
    "LSUB": IMAPSession.cmd_list,
    "STATUS": IMAPSession.cmd_status,
    "GETQUOTAROOT": IMAPSession.cmd_getquotaroot,
    "GETQUOTA": IMAPSession.cmd_getquota,
    "SETQUOTA": IMAPSession.cmd_setquota,
    "APPEND": IMAPSession.cmd_append,
    "EXPUNGE": IMAPSession.cmd_expunge,
    "STORE": IMAPSession.cmd_store,
    "COPY": IMAPSession.cmd_copy,
    "MOVE": IMAPSession.cmd_copy,
    "FETCH": IMAPSession.cmd_fetch,
    "SEARCH": IMAPSession.cmd_search,
    "SORT": IMAPSession.cmd_search,
    "THREAD": IMAPSession.cmd_search,
}

__all__ = ["IMAPSession", "refuse_line", "Raw"]
