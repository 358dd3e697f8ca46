"""IMAP interop with real clients: mbsync, offlineimap, mutt/neomutt, curl, imapclient (IDLE)
and Dovecot's dsync (doveadm backup from an imapc source).

Each test gets its own fresh account, seeds it through imaplib (the reference client), lets
the third-party client work on it and then compares both sides message by message: the server
through imaplib, the client's copy by reading its Maildir or mbox directly.
"""

from __future__ import annotations

import hashlib
import imaplib
import mailbox
import os
import poplib
import re
import shlex
import shutil
import smtplib
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DOMAIN, PASSWORD, Server, client_tls, require_tool
from tests.interop.helpers import body_of, make_message, run

pytestmark = pytest.mark.interop

CLIENT_TIMEOUT = 20  # seconds any one client run may take

# A message as compared across the two sides: its flags and its text with LF line ends.
Msg = tuple[frozenset[str], bytes]
# folder name ("/"-separated, as the server lists it) -> Message-ID -> message
Folders = dict[str, dict[bytes, Msg]]

MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen",
                 "T": "\\Deleted"}


# --- the server side, through imaplib ------------------------------------------------------

def fresh_user(server: Server, name: str) -> str:
    user = f"{name}@{DOMAIN}"
    server.add_user(user)
    return user


def imap_cert(server: Server, path: Path) -> Path:
    """The certificate the imaps listener presents, as PEM (self-signed, SAN 127.0.0.1)."""
    path.write_text(ssl.get_server_certificate(("127.0.0.1", server.port("imaps"))))
    return path


@contextmanager
def imap(server: Server, user: str) -> Iterator[imaplib.IMAP4_SSL]:
    m = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=client_tls(),
                          timeout=30)
    try:
        m.login(user, PASSWORD)
        yield m
    finally:
        m.logout()


def ok(result: tuple[str, Any]) -> Any:
    typ, data = result
    assert typ == "OK", data
    return data


def q(name: str) -> str:
    """A mailbox name as an IMAP quoted string (imaplib sends arguments as they are)."""
    return '"' + name + '"'


def folder_names(m: imaplib.IMAP4) -> list[str]:
    names = []
    for line in ok(m.list()):
        match = re.fullmatch(rb'\(([^)]*)\) "/" "?([^"]*)"?', line)
        assert match, line
        if b"\\Noselect" not in match[1]:
            names.append(match[2].decode())
    return names


def uid_fetch(m: imaplib.IMAP4, uids: str, items: str) -> list[tuple[int, bytes, bytes | None]]:
    """UID FETCH -> [(uid, the response's non-literal text, its literal or None)]."""
    out = []
    for part in ok(m.uid("FETCH", uids, items)):
        if part is None or part == b")":
            continue
        head, literal = (part[0], part[1]) if isinstance(part, tuple) else (part, None)
        uid = re.search(rb"UID (\d+)", head)
        assert uid, head
        out.append((int(uid[1]), head, literal))
    return out


def flags_of(head: bytes) -> frozenset[str]:
    match = re.search(rb"FLAGS \(([^)]*)\)", head)
    assert match, head
    return frozenset(match[1].decode().split()) - {"\\Recent"}


def message_id(raw: bytes) -> bytes:
    match = re.search(rb"^Message-ID:[ \t]*(<[^>]+>)", raw, re.IGNORECASE | re.MULTILINE)
    assert match, raw[:300]
    return match[1]


def normal(raw: bytes) -> bytes:
    """LF line ends, without the X-TUID header mbsync adds to the messages it uploads."""
    raw = raw.replace(b"\r\n", b"\n")
    head, sep, body = raw.partition(b"\n\n")
    head = re.sub(rb"(?im)^X-TUID:[^\n]*\n?", b"", head + b"\n").rstrip(b"\n")
    return head + sep + body


