"""IMAP command grammar: tokens to typed commands (RFC 9051 6, 9 and the extensions).

`parse_command` takes a command's tokens (from `netpost.imap.parser.tokenize`) and returns
one of the dataclasses below, or raises ParseError with the text of the tagged BAD.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field

from netpost.imap.parser import Atom, ParseError, SequenceSet, String, Token, parse_sequence_set

__all__ = ["Atom", "Command", "parse_command"]

# --- helpers -----------------------------------------------------------------------------------


def text_of(token: Token, what: str = "argument") -> str:
    """An astring's text (atom, quoted string or literal), UTF-8."""
    if isinstance(token, Atom):
        return token.value
    if isinstance(token, String):
        try:
            return token.value.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError(f"Invalid UTF-8 in {what}") from None
    raise ParseError(f"Expected a string for {what}, got a list")


def bytes_of(token: Token, what: str = "argument") -> bytes:
    if isinstance(token, String):
        return token.value
    if isinstance(token, Atom):
        return token.value.encode()
    raise ParseError(f"Expected a string for {what}, got a list")


def atom_of(token: Token, what: str) -> str:
    if not isinstance(token, Atom):
        raise ParseError(f"Expected {what}")
    return token.value


def list_of(token: Token, what: str) -> list[Token]:
    if not isinstance(token, list):
        raise ParseError(f"Expected a parenthesized list for {what}")
    return token


def number_of(token: Token, what: str, *, nz: bool = False, bits: int = 32) -> int:
    value = atom_of(token, what)
    if not value.isdigit() or len(value) > 20:
        raise ParseError(f"Expected a number for {what}")
    n = int(value)
    if n >= 1 << bits or (nz and n == 0):
        raise ParseError(f"Invalid number for {what}")
    return n


def sequence_of(token: Token) -> SequenceSet:
    return parse_sequence_set(atom_of(token, "a sequence set"))


