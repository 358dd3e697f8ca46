"""IMAP SORT and THREAD (RFC 5256), with DISPLAYFROM and DISPLAYTO (RFC 5957).

`parse_sort` and `parse_thread` read the arguments after the command word; the search keys
in them are netpost.imap.search's, and so are the errors (`ParseError`, `BadCharset`).  The
caller evaluates the key, then hands the matching messages to `sort_messages` or `thread`,
which ask `SearchData.header_texts` once per header field they need and never raise.

Strings compare as i;ascii-casemap does (RFC 5256 3: letters upper-cased, then octet order),
extended to all of Unicode the way i;unicode-casemap does (RFC 5051: title case, NFKD), which
is also Dovecot's order.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from netpost.imap.parser import Atom, ParseError, Token
from netpost.imap.search import (
    Group,
    MessageInfo,
    SearchData,
    SearchKey,
    check_charset,
    first_address,
    parse_return_options,
    parse_search_keys,
    sent_date,
)

__all__ = [
    "SORT_KEYS",
    "THREAD_ALGORITHMS",
    "SortCommand",
    "Thread",
    "base_subject",
    "format_threads",
    "parse_sort",
    "parse_sort_command",
    "parse_thread",
    "sort_messages",
    "thread",
]

log = logging.getLogger("netpost.imap")

SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO",
                       "DISPLAYFROM", "DISPLAYTO"})  # RFC 5256 3, RFC 5957 3
THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")  # RFC 5256 2.1 and 2.2


# --- parsing ---------------------------------------------------------------------------------


@dataclass
class SortCommand:
    """A parsed SORT, with ESORT's RETURN options (RFC 5267 3.1; None: the plain form)."""

    returns: tuple[str, ...] | None
    criteria: list[tuple[str, bool]]
    charset: str
    key: SearchKey
    partial: tuple[int, int] | None = None


def parse_sort(tokens: list[Token]) -> tuple[list[tuple[str, bool]], str, SearchKey]:
    """`(criteria) charset search-keys` after SORT (RFC 5256 3): the criteria as (key,
    reverse) pairs, the charset ("UTF-8" or "US-ASCII") and the search key."""
    if tokens and isinstance(tokens[0], Atom) and tokens[0].value.upper() == "RETURN":
        raise ParseError("SORT RETURN is not supported")
    command = parse_sort_command(tokens)
    return command.criteria, command.charset, command.key


def parse_sort_command(tokens: list[Token]) -> SortCommand:
    """Like `parse_sort`, also taking ESORT's `RETURN (...)` first (RFC 5267 3.1)."""
    pos = 0
    returns: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None
    if tokens and isinstance(tokens[0], Atom) and tokens[0].value.upper() == "RETURN":
        options = tokens[1] if len(tokens) > 1 else None
        if not isinstance(options, list):
            raise ParseError("RETURN needs a list of options")
        returns, partial = parse_return_options(options)
        pos = 2
    if pos >= len(tokens):
        raise ParseError("SORT needs a list of sort criteria")
    criteria = _parse_criteria(tokens[pos])
    if pos + 1 >= len(tokens):
        raise ParseError("SORT needs a charset")
    charset = check_charset(tokens[pos + 1])
    key = parse_search_keys(tokens[pos + 2 :])
    return SortCommand(returns, criteria, charset, key, partial)


def _parse_criteria(token: Token) -> list[tuple[str, bool]]:
    """sort-criteria = "(" sort-criterion *(SP sort-criterion) ")";
    sort-criterion = ["REVERSE" SP] sort-key (RFC 5256 5)."""
    if not isinstance(token, list) or not token:
        raise ParseError("SORT needs a list of sort criteria")
    criteria: list[tuple[str, bool]] = []
    reverse = False
    for item in token:
        word = item.value.upper() if isinstance(item, Atom) else ""
        if word == "REVERSE" and not reverse:
            reverse = True
            continue
        if word not in SORT_KEYS:
            raise ParseError("Invalid sort criterion")
        criteria.append((word, reverse))
        reverse = False
    if reverse:
        raise ParseError("REVERSE needs a sort key after it")
    return criteria