def server_folder(m: imaplib.IMAP4, name: str) -> dict[bytes, Msg]:
    ok(m.select(q(name), readonly=True))
    msgs = {}
    for _, head, raw in uid_fetch(m, "1:*", "(UID FLAGS BODY.PEEK[])"):
        assert raw is not None, head
        msgs[message_id(raw)] = (flags_of(head), normal(raw))
    return msgs


def server_view(server: Server, user: str) -> Folders:
    with imap(server, user) as m:
        return {name: server_folder(m, name) for name in folder_names(m)}


def server_state(server: Server, user: str) -> dict[str, bytes]:
    """Each folder's STATUS: a client that changes nothing leaves all of these alone."""
    with imap(server, user) as m:
        return {name: ok(m.status(q(name), "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)"))[0]
                for name in folder_names(m)}


def server_uids(server: Server, user: str) -> dict[str, tuple[int, dict[int, bytes]]]:
    """Each folder's UIDVALIDITY and its messages' UIDs (-> Message-ID)."""
    out = {}
    with imap(server, user) as m:
        for name in folder_names(m):
            ok(m.select(q(name), readonly=True))
            validity = int(m.response("UIDVALIDITY")[1][0])
            out[name] = (validity, {uid: message_id(raw or b"") for uid, _, raw in
                                    uid_fetch(m, "1:*", "(UID BODY.PEEK[HEADER])")})
    return out


def seed(server: Server, user: str, folders: dict[str, list[tuple[str, str]]]) -> None:
    """APPEND (subject, flags) messages, creating the folders that do not exist yet."""
    with imap(server, user) as m:
        existing = set(folder_names(m))
        for name, messages in folders.items():
            if name not in existing:
                ok(m.create(q(name)))
            for subject, flags in messages:
                ok(m.append(q(name), f"({flags})" if flags else None, None, mail(subject)))


def mail(subject: str) -> bytes:
    token = subject.replace(" ", "-")
    return make_message(subject, body=f"Body of {subject}.\r\n.a dot line\r\n\r\n"
                                      f"last line of {token}\r\n")


def mid(subject: str) -> bytes:
    return message_id(mail(subject))


# --- the client side: Maildirs ----------------------------------------------------------------

def read_maildir(path: Path) -> dict[bytes, Msg]:
    msgs = {}
    for sub in ("new", "cur"):
        for f in (path / sub).iterdir():
            info = f.name.partition(":2,")[2]
            raw = f.read_bytes()
            msgs[message_id(raw)] = (frozenset(MAILDIR_FLAGS[c] for c in info
                                               if c in MAILDIR_FLAGS), normal(raw))
    return msgs


def maildirs_verbatim(root: Path) -> dict[str, Path]:
    """mbsync SubFolders Verbatim: Archive/2026 is the directory root/Archive/2026."""
    return {str(cur.parent.relative_to(root)): cur.parent for cur in root.rglob("cur")
            if cur.is_dir()}


def maildirs_dotted(root: Path) -> dict[str, Path]:
    """offlineimap's default: Archive/2026 is the directory root/Archive.2026."""
    return {d.name.replace(".", "/"): d for d in root.iterdir() if (d / "cur").is_dir()}


def maildirs_plusplus(root: Path) -> dict[str, Path]:
    """Dovecot's Maildir++: INBOX is root itself, Archive/2026 is root/.Archive.2026."""
    out = {"INBOX": root}
    out.update({d.name[1:].replace(".", "/"): d for d in root.iterdir()
                if d.name.startswith(".") and (d / "cur").is_dir()})
    return out


def dovecot_uids(folder: Path) -> tuple[int, dict[int, bytes]]:
    """A Dovecot Maildir's UIDVALIDITY and UIDs (-> Message-ID), from its dovecot-uidlist."""
    header, *lines = (folder / "dovecot-uidlist").read_text().splitlines()
    validity = int(next(f[1:] for f in header.split()[1:] if f.startswith("V")))
    files = {f.name.partition(":2,")[0]: f for sub in ("new", "cur")
             for f in (folder / sub).iterdir()}
    uids = {}
    for line in lines:  # "<uid> [<extension fields>] :<file name up to its :2, info>"
        uid, _, rest = line.partition(" ")
        uids[int(uid)] = message_id(files[rest.rpartition(":")[2]].read_bytes())
    return validity, uids


