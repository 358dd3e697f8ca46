"""netpost.imap.mime: Dovecot's imaptest FETCH scripts, odd MIME, and properties.

The scripts (src/tests/fetch-body*, fetch-envelope, fetch-binary-*, and the BINARY parts of
append-binary and urlauth-binary) come from an unpacked imaptest tree: $NETPOST_IMAPTEST_SRC,
else /tmp/imaptest-src; when neither holds one, the tarball ($NETPOST_IMAPTEST_TARBALL, else
shared/tools/imaptest-release-2.3.tar.gz beside the repo) is unpacked into a temporary
directory.  A script's messages are its .mbox file as imaptest appends them: one message per
"From " line, LF made CRLF.  Replies are compared as imaptest does (strings and atoms without
regard to case, `$name` binds on first use), literals octet for octet.
"""

from __future__ import annotations

import base64
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netpost.imap import mime
from netpost.imap.mime import Kind, Packed, Part, Section, UnknownCTE, Value
from netpost.imap.wire import encode_value
from tests.interop import imaptest_tool

REPO = Path(__file__).resolve().parents[2]
TARBALL_NAME = "imaptest-release-2.3.tar.gz"

# The scripts this module answers for.  test_script_list_is_complete notices new ones.
FETCH_SCRIPTS = [
    "fetch-binary-mime",
    "fetch-binary-mime-base64",
    "fetch-binary-mime-qp",
    "fetch-body",
    "fetch-body-message-rfc822",
    "fetch-body-message-rfc822-mime",
    "fetch-body-message-rfc822-x2",
    "fetch-body-mime",
    "fetch-bodystructure",
    "fetch-envelope",
]
OTHER_SCRIPTS = ["append-binary", "urlauth-binary"]  # checked by their own tests below


@pytest.fixture(autouse=True, scope="module")
def strict_mime() -> Iterator[None]:
    """Let the never-raise guards re-raise here, so that a bug shows instead of a fallback."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mime, "_STRICT", True)
        yield


# --- the imaptest tree --------------------------------------------------------------------------

def _tests_dir(root: Path) -> Path | None:
    for candidate in (root / "src" / "tests", *sorted(root.glob("*/src/tests"))):
        if (candidate / "fetch-body").is_file():
            return candidate
    return None


def _tarball() -> Path:
    return imaptest_tool.tarball()


@pytest.fixture(scope="session")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory holding imaptest's scripted tests and their .mbox files."""
    found = _tests_dir(Path(os.environ.get("NETPOST_IMAPTEST_SRC", "/tmp/imaptest-src")))
    if found is not None:
        return found
    target = tmp_path_factory.mktemp("imaptest-src")
    with tarfile.open(_tarball()) as tar:
        tar.extractall(target, filter="data")
    found = _tests_dir(target)
    assert found is not None, f"no src/tests/fetch-body in {_tarball()}"
    return found


