"""parse_meta and to_crlf: odd headers, encodings, and never raising on arbitrary bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netpost.mail.message import KEPT_FIELDS, parse_meta, to_crlf


def test_basic_fields() -> None:
    data = (
        b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        b"From: Alice <alice@example.com>\r\n"
        b"To: bob@example.com\r\n"
        b"Subject: Hello\r\n"
        b"Message-ID: <1@example.com>\r\n"
        b"X-Other: ignored\r\n"
        b"\r\n"
        b"Subject: not a header, body\r\n"
    )
    meta = parse_meta(data, 123.0)
    assert meta.size == len(data)
    assert meta.internaldate == 123.0
    assert meta.headers == {
        "date": "Mon, 1 Jan 2024 10:00:00 +0000",
        "from": "Alice <alice@example.com>",
        "to": "bob@example.com",
        "subject": "Hello",
        "message-id": "<1@example.com>",
    }
    assert not meta.has_dot_lines


def test_encoded_words_folding_and_utf8() -> None:
    data = (
        b"Subject: =?utf-8?q?caf=C3=A9?= =?utf-8?b?w6l0w6k=?=\r\n"
        b"  and more\r\n"
        b"From: =?iso-8859-1?q?J=FCrgen?= <j@example.de>\r\n"
        b"Cc: \xc3\x89mile <e@example.fr>\r\n"
        b"\r\n"
    )
    h = parse_meta(data, 0).headers
    assert h["subject"] == "caféété  and more"  # unfolding keeps the WSP
    assert h["from"] == "Jürgen <j@example.de>"
    assert h["cc"] == "Émile <e@example.fr>"


def test_bad_charset_and_bad_encoded_words() -> None:
    data = (
        b"Subject: =?x-no-such-charset?q?abc?= =?utf-8?b?!!!?=\r\n"
        b"From: \xff\xfe bad utf8 <x@y>\r\n"
        b"\r\n"
    )
    h = parse_meta(data, 0).headers
    assert "abc" in h["subject"]
    assert h["from"].endswith("bad utf8 <x@y>")


def test_repeated_and_joined_fields() -> None:
    data = b"To: a@x\r\nTo: b@x\r\nSubject: first\r\nSubject: second\r\n\r\n"
    h = parse_meta(data, 0).headers
    assert h["to"] == "a@x, b@x"
    assert h["subject"] == "first"


def test_bare_lf_and_no_body() -> None:
    h = parse_meta(b"Subject: lf only\nFrom: a@b\n", 0).headers
    assert h == {"subject": "lf only", "from": "a@b"}


def test_no_header_section() -> None:
    assert parse_meta(b"\r\nSubject: in body\r\n", 0).headers == {}
    assert parse_meta(b"", 0).headers == {}
    assert parse_meta(b"just some text without colon\r\n\r\n", 0).headers == {}


def test_long_fields_truncated() -> None:
    data = b"Subject: " + b"x" * 100_000 + b"\r\nReferences: " + b"<a@b> " * 5000 + b"\r\n\r\n"
    h = parse_meta(data, 0).headers
    assert len(h["subject"]) == 1024
    assert len(h["references"]) == 8192


def test_control_characters_removed() -> None:
    h = parse_meta(b"Subject: a\x00b\x1bc\r\n\r\n", 0).headers
    assert h["subject"] == "a b c"


def test_has_dot_lines() -> None:
    assert parse_meta(b".starts with dot\r\n", 0).has_dot_lines
    assert parse_meta(b"Subject: x\r\n\r\nline\r\n.dot\r\n", 0).has_dot_lines
    assert not parse_meta(b"Subject: x\r\n\r\nline\r\n a.dot\r\n", 0).has_dot_lines


def test_to_crlf() -> None:
    assert to_crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"
    assert to_crlf(b"") == b""
    assert to_crlf(b"a\r\nb\r\n") == b"a\r\nb\r\n"
    assert to_crlf(b"a\nb\r\nc") == b"a\r\nb\r\nc"
    assert to_crlf(b"no newline") == b"no newline"
    assert to_crlf(b"a\r\n\r\n") == b"a\r\n\r\n"


header_line = st.tuples(
    st.sampled_from([*KEPT_FIELDS, "x-junk", "", "Subject ", "\xff"]),
    st.binary(max_size=60),
).map(lambda t: t[0].encode("latin-1") + b":" + t[1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    meta = parse_meta(data, 0.0)
    assert meta.size == len(data)
    assert all(k in KEPT_FIELDS and isinstance(v, str) for k, v in meta.headers.items())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(header_line, max_size=12),
    st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n "]),
    st.text(max_size=40),
)
def test_never_raises_on_header_like_bytes(lines: list[bytes], sep: bytes, words: str) -> None:
    encoded = f"=?utf-8?q?{words}?= =?bogus?b?{words}?=".encode("utf-8", "replace")
    data = sep.join([*lines, b"Subject: " + encoded]) + sep + sep + b"body"
    meta = parse_meta(data, 0.0)
    assert meta.size == len(data)