def parse_thread(tokens: list[Token]) -> tuple[str, str, SearchKey]:
    """`algorithm charset search-keys` after THREAD (RFC 5256 5): the algorithm
    (ORDEREDSUBJECT or REFERENCES), the charset and the search key."""
    if not tokens or not isinstance(tokens[0], Atom):
        raise ParseError("THREAD needs an algorithm")
    algorithm = tokens[0].value.upper()
    if algorithm not in THREAD_ALGORITHMS:
        raise ParseError("Unknown threading algorithm")
    if len(tokens) < 2:
        raise ParseError("THREAD needs a charset")
    charset = check_charset(tokens[1])
    return algorithm, charset, parse_search_keys(tokens[2:])


# --- shared: strings, subjects, dates ---------------------------------------------------------


def _casemap(text: str) -> str:
    """The comparison form of a string (module docstring)."""
    if text.isascii():
        return text.upper()
    return unicodedata.normalize("NFKD", "".join(c.title() for c in text))


_WHITESPACE = re.compile(r"[ \t\r\n]+")
_BLOB = r"\[[^\[\]]*\][ \t]*"  # subj-blob = "[" *BLOBCHAR "]" *WSP
_LEADER = re.compile(  # subj-leader = (*subj-blob subj-refwd) / WSP
    rf"(?:{_BLOB})*(?:re|fwd?)[ \t]*(?:{_BLOB})?:|[ \t]+", re.IGNORECASE)
_LEADING_BLOB = re.compile(_BLOB)


def _subject_parts(subject: str) -> tuple[str, bool]:
    """The base subject and whether the subject marked a reply or forward (it had a
    subj-refwd, a "(fwd)" trailer or a "[fwd: ...]" wrapper; RFC 5256 2.1 and 2.2 5)."""
    text = _WHITESPACE.sub(" ", subject)  # (1) tabs, line ends and runs of spaces: one space
    reply = False
    while True:
        while True:  # (2) trailers: "(fwd)" or whitespace at the end
            if text.endswith(" "):
                text = text[:-1]
            elif text[-5:].lower() == "(fwd)":
                text = text[:-5]
                reply = True
            else:
                break
        while True:  # (3) leaders, (4) a blob before a non-empty rest, (5) repeated
            m = _LEADER.match(text)
            if m:
                reply = reply or not m.group().isspace()
                text = text[m.end() :]
                continue
            m = _LEADING_BLOB.match(text)
            if m and m.end() < len(text):
                text = text[m.end() :]
                continue
            break
        # (6) "[fwd:" ... "]" wraps a whole subject: unwrap it and start again from (2)
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            reply = True
            continue
        return text, reply


def base_subject(subject: str) -> str:
    """The base subject (RFC 5256 2.1) of a decoded Subject: "Re: [list] Fwd: hello (fwd)"
    is "hello"; case is kept (comparisons use the casemap)."""
    return _subject_parts(subject)[0]


def _texts(data: SearchData, name: str, uids: list[int]) -> dict[int, str]:
    try:
        return data.header_texts(name, uids)
    except Exception:
        log.exception("reading %s for SORT/THREAD failed", name)
        return {}


def _sent_times(messages: Sequence[MessageInfo], data: SearchData) -> dict[int, float]:
    """UID -> sent date in UTC POSIX seconds; the internal date where Date: is missing or
    unreadable (RFC 5256 2.2)."""
    dates = _texts(data, "date", [m.uid for m in messages])
    times: dict[int, float] = {}
    for m in messages:
        parsed = sent_date(dates.get(m.uid))
        times[m.uid] = parsed[1] if parsed else m.internaldate
    return times