def local_view(root: Path, layout: Callable[[Path], dict[str, Path]]) -> Folders:
    return {name: read_maildir(path) for name, path in layout(root).items()}


def message_files(root: Path) -> dict[str, bytes]:
    """Every message file (name and content): a no-op sync renames, adds or removes none."""
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*")
            if f.is_file() and f.parent.name in ("cur", "new")}


def local_file(folder: Path, subject: str) -> Path:
    want = mid(subject)
    for f in [*(folder / "cur").iterdir(), *(folder / "new").iterdir()]:
        if message_id(f.read_bytes()) == want:
            return f
    raise AssertionError(f"{subject!r} not in {folder}")


def set_local_flags(f: Path, flags: str) -> Path:
    """What a mail reader does: move the message to cur/ with the new ":2,<flags>" info."""
    base = f.name.partition(":2,")[0]
    new = f.parent.parent / "cur" / f"{base}:2,{''.join(sorted(flags))}"
    f.rename(new)
    return new


def write_local(folder: Path, subject: str, flags: str = "") -> None:
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}.P{os.getpid()}.interop"
    raw = mail(subject).replace(b"\r\n", b"\n")
    if flags:
        (folder / "cur" / f"{name}:2,{flags}").write_bytes(raw)
    else:
        (folder / "new" / name).write_bytes(raw)


# "Ünï Folder" in modified UTF-7 (RFC 3501 5.1.3), the name on the wire and (mbsync,
# offlineimap, Dovecot) on disk.
INTL = "&ANw-n&AO8- Folder"

# The mailbox every sync test starts from: the account's default folders (INBOX, Archive,
# Drafts, Junk, Sent, Trash) plus Work, the nested Archive/2026 and a non-ASCII name.
SEED = {
    "INBOX": [("inbox one", ""), ("inbox two", "\\Seen"), ("inbox three", "\\Seen \\Answered")],
    "Work": [("work one", ""), ("work two", "\\Seen \\Flagged")],
    "Archive/2026": [("archived one", "\\Seen"), ("archived two", "\\Seen")],
    INTL: [("intl one", "\\Draft")],
}


def server_changes(server: Server, user: str) -> None:
    """What another client does meanwhile: a STORE, an APPEND, an EXPUNGE."""
    with imap(server, user) as m:
        ok(m.select("Work"))
        uid = next(u for u, _, raw in uid_fetch(m, "1:*", "(UID BODY.PEEK[HEADER])")
                   if raw and mid("work one") in raw)
        ok(m.uid("STORE", str(uid), "+FLAGS", "(\\Seen \\Flagged)"))
        ok(m.append("INBOX", "(\\Answered)", None, mail("server new")))
        ok(m.select("INBOX"))
        uid = next(u for u, _, raw in uid_fetch(m, "1:*", "(UID BODY.PEEK[HEADER])")
                   if raw and mid("inbox two") in raw)
        ok(m.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)"))
        ok(m.expunge())


def check_server_changes_arrived(local: Folders) -> None:
    assert local["Work"][mid("work one")][0] == {"\\Seen", "\\Flagged"}
    assert local["INBOX"][mid("server new")][0] == {"\\Answered"}
    assert mid("inbox two") not in local["INBOX"]


# --- 1. mbsync ------------------------------------------------------------------------------

