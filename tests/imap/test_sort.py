"""SORT and THREAD (RFC 5256): parsing, base subjects, each sort key, both threading
algorithms, the THREAD response format, properties, and imaptest's sort*/thread* scripts."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netpost.imap.parser import ParseError
from netpost.imap.search import AllKey, AndKey, BadCharset, FlagKey, MessageInfo, SetKey
from netpost.imap.sort import (
    Thread,
    base_subject,
    format_threads,
    parse_sort,
    parse_sort_command,
    parse_thread,
    sort_messages,
    thread,
)
from tests.imap.test_search import FakeData, imaptest_scripts, play_script, toks, utc

# --- parsing ---------------------------------------------------------------------------------


def test_parse_sort() -> None:
    criteria, charset, key = parse_sort(toks("(REVERSE date subject) utf-8 ALL"))
    assert criteria == [("DATE", True), ("SUBJECT", False)]
    assert charset == "UTF-8" and key == AllKey()
    criteria, charset, key = parse_sort(toks(
        "(ARRIVAL CC FROM SIZE TO DISPLAYFROM reverse DISPLAYTO) US-ASCII SEEN 1:3"))
    assert criteria == [("ARRIVAL", False), ("CC", False), ("FROM", False), ("SIZE", False),
                        ("TO", False), ("DISPLAYFROM", False), ("DISPLAYTO", True)]
    assert charset == "US-ASCII"
    assert isinstance(key, AndKey) and key.keys[0] == FlagKey("\\Seen")


@pytest.mark.parametrize("text", [
    "", "()", "DATE UTF-8 ALL", "(DATE)", "(DATE) UTF-8", "(REVERSE) UTF-8 ALL",
    "(DATE REVERSE) UTF-8 ALL", "(REVERSE REVERSE DATE) UTF-8 ALL", "(NOSUCH) UTF-8 ALL",
    "((DATE)) UTF-8 ALL", '("DATE") UTF-8 ALL', "(DATE) UTF-8 NOSUCHKEY",
    "RETURN (ALL) (DATE) UTF-8 ALL",  # ESORT goes through parse_sort_command
])
def test_parse_sort_errors(text: str) -> None:
    with pytest.raises(ParseError):
        parse_sort(toks(text))


def test_parse_sort_charset() -> None:
    with pytest.raises(BadCharset):
        parse_sort(toks("(DATE) ISO-8859-1 ALL"))


def test_parse_sort_command_with_return() -> None:
    cmd = parse_sort_command(toks("RETURN (MIN PARTIAL 4:2) (ARRIVAL) UTF-8 1:5"))
    assert cmd.returns == ("MIN", "PARTIAL") and cmd.partial == (2, 4)
    assert cmd.criteria == [("ARRIVAL", False)]
    assert parse_sort_command(toks("(SIZE) UTF-8 ALL")).returns is None
    for bad in ("RETURN (PARTIAL 1) (ARRIVAL) UTF-8 ALL", "RETURN (ARRIVAL) UTF-8 ALL",
                "RETURN", "RETURN ()"):
        with pytest.raises(ParseError):
            parse_sort_command(toks(bad))


def test_parse_thread() -> None:
    assert parse_thread(toks("REFERENCES UTF-8 ALL")) == ("REFERENCES", "UTF-8", AllKey())
    algorithm, charset, key = parse_thread(toks("orderedsubject us-ascii 1:*"))
    assert (algorithm, charset) == ("ORDEREDSUBJECT", "US-ASCII")
    assert isinstance(key, SetKey)
    for bad in ("", "REFERENCES", "REFERENCES UTF-8", "NOSUCH UTF-8 ALL", "(REFERENCES) UTF-8 ALL"):
        with pytest.raises(ParseError):
            parse_thread(toks(bad))
    with pytest.raises(BadCharset):
        parse_thread(toks("REFERENCES KOI8-R ALL"))


# --- base subjects (RFC 5256 2.1) ------------------------------------------------------------


@pytest.mark.parametrize(("subject", "base"), [
    ("hello", "hello"),
    ("Re: hello", "hello"),
    ("RE: Re: re:hello", "hello"),
    ("Fwd: hello", "hello"),
    ("fw: hello", "hello"),
    ("Re[2]: hello", "hello"),
    ("Re [list]: hello", "hello"),
    ("[list] Re: hello", "hello"),
    ("[list] hello", "hello"),
    ("[a] [b] hello", "hello"),
    ("[a] [b]", "[b]"),
    ("[xyz]", "[xyz]"),
    ("hello (fwd)", "hello"),
    ("hello (FWD) (fwd)  ", "hello"),
    ("[fwd: hello]", "hello"),
    ("Re: [FWD: c]", "c"),
    ("re: [fwd: [fwd: re: [fwd: babylon]]]", "babylon"),
    ("[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "b"),
    ("b (a)", "b (a)"),
    ("Ad: Re: Ad: Re: Ad: x", "Ad: Re: Ad: Re: Ad: x"),
    ("hello\t  world", "hello world"),
    ("  hello\r\n world  ", "hello world"),
    ("", ""),
    ("   ", ""),
    ("Re:", ""),
    ("Rehearsal: x", "Rehearsal: x"),
    ("Fwd:Re:Fwd: x", "x"),
    ("Ré: x", "Ré: x"),
])
def test_base_subject(subject: str, base: str) -> None:
    assert base_subject(subject) == base


@given(st.text(max_size=40))
@settings(max_examples=500, deadline=None)
def test_base_subject_is_idempotent(subject: str) -> None:
    base = base_subject(subject)
    assert base_subject(base) == base
    assert not base.startswith(" ") and not base.endswith(" ")


# --- SORT ------------------------------------------------------------------------------------


def sorted_seqs(criteria: str, raws: Sequence[bytes], dates: Sequence[float] = ()) -> list[int]:
    messages = [MessageInfo(i, 100 + i, frozenset(), dates[i - 1] if dates else 0.0, len(raw), 1)
                for i, raw in enumerate(raws, 1)]
    parsed, _, _ = parse_sort(toks(f"({criteria}) UTF-8 ALL"))
    data = FakeData({100 + i: raw for i, raw in enumerate(raws, 1)})
    return [m.seq for m in sort_messages(parsed, messages, data)]


def test_sort_arrival_size_and_ties_by_sequence() -> None:
    raws = [b"\r\n1", b"\r\n22", b"\r\n333", b"\r\n22", b"\r\n1"]
    dates = [5.0, 1.0, 3.0, 1.0, 9.0]
    assert sorted_seqs("ARRIVAL", raws, dates) == [2, 4, 3, 1, 5]
    assert sorted_seqs("REVERSE ARRIVAL", raws, dates) == [5, 1, 3, 2, 4]  # ties stay in order
    assert sorted_seqs("SIZE", raws, dates) == [1, 5, 2, 4, 3]
    assert sorted_seqs("SIZE REVERSE ARRIVAL", raws, dates) == [5, 1, 2, 4, 3]
    assert sorted_seqs("REVERSE SIZE ARRIVAL", raws, dates) == [3, 2, 4, 1, 5]


def test_sort_date_uses_utc_sent_date_then_internal_date() -> None:
    raws = [
        b"Date: Fri, 22 Feb 2008 02:00:00 +0200\r\n\r\n",  # 00:00 UTC
        b"Date: Thu, 21 Feb 2008 23:30:00 -0100\r\n\r\n",  # 00:30 UTC on the 22nd
        b"Subject: no date\r\n\r\n",
        b"Date: garbage\r\n\r\n",
    ]
    dates = [0.0, 0.0, utc(2008, 2, 22, 0, 15), utc(2008, 2, 21)]
    assert sorted_seqs("DATE", raws, dates) == [4, 1, 3, 2]
    assert sorted_seqs("REVERSE DATE", raws, dates) == [2, 3, 1, 4]


def test_sort_subject() -> None:
    raws = [b"Subject: Re: beta\r\n\r\n", b"Subject: alpha\r\n\r\n", b"\r\n",
            b"Subject: [list] Beta\r\n\r\n", b"Subject: _under\r\n\r\n", b"Subject: Zed\r\n\r\n"]
    # i;ascii-casemap: upper case, so "_" sorts after the letters; no subject is "".
    assert sorted_seqs("SUBJECT", raws) == [3, 2, 1, 4, 6, 5]
    assert sorted_seqs("REVERSE SUBJECT", raws) == [5, 6, 1, 4, 2, 3]


def test_sort_addresses_compare_the_first_mailbox() -> None:
    raws = [
        b"From: Zoe <bob@z.example>\r\nTo: x@y\r\nCc: c2@a\r\n\r\n",
        b"From: alice@b.example, zed@a\r\nCc: c1@b\r\n\r\n",
        b"From: Bob <BOB@a.example>\r\nTo: team: w@x;\r\n\r\n",
        b"Subject: no from\r\n\r\n",
    ]
    assert sorted_seqs("FROM", raws) == [4, 2, 1, 3]
    assert sorted_seqs("TO", raws) == [2, 4, 3, 1]  # "" < "TEAM" (the group's name) < "X"
    assert sorted_seqs("CC", raws) == [3, 4, 2, 1]
    assert sorted_seqs("DISPLAYFROM", raws) == [4, 2, 3, 1]  # "" alice@b.example Bob Zoe
    assert sorted_seqs("DISPLAYTO", raws) == [2, 4, 3, 1]


def test_sort_display_decodes_names() -> None:
    raws = [
        b"From: =?iso-8859-1?q?=C9mile?= <e@x>\r\n\r\n",
        b"From: Eve <e@x>\r\n\r\n",
        b"From: \"Adams, D\" <d@x>\r\n\r\n",
    ]
    # i;unicode-casemap: ÉMILE decomposes to E + U+0301, which sorts after EVE's V.
    assert sorted_seqs("DISPLAYFROM", raws) == [3, 2, 1]


def test_sort_asks_each_field_once() -> None:
    raws = [b"From: a@b\r\nSubject: x\r\n\r\n"] * 3
    messages = [MessageInfo(i, i, frozenset(), 0.0, 10, 1) for i in (1, 2, 3)]
    data = FakeData(dict(enumerate(raws, 1)))
    criteria, _, _ = parse_sort(toks("(FROM DISPLAYFROM SUBJECT REVERSE SUBJECT) UTF-8 ALL"))
    assert [m.seq for m in sort_messages(criteria, messages, data)] == [1, 2, 3]
    assert sorted(f for f, _ in data.header_calls) == ["from", "subject"]


def test_sort_survives_a_failing_store() -> None:
    class Broken(FakeData):
        def header_texts(self, field: str, uids: Sequence[int]) -> dict[int, str]:
            raise OSError("gone")

    messages = [MessageInfo(i, i, frozenset(), float(-i), 10, 1) for i in (1, 2, 3)]
    criteria, _, _ = parse_sort(toks("(SUBJECT DATE) UTF-8 ALL"))
    assert [m.seq for m in sort_messages(criteria, messages, Broken({}))] == [3, 2, 1]
    threads = thread("REFERENCES", messages, Broken({}))
    assert [t.message.seq for t in threads if t.message] == [3, 2, 1]


_criteria = st.lists(st.tuples(st.sampled_from(sorted(
    ["ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"])),
    st.booleans()), min_size=1, max_size=4)
_header_values = st.sampled_from(["", "a@b", "Re: x", "B <c@d>", "g: h@i;", "x (y)",
                                  "Mon, 1 Jan 2024 10:00:00 +0100", "=?utf-8?q?=C3=A9?="])


@st.composite
def _messages(draw: st.DrawFn) -> tuple[list[MessageInfo], FakeData]:
    n = draw(st.integers(0, 12))
    raws = {}
    messages = []
    for i in range(1, n + 1):
        fields = draw(st.dictionaries(st.sampled_from(
            ["From", "To", "Cc", "Subject", "Date"]), _header_values, max_size=5))
        raws[i * 3] = "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode() + b"\r\nb"
        messages.append(MessageInfo(i, i * 3, frozenset(), draw(st.sampled_from([0.0, 5.0, 9.0])),
                                    draw(st.integers(1, 4)), 1))
    return messages, FakeData(raws)


@given(_criteria, _messages())
@settings(max_examples=300, deadline=None)
def test_sort_is_a_permutation(criteria: list[tuple[str, bool]],
                               box: tuple[list[MessageInfo], FakeData]) -> None:
    messages, data = box
    result = sort_messages(criteria, list(reversed(messages)), data)
    assert sorted(result, key=lambda m: m.seq) == messages
    assert sort_messages(criteria, messages, data) == result  # the input order does not count


# --- THREAD ----------------------------------------------------------------------------------


def threads_of(algorithm: str, raws: Sequence[bytes], dates: Sequence[float] = (),
               use_uid: bool = False) -> str:
    messages = [MessageInfo(i, 10 * i, frozenset(), dates[i - 1] if dates else float(i),
                            len(raw), 1) for i, raw in enumerate(raws, 1)]
    data = FakeData({10 * i: raw for i, raw in enumerate(raws, 1)})
    return format_threads(thread(algorithm, messages, data), use_uid)


def msg(mid: str | None = None, refs: str | None = None, irt: str | None = None,
        subject: str | None = None, date: str | None = None) -> bytes:
    head = ""
    for name, value in (("Message-ID", mid), ("References", refs), ("In-Reply-To", irt),
                        ("Subject", subject), ("Date", date)):
        if value is not None:
            head += f"{name}: {value}\r\n"
    return head.encode() + b"\r\nbody\r\n"


def test_format_threads() -> None:
    m = [MessageInfo(i, 100 + i, frozenset(), 0.0, 1, 1) for i in range(10)]
    assert format_threads([], False) == ""
    assert format_threads([Thread(m[1])], False) == "(1)"
    chain = Thread(m[1], [Thread(m[2], [Thread(m[3])])])
    assert format_threads([chain], False) == "(1 2 3)"
    assert format_threads([chain], True) == "(101 102 103)"
    branching = Thread(m[3], [Thread(m[6]), Thread(m[4], [Thread(m[9]), Thread(m[5])])])
    assert format_threads([Thread(m[2]), branching], False) == "(2)(3 (6)(4 (9)(5)))"
    dummy = Thread(None, [Thread(m[1]), Thread(m[2], [Thread(m[3])])])
    assert format_threads([dummy], False) == "((1)(2 3))"
    assert format_threads([Thread(None, [Thread(m[4])])], False) == "(4)"
    nested_dummy = Thread(m[1], [Thread(None, [Thread(m[2]), Thread(m[3])])])
    assert format_threads([nested_dummy], False) == "(1 (2)(3))"


def test_format_threads_handles_any_depth() -> None:
    m = [MessageInfo(i, i, frozenset(), 0.0, 1, 1) for i in range(1, 6002)]
    root = node = Thread(m[0])
    for i in range(1, 6000, 2):  # each level branches: (1 (2)(3 (4)(5 ...)))
        deeper = Thread(m[i + 1])
        node.children = [Thread(m[i]), deeper]
        node = deeper
    text = format_threads([root], False)
    assert text.startswith("(1 (2)(3 (4)(5 (6)(7 ")
    assert text.count("(") == text.count(")")
    assert sorted(map(int, re.findall(r"\d+", text))) == list(range(1, 6002))


def test_references_chain_and_siblings() -> None:
    raws = [
        msg("<1@x>"),
        msg("<2@x>", irt="<1@x>"),
        msg("<3@x>", irt="<1@x>"),
        msg("<4@x>", refs="<1@x> <2@x>"),
        msg("<5@x>", refs="<1@x>\r\n <2@x>"),
    ]
    assert threads_of("REFERENCES", raws) == "(1 (2 (4)(5))(3))"
    assert threads_of("REFERENCES", raws, use_uid=True) == "(10 (20 (40)(50))(30))"


def test_references_dummies_are_pruned() -> None:
    # Two replies to a missing message: a dummy root with two children stays.
    assert threads_of("REFERENCES", [msg(refs="<a@b>"), msg(refs="<a@b>")]) == "((1)(2))"
    # One reply to a missing message: the dummy goes, the reply heads the thread.
    assert threads_of("REFERENCES", [msg("<x@y>", refs="<gone@b>")]) == "(1)"
    # A missing message between two present ones is spliced out.
    raws = [msg("<1@x>"), msg("<3@x>", refs="<1@x> <2@x>"), msg("<4@x>", refs="<1@x> <2@x>")]
    assert threads_of("REFERENCES", raws) == "(1 (2)(3))"


def test_references_duplicates_loops_and_truncated_references() -> None:
    # The second <a@b> is a message of its own (RFC 5256 2.2 1.A).
    assert threads_of("REFERENCES", [msg("<a@b>"), msg("<a@b>")]) == "(1)(2)"
    # A message referring to itself, and two messages referring to each other.
    assert threads_of("REFERENCES", [msg("<a@b>", refs="<a@b>")]) == "(1)"
    raws = [msg("<a@b>", refs="<b@b>"), msg("<b@b>", refs="<a@b>")]
    assert threads_of("REFERENCES", raws) == "(2 1)"
    # imaptest's "thread": the last reference replaces an earlier parent (1.B), and the
    # link that would close a loop is not made.
    raws = [msg("<a@b>"), msg("<b@b>", refs="<a@b> <c@b>"), msg("<c@b>", refs="<b@b>")]
    assert threads_of("REFERENCES", raws, dates=[3.0, 1.0, 2.0]) == "(3 2)(1)"
    # References wins over In-Reply-To; In-Reply-To is used only without References.
    raws = [msg("<1@x>"), msg("<2@x>"), msg("<3@x>", refs="<1@x>", irt="<2@x>"),
            msg("<4@x>", refs="no ids here", irt="<2@x> <1@x>")]
    assert threads_of("REFERENCES", raws) == "(1 3)(2 4)"


def test_references_subject_grouping() -> None:
    raws = [
        msg("<1@x>", subject="Plans"),
        msg("<2@x>", subject="Re: plans"),  # a reply by subject only: under 1
        msg("<3@x>", subject="Other"),
        msg("<4@x>", subject="other"),  # same subject, neither a reply: a dummy holds both
        msg("<5@x>", subject=""),  # empty subjects are never grouped
        msg("<6@x>"),
        msg("<7@x>", refs="<gone@x>", subject="Re: dummy"),
        msg("<8@x>", refs="<gone@x>", subject="Re: dummy"),
        msg("<9@x>", refs="<gone2@x>", subject="dummy"),
        msg("<10@x>", refs="<gone2@x>", subject="Fwd: dummy"),
    ]
    assert threads_of("REFERENCES", raws) == "(1 2)((3)(4))(5)(6)((7)(8)(9)(10))"


def test_references_children_sorted_by_sent_date() -> None:
    raws = [
        msg("<1@x>", date="Mon, 1 Jan 2024 10:00:00 +0000"),
        msg("<2@x>", irt="<1@x>", date="Mon, 1 Jan 2024 13:00:00 +0000"),
        msg("<3@x>", irt="<1@x>", date="Mon, 1 Jan 2024 14:00:00 +0200"),  # 12:00 UTC
        msg("<4@x>", irt="<1@x>"),  # internal date 4.0: 1970, first
        msg("<5@x>", date="Sun, 31 Dec 2023 10:00:00 +0000"),
    ]
    assert threads_of("REFERENCES", raws) == "(5)(1 (4)(3)(2))"


def test_references_deep_chain_needs_no_recursion() -> None:
    n = 3000
    raws = [msg("<0@x>")] + [msg(f"<{i}@x>", refs=" ".join(f"<{j}@x>" for j in range(
        max(0, i - 5), i))) for i in range(1, n)]
    text = threads_of("REFERENCES", raws)
    assert text == "(" + " ".join(str(i) for i in range(1, n + 1)) + ")"


def test_ordered_subject() -> None:
    raws = [
        msg(subject="b", date="Fri, 22 Feb 2008 22:00:10 +0200"),
        msg(subject="Re: a", date="Fri, 22 Feb 2008 22:00:09 +0200"),
        msg(subject="B", date="Fri, 22 Feb 2008 22:00:08 +0200"),
        msg(subject="a"),  # internal date 4.0: the oldest
        msg(),
        msg(subject=" "),
    ]
    assert threads_of("ORDEREDSUBJECT", raws) == "(4 2)(5 6)(3 1)"


@st.composite
def _threadable(draw: st.DrawFn) -> tuple[list[MessageInfo], FakeData]:
    n = draw(st.integers(0, 15))
    ids = [f"<{i}@x>" for i in range(8)]  # few ids: duplicates, loops and dummies happen
    raws = {}
    messages = []
    for i in range(1, n + 1):
        lines = []
        if draw(st.booleans()):
            lines.append(f"Message-ID: {draw(st.sampled_from(ids))}")
        if draw(st.booleans()):
            refs = draw(st.lists(st.sampled_from(ids), max_size=4))
            lines.append(f"References: {' '.join(refs)}")
        if draw(st.booleans()):
            lines.append(f"In-Reply-To: {draw(st.sampled_from(ids))}")
        if draw(st.booleans()):
            lines.append(f"Subject: {draw(st.sampled_from(['a', 'Re: a', 'b', 'Fwd: b', '']))}")
        raws[i] = ("\r\n".join(lines) + "\r\n\r\nbody").encode()
        messages.append(MessageInfo(i, i, frozenset(), float(draw(st.integers(0, 3))), 1, 1))
    return messages, FakeData(raws)


def _numbers(threads: list[Thread]) -> list[int]:
    """The message numbers in the trees; dummies only at the top, with two children or more."""
    out = []
    stack = [(t, True) for t in threads]
    while stack:
        t, top = stack.pop()
        if t.message is None:
            assert top and len(t.children) >= 2
        else:
            out.append(t.message.seq)
        stack.extend((c, False) for c in t.children)
    return sorted(out)


@given(st.sampled_from(["REFERENCES", "ORDEREDSUBJECT"]), _threadable())
@settings(max_examples=400, deadline=None)
def test_thread_contains_every_message_once(algorithm: str,
                                            box: tuple[list[MessageInfo], FakeData]) -> None:
    messages, data = box
    threads = thread(algorithm, messages, data)
    assert _numbers(threads) == [m.seq for m in messages]
    text = format_threads(threads, False)
    assert sorted(map(int, re.findall(r"\d+", text))) == [m.seq for m in messages]
    depth = 0
    for c in text:
        depth += {"(": 1, ")": -1}.get(c, 0)
        assert depth >= 0
    assert depth == 0
    assert "()" not in text


# --- imaptest --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", imaptest_scripts(r"sort.*", r"esort.*", r"thread.*"))
def test_imaptest_script(name: str) -> None:
    play_script(name)