# --- SORT ------------------------------------------------------------------------------------

_ADDRESS_FIELD = {"FROM": "from", "TO": "to", "CC": "cc", "DISPLAYFROM": "from",
                  "DISPLAYTO": "to"}


def _first_mailbox(text: str) -> str:
    """addr-mailbox of the first address (RFC 5256 3); a group's is its name, as in
    ENVELOPE's group start (RFC 9051 7.5.2)."""
    first = first_address(text)
    if first is None:
        return ""
    return first.name if isinstance(first, Group) else first.mailbox


def _display(text: str) -> str:
    """The display name of the first address, else its mailbox@host (RFC 5957 3)."""
    first = first_address(text)
    if first is None:
        return ""
    if isinstance(first, Group):
        return first.name
    return first.name or first.spec()


def sort_messages(criteria: Sequence[tuple[str, bool]], messages: Sequence[MessageInfo],
                  data: SearchData) -> list[MessageInfo]:
    """The messages in SORT order: by each criterion in turn (reversed where asked), then by
    sequence number (RFC 5256 3).  Criteria names as `parse_sort` gives them."""
    ordered = sorted(messages, key=lambda m: m.seq)
    uids = [m.uid for m in ordered]
    fields: dict[str, dict[int, str]] = {}

    def texts(name: str) -> dict[int, str]:
        if name not in fields:
            fields[name] = _texts(data, name, uids)
        return fields[name]

    # Stable sorts from the last criterion to the first give the composite order, and the
    # sequence-number order survives as the final tie-break (reverse=True keeps stability).
    for name, reverse in reversed(criteria):
        keys: dict[int, float | str]
        if name == "ARRIVAL":
            keys = {m.uid: m.internaldate for m in ordered}
        elif name == "SIZE":
            keys = {m.uid: float(m.size) for m in ordered}
        elif name == "DATE":
            keys = dict(_sent_times(ordered, data))
        elif name == "SUBJECT":
            subjects = texts("subject")
            keys = {uid: _casemap(base_subject(subjects.get(uid, ""))) for uid in uids}
        elif name in ("FROM", "TO", "CC"):
            values = texts(_ADDRESS_FIELD[name])
            keys = {uid: _casemap(_first_mailbox(values.get(uid, ""))) for uid in uids}
        elif name in ("DISPLAYFROM", "DISPLAYTO"):
            values = texts(_ADDRESS_FIELD[name])
            keys = {uid: _casemap(_display(values.get(uid, ""))) for uid in uids}
        else:
            continue  # not a sort key parse_sort gives
        ordered.sort(key=lambda m: keys[m.uid], reverse=reverse)
    return ordered


# --- THREAD ----------------------------------------------------------------------------------


@dataclass
class Thread:
    """A node of a thread tree: a message, or a dummy (`message` None) standing for a
    message that is referenced but not among those threaded (RFC 5256 2.2)."""

    message: MessageInfo | None
    children: list[Thread] = field(default_factory=list)


class _Node:
    """A container of the REFERENCES algorithm (RFC 5256 2.2), with its parent link."""

    __slots__ = ("message", "parent", "children")

    def __init__(self, message: MessageInfo | None = None) -> None:
        self.message = message
        self.parent: _Node | None = None
        self.children: list[_Node] = []


def thread(algorithm: str, messages: Sequence[MessageInfo],
           data: SearchData) -> list[Thread]:
    """The threads of these messages (the ones the search matched), oldest first.
    `algorithm` is one `parse_thread` gives (ValueError for another)."""
    ordered = sorted(messages, key=lambda m: m.seq)
    if algorithm.upper() == "ORDEREDSUBJECT":
        return _ordered_subject(ordered, data)
    if algorithm.upper() == "REFERENCES":
        return _references(ordered, data)
    raise ValueError(f"unknown threading algorithm {algorithm!r}")