def mbsync_rc(server: Server, d: Path, user: str, cert: Path, ssl_type: str) -> Path:
    port = server.port("imaps" if ssl_type == "IMAPS" else "imap")
    rc = d / "mbsyncrc"
    rc.write_text(f"""\
IMAPAccount netpost
Host 127.0.0.1
Port {port}
User {user}
Pass "{PASSWORD}"
SSLType {ssl_type}
CertificateFile {cert}
SystemCertificates no
AuthMechs LOGIN
PipelineDepth 10

IMAPStore netpost-remote
Account netpost

MaildirStore netpost-local
Path {d}/mail/
Inbox {d}/mail/INBOX
SubFolders Verbatim

Channel netpost
Far :netpost-remote:
Near :netpost-local:
Patterns *
Create Both
Remove None
Expunge Both
SyncState *
""")
    return rc


@pytest.mark.parametrize("ssl_type", ["IMAPS", "STARTTLS"])
def test_mbsync_two_way(server: Server, tmp_path: Path, ssl_type: str) -> None:
    mbsync = require_tool("mbsync")
    user = fresh_user(server, f"mbsync-{ssl_type.lower()}")
    seed(server, user, SEED)
    cert = imap_cert(server, tmp_path / "cert.pem")
    rc = mbsync_rc(server, tmp_path, user, cert, ssl_type)
    root = tmp_path / "mail"
    root.mkdir()

    def sync() -> None:
        r = run(server, [mbsync, "-c", str(rc), "-a"], tmp_path, timeout=CLIENT_TIMEOUT)
        complaints = re.findall(rb"(?im)^.*(?:error|warning).*$", r.stdout + r.stderr)
        assert not complaints, complaints

    # First sync: every folder (the nested one as Archive/2026/) and every flag arrives.
    sync()
    seeded = server_view(server, user)
    assert set(seeded) == {"INBOX", "Archive", "Archive/2026", "Drafts", "Junk", "Sent",
                           "Trash", "Work", INTL}
    assert seeded["INBOX"][mid("inbox three")][0] == {"\\Seen", "\\Answered"}
    assert local_view(root, maildirs_verbatim) == seeded
    assert (root / "Archive" / "2026" / "cur").is_dir()

    # Local changes: a flag, a new message, a new folder, a trashed message.
    set_local_flags(local_file(root / "INBOX", "inbox one"), "FS")
    write_local(root / "Work", "work local")
    write_local(root / "Local", "local folder one", "S")
    set_local_flags(local_file(root / "Archive" / "2026", "archived one"), "ST")
    sync()
    remote = server_view(server, user)
    assert remote["INBOX"][mid("inbox one")][0] == {"\\Seen", "\\Flagged"}
    assert remote["Work"][mid("work local")] == (frozenset(), normal(mail("work local")))
    assert remote["Local"] == {mid("local folder one"): (frozenset({"\\Seen"}),
                                                         normal(mail("local folder one")))}
    assert set(remote["Archive/2026"]) == {mid("archived two")}  # expunged on the server
    assert local_view(root, maildirs_verbatim) == remote

    # Server-side changes come back.
    server_changes(server, user)
    sync()
    local = local_view(root, maildirs_verbatim)
    check_server_changes_arrived(local)
    assert local == server_view(server, user)

    # Nothing left to do: a further sync touches neither side.
    before_files, before_state = message_files(root), server_state(server, user)
    sync()
    assert message_files(root) == before_files
    assert server_state(server, user) == before_state


# --- 2. offlineimap ------------------------------------------------------------------------