def read_mbox(path: Path) -> list[bytes]:
    """The messages of an mbox as imaptest's mailbox source appends them."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    messages: list[list[bytes]] = []
    for line in lines:
        if line.startswith(b"From "):
            messages.append([])
        elif messages:
            messages[-1].append(line)
    return [b"".join(line.removesuffix(b"\r") + b"\r\n" for line in m) for m in messages]


# --- imaptest's script format (src/test-parser.c) ----------------------------------------------

@dataclass
class Command:
    line: bytes
    replies: list[bytes] = field(default_factory=list)  # "* ..." without the "* "
    banned: list[bytes] = field(default_factory=list)  # "! ...": must not be sent


@dataclass
class Script:
    headers: dict[str, str]
    commands: list[Command]


def read_script(path: Path) -> Script:
    """Headers, then commands ("ok ...") each followed by their untagged replies; a line
    ending in {{{ (or ~{{{) starts a literal that runs to a line starting }}}: its lines join
    with CRLF (~: LF), the last line end dropped."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    headers: dict[str, str] = {}
    commands: list[Command] = []
    in_header = True
    literal: bytearray | None = None
    start = last_end = 0
    binary = False

    def begin(prefix: bytes) -> None:
        nonlocal literal, start, last_end, binary
        binary = prefix.endswith(b"~")
        assert literal is not None
        literal += prefix[:-1] if binary else prefix
        start = last_end = len(literal)

    for line in lines:
        if literal is not None:
            if not line.startswith(b"}}}"):
                literal += line
                last_end = len(literal)
                literal += b"\n" if binary else b"\r\n"
                continue
            del literal[last_end:]
            literal[start:start] = b"%s{%d}\r\n" % (b"~" if binary else b"", len(literal) - start)
            rest = line[3:]
            if rest.endswith(b"{{{"):
                begin(rest[:-3])
                continue
            line = bytes(literal + rest)
            literal = None
        else:
            if not line:
                in_header = False
                continue
            if line.startswith(b"#"):
                continue
            if line.endswith(b"{{{"):
                literal = bytearray()
                begin(line[:-3])
                continue
        if in_header:
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        elif line[:3].lower() in (b"ok ", b"no ") or line[:4].lower() == b"bad ":
            commands.append(Command(line.split(b" ", 1)[1]))
        elif line.startswith(b"* "):
            commands[-1].replies.append(line[2:])
        elif line.startswith(b"! "):
            commands[-1].banned.append(line[2:])
        else:
            raise AssertionError(f"{path.name}: unexpected line {line!r}")
    return Script(headers, commands)


# --- IMAP replies ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Str:
    """A string or atom of an expected reply; literals compare exactly, the rest as imaptest
    compares them, without regard to case."""

    data: bytes
    literal: bool = False


Expected = None | Str | list["Expected"]


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def skip_spaces(self) -> None:
        while self.i < len(self.data) and self.data[self.i] == 0x20:
            self.i += 1

    def peek(self) -> int:
        return self.data[self.i] if self.i < len(self.data) else -1

    def value(self) -> Expected:
        self.skip_spaces()
        c = self.peek()
        if c == 0x28:  # (
            self.i += 1
            items: list[Expected] = []
            while True:
                self.skip_spaces()
                if self.peek() == 0x29:
                    self.i += 1
                    return items
                items.append(self.value())
        if c == 0x22:  # "
            out = bytearray()
            self.i += 1
            while self.data[self.i] != 0x22:
                if self.data[self.i] == 0x5C:
                    self.i += 1
                out.append(self.data[self.i])
                self.i += 1
            self.i += 1
            return Str(bytes(out))
        m = re.compile(rb"~?\{(\d+)\}\r\n").match(self.data, self.i)
        if m:
            self.i = m.end() + int(m.group(1))
            return Str(self.data[m.end():self.i], literal=True)
        m = re.compile(rb"[^ ()]+").match(self.data, self.i)
        assert m, self.data[self.i:]
        self.i = m.end()
        return None if m.group().upper() == b"NIL" else Str(m.group())

    def item_name(self) -> str:
        """A FETCH item name: up to a space outside [...], e.g. body[header.fields (a b)]<0>."""
        self.skip_spaces()
        depth = 0
        begin = self.i
        while self.i < len(self.data):
            c = self.data[self.i]
            if c == 0x5B:
                depth += 1
            elif c == 0x5D:
                depth -= 1
            elif depth == 0 and c in b" )":
                break
            self.i += 1
        return self.data[begin:self.i].decode("latin-1")


def read_fetch(reply: bytes) -> tuple[int, list[tuple[str, Expected]]]:
    """'N fetch (item value ...)' as (N, [(item, value), ...])."""
    m = re.compile(rb"(\d+) fetch \(", re.I).match(reply)
    assert m, reply
    r = Reader(reply)
    r.i = m.end()
    items: list[tuple[str, Expected]] = []
    while True:
        r.skip_spaces()
        if r.peek() == 0x29:
            return int(m.group(1)), items
        name = r.item_name()
        items.append((name.lower(), r.value()))


def fetch_partials(command: bytes) -> dict[tuple[str, int], int]:
    """The <offset.length> of each item of a FETCH command, keyed as its reply names it."""
    r = Reader(command.split(b" ", 2)[2])
    if r.peek() == 0x28:
        r.i += 1
    out: dict[tuple[str, int], int] = {}
    while r.i < len(r.data) and r.peek() != 0x29:
        name = r.item_name().lower().replace(".peek", "")
        m = re.fullmatch(r"(.*)<(\d+)\.(\d+)>", name, re.S)
        if m:
            out[(m.group(1), int(m.group(2)))] = int(m.group(3))
        r.skip_spaces()
    return out


_SECTION = re.compile(r"((?:\d+)(?:\.\d+)*)?\.?(.*)", re.S)


def parse_section(spec: str) -> Section:
    m = _SECTION.fullmatch(spec)
    assert m, spec
    parts = tuple(int(p) for p in m.group(1).split(".")) if m.group(1) else ()
    rest = m.group(2)
    text, _, names = rest.partition(" ")
    fields = tuple(names.strip("()").split()) if names else ()
    return Section(parts, text.upper(), fields)


def fetch_item(src: Part, name: str, partials: dict[tuple[str, int], int]) -> Value:
    """What netpost.imap.mime answers for one FETCH item of a reply."""
    simple: dict[str, Callable[[], Value]] = {
        "envelope": lambda: mime.envelope(src),
        "body": lambda: mime.bodystructure(src, extensible=False),
        "bodystructure": lambda: mime.bodystructure(src, extensible=True),
        "rfc822": lambda: mime.section(src, Section((), "")),
        "rfc822.header": lambda: mime.section(src, Section((), "HEADER")),
        "rfc822.text": lambda: mime.section(src, Section((), "TEXT")),
        "rfc822.size": lambda: len(src.raw),
    }
    if name in simple:
        return simple[name]()
    m = re.fullmatch(r"(body|binary|binary\.size)\[(.*)\](?:<(\d+)>)?", name, re.S)
    assert m, name
    kind, spec, offset = m.group(1), m.group(2), m.group(3)
    sec = parse_section(spec)
    data: bytes | None
    if kind == "binary.size":
        assert not sec.text, name
        return mime.binary_size(src, sec.parts)
    if kind == "binary":
        assert not sec.text, name
        data = mime.binary(src, sec.parts)
    else:
        data = mime.section(src, sec)
    if offset is not None and data is not None:
        start = int(offset)
        data = data[start:start + partials[(f"{kind}[{spec}]", start)]]
    return data


def matches(expected: Expected, actual: Value, variables: dict[str, Value]) -> bool:
    if isinstance(expected, Str) and expected.data.startswith(b"$"):
        var = expected.data.decode()
        if var == "$":
            return True
        if var not in variables:
            variables[var] = actual
            return True
        return variables[var] == actual
    if expected is None:
        return actual is None
    if isinstance(expected, Str):
        if isinstance(actual, int):
            actual = b"%d" % actual
        if not isinstance(actual, bytes):
            return False
        return actual == expected.data if expected.literal else (
            actual.lower() == expected.data.lower())
    return (isinstance(actual, list) and len(actual) == len(expected)
            and all(matches(e, a, variables) for e, a in zip(expected, actual, strict=True)))


NOT_MIME = {"flags", "uid", "internaldate", "modseq"}  # FETCH items other modules answer


# --- the FETCH scripts --------------------------------------------------------------------------

def test_script_list_is_complete(scripts: Path) -> None:
    patterns = ("fetch-bodystructure*", "fetch-envelope*", "fetch-body*", "fetch-binary*",
                "*binary*")
    found = {p.name for pattern in patterns for p in scripts.glob(pattern)
             if p.suffix != ".mbox"}
    assert found == set(FETCH_SCRIPTS) | set(OTHER_SCRIPTS)


@pytest.mark.parametrize("name", FETCH_SCRIPTS)
def test_imaptest_script(scripts: Path, name: str) -> None:
    script = read_script(scripts / name)
    assert script.headers.get("messages") == "all"
    messages = [mime.parse(raw) for raw in read_mbox(scripts / f"{name}.mbox")]
    variables: dict[str, Value] = {}
    checked = 0
    for command in script.commands:
        assert command.line.lower().startswith(b"fetch "), command.line
        partials = fetch_partials(command.line)
        for reply in command.replies:
            seq, items = read_fetch(reply)
            for item, expected in items:
                if item in NOT_MIME:
                    continue
                actual = fetch_item(messages[seq - 1], item, partials)
                assert matches(expected, actual, variables), (
                    f"{name}: {command.line!r}\n  expected {item} {expected!r}\n"
                    f"  got {encode_value(actual)!r}")
                checked += 1
        for reply in command.banned:
            seq, items = read_fetch(reply)
            items = [(i, e) for i, e in items if i not in NOT_MIME]
            got = [fetch_item(messages[seq - 1], i, partials) for i, _ in items]
            assert not all(matches(e, a, dict(variables))
                           for (_, e), a in zip(items, got, strict=True)), (name, reply)
    assert checked > 0


def test_append_binary(scripts: Path) -> None:
    """append-binary: a binary (literal8) upload; BINARY[1] gives its octets back as they are
    and BINARY.SIZE[1] counts them.  Its "!" lines (BODY[1] must not be those raw octets, NUL
    included) are about what the APPEND path stores, not about this module: section() sends
    a stored body as it is."""
    script = read_script(scripts / "append-binary")
    append = script.commands[0].line
    m = re.search(rb"~\{(\d+)\}\r\n", append)
    assert m
    raw = append[m.end():m.end() + int(m.group(1))]
    body = raw.split(b"\r\n\r\n", 1)[1]
    fetch = next(c for c in script.commands if b"binary.size" in c.line)
    seq, items = read_fetch(fetch.replies[0])
    expected_size = dict(items)["binary.size[1]"]
    assert isinstance(expected_size, Str)
    assert mime.binary_size(raw, (1,)) == int(expected_size.data) == len(body) == 7
    assert mime.binary(raw, (1,)) == body
    assert mime.section(raw, Section((1,), "")) == body


def test_urlauth_binary(scripts: Path) -> None:
    """urlauth-binary: URLFETCH BINARY and BODYPARTSTRUCTURE (RFC 5524) of the first message's
    parts 1 (message/rfc822) and 1.1.  BINARY of a message/rfc822 part decodes the parts inside
    and rewrites their Content-Transfer-Encoding to binary, as Dovecot does."""
    script = read_script(scripts / "urlauth-binary")
    raw = read_mbox(scripts / "urlauth-binary.mbox")[0]
    urls: dict[bytes, tuple[bytes, tuple[int, ...]]] = {}
    for command in script.commands:
        m = re.search(rb";uid=(\$\w+)/;section=([\d.]+);", command.line)
        if command.line.startswith(b"GENURLAUTH") and m:
            var = command.replies[0].split()[1]
            urls[var] = (m.group(1), tuple(int(p) for p in m.group(2).split(b".")))
    seen = 0
    for command in script.commands:
        if not command.line.startswith(b"URLFETCH"):
            continue
        for reply in command.replies:
            r = Reader(reply)
            assert r.value() == Str(b"URLFETCH")
            url = r.value()
            assert isinstance(url, Str)
            uid, parts = urls[url.data]
            result = r.value()
            assert isinstance(result, list)
            pairs = dict(zip((e.data.lower() for e in result[::2] if isinstance(e, Str)),
                             result[1::2], strict=True))
            part = mime.locate(raw, parts)
            assert part is not None
            if uid == b"$uid2" and b"bodypartstructure" in pairs:
                # Asked together with BINARY, the structure describes the decoded part (RFC
                # 5524 3); Dovecot then still says "base64" where the data now is binary.
                decoded = mime.parse(part.header + (mime.binary(raw, parts) or b""))
                structure = mime.bodystructure(decoded, extensible=True)
                assert matches(_expect_base64(pairs[b"bodypartstructure"]),
                               _say_base64(structure), {}), structure
            elif b"bodypartstructure" in pairs:
                assert matches(pairs[b"bodypartstructure"],
                               mime.bodystructure(part, extensible=True), {})
            if b"binary" in pairs:
                assert matches(pairs[b"binary"], mime.binary(raw, parts), {})
            seen += 1
    assert seen == 7


def _expect_base64(value: Expected) -> Expected:
    """An expected structure with each "binary" encoding said as "base64"."""
    if isinstance(value, list):
        return [_expect_base64(v) for v in value]
    if isinstance(value, Str) and value.data.lower() == b"binary":
        return Str(b"base64")
    return value


def _say_base64(value: Value) -> Value:
    """A structure with each "binary" encoding said as "base64"."""
    if isinstance(value, list):
        return [_say_base64(v) for v in value]
    if isinstance(value, bytes) and value.lower() == b"binary":
        return b"base64"
    return value


# --- odd MIME: what each function answers ---------------------------------------------------------

def msg(*lines: str | bytes) -> bytes:
    return b"".join((line.encode() if isinstance(line, str) else line) + b"\r\n"
                    for line in lines)


NESTED = msg(
    "From: a@example.com",
    "Subject: nested",
    "MIME-Version: 1.0",
    'Content-Type: multipart/mixed; boundary="outer"',
    "",
    "preamble",
    "--outer",
    'Content-Type: multipart/alternative; boundary="inner"',
    "",
    "--inner",
    "Content-Type: text/plain; charset=utf-8",
    "",
    "plain",
    "--inner",
    "Content-Type: text/html",
    "Content-Transfer-Encoding: quoted-printable",
    "",
    "<p>caf=C3=A9</p>",
    "--inner--",
    "--outer",
    "Content-Type: message/rfc822",
    "Content-Disposition: inline; filename=fwd.eml",
    "",
    "From: Fwd <fwd@example.org>",
    "Subject: forwarded",
    "",
    "inner body",
    "--outer",
    "Content-Type: application/octet-stream; name=\"a b.bin\"",
    "Content-Transfer-Encoding: base64",
    "Content-ID: <id@x>",
    "Content-Description: some data",
    "Content-Disposition: attachment;",
    "  filename*0*=utf-8''%E2%82%AC; filename*1=.bin",
    "Content-Language: en, de",
    "Content-Location: http://example.com/a.bin",
    "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==",
    "",
    "AAEC",
    "/w==",
    "--outer--",
    "epilogue",
)


def test_nested_multipart_structure() -> None:
    bs = mime.bodystructure(NESTED, extensible=True)
    assert encode_value(bs) == (
        b'((("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 5 0 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "quoted-printable" 16 0 NIL NIL NIL'
        b' NIL) "alternative" ("boundary" "inner") NIL NIL NIL)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 61 (NIL "forwarded" (("Fwd" NIL "fwd"'
        b' "example.org")) (("Fwd" NIL "fwd" "example.org")) (("Fwd" NIL "fwd" "example.org"))'
        b' NIL NIL NIL NIL NIL) ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0 NIL'
        b' NIL NIL NIL) 3 NIL ("inline" ("filename" "fwd.eml")) NIL NIL)'
        b'("application" "octet-stream" ("name" "a b.bin") "<id@x>" "some data" "base64" 10'
        b' "Q2hlY2sgSW50ZWdyaXR5IQ==" ("attachment" ("filename*" "utf-8\'\'%E2%82%AC.bin"))'
        b' ("en" "de") "http://example.com/a.bin") "mixed" ("boundary" "outer") NIL NIL NIL)')
    body = mime.bodystructure(NESTED, extensible=False)
    assert encode_value(body).endswith(b'"base64" 10) "mixed")')
    assert section(NESTED, (1, 2)) == b"<p>caf=C3=A9</p>"
    assert section(NESTED, (2,)) == b"From: Fwd <fwd@example.org>\r\nSubject: forwarded\r\n" \
                                    b"\r\ninner body"
    assert section(NESTED, (2, 1)) == b"inner body"
    assert section(NESTED, (2,), "HEADER") == b"From: Fwd <fwd@example.org>\r\n" \
                                              b"Subject: forwarded\r\n\r\n"
    assert section(NESTED, (2,), "TEXT") == b"inner body"
    assert (section(NESTED, (3,), "MIME") or b"").startswith(
        b"Content-Type: application/octet-stream")
    assert section(NESTED, (1,), "TEXT") is None  # TEXT needs a message/rfc822 part
    assert section(NESTED, (4,)) is None
    assert section(NESTED, (1, 3)) is None
    assert section(NESTED, (0,)) is None
    assert section(NESTED, (), "MIME") is None
    assert section(NESTED, (2, 1, 1)) is None  # text/plain has no part 1.1
    assert mime.section(NESTED, Section((), "BOGUS")) is None
    assert mime.binary(NESTED, (1, 2)) == "<p>café</p>".encode()
    assert mime.binary(NESTED, (3,)) == b"\x00\x01\x02\xff"
    assert mime.binary_size(NESTED, (3,)) == 4
    assert mime.binary(NESTED, (9,)) is None and mime.binary_size(NESTED, (9,)) is None


def section(raw: bytes | Part, parts: tuple[int, ...], text: str = "",
            fields: tuple[str, ...] = ()) -> bytes | None:
    return mime.section(raw, Section(parts, text, fields))


def test_binary_of_a_multipart_decodes_inside() -> None:
    converted = mime.binary(NESTED, ())
    assert converted is not None
    assert b"Content-Transfer-Encoding: binary\r\n\r\n<p>caf\xc3\xa9</p>\r\n--inner--" in converted
    assert b"\r\n\r\n\x00\x01\x02\xff\r\n--outer--\r\nepilogue\r\n" in converted
    reparsed = mime.parse(converted)
    assert mime.binary(reparsed, ()) == converted  # nothing left to decode
    assert mime.binary(NESTED, (2,)) == section(NESTED, (2,))  # already plain
    assert mime.binary_size(NESTED, ()) == len(converted)


def test_unknown_cte() -> None:
    raw = msg("Content-Type: text/plain", "Content-Transfer-Encoding: x-uuencode", "", "begin")
    with pytest.raises(UnknownCTE):
        mime.binary(raw, (1,))
    with pytest.raises(UnknownCTE):
        mime.binary_size(raw, ())
    assert section(raw, (1,)) == b"begin\r\n"  # BODY[] does not decode
    assert mime.bodystructure(raw, extensible=False)[5] == b"x-uuencode"
    for cte in ("7bit", "8BIT", "Binary", "7bit (comment)"):
        raw = msg(f"Content-Transfer-Encoding: {cte}", "", "\xe9t\xe9".encode("latin-1"))
        assert mime.binary(raw, (1,)) == b"\xe9t\xe9\r\n"


def test_quoted_printable_and_base64_decoding() -> None:
    qp = msg("Content-Transfer-Encoding: Quoted-Printable", "",
             "a=3Db=3db  ", "soft=", "break\t=  ", "=E9=\t", "x=ZZ=4")
    assert mime.binary(qp, (1,)) == b"a=b=b\r\nsoftbreak\t\xe9x=ZZ=4\r\n"
    b64 = msg("Content-Transfer-Encoding: BASE64", "", " aGVs bG8=", "!!", "aGk=", "x")
    assert mime.binary(b64, (1,)) == b"hellohi"
    assert mime.binary(msg("Content-Transfer-Encoding: base64", "", "===="), (1,)) == b""


def test_missing_boundary_is_text_plain() -> None:
    raw = msg("Content-Type: multipart/mixed", "", "--x", "", "body", "--x--")
    assert mime.bodystructure(raw, extensible=False) == [
        b"text", b"plain", [b"charset", b"us-ascii"], None, None, b"7bit", 20, 4]
    assert section(raw, (1,)) == b"--x\r\n\r\nbody\r\n--x--\r\n"
    raw = msg('Content-Type: multipart/mixed; boundary=""', "", "text")
    assert mime.parse(raw).kind is Kind.LEAF


def test_missing_end_boundaries() -> None:
    raw = msg("Content-Type: multipart/mixed; boundary=o", "",
              "--o", "Content-Type: multipart/alternative; boundary=i", "",
              "--i", "", "one", "--i", "", "two",
              "--o", "", "three")
    root = mime.parse(raw)
    assert [len(p.children) for p in root.children] == [2, 0]
    assert section(root, (1, 2)) == b"two"  # the outer boundary ends the inner part
    assert section(root, (2,)) == b"three\r\n"  # runs to the end
    bs = mime.bodystructure(root, extensible=False)
    assert bs[0] == [[b"text", b"plain", [b"charset", b"us-ascii"], None, None, b"7bit", 3, 0],
                     [b"text", b"plain", [b"charset", b"us-ascii"], None, None, b"7bit", 3, 0],
                     b"alternative"]


def test_multipart_without_parts_has_an_empty_one() -> None:
    raw = msg("Content-Type: multipart/mixed; boundary=b", "", "just a preamble")
    assert mime.bodystructure(raw, extensible=False) == [
        [b"text", b"plain", [b"charset", b"us-ascii"], None, None, b"7bit", 0, 0], b"mixed"]
    assert section(raw, (1,)) == b""
    raw = msg("Content-Type: multipart/mixed; boundary=b", "", "--b--", "epilogue")
    assert section(raw, (1,)) == b""
    assert section(raw, (), "TEXT") == b"--b--\r\nepilogue\r\n"


def test_boundary_prefix_and_header_cut_short() -> None:
    # RFC 2046 5.1.1: the boundary need only start the line; the longest enclosing one wins
    raw = msg("Content-Type: multipart/mixed; boundary=ab", "",
              "--ab  ", "Content-Type: multipart/mixed; boundary=abc", "",
              "--abc", "Content-Type: text/plain",  # no blank line: the header ends here
              "--abc--trailing", "--ab--")
    root = mime.parse(raw)
    inner = root.children[0]
    assert inner.kind is Kind.MULTIPART and len(inner.children) == 1
    leaf = inner.children[0]
    assert leaf.header == b"Content-Type: text/plain" and leaf.body == b""
    assert section(root, (1, 1), "MIME") == b"Content-Type: text/plain"


def test_digest_parts_default_to_rfc822() -> None:
    raw = msg("Content-Type: multipart/digest; boundary=d", "",
              "--d", "", "Subject: one", "", "1", "--d", "Content-Type: text/plain", "", "2",
              "--d--")
    first, second = mime.bodystructure(raw, extensible=False)[:2]
    assert isinstance(first, list) and isinstance(second, list)
    assert first[:2] == [b"message", b"rfc822"] and second[:2] == [b"text", b"plain"]
    assert section(raw, (1,), "HEADER") == b"Subject: one\r\n\r\n"
    assert section(raw, (1, 1)) == b"1"
    assert section(raw, (1,), "MIME") == b"\r\n"


def test_message_global_and_rfc822_top_level() -> None:
    raw = msg("Content-Type: message/global", "", "Subject: caf\xc3\xa9".encode("latin-1"),
              "", "x")
    bs = mime.bodystructure(raw, extensible=False)
    assert bs[:2] == [b"message", b"global"]
    envelope = bs[7]
    assert isinstance(envelope, list) and envelope == mime.envelope(mime.parse(raw).children[0])
    assert envelope[1] == "café".encode()
    assert section(raw, (1,), "TEXT") == b"x\r\n"
    assert section(raw, (1, 1)) == b"x\r\n"
    assert section(raw, (2,)) is None


def test_empty_header_only_and_lf_inputs() -> None:
    for raw in (b"", b"\r\n", b"\n", b"Subject: x", b"Subject: x\r\n", b"Subject: x\n\nbody\n",
                b"no header at all", b"\r\n\r\n\r\n"):
        root = mime.parse(raw)
        assert section(root, (), "HEADER") + section(root, (), "TEXT") == raw  # type: ignore
        bs = mime.bodystructure(root, extensible=True)
        assert bs[6] == len(root.body)
    assert section(b"Subject: x", (), "HEADER.FIELDS", ("subject",)) == b"Subject: x\r\n\r\n"
    lf = (b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n"
          b"one\n--b\n\ntwo\n--b--\n")
    root = mime.parse(lf)
    assert section(root, (1,)) == b"one" and section(root, (2,)) == b"two"
    assert section(root, (1,), "MIME") == b"Content-Type: text/plain\n\n"


def test_header_fields() -> None:
    raw = msg("From: a@example.com", "X-Long: one", "  two", "subject : s", "from: b@example.com",
              "To: c@example.com", "", "body")
    assert section(raw, (), "HEADER.FIELDS", ("FROM", "x-long")) == (
        b"From: a@example.com\r\nX-Long: one\r\n  two\r\nfrom: b@example.com\r\n\r\n")
    assert section(raw, (), "HEADER.FIELDS", ("Subject",)) == b"subject : s\r\n\r\n"
    assert section(raw, (), "HEADER.FIELDS.NOT", ("from", "x-long", "subject")) == (
        b"To: c@example.com\r\n\r\n")
    assert section(raw, (), "header.fields", ("nothing",)) == b"\r\n"
    assert section(raw, (1,), "HEADER.FIELDS", ("from",)) is None  # not a message/rfc822


# --- ENVELOPE -------------------------------------------------------------------------------

def env(headers: bytes) -> list[Value]:
    return mime.envelope(headers + b"\r\nbody\r\n")


def test_envelope_fields_are_raw_and_unfolded() -> None:
    e = env(msg("Subject: =?utf-8?q?caf=C3=A9?=", "  \tfolded  ", "Date: today",
                "Message-ID: <1@x>", "In-Reply-To: <0@x>", "Subject: second ignored"))
    assert e[0] == b"today" and e[8] == b"<0@x>" and e[9] == b"<1@x>"
    assert e[1] == b"=?utf-8?q?caf=C3=A9?=  \tfolded"
    e = env(msg(b"Subject: \xc3\xa9t\xc3\xa9", b"From: \xc3\x89mile <\xc3\xa9@x.fr>"))
    assert e[1] == "été".encode()
    assert e[2] == [["Émile".encode(), None, "é".encode(), b"x.fr"]]
    assert env(msg("Subject:", "Date: "))[:2] == [b"", b""]
    assert env(msg("X: y")) == [None] * 10


def addresses(value: str) -> Value:
    return env(msg(f"To: {value}"))[5]


def test_addresses() -> None:
    assert addresses('"Doe, John" <john@example.com>') == [
        [b"Doe, John", None, b"john", b"example.com"]]
    assert addresses("John Q. Public <jqp@x>, J.R.R. Tolkien <t@x>") == [
        [b"John Q. Public", None, b"jqp", b"x"], [b"J.R.R. Tolkien", None, b"t", b"x"]]
    assert addresses('"john.doe"@x, "john doe"@x, "a\\"b"@x') == [
        [None, None, b"john.doe", b"x"], [None, None, b'"john doe"', b"x"],
        [None, None, b'"a\\"b"', b"x"]]
    assert addresses("user@x (Real (nested) Name)") == [
        [b"Real (nested) Name", None, b"user", b"x"]]
    assert addresses("<@a.example,@b.example:u@c.example>") == [
        [None, b"@a.example,@b.example", b"u", b"c.example"]]
    assert addresses("u @ [192.0.2.1]") == [[None, None, b"u", b"[192.0.2.1]"]]
    assert addresses("=?utf-8?b?w4k=?= <e@x>") == [[b"=?utf-8?b?w4k=?=", None, b"e", b"x"]]
    assert addresses("undisclosed-recipients:;") == [
        [None, None, b"undisclosed-recipients", None], [None, None, None, None]]
    assert addresses("Team: a@x, B <b@x>; c@x") == [
        [None, None, b"Team", None], [None, None, b"a", b"x"], [b"B", None, b"b", b"x"],
        [None, None, None, None], [None, None, b"c", b"x"]]
    assert addresses("Open: a@x") == [  # an unclosed group is still closed
        [None, None, b"Open", None], [None, None, b"a", b"x"], [None, None, None, None]]
    assert addresses("user") == [[None, None, b"user", b"MISSING_DOMAIN"]]
    assert addresses("<@x>") == [[None, None, b"MISSING_MAILBOX", b"x"]]
    assert addresses("Name <broken") == [[b"Name", None, b"broken", b"MISSING_DOMAIN"]]
    assert addresses(", ,") is None
    assert addresses("") is None
    assert isinstance(addresses("a@x, b@x"), Packed)


def test_envelope_defaults_and_joins() -> None:
    e = env(msg("From: f@x", "Sender: ", "To: a@x", "To: b@x", "Cc: c@x", "Reply-To: r@x"))
    assert e[2] == e[3] == [[None, None, b"f", b"x"]]  # empty Sender is From (RFC 3501 7.4.2)
    assert e[4] == [[None, None, b"r", b"x"]]
    assert e[5] == [[None, None, b"a", b"x"], [None, None, b"b", b"x"]]
    assert e[6] == [[None, None, b"c", b"x"]] and e[7] is None


# --- render ---------------------------------------------------------------------------------

def test_render() -> None:
    assert encode_value([None, 7, b'a "q" \\', [b"x"], []]) == b'(NIL 7 "a \\"q\\" \\\\" ("x") ())'
    assert encode_value(b"line\r\nbreak") == b"{11}\r\nline\r\nbreak"
    assert encode_value(b"\xc3\xa9") == b"{2}\r\n\xc3\xa9"
    assert encode_value(Packed([[1], [2], b"mixed", [3]])) == b'((1)(2) "mixed" (3))'
    assert encode_value(Packed([])) == b"()"


# --- properties -----------------------------------------------------------------------------

def walk(root: Part) -> Iterator[tuple[tuple[int, ...], Part]]:
    """Every addressable part with the section-part number `locate` gives it."""
    if root.kind is Kind.MULTIPART:
        yield from walk_inside(root, ())
    else:
        yield (1,), root
        yield from walk_inside(root, (1,))


def walk_inside(part: Part, path: tuple[int, ...]) -> Iterator[tuple[tuple[int, ...], Part]]:
    if part.kind is Kind.MULTIPART:
        for i, child in enumerate(part.children, 1):
            yield (*path, i), child
            yield from walk_inside(child, (*path, i))
    elif part.kind is Kind.MESSAGE:
        inner = part.children[0]
        if inner.kind is Kind.MULTIPART:
            yield from walk_inside(inner, path)
        else:
            yield (*path, 1), inner
            yield from walk_inside(inner, (*path, 1))


def structure_at(structure: list[Value], root: Part, path: tuple[int, ...]) -> list[Value]:
    """The BODYSTRUCTURE entry of the part at `path`."""
    node, entry = root, structure
    for i, num in enumerate(path):  # as locate() walks
        if node.kind is Kind.MULTIPART:
            node, entry = node.children[num - 1], entry[num - 1]  # type: ignore[assignment]
        if i < len(path) - 1 and node.kind is Kind.MESSAGE:
            node, entry = node.children[0], entry[8]  # type: ignore[assignment]
    return entry


def check_invariants(raw: bytes) -> None:
    root = mime.parse(raw)
    assert (section(root, (), "HEADER") or b"") + (section(root, (), "TEXT") or b"") == raw
    assert section(root, ()) == raw
    structure = mime.bodystructure(root, extensible=True)
    mime.bodystructure(root, extensible=False)
    encode_value(structure)
    encode_value(mime.envelope(root))
    for path, part in walk(root):
        assert mime.locate(root, path) is part, path
        body = section(root, path)
        assert body == part.body
        assert raw.find(part.header + part.body) >= 0
        entry = structure_at(structure, root, path)
        if part.kind is not Kind.MULTIPART:
            assert entry[6] == len(body), (path, entry)  # body-fld-octets
        for text in ("MIME", "HEADER", "TEXT", "HEADER.FIELDS"):
            section(root, path, text, ("content-type",))
        try:
            mime.binary(root, path)
        except UnknownCTE:
            pass


MIME_PIECES = [
    b"--b\r\n", b"--b--\r\n", b"--c\r\n", b"--c--\r\n", b"\r\n", b"\n", b"\r", b" ", b"\t",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b'Content-Type: multipart/alternative; boundary="c"\r\n',
    b"Content-Type: multipart/digest; boundary=c\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Type: text/plain; charset*=x'y'%41\r\n",
    b"Content-Type: text/html; name*0*=utf-8''a; name*1=b; name*2*=%\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Transfer-Encoding: x-weird\r\n", b"Content-Disposition: attachment; filename=\"",
    b"Content-Language: (c) en,,\r\n",
    b"From: \"a\\\" b\" <@r:x@y>, g: (c) ;\r\n", b"To: <>, @, :;, \"\r\n",
    b"Subject: =?x?q?y?=\r\n",
    b"aGVsbG8=\r\n", b"=3D=\r\n", b"==\r\n", b"\xff\xfe\x00", b"x", b"(", b")", b'"', b"<", b">",
    b"@", b":", b";", b",", b"\\", b"[", b"]", b"=", b"*", b"-", b"--",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    check_invariants(raw)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(MIME_PIECES), max_size=60).map(b"".join))
def test_odd_mime_never_raises(raw: bytes) -> None:
    check_invariants(raw)
    check_invariants(raw.replace(b"\r\n", b"\n"))


# A generated MIME tree: ("leaf", ctype, cte, body) | ("multi", subtype, [children],
# preamble, epilogue) | ("message", subject, tree).

_TEXT = st.text(alphabet="abcxyz .,=_:;@<>", max_size=30)
_LINES = st.lists(_TEXT, max_size=4).map(lambda lines: "\r\n".join(lines).encode())

leaves = st.tuples(st.just("leaf"),
                   st.sampled_from(["text/plain", "text/html; charset=utf-8",
                                    "application/octet-stream", "image/png", None]),
                   st.sampled_from([None, "7bit", "base64", "quoted-printable"]),
                   st.binary(max_size=40))


def _extend(children: st.SearchStrategy[tuple[object, ...]]) -> st.SearchStrategy[
        tuple[object, ...]]:
    return st.one_of(
        st.tuples(st.just("multi"), st.sampled_from(["mixed", "alternative", "related"]),
                  st.lists(children, min_size=1, max_size=3), _LINES, _LINES),
        st.tuples(st.just("message"), _TEXT, children),
    )


trees = st.recursive(leaves, _extend, max_leaves=8)


def render_tree(tree: tuple[object, ...], depth: int = 0) -> tuple[bytes, bytes]:
    """(header, body) of a generated tree, with what each part's body must be."""
    kind = tree[0]
    if kind == "leaf":
        _, ctype, cte, data = tree
        assert isinstance(data, bytes)
        header = b""
        if ctype:
            header += b"Content-Type: %s\r\n" % str(ctype).encode()
        if cte:
            header += b"Content-Transfer-Encoding: %s\r\n" % str(cte).encode()
        if cte == "base64":
            body = base64.encodebytes(data).replace(b"\n", b"\r\n")
        else:
            body = re.sub(rb"(?m)^-", b"=2D", data.replace(b"\r", b"").replace(b"\n", b"\r\n"))
        return header, body
    if kind == "multi":
        _, subtype, children, preamble, epilogue = tree
        assert isinstance(children, list) and isinstance(preamble, bytes)
        assert isinstance(epilogue, bytes)
        boundary = b"=_b%d_=" % depth
        header = b'Content-Type: multipart/%s; boundary="%s"\r\n' % (str(subtype).encode(),
                                                                     boundary)
        body = preamble + b"\r\n"
        for child in children:
            child_header, child_body = render_tree(child, depth + 1)
            body += b"--" + boundary + b"\r\n" + child_header + b"\r\n" + child_body + b"\r\n"
        body += b"--" + boundary + b"--\r\n" + epilogue
        return header, body
    _, subject, inner = tree
    assert isinstance(inner, tuple)
    inner_header, inner_body = render_tree(inner, depth + 1)
    body = b"Subject: %s\r\n" % str(subject).encode() + inner_header + b"\r\n" + inner_body
    return b"Content-Type: message/rfc822\r\n", body


def expected_parts(tree: tuple[object, ...], path: tuple[int, ...], depth: int = 0
                   ) -> Iterator[tuple[tuple[int, ...], bytes, tuple[object, ...]]]:
    """(section-part, body, subtree) for every part inside a tree at `path`."""
    header, body = render_tree(tree, depth)
    yield path, body, tree
    if tree[0] == "multi":
        children = tree[2]
        assert isinstance(children, list)
        for i, child in enumerate(children, 1):
            yield from expected_parts(child, (*path, i), depth + 1)
    elif tree[0] == "message":
        inner = tree[2]
        assert isinstance(inner, tuple)
        if inner[0] == "multi":
            children = inner[2]
            assert isinstance(children, list)
            for i, child in enumerate(children, 1):
                yield from expected_parts(child, (*path, i), depth + 2)
        else:
            _, inner_body = render_tree(inner, depth + 1)
            yield (*path, 1), inner_body, inner


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_generated_trees_parse_back(tree: tuple[object, ...]) -> None:
    header, body = render_tree(tree)
    raw = b"From: gen@example.com\r\nMIME-Version: 1.0\r\n" + header + b"\r\n" + body
    check_invariants(raw)
    root = mime.parse(raw)
    assert section(root, (), "TEXT") == body
    top = () if tree[0] == "multi" else (1,)
    kinds = {"leaf": Kind.LEAF, "multi": Kind.MULTIPART, "message": Kind.MESSAGE}
    for path, part_body, node in expected_parts(tree, top):
        if not path:
            continue
        assert section(root, path) == part_body, path
        part = mime.locate(root, path)
        assert part is not None and part.kind is kinds[str(node[0])]
        if node[0] == "leaf" and node[2] == "base64":
            assert mime.binary(root, path) == node[3]
        elif node[0] == "leaf" and node[2] in (None, "7bit"):
            assert mime.binary(root, path) == part_body
    lf = raw.replace(b"\r\n", b"\n")
    check_invariants(lf)
    assert len(list(walk(mime.parse(lf)))) == len(list(walk(root)))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60))
def test_base64_leaves_decode_to_their_data(data: bytes) -> None:
    raw = msg("Content-Type: multipart/mixed; boundary=z", "", "--z",
              "Content-Transfer-Encoding: base64", "") + \
        base64.encodebytes(data).replace(b"\n", b"\r\n") + b"\r\n--z--\r\n"
    assert mime.binary(raw, (1,)) == data
    assert mime.binary_size(raw, (1,)) == len(data)


def test_deep_nesting_and_many_parts_are_bounded() -> None:
    deep = b"Content-Type: message/rfc822\r\n\r\n" * 5000 + b"end"
    root = mime.parse(deep)
    depth = 0
    node = root
    while node.children:
        node, depth = node.children[0], depth + 1
    assert depth <= 101
    mime.bodystructure(root, extensible=True)
    many = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * 20_000
    root = mime.parse(many)
    assert len(root.children) < 10_001
    assert section(root, (len(root.children),), "").endswith(b"x\r\n")  # type: ignore[union-attr]