def _ordered_subject(messages: list[MessageInfo], data: SearchData) -> list[Thread]:
    """RFC 5256 2.1 ORDEREDSUBJECT: sort by base subject then sent date; each run of one
    subject is a thread whose first message is the parent of all the others; the threads
    are sorted by the sent date of their first message."""
    subjects = _texts(data, "subject", [m.uid for m in messages])
    base = {m.uid: _casemap(base_subject(subjects.get(m.uid, ""))) for m in messages}
    times = _sent_times(messages, data)
    threads: list[Thread] = []
    last_subject: str | None = None
    for m in sorted(messages, key=lambda m: (base[m.uid], times[m.uid], m.seq)):
        if threads and base[m.uid] == last_subject:
            threads[-1].children.append(Thread(m))
        else:
            threads.append(Thread(m))
            last_subject = base[m.uid]

    def first_date(t: Thread) -> tuple[float, int]:
        assert t.message is not None
        return times[t.message.uid], t.message.seq

    threads.sort(key=first_date)
    return threads


_MESSAGE_ID = re.compile(r"<([^<>]*)>")


def _message_ids(text: str | None) -> list[str]:
    """The msg-ids of a field, without the angle brackets (white space inside dropped)."""
    if not text:
        return []
    ids = ("".join(m.group(1).split()) for m in _MESSAGE_ID.finditer(text))
    return [i for i in ids if i]


def _is_ancestor(node: _Node, of: _Node) -> bool:
    """Whether `node` is `of` or one of its ancestors (linking would make a loop)."""
    current: _Node | None = of
    while current is not None:
        if current is node:
            return True
        current = current.parent
    return False


def _link(parent: _Node, child: _Node) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: _Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def _preorder(roots: list[_Node]) -> list[_Node]:
    """Every node under the roots, each before its children (no recursion)."""
    order: list[_Node] = []
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(reversed(node.children))
    return order