def test_offlineimap_two_way(server: Server, tmp_path: Path) -> None:
    offlineimap = require_tool("offlineimap")
    user = fresh_user(server, "offlineimap")
    seed(server, user, SEED)
    cert = imap_cert(server, tmp_path / "cert.pem")
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    root = tmp_path / "mail"
    rc = tmp_path / "offlineimaprc"
    rc.write_text(f"""\
[general]
accounts = netpost
metadata = {tmp_path}/meta
ui = basic

[Account netpost]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {root}

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {server.port("imaps")}
remoteuser = {user}
remotepass = {PASSWORD}
ssl = yes
starttls = no
cert_fingerprint = {hashlib.sha256(der).hexdigest()}
tls_level = tls_secure
ssl_version = tls1_2
maxconnections = 2
""")

    def sync() -> None:
        r = run(server, [offlineimap, "-c", str(rc), "-o"], tmp_path, timeout=CLIENT_TIMEOUT)
        output = r.stdout + r.stderr
        assert b"ERROR" not in output and b"Traceback" not in output, output.decode()

    sync()
    seeded = server_view(server, user)
    assert local_view(root, maildirs_dotted) == seeded
    assert (root / "Archive.2026" / "cur").is_dir()

    # Local changes: a flag, a new message, a new folder, a deleted message.
    set_local_flags(local_file(root / "INBOX", "inbox one"), "FS")
    write_local(root / "Work", "work local")
    write_local(root / "Local", "local folder one", "S")
    local_file(root / "Archive.2026", "archived one").unlink()
    sync()
    remote = server_view(server, user)
    assert remote["INBOX"][mid("inbox one")][0] == {"\\Seen", "\\Flagged"}
    assert remote["Work"][mid("work local")] == (frozenset(), normal(mail("work local")))
    assert remote["Local"] == {mid("local folder one"): (frozenset({"\\Seen"}),
                                                         normal(mail("local folder one")))}
    assert set(remote["Archive/2026"]) == {mid("archived two")}
    assert local_view(root, maildirs_dotted) == remote

    server_changes(server, user)
    sync()
    local = local_view(root, maildirs_dotted)
    check_server_changes_arrived(local)
    assert local == server_view(server, user)

    before_files, before_state = message_files(root), server_state(server, user)
    sync()
    assert message_files(root) == before_files
    assert server_state(server, user) == before_state


# --- 3. mutt and neomutt -------------------------------------------------------------------

def mutt_run(server: Server, tool: str, d: Path, push: str) -> None:
    """Run the (neo)mutt curses UI on a pty (script), keys pushed, under a hard timeout."""
    command = f'push "{push}"'
    inner = (f"{shlex.quote(tool)} -n -F {shlex.quote(str(d / 'muttrc'))} "
             f"-f imaps://127.0.0.1:{server.port('imaps')}/INBOX -e {shlex.quote(command)}")
    cmd = ["timeout", str(CLIENT_TIMEOUT), require_tool("script"), "-qec", inner, "/dev/null"]
    run(server, cmd, d, timeout=CLIENT_TIMEOUT + 10, env={"TERM": "xterm"})


@pytest.mark.parametrize("tool", ["mutt", "neomutt"])
def test_mutt_reads_moves_deletes(server: Server, tmp_path: Path, tool: str) -> None:
    exe = require_tool(tool)
    user = fresh_user(server, tool)
    subjects = ["mutt one", "mutt two", "move me", "delete me"]
    seed(server, user, {"INBOX": [(s, "\\Seen" if i % 2 else "") for i, s in
                                  enumerate(subjects)]})
    cert = imap_cert(server, tmp_path / "cert.pem")
    (tmp_path / "muttrc").write_text("\n".join(f"set {setting}" for setting in [
        f'imap_user="{user}"', f'imap_pass="{PASSWORD}"',
        f'folder="imaps://127.0.0.1:{server.port("imaps")}/"', 'spoolfile="+INBOX"',
        f'certificate_file="{cert}"', "ssl_force_tls=yes", "ssl_starttls=yes",
        "imap_passive=no", "mail_check=0", "timeout=5", "confirmcreate=no", "confirmappend=no",
        "mbox_type=mbox", 'header_cache=""', 'message_cachedir=""', 'record=""', "move=no",
        "sort=date", "delete=yes"]) + "\n")

    # Copy every message to a local mbox: the bodies arrive unchanged (LF line ends).
    out = tmp_path / "out.mbox"
    mutt_run(server, exe, tmp_path,
             f"<tag-pattern>~A<enter><tag-prefix><copy-message>{out}<enter><quit>")
    box = mailbox.mbox(out, create=False)
    got = {message_id(box.get_bytes(key)): body_of(box.get_bytes(key)) for key in box.keys()}
    assert got == {mid(s): body_of(mail(s)).replace(b"\r\n", b"\n") for s in subjects}

    # Save one message to =Archive (copy + delete) and delete another, then quit (expunge).
    mutt_run(server, exe, tmp_path,
             "<tag-pattern>~s move<enter><tag-prefix><save-message>=Archive<enter>"
             "<untag-pattern>~A<enter><delete-pattern>~s delete<enter><sync-mailbox><quit>")
    remote = server_view(server, user)
    assert set(remote["INBOX"]) == {mid("mutt one"), mid("mutt two")}
    [(flags, text)] = remote["Archive"].values()
    assert text == normal(mail("move me")) and flags - {"Old"} == set()  # mutt's "Old" keyword
    assert remote["INBOX"][mid("mutt two")][1] == normal(mail("mutt two"))