class Args:
    """A cursor over a command's tokens."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.tokens)

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self, what: str) -> Token:
        if self.pos >= len(self.tokens):
            raise ParseError(f"Missing {what}")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def rest(self) -> list[Token]:
        out = self.tokens[self.pos:]
        self.pos = len(self.tokens)
        return out

    def end(self) -> None:
        if self.pos < len(self.tokens):
            raise ParseError("Too many arguments")

    def peek_atom(self) -> str | None:
        token = self.peek()
        return token.value.upper() if isinstance(token, Atom) else None


_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}
_DATE_TIME = re.compile(
    r"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z")


def parse_date_time(text: str) -> float:
    """RFC 9051 9 date-time "dd-Mon-yyyy hh:mm:ss +zzzz" as POSIX seconds."""
    m = _DATE_TIME.match(text)
    month = _MONTHS.get(m.group(2).capitalize()) if m else None
    if m is None or month is None:
        raise ParseError("Invalid date-time")
    day, year, hh, mm, ss = (int(m.group(i)) for i in (1, 3, 4, 5, 6))
    try:
        import datetime
        moment = datetime.datetime(year, month, day, hh, mm, ss,
                                   tzinfo=datetime.UTC)
    except ValueError:
        raise ParseError("Invalid date-time") from None
    offset = (int(m.group(8)) * 60 + int(m.group(9))) * 60
    if m.group(7) == "-":
        offset = -offset
    return moment.timestamp() - offset


# --- commands ----------------------------------------------------------------------------------


@dataclass
class Command:
    tag: str
    name: str  # upper-case; UID commands are "UID FETCH" etc.


@dataclass
class Simple(Command):
    """CAPABILITY NOOP LOGOUT STARTTLS CHECK CLOSE UNSELECT EXPUNGE IDLE NAMESPACE."""


@dataclass
class Login(Command):
    user: str = ""
    password: str = ""


@dataclass
class Authenticate(Command):
    mechanism: str = ""
    initial: bytes | None = None  # SASL-IR (RFC 4959): base64 or "=" (empty)


@dataclass
class Enable(Command):
    capabilities: list[str] = field(default_factory=list)


@dataclass
class Id(Command):
    params: dict[str, str | None] | None = None


@dataclass
class Compress(Command):
    mechanism: str = ""


# RFC 7162 3.2.5: (uidvalidity mod-sequence [known-uids [(seq-match uid-match)]])
QResync = tuple[int, int, SequenceSet | None, tuple[SequenceSet, SequenceSet] | None]


@dataclass
class Select(Command):
    mailbox: str = ""
    condstore: bool = False
    qresync: QResync | None = None


@dataclass
class MailboxCommand(Command):
    """CREATE DELETE SUBSCRIBE UNSUBSCRIBE GETQUOTAROOT (one mailbox name)."""

    mailbox: str = ""
    special_use: str | None = None  # CREATE ... (USE (\Sent)) (RFC 6154 3)


@dataclass
class Rename(Command):
    old: str = ""
    new: str = ""


@dataclass
class List(Command):
    reference: str = ""
    patterns: list[str] = field(default_factory=list)
    selection: list[str] = field(default_factory=list)  # SUBSCRIBED REMOTE RECURSIVEMATCH...
    returns: list[str] = field(default_factory=list)  # SUBSCRIBED CHILDREN SPECIAL-USE STATUS
    status_items: list[str] = field(default_factory=list)  # RETURN (STATUS (...)) (RFC 5819)
    lsub: bool = False
    extended: bool = False  # the client used LIST-EXTENDED syntax


@dataclass
class Status(Command):
    mailbox: str = ""
    items: list[str] = field(default_factory=list)


@dataclass
class AppendMessage:
    flags: list[str]
    internaldate: float | None
    content: bytes
    binary: bool  # literal8: the client may send NUL octets (RFC 3516 4.4)


@dataclass
class Append(Command):
    mailbox: str = ""
    messages: list[AppendMessage] = field(default_factory=list)


@dataclass
class Quota(Command):
    root: str = ""


@dataclass
class SetQuota(Command):
    root: str = ""
    limits: dict[str, int] = field(default_factory=dict)


@dataclass
class Expunge(Command):
    uids: SequenceSet | None = None  # UID EXPUNGE (RFC 4315 2.1)


@dataclass
class FetchItem:
    name: str  # FLAGS UID ENVELOPE BODY BODYSTRUCTURE INTERNALDATE RFC822.SIZE MODSEQ
    #           BODY[] (section form) BINARY[] BINARY.SIZE[] RFC822 RFC822.HEADER RFC822.TEXT
    peek: bool = False
    parts: tuple[int, ...] = ()
    text: str = ""  # HEADER HEADER.FIELDS HEADER.FIELDS.NOT TEXT MIME
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None  # <start.length>
    label: str = ""  # how the item is named in the response


@dataclass
class Fetch(Command):
    uid: bool = False
    sequence: SequenceSet = field(default_factory=SequenceSet)
    items: list[FetchItem] = field(default_factory=list)
    changedsince: int | None = None
    vanished: bool = False


@dataclass
class Store(Command):
    uid: bool = False
    sequence: SequenceSet = field(default_factory=SequenceSet)
    mode: str = "replace"  # add remove replace
    silent: bool = False
    flags: list[str] = field(default_factory=list)
    unchangedsince: int | None = None


@dataclass
class Copy(Command):
    uid: bool = False
    sequence: SequenceSet = field(default_factory=SequenceSet)
    mailbox: str = ""
    move: bool = False


@dataclass
class Search(Command):
    """SEARCH, SORT and THREAD: the rest is parsed by netpost.imap.search / sort."""

    uid: bool = False
    args: list[Token] = field(default_factory=list)


SIMPLE = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT",
                    "EXPUNGE", "IDLE", "NAMESPACE"})


def parse_command(tag: str, tokens: list[Token], *, utf8: bool = False) -> Command:
    """A typed command from its tokens after the tag."""
    if not tokens or not isinstance(tokens[0], Atom):
        raise ParseError("Missing command")
    name = tokens[0].value.upper()
    args = Args(tokens[1:])
    if name == "UID":
        sub = args.peek_atom()
        if sub not in ("FETCH", "STORE", "COPY", "MOVE", "SEARCH", "SORT", "THREAD", "EXPUNGE"):
            raise ParseError("Unknown UID command")
        args.next("command")
        return _parse(tag, sub, args, uid=True, utf8=utf8)
    return _parse(tag, name, args, uid=False, utf8=utf8)


def mailbox_name(token: Token, utf8: bool) -> str:
    """A mailbox argument: modified UTF-7 unless UTF8=ACCEPT was enabled (RFC 6855 3)."""
    from netpost.imap.wire import MUTF7Error, decode_mutf7


    text = text_of(token, "mailbox name")
    if utf8:
        return text
    try:
        return decode_mutf7(text)
    except MUTF7Error:
        return text  # taken as it is: such a mailbox does not exist (what Dovecot does)


def _parse(tag: str, name: str, args: Args, *, uid: bool, utf8: bool) -> Command:
    if uid and name == "EXPUNGE":
        cmd = Expunge(tag, "UID EXPUNGE", sequence_of(args.next("sequence set")))
        args.end()
        return cmd
    if name in SIMPLE:
        args.end()
        return Simple(tag, name)
    if name == "LOGIN":
        user = text_of(args.next("user name"), "user name")
        password = text_of(args.next("password"), "password")
        args.end()
        return Login(tag, name, user, password)
    if name == "AUTHENTICATE":
        mech = atom_of(args.next("mechanism"), "a SASL mechanism").upper()
        initial = bytes_of(args.next("initial response")) if args.more() else None
        args.end()
        return Authenticate(tag, name, mech, initial)
    if name == "ENABLE":
        caps = [atom_of(t, "a capability").upper() for t in args.rest()]
        if not caps:
            raise ParseError("ENABLE needs at least one capability")
        return Enable(tag, name, caps)
    if name == "ID":
        return _parse_id(tag, args)
    if name == "COMPRESS":
        mech = atom_of(args.next("mechanism"), "a compression mechanism").upper()
        args.end()
        return Compress(tag, name, mech)
    if name in ("SELECT", "EXAMINE"):
        return _parse_select(tag, name, args, utf8)
    if name in ("CREATE", "DELETE", "SUBSCRIBE", "UNSUBSCRIBE", "GETQUOTAROOT"):
        mailbox = mailbox_name(args.next("mailbox name"), utf8)
        special: str | None = None
        if name == "CREATE" and args.more():
            opts = list_of(args.next("create options"), "create options")
            if len(opts) != 2 or not isinstance(opts[0], Atom) or opts[0].upper() != "USE":
                raise ParseError("Unknown CREATE option")
            uses = [atom_of(t, "a special-use flag") for t in list_of(opts[1], "USE")]
            if len(uses) > 1:
                raise ParseError("[USEATTR] Only one special-use attribute per mailbox")
            special = uses[0] if uses else None
        args.end()
        return MailboxCommand(tag, name, mailbox, special)
    if name == "RENAME":
        old = mailbox_name(args.next("mailbox name"), utf8)
        new = mailbox_name(args.next("new mailbox name"), utf8)
        args.end()
        return Rename(tag, name, old, new)
    if name in ("LIST", "LSUB"):
        return _parse_list(tag, name, args, utf8)
    if name == "STATUS":
        mailbox = mailbox_name(args.next("mailbox name"), utf8)
        items = [atom_of(t, "a status item").upper()
                 for t in list_of(args.next("status items"), "status items")]
        args.end()
        if not items:
            raise ParseError("STATUS needs at least one item")
        return Status(tag, name, mailbox, items)
    if name == "APPEND":
        return _parse_append(tag, args, utf8)
    if name == "GETQUOTA":
        root = text_of(args.next("quota root"))
        args.end()
        return Quota(tag, name, root)
    if name == "SETQUOTA":
        root = text_of(args.next("quota root"))
        pairs = list_of(args.next("quota limits"), "quota limits")
        args.end()
        if len(pairs) % 2:
            raise ParseError("Quota limits come in pairs")
        limits = {atom_of(pairs[i], "a resource").upper(): number_of(pairs[i + 1], "a limit",
                                                                      bits=63)
                  for i in range(0, len(pairs), 2)}
        return SetQuota(tag, name, root, limits)
    if name == "FETCH":
        return _parse_fetch(tag, args, uid)
    if name == "STORE":
        return _parse_store(tag, args, uid)
    if name in ("COPY", "MOVE"):
        seq = sequence_of(args.next("sequence set"))
        mailbox = mailbox_name(args.next("mailbox name"), utf8)
        args.end()
        return Copy(tag, ("UID " if uid else "") + name, uid, seq, mailbox, name == "MOVE")
    if name in ("SEARCH", "SORT", "THREAD"):
        return Search(tag, ("UID " if uid else "") + name, uid, args.rest())
    raise ParseError("Unknown command")


def _parse_id(tag: str, args: Args) -> Id:
    token = args.next("ID parameters")
    args.end()
    if isinstance(token, Atom) and token.upper() == "NIL":
        return Id(tag, "ID", None)
    items = list_of(token, "ID parameters")
    if len(items) % 2 or len(items) > 60:
        raise ParseError("ID parameters come in field/value pairs (at most 30)")
    params: dict[str, str | None] = {}
    for i in range(0, len(items), 2):
        key = text_of(items[i], "ID field")
        value = items[i + 1]
        if isinstance(value, Atom) and value.upper() == "NIL":
            params[key] = None
        else:
            params[key] = text_of(value, "ID value")
    return Id(tag, "ID", params)


def _parse_select(tag: str, name: str, args: Args, utf8: bool) -> Select:
    cmd = Select(tag, name, mailbox_name(args.next("mailbox name"), utf8))
    if args.more():
        params = list_of(args.next("select parameters"), "select parameters")
        i = 0
        while i < len(params):
            key = atom_of(params[i], "a select parameter").upper()
            i += 1
            if key == "CONDSTORE":
                cmd.condstore = True
            elif key == "QRESYNC":
                # RFC 7162 3.2.5: (uidvalidity modseq [known-uids [(seq-match uid-match)]])
                if i >= len(params):
                    raise ParseError("QRESYNC needs parameters")
                q = list_of(params[i], "QRESYNC parameters")
                i += 1
                if len(q) < 2 or len(q) > 4:
                    raise ParseError("Invalid QRESYNC parameters")
                uidvalidity = number_of(q[0], "UIDVALIDITY", nz=True)
                modseq = number_of(q[1], "mod-sequence", bits=63)
                known: SequenceSet | None = None
                match: tuple[SequenceSet, SequenceSet] | None = None
                rest = q[2:]
                if rest and isinstance(rest[0], Atom):
                    known = sequence_of(rest[0])
                    rest = rest[1:]
                if rest:
                    pair = list_of(rest[0], "sequence match data")
                    if len(pair) != 2:
                        raise ParseError("Invalid sequence match data")
                    match = (sequence_of(pair[0]), sequence_of(pair[1]))
                    rest = rest[1:]
                if rest:
                    raise ParseError("Invalid QRESYNC parameters")
                cmd.qresync = (uidvalidity, modseq, known, match)
            else:
                raise ParseError(f"Unknown select parameter {key}")
    args.end()
    return cmd


def _patterns(token: Token, utf8: bool) -> list[str]:
    if isinstance(token, list):
        return [mailbox_name(t, utf8) if not isinstance(t, list) else "" for t in token]
    if isinstance(token, Atom) or isinstance(token, String):
        return [mailbox_name(token, utf8)]
    raise ParseError("Invalid mailbox pattern")


def _parse_list(tag: str, name: str, args: Args, utf8: bool) -> List:
    cmd = List(tag, name, lsub=name == "LSUB")
    first = args.next("reference name")
    if isinstance(first, list) and name == "LIST":
        cmd.extended = True  # RFC 5258 3: selection options
        cmd.selection = [atom_of(t, "a selection option").upper() for t in first]
        first = args.next("reference name")
    cmd.reference = mailbox_name(first, utf8)
    pattern = args.next("mailbox pattern")
    if isinstance(pattern, list):
        if name == "LSUB":
            raise ParseError("LSUB takes one pattern")
        cmd.extended = True
    cmd.patterns = _patterns(pattern, utf8)
    if args.more() and name == "LIST":
        if args.peek_atom() != "RETURN":
            raise ParseError("Expected RETURN")
        args.next("RETURN")
        cmd.extended = True
        opts = list_of(args.next("return options"), "return options")
        i = 0
        while i < len(opts):
            opt = atom_of(opts[i], "a return option").upper()
            i += 1
            if opt == "STATUS":  # RFC 5819
                if i >= len(opts):
                    raise ParseError("STATUS needs items")
                cmd.status_items = [atom_of(t, "a status item").upper()
                                    for t in list_of(opts[i], "status items")]
                i += 1
            cmd.returns.append(opt)
    args.end()
    return cmd


def _parse_append(tag: str, args: Args, utf8: bool) -> Append:
    cmd = Append(tag, "APPEND", mailbox_name(args.next("mailbox name"), utf8))
    while True:
        flags: list[str] = []
        date: float | None = None
        token = args.next("message literal")
        if isinstance(token, list):
            flags = [atom_of(t, "a flag") for t in token]
            token = args.next("message literal")
        if isinstance(token, String) and not token.literal:
            date = parse_date_time(token.value.decode("ascii", "replace"))
            token = args.next("message literal")
        if isinstance(token, Atom) and token.upper() == "CATENATE":
            raise ParseError("CATENATE is not supported")
        if not isinstance(token, String) or not token.literal:
            raise ParseError("Expected a message literal")
        cmd.messages.append(AppendMessage(flags, date, token.value, token.literal8))
        if not args.more():
            return cmd  # RFC 3502 MULTIAPPEND: more messages may follow


_SECTION = re.compile(
    r"(?P<name>BODY\.PEEK|BODY|BINARY\.PEEK|BINARY\.SIZE|BINARY)\[(?P<section>[^\]]*)\]"
    r"(?:<(?P<start>\d{1,10})(?:\.(?P<length>\d{1,10}))?>)?\Z", re.IGNORECASE)
_PART = re.compile(r"[1-9]\d{0,8}(?:\.[1-9]\d{0,8})*")

FETCH_ATTRS = frozenset({"FLAGS", "UID", "ENVELOPE", "BODY", "BODYSTRUCTURE", "INTERNALDATE",
                         "RFC822", "RFC822.HEADER", "RFC822.SIZE", "RFC822.TEXT", "MODSEQ"})
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}


def parse_fetch_item(text: str) -> FetchItem:
    upper = text.upper()
    if upper in FETCH_ATTRS:
        return FetchItem(upper, label=upper)
    m = _SECTION.match(text)
    if m is None:
        raise ParseError(f"Invalid fetch item {text[:40]}")
    kind = m.group("name").upper()
    section = m.group("section")
    start, length = m.group("start"), m.group("length")
    partial = None
    if start is not None:
        if kind == "BINARY.SIZE":
            raise ParseError("BINARY.SIZE takes no partial")
        if length is None:
            raise ParseError("A partial needs a length: <start.length>")
        partial = (int(start), int(length))
    parts: tuple[int, ...] = ()
    sect_text = ""
    fields: tuple[str, ...] = ()
    rest = section
    pm = _PART.match(rest)
    if pm:
        parts = tuple(int(p) for p in pm.group().split("."))
        rest = rest[pm.end():]
        if rest.startswith("."):
            rest = rest[1:]
            if not rest:
                raise ParseError("Invalid section")
        elif rest:
            raise ParseError("Invalid section")
    if kind.startswith("BINARY"):
        if rest:
            raise ParseError("BINARY sections are part numbers only")
    elif rest:
        word, _, tail = rest.partition(" ")
        word = word.upper()
        if word in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            tail = tail.strip()
            if not (tail.startswith("(") and tail.endswith(")")):
                raise ParseError("HEADER.FIELDS needs a list of field names")
            names = _field_names(tail[1:-1])
            if not names:
                raise ParseError("HEADER.FIELDS needs at least one field name")
            fields = tuple(names)
        elif word in ("HEADER", "TEXT") and not tail:
            pass
        elif word == "MIME" and not tail and parts:
            pass
        else:
            raise ParseError(f"Invalid section {section[:40]}")
        sect_text = word
    peek = kind.endswith(".PEEK")
    base = kind.replace(".PEEK", "")
    label_section = section
    if fields:
        label_section = (".".join(map(str, parts)) + "." if parts else "") + sect_text + \
            " (" + " ".join(f.upper() for f in fields) + ")"
    label = f"{base}[{label_section}]"
    if partial is not None:
        label += f"<{partial[0]}>"
    return FetchItem(base + "[]", peek, parts, sect_text, fields, partial, label)


def _field_names(text: str) -> list[str]:
    names = []
    for raw in re.findall(r'"(?:[^"\\]|\\.)*"|[^\s"]+', text):
        name = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\") if raw.startswith('"') \
            else raw
        if not name or any(ord(c) <= 32 or ord(c) >= 127 or c == ":" for c in name):
            raise ParseError("Invalid header field name")
        names.append(name)
    return names


def _parse_fetch(tag: str, args: Args, uid: bool) -> Fetch:
    cmd = Fetch(tag, "UID FETCH" if uid else "FETCH", uid,
                sequence_of(args.next("sequence set")))
    token = args.next("fetch items")
    tokens: list[Token] = token if isinstance(token, list) else [token]
    if isinstance(token, Atom) and token.upper() in _MACROS:
        cmd.items = [FetchItem(n, label=n) for n in _MACROS[token.upper()]]
    else:
        if not tokens:
            raise ParseError("FETCH needs at least one item")
        cmd.items = [parse_fetch_item(atom_of(t, "a fetch item")) for t in tokens]
    if args.more():
        mods = list_of(args.next("fetch modifiers"), "fetch modifiers")
        i = 0
        while i < len(mods):
            key = atom_of(mods[i], "a fetch modifier").upper()
            i += 1
            if key == "CHANGEDSINCE":  # RFC 7162 3.1.4.1
                if i >= len(mods):
                    raise ParseError("CHANGEDSINCE needs a mod-sequence")
                cmd.changedsince = number_of(mods[i], "mod-sequence", bits=63)
                i += 1
            elif key == "VANISHED":  # RFC 7162 3.2.6
                cmd.vanished = True
            else:
                raise ParseError(f"Unknown fetch modifier {key}")
        if cmd.vanished and (not uid or cmd.changedsince is None):
            raise ParseError("VANISHED needs UID FETCH with CHANGEDSINCE")
    args.end()
    return cmd


def _parse_store(tag: str, args: Args, uid: bool) -> Store:
    cmd = Store(tag, "UID STORE" if uid else "STORE", uid,
                sequence_of(args.next("sequence set")))
    token = args.next("store item")
    if isinstance(token, list):
        if len(token) != 2 or atom_of(token[0], "UNCHANGEDSINCE").upper() != "UNCHANGEDSINCE":
            raise ParseError("Unknown store modifier")
        cmd.unchangedsince = number_of(token[1], "mod-sequence", bits=63)
        token = args.next("store item")
    item = atom_of(token, "a store item").upper()
    if item.endswith(".SILENT"):
        cmd.silent = True
        item = item[: -len(".SILENT")]
    if item == "FLAGS":
        cmd.mode = "replace"
    elif item == "+FLAGS":
        cmd.mode = "add"
    elif item == "-FLAGS":
        cmd.mode = "remove"
    else:
        raise ParseError("Invalid store item")
    rest = args.rest()
    if len(rest) == 1 and isinstance(rest[0], list):
        rest = rest[0]
    cmd.flags = [atom_of(t, "a flag") for t in rest]
    return cmd