def _references(messages: list[MessageInfo], data: SearchData) -> list[Thread]:
    """RFC 5256 2.2 REFERENCES."""
    uids = [m.uid for m in messages]
    ids_of = _texts(data, "message-id", uids)
    references_of = _texts(data, "references", uids)
    in_reply_to_of = _texts(data, "in-reply-to", uids)
    subjects = _texts(data, "subject", uids)
    times = _sent_times(messages, data)

    # (1) Containers by Message-ID.  A message without one, or with one an earlier message
    # already has, gets a container of its own that nothing can reference.
    table: dict[str, _Node] = {}
    nodes: list[_Node] = []
    for m in messages:
        own = _message_ids(ids_of.get(m.uid))
        node = table.get(own[0]) if own else None
        if node is not None and node.message is None:
            node.message = m  # a dummy made by an earlier reference
        else:
            node = _Node(m)
            nodes.append(node)
            if own and own[0] not in table:
                table[own[0]] = node
        # References, or else the first msg-id of In-Reply-To.
        references = (_message_ids(references_of.get(m.uid))
                      or _message_ids(in_reply_to_of.get(m.uid))[:1])
        # (1.A) Link the references in a chain, each the parent of the next, without
        # changing a link that exists or making a loop.
        previous: _Node | None = None
        for ref in references:
            container = table.get(ref)
            if container is None:
                container = table[ref] = _Node()
                nodes.append(container)
            if (previous is not None and container.parent is None
                    and not _is_ancestor(container, previous)):
                _link(previous, container)
            previous = container
        # (1.B) The last reference is this message's parent, replacing a parent it had
        # (probably from a truncated References), unless that would make a loop.
        _unlink(node)
        if previous is not None and not _is_ancestor(node, previous):
            _link(previous, node)

    # (2) The messages without a parent head the threads.
    roots = [n for n in nodes if n.parent is None]

    # (3) Prune dummies: drop childless ones, splice the children of the others into their
    # place, but at the top only if there is a single child.
    for node in reversed(_preorder(roots)):  # children before their parents
        spliced: list[_Node] = []
        for child in node.children:
            if child.message is None:
                for grandchild in child.children:
                    grandchild.parent = node
                spliced.extend(child.children)
            else:
                spliced.append(child)
        node.children = spliced
    top: list[_Node] = []
    for node in roots:
        if node.message is not None or len(node.children) > 1:
            top.append(node)
        elif node.children:
            only = node.children[0]
            only.parent = None
            top.append(only)

    def date_key(n: _Node) -> tuple[float, int]:
        """Sent date, then sequence number; a dummy sorts by its first child."""
        while n.message is None and n.children:
            n = n.children[0]
        if n.message is None:
            return float("inf"), 0
        return times[n.message.uid], n.message.seq

    # (4) Sort the top level by sent date (a dummy's children first).
    for node in top:
        if node.message is None:
            node.children.sort(key=date_key)
    top.sort(key=date_key)

    # (5) Gather threads with the same base subject.
    parts = {m.uid: _subject_parts(subjects.get(m.uid, "")) for m in messages}

    def subject_of(n: _Node) -> tuple[str, bool]:
        m = n.message if n.message is not None else n.children[0].message
        assert m is not None
        base, reply = parts[m.uid]
        return _casemap(base), reply and n.message is not None

    # (5.B) The subject table: per subject a dummy if there is one, else a message that is
    # not a reply if there is one, else the first.
    subject_table: dict[str, _Node] = {}
    for node in top:
        subject, reply = subject_of(node)
        if not subject:
            continue
        held = subject_table.get(subject)
        if held is None:
            subject_table[subject] = node
        elif held.message is not None and (node.message is None
                                           or (subject_of(held)[1] and not reply)):
            subject_table[subject] = node
    # (5.C) Merge each other thread of a subject into the one in the table.
    merged: list[_Node | None] = list(top)
    position = {id(n): i for i, n in enumerate(top)}
    for i, node in enumerate(top):
        subject, reply = subject_of(node)
        held = subject_table.get(subject) if subject else None
        if held is None or held is node:
            continue
        merged[i] = None
        if held.message is None and node.message is None:
            held.children.extend(node.children)
        elif held.message is None or (reply and not subject_of(held)[1]):
            held.children.append(node)
        else:
            dummy = _Node()
            dummy.children = [held, node]
            merged[position[id(held)]] = dummy
            position[id(dummy)] = position[id(held)]
            subject_table[subject] = dummy
    top = [n for n in merged if n is not None]

    # (6) Sort every set of siblings by sent date, the deepest first.
    for node in reversed(_preorder(top)):
        node.children.sort(key=date_key)
    top.sort(key=date_key)
    return _to_threads(top)


def _to_threads(top: list[_Node]) -> list[Thread]:
    converted = [Thread(n.message) for n in top]
    stack = list(zip(top, converted, strict=True))
    while stack:
        node, out = stack.pop()
        for child in node.children:
            t = Thread(child.message)
            out.children.append(t)
            stack.append((child, t))
    return converted


def format_threads(threads: Sequence[Thread], use_uid: bool) -> str:
    """The body of the untagged THREAD response: "(1 2)(3 (4)(5))" (RFC 5256 4: a chain of
    only children is written as a list of numbers, a parent of several as the number then
    one list per child; a dummy shows only its children).  UIDs for UID THREAD."""
    out: list[str] = []
    # A stack of text to write and nodes to expand, so any depth of tree works.
    stack: list[str | Thread] = []
    for t in reversed(threads):
        stack.extend((")", t, "("))
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        pending: list[str | Thread] = []
        if item.message is not None:
            out.append(str(item.message.uid if use_uid else item.message.seq))
            if item.children:
                pending.append(" ")
        if len(item.children) == 1:
            pending.append(item.children[0])
        else:
            for child in item.children:
                pending.extend(("(", child, ")"))
        stack.extend(reversed(pending))
    return "".join(out)