# --- 4. curl --------------------------------------------------------------------------------

def test_curl_imap(server: Server, tmp_path: Path) -> None:
    curl_exe = require_tool("curl")
    user = fresh_user(server, "curl")
    subjects = ["curl gone", "curl alpha", "curl beta", "curl gamma"]
    seed(server, user, {"INBOX": [(s, "") for s in subjects], "Work": []})
    with imap(server, user) as m:  # UIDs 2, 3, 4 at sequence numbers 1, 2, 3
        ok(m.select("INBOX"))
        ok(m.uid("STORE", "1", "+FLAGS", "(\\Deleted)"))
        ok(m.expunge())
        ok(m.uid("STORE", "3", "+FLAGS", "(\\Flagged)"))
        raw = {uid: lit for uid, _, lit in uid_fetch(m, "1:*", "(UID BODY.PEEK[])")}
    assert sorted(raw) == [2, 3, 4]
    imaps = f"imaps://127.0.0.1:{server.port('imaps')}/"
    plain = f"imap://127.0.0.1:{server.port('imap')}/"
    auth = ["--user", f"{user}:{PASSWORD}"]

    def curl(*args: str, expect: int = 0) -> bytes:
        cmd = [curl_exe, "-sS", "--max-time", str(CLIENT_TIMEOUT), "-k", *auth, *args]
        return run(server, cmd, tmp_path, expect=expect).stdout

    # LIST: the same folders imaplib sees.
    with imap(server, user) as m:
        names = folder_names(m)
    listed = [re.fullmatch(rb'\* LIST \([^)]*\) "/" "?([^"]*)"?', line)
              for line in curl(imaps).split(b"\r\n") if line]
    assert all(listed), listed
    assert [match[1].decode() for match in listed if match] == names and "Work" in names

    # UID FETCH 1:* (FLAGS RFC822.SIZE) before anything marks a message \Seen.
    lines = curl("-X", "UID FETCH 1:* (FLAGS RFC822.SIZE)", imaps + "INBOX").split(b"\r\n")
    fetched = [re.fullmatch(rb"\* (\d+) FETCH \(UID (\d+) FLAGS \(([^)]*)\) RFC822.SIZE (\d+)\)",
                            line) for line in lines if line]
    assert all(fetched), lines
    assert [(int(f[1]), int(f[2]), f[3].split(), int(f[4])) for f in fetched if f] == [
        (1, 2, [], len(raw[2])), (2, 3, [b"\\Flagged"], len(raw[3])), (3, 4, [], len(raw[4]))]

    # SEARCH answers with sequence numbers, UID SEARCH with UIDs.
    assert curl("-X", "SEARCH ALL", imaps + "INBOX") == b"* SEARCH 1 2 3\r\n"
    assert curl("-X", "SEARCH SUBJECT beta", imaps + "INBOX") == b"* SEARCH 2\r\n"
    assert curl("-X", "UID SEARCH FLAGGED", imaps + "INBOX") == b"* SEARCH 3\r\n"

    # FETCH by UID (not by sequence number), byte-identical, over implicit TLS and STARTTLS.
    assert curl(imaps + "INBOX;UID=3") == raw[3]
    assert curl("--ssl-reqd", plain + "INBOX;UID=4") == raw[4]
    assert curl(imaps + "INBOX;UID=2;SECTION=HEADER.FIELDS%20(SUBJECT)") == (
        b"Subject: curl alpha\r\n\r\n")

    # APPEND by upload (curl marks it \Seen): stored byte for byte.
    eml = tmp_path / "upload.eml"
    eml.write_bytes(mail("curl upload"))
    assert curl("-T", str(eml), imaps + "Work") == b""
    with imap(server, user) as m:
        ok(m.select("Work", readonly=True))
        [(uid, head, stored)] = uid_fetch(m, "1:*", "(UID FLAGS BODY.PEEK[])")
    assert stored == mail("curl upload") and flags_of(head) == {"\\Seen"} and uid == 1

    # STATUS: curl's FETCHes above were BODY[...] without PEEK, so all three are \Seen now.
    assert curl("-X", "STATUS INBOX (MESSAGES UIDNEXT UNSEEN)", imaps) == (
        b'* STATUS "INBOX" (MESSAGES 3 UIDNEXT 5 UNSEEN 0)\r\n')

    # STARTTLS on the plain port; without TLS the login is refused (LOGINDISABLED).
    assert curl("--ssl-reqd", plain + "Work;UID=1") == mail("curl upload")
    curl(plain, expect=67)  # CURLE_LOGIN_DENIED


# --- 5. imapclient IDLE -------------------------------------------------------------------

def idle_until(client: Any, want: Callable[[tuple[Any, ...]], bool], timeout: float = 2.0
               ) -> tuple[list[tuple[Any, ...]], float]:
    """Collect IDLE responses until one satisfies want(); returns them and the wait."""
    start = time.monotonic()
    seen: list[tuple[Any, ...]] = []
    while (left := start + timeout - time.monotonic()) > 0:
        seen += client.idle_check(timeout=left)
        if any(want(r) for r in seen):
            return seen, time.monotonic() - start
    raise AssertionError(f"no matching IDLE response within {timeout} s; got {seen}")


def test_imapclient_idle(server: Server, tmp_path: Path) -> None:
    from imapclient import IMAPClient

    user = fresh_user(server, "idle")
    cert = imap_cert(server, tmp_path / "cert.pem")
    tls = ssl.create_default_context(cafile=str(cert))
    with IMAPClient("127.0.0.1", port=server.port("imaps"), ssl=True, ssl_context=tls,
                    timeout=30) as client:
        client.login(user, PASSWORD)
        assert b"IDLE" in client.capabilities()
        assert client.select_folder("INBOX")[b"EXISTS"] == 0

        # An SMTP delivery: EXISTS.
        client.idle()
        with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as s:
            s.sendmail("sender@example.org", [user], mail("idle delivered"))
        idle_until(client, lambda r: r == (1, b"EXISTS"))
        client.idle_done()
        [(_, data)] = client.fetch("1", ["BODY.PEEK[]"]).items()
        assert data[b"BODY[]"].endswith(mail("idle delivered"))

        # A POP3 session deletes it: EXPUNGE when that session QUITs.
        client.idle()
        pop = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls(),
                              timeout=30)
        try:
            pop.user(user)
            pop.pass_(PASSWORD)
            assert pop.stat()[0] == 1
            pop.dele(1)
            # RFC 1939: nothing is removed before QUIT, so IDLE has nothing to say yet
            assert (1, b"EXPUNGE") not in client.idle_check(timeout=0.3)
            pop.quit()
        finally:
            pop.close()
        idle_until(client, lambda r: r == (1, b"EXPUNGE"))
        client.idle_done()
        assert client.search("ALL") == []

        # Another IMAP session STOREs a flag: FETCH (FLAGS ...).
        with imap(server, user) as m:
            ok(m.append("INBOX", None, None, mail("idle flagged")))
        client.noop()  # takes in the EXISTS
        client.idle()
        with imap(server, user) as m:
            ok(m.select("INBOX"))
            ok(m.store("1", "+FLAGS", "(\\Flagged)"))

        def flagged(r: tuple[Any, ...]) -> bool:
            if len(r) < 3 or r[:2] != (1, b"FETCH"):
                return False
            items = dict(zip(r[2][::2], r[2][1::2], strict=True))
            return b"\\Flagged" in items.get(b"FLAGS", ())

        seen, _ = idle_until(client, flagged)
        client.idle_done()
        assert [r[0] for r in seen if r[1] == b"FETCH"] == [1]


# --- 6. Dovecot dsync: doveadm backup -R from imapc ----------------------------------------

def test_doveadm_backup_from_imapc(server: Server) -> None:
    doveadm = require_tool("doveadm")  # Debian package dovecot-core
    user = fresh_user(server, "dsync")
    seed(server, user, {**SEED, "Lists/netpost/dev": [("deep one", "\\Flagged")]})
    # Dovecot never touches mail as root: as root the Maildir belongs to nobody, in a
    # directory of its own (pytest's tmp dirs are 0700 root).
    d = Path(tempfile.mkdtemp(prefix="netpost-dsync-"))
    try:
        uid, gid = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
        os.chown(d, uid, gid)
        d.chmod(0o755)
        cert = imap_cert(server, d / "cert.pem")
        root = d / "mail"
        conf = d / "dovecot.conf"
        conf.write_text(f"""\
base_dir = {d}/run
instance_name = netpost-interop
log_path = /dev/stderr
mail_location = maildir:{root}
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = {min(uid, 100)}
first_valid_gid = {min(gid, 100)}
namespace inbox {{
  inbox = yes
  separator = /
}}
""")
        # No -u: with -u doveadm asks a running auth service for the user; without it,
        # it takes the user from USER and the home from HOME, and needs no daemon at all.
        cmd = [doveadm, "-c", str(conf), "-o", "imapc_host=127.0.0.1",
               "-o", f"imapc_port={server.port('imaps')}", "-o", "imapc_ssl=imaps",
               "-o", f"ssl_client_ca_file={cert}", "-o", f"imapc_user={user}",
               "-o", f"imapc_password={PASSWORD}",
               "-o", "imapc_features=rfc822.size fetch-headers", "-o", "mail_fsync=never",
               "backup", "-R", "imapc:"]
        env = {"USER": "dsync-fresh", "HOME": str(d)}

        def backup() -> None:
            r = run(server, cmd, d, timeout=CLIENT_TIMEOUT, env=env)
            complaints = re.findall(rb"(?im)^.*(?:error|warning).*$", r.stdout + r.stderr)
            assert not complaints, complaints

        backup()
        remote = server_view(server, user)
        assert {"INBOX", "Work", "Archive/2026", "Lists/netpost/dev", "Trash"} <= set(remote)
        assert local_view(root, maildirs_plusplus) == remote
        # dsync keeps UIDVALIDITY and every UID as netpost reported them over imapc
        assert {name: dovecot_uids(path) for name, path in maildirs_plusplus(root).items()
                } == server_uids(server, user)

        before_files, before_state = message_files(root), server_state(server, user)
        backup()
        assert message_files(root) == before_files
        assert server_state(server, user) == before_state

        # An incremental backup takes in what changed on the server.
        server_changes(server, user)
        backup()
        local = local_view(root, maildirs_plusplus)
        check_server_changes_arrived(local)
        assert local == server_view(server, user)
    finally:
        shutil.rmtree(d, ignore_errors=True)
